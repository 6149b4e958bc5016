"""Tests for ulift_ns.export and `ulift export`: segmented PLYs, parity with ns-export, overwrite rules."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from plyfile import PlyData

from ulift_ns import cli
from ulift_ns.config import trainer_config
from ulift_ns.demo import generate_demo_scene
from ulift_ns.export import (
    OBJECTS_FILENAME,
    SCENE_FILENAME,
    SELECTION_FILENAME,
    UnknownObjectError,
    export_filter,
    export_segmented,
    gaussian_ply_array,
    parse_ids,
    read_selection,
    selection_path,
    standard_property_names,
    write_ply,
    write_selection,
)
from ulift_ns.labelio import OutputExistsError

CODEBOOK_SLOTS = (2, 6, 9)  # -> object ids 3, 7, 10
IDS = [3, 7, 10]
NAN_SCALE, INF_REST, LOW_OPACITY, NAN_IDENTITY = 5, 8, 13, 21


def _slot_of(g: np.ndarray) -> np.ndarray:
    """Which of the three objects Gaussian g belongs to (unequal sizes on purpose)."""
    r = g % 5
    return np.where(r == 0, 0, np.where(r <= 2, 1, 2))


def _ns_export(config: Path, out: Path) -> np.ndarray:
    from nerfstudio.scripts.exporter import ExportGaussianSplat

    ExportGaussianSplat(load_config=config, output_dir=out).main()
    return PlyData.read(str(out / "splat.ply"))["vertex"].data


def _read(path: Path) -> np.ndarray:
    return PlyData.read(str(path))["vertex"].data


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 10-step run whose Gaussians are then given known object ids, a NaN, an inf and a faint one."""
    root = tmp_path_factory.mktemp("export")
    scene = generate_demo_scene(root / "scene", num_views=6, width=48, height=36)
    cfg = trainer_config(max_steps=10)
    cfg.pipeline.model.label_rule = "feature"  # the designed ids are per feature; test_labels3d covers multiview
    cfg.pipeline.datamanager.data = scene
    cfg.output_dir = root / "runs"
    cfg.vis = "tensorboard"
    cfg.machine.device_type = "cpu"
    cfg.logging.local_writer.enable = False
    cfg.set_timestamp()
    cfg.save_config()
    trainer = cfg.setup(local_rank=0, world_size=1)
    trainer.setup()
    trainer.train()

    model = trainer.pipeline.model
    n = model.num_points
    g = np.arange(n)
    slot = _slot_of(g)
    with torch.no_grad():
        d = model.codebook.shape[1]
        model.codebook.zero_()
        for j, k in enumerate(CODEBOOK_SLOTS):
            model.codebook[k, j] = 5.0
        identity = torch.zeros(n, d)
        identity[torch.from_numpy(g), torch.from_numpy(slot)] = 5.0
        identity[NAN_IDENTITY] = float("nan")
        model.gauss_params["identity"].copy_(identity)
        model.gauss_params["scales"][NAN_SCALE, 1] = float("nan")
        model.gauss_params["features_rest"][INF_REST, 3, 1] = float("inf")
        model.gauss_params["opacities"][LOW_OPACITY, 0] = -8.0
        # make sure nothing else is filtered, so the expected sets are exact
        others = torch.ones(n, dtype=torch.bool)
        others[[NAN_SCALE, INF_REST, LOW_OPACITY]] = False
        op = model.gauss_params["opacities"]
        op[others] = op[others].clamp_min(-5.0)
    trainer.save_checkpoint(cfg.max_num_iterations)

    expected = np.array(CODEBOOK_SLOTS)[slot] + 1
    expected[NAN_IDENTITY] = 0
    keep = np.ones(n, dtype=bool)
    keep[[NAN_SCALE, INF_REST, LOW_OPACITY]] = False
    return {
        "root": root,
        "cfg": cfg,
        "config": cfg.get_base_dir() / "config.yml",
        "model": model,
        "labels": expected,
        "keep": keep,
    }


@pytest.fixture(scope="module")
def cli_export(run):
    """`ulift export --load-config CFG --output-dir DIR` (every object) and ns-export on the same checkpoint."""
    out = run["root"] / "cli_all"
    cli.main(["export", "--load-config", str(run["config"]), "--output-dir", str(out)])
    ns = _ns_export(run["config"], run["root"] / "ns")
    return out, ns


def test_labels_are_the_designed_ones(run):
    labels, prob = run["model"].gaussian_instance_ids()
    ok = np.arange(labels.shape[0]) != NAN_IDENTITY
    assert np.array_equal(labels.numpy()[ok], run["labels"][ok])
    assert float(prob[torch.from_numpy(ok)].min()) > 0.95  # flat over L = 256 entries would be 0.004


