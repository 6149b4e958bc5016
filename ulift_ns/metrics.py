"""Class-agnostic 3D-consistent instance segmentation metrics.

Inputs everywhere are two equally long sequences (one entry per test view) of
integer label maps ``[H, W]`` (numpy arrays or torch tensors): predictions and
ground truth.  ``0`` is void / background, ids ``>= 1`` are objects.  Views may
have different sizes.

Conventions (shared by all metrics unless stated):

* **Scene-level pooling.**  PQ, matched mIoU and consistency pool the pixels
  of all views into one "image" (Panoptic Lifting / Contrastive Lift
  protocol).  An object therefore only scores if it carries the *same*
  predicted id in every view; ground-truth ids must be consistent across
  views (they are in Replica / Messy Rooms).
* **Ground-truth void (0)** follows the COCO panoptic convention: pixels with
  gt 0 are excluded from a predicted segment's area when computing IoU, and a
  predicted segment more than half of which lies on gt void is *ignored*
  (neither TP nor FP).
* **Predicted 0** means "no object": those pixels belong to no predicted
  segment, so they still count in the gt segment's area (lowering IoU) - again
  as in COCO's ``pq_compute``.  (torchmetrics' ``PanopticQuality`` instead
  treats a void *prediction* as ignorable; the two agree whenever predictions
  have no 0 pixels.)
* All scores are in percent (0-100); undefined scores (no objects at all)
  are ``nan``.

Everything is numpy / scipy; pycocotools is imported lazily by
:func:`coco_mask_map` only.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from scipy.optimize import linear_sum_assignment

try:  # torch is optional for this module; accept tensors when present.
    import torch
except ImportError:  # pragma: no cover
    torch = None  # type: ignore[assignment]

__all__ = [
    "scene_panoptic_quality",
    "matched_miou",
    "multiview_consistency",
    "coco_mask_map",
    "evaluate_all",
]

LabelMap = Union[np.ndarray, "torch.Tensor"]


# ----------------------------------------------------------------------------- helpers
def _to_numpy(x: Any, dtype: Any = np.int64) -> np.ndarray:
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x).astype(dtype, copy=False)


def _check_views(preds: Sequence[LabelMap], gts: Sequence[LabelMap]) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    if len(preds) != len(gts):
        raise ValueError(f"got {len(preds)} prediction maps but {len(gts)} ground-truth maps")
    p_list = [_to_numpy(p) for p in preds]
    g_list = [_to_numpy(g) for g in gts]
    for i, (p, g) in enumerate(zip(p_list, g_list)):
        if p.shape != g.shape:
            raise ValueError(f"view {i}: prediction shape {p.shape} != ground-truth shape {g.shape}")
        if (p.size and p.min() < 0) or (g.size and g.min() < 0):
            raise ValueError(f"view {i}: label ids must be >= 0")
    return p_list, g_list


def _pool(preds: Sequence[LabelMap], gts: Sequence[LabelMap]) -> Tuple[np.ndarray, np.ndarray]:
    """Concatenate all views' pixels into one flat (pred, gt) pair."""
    p_list, g_list = _check_views(preds, gts)
    if not p_list:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return (np.concatenate([p.reshape(-1) for p in p_list]), np.concatenate([g.reshape(-1) for g in g_list]))


