"""compute_cams on a frames view (issue 21 item 4): frame-level heatmaps of a
video dataset (``frames.{R}_{slug}``) with the whole run lifecycle.

Known truth: a short video written here with OpenCV, in which a red square
moves across the frames; the red/green model of test_multilabel.py (its red
logit reads only red pixels): each frame's map lands on that frame's square.
The frames are decoded from the video with OpenCV into image files, the
frames' ``filepath`` (what ``to_frames(sample_frames=True)`` does with ffmpeg,
which this machine lacks).
"""

from __future__ import annotations

import cv2
import fiftyone as fo
import numpy as np
import pytest
from detection_models import CLASSES as DETECTOR_CLASSES
from detection_models import KnownTruthDetector, known_truth_image
from test_multilabel import SIZE, _inside, _square_mask
from test_patches import _run
from torchvision.transforms import ToTensor

from gradcam_engine import (
    cam_run_status,
    class_report,
    cluster_cams,
    compute_cams,
    get_cam_run,
    save_review_views,
    score_cams,
    show_label_maps,
)
from gradcam_engine.audit.detection_view import show_detection_maps

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = ["red", "green", "blue"]
# (top, left) of the red square in each frame: it moves right and down
MOVES = [(4, 2), (12, 12), (20, 22), (30, 34)]


def _write_video(path) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (SIZE,) * 2)
    for top, left in MOVES:
        frame = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
        frame[top : top + 12, left : left + 12, 2] = 255  # BGR: red
        writer.write(frame)
    writer.release()


def _decode_frames(video_path, out_dir) -> list[str]:
    capture, paths = cv2.VideoCapture(str(video_path)), []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        paths.append(str(out_dir / f"{len(paths) + 1:06d}.png"))
        cv2.imwrite(paths[-1], frame)
    capture.release()
    return paths


def _video(root, frame_paths) -> fo.Dataset:
    video = fo.Dataset()
    sample = fo.Sample(filepath=str(root / "moving.avi"))
    for number, (path, (top, left)) in enumerate(
        zip(frame_paths, MOVES, strict=True), start=1
    ):
        box = [left / SIZE, top / SIZE, 12 / SIZE, 12 / SIZE]
        sample.frames[number] = fo.Frame(
            filepath=path,
            ground_truth=fo.Detections(
                detections=[fo.Detection(label="red", bounding_box=box)]
            ),
        )
    video.add_sample(sample)
    return video


@pytest.fixture(scope="module")
def frame_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    _write_video(root / "moving.avi")
    paths = _decode_frames(root / "moving.avi", root)
    assert len(paths) == len(MOVES)
    return root, paths


def _frame_values(video, path):
    return video.values(f"frames.{path}")[0]


