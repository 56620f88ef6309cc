"""What a run may do before it starts, and what it did once it ends.

Pre-flight checks run before anything is written (a run that cannot succeed
must not register, declare fields or replace an old run). The summary reports
computed / reused / failed counts, the most common error messages and the
fields written; a run in which no sample succeeded raises :class:`CamRunFailed`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import fiftyone.core.aggregations as foa
import fiftyone.core.collections as foc

from ..engine.errors import AdvisedError

__all__ = ["CamRunFailed", "CamRunSummary", "check_label_classes", "exact_count"]

_TOP_ERRORS = 3
# A quoted file path, so that "file not found: '/a/1.png'" and ".../2.png" count
# as one kind of error.
_PATH = re.compile(r"""(['"])(?:[A-Za-z]:)?[/\\][^'"]*\1""")


@dataclass
class CamRunSummary:
    """What one ``compute_cams`` call did."""

    run_key: str
    fields: dict[str, str]  # layer -> fo.Heatmap field
    num_samples: int
    num_computed: int
    num_skipped: int  # done by an earlier call of this run (reused)
    num_errors: int
    errors: dict[str, str] = field(default_factory=dict)  # first few: id -> message
    run_dir: str | None = None
    fields_written: list[str] = field(default_factory=list)
    error_counts: Counter = field(default_factory=Counter)  # message -> samples
    # out-of-memory back-off: the batch size asked for and the one that fit
    batch_size: int | None = None
    batch_size_used: int | None = None
    oom_backoffs: int = 0

    @property
    def num_reused(self) -> int:
        return self.num_skipped

    def add_error(self, sample_id: str, message: str, keep: int = 10) -> None:
        self.num_errors += 1
        self.error_counts[_PATH.sub("<path>", message)] += 1
        if len(self.errors) < keep:
            self.errors[sample_id] = message

    def common_errors(self, n: int = _TOP_ERRORS) -> list[tuple[str, int]]:
        """The ``n`` most frequent error messages, with how many samples had each."""
        return self.error_counts.most_common(n)

    @property
    def failed(self) -> bool:
        """True when samples were attempted and none succeeded."""
        attempted = self.num_computed + self.num_errors
        return attempted > 0 and self.num_computed == 0

    def as_dict(self) -> dict:
        """JSON-ready: what the App shows and what the run's config records."""
        backoff = {}
        if self.oom_backoffs:
            backoff["out_of_memory"] = {
                "backoffs": self.oom_backoffs,
                "batch_size": self.batch_size,
                "batch_size_used": self.batch_size_used,
            }
        return {
            **backoff,
            "run_key": self.run_key,
            "headline": self.headline(),
            "computed": self.num_computed,
            "reused": self.num_skipped,
            "failed": self.num_errors,
            "errors": [f"{n} x {msg}" for msg, n in self.common_errors()],
            "fields": list(self.fields_written),
            "heatmaps": dict(self.fields),
        }

    def headline(self) -> str:
        return (
            f"CAM run {self.run_key!r}: {self.num_computed} computed, "
            f"{self.num_skipped} reused, {self.num_errors} failed "
            f"(of {self.num_samples} samples)"
        )

    def __str__(self) -> str:
        lines = [self.headline()]
        lines += [f"  {n} x {msg}" for msg, n in self.common_errors()]
        if self.oom_backoffs:
            lines.append(
                f"  out of memory: batch size {self.batch_size} -> "
                f"{self.batch_size_used} ({self.oom_backoffs} back-offs)"
            )
        if self.fields_written:
            lines.append(f"  fields: {', '.join(self.fields_written)}")
        return "\n".join(lines)


class CamRunFailed(RuntimeError):
    """No sample of the run succeeded; ``.summary`` says why."""

    def __init__(self, summary: CamRunSummary) -> None:
        self.summary = summary
        reasons = "; ".join(f"{n} x {msg}" for msg, n in summary.common_errors())
        super().__init__(
            f"{summary.headline()}. No sample succeeded. Most common errors: "
            f"{reasons or 'none recorded'}. The run's '{summary.run_key}_error' "
            "field holds each sample's message."
        )


def exact_count(samples: foc.SampleCollection) -> int:
    """The number of samples, counted.

    ``len(dataset)`` / ``dataset.count()`` on a whole dataset return MongoDB's
    fast count (collection metadata), which can read 0 after an unclean
    database stop although every sample is there; an aggregation counts them.
    """
    return int(samples.aggregate(foa.Count()) or 0)


def check_label_classes(
    samples: foc.SampleCollection,
    label_field: str,
    class_names: Sequence[str] | None,
    path: str | None = None,
) -> None:
    """Refuse a ground-truth target whose labels the model cannot explain
    (``path``: where the labels are, default ``f"{label_field}.label"``).

    Every distinct label of ``label_field`` must be one of ``class_names`` (or,
    for a model without class names, an integer index): otherwise those samples
    would all fail, so the run would only record errors.
    """
    path = path or f"{label_field}.label"
    labels = [x for x in samples.distinct(path) if x is not None]
    if not labels:
        raise ValueError(
            f"label_field {label_field!r} has no labels in this view: nothing to "
            "explain. Pick a field with labels, or target='predicted'."
        )
    if class_names:
        known = set(map(str, class_names))
        unknown = [x for x in labels if str(x) not in known]
        fix = "pass classes=[...] naming the model's outputs."
    else:
        unknown = [x for x in labels if not str(x).isdigit()]
        fix = "the model has no class names: pass classes=[...]."
    if unknown:
        shown = ", ".join(map(repr, unknown[:10]))
        more = f" (and {len(unknown) - 10} more)" if len(unknown) > 10 else ""
        raise AdvisedError(
            f"label_field {label_field!r} holds labels that are not classes of the "
            f"model: {shown}{more}. Model classes: {_preview(class_names)}. Those "
            "samples cannot be explained:",
            python=f"filter the view to the model's classes, or {fix}",
            app=(
                "filter the view to the model's classes, pick another 'Label "
                "field' whose labels are the model's classes, or set 'Explain' "
                "to 'Predicted class'."
            ),
        )


def _preview(class_names: Sequence[str] | None, n: int = 8) -> str:
    if not class_names:
        return "none"
    head = ", ".join(map(repr, list(class_names)[:n]))
    return head + (f", ... ({len(class_names)} in all)" if len(class_names) > n else "")
