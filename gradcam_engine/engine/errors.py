"""Errors whose advice depends on where the user acts.

A Python caller fixes a bad argument by passing another one
(``classes=[...]``, ``gradcam_engine.layer_names(model)``); an App user fixes
it on a form. :class:`AdvisedError` carries both: ``str(exc)`` ends with the
Python advice, :func:`app_message` gives the same problem with the App's
(the form field to change). Operators show ``app_message(exc)``; nothing
else rewrites messages.
"""

from __future__ import annotations

__all__ = ["AdvisedError", "app_message"]


class AdvisedError(ValueError):
    """A ``ValueError``: ``problem`` plus ``python`` advice (the message), and
    ``app`` advice for the App (:func:`app_message`)."""

    def __init__(self, problem: str, python: str, app: str) -> None:
        super().__init__(f"{problem} {python}")
        self.problem = problem
        self.python_advice = python
        self.app_advice = app

    def __reduce__(self):  # picklable with its three parts (worker processes)
        return (type(self), (self.problem, self.python_advice, self.app_advice))


def app_message(exc: BaseException) -> str:
    """What the App shows for ``exc``: the problem with the App's advice when
    the error carries one, else the message as it is."""
    if isinstance(exc, AdvisedError):
        return f"{exc.problem} {exc.app_advice}"
    return str(exc)
