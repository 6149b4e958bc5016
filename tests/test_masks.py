"""``ulift masks``: weight-free and SAM mask generation, merging, resuming, invalidation, safety."""

from __future__ import annotations

import importlib
import json
import os
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ulift_ns.labelio import OutputExistsError, read_label_map
from ulift_ns.masks import (
    FelzenszwalbParams,
    MaskSettings,
    MaskSettingsError,
    SamParams,
    make_masks,
    merge_masks,
    scene_images,
)

W, H = 64, 48
FELZ = MaskSettings("felzenszwalb", felzenszwalb=FelzenszwalbParams(scale=100, sigma=0.5, min_size=20))
SLIC = MaskSettings("slic")  # the documented defaults: 16 segments, compactness 5, sigma 1


def _image(seed: int, w: int = W, h: int = H) -> np.ndarray:
    """Flat background with three flat-coloured rectangles (mild noise): easy segments."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), (200, 190, 170), np.float64)
    img[h // 6 : h // 2, w // 8 : w // 3] = (200, 30, 30)
    img[h // 3 : 5 * h // 6, w // 2 : 5 * w // 6] = (30, 60, 200)
    img[2 * h // 3 :, : w // 4] = (40, 160, 40)
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _make_scene(root: Path, n: int = 3) -> Path:
    (root / "images").mkdir(parents=True)
    frames = []
    for k in range(n):
        Image.fromarray(_image(k)).save(root / "images" / f"view_{k:02d}.png")
        frames.append({"file_path": f"images/view_{k:02d}.png", "transform_matrix": np.eye(4).tolist()})
    meta = {"camera_model": "PINHOLE", "fl_x": 50.0, "fl_y": 50.0, "cx": W / 2, "cy": H / 2, "w": W, "h": H, "frames": frames}
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def scene(tmp_path) -> Path:
    return _make_scene(tmp_path / "scene")


def _masks(scene: Path) -> dict:
    return {p.stem: p for p in sorted((scene / "sam_masks").glob("*.png"))}


def _mtimes(scene: Path) -> dict:
    return {k: p.stat().st_mtime_ns for k, p in _masks(scene).items()}


# --------------------------------------------------------------------------- finding images
def test_scene_images_follow_the_dataparser_layouts(tmp_path, scene):
    root, images = scene_images(scene)
    assert root == scene and [p.name for p in images] == ["view_00.png", "view_01.png", "view_02.png"]
    # transforms.json passed directly
    assert scene_images(scene / "transforms.json")[1] == images
    # COLMAP: sparse/0 + images/*
    colmap = tmp_path / "colmap_scene"
    (colmap / "sparse" / "0").mkdir(parents=True)
    (colmap / "images").mkdir()
    for name in ("b.jpg", "a.png", "notes.txt"):
        (colmap / "images" / name).write_bytes(b"x")
    assert [p.name for p in scene_images(colmap)[1]] == ["a.png", "b.jpg"]
    with pytest.raises(FileNotFoundError, match="layout"):
        scene_images(tmp_path / "scene" / "images")


# --------------------------------------------------------------------------- weight-free methods
@pytest.mark.parametrize("settings", [FELZ, SLIC], ids=["felzenszwalb", "slic"])
def test_weight_free_methods_write_uint16_label_maps(scene, settings):
    result = make_masks(scene, settings, progress=False)
    assert sorted(result.generated) == ["view_00", "view_01", "view_02"] and result.skipped == []
    masks = _masks(scene)
    assert sorted(masks) == ["view_00", "view_01", "view_02"]
    for stem, path in masks.items():
        with Image.open(path) as im:
            assert im.mode == "I;16" and im.size == (W, H)
        labels = read_label_map(path)
        ids = np.unique(labels)
        assert labels.shape == (H, W)
        assert ids.min() >= 1, "every pixel gets a segment"
        assert list(ids) == list(range(1, len(ids) + 1)), "ids are 1..M"
        assert len(ids) >= 3
        img = _image(int(stem[-2:]))
        red = (img[..., 0] > 150) & (img[..., 1] < 80)
        # the red rectangle's core is one segment that does not leak far into the background
        core = labels[H // 6 + 2 : H // 2 - 2, W // 8 + 2 : W // 3 - 2]
        values, counts = np.unique(core, return_counts=True)
        assert counts.max() >= 0.8 * core.size
        red_id = values[np.argmax(counts)]
        assert ((labels == red_id) & ~red).sum() <= 0.25 * red.sum()
    manifest = json.loads((scene / "sam_masks" / "manifest.json").read_text())
    entry = manifest["images"]["view_00"]
    assert entry["status"] == "done" and entry["settings"]["method"] == settings.method
    assert entry["image"]["size"] == [W, H] and entry["image"]["path"] == "images/view_00.png"
    assert len(entry["image"]["sha256"]) == 64 and len(entry["mask_sha256"]) == 64


def test_felzenszwalb_default_min_size_scales_with_the_image():
    assert FelzenszwalbParams().resolved_min_size((378, 504)) == round(0.003 * 378 * 504)
    assert FelzenszwalbParams().resolved_min_size((10, 10)) == 20
    assert FelzenszwalbParams(min_size=7).resolved_min_size((378, 504)) == 7


# --------------------------------------------------------------------------- merging SAM masks
def test_merge_paints_large_to_small():
    big = np.zeros((6, 8), bool)
    big[:, :6] = True  # 36 px
    small = np.zeros((6, 8), bool)
    small[1:3, 1:3] = True  # 4 px, inside big
    medium = np.zeros((6, 8), bool)
    medium[3:6, 4:8] = True  # 12 px, overlaps big's right edge
    hidden = np.zeros((6, 8), bool)
    hidden[1:3, 1:3] = True  # same pixels as small: painted first (stable order), then covered
    labels = merge_masks([small, big, hidden, medium], (6, 8))
    assert labels.dtype == np.uint16
    # painting order (largest first): big=1, medium=2, small=3, hidden=4 -> hidden fully over small
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    assert (labels[1:3, 1:3] == 3).all(), "the smaller mask wins where it overlaps a larger one"
    assert (labels[3:6, 4:8] == 2).all()
    assert (labels[big & ~small & ~medium] == 1).all()
    assert (labels[~(big | medium)] == 0).all(), "pixels without a mask stay 0"
    assert merge_masks([], (2, 3)).tolist() == [[0, 0, 0], [0, 0, 0]]
    with pytest.raises(ValueError):
        merge_masks([np.ones((2, 2), bool)], (3, 3))


def _fake_sam(params: SamParams):
    """A stand-in generator (what SamAutomaticMaskGenerator.generate returns): whole image + rectangles."""

    def generate(image):
        h, w = image.shape[:2]
        whole = np.ones((h, w), bool)
        rect = np.zeros((h, w), bool)
        rect[h // 4 : h // 2, w // 4 : w // 2] = True
        return [{"segmentation": rect, "area": int(rect.sum())}, {"segmentation": whole, "area": h * w}]

    return generate


def test_sam_path_with_injected_generator(scene):
    settings = MaskSettings("sam", sam=SamParams(checkpoint=None, model_type="vit_b", points_per_side=4))
    result = make_masks(scene, settings, sam_factory=_fake_sam, progress=False)
    assert len(result.generated) == 3
    labels = read_label_map(scene / "sam_masks" / "view_01.png")
    assert (labels[H // 4 : H // 2, W // 4 : W // 2] == 2).all() and (labels[0] == 1).all()
    entry = json.loads((scene / "sam_masks" / "manifest.json").read_text())["images"]["view_01"]
    assert entry["settings"]["method"] == "sam" and entry["settings"]["model_type"] == "vit_b"
    assert entry["settings"]["points_per_side"] == 4


# --------------------------------------------------------------------------- resuming / invalidation
def test_second_run_skips_everything(scene):
    make_masks(scene, FELZ, progress=False)
    before = _mtimes(scene)
    time.sleep(0.01)
    result = make_masks(scene, FELZ, progress=False)
    assert result.generated == [] and sorted(result.skipped) == ["view_00", "view_01", "view_02"]
    assert _mtimes(scene) == before


def test_changed_settings_invalidate_all_changed_image_only_that_one(scene):
    make_masks(scene, FELZ, progress=False)
    # other parameters: every mask is regenerated
    other = MaskSettings("felzenszwalb", felzenszwalb=FelzenszwalbParams(scale=300, sigma=0.5, min_size=20))
    assert sorted(make_masks(scene, other, progress=False).generated) == ["view_00", "view_01", "view_02"]
    # another method too
    assert len(make_masks(scene, SLIC, progress=False).generated) == 3
    assert len(make_masks(scene, FELZ, progress=False).generated) == 3
    before = _mtimes(scene)

    # new content, same size: only that image
    Image.fromarray(_image(7)).save(scene / "images" / "view_01.png")
    result = make_masks(scene, FELZ, progress=False)
    assert result.generated == ["view_01"] and sorted(result.skipped) == ["view_00", "view_02"]
    after = _mtimes(scene)
    assert after["view_00"] == before["view_00"] and after["view_02"] == before["view_02"]

    # new size: regenerated at the new size
    Image.fromarray(_image(2, w=32, h=24)).save(scene / "images" / "view_02.png")
    result = make_masks(scene, FELZ, progress=False)
    assert result.generated == ["view_02"]
    assert read_label_map(scene / "sam_masks" / "view_02.png").shape == (24, 32)
    entry = json.loads((scene / "sam_masks" / "manifest.json").read_text())["images"]["view_02"]
    assert entry["image"]["size"] == [32, 24]

    # touched but identical (mtime changes, content does not): still up to date
    path = scene / "images" / "view_00.png"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 5_000_000_000))
    result = make_masks(scene, FELZ, progress=False)
    assert result.generated == [] and len(result.skipped) == 3
    entry = json.loads((scene / "sam_masks" / "manifest.json").read_text())["images"]["view_00"]
    assert entry["image"]["mtime_ns"] == path.stat().st_mtime_ns  # the cheap check was refreshed

    # a deleted mask is simply made again
    (scene / "sam_masks" / "view_00.png").unlink()
    assert make_masks(scene, FELZ, progress=False).generated == ["view_00"]


def test_interrupted_run_is_resumed_not_refused(scene):
    calls = []

    def flaky(params):
        def generate(image):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return _fake_sam(params)(image)

        return generate

    settings = MaskSettings("sam", sam=SamParams(model_type="vit_b"))
    with pytest.raises(KeyboardInterrupt):
        make_masks(scene, settings, sam_factory=flaky, progress=False)
    manifest = json.loads((scene / "sam_masks" / "manifest.json").read_text())
    assert [manifest["images"][s]["status"] for s in ("view_00", "view_01", "view_02")] == ["done", "pending", "pending"]
    # a pending entry whose PNG exists (crash between writing the mask and the manifest) is ours
    Image.fromarray(np.ones((H, W), np.uint16)).save(scene / "sam_masks" / "view_01.png")
    result = make_masks(scene, settings, sam_factory=_fake_sam, progress=False)
    assert result.skipped == ["view_00"] and sorted(result.generated) == ["view_01", "view_02"]


# --------------------------------------------------------------------------- safety
def test_refuses_foreign_masks_without_overwrite(scene):
    mask_dir = scene / "sam_masks"
    mask_dir.mkdir()
    mine = np.full((H, W), 7, np.uint16)
    Image.fromarray(mine).save(mask_dir / "view_01.png")
    (mask_dir / "unrelated.png").write_bytes(b"not a scene image")
    with pytest.raises(OutputExistsError, match="view_01.png.*--overwrite"):
        make_masks(scene, FELZ, progress=False)
    assert (read_label_map(mask_dir / "view_01.png") == 7).all()
    assert not (mask_dir / "view_00.png").exists() and not (mask_dir / "manifest.json").exists()

    result = make_masks(scene, FELZ, overwrite=True, progress=False)
    assert len(result.generated) == 3
    assert not (read_label_map(mask_dir / "view_01.png") == 7).all()
    assert (mask_dir / "unrelated.png").read_bytes() == b"not a scene image"  # never touched
    assert make_masks(scene, FELZ, progress=False).generated == []  # adopted: no --overwrite needed now

    # a mask edited by hand after we wrote it is foreign again
    Image.fromarray(mine).save(mask_dir / "view_02.png")
    with pytest.raises(OutputExistsError, match="view_02.png"):
        make_masks(scene, SLIC, progress=False)
    assert (read_label_map(mask_dir / "view_02.png") == 7).all()
    # ...even when nothing else changed
    with pytest.raises(OutputExistsError):
        make_masks(scene, FELZ, progress=False)


def test_unreadable_manifest_is_not_trusted(scene):
    (scene / "sam_masks").mkdir()
    (scene / "sam_masks" / "manifest.json").write_text("{not json")
    with pytest.raises(OutputExistsError, match="manifest"):
        make_masks(scene, FELZ, progress=False)
    assert len(make_masks(scene, FELZ, overwrite=True, progress=False).generated) == 3


# --------------------------------------------------------------------------- SAM errors
def test_missing_checkpoint_error_names_the_file(scene, tmp_path):
    pytest.importorskip("segment_anything")
    with pytest.raises(MaskSettingsError, match=r"sam_vit_h_4b8939\.pth.*--checkpoint"):
        make_masks(scene, MaskSettings("sam"), progress=False)
    missing = tmp_path / "weights" / "sam_vit_b_01ec64.pth"
    with pytest.raises(MaskSettingsError) as err:
        make_masks(scene, MaskSettings("sam", sam=SamParams(checkpoint=missing)), progress=False)
    msg = str(err.value)
    assert str(missing) in msg and "does not exist" in msg
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth" in msg  # model type read from the name
    assert "felzenszwalb" in msg
    assert not (scene / "sam_masks").exists(), "nothing is touched before the settings are usable"


def test_missing_segment_anything_names_the_extra(scene, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "segment_anything", None)  # import fails as if not installed
    with pytest.raises(MaskSettingsError, match=r'pip install "ulift_ns\[sam\]"'):
        make_masks(scene, MaskSettings("sam", sam=SamParams(checkpoint=Path("x.pth"))), progress=False)


def test_cli_masks(scene, capsys):
    from ulift_ns.cli import main

    main(["masks", "--data", str(scene), "--method", "slic"])
    assert "3 mask(s) written" in capsys.readouterr().out
    main(["masks", "--data", str(scene), "--method", "slic"])
    assert "0 mask(s) written, 3 up to date" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="checkpoint"):
        main(["masks", "--data", str(scene), "--checkpoint", str(scene / "nope.pth")])


# --------------------------------------------------------------------------- real segment-anything
def _tiny_sam_builder(sa_build):
    """A small randomly initialised SAM from segment-anything's own builder (same classes as vit_b/l/h)."""
    return partial(sa_build._build_sam, encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=[1])


