"""Robust decoding: every image mode and orientation becomes 8-bit RGB."""

from __future__ import annotations

import io

import numpy as np
import pytest
import skimage.data
from PIL import Image

from gradcam_engine.sources.images import (
    ImageFiles,
    collate,
    load_rgb,
)


def _check_rgb(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    assert img.mode == "RGB"
    assert img.size == size
    arr = np.asarray(img)
    assert arr.dtype == np.uint8 and arr.shape == (size[1], size[0], 3)
    return arr


def test_rgb_png_and_jpeg(tmp_path):
    photo = skimage.data.chelsea()
    Image.fromarray(photo).save(tmp_path / "a.png")
    Image.fromarray(photo).save(tmp_path / "a.jpg", quality=90)
    arr = _check_rgb(load_rgb(tmp_path / "a.png"), (451, 300))
    assert np.array_equal(arr, photo)
    _check_rgb(load_rgb(str(tmp_path / "a.jpg")), (451, 300))


def test_grayscale(tmp_path):
    Image.fromarray(skimage.data.camera()).save(tmp_path / "g.png")
    arr = _check_rgb(load_rgb(tmp_path / "g.png"), (512, 512))
    assert np.array_equal(arr[..., 0], skimage.data.camera())
    assert np.array_equal(arr[..., 0], arr[..., 2])


def test_rgba_composited_on_white(tmp_path):
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :15, 3] = 255  # left half opaque red, right half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    arr = _check_rgb(load_rgb(tmp_path / "t.png"), (30, 20))
    assert tuple(arr[0, 0]) == (200, 0, 0)
    assert tuple(arr[0, -1]) == (255, 255, 255)
    # skimage's logo is a real RGBA image
    Image.fromarray(skimage.data.logo()).save(tmp_path / "logo.png")
    assert load_rgb(tmp_path / "logo.png").mode == "RGB"


def test_palette_with_and_without_transparency(tmp_path):
    img = Image.fromarray(skimage.data.astronaut()).convert("P", palette=Image.ADAPTIVE)
    img.save(tmp_path / "p.png")
    _check_rgb(load_rgb(tmp_path / "p.png"), (512, 512))
    img.info["transparency"] = 0
    img.save(tmp_path / "pt.png", transparency=0)
    _check_rgb(load_rgb(tmp_path / "pt.png"), (512, 512))
    img.save(tmp_path / "p.gif")
    _check_rgb(load_rgb(tmp_path / "p.gif"), (512, 512))


def test_16_bit_png_scaled_to_8_bit(tmp_path):
    ramp = (np.linspace(0, 65535, 64 * 32).reshape(32, 64)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "d.png")
    with Image.open(tmp_path / "d.png") as raw:
        assert raw.mode.startswith("I")
    arr = _check_rgb(load_rgb(tmp_path / "d.png"), (64, 32))
    assert arr[0, 0, 0] == 0 and arr[-1, -1, 0] == 255
    # proper scaling, not clipping: the middle of the ramp is mid-grey
    assert 120 <= arr[16, 32, 0] <= 135


def test_cmyk_jpeg(tmp_path):
    rgb = Image.fromarray(skimage.data.coffee())
    rgb.convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    with Image.open(tmp_path / "c.jpg") as raw:
        assert raw.mode == "CMYK"
    arr = _check_rgb(load_rgb(tmp_path / "c.jpg"), rgb.size)
    diff = np.abs(arr.astype(int) - np.asarray(rgb).astype(int)).mean()
    assert diff < 20


def test_exif_rotation_applied(tmp_path):
    img = Image.fromarray(skimage.data.chelsea())  # 451 x 300
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    img.save(tmp_path / "r.jpg", exif=exif.tobytes())
    _check_rgb(load_rgb(tmp_path / "r.jpg"), (300, 451))