def test_scene_ply_matches_ns_export(run, cli_export):
    out, ns = cli_export
    ours = _read(out / SCENE_FILENAME)
    names = list(ours.dtype.names)
    assert names[-1] == "instance_id" and ours.dtype["instance_id"] == np.dtype("<i4")
    assert names[:-1] == list(ns.dtype.names)
    assert names[:-1] == standard_property_names(3, 15)
    assert len(names) - 1 == 9 + 45 + 8
    # both drop the NaN, the inf and the faint Gaussian, keeping model order
    assert len(ours) == len(ns) == int(run["keep"].sum())
    for name in ns.dtype.names:
        assert ours.dtype[name] == np.dtype("<f4")
        np.testing.assert_array_equal(ours[name], ns[name], err_msg=name)
    np.testing.assert_array_equal(ours["instance_id"], run["labels"][run["keep"]])
    ply = PlyData.read(str(out / SCENE_FILENAME))
    assert ply.byte_order == "<" and not ply.text


def test_objects_partition_the_scene(run, cli_export):
    out, _ = cli_export
    scene = _read(out / SCENE_FILENAME)
    std = [n for n in scene.dtype.names if n != "instance_id"]
    kept_labels = run["labels"][run["keep"]]
    files = sorted(p.name for p in out.glob("object_*.ply"))
    assert files == sorted(f"object_{i}.ply" for i in IDS)
    for i in IDS:
        obj = _read(out / f"object_{i}.ply")
        assert list(obj.dtype.names) == std  # a plain 3DGS PLY
        assert len(obj) == int((kept_labels == i).sum())
        rows = scene[scene["instance_id"] == i]
        for name in std:
            np.testing.assert_array_equal(obj[name], rows[name])
    assert sum(len(_read(out / f)) for f in files) == len(scene) - 1  # the NaN-identity one is in no object


def test_objects_json(run, cli_export):
    out, _ = cli_export
    info = json.loads((out / OBJECTS_FILENAME).read_text())
    model = run["model"]
    keep, labels = run["keep"], run["labels"]
    means = model.means.detach().numpy()
    assert [o["id"] for o in info["objects"]] == IDS
    assert info["num_gaussians"] == int(keep.sum()) and info["num_gaussians_model"] == len(keep)
    assert info["dropped"] == {"non_finite": 2, "low_opacity": 1}
    assert info["unassigned"] == 1
    assert info["unassigned_detail"]["small_objects"] == 0 and info["label_rule"] == "feature"
    palette = model.palette.numpy()
    for o in info["objects"]:
        sel = keep & (labels == o["id"])
        pts = means[sel]
        assert o["num_gaussians"] == int(sel.sum())
        assert o["codebook_index"] == o["id"] - 1
        lo, hi = np.array(o["bbox_min"]), np.array(o["bbox_max"])
        opacity = torch.sigmoid(model.gauss_params["opacities"].detach()).numpy().reshape(-1)[sel]
        bright = pts[np.argsort(opacity, kind="stable")[int(0.01 * len(pts)) :]]  # the faintest 1% are ignored
        assert int(0.01 * len(pts)) >= 1
        np.testing.assert_allclose(lo, bright.min(0), atol=1e-6)
        np.testing.assert_allclose(hi, bright.max(0), atol=1e-6)
        assert o["opacity_share"] > 0.1
        assert o["color"] == [round(float(v) * 255) for v in palette[o["id"] - 1]]
        assert all(0 <= v <= 255 for v in o["color"])
        assert 0.95 < o["mean_confidence"] <= 1.0
        assert o["ply"] == f"object_{o['id']}.ply"


def test_sh_degree_0_matches_ns_export(run):
    """sh_degree 0 stores colours as logits; both exporters write RGB2SH(sigmoid(.)) and no f_rest."""
    cfg = copy.deepcopy(run["cfg"])
    cfg.pipeline.model.sh_degree = 0
    cfg.timestamp = cfg.timestamp + "_sh0"
    cfg.save_config()
    (ckpt_path,) = run["cfg"].get_checkpoint_dir().glob("*.ckpt")
    ckpt = torch.load(ckpt_path, weights_only=False)
    key = "_model.gauss_params.features_rest"
    ckpt["pipeline"][key] = ckpt["pipeline"][key][:, :0]  # an sh_degree 0 model has no higher bands
    cfg.get_checkpoint_dir().mkdir(parents=True)
    torch.save(ckpt, cfg.get_checkpoint_dir() / ckpt_path.name)
    config = cfg.get_base_dir() / "config.yml"
    ns = _ns_export(config, run["root"] / "ns_sh0")
    from ulift_ns.predict import load_pipeline

    model = load_pipeline(config, test_mode="inference").model
    assert model.config.sh_degree == 0
    masks = export_filter(model)
    keep = masks["finite"] & masks["visible"]
    expected = run["keep"].copy()
    expected[INF_REST] = True  # features_rest is not exported at sh_degree 0, so its inf does not count
    assert np.array_equal(keep.numpy(), expected)
    ours = gaussian_ply_array(model, mask=keep)
    assert list(ours.dtype.names) == list(ns.dtype.names) == standard_property_names(0, 0)
    for name in ns.dtype.names:
        np.testing.assert_array_equal(ours[name], ns[name], err_msg=name)


