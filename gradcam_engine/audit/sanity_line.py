"""One line of text for a run's stored ``sanity`` result (no torch, no
fiftyone: shown by the ``list_cam_runs`` operator, the review panel and the
HTML review)."""

from __future__ import annotations

from typing import Any

__all__ = ["sanity_line"]


def sanity_line(sanity: dict[str, Any] | None) -> str:
    """``"passed (max Spearman 0.12, max SSIM 0.30; 16 samples)"``, ``"FAILED
    at block4 (...)"`` or ``"not checked"``."""
    if not sanity:
        return "not checked (run sanity_check)"
    layers = sanity.get("layers") or {}
    rho = max((v["spearman"] for v in layers.values()), default=float("nan"))
    ssim = max((v["ssim"] for v in layers.values()), default=float("nan"))
    failed = [name for name, v in layers.items() if not v.get("passed")]
    verdict = "passed" if sanity.get("passed") else f"FAILED at {', '.join(failed)}"
    return (
        f"{verdict} (max Spearman {rho:.2f}, max SSIM {ssim:.2f}; "
        f"{sanity.get('num_samples')} samples)"
    )
