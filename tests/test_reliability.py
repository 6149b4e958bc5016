"""Nothing goes wrong in silence: one test per case that used to fail without a word (issue 10).

Each case: a distorted camera, a resumed run, a diverging run, masks without labels,
a fresh install's test dependencies, and the memory the label cache takes.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.conftest import copy_scene
from ulift_ns.datamanager import GT_LABELS, SAM_LABELS, UnifiedLiftDataManagerConfig
from ulift_ns.dataparser import UnifiedLiftDataParserConfig
from ulift_ns.labelio import read_label_map, write_label_png

REPO = Path(__file__).resolve().parents[1]


def make_datamanager(scene: Path, test_mode: str = "val"):
    config = UnifiedLiftDataManagerConfig(dataparser=UnifiedLiftDataParserConfig(data=scene))
    return config.setup(device="cpu", test_mode=test_mode)


def train(scene: Path, runs: Path, steps: int, monkeypatch, change=None):
    """``job.train_on_scene`` with ``change(config)`` applied to the method's config first."""
    import ulift_ns.job as job

    original = job.trainer_config

    def patched(*args, **kwargs):
        config = original(*args, **kwargs)
        if change is not None:
            change(config)
        return config

    monkeypatch.setattr(job, "trainer_config", patched)
    return job.train_on_scene(scene, runs, steps, device="cpu", quiet=True)


# --------------------------------------------------------------------------- distorted cameras


def test_distorted_camera_labels_land_on_the_undistorted_image(tmp_path: Path):
    """OPENCV k1 0.2, k2 0.05 as ns-process-data writes: nerfstudio undistorts and crops the image.

    The cached label maps must carry the labels of the cached (undistorted) image: the
    truth is the demo scene ray-cast through the undistorted camera nerfstudio trains with.
    Before: labels were only resized to the cropped size (72% of object pixels right here).
    """
    from ulift_ns import demo
    from ulift_ns.predict import split_cameras

    scene = demo.generate_demo_scene(
        tmp_path / "scene", seed=0, num_views=3, width=320, height=240, distortion=(0.2, 0.05),
        noise=demo.MaskNoiseConfig.clean(),
    )  # fmt: skip
    dm = make_datamanager(scene)
    poses = {Path(f["file_path"]).stem: np.array(f["transform_matrix"]) for f in json.loads((scene / "transforms.json").read_text())["frames"]}
    layout = demo.build_scene(0)
    agreement = []
    for i, data in enumerate(dm.cached_train):
        cam = dm.train_dataset.cameras[i]
        assert data["image"].shape[:2] == data[GT_LABELS].shape == data[SAM_LABELS].shape
        assert tuple(data["image"].shape[:2]) != (240, 320)  # nerfstudio did crop
        intr = dict(fl_x=float(cam.fx), fl_y=float(cam.fy), cx=float(cam.cx), cy=float(cam.cy), w=int(cam.width), h=int(cam.height))
        kind = demo.render_view(layout, poses[Path(dm.train_dataset.image_filenames[i]).stem], intr, supersample=1)["kind"]
        truth = np.where(kind > 0, kind, 0)
        cached = data[GT_LABELS].long().numpy()
        objects = (truth > 0) | (cached > 0)
        agreement.append(float((cached == truth)[objects].mean()))
        # Clean masks are a per-view relabelling of the ground truth: both maps went through the same warp.
        sam = data[SAM_LABELS].long().numpy()
        pairs = {(int(g), int(s)) for g, s in zip(cached[cached > 0], sam[cached > 0])}
        assert len(pairs) == len({g for g, _ in pairs})
    assert np.mean(agreement) >= 0.95, agreement

    # ulift eval scores in the same camera: the cached ground truth, as predictions, is perfect.
    from ulift_ns.evaluate import evaluate_predictions

    for i, data in enumerate(dm.cached_train):
        write_label_png(tmp_path / "pred" / f"{Path(dm.train_dataset.image_filenames[i]).stem}.png", data[GT_LABELS].long().numpy())
    assert evaluate_predictions(scene, tmp_path / "pred")["pq"] == pytest.approx(100.0)

    # ulift render uses the same cameras, computed without loading any image.
    fresh = make_datamanager(scene, test_mode="inference")
    views = split_cameras(SimpleNamespace(datamanager=fresh), "train")
    for (_, camera), i in zip(views, range(len(dm.cached_train))):
        assert (int(camera.height), int(camera.width)) == tuple(dm.cached_train[i]["image"].shape[:2])
        assert torch.allclose(camera.fx, dm.train_dataset.cameras.fx[i : i + 1])
        assert torch.allclose(camera.cx, dm.train_dataset.cameras.cx[i : i + 1])


