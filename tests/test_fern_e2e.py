"""Real images end to end: LLFF fern -> ``convert llff`` -> weight-free masks -> unified-lift on CPU -> labels.

Five views of the shared fern capture at 63x47 (``images_8`` resized by 8 more), felzenszwalb
masks, 40 training steps.  Fern has no instance ground truth, so what is checked is the
property lifting is for: the rendered labels are one 3D labelling shared by every view.
It is measured by re-projection: each pixel of view i is lifted to 3D with the rendered
depth and projected into view j; where view j sees the same surface (rendered depth
within 10 %), the two labels should be equal.  The per-view input masks, whose ids mean
nothing across views, are scored the same way for contrast.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch

FERN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fern"
VIEWS = [0, 4, 8, 12, 16]
DOWNSCALE = 64  # 4032x3024 / 64 -> 63x47 (images_8 resized by 8)
STEPS = 40
SEED_POINTS = 1000


def _hand_c2w(row: np.ndarray) -> np.ndarray:
    m = row[:15].reshape(3, 5)
    out = np.eye(4)
    out[:3, 0], out[:3, 1], out[:3, 2], out[:3, 3] = m[:, 1], -m[:, 0], m[:, 2], m[:, 3]
    return out


@pytest.fixture(scope="module")
def fern(tmp_path_factory) -> Dict:
    if not (FERN / "poses_bounds.npy").is_file() or not (FERN / "images_8").is_dir():
        pytest.skip(f"fern capture not found at {FERN}")
    pytest.importorskip("skimage")
    from ulift_ns.config import trainer_config
    from ulift_ns.convert import convert_llff
    from ulift_ns.masks import FelzenszwalbParams, MaskSettings, make_masks
    from ulift_ns.model import UnifiedLiftModelConfig
    from ulift_ns.predict import write_predictions

    t0 = time.perf_counter()
    root = tmp_path_factory.mktemp("fern")
    # A 5-view LLFF subset: the chosen rows of poses_bounds.npy and their images (sorted names keep the order).
    llff = root / "llff"
    (llff / "images_8").mkdir(parents=True)
    poses_bounds = np.load(FERN / "poses_bounds.npy")
    np.save(llff / "poses_bounds.npy", poses_bounds[VIEWS])
    for k in VIEWS:
        shutil.copy(FERN / "images_8" / f"image{k:03d}.png", llff / "images_8")
    # Frustum seed points: the random cube of splatfacto's random init puts most Gaussians next to the
    # cameras of a forward-facing capture, where each is seen by one view only.
    scene = convert_llff(llff, root / "scene", downscale=DOWNSCALE, seed_points=SEED_POINTS)
    # Thumbnail-sized felzenszwalb (the 800 default is for ~504x378 photos).
    masks = make_masks(scene, MaskSettings("felzenszwalb", felzenszwalb=FelzenszwalbParams(scale=150, min_size=20)), progress=False)
    t_prep = time.perf_counter() - t0

    meta = json.loads((scene / "transforms.json").read_text())
    config = trainer_config(model=UnifiedLiftModelConfig(), max_steps=STEPS)
    # 40 steps instead of 30k: the identity features and the codebook must move within them.
    config.optimizers["identity"]["optimizer"].lr = 0.05
    config.optimizers["codebook"]["optimizer"].lr = 0.01
    config.pipeline.datamanager.data = scene
    config.pipeline.datamanager.dataparser.eval_mode = "all"  # 5 views: train and render them all
    config.output_dir = root / "runs"
    config.vis = "tensorboard"
    config.machine.device_type = "cpu"
    config.machine.seed = 0
    config.logging.local_writer.enable = False
    config.set_timestamp()
    config.save_config()
    torch.manual_seed(0)
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    t1 = time.perf_counter()
    trainer.train()
    t_train = time.perf_counter() - t1
    labels_dir = root / "labels"
    written = write_predictions(trainer.pipeline, "all", labels_dir)
    views = _render_geometry(trainer.pipeline)
    return {
        "poses_bounds": poses_bounds,
        "scene": scene,
        "meta": meta,
        "masks": masks,
        "labels_dir": labels_dir,
        "written": written,
        "views": views,
        "times": {"prep": t_prep, "train": t_train, "total": time.perf_counter() - t0},
    }


@torch.no_grad()
def _render_geometry(pipeline) -> Dict[str, Dict]:
    """Per view: camera (numpy), rendered z-depth and accumulation, in the dataparser's world frame."""
    pipeline.eval()
    model = pipeline.model
    dataset = pipeline.datamanager.train_dataset
    out = {}
    for i, name in enumerate(dataset.image_filenames):
        camera = dataset.cameras[i : i + 1].to(model.device)
        o = model.get_outputs_for_camera(camera)
        out[Path(name).stem] = {
            "c2w": camera.camera_to_worlds.reshape(3, 4).double().cpu().numpy(),
            "k": [float(getattr(camera, a).reshape(-1)[0]) for a in ("fx", "fy", "cx", "cy")],
            "depth": o["depth"][..., 0].double().cpu().numpy(),
            "acc": o["accumulation"][..., 0].cpu().numpy(),
        }
    return out