def test_frame_maps_land_on_the_moving_square(frame_files):
    video = _video(*frame_files)
    frames = video.to_frames()
    summary = _run(frames, "vid", batch_size=3)
    assert summary.num_computed == len(MOVES) and not summary.num_errors
    config = get_cam_run(video, "vid").config
    assert config["frames"] is True
    assert config["owned_fields"] and all(
        f.startswith("frames.vid_") for f in config["owned_fields"]
    )
    assert summary.fields_written == config["owned_fields"]
    # frame fields of the video dataset, nothing on its samples
    assert "vid_features" in video.get_frame_field_schema()
    assert not [f for f in video.get_field_schema() if f.startswith("vid")]
    maps = _frame_values(video, "vid_features")
    labels = [p.label for p in _frame_values(video, "vid_prediction")]
    assert labels == ["red"] * len(MOVES)
    for heatmap, (top, left) in zip(maps, MOVES, strict=True):
        assert heatmap.map.shape == (SIZE, SIZE)
        assert _inside(heatmap, _square_mask(top, left)) > 0.9, (top, left)
    # the frames view reads them too, and a new frames view of the video
    assert frames.values("vid_features")[2].map.shape == (SIZE, SIZE)
    assert video.to_frames().count("vid_features") == len(MOVES)

    scores = score_cams(frames, "vid", gt_field="ground_truth")
    assert scores.mean_focus["features"] > 0.9
    focus = _frame_values(video, "vid_features_focus")
    assert len(focus) == len(MOVES) and min(focus) > 0.9
    assert "frames.vid_features_focus" in get_cam_run(video, "vid").owned_fields
    # one report row per frame; review views of frames saved on the video dataset
    report = class_report(frames, "vid", label_field="ground_truth")
    assert report.loc["red", "count"] == len(MOVES)
    assert report.loc["red", "accuracy"] == 1.0
    views = save_review_views(frames, "vid", label_field="ground_truth", low_focus=1.0)
    assert len(video.load_saved_view(views[0])) == len(MOVES)
    cluster_cams(frames, "vid", n_clusters=2, visualization=None)
    assert len(_frame_values(video, "vid_features_cluster")) == len(MOVES)

    video.rename_run("vid", "moved")
    schema = video.get_frame_field_schema()
    assert not [f for f in schema if f.startswith("vid_")]
    assert {"moved_features", "moved_features_focus", "moved_features_cluster"} <= set(
        schema
    )
    info = get_cam_run(video, "moved")
    assert info.fields == {"features": "moved_features"}
    assert all(f.startswith("frames.moved_") for f in info.owned_fields)
    assert _inside(_frame_values(video, "moved_features")[3], _square_mask(30, 34))
    assert video.list_saved_views() == ["moved-suspects", "moved-misfocus-errors"]
    assert len(video.load_saved_view("moved-suspects")) == len(MOVES)

    video.delete_run("moved")
    assert not [f for f in video.get_frame_field_schema() if f.startswith("moved")]
    assert video.list_runs() == [] and video.list_saved_views() == []
    video.delete()


def test_failed_frames_are_retried_and_done_frames_are_not_recomputed(frame_files):
    root, paths = frame_files
    missing = root / "missing.png"
    video = _video(root, [*paths[:3], str(missing)])
    frames = video.to_frames()

    def interrupt(done, total):  # killed after its first batch of two frames
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(frames, "vid", batch_size=2, progress=interrupt)
    assert video.to_frames().count("vid_prediction") == 2

    resumed = _run(video.to_frames(), "vid", batch_size=2)
    assert (resumed.num_skipped, resumed.num_computed, resumed.num_errors) == (2, 1, 1)
    errors = _frame_values(video, "vid_error")
    assert errors[:3] == [None] * 3 and "missing.png" in errors[3]
    status = cam_run_status(video, "vid")  # the video dataset: counts its frames
    assert (status["total"], status["done"], status["errors"]) == (4, 3, 1)

    cv2.imwrite(str(missing), cv2.imread(paths[3]))  # the frame's image comes back
    retried = _run(video.to_frames(), "vid", batch_size=2)
    assert (retried.num_skipped, retried.num_computed, retried.num_errors) == (3, 1, 0)
    assert _frame_values(video, "vid_error") == [None] * 4
    maps = _frame_values(video, "vid_features")
    assert _inside(maps[3], _square_mask(*MOVES[3])) > 0.9
    # overwrite: computed under a temporary key, swapped in with its frame fields
    replaced = _run(video.to_frames(), "vid", overwrite=True)
    assert (replaced.run_key, replaced.num_computed) == ("vid", len(MOVES))
    assert not [f for f in video.get_frame_field_schema() if "_replacing_" in f]
    assert video.list_runs() == ["vid"]
    video.delete()


def test_what_frames_runs_cannot_do_is_refused_before_any_write(frame_files):
    video = _video(*frame_files)
    frames = video.to_frames()
    before = set(video.get_frame_field_schema())
    with pytest.raises(ValueError, match="delegate=True is not supported on a frames"):
        _run(frames, "bad", delegate=True)
    with pytest.raises(ValueError, match="patches view of 'video' media"):
        _run(frames.to_patches("ground_truth"), "bad")
    assert set(video.get_frame_field_schema()) == before
    assert video.list_runs() == []
    video.delete()


