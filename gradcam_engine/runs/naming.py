"""Field-name helpers shared by every module that names a FiftyOne field."""

from __future__ import annotations

import re

__all__ = ["MAX_RUN_KEY_LENGTH", "MAX_SLUG_LENGTH", "slug", "heatmap_field"]

_NON_ALNUM = re.compile(r"[^A-Za-z0-9]+")
# Field names are "<run key>_<layer slug>_<suffix>": the caps keep them
# readable in the App's sidebar (and a 100 KB key out of the database).
MAX_RUN_KEY_LENGTH = 64
MAX_SLUG_LENGTH = 64


def slug(name: str) -> str:
    """Make ``name`` safe for a field name: each run of characters other than
    ``[A-Za-z0-9]`` becomes one ``"_"``; ``"_"`` is stripped at both ends.

    >>> slug("_blocks.15")
    'blocks_15'
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    result = _NON_ALNUM.sub("_", name).strip("_")
    if len(result) > MAX_SLUG_LENGTH:
        shown = f"{name[:40]!r}... ({len(name)} characters)"
        raise ValueError(
            f"name {shown} makes a field-name part of {len(result)} characters; "
            f"at most {MAX_SLUG_LENGTH}, so that field names stay readable. Pick "
            "a shorter layer (module) name"
        )
    if not result:
        raise ValueError(
            f"name {name!r} has no letters or digits to build a field name from"
        )
    return result


def heatmap_field(run_key: str, layer: str) -> str:
    """The ``fo.Heatmap`` field that holds ``layer``'s maps for run ``run_key``."""
    return f"{run_key}_{slug(layer)}"
