"""A CAM "method" that ignores the model: the edge map (Sobel magnitude) of
the input image. It must fail the model-parameter randomisation test. Also
a shuffled Grad-CAM (unfaithful by construction)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.base_cam import BaseCAM

from gradcam_engine.engine.methods import METHODS, register_method

EDGE_METHOD = "edgemap-test"


class EdgeMap(BaseCAM):
    def __init__(self, model, target_layers, reshape_transform=None):
        super().__init__(model, target_layers, reshape_transform, uses_gradients=False)

    def get_cam_image(
        self,
        input_tensor,
        target_layer,
        targets,
        activations,
        grads,
        eigen_smooth=False,
    ):
        gray = input_tensor.detach().float().mean(1, keepdim=True)
        kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])[None, None]
        gx = F.conv2d(gray, kx, padding=1)
        gy = F.conv2d(gray, kx.transpose(-1, -2), padding=1)
        return np.asarray(torch.sqrt(gx**2 + gy**2)[:, 0].cpu())


def register_edge_method() -> str:
    if EDGE_METHOD not in METHODS:
        register_method(EDGE_METHOD, EdgeMap)
    return EDGE_METHOD


SHUFFLED_METHOD = "shuffled-gradcam-test"


class ShuffledGradCAM(GradCAM):
    """Grad-CAM with its pixels in a fixed random order: as unfaithful a map
    as one with the same values can be."""

    def get_cam_image(self, *args, **kwargs):
        cam = super().get_cam_image(*args, **kwargs)
        flat = cam.reshape(cam.shape[0], -1)
        order = np.random.default_rng(0).permutation(flat.shape[1])
        return flat[:, order].reshape(cam.shape)


def register_shuffled_method() -> str:
    if SHUFFLED_METHOD not in METHODS:
        register_method(SHUFFLED_METHOD, ShuffledGradCAM)
    return SHUFFLED_METHOD
