"""DetectionCamEngine: one CAM per explained detection, for torchvision-style
detectors (pure torch).

A detector in torchvision's convention takes, in eval mode, a list of CHW
tensors and returns one dict per image with ``boxes`` (``[N, 4]`` xyxy in the
input tensor's pixels), ``labels`` (``[N]``) and ``scores`` (``[N]``): Faster
R-CNN, RetinaNet, FCOS, SSD and any module with the same convention.

Passes: ONE forward for the batch; gradient methods then take one backward
per explained detection *rank*: round ``r`` back-propagates the sum of the
``r``-th explained detection's score of every image (the images of a batch
do not interact in an eval-mode detector, so each image's gradient is its own
detection's). A batch whose images explain at most ``k`` detections costs 1
forward + ``k`` backwards. EigenCAM needs no gradient: one forward, and every
detection of an image shares the image's map (what EigenCAM can say for a
detector whose scores carry no gradient, such as YOLO's exported heads).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .cam_images import CAM_IMAGES, GRADIENT_FREE
from .detection_hooks import capture_layers, detector_canvas
from .detection_maps import MapMaker, gradients_like, tensors_of
from .detection_targets import (
    DetectionScoreTarget,
    box_focus,
    match_detection,
    predicted_detections,
)
from .hooks import eval_mode, frozen_parameters, preserved_grads
from .layers import default_layers, resolve_layers
from .methods import get_method
from .precision import to_uint8
from .reshape import make_reshape

__all__ = [
    "DetectionCamEngine",
    "DetectionCamResult",
    "ExplainedDetection",
    "check_detector_output",
    "default_detection_layers",
]

# A requested box: (class index, xyxy box in input pixels).
BoxRequest = tuple[int, Sequence[float]]


@dataclass
class ExplainedDetection:
    """One explained detection of one image.

    index: the model's detection explained (its row in ``detections``), None
        when no detection of ``label`` matched a requested box.
    box: xyxy input pixels, the box focus is measured in (the detection's own
        box, or the requested one for ``target="label"``).
    maps: float32 ``[L, H, W]`` in [0, 1] at the input size (ReLU, min-max),
        None when unmatched. strengths: per layer, the max of the raw map.
    focus: per layer, the share of this map's energy inside ``box``.
    """

    index: int | None
    label: int
    box: list[float]
    score: float | None
    maps: torch.Tensor | None = None
    strengths: list[float] | None = None
    focus: list[float] | None = None


@dataclass
class DetectionCamResult:
    """``detections``: per image, all the model's detections (detached, CPU);
    ``explained``: per image, what was explained; ``nonfinite``: per image,
    None or what is not finite (``"scores"``, ``"map of layer 'x'"``)."""

    detections: list[dict[str, torch.Tensor]]
    explained: list[list[ExplainedDetection]]
    nonfinite: list[str | None]


def default_detection_layers(model: nn.Module) -> list[str]:
    """``backbone`` (its FPN levels, as in pytorch-grad-cam's Faster R-CNN
    tutorial) when the detector has one, else :func:`default_layers`."""
    if isinstance(getattr(model, "backbone", None), nn.Module):
        return ["backbone"]
    return default_layers(model)


def check_detector_output(outputs, num_images: int, where: str = "") -> None:
    """Raise ``TypeError`` / ``ValueError`` unless ``outputs`` is torchvision's
    detection output for ``num_images`` images."""
    convention = (
        "task='detection' needs torchvision's convention: in eval mode "
        "model(list of CHW tensors) -> one dict per image with 'boxes' [N, 4] "
        "(x1 y1 x2 y2, input pixels), 'labels' [N] and 'scores' [N]"
    )
    if not isinstance(outputs, list | tuple) or not all(
        isinstance(o, Mapping) for o in outputs
    ):
        raise TypeError(
            f"the model returned {type(outputs).__name__}{where}; {convention}. "
            "Wrap a detector with another output format in an nn.Module that "
            "returns this."
        )
    if len(outputs) != num_images:
        raise ValueError(
            f"the model returned {len(outputs)} dicts for {num_images} images"
            f"{where}; {convention}"
        )
    for output in outputs:
        missing = [k for k in ("boxes", "labels", "scores") if k not in output]
        if missing:
            raise ValueError(
                f"the model's output dict lacks {missing} (keys: "
                f"{sorted(map(str, output))}){where}; {convention}"
            )
        n = len(output["scores"])
        if tuple(output["boxes"].shape) != (n, 4) or len(output["labels"]) != n:
            raise ValueError(
                f"the model returned boxes {tuple(output['boxes'].shape)}, labels "
                f"{tuple(output['labels'].shape)} and scores "
                f"{tuple(output['scores'].shape)}{where}; {convention}"
            )


class DetectionCamEngine:
    """Maps of each explained detection, for every layer, in one forward and
    (gradient methods) one backward per detection rank (see the module doc).

    ``compute(x, targets)``: ``x`` float ``[B, C, H, W]`` (each image is passed
    to the model as one CHW tensor); ``targets`` one entry per image: None
    explains the detections scoring at least ``confidence_thresh`` (best
    first, at most ``max_detections``), a list of ``(class index, xyxy box)``
    explains, per box, the model's detection of that class that overlaps it
    most (IoU at least ``iou_threshold``), with focus measured in that box.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: str | Sequence[str] | None = None,
        method: str = "gradcam",
        reshape_transform="auto",
        *,
        confidence_thresh: float = 0.5,
        max_detections: int = 20,
        iou_threshold: float = 0.5,
        eigen_smooth: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"model must be a torch.nn.Module, got {type(model).__name__}"
            )
        self.model = model
        self.method = method.strip().lower() if isinstance(method, str) else method
        self.cam_class = get_method(self.method)
        if self.cam_class not in CAM_IMAGES:
            supported = ", ".join(
                sorted(c.__name__ for c in CAM_IMAGES)
            )  # one map per detection needs the per-layer arithmetic
            raise ValueError(
                f"method {method!r} cannot explain single detections; use one of "
                f"the methods computed from activations and gradients ({supported}: "
                "'gradcam', 'gradcam++', 'hirescam', 'xgradcam', 'layercam', "
                "'eigencam', 'eigengradcam', 'gradcam-elementwise')"
            )
        if not 0.0 <= float(confidence_thresh) <= 1.0:
            raise ValueError(
                f"confidence_thresh must be in [0, 1], got {confidence_thresh!r}"
            )
        if isinstance(max_detections, bool) or not isinstance(max_detections, int):
            raise TypeError(f"max_detections must be an int, got {max_detections!r}")
        if max_detections < 1:
            raise ValueError(f"max_detections must be >= 1, got {max_detections!r}")
        if not 0.0 < float(iou_threshold) <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold!r}")
        self.confidence_thresh = float(confidence_thresh)
        self.max_detections = int(max_detections)
        self.iou_threshold = float(iou_threshold)
        self.eigen_smooth = bool(eigen_smooth)
        self.layers = resolve_layers(
            model, layers if layers is not None else default_detection_layers(model)
        )
        self.layer_names = [name for name, _ in self.layers]
        self._reshape = make_reshape(model, reshape_transform)
        self.needs_grad = self.cam_class not in GRADIENT_FREE

    def __repr__(self) -> str:
        return (
            f"DetectionCamEngine(method={self.method!r}, layers={self.layer_names!r})"
        )

    @property
    def device(self) -> torch.device:
        param = next(self.model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def compute(
        self,
        x: torch.Tensor,
        targets: Sequence[list[BoxRequest] | None] | None = None,
        uint8: bool = False,
    ) -> DetectionCamResult:
        """``uint8=True``: each detection's maps are encoded to uint8 (0..255)
        after its focus is computed from the float maps (as ``CamEngine``)."""
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise TypeError("x must be a float tensor [B, C, H, W]")
        targets = [None] * x.shape[0] if targets is None else list(targets)
        if len(targets) != x.shape[0]:
            raise ValueError(
                f"targets has {len(targets)} entries but the batch has "
                f"{x.shape[0]} images; pass one per image (None or a list of boxes)"
            )
        x = x.to(self.device)
        with (
            torch.inference_mode(False),
            eval_mode(self.model),
            preserved_grads(self.model),
            frozen_parameters(self.model),
        ):
            result = self._compute(x.clone() if x.is_inference() else x, targets)
        if uint8:
            for rows in result.explained:
                for e in rows:
                    if e.maps is not None:
                        e.maps = to_uint8(e.maps).cpu()
        return result

    def _compute(self, x: torch.Tensor, targets: list) -> DetectionCamResult:
        input_hw = (int(x.shape[-2]), int(x.shape[-1]))
        with (
            torch.set_grad_enabled(self.needs_grad),
            capture_layers(self.layers, self.needs_grad) as captured,
            detector_canvas(self.model) as canvas,
        ):
            outputs = self.model(list(x))
        check_detector_output(outputs, x.shape[0])
        missing = [name for name in self.layer_names if name not in captured]
        if missing:
            raise RuntimeError(
                f"layers {missing} did not run in the model's forward pass"
            )
        explained = [
            self._resolve(output, request)
            for output, request in zip(outputs, targets, strict=True)
        ]
        acts = [captured[name] for name in self.layer_names]
        maps = MapMaker(self, acts, canvas, input_hw)
        if self.needs_grad:
            self._gradient_maps(outputs, explained, acts, maps)
        else:
            for i, rows in enumerate(explained):
                matched = [e for e in rows if e.index is not None]
                if matched:
                    image_maps, strengths = maps.image_maps(i, None)
                    for e in matched:
                        e.maps, e.strengths = image_maps, strengths
        nonfinite = []
        for i, rows in enumerate(explained):
            nonfinite.append(_nonfinite(outputs[i], rows, self.layer_names))
            done = [e for e in rows if e.maps is not None]
            if done:
                stack = torch.stack([e.maps for e in done])
                boxes = torch.tensor([e.box for e in done])
                for e, focus in zip(
                    done, box_focus(stack, boxes).tolist(), strict=True
                ):
                    e.focus = focus
        detections = [{k: v.detach().cpu() for k, v in o.items()} for o in outputs]
        return DetectionCamResult(detections, explained, nonfinite)

    def _resolve(self, output, request) -> list[ExplainedDetection]:
        scores = output["scores"].detach()
        if request is None:
            indices = predicted_detections(
                output, self.confidence_thresh, self.max_detections
            )
            return [
                ExplainedDetection(
                    i,
                    int(output["labels"][i]),
                    [float(v) for v in output["boxes"][i].detach()],
                    float(scores[i]),
                )
                for i in indices
            ]
        rows = []
        for label, box in request:
            index, _ = match_detection(output, label, box, self.iou_threshold)
            score = None if index is None else float(scores[index])
            rows.append(
                ExplainedDetection(index, int(label), [float(v) for v in box], score)
            )
        return rows

    def _gradient_maps(self, outputs, explained, acts, maps: MapMaker) -> None:
        leaves = [t for act in acts for t in tensors_of(act)]
        matched = [[e for e in rows if e.index is not None] for rows in explained]
        rounds = max((len(rows) for rows in matched), default=0)
        for r in range(rounds):
            images = [i for i, rows in enumerate(matched) if len(rows) > r]
            terms = []
            for i in images:
                e = matched[i][r]
                box = outputs[i]["boxes"][e.index].detach()
                target = DetectionScoreTarget(e.label, box, self.iou_threshold)
                terms.append(target(outputs[i]))
            loss = torch.stack([t.reshape(()) for t in terms]).sum()
            if not loss.requires_grad:
                raise RuntimeError(
                    "the detector's scores carry no gradient (they are detached "
                    "or computed without autograd), so gradient methods cannot "
                    f"explain them; use method='eigencam' (got {self.method!r})"
                )
            with torch.enable_grad():
                grads = torch.autograd.grad(
                    loss, leaves, retain_graph=r < rounds - 1, allow_unused=True
                )
            grad_iter = iter(grads)
            layer_grads = [gradients_like(act, grad_iter) for act in acts]
            for name, grad in zip(self.layer_names, layer_grads, strict=True):
                if grad is None:
                    raise RuntimeError(
                        f"The detection scores are not connected to layer {name!r}: "
                        "its output does not reach the detector's scores."
                    )
            grids = maps.grids(layer_grads)  # once per round, not per image
            for i in images:
                e = matched[i][r]
                e.maps, e.strengths = maps.image_maps(i, grids)


def _nonfinite(output, rows, layer_names) -> str | None:
    if not torch.isfinite(output["scores"].detach()).all():
        return "scores"
    for e in rows:
        if e.maps is not None and not torch.isfinite(e.maps).all():
            bad = ~torch.isfinite(e.maps.flatten(1)).all(dim=1)
            return f"map of layer {layer_names[int(bad.nonzero()[0])]!r}"
    return None