def _contingency(pred: np.ndarray, gt: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Joint pixel histogram: ``table[i, j] = #{gt == gt_ids[i] and pred == pred_ids[j]}``.

    One ``np.unique`` per side plus one ``bincount``: no loop over segments.
    """
    gt_ids, gi = np.unique(gt, return_inverse=True)
    pred_ids, pi = np.unique(pred, return_inverse=True)
    n_g, n_p = len(gt_ids), len(pred_ids)
    table = np.bincount(gi.reshape(-1) * n_p + pi.reshape(-1), minlength=n_g * n_p).reshape(n_g, n_p)
    return gt_ids, pred_ids, table


def _split_void(
    gt_ids: np.ndarray, pred_ids: np.ndarray, table: np.ndarray
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split the contingency table into object rows/cols and the void parts.

    Returns ``(gt_obj_ids, pred_obj_ids, inter [G, Pd], gt_area [G], pred_void_overlap [Pd])``
    where ``gt_area`` counts *all* pixels of each gt object (including those
    predicted 0) and ``pred_void_overlap`` is each predicted segment's overlap
    with gt void.
    """
    g_obj = gt_ids > 0
    p_obj = pred_ids > 0
    gt_area = table[g_obj].sum(axis=1)
    void_rows = table[~g_obj]
    void_overlap = void_rows.sum(axis=0)[p_obj] if void_rows.size else np.zeros(int(p_obj.sum()), np.int64)
    inter = table[g_obj][:, p_obj]
    return gt_ids[g_obj], pred_ids[p_obj], inter, gt_area, void_overlap


# ----------------------------------------------------------------------------- PQ
def scene_panoptic_quality(
    preds: Sequence[LabelMap],
    gts: Sequence[LabelMap],
    iou_threshold: float = 0.5,
) -> Dict[str, float]:
    """Scene-level, class-agnostic Panoptic Quality (percent).

    All views are pooled as one image, so a predicted id is one segment across
    the whole scene and must cover the same object in every view.  A gt/pred
    pair is a TP iff ``IoU > iou_threshold`` with
    ``IoU = |g & p| / (|g| + |p| - |g & p| - |p & void|)`` (COCO panoptic).
    Unmatched gt segments are FN; unmatched predicted segments are FP unless
    more than half of their pixels lie on gt void, in which case they are
    ignored (COCO convention: predictions on unannotated regions are neither
    rewarded nor punished).

    ``iou_threshold`` must be ``>= 0.5``: only then is the matching provably
    unique (segments do not overlap), which is what makes PQ well defined
    without an assignment step.

    Returns:
        ``dict(pq, sq, rq, tp, fp, fn)``; ``pq = sq * rq / 100``.  ``pq`` and
        ``rq`` are nan when ``tp + fp + fn == 0``; ``sq`` is 0 when ``tp == 0``.
    """
    if iou_threshold < 0.5:
        raise ValueError("iou_threshold must be >= 0.5 for a unique PQ matching")
    pred, gt = _pool(preds, gts)
    gt_ids, pred_ids, table = _contingency(pred, gt)
    _, _, inter, gt_area, void_overlap = _split_void(gt_ids, pred_ids, table)
    pred_area = table[:, pred_ids > 0].sum(axis=0)

    union = gt_area[:, None] + (pred_area - void_overlap)[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    match = iou > iou_threshold
    tp = int(match.sum())
    iou_sum = float(iou[match].sum())
    fn = int((~match.any(axis=1)).sum())
    pred_unmatched = ~match.any(axis=0)
    pred_ignored = void_overlap > 0.5 * pred_area
    fp = int((pred_unmatched & ~pred_ignored).sum())

    denom = tp + 0.5 * fp + 0.5 * fn
    sq = 100.0 * iou_sum / tp if tp > 0 else 0.0
    rq = 100.0 * tp / denom if denom > 0 else float("nan")
    pq = 100.0 * iou_sum / denom if denom > 0 else float("nan")
    return {"pq": pq, "sq": sq, "rq": rq, "tp": tp, "fp": fp, "fn": fn}


# ----------------------------------------------------------------------------- mIoU
def matched_miou(
    preds: Sequence[LabelMap],
    gts: Sequence[LabelMap],
    ignore_void: bool = True,
) -> Dict[str, Any]:
    """Mean IoU after one global Hungarian matching of predicted to gt ids.

    The matching is solved once over the pooled views (maximising the summed
    IoU), so a predicted id can explain only one gt object in the whole scene.
    Every gt object contributes to the mean; unmatched ones score 0.

    With ``ignore_void`` (default) pixels whose gt is 0 are dropped before
    computing IoU, i.e. predictions on unannotated background are not
    penalised - consistent with the PQ void rule.  Predicted 0 is "no object"
    and never matched.

    Returns:
        ``dict(miou, matches, per_object)``: ``miou`` in percent (nan without
        gt objects), ``matches`` maps gt id -> predicted id (only pairs with
        IoU > 0), ``per_object`` maps gt id -> IoU in percent.
    """
    pred, gt = _pool(preds, gts)
    if ignore_void:
        sel = gt > 0
        pred, gt = pred[sel], gt[sel]
    gt_ids, pred_ids, table = _contingency(pred, gt)
    g_ids, p_ids, inter, gt_area, _ = _split_void(gt_ids, pred_ids, table)
    if len(g_ids) == 0:
        return {"miou": float("nan"), "matches": {}, "per_object": {}}
    pred_area = table[:, pred_ids > 0].sum(axis=0)
    union = gt_area[:, None] + pred_area[None, :] - inter
    iou = inter / np.maximum(union, 1)
    per_obj = np.zeros(len(g_ids))
    matches: Dict[int, int] = {}
    if iou.size:
        rows, cols = linear_sum_assignment(iou, maximize=True)
        for r, c in zip(rows, cols):  # at most #gt entries; bookkeeping only
            if iou[r, c] > 0:
                per_obj[r] = iou[r, c]
                matches[int(g_ids[r])] = int(p_ids[c])
    return {
        "miou": 100.0 * float(per_obj.mean()),
        "matches": matches,
        "per_object": {int(g): 100.0 * float(v) for g, v in zip(g_ids, per_obj)},
    }


# ----------------------------------------------------------------------------- consistency
def multiview_consistency(preds: Sequence[LabelMap], gts: Sequence[LabelMap]) -> Dict[str, Any]:
    """Share of each gt object's pixels (over all views) carrying its dominant id.

    For gt object ``g`` let ``m_g`` be the most frequent *non-zero* predicted
    id on its pixels across all views; consistency is ``|g & (pred == m_g)| / |g|``.
    Pixels predicted 0 ("no object") count as inconsistent: otherwise a model
    that abstains everywhere but on one view would look perfectly consistent.
    The score is the mean over gt objects, in percent.

    This complements PQ: it is blind to under-segmentation (one id for the
    whole scene scores 100), so read it together with PQ / mIoU.

    Returns:
        ``dict(consistency, per_object)`` (nan without gt objects).
    """
    pred, gt = _pool(preds, gts)
    gt_ids, pred_ids, table = _contingency(pred, gt)
    g_ids, _, inter, gt_area, _ = _split_void(gt_ids, pred_ids, table)
    if len(g_ids) == 0:
        return {"consistency": float("nan"), "per_object": {}}
    best = inter.max(axis=1) if inter.shape[1] else np.zeros(len(g_ids))
    share = best / np.maximum(gt_area, 1)
    return {
        "consistency": 100.0 * float(share.mean()),
        "per_object": {int(g): 100.0 * float(s) for g, s in zip(g_ids, share)},
    }


# ----------------------------------------------------------------------------- COCO mAP
def _encode_masks(label_map: np.ndarray, ids: np.ndarray, mask_utils: Any) -> List[Dict[str, Any]]:
    """RLE-encode ``label_map == id`` for every id with one pycocotools call."""
    if len(ids) == 0:
        return []
    stack = np.asfortranarray((label_map[:, :, None] == ids[None, None, :]).astype(np.uint8))
    return mask_utils.encode(stack)


def _gt_annotation(ann_id: int, image_id: int, rle: Dict[str, Any], area: float, iscrowd: bool, mask_utils: Any) -> Dict[str, Any]:
    """One class-agnostic COCO ground-truth annotation (``iscrowd`` marks the ignored void region)."""
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": 1,
        "segmentation": rle,
        "area": float(area),
        "bbox": [float(b) for b in mask_utils.toBbox(rle)],
        "iscrowd": int(iscrowd),
    }


def coco_mask_map(
    preds: Sequence[LabelMap],
    gts: Sequence[LabelMap],
    scores: Optional[Sequence[LabelMap]] = None,
    ignore_void: bool = True,
    max_dets: int = 100,
) -> Dict[str, float]:
    """Class-agnostic COCO mask AP (pycocotools), one COCO image per view.

    Each predicted id present in a view is one detection in that view; its
    score is the mean of ``scores[view]`` over the segment's pixels (e.g. the
    codebook max-probability map), or 1.0 when ``scores`` is None (then ties
    are broken by id order, so AP reduces to a matching-quality measure).
    Unlike PQ this is *per view*: cross-view id consistency is not required.

    With ``ignore_void`` the gt void region (gt 0) of each view is added as an
    ``iscrowd`` annotation, so detections lying mainly on unannotated pixels
    are ignored instead of counted as false positives - the COCO analogue of
    the PQ void rule.

    Returns:
        ``dict(map, map50, map75)`` in percent; nan when there are no gt
        objects, 0 when there are gt objects but no detections.
    """
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    p_list, g_list = _check_views(preds, gts)
    s_list: Optional[List[np.ndarray]] = None
    if scores is not None:
        if len(scores) != len(p_list):
            raise ValueError("scores must have one map per view")
        s_list = [_to_numpy(s, np.float64) for s in scores]

    images: List[Dict[str, Any]] = []
    anns: List[Dict[str, Any]] = []
    dets: List[Dict[str, Any]] = []
    for v, (p, g) in enumerate(zip(p_list, g_list)):
        h, w = g.shape
        image_id = v + 1
        images.append({"id": image_id, "height": int(h), "width": int(w)})
        g_all, g_cnt = np.unique(g, return_counts=True)
        g_ids, g_areas = g_all[g_all > 0], g_cnt[g_all > 0]
        void_area = int(g_cnt[g_all == 0].sum())
        for area, rle in zip(g_areas, _encode_masks(g, g_ids, mask_utils)):
            anns.append(_gt_annotation(len(anns) + 1, image_id, rle, area, False, mask_utils))
        if ignore_void and void_area > 0 and len(g_ids) > 0:
            (rle,) = _encode_masks(g, np.array([0]), mask_utils)
            anns.append(_gt_annotation(len(anns) + 1, image_id, rle, void_area, True, mask_utils))
        p_all, p_inv, p_cnt = np.unique(p.reshape(-1), return_inverse=True, return_counts=True)
        is_obj = p_all > 0
        p_ids = p_all[is_obj]
        if len(p_ids) == 0:
            continue
        if s_list is not None:
            if s_list[v].shape != p.shape:
                raise ValueError(f"view {v}: score map shape {s_list[v].shape} != {p.shape}")
            sums = np.bincount(p_inv.reshape(-1), weights=s_list[v].reshape(-1), minlength=len(p_all))
            seg_scores = (sums / p_cnt)[is_obj].tolist()
        else:
            seg_scores = [1.0] * len(p_ids)
        for rle, sc in zip(_encode_masks(p, p_ids, mask_utils), seg_scores):
            dets.append({"image_id": image_id, "category_id": 1, "segmentation": rle, "score": sc})

    if not any(a["iscrowd"] == 0 for a in anns):
        return {"map": float("nan"), "map50": float("nan"), "map75": float("nan")}
    if not dets:
        return {"map": 0.0, "map50": 0.0, "map75": 0.0}

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": images,
            "annotations": anns,
            "categories": [{"id": 1, "name": "object"}],
        }
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        ev.params.maxDets = [1, 10, int(max_dets)]
        ev.evaluate()
        ev.accumulate()

    # precision: [T iou thresholds, R recall points, K classes, A area ranges, M maxDets]
    precision = ev.eval["precision"][:, :, :, 0, -1]
    thrs = ev.params.iouThrs

    def _ap(sel: np.ndarray) -> float:
        vals = sel[sel > -1]
        return 100.0 * float(vals.mean()) if vals.size else float("nan")

    return {
        "map": _ap(precision),
        "map50": _ap(precision[np.isclose(thrs, 0.5)]),
        "map75": _ap(precision[np.isclose(thrs, 0.75)]),
    }