# --------------------------------------------------------------------------- resume


def test_resumed_run_trains_means_and_identities(tiny_scene: Path, tmp_path: Path, monkeypatch):
    """``--load-dir`` after an interrupt: every group must train from the first resumed step.

    Before: the optimisers kept the pre-load Parameters, so the means and the identity
    features did not move at all after the resume (no densification left to rebuild them).
    """

    def no_densification(config):  # densification rebuilds the optimisers, which hid the bug
        config.pipeline.model.stop_split_at = 10

    first = train(tiny_scene, tmp_path / "runs", 30, monkeypatch, no_densification)
    ckpt_dir = first.config_path.parent / "nerfstudio_models"
    saved = torch.load(sorted(ckpt_dir.glob("*.ckpt"))[-1], map_location="cpu", weights_only=False)["pipeline"]

    def resume(config):
        no_densification(config)
        config.load_dir = ckpt_dir

    second = train(tiny_scene, tmp_path / "runs2", 20, monkeypatch, resume)
    params = second.pipeline.model.gauss_params
    for name in ("means", "identity"):
        before = saved[f"_model.gauss_params.{name}"]
        after = params[name].detach()
        assert after.shape == before.shape  # no densification in the resumed steps
        assert (after - before).abs().max() > 1e-6, name


# --------------------------------------------------------------------------- non-finite values


def test_diverging_run_stops_at_its_first_bad_step_and_saves_nothing_bad(tiny_scene: Path, tmp_path: Path, monkeypatch):
    """scales lr 1e4: the run must stop naming step, group and cause, and leave no NaN checkpoint.

    Before: exit 0 with half the Gaussians NaN in the checkpoint.
    """

    def explode(config):
        config.optimizers["scales"]["optimizer"].lr = 1e4

    with pytest.raises(SystemExit) as err:
        train(tiny_scene, tmp_path / "runs", 30, monkeypatch, explode)
    message = str(err.value)
    assert re.search(r"step \d+", message) and "scales" in message and "learning rate" in message, message
    assert "--optimizers.scales.optimizer.lr" in message
    for ckpt in (tmp_path / "runs").rglob("*.ckpt"):
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["pipeline"]
        assert all(torch.isfinite(v).all() for v in state.values() if torch.is_tensor(v) and v.is_floating_point()), ckpt


def test_render_and_export_drop_or_refuse_non_finite_gaussians(trained_run, tmp_path: Path, monkeypatch, capsys):
    """A model with NaN Gaussians: render/export drop them and say how many; all NaN is refused.

    Before: ``ulift render`` wrote mostly empty maps, ``ulift export`` "Exported 0 of 0 objects", exit 0.
    """
    import ulift_ns.predict as predict
    from ulift_ns.cli import main

    pipeline = predict.load_pipeline(trained_run.config_path)
    model = pipeline.model
    model.labels_cache_file = None  # this test edits the shared run's model: keep its 3D-label cache file intact
    n = int(model.gauss_params["means"].shape[0])
    with torch.no_grad():
        model.gauss_params["scales"][:5] = float("nan")
        model.gauss_params["identity"][5:8] = float("inf")
    monkeypatch.setattr(predict, "load_pipeline", lambda *a, **k: pipeline)
    main(["export", "--load-config", str(trained_run.config_path), "--output-dir", str(tmp_path / "export")])
    out = capsys.readouterr().out
    assert f"left out of every object: 8 of {n} Gaussians" in out, out
    summary = json.loads((tmp_path / "export" / "objects.json").read_text())
    assert summary["dropped"]["non_finite"] == 5 and summary["objects"]
    main(["render", "--load-config", str(trained_run.config_path), "--output-dir", str(tmp_path / "labels0"), "--split", "test"])
    assert f"dropped 8 of {n} Gaussians" in capsys.readouterr().out
    assert int(model.gauss_params["means"].shape[0]) == n - 8

    with torch.no_grad():
        model.gauss_params["means"][:] = float("nan")
    for command in (["export", "--output-dir", str(tmp_path / "export2")], ["render", "--output-dir", str(tmp_path / "labels")]):
        with pytest.raises(SystemExit) as err:
            main([command[0], "--load-config", str(trained_run.config_path), *command[1:]])
        assert "non-finite" in str(err.value) and "retrain" in str(err.value)
    assert not (tmp_path / "labels").exists() and not (tmp_path / "export2").exists()