def test_tiny_and_very_large(tmp_path):
    Image.new("RGB", (1, 1), (10, 20, 30)).save(tmp_path / "one.png")
    assert tuple(np.asarray(load_rgb(tmp_path / "one.png"))[0, 0]) == (10, 20, 30)
    Image.new("L", (6000, 4000), 128).save(tmp_path / "big.jpg", quality=50)
    _check_rgb(load_rgb(tmp_path / "big.jpg"), (6000, 4000))


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_rgb(tmp_path / "nope.png")
    (tmp_path / "junk.png").write_bytes(b"this is not an image")
    with pytest.raises(OSError, match="junk.png"):
        load_rgb(tmp_path / "junk.png")
    buf = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(OSError, match="cut.jpg"):
        load_rgb(tmp_path / "cut.jpg")
    buf = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).save(buf, "PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[:5000])
    with pytest.raises(OSError, match="cut.png"):
        load_rgb(tmp_path / "cut.png")


def test_image_files_dataset_reports_errors(tmp_path):
    Image.fromarray(skimage.data.chelsea()).save(tmp_path / "a.png")

    def transforms(img):
        import torch

        return torch.zeros(3, 8, 8)

    data = ImageFiles([str(tmp_path / "a.png"), str(tmp_path / "b.png")], transforms)
    batch = collate([data[0], data[1]])
    assert batch.indices == [0, 1]
    assert batch.sizes[0] == (451, 300) and batch.tensors[0].shape == (3, 8, 8)
    assert batch.tensors[1] is None and "not found" in batch.errors[1]


def test_collate_stacks_each_input_shape_once():
    import torch

    items = [
        (0, torch.full((3, 4, 4), 0.0), (8, 8), None, None),
        (1, None, None, "broken", None),
        (2, torch.full((3, 4, 6), 2.0), (12, 8), None, None),
        (3, torch.full((3, 4, 4), 3.0), (8, 8), None, None),
    ]
    batch = collate(items)
    assert [(rows, tuple(x.shape)) for rows, x in batch.groups] == [
        ([0, 3], (2, 3, 4, 4)),
        ([2], (1, 3, 4, 6)),
    ]
    stacked = batch.groups[0][1]
    assert stacked.is_contiguous() and stacked[1].eq(3.0).all()
    # each item's tensor is a view into its group's stack, not a second copy
    assert batch.tensors[3].data_ptr() == stacked[1].data_ptr()
    assert batch.tensors[1] is None and batch.errors[1] == "broken"


def test_each_image_is_transformed_on_one_torch_thread(tmp_path):
    """A user's torchvision transform runs on one intra-op thread (on a busy
    machine a team of threads made it 4-30x slower), decoding and the geometry
    probe alike; the caller's thread count comes back."""
    import torch
    from torchvision import transforms as T

    from gradcam_engine.sources.geometry import TransformGeometry

    Image.fromarray(skimage.data.chelsea()).save(tmp_path / "a.jpg")
    pipeline = T.Compose([T.Resize((32, 32)), T.ToTensor()])
    seen = []

    def transforms(img):
        seen.append(torch.get_num_threads())
        return pipeline(img)

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        geometry = TransformGeometry(transforms)
        item = ImageFiles([str(tmp_path / "a.jpg")], transforms, geometry)[0]
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    assert item[3] is None and tuple(item[1].shape) == (3, 32, 32)
    assert len(seen) > 20 and set(seen) == {1}
    assert after == 2


def test_one_intraop_thread_limits_only_the_calling_thread():
    """Issue 23: the limit is set on OpenMP for this thread, not through
    torch.set_num_threads (which also empties oneDNN's cache of compiled
    convolutions and sets the count of threads started meanwhile)."""
    import threading

    import torch

    from gradcam_engine.sources.threads import one_intraop_thread

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    other = []
    try:
        with one_intraop_thread():
            inside = torch.get_num_threads()
            started = threading.Thread(
                target=lambda: other.append(torch.get_num_threads())
            )
            started.start()
            started.join()
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    assert (inside, other, after) == (1, [2], 2)