# ----------------------------------------------------------------------------- all
SMALL_OBJECT_FRACTION = 0.01
"""An object is *small* in a view when it covers less than this share of the image."""


def small_object_recall(
    preds: Sequence[LabelMap], gts: Sequence[LabelMap], max_fraction: float = SMALL_OBJECT_FRACTION, iou: float = 0.5
) -> Dict[str, float]:
    """Recall (%) of small ground-truth objects: per view, an object (gt id > 0) covering less than
    ``max_fraction`` of the image counts as found when one predicted segment (id > 0) of that view
    overlaps it with IoU >= ``iou``.  A split half or a merge with a neighbour stays below 0.5 IoU.

    Returns ``small_recall`` (NaN when no view has a small object) and ``small_count`` (view-object pairs).
    """
    p_list, g_list = _check_views(preds, gts)
    found = total = 0
    for pred, gt in zip(p_list, g_list):
        limit = max_fraction * gt.size
        gt_ids, gt_area = np.unique(gt[gt > 0], return_counts=True)
        for gid in gt_ids[gt_area < limit]:
            total += 1
            g = gt == gid
            ids, inter = np.unique(pred[g & (pred > 0)], return_counts=True)
            if not len(ids):
                continue
            best = ids[np.argmax(inter)]
            union = int(np.count_nonzero(g | (pred == best)))
            found += int(inter.max() / union >= iou)
    return {"small_recall": 100.0 * found / total if total else float("nan"), "small_count": float(total)}


def evaluate_all(
    preds: Sequence[LabelMap],
    gts: Sequence[LabelMap],
    scores: Optional[Sequence[LabelMap]] = None,
    with_map: bool = True,
) -> Dict[str, float]:
    """All scene metrics in one flat dict of numbers (handy for logging).

    Keys: ``pq, sq, rq, tp, fp, fn, miou, consistency, small_recall, small_count`` and, when
    ``with_map`` (needs pycocotools), ``map, map50, map75``.
    """
    out: Dict[str, float] = {}
    out.update(scene_panoptic_quality(preds, gts))
    out["miou"] = matched_miou(preds, gts)["miou"]
    out["consistency"] = multiview_consistency(preds, gts)["consistency"]
    out.update(small_object_recall(preds, gts))
    if with_map:
        out.update(coco_mask_map(preds, gts, scores))
    return out
