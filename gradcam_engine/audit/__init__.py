"""The audit of a CAM run: score maths on numpy maps (``metrics``), their
FiftyOne writer (``scoring``: ``score_cams``), the class report and saved review
views (``report``) and the self-contained HTML review (``export``)."""
