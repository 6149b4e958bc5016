"""3D segmentation metrics on per-Gaussian labels, opacity-weighted (pure numpy / scipy).

* ``panoptic_quality_3d``: PQ over objects, each object the (weighted) set of its Gaussians,
  a match being IoU > 0.5.  Predicted label 0 (unassigned) is in no predicted object.
* ``hungarian_label_accuracy``: share of the weight whose predicted label maps to its true
  object after one Hungarian match of predicted to true labels (0 never matches).
* ``primitive_distances`` / ``nearest_primitive``: ground truth for the demo scene, each
  Gaussian belonging to the nearest primitive surface (objects, ground), or to the sky.
* ``mask_iou``: IoU of two boolean masks (isolation IoU per object and view).
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment


def _weighted_contingency(pred: np.ndarray, gt: np.ndarray, weight: np.ndarray):
    p_ids, p_inv = np.unique(pred, return_inverse=True)
    g_ids, g_inv = np.unique(gt, return_inverse=True)
    table = np.zeros((p_ids.size, g_ids.size))
    np.add.at(table, (p_inv.reshape(-1), g_inv.reshape(-1)), weight)
    return p_ids, g_ids, table


def panoptic_quality_3d(pred: np.ndarray, gt: np.ndarray, weight: np.ndarray, iou_threshold: float = 0.5) -> Dict[str, float]:
    """PQ / SQ / RQ (in %) over objects; ``pred`` 0 is unassigned, every ``gt`` id is an object."""
    pred, gt, weight = np.asarray(pred), np.asarray(gt), np.asarray(weight, dtype=np.float64)
    p_ids, g_ids, table = _weighted_contingency(pred, gt, weight)
    p_area, g_area = table.sum(1), table.sum(0)
    real = p_ids != 0
    table, p_area, p_ids = table[real], p_area[real], p_ids[real]
    union = p_area[:, None] + g_area[None, :] - table
    iou = np.where(union > 0, table / np.maximum(union, 1e-30), 0.0)
    matched = iou > iou_threshold  # > 0.5 makes matches unique
    tp = int(matched.sum())
    fp = int(p_ids.size - matched.any(1).sum())
    fn = int(g_ids.size - matched.any(0).sum())
    iou_sum = float(iou[matched].sum())
    denom = tp + 0.5 * fp + 0.5 * fn
    return {
        "pq": 100.0 * iou_sum / denom if denom else 0.0,
        "sq": 100.0 * iou_sum / tp if tp else 0.0,
        "rq": 100.0 * tp / denom if denom else 0.0,
        "tp": float(tp),
        "fp": float(fp),
        "fn": float(fn),
    }


def hungarian_match(pred: np.ndarray, gt: np.ndarray, weight: np.ndarray) -> Dict[int, int]:
    """Predicted label -> true label maximising the matched weight (one to one; label 0 is never matched)."""
    p_ids, g_ids, table = _weighted_contingency(np.asarray(pred), np.asarray(gt), np.asarray(weight, dtype=np.float64))
    real = p_ids != 0
    p_ids, table = p_ids[real], table[real]
    if table.size == 0:
        return {}
    rows, cols = linear_sum_assignment(table, maximize=True)
    return {int(p_ids[r]): int(g_ids[c]) for r, c in zip(rows, cols) if table[r, c] > 0}


def hungarian_label_accuracy(pred: np.ndarray, gt: np.ndarray, weight: np.ndarray) -> float:
    """Weighted accuracy (%) after ``hungarian_match``; unassigned (0) and unmatched labels count as wrong."""
    pred, gt, weight = np.asarray(pred), np.asarray(gt), np.asarray(weight, dtype=np.float64)
    mapping = hungarian_match(pred, gt, weight)
    mapped = np.array([mapping.get(int(p), -1) for p in np.unique(pred)])
    lookup = dict(zip(np.unique(pred).tolist(), mapped.tolist()))
    hit = np.array([lookup[int(p)] for p in pred]) == gt if pred.size else np.zeros(0, bool)
    total = weight.sum()
    return 100.0 * float(weight[hit].sum() / total) if total > 0 else 0.0


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


# --------------------------------------------------------------------------- demo ground truth


def _box_sdf(p: np.ndarray, center: np.ndarray, half: np.ndarray, rot: np.ndarray) -> np.ndarray:
    q = np.abs((p - center[None]) @ rot) - half[None]
    return np.linalg.norm(np.maximum(q, 0.0), axis=1) + np.minimum(q.max(1), 0.0)


def _cylinder_sdf(p: np.ndarray, center: np.ndarray, radius: float, height: float) -> np.ndarray:
    rel = p - center[None]
    q = np.stack([np.hypot(rel[:, 0], rel[:, 1]) - radius, np.abs(rel[:, 2]) - 0.5 * height], 1)
    return np.linalg.norm(np.maximum(q, 0.0), axis=1) + np.minimum(q.max(1), 0.0)


def primitive_distances(points: np.ndarray, objects: Sequence[dict], ground_radius: float) -> np.ndarray:
    """``[n, 1 + K]`` unsigned distances to the ground disk (z = 0) and to each object's surface.

    ``objects`` are the demo's ``demo_meta.json`` entries (shape, center, yaw, size / radius / height).
    """
    p = np.asarray(points, dtype=np.float64)
    rho = np.hypot(p[:, 0], p[:, 1])
    cols = [np.hypot(np.maximum(rho - ground_radius, 0.0), p[:, 2])]
    for obj in objects:
        c = np.asarray(obj["center"], dtype=np.float64)
        if obj["shape"] == "sphere":
            d = np.linalg.norm(p - c[None], axis=1) - float(obj["radius"])
        elif obj["shape"] == "box":
            yaw = float(obj.get("yaw", 0.0))
            rot = np.array([[np.cos(yaw), -np.sin(yaw), 0.0], [np.sin(yaw), np.cos(yaw), 0.0], [0.0, 0.0, 1.0]])
            d = _box_sdf(p, c, 0.5 * np.asarray(obj["size"], dtype=np.float64), rot)
        else:
            d = _cylinder_sdf(p, c, float(obj["radius"]), float(obj["height"]))
        cols.append(np.abs(d))
    return np.stack(cols, 1)


def nearest_primitive(
    points: np.ndarray, objects: Sequence[dict], ground_radius: float, sky_distance: float
) -> np.ndarray:
    """True label per point: the object's id, ``ground_id`` = max id + 1 or ``sky_id`` = max id + 2.

    A point farther than ``sky_distance`` from every surface belongs to the sky.
    """
    ids = [int(o["id"]) for o in objects]
    ground_id = max(ids, default=0) + 1
    dist = primitive_distances(points, objects, ground_radius)
    labels = np.array([ground_id] + ids)[dist.argmin(1)]
    return np.where(dist.min(1) > sky_distance, ground_id + 1, labels)
