"""Click-to-select, headless: the real viewer callbacks driven with a known camera."""

from __future__ import annotations

import threading

import pytest
import torch

from nerfstudio.viewer.utils import parse_object
from nerfstudio.viewer.viewer_elements import ViewerClick, ViewerControl, ViewerElement
from ulift_ns.predict import split_cameras
from ulift_ns.viewer import HIGHLIGHT, ONLY, REMOVE
from tests.conftest import paint_groups


@pytest.fixture()
def scene_view(trained_run):
    """The pipeline in eval mode with painted identities, a training camera, and its outputs; all restored after."""
    pipeline = trained_run.pipeline
    model = pipeline.model
    saved = model.codebook.detach().clone(), model.identity.detach().clone()
    paint_groups(model)
    pipeline.eval()
    _, camera = split_cameras(pipeline, "train")[0]
    selector = model.selector
    selector.set_camera_provider(lambda h, w: camera)
    yield pipeline, camera, model.get_outputs_for_camera(camera)
    selector.selected.clear()
    selector.mode.value = HIGHLIGHT
    selector.set_camera_provider(None)
    with torch.no_grad():
        model.codebook.copy_(saved[0])
        model.gauss_params["identity"].copy_(saved[1])


def _click(selector, labels: torch.Tensor, y: int, x: int) -> None:
    h, w = labels.shape
    selector.on_click(ViewerClick(origin=(0.0, 0.0, 0.0), direction=(0.0, 0.0, -1.0), screen_pos=((x + 0.5) / w, (y + 0.5) / h)))


def _dominant_object(labels: torch.Tensor) -> tuple[int, int, int]:
    """The most common label > 0 and one pixel of it."""
    values, counts = labels[labels > 0].unique(return_counts=True)
    label = int(values[counts.argmax()])
    ys, xs = torch.nonzero(labels == label, as_tuple=True)
    i = len(ys) // 2
    return label, int(ys[i]), int(xs[i])


def test_viewer_finds_the_controls(trained_run):
    elements = [e for _, e in parse_object(trained_run.pipeline, ViewerElement, "Custom Elements")]
    names = {e.name for e in elements}
    assert {"Click to select", "Show", "Clear selection", "Export selection"} <= names
    controls = parse_object(trained_run.pipeline, ViewerControl, "Custom Elements")
    assert any(c is trained_run.pipeline.model.selector.viewer_control for _, c in controls)


def test_click_selects_the_object_under_the_cursor_and_toggles(scene_view):
    pipeline, _, out = scene_view
    selector = pipeline.model.selector
    labels = out["instance_id"][..., 0].long()
    label, y, x = _dominant_object(labels)
    _click(selector, labels, y, x)
    assert selector.selected == {label}
    empty = torch.nonzero(labels == 0)
    if len(empty):
        _click(selector, labels, int(empty[0, 0]), int(empty[0, 1]))
        assert selector.selected == {label}  # clicking on nothing changes nothing
    _click(selector, labels, y, x)
    assert selector.selected == set()


def test_only_selection_hides_everything_else(scene_view):
    pipeline, camera, out = scene_view
    model = pipeline.model
    selector = model.selector
    labels = out["instance_id"][..., 0].long()
    label, y, x = _dominant_object(labels)
    _click(selector, labels, y, x)
    selector.mode.value = ONLY
    shown = model.get_outputs_for_camera(camera)
    assert set(shown.keys()) == set(out.keys())  # the viewer's output list never changes
    background = shown["background"]
    others = (labels > 0) & (labels != label)
    gone = (shown["selection"] - background).abs().amax(-1) < 0.1
    assert gone[others].float().mean() > 0.8
    # the selected object itself is still there, not background
    kept = (shown["selection"] - background).abs().amax(-1) >= 0.1
    assert kept[labels == label].float().mean() > 0.5

    selector.mode.value = REMOVE
    removed = model.get_outputs_for_camera(camera)["selection"]
    changed = (removed - out["rgb"]).abs().amax(-1) > 0.05
    assert changed[labels == label].float().mean() > 0.5
    assert changed[others].float().mean() < 0.5

    selector.mode.value = HIGHLIGHT
    tinted = model.get_outputs_for_camera(camera)["selection"]
    assert not torch.allclose(tinted[labels == label], out["rgb"][labels == label])