def test_gaussian_ply_array_mask_and_extra(run):
    model = run["model"]
    n = model.num_points
    mask = torch.zeros(n, dtype=torch.bool)
    mask[[0, 3, 4]] = True
    arr = gaussian_ply_array(model, mask=mask, extra={"instance_id": np.arange(n, dtype=np.int32)})
    assert arr.shape == (3,)
    assert arr["instance_id"].tolist() == [0, 3, 4]
    np.testing.assert_array_equal(arr["x"], model.means[mask, 0].detach().numpy())
    rest = model.features_rest[mask].detach().numpy()  # [3, 15, 3]
    np.testing.assert_array_equal(arr["f_rest_0"], rest[:, 0, 0])
    np.testing.assert_array_equal(arr["f_rest_15"], rest[:, 0, 1])  # channel-major, as Inria
    np.testing.assert_array_equal(arr["rot_3"], model.quats[mask, 3].detach().numpy())
    assert gaussian_ply_array(model, mask=torch.zeros(n, dtype=torch.bool)).shape == (0,)
    with pytest.raises(ValueError):
        gaussian_ply_array(model, extra={"opacity": np.zeros(n, np.int32)})


def test_write_ply_roundtrip_and_atomic(tmp_path, run):
    arr = gaussian_ply_array(run["model"], mask=torch.from_numpy(run["keep"]))
    path = write_ply(tmp_path / "a.ply", arr)
    back = _read(path)
    assert back.dtype.names == arr.dtype.names and len(back) == len(arr)
    np.testing.assert_array_equal(back["scale_2"], arr["scale_2"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ply"]  # no temp file left behind


def test_subset_ids_and_refuse_overwrite(run, tmp_path):
    model = run["model"]
    out = tmp_path / "sub"
    info = export_segmented(model, out, ids=[7])
    assert sorted(p.name for p in out.iterdir()) == sorted(["object_7.ply", SCENE_FILENAME, OBJECTS_FILENAME])
    assert info["exported_ids"] == [7]
    assert [o["ply"] for o in info["objects"]] == [None, "object_7.ply", None]
    assert len(_read(out / SCENE_FILENAME)) == int(run["keep"].sum())

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(OutputExistsError):
        export_segmented(model, out, ids=[3, 7])
    # object_3.ply did not exist but must not have been written: checks come first
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    info = export_segmented(model, out, ids=[3, 7], overwrite=True)
    assert sorted(p.name for p in out.glob("object_*.ply")) == ["object_3.ply", "object_7.ply"]
    assert info["exported_ids"] == [3, 7]


def test_overwrite_replaces_the_earlier_export_as_a_set(run, tmp_path):
    model, out = run["model"], tmp_path / "set"
    export_segmented(model, out)  # every object: 3, 7, 10
    (out / "notes.txt").write_text("mine")
    (out / "object_99.ply").write_bytes(b"a PLY the user put here")  # not listed in objects.json
    export_segmented(model, out, ids=[3], overwrite=True)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["object_3.ply", "object_99.ply", SCENE_FILENAME, OBJECTS_FILENAME, "notes.txt"])


def test_a_killed_export_leaves_no_temp_file_after_the_next_run(run, tmp_path):
    import os
    import subprocess

    out = tmp_path / "killed"
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs, as after a SIGKILL
    stale = out / f".{SCENE_FILENAME}.tmp{dead.pid}.ply"
    stale.write_bytes(b"half a PLY")
    live = out / f".object_3.ply.tmp{os.getpid()}.ply"  # a writer that is still running (this process)
    live.write_bytes(b"being written")
    export_segmented(run["model"], out, ids=[7])
    assert not stale.exists() and live.exists()
    live.unlink()


def test_one_existing_target_blocks_everything(run, tmp_path):
    out = tmp_path / "partial"
    out.mkdir()
    (out / OBJECTS_FILENAME).write_text("{}")
    with pytest.raises(OutputExistsError, match="overwrite"):
        export_segmented(run["model"], out)
    assert [p.name for p in out.iterdir()] == [OBJECTS_FILENAME]


def test_unknown_ids_list_the_existing_ones(run, tmp_path):
    with pytest.raises(UnknownObjectError, match=r"4, 99.*3, 7, 10"):
        export_segmented(run["model"], tmp_path / "x", ids=[3, 4, 99])
    assert not (tmp_path / "x").exists()


def test_unfiltered_export_keeps_everything(run, tmp_path):
    info = export_segmented(run["model"], tmp_path / "raw", filter_gaussians=False)
    scene = _read(tmp_path / "raw" / SCENE_FILENAME)
    assert len(scene) == len(run["keep"]) and info["dropped"] == {"non_finite": 0, "low_opacity": 0}
    assert np.isnan(scene["scale_1"][NAN_SCALE])


def test_parse_ids():
    assert parse_ids("7,3, 7") == [3, 7]
    assert parse_ids("3 7") == [3, 7]
    with pytest.raises(ValueError, match="--ids"):
        parse_ids("3,x")
    with pytest.raises(ValueError):
        parse_ids(" , ")


def test_selection_file(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = run_dir / "config.yml"
    config.write_text("")
    assert selection_path(config) == run_dir / SELECTION_FILENAME == selection_path(run_dir)
    with pytest.raises(ValueError, match="click objects in the viewer first"):
        read_selection(config)
    write_selection(run_dir, [7, 3, 3])
    assert json.loads((run_dir / SELECTION_FILENAME).read_text()) == {"ids": [3, 7]}
    assert read_selection(config) == [3, 7]
    (run_dir / SELECTION_FILENAME).write_text('{"ids": []}')
    with pytest.raises(ValueError, match="click objects"):
        read_selection(config)
    (run_dir / SELECTION_FILENAME).write_text('{"ids": ["a"]}')
    with pytest.raises(ValueError, match="expected"):
        read_selection(config)


def test_cli_selection_and_ids(run, tmp_path, monkeypatch):
    """CLI id resolution and error messages; the real load_pipeline is covered by ``cli_export``."""
    import ulift_ns.predict

    modes = []

    def fake_load(path, test_mode="test"):
        modes.append(test_mode)
        return type("Pipeline", (), {"model": run["model"]})()

    monkeypatch.setattr(ulift_ns.predict, "load_pipeline", fake_load)
    config = str(run["config"])
    sel = selection_path(run["config"])
    if sel.exists():
        sel.unlink()
    with pytest.raises(SystemExit, match="click objects in the viewer first"):
        cli.main(["export", "--load-config", config, "--output-dir", str(tmp_path / "s"), "--selection"])
    with pytest.raises(SystemExit, match="either --ids or --selection"):
        cli.main(["export", "--load-config", config, "--output-dir", str(tmp_path / "s"), "--ids", "3", "--selection"])
    write_selection(run["config"], [10, 3])
    try:
        cli.main(["export", "--load-config", config, "--output-dir", str(tmp_path / "s"), "--selection"])
    finally:
        sel.unlink()
    assert sorted(p.name for p in (tmp_path / "s").glob("object_*.ply")) == ["object_10.ply", "object_3.ply"]
    with pytest.raises(SystemExit, match="already exists"):
        cli.main(["export", "--load-config", config, "--output-dir", str(tmp_path / "s"), "--ids", "7"])
    with pytest.raises(SystemExit, match="Existing object ids"):
        cli.main(["export", "--load-config", config, "--output-dir", str(tmp_path / "u"), "--ids", "4"])
    cli.main(["export", "--load-config", config, "--output-dir", str(tmp_path / "s"), "--ids", "7", "--overwrite"])
    assert (tmp_path / "s" / "object_7.ply").is_file()
    assert modes == ["inference"] * 3  # the existing-file refusal comes before any loading


def test_robust_bbox_and_real_objects():
    from ulift_ns.export import real_objects, robust_bbox

    pts = np.concatenate([np.zeros((99, 3)), np.full((1, 3), 50.0)])
    opacity = np.concatenate([np.ones(99), [0.01]])
    lo, hi = robust_bbox(pts, opacity)
    assert hi.max() == 0.0  # the one faint far-away Gaussian is ignored
    labels = np.array([0] * 5 + [2] * 30 + [4] * 3 + [6] * 30)
    opacity = np.concatenate([np.ones(5), np.ones(30), np.ones(3), np.full(30, 1e-4)])
    # 4: too few Gaussians; 6: enough Gaussians but almost no opacity; 0 is never an object
    assert real_objects(labels, opacity, min_gaussians=10, min_share=0.01).tolist() == [2]


def test_small_objects_are_unassigned(run, tmp_path):
    summary = export_segmented(run["model"], tmp_path / "m", label_rule="feature", min_gaussians=10**9)
    assert summary["objects"] == [] and summary["unassigned_detail"]["small_objects"] == 3
    scene = _read(tmp_path / "m" / SCENE_FILENAME)
    assert (scene["instance_id"] == 0).all() and not list((tmp_path / "m").glob("object_*.ply"))