def _correspondences(vi: Dict, vj: Dict, rel_tol: float = 0.1):
    """Pixels of view i re-projected into view j where j sees the same surface: (ri, ci, rj, cj)."""
    h, w = vi["depth"].shape
    fx, fy, cx, cy = vi["k"]
    r, c = np.mgrid[0:h, 0:w]
    d = vi["depth"]
    cam = np.stack([(c + 0.5 - cx) / fx * d, -(r + 0.5 - cy) / fy * d, -d], -1)  # OpenGL camera frame
    world = cam @ vi["c2w"][:, :3].T + vi["c2w"][:, 3]
    fx2, fy2, cx2, cy2 = vj["k"]
    cj = (world - vj["c2w"][:, 3]) @ vj["c2w"][:, :3]
    z = -cj[..., 2]
    zs = np.maximum(z, 1e-9)
    col = np.floor(fx2 * cj[..., 0] / zs + cx2).astype(int)
    row = np.floor(-fy2 * cj[..., 1] / zs + cy2).astype(int)
    hj, wj = vj["depth"].shape
    ok = (z > 0) & (col >= 0) & (col < wj) & (row >= 0) & (row < hj) & (vi["acc"] >= 0.5)
    row, col = np.clip(row, 0, hj - 1), np.clip(col, 0, wj - 1)
    ok &= (vj["acc"][row, col] >= 0.5) & (np.abs(vj["depth"][row, col] - z) <= rel_tol * z)
    return r[ok], c[ok], row[ok], col[ok]


def _reprojection_agreement(views: Dict, maps: Dict[str, np.ndarray]):
    """Share of re-projected pixel pairs (all ordered view pairs) whose labels are equal, and the pair count."""
    same = total = 0
    for a in views:
        for b in views:
            if a != b:
                ri, ci, rj, cj = _correspondences(views[a], views[b])
                same += int((maps[a][ri, ci] == maps[b][rj, cj]).sum())
                total += len(ri)
    return same / max(total, 1), total


def test_converted_poses_match_hand_conversion(fern):
    meta, pb = fern["meta"], fern["poses_bounds"]
    assert [f["file_path"] for f in meta["frames"]] == [f"images/image{k:03d}.png" for k in VIEWS]
    for frame, k in zip(meta["frames"], VIEWS):
        np.testing.assert_allclose(np.asarray(frame["transform_matrix"]), _hand_c2w(pb[k]), atol=1e-6, rtol=0)
    h_full, w_full, focal = pb[0, 4], pb[0, 9], pb[0, 14]
    assert (meta["w"], meta["h"]) == (63, 47) and (w_full, h_full) == (4032, 3024)
    assert meta["fl_x"] == pytest.approx(focal * 63 / w_full) and meta["fl_y"] == pytest.approx(focal * 47 / h_full)
    assert meta["ply_file_path"] == "sparse_pc.ply"


def test_masks_for_every_view(fern):
    from ulift_ns.labelio import read_label_map

    scene = fern["scene"]
    assert sorted(fern["masks"].generated) == [f"image{k:03d}" for k in VIEWS]
    for k in VIEWS:
        labels = read_label_map(scene / "sam_masks" / f"image{k:03d}.png")
        assert labels.shape == (47, 63) and labels.min() >= 1
        assert 3 <= labels.max() <= 200, "object-ish segments, neither one blob nor noise"


def test_label_maps_for_every_view_same_shape_as_images(fern):
    from PIL import Image

    from ulift_ns.labelio import read_label_map

    scene, labels_dir = fern["scene"], fern["labels_dir"]
    assert sorted(p.stem for p in fern["written"]) == [f"image{k:03d}" for k in VIEWS]
    for k in VIEWS:
        with Image.open(scene / "images" / f"image{k:03d}.png") as img:
            size = img.size
        with Image.open(labels_dir / f"image{k:03d}.png") as lab:
            assert lab.mode == "I;16" and lab.size == size
        assert (labels_dir / "overlay" / f"image{k:03d}.png").is_file()
    labels = np.concatenate([read_label_map(labels_dir / f"image{k:03d}.png").ravel() for k in VIEWS])
    _, counts = np.unique(labels[labels > 0], return_counts=True)
    assert len(counts) >= 3 and counts.max() < 0.9 * labels.size, "a real labelling, not one constant id"


def test_labels_are_one_3d_labelling_shared_by_all_views(fern):
    from ulift_ns.labelio import read_label_map

    views = fern["views"]
    lifted = {s: read_label_map(fern["labels_dir"] / f"{s}.png") for s in views}
    masks = {s: read_label_map(fern["scene"] / "sam_masks" / f"{s}.png") for s in views}
    agree, pairs = _reprojection_agreement(views, lifted)
    agree_in, _ = _reprojection_agreement(views, masks)
    n_pixels = sum(v["depth"].size for v in views.values()) * (len(views) - 1)
    # the weaker, re-projection-free check: the fern (centre of every view) gets which label?
    centre = []
    for s in sorted(views):
        lab = lifted[s]
        h, w = lab.shape
        c = lab[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3]
        ids, counts = np.unique(c[c > 0], return_counts=True)
        centre.append(int(ids[np.argmax(counts)]))
    mode_share = max(centre.count(x) for x in centre) / len(centre)
    t = fern["times"]
    print(
        f"\nfern {len(views)} views 63x47, {STEPS} steps: re-projection label agreement {agree:.3f} over {pairs} pixel pairs "
        f"({pairs / n_pixels:.0%} of pixels matched); input masks {agree_in:.3f}; centre majority labels {centre} "
        f"(most common in {mode_share:.0%} of views); prep {t['prep']:.1f}s, train {t['train']:.1f}s, total {t['total']:.1f}s"
    )
    assert pairs >= 0.5 * n_pixels, "most pixels re-project onto a surface the other view sees"
    assert agree >= 0.75
    assert agree >= agree_in + 0.4, "lifting made labels agree across views far more than the input masks"
