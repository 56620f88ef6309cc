"""What one ``score_cams`` call did: the same kind of summary as
``compute_cams``'s ``CamRunSummary`` (counts, fields written, ``as_dict()``,
``__str__``).

It is also a read-only mapping with the keys of the dict that ``score_cams``
returned before (``summary["mean_focus"]``, ``summary["counts"]``,
``summary["fields"]``...), so that existing callers keep working.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ScoreSummary"]


@dataclass(eq=False)
class ScoreSummary(Mapping):
    """Counts and means of one ``score_cams`` call.

    ``num_samples``: samples of the view; ``num_scored``: those with a map of
    at least one scored layer (the others, e.g. failed samples, get None).
    ``counts``: non-None values written per field. Means are over the samples
    that have a value; None when none has.
    """

    run_key: str
    gt_field: str | None
    num_samples: int
    num_scored: int
    fields_written: list[str]
    counts: dict[str, int]
    mean_focus: dict[str, float | None]
    hit_rate: dict[str, float | None]
    mean_spread: dict[str, float | None]
    mean_layer_agreement: float | None = None
    mean_agreement_vs: dict[str, float | None] = field(default_factory=dict)
    replaced: list[str] = field(default_factory=list)  # what overwrite=True replaced

    @property
    def num_without_maps(self) -> int:
        return max(0, self.num_samples - self.num_scored)

    def headline(self) -> str:
        truth = f" against {self.gt_field!r}" if self.gt_field else ""
        return (
            f"CAM scores of {self.run_key!r}{truth}: {self.num_scored} scored, "
            f"{self.num_without_maps} without maps (of {self.num_samples} samples)"
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; the keys of ``score_cams``'s former dict plus
        ``headline``, ``scored`` and ``without_maps``."""
        return {
            "run_key": self.run_key,
            "headline": self.headline(),
            "gt_field": self.gt_field,
            "num_samples": self.num_samples,
            "scored": self.num_scored,
            "without_maps": self.num_without_maps,
            "fields": list(self.fields_written),
            "counts": dict(self.counts),
            "mean_focus": dict(self.mean_focus),
            "hit_rate": dict(self.hit_rate),
            "mean_spread": dict(self.mean_spread),
            "mean_layer_agreement": self.mean_layer_agreement,
            "mean_agreement_vs": dict(self.mean_agreement_vs),
            "replaced": list(self.replaced),
        }

    def __str__(self) -> str:
        lines = [self.headline()]
        for layer, spread in self.mean_spread.items():
            parts = [
                f"{name} {_fmt(values.get(layer))}"
                for name, values in (
                    ("mean focus", self.mean_focus),
                    ("hit rate", self.hit_rate),
                )
                if layer in values
            ]
            parts.append(f"mean spread {_fmt(spread)}")
            if layer in self.mean_agreement_vs:
                parts.append(f"agreement {_fmt(self.mean_agreement_vs[layer])}")
            lines.append(f"  {layer}: {', '.join(parts)}")
        if self.mean_layer_agreement is not None:
            lines.append(f"  layer agreement {_fmt(self.mean_layer_agreement)}")
        if self.replaced:
            lines.append(f"  replaced: {', '.join(self.replaced)}")
        if self.fields_written:
            lines.append(f"  fields: {', '.join(self.fields_written)}")
        return "\n".join(lines)

    # -- the former dict's keys, read-only --------------------------------

    def __getitem__(self, key: str) -> Any:
        return self.as_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __len__(self) -> int:
        return len(self.as_dict())


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
