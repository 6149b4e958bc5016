"""The auto-detecting dataparser and the SAM-mask datamanager on real files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import copy_scene
from ulift_ns.datamanager import GT_LABELS, SAM_LABELS, UnifiedLiftDataManagerConfig, resize_labels
from ulift_ns.dataparser import UnifiedLiftDataParserConfig, detect_layout
from ulift_ns.labelio import LabelFileError, read_label_map, write_label_png


def make_datamanager(scene: Path, test_mode: str = "val"):
    config = UnifiedLiftDataManagerConfig(dataparser=UnifiedLiftDataParserConfig(data=scene))
    return config.setup(device="cpu", test_mode=test_mode)


def test_train_batch_carries_the_view_labels(tiny_scene: Path):
    dm = make_datamanager(tiny_scene)
    camera, batch = dm.next_train(0)
    idx = camera.metadata["cam_idx"]
    stem = Path(dm.train_dataset.image_filenames[idx]).stem
    expected = read_label_map(tiny_scene / "sam_masks" / f"{stem}.png")
    assert batch[SAM_LABELS].dtype == torch.int64
    assert batch[SAM_LABELS].shape == batch["image"].shape[:2]
    assert np.array_equal(batch[SAM_LABELS].numpy(), expected)
    assert np.array_equal(batch[GT_LABELS].numpy(), read_label_map(tiny_scene / "gt_masks" / f"{stem}.png"))
    assert "mask" not in batch  # splatfacto would multiply its RGB loss by it


def test_masks_at_another_resolution_are_resized_nearest(tiny_scene: Path, tmp_path: Path):
    scene = copy_scene(tiny_scene, tmp_path / "scene")
    for path in (scene / "sam_masks").glob("*.png"):
        labels = read_label_map(path)
        big = np.kron(labels, np.ones((2, 2), dtype=np.int64))  # exact 2x upsample
        write_label_png(path, big)
    dm = make_datamanager(scene)
    camera, batch = dm.next_train(0)
    stem = Path(dm.train_dataset.image_filenames[camera.metadata["cam_idx"]]).stem
    assert np.array_equal(batch[SAM_LABELS].numpy(), read_label_map(tiny_scene / "sam_masks" / f"{stem}.png"))


def test_resize_labels_never_invents_ids():
    labels = torch.randint(0, 7, (13, 17))
    out = resize_labels(labels, (40, 9))
    assert out.shape == (40, 9)
    assert set(out.unique().tolist()) <= set(labels.unique().tolist())


def _first_mask(scene: Path) -> Path:
    return sorted((scene / "sam_masks").glob("*.png"))[0]


def test_missing_mask_names_the_file_and_the_fix(tiny_scene: Path, tmp_path: Path):
    scene = copy_scene(tiny_scene, tmp_path / "scene")
    victim = _first_mask(scene)
    victim.unlink()
    with pytest.raises(LabelFileError) as err:
        make_datamanager(scene).next_train(0)
    assert victim.name in str(err.value) and "ulift masks" in str(err.value)


def test_missing_masks_list_the_first_ten_and_a_count():
    from ulift_ns.datamanager import list_paths

    text = list_paths([Path(f"m{i}.png") for i in range(13)])
    assert "m9.png" in text and "m10.png" not in text and "and 3 more" in text


def test_empty_frames_list_is_a_one_line_error(tiny_scene: Path, tmp_path: Path):
    from ulift_ns.dataparser import SceneFormatError

    scene = copy_scene(tiny_scene, tmp_path / "scene")
    meta = json.loads((scene / "transforms.json").read_text())
    (scene / "transforms.json").write_text(json.dumps({**meta, "frames": []}))
    with pytest.raises(SceneFormatError, match="lists no frames") as err:
        make_datamanager(scene)
    assert "\n" not in str(err.value) and "ns-process-data" in str(err.value)


def test_colour_mask_is_rejected(tiny_scene: Path, tmp_path: Path):
    scene = copy_scene(tiny_scene, tmp_path / "scene")
    victim = _first_mask(scene)
    Image.new("RGB", (48, 36), (10, 20, 30)).save(victim)
    with pytest.raises(LabelFileError, match="not an integer label map"):
        make_datamanager(scene).next_train(0)


def test_unreadable_mask_is_rejected(tiny_scene: Path, tmp_path: Path):
    scene = copy_scene(tiny_scene, tmp_path / "scene")
    victim = _first_mask(scene)
    victim.write_bytes(b"not a png")
    with pytest.raises(LabelFileError, match=victim.name):
        make_datamanager(scene).next_train(0)


def test_mask_with_other_aspect_ratio_is_rejected(tiny_scene: Path, tmp_path: Path):
    scene = copy_scene(tiny_scene, tmp_path / "scene")
    victim = _first_mask(scene)
    write_label_png(victim, np.ones((36, 36), dtype=np.uint16))
    with pytest.raises(LabelFileError, match="aspect"):
        make_datamanager(scene).next_train(0)


def test_eval_and_viewer_modes_need_no_masks(tiny_scene: Path, tmp_path: Path):
    scene = copy_scene(tiny_scene, tmp_path / "scene")
    for path in (scene / "sam_masks").glob("*.png"):
        path.unlink()
    dm = make_datamanager(scene, test_mode="test")
    _, batch = dm.next_eval_image(0)
    assert SAM_LABELS not in batch and "image" in batch


def _write_colmap_text_model(scene: Path, model_dir: Path) -> int:
    """A COLMAP text model of the demo scene's cameras (pinhole, world-to-camera, OpenCV axes)."""
    from scipy.spatial.transform import Rotation

    meta = json.loads((scene / "transforms.json").read_text())
    model_dir.mkdir(parents=True)
    (model_dir / "cameras.txt").write_text(
        f"1 PINHOLE {meta['w']} {meta['h']} {meta['fl_x']} {meta['fl_y']} {meta['cx']} {meta['cy']}\n"
    )
    lines = []
    for i, frame in enumerate(meta["frames"]):
        c2w = np.array(frame["transform_matrix"])
        c2w[:3, 1:3] *= -1  # OpenGL -> OpenCV axes
        w2c = np.linalg.inv(c2w)
        qx, qy, qz, qw = Rotation.from_matrix(w2c[:3, :3]).as_quat()
        tx, ty, tz = w2c[:3, 3]
        lines.append(f"{i + 1} {qw} {qx} {qy} {qz} {tx} {ty} {tz} 1 {Path(frame['file_path']).name}\n\n")
    (model_dir / "images.txt").write_text("".join(lines))
    (model_dir / "points3D.txt").write_text("1 0 0 0 128 128 128 0 1 0\n2 0.1 0 0 128 128 128 0 2 0\n")
    return len(meta["frames"])


@pytest.mark.parametrize("colmap_dir", ["sparse/0", "colmap/sparse/0"])
def test_colmap_layouts_are_found(tiny_scene: Path, tmp_path: Path, colmap_dir: str):
    scene = tmp_path / "colmap_scene"
    (scene).mkdir()
    import shutil

    for folder in ("images", "sam_masks"):
        shutil.copytree(tiny_scene / folder, scene / folder)
    n = _write_colmap_text_model(tiny_scene, scene / colmap_dir)
    assert detect_layout(scene) == ("colmap", Path(colmap_dir))
    outputs = UnifiedLiftDataParserConfig(data=scene, eval_mode="all").setup().get_dataparser_outputs("train")
    assert len(outputs.image_filenames) == n
    dm = make_datamanager(scene)
    _, batch = dm.next_train(0)
    assert batch[SAM_LABELS].shape == batch["image"].shape[:2]


def test_transforms_layout_is_found(tiny_scene: Path):
    assert detect_layout(tiny_scene) == ("nerfstudio", None)


def test_unknown_layout_explains_what_is_expected(tmp_path: Path):
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match="transforms.json"):
        detect_layout(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        detect_layout(tmp_path / "nope")