def test_sam_real_loading_path_with_random_tiny_model(tmp_path, monkeypatch):
    """The real code path: sam_model_registry[type](checkpoint=...) + SamAutomaticMaskGenerator, on one image."""
    sa = pytest.importorskip("segment_anything")
    torch = pytest.importorskip("torch")
    # `import segment_anything.build_sam as m` would give the function the package re-exports under that name
    sa_build = importlib.import_module("segment_anything.build_sam")

    scene = _make_scene(tmp_path / "scene", n=1)
    torch.manual_seed(0)
    builder = _tiny_sam_builder(sa_build)
    checkpoint = tmp_path / "sam_vit_b_random.pth"
    torch.save(builder().state_dict(), checkpoint)
    monkeypatch.setitem(sa.sam_model_registry, "vit_b", builder)  # the registry entry our loader calls
    settings = MaskSettings(
        "sam",
        sam=SamParams(checkpoint=checkpoint, points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, device="cpu"),
    )
    t0 = time.perf_counter()
    result = make_masks(scene, settings, progress=False)
    elapsed = time.perf_counter() - t0
    assert result.generated == ["view_00"]
    labels = read_label_map(scene / "sam_masks" / "view_00.png")
    assert labels.shape == (H, W) and labels.min() >= 0
    ids = np.unique(labels[labels > 0])
    assert list(ids) == list(range(1, len(ids) + 1))
    entry = json.loads((scene / "sam_masks" / "manifest.json").read_text())["images"]["view_00"]
    assert entry["settings"]["model_type"] == "vit_b"  # read from the checkpoint's name
    assert entry["settings"]["checkpoint"] == checkpoint.name
    assert entry["settings"]["checkpoint_bytes"] == checkpoint.stat().st_size
    print(f"tiny random SAM on one {W}x{H} image: {elapsed:.1f}s, {len(ids)} masks")
    # a checkpoint of another architecture gives an actionable error
    monkeypatch.setitem(sa.sam_model_registry, "vit_b", sa_build.build_sam_vit_b)
    (scene / "sam_masks" / "manifest.json").unlink()
    (scene / "sam_masks" / "view_00.png").unlink()
    with pytest.raises(MaskSettingsError, match="--model-type"):
        make_masks(scene, settings, progress=False)


@pytest.mark.skipif(os.environ.get("ULIFT_SLOW_TESTS") != "1", reason="~30-60 s on 2 CPU cores; set ULIFT_SLOW_TESTS=1")
def test_sam_vit_b_random_weights_one_image(tmp_path):
    """Full-size vit_b (random weights, segment-anything's build_sam_vit_b) through the generator on one tiny image."""
    pytest.importorskip("segment_anything")
    torch = pytest.importorskip("torch")
    from segment_anything.build_sam import build_sam_vit_b

    from ulift_ns.masks import sam_generator_from_model

    scene = _make_scene(tmp_path / "scene", n=1)
    torch.manual_seed(0)
    params = SamParams(model_type="vit_b", points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    settings = MaskSettings("sam", sam=params)
    t0 = time.perf_counter()
    make_masks(scene, settings, sam_factory=lambda p: sam_generator_from_model(build_sam_vit_b(checkpoint=None), p), progress=False)
    print(f"random vit_b on one {W}x{H} image: {time.perf_counter() - t0:.1f}s")
    assert read_label_map(scene / "sam_masks" / "view_00.png").shape == (H, W)