# --------------------------------------------------------------------------- no supervision


def test_masks_without_any_label_stop_training_before_it_starts(tiny_scene: Path, tmp_path: Path, monkeypatch):
    """Every mask all zero: an error naming the folder and how to make masks, not a silent run.

    Before: exit 0, the lifting losses never ran, and render wrote random ids.
    """
    scene = copy_scene(tiny_scene, tmp_path / "scene")
    for path in (scene / "sam_masks").glob("*.png"):
        write_label_png(path, np.zeros_like(read_label_map(path)))
    with pytest.raises(SystemExit) as err:
        train(scene, tmp_path / "runs", 5, monkeypatch)
    message = str(err.value)
    assert str(scene / "sam_masks") in message and "ulift masks" in message and "all zero" in message
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


# --------------------------------------------------------------------------- fresh install


def _imported_modules(path: Path) -> set:
    """Top-level modules a test file imports, including ``pytest.importorskip("x")``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "importorskip" and node.args:
            if isinstance(node.args[0], ast.Constant):
                names.add(str(node.args[0].value).split(".")[0])
    return names


def _requirement_closure(extras: tuple) -> set:
    """Distributions that ``pip install -e .[test]`` brings in, following installed metadata."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    todo = list(project["dependencies"]) + [r for e in extras for r in project["optional-dependencies"].get(e, [])]
    seen: set = set()
    while todo:
        req = Requirement(todo.pop())
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = req.name.lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            todo += [r for r in (md.requires(req.name) or []) if "extra ==" not in r]
        except md.PackageNotFoundError:
            pass
    return seen


def test_every_package_a_test_imports_comes_with_the_test_extra():
    """README's test command (``setup.sh`` = ``pip install -e .[test]``) must install what the tests import.

    Before: ``test_cli_masks`` and the random-init SAM tests needed segment-anything, which
    ``[test]`` did not install, so a fresh clone had 1 failure and never ran the SAM path.
    """
    closure = _requirement_closure(("test",))
    providers = md.packages_distributions()
    local = {"tests", "ulift_ns", "__future__"}
    missing = {}
    for path in sorted((REPO / "tests").glob("*.py")):
        for module in _imported_modules(path) - local - set(sys.stdlib_module_names):
            dists = {d.lower().replace("_", "-") for d in providers.get(module, [])}
            if not dists & closure:
                missing.setdefault(module, []).append(path.name)
    assert not missing, f"imported by tests but not installed by .[test]: {missing}"


# --------------------------------------------------------------------------- label memory


def test_label_cache_uses_the_smallest_dtype_and_reports_its_size(tiny_scene: Path, capsys):
    """300 views at 1600x1200 cached as int64 took 4.6 GB (9.2 GB with gt); uint16 needs a quarter."""
    dm = make_datamanager(tiny_scene)
    cache = dm.cached_train
    out = capsys.readouterr().out
    for data in cache:
        for key in (SAM_LABELS, GT_LABELS):
            assert data[key].dtype == torch.uint16
            assert data[key].element_size() * data[key].numel() == 2 * data["image"].shape[0] * data["image"].shape[1]
    size_mb = sum(2 * d["image"].shape[0] * d["image"].shape[1] for d in cache) / 1e6
    assert f"sam_labels {size_mb:.1f} MB" in out and "uint16" in out, out
    _, batch = dm.next_train(0)
    assert batch[SAM_LABELS].dtype == torch.int64  # what the losses index with
    from ulift_ns.datamanager import compact_labels

    assert compact_labels(np.array([[0, 70000]])).dtype == torch.int32
