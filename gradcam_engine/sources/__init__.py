"""Where a run's inputs come from: image decoding (``images``) and model sources
(``models``: a name -> module, transforms, classes). No FiftyOne, except the
``zoo:`` model source, which imports it when used."""
