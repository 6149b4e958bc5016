"""3D evaluation of a trained run on a demo scene: per-Gaussian labels against the demo's primitives.

Ground truth per Gaussian is its nearest primitive surface (each object, the ground disk) or
the sky when it is farther than ``SKY_DISTANCE`` from all of them, in the demo's world frame
(Gaussian means are mapped back through the dataparser's transform and scale).  Predicted
labels are exactly what ``ulift export`` writes: the chosen label rule, then objects below
the minimum size unassigned.  Weights are opacities of the Gaussians export keeps.

Isolation IoU renders only object k's Gaussians (its Hungarian-matched label) from the
held-out cameras and compares alpha > 0.5 with the demo's ray-cast of object k alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from ulift_ns.metrics3d import hungarian_label_accuracy, hungarian_match, mask_iou, nearest_primitive, panoptic_quality_3d

SKY_DISTANCE = 0.5
"""World units (the demo's ground disk has radius 4): farther than this from every surface is sky."""
COLUMNS_3D = ("pq3d", "label_acc", "objects", "true_objects", "iso_iou")


def demo_scene_of(scene: Path):
    """The demo scene behind ``scene`` (rebuilt from ``demo_meta.json``'s seed), or None for other scenes."""
    from ulift_ns.demo import META_FILENAME, build_scene

    meta_path = Path(scene) / META_FILENAME
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("generator") != "ulift_ns.demo" or "seed" not in meta:
        return None
    return build_scene(int(meta["seed"]))


def world_means(pipeline) -> np.ndarray:
    """Gaussian means in the scene's own (transforms.json) frame."""
    outputs = pipeline.datamanager.train_dataparser_outputs
    transform = outputs.dataparser_transform.double().cpu().numpy()
    scale = float(outputs.dataparser_scale)
    means = pipeline.model.gauss_params["means"].detach().double().cpu().numpy()
    return (means / scale - transform[:, 3][None]) @ transform[:, :3]


@torch.no_grad()
def isolation_iou(pipeline, scene: Path, demo, labels: np.ndarray, mapping: Dict[int, int]) -> float:
    """Mean over objects (and held-out views) of IoU(alpha > 0.5 of object k's Gaussians, ray-cast of k alone)."""
    from ulift_ns.demo import pixel_rays
    from ulift_ns.model import viewmat_from_c2w
    from ulift_ns.predict import split_cameras
    from ulift_ns.rasterize import rasterization

    transforms = json.loads((Path(scene) / "transforms.json").read_text(encoding="utf-8"))
    poses = {Path(f["file_path"]).stem: np.asarray(f["transform_matrix"], dtype=np.float64) for f in transforms["frames"]}
    model = pipeline.model
    p = model.gauss_params
    inverse = {g: pr for pr, g in mapping.items()}
    labels_t = torch.from_numpy(labels).to(model.device)
    per_object: Dict[int, list] = {o.id: [] for o in demo.objects}
    views = split_cameras(pipeline, "test") or split_cameras(pipeline, "all")  # eval-mode "all" holds no test views
    for stem, camera in views:
        camera = camera.to(model.device)
        W, H = int(camera.width.item()), int(camera.height.item())
        intr = {k: float(transforms[k]) for k in ("fl_x", "fl_y", "cx", "cy")} | {"w": W, "h": H}
        o, d = pixel_rays(poses[stem], intr)
        viewmat, K = viewmat_from_c2w(camera.camera_to_worlds), camera.get_intrinsics_matrices().to(model.device)
        for obj in demo.objects:
            truth = np.isfinite(obj.intersect(o, d)).reshape(H, W)
            keep = labels_t == inverse[obj.id] if obj.id in inverse else torch.zeros_like(labels_t, dtype=torch.bool)
            if int(keep.sum()) == 0:
                shown = np.zeros((H, W), dtype=bool)
            else:
                _, alpha, _ = rasterization(
                    means=p["means"][keep], quats=p["quats"][keep], scales=torch.exp(p["scales"][keep]),
                    opacities=torch.sigmoid(p["opacities"][keep]).squeeze(-1), colors=torch.zeros(int(keep.sum()), 1, device=model.device),
                    viewmats=viewmat, Ks=K, width=W, height=H, rasterize_mode=model.config.rasterize_mode,
                    backend=model.config.rasterizer_backend,
                )  # fmt: skip
                shown = (alpha[0, ..., 0] > 0.5).cpu().numpy()
            if truth.any() or shown.any():
                per_object[obj.id].append(mask_iou(shown, truth))
    means = [float(np.mean(v)) for v in per_object.values() if v]
    return 100.0 * float(np.mean(means)) if means else float("nan")


@torch.no_grad()
def evaluate_3d(
    pipeline,
    scene: Path,
    label_rule: Optional[str] = None,
    min_gaussians: Optional[int] = None,
    min_share: Optional[float] = None,
    with_isolation: bool = True,
    quiet: bool = True,
) -> Dict[str, float]:
    """3D PQ, label accuracy, exported vs true object count and isolation IoU (empty dict for a non-demo scene)."""
    from ulift_ns.export import MIN_OBJECT_GAUSSIANS, MIN_OBJECT_SHARE, export_filter, real_objects

    demo = demo_scene_of(scene)
    if demo is None:
        return {}
    model = pipeline.model
    labels_t, _ = model.gaussian_labels(label_rule, quiet=quiet)
    labels = labels_t.detach().cpu().numpy().astype(np.int64)
    masks = export_filter(model)
    keep = (masks["finite"] & masks["visible"]).numpy()
    opacity = torch.sigmoid(model.gauss_params["opacities"].detach().float()).reshape(-1).cpu().numpy().astype(np.float64)
    real = real_objects(
        labels[keep], opacity[keep],
        MIN_OBJECT_GAUSSIANS if min_gaussians is None else min_gaussians, MIN_OBJECT_SHARE if min_share is None else min_share,
    )  # fmt: skip
    labels = np.where(np.isin(labels, real) & keep, labels, 0)
    gt = nearest_primitive(world_means(pipeline), [o.to_dict() for o in demo.objects], demo.ground_radius, SKY_DISTANCE)
    pred_k, gt_k, w_k = labels[keep], gt[keep], opacity[keep]
    pq = panoptic_quality_3d(pred_k, gt_k, w_k)
    result = {
        "pq3d": pq["pq"],
        "sq3d": pq["sq"],
        "rq3d": pq["rq"],
        "label_acc": hungarian_label_accuracy(pred_k, gt_k, w_k),
        "objects": float(len(real)),
        "true_objects": float(len(demo.objects) + 2),  # + ground + sky
        "unassigned_share": 100.0 * float(w_k[pred_k == 0].sum() / max(w_k.sum(), 1e-12)),
    }
    sky_id = max([o.id for o in demo.objects], default=0) + 2
    solid = gt_k != sky_id  # the sky dome is mostly outside every view: the same scores without it
    result["label_acc_no_sky"] = hungarian_label_accuracy(pred_k[solid], gt_k[solid], w_k[solid])
    result["pq3d_no_sky"] = panoptic_quality_3d(pred_k[solid], gt_k[solid], w_k[solid])["pq"]
    if with_isolation:
        result["iso_iou"] = isolation_iou(pipeline, scene, demo, labels, hungarian_match(pred_k, gt_k, w_k))
    return result


def print_metrics_3d(metrics: Dict[str, float], title: str = "3D segmentation (per Gaussian, opacity-weighted)") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    names = {"pq3d": "3D PQ", "label_acc": "label acc %", "objects": "objects", "true_objects": "true objects", "iso_iou": "isolation IoU"}
    keys = [k for k in COLUMNS_3D if k in metrics]
    for k in keys:
        table.add_column(names[k], justify="right")
    table.add_row(*[f"{metrics[k]:.0f}" if k in ("objects", "true_objects") else f"{metrics[k]:.1f}" for k in keys])
    Console().print(table)


def run_eval_3d(load_config: Path, scene: Path, metrics_json: Optional[Path] = None, label_rule: Optional[str] = None) -> Dict[str, float]:
    """What ``ulift eval --load-config`` adds: the 3D metrics, printed and merged into ``metrics_json`` under ``metrics_3d``."""
    from ulift_ns.labelio import write_json_atomic
    from ulift_ns.predict import load_pipeline

    if demo_scene_of(scene) is None:
        raise ValueError(f"{scene} is not a ulift demo scene (no demo_meta.json): 3D ground truth comes from the demo's primitives.")
    pipeline = load_pipeline(Path(load_config), test_mode="inference")
    metrics = evaluate_3d(pipeline, scene, label_rule=label_rule, quiet=False)
    print_metrics_3d(metrics)
    if metrics_json is not None and Path(metrics_json).is_file():
        data = json.loads(Path(metrics_json).read_text(encoding="utf-8"))
        data["metrics_3d"] = metrics
        write_json_atomic(Path(metrics_json), data)
    return metrics
