"""export_review: one self-contained HTML page, rendered in headless Chromium."""

from __future__ import annotations

import os
import re
import uuid

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image

from gradcam_engine.audit.export import export_review, overlay_heatmap
from gradcam_engine.audit.scoring import score_cams
from gradcam_engine.runs import cam_runs as runs


def make_review_dataset(tmp_path, n_per_class: int = 4) -> fo.Dataset:
    """Images with one box each; heatmaps that drift off the object."""
    rng = np.random.default_rng(0)
    ds = fo.Dataset(f"export-{uuid.uuid4().hex[:8]}")
    samples, maps = [], []
    for cls in ("cat", "dog"):
        for i in range(n_per_class):
            w, h = (320, 240) if i % 2 else (200, 300)
            img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            path = str(tmp_path / f"{cls}_{i}.png")
            Image.fromarray(img).save(path)
            box = [0.25, 0.25, 0.5, 0.5]
            samples.append(
                fo.Sample(
                    filepath=path,
                    gt=fo.Classification(label=cls),
                    objects=fo.Detections(
                        detections=[fo.Detection(label=cls, bounding_box=box)]
                    ),
                    r_prediction=fo.Classification(label=cls if i < 3 else "other"),
                    r_target=fo.Classification(label=cls),
                )
            )
            # A blob whose centre moves from the box centre to a corner.
            yy, xx = np.mgrid[0:48, 0:64] / np.array([48.0, 64.0])[:, None, None]
            cy, cx = 0.5 - 0.12 * i, 0.5 - 0.12 * i
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.01)
            maps.append(fo.Heatmap(map=(blob * 255).astype(np.uint8), range=[0, 255]))
    ds.add_samples(samples)
    ds.set_values("r_layer4", maps)
    runs.register_cam_run(
        ds,
        "r",
        method="gradcam",
        layers=["layer4"],
        storage="db",
        output_dir=None,
        owned_fields=["r_layer4", "r_prediction", "r_target"],
        model="hand-made maps",
    )
    score_cams(ds, "r", "objects")
    return ds


def test_overlay_heatmap_blends_jet_colours():
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    heat = np.zeros((5, 10), np.float32)
    heat[:, 5:] = 1.0
    out = np.asarray(overlay_heatmap(image, heat, alpha=1.0))
    assert out.shape == (20, 40, 3)
    assert out[10, 2, 2] > 100 and out[10, 2, 0] < 50  # jet(0): dark blue
    assert out[10, 38, 0] > 100 and out[10, 38, 2] < 50  # jet(1): dark red
    untouched = np.asarray(overlay_heatmap(image, heat, alpha=0.0))
    assert untouched.max() == 0


def test_export_review_is_self_contained(tmp_path):
    ds = make_review_dataset(tmp_path)
    os.remove(ds.skip(3).first().filepath)  # cat_3: a missing image, a placeholder
    path = export_review(ds, "r", tmp_path / "out" / "review.html", top_k=3)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert path.endswith("review.html")
    assert not re.search(r"(src|href)=\"(?!data:)", text), "external resource"
    assert "http://" not in text and "https://" not in text
    assert text.count('<figure class="card"') == 6  # 2 classes x top 3
    assert text.count("data:image/jpeg;base64,") == 12
    assert "image unreadable: FileNotFoundError" in text
    assert '<table id="class-report">' in text
    assert "<th>cat</th><td>4</td><td>4</td><td>–</td>" in text
    assert len(text) < 200_000  # thumbnails, not full images
    # Lowest focus first within each class: the dog cards list decreasing i.
    dog = text[text.index("<h2>dog</h2>") :]
    names = re.findall(r"<b>(dog_\d)\.png</b>", dog)
    assert names == ["dog_3", "dog_2", "dog_1"]

    with pytest.raises(ValueError, match="top_k"):
        export_review(ds, "r", tmp_path / "x.html", top_k=0)
    with pytest.raises(ValueError, match="alpha"):
        export_review(ds, "r", tmp_path / "x.html", alpha=2)


def test_export_review_renders_in_chromium(tmp_path, artifacts_dir, browser):
    ds = make_review_dataset(tmp_path)
    path = export_review(ds, "r", tmp_path / "review.html", label_field="gt", top_k=2)
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    try:
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(f"file://{path}")
        page.wait_for_load_state("load")
        rows = page.locator("#class-report tbody tr")
        assert rows.count() == 3  # cat, dog, (all)
        header = page.locator("#class-report thead").inner_text()
        assert "mean focus" in header and "accuracy gap" in header
        widths = page.eval_on_selector_all(
            "img", "els => els.map(e => [e.complete, e.naturalWidth])"
        )
        assert len(widths) == 8  # 2 classes x 2 suspects x (image, overlay)
        assert all(done and w > 0 for done, w in widths), widths
        assert max(w for _, w in widths) <= 160
        assert all(u.startswith(("file:", "data:")) for u in requests), requests
        page.screenshot(path=str(artifacts_dir / "export_review.png"), full_page=True)
    finally:
        page.close()
    assert (artifacts_dir / "export_review.png").stat().st_size > 10_000
