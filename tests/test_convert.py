"""``ulift convert llff``: LLFF poses_bounds.npy + images -> nerfstudio transforms.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ulift_ns.convert import LlffFormatError, convert_llff, llff_to_opengl
from ulift_ns.labelio import OutputExistsError

H, W, FOCAL = 40, 60, 55.0
NAMES = ["img_b.png", "img_a.png", "img_c.png"]  # written out of order: rows follow *sorted* names


def _rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _poses_bounds(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        mat = np.zeros((3, 5))
        mat[:, :3] = _rotation(rng)
        mat[:, 3] = rng.normal(size=3) * 2
        mat[:, 4] = (H, W, FOCAL)
        rows.append(np.concatenate([mat.reshape(-1), [2.0 + rng.random(), 20.0 + rng.random()]]))
    return np.asarray(rows)


def _hand_conversion(row: np.ndarray) -> np.ndarray:
    """Independent reading of one LLFF row: [down, right, back | t | hwf] -> OpenGL [right, up, back | t]."""
    m = row[:15].reshape(3, 5)
    down, right, back, t = m[:, 0], m[:, 1], m[:, 2], m[:, 3]
    out = np.eye(4)
    out[:3, 0], out[:3, 1], out[:3, 2], out[:3, 3] = right, -down, back, t
    return out


def _llff(root: Path, n: int = 3, folders=(("images", 1),), seed: int = 0) -> Path:
    root.mkdir(parents=True)
    np.save(root / "poses_bounds.npy", _poses_bounds(n, seed))
    rng = np.random.default_rng(seed)
    for folder, factor in folders:
        (root / folder).mkdir()
        for name in (NAMES * 3)[:n] if n <= 3 else [f"img_{k:02d}.png" for k in range(n)]:
            pixels = rng.integers(0, 256, (H // factor, W // factor, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / folder / name)
    return root


def test_round_trip_matches_hand_conversion(tmp_path):
    llff = _llff(tmp_path / "llff")
    pb = np.load(llff / "poses_bounds.npy")
    out = convert_llff(llff, tmp_path / "scene")
    meta = json.loads((out / "transforms.json").read_text())
    assert meta["camera_model"] == "PINHOLE"
    assert (meta["w"], meta["h"]) == (W, H)
    assert meta["fl_x"] == pytest.approx(FOCAL) and meta["fl_y"] == pytest.approx(FOCAL)
    assert (meta["cx"], meta["cy"]) == (W / 2, H / 2)
    assert "ply_file_path" not in meta  # random init unless --seed-points
    assert [f["file_path"] for f in meta["frames"]] == ["images/img_a.png", "images/img_b.png", "images/img_c.png"]
    for k, frame in enumerate(meta["frames"]):
        np.testing.assert_allclose(np.asarray(frame["transform_matrix"]), _hand_conversion(pb[k]), atol=1e-6, rtol=0)
        np.testing.assert_allclose(frame["llff_bounds"], pb[k, 15:], atol=1e-12)
        src = llff / "images" / Path(frame["file_path"]).name
        assert (out / frame["file_path"]).read_bytes() == src.read_bytes()  # copied untouched
    c2w, hwf, bounds = llff_to_opengl(pb)
    assert c2w.shape == (3, 4, 4) and np.allclose(hwf, [H, W, FOCAL]) and bounds.shape == (3, 2)
    for m in c2w:
        assert np.linalg.det(m[:3, :3]) == pytest.approx(1.0)


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence")
def test_nerfstudio_reads_the_converted_scene(tmp_path):
    pytest.importorskip("nerfstudio")
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    llff = _llff(tmp_path / "llff")
    pb = np.load(llff / "poses_bounds.npy")
    out = convert_llff(llff, tmp_path / "scene")
    parsed = NerfstudioDataParserConfig(
        data=out, eval_mode="all", orientation_method="none", center_method="none", auto_scale_poses=False
    ).setup().get_dataparser_outputs("train")
    assert [Path(p).name for p in parsed.image_filenames] == ["img_a.png", "img_b.png", "img_c.png"]
    cams = parsed.cameras
    for k in range(3):
        np.testing.assert_allclose(cams.camera_to_worlds[k].double().numpy(), _hand_conversion(pb[k])[:3], atol=1e-5)
    assert float(cams.fx[0]) == pytest.approx(FOCAL) and int(cams.width[0]) == W and int(cams.height[0]) == H
    # the camera looks along LLFF's "forward" (minus its backwards axis)
    import torch

    rays = cams.generate_rays(camera_indices=0, coords=torch.tensor([[H / 2, W / 2]], dtype=torch.float32))
    forward = -pb[0, :15].reshape(3, 5)[:, 2]
    np.testing.assert_allclose(rays.directions[0].double().numpy(), forward, atol=1e-4)


def test_downscale_uses_images_n_and_scales_intrinsics(tmp_path):
    llff = _llff(tmp_path / "llff", folders=(("images", 1), ("images_2", 2)))
    meta = json.loads((convert_llff(llff, tmp_path / "s2", downscale=2) / "transforms.json").read_text())
    assert (meta["w"], meta["h"]) == (W // 2, H // 2)
    assert meta["fl_x"] == pytest.approx(FOCAL / 2) and meta["cx"] == W / 4
    assert meta["ulift_source"]["image_folder"] == "images_2" and meta["ulift_source"]["resized_by"] == 1
    # no images_4: the finest folder whose factor divides 4 (images_2) is resized by 2 more
    meta = json.loads((convert_llff(llff, tmp_path / "s4", downscale=4) / "transforms.json").read_text())
    assert (meta["w"], meta["h"]) == (W // 4, H // 4)
    assert meta["fl_x"] == pytest.approx(FOCAL / 4) and meta["fl_y"] == pytest.approx(FOCAL / 4)
    assert meta["ulift_source"] == {**meta["ulift_source"], "image_folder": "images_2", "resized_by": 2}
    with Image.open(tmp_path / "s4" / meta["frames"][0]["file_path"]) as img:
        assert img.size == (W // 4, H // 4)
    # only images_8 present and no --downscale: clear error naming what exists
    only8 = _llff(tmp_path / "only8", folders=(("images_8", 8),), seed=1)
    with pytest.raises(LlffFormatError, match=r"images_8/.*--downscale"):
        convert_llff(only8, tmp_path / "s8")


def test_image_count_mismatch_is_an_error(tmp_path):
    llff = _llff(tmp_path / "llff")
    (llff / "images" / "img_c.png").unlink()
    with pytest.raises(LlffFormatError, match=r"3 poses but .* has 2 images"):
        convert_llff(llff, tmp_path / "scene")
    assert not (tmp_path / "scene").exists()
    with pytest.raises(LlffFormatError, match="poses_bounds.npy"):
        convert_llff(tmp_path / "nowhere", tmp_path / "scene")
    np.save(llff / "poses_bounds.npy", np.zeros((3, 15)))
    with pytest.raises(LlffFormatError, match=r"\[N, 17\]"):
        convert_llff(llff, tmp_path / "scene")


def test_refuses_to_replace_without_overwrite(tmp_path):
    llff = _llff(tmp_path / "llff")
    out = convert_llff(llff, tmp_path / "scene")
    (out / "notes.txt").write_text("mine")
    (out / "images" / "stale.png").write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        convert_llff(llff, out)
    convert_llff(llff, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (out / "images").iterdir()) == ["img_a.png", "img_b.png", "img_c.png"]


def test_seed_points_lie_in_the_frustums(tmp_path):
    llff = _llff(tmp_path / "llff")
    out = convert_llff(llff, tmp_path / "scene", seed_points=500)
    meta = json.loads((out / "transforms.json").read_text())
    assert meta["ply_file_path"] == "sparse_pc.ply"
    from plyfile import PlyData

    v = PlyData.read(str(out / "sparse_pc.ply"))["vertex"]
    xyz = np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float64)
    assert xyz.shape == (500, 3) and [p.name for p in v.properties] == ["x", "y", "z", "red", "green", "blue"]
    seen = np.zeros(len(xyz), bool)
    for frame in meta["frames"]:
        c2w = np.asarray(frame["transform_matrix"])
        cam = (xyz - c2w[:3, 3]) @ c2w[:3, :3]
        depth = -cam[:, 2]
        u = meta["fl_x"] * cam[:, 0] / depth + meta["cx"]
        v_ = -meta["fl_y"] * cam[:, 1] / depth + meta["cy"]
        near, far = frame["llff_bounds"]
        inside = (depth >= near * (1 - 1e-4)) & (depth <= far * (1 + 1e-4)) & (u >= 0) & (u <= W) & (v_ >= 0) & (v_ <= H)
        seen |= inside
    assert seen.all(), "every seed point is inside some view's frustum, between its near and far bounds"
    with pytest.raises(OutputExistsError):
        convert_llff(llff, out, seed_points=10)


def test_cli_convert_llff(tmp_path, capsys):
    from ulift_ns.cli import main

    llff = _llff(tmp_path / "llff")
    main(["convert", "llff", "--data", str(llff), "--output", str(tmp_path / "scene")])
    assert "transforms.json" in capsys.readouterr().out
    assert (tmp_path / "scene" / "transforms.json").is_file()
    with pytest.raises(SystemExit, match="overwrite"):
        main(["convert", "llff", "--data", str(llff), "--output", str(tmp_path / "scene")])