def test_multilabel_maps_of_each_frame_land_on_their_own_square(frame_files):
    """The issue's known truth through a frames view: frames with a red and a
    green square at other places; each label's map on its own square."""
    root = frame_files[0]
    red, green = [(4, 2), (20, 20)], [(30, 30), (4, 30)]
    video = fo.Dataset()
    sample = fo.Sample(filepath=str(root / "two.avi"))
    for number, (r, g) in enumerate(zip(red, green, strict=True), start=1):
        image = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
        image[r[0] : r[0] + 12, r[1] : r[1] + 12, 2] = 255  # BGR
        image[g[0] : g[0] + 12, g[1] : g[1] + 12, 1] = 255
        cv2.imwrite(str(root / f"two{number}.png"), image)
        sample.frames[number] = fo.Frame(filepath=str(root / f"two{number}.png"))
    video.add_sample(sample)
    frames = video.to_frames()
    summary = _run(frames, "ml", task="multilabel")
    assert summary.num_computed == 2 and "frames.ml_labels" in summary.fields_written
    squares = [{"red": r, "green": g} for r, g in zip(red, green, strict=True)]
    for labels, truth in zip(_frame_values(video, "ml_labels"), squares, strict=True):
        assert sorted(c.label for c in labels.classifications) == ["green", "red"]
        for c in labels.classifications:
            assert _inside(c.features_map, _square_mask(*truth[c.label])) > 0.9
    assert show_label_maps(frames, "ml", "green") == 2
    for heatmap, g in zip(
        _frame_values(video, "ml_features_label"), green, strict=True
    ):
        assert _inside(heatmap, _square_mask(*g)) > 0.9
    video.delete_run("ml")
    assert not [f for f in video.get_frame_field_schema() if f.startswith("ml_")]
    video.delete()


def test_detection_maps_of_each_frame_are_their_own(frame_files):
    """The known-truth detector of test_detection.py on frames: box A's map
    lies inside A, box B's on its evidence P outside B."""
    root = frame_files[0]
    video = fo.Dataset()
    sample = fo.Sample(filepath=str(root / "det.avi"))
    for number in (1, 2):
        path = str(root / f"det{number}.png")
        image = known_truth_image(40 + 8 * number, 60)  # RGB
        cv2.imwrite(path, image[:, :, ::-1])
        sample.frames[number] = fo.Frame(filepath=path)
    video.add_sample(sample)
    frames = video.to_frames()
    summary = compute_cams(
        frames,
        KnownTruthDetector().eval(),
        ["features"],
        "gradcam",
        "det",
        task="detection",
        classes=DETECTOR_CLASSES,
        transforms=ToTensor(),
        confidence_thresh=0.0,
        progress=False,
        num_workers=0,
    )
    assert summary.num_computed == 2
    # declared, so that the App's sidebar filters them
    assert "det_detections.detections.features_focus" in (
        video.get_frame_field_schema(flat=True)
    )
    for dets in _frame_values(video, "det_detections"):
        focus = {d.label: d.features_focus for d in dets.detections}
        assert focus["A"] > 0.9 and focus["B"] < 0.05
    chosen = frames.first()["det_detections"].detections[1]
    assert show_detection_maps(frames, "det", [chosen.id]) == {
        frames.first().id: chosen.id
    }
    shown = _frame_values(video, "det_features_detection")[0].map
    assert np.array_equal(shown, chosen.features_map.map)
    video.delete_run("det")
    assert not [f for f in video.get_frame_field_schema() if f.startswith("det_")]
    video.delete()


def test_the_frames_of_a_clip_are_explained_on_the_video(frame_files):
    """What the clips-view refusal advises: ``clips.to_frames()``."""
    video = _video(*frame_files)
    frames = video.to_clips([[(2, 3)]]).to_frames()
    assert _run(frames, "clip").num_computed == 2
    maps = _frame_values(video, "clip_features")
    assert maps[0] is None and maps[3] is None  # outside the clip
    for heatmap, square in zip(maps[1:3], MOVES[1:3], strict=True):
        assert _inside(heatmap, _square_mask(*square)) > 0.9
    video.delete()
