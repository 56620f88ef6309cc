"""CAM arithmetic in torch for the methods that need only one layer's activations
and gradients, so that all layers come from one forward and one backward pass.

Each function mirrors the ``get_cam_weights`` / ``get_cam_image`` of its
pytorch-grad-cam class, on ``[B, C, h, w]`` tensors on the model's device, and
returns the ``[B, h, w]`` map before ReLU. The SVD projections (EigenCAM,
``eigen_smooth``) use numpy's SVD as the library's ``get_2d_projection`` does:
torch's SVD may flip the sign of the first component, which after ReLU would
give a different map.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytorch_grad_cam as pgc
import torch

__all__ = ["CAM_IMAGES", "GRADIENT_FREE"]

CamImage = Callable[[torch.Tensor, torch.Tensor | None, bool], torch.Tensor]

_SPATIAL = (2, 3)


def _project(maps: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's ``get_2d_projection``, minus the full ``U`` and ``V``
    it never uses: ``full_matrices=False`` yields the same first right-singular
    vector (the same LAPACK bidiagonal SVD, bitwise equal in our tests) without
    building a ``[h*w, h*w]`` or ``[C, C]`` matrix, which took seconds per image
    on early layers (h*w in the thousands) and wide ones (C = 2048)."""
    batch = maps.detach().float().cpu().numpy().copy()
    batch[np.isnan(batch)] = 0
    projections = []
    for acts in batch:
        flat = acts.reshape(acts.shape[0], -1).transpose()
        flat = flat - flat.mean(axis=0)
        _, _, vt = np.linalg.svd(flat, full_matrices=False)
        projections.append((flat @ vt[0, :]).reshape(acts.shape[1:]))
    return torch.from_numpy(np.float32(projections)).to(maps.device)


def _combine(weighted: torch.Tensor, eigen_smooth: bool) -> torch.Tensor:
    return _project(weighted) if eigen_smooth else weighted.sum(dim=1)


def _weighted(
    weights: torch.Tensor, acts: torch.Tensor, eigen_smooth: bool
) -> torch.Tensor:
    return _combine(weights[:, :, None, None] * acts, eigen_smooth)


def gradcam(acts, grads, eigen_smooth):
    return _weighted(grads.mean(dim=_SPATIAL), acts, eigen_smooth)


def gradcam_plusplus(acts, grads, eigen_smooth):
    grads_2 = grads.pow(2)
    grads_3 = grads_2 * grads
    sum_acts = acts.sum(dim=_SPATIAL, keepdim=True)
    aij = grads_2 / (2 * grads_2 + sum_acts * grads_3 + 1e-6)
    aij = torch.where(grads != 0, aij, torch.zeros_like(aij))
    weights = (grads.clamp(min=0) * aij).sum(dim=_SPATIAL)
    return _weighted(weights, acts, eigen_smooth)


def xgradcam(acts, grads, eigen_smooth):
    sum_acts = acts.sum(dim=_SPATIAL, keepdim=True)
    weights = (grads * acts / (sum_acts + 1e-7)).sum(dim=_SPATIAL)
    return _weighted(weights, acts, eigen_smooth)


def hirescam(acts, grads, eigen_smooth):
    return _combine(grads * acts, eigen_smooth)


def gradcam_elementwise(acts, grads, eigen_smooth):
    return _combine((grads * acts).clamp(min=0), eigen_smooth)


def layercam(acts, grads, eigen_smooth):
    return _combine(grads.clamp(min=0) * acts, eigen_smooth)


def eigencam(acts, grads, eigen_smooth):
    return _project(acts)


def eigengradcam(acts, grads, eigen_smooth):
    return _project(grads * acts)


CAM_IMAGES: dict[type, CamImage] = {
    pgc.GradCAM: gradcam,
    pgc.GradCAMPlusPlus: gradcam_plusplus,
    pgc.XGradCAM: xgradcam,
    pgc.HiResCAM: hirescam,
    pgc.GradCAMElementWise: gradcam_elementwise,
    pgc.LayerCAM: layercam,
    pgc.EigenCAM: eigencam,
    pgc.EigenGradCAM: eigengradcam,
}

GRADIENT_FREE = frozenset({pgc.EigenCAM})