def test_clear_button_and_no_selection(scene_view):
    pipeline, camera, out = scene_view
    selector = pipeline.model.selector
    labels = out["instance_id"][..., 0].long()
    label, y, x = _dominant_object(labels)
    _click(selector, labels, y, x)
    selector.clear_selection.cb_hook(selector.clear_selection)
    assert selector.selected == set()
    assert torch.equal(pipeline.model.get_outputs_for_camera(camera)["selection"], out["rgb"])


class _RecordingLock:
    def __init__(self):
        self.lock, self.entered = threading.Lock(), 0

    def __enter__(self):
        self.lock.acquire()
        self.entered += 1

    def __exit__(self, *exc):
        self.lock.release()


class _FakeViewer:
    def __init__(self):
        self.train_lock = _RecordingLock()
        self.rerenders = 0

    def _trigger_rerender(self):
        self.rerenders += 1


def test_clicks_take_the_training_lock(scene_view):
    pipeline, _, out = scene_view
    selector = pipeline.model.selector
    viewer = _FakeViewer()
    selector.viewer_control.viewer = viewer
    try:
        labels = out["instance_id"][..., 0].long()
        _, y, x = _dominant_object(labels)
        _click(selector, labels, y, x)
        assert viewer.train_lock.entered == 1 and viewer.rerenders == 1
    finally:
        del selector.viewer_control.viewer


def test_every_click_saves_the_selection_and_export_selection_follows_it(scene_view, tmp_path, monkeypatch, capsys):
    """Clicks write RUN/selection.json at once; `ulift export --selection` then exports exactly what is selected.

    Before: selection.json changed only on "Export selection", so the CLI exported an older selection.
    """
    import json

    import ulift_ns.predict
    from ulift_ns import cli
    from ulift_ns.export import SELECTION_FILENAME
    from ulift_ns.viewer import NOTHING_HERE

    pipeline, _, out = scene_view
    selector = pipeline.model.selector
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yml").write_text("stand-in: the pipeline is injected below\n")
    selector.run_dir = run
    monkeypatch.setattr(ulift_ns.predict, "load_pipeline", lambda *a, **k: pipeline)
    saved = lambda: json.loads((run / SELECTION_FILENAME).read_text())["ids"]  # noqa: E731
    try:
        labels = out["instance_id"][..., 0].long()
        values, counts = labels[labels > 0].unique(return_counts=True)
        first, second = [int(v) for v in values[counts.argsort(descending=True)][:2]]
        for label in (first, second):
            ys, xs = torch.nonzero(labels == label, as_tuple=True)
            _click(selector, labels, int(ys[len(ys) // 2]), int(xs[len(xs) // 2]))
        assert saved() == sorted([first, second])
        text = selector.feedback.content
        assert f"id **{first}**" in text and f"id **{second}**" in text and "Gaussians" in text and "data:image/png" in text
        empty = torch.nonzero(labels == 0)
        if len(empty):
            _click(selector, labels, int(empty[0, 0]), int(empty[0, 1]))
            assert NOTHING_HERE in selector.feedback.content and saved() == sorted([first, second])
        ys, xs = torch.nonzero(labels == first, as_tuple=True)
        _click(selector, labels, int(ys[len(ys) // 2]), int(xs[len(xs) // 2]))  # toggles `first` off
        assert saved() == [second]

        cli.main(["export", "--load-config", str(run / "config.yml"), "--output-dir", str(tmp_path / "objects"), "--selection"])
        assert [p.name for p in (tmp_path / "objects").glob("object_*.ply")] == [f"object_{second}.ply"]

        exported = selector.export()
        assert exported is not None and (exported / f"object_{second}.ply").is_file()
        assert str(exported) in selector.feedback.content and "3 files" in selector.feedback.content

        selector.clear_selection.cb_hook(selector.clear_selection)
        assert saved() == [] and "none" in selector.feedback.content
    finally:
        selector.run_dir = None
        selector.status = ""
