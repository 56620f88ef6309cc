"""score_cams on the stored uint8 levels against float32 copies, alternated in
one process on the same run (issue 23).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_score_reads.py [--images 2000]

The maps are those of issue 23's setup (``bench_workflow.py --setup rotated``:
320x240 JPEGs, 4 layers, 256x192 DB maps) from a small random CNN, so that
computing them takes seconds; score_cams' cost does not depend on the model.
"before" patches the float reads (``raw_heatmap``) back in. Prints maps/s of
each of 3 rounds.
"""

from __future__ import annotations

import argparse
import os
import time

import bench_workflow as bw  # noqa: I001  (sets the database dir first)
import torch
from torch import nn

import gradcam_engine.audit.scoring as scoring
from gradcam_engine.audit.raw_reads import raw_heatmap, raw_levels


class SmallCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer1 = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.layer2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.layer3 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.layer4 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = torch.relu(layer(x))
        return self.fc(x.mean((2, 3)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    torch.manual_seed(0)
    root = os.path.join(bw._TMP, "images")
    os.makedirs(root)
    paths = bw.write_rotated_images(root, args.images)
    ds = bw.make_dataset(paths, boxes=True)
    transforms = bw._transforms("torchvision-resize", 224)
    bw.compute_cams(ds, SmallCnn().eval(), bw.LAYERS, run_key="r",
                    transforms=transforms, progress=False)  # fmt: skip
    bw.score_cams(ds, "r", "ground_truth", overwrite=True)  # warm-up
    rates: dict[str, list[float]] = {"float32 copies (before)": [], "uint8 levels": []}
    for _ in range(3):
        for name, read in zip(rates, (raw_heatmap, raw_levels), strict=True):
            scoring.raw_levels = read
            start = time.perf_counter()
            bw.score_cams(ds, "r", "ground_truth", overwrite=True)
            rates[name].append(args.images * 4 / (time.perf_counter() - start))
    scoring.raw_levels = raw_levels
    for name, values in rates.items():
        print(f"{name:24s} " + ", ".join(f"{v:,.0f}" for v in values) + " maps/s")
    print(bw.load())
    ds.delete()


if __name__ == "__main__":
    main()
