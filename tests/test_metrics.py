"""Tests for ulift_ns.metrics: hand-computed cases and cross-checks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ulift_ns.metrics import (
    coco_mask_map,
    evaluate_all,
    matched_miou,
    multiview_consistency,
    scene_panoptic_quality,
)

# --------------------------------------------------------------------------- the 2-view 4x4 example
# gt (0 = void), ids consistent across views:
GT_A = np.array([[1, 1, 2, 2],
                 [1, 1, 2, 2],
                 [0, 0, 3, 3],
                 [0, 0, 3, 3]])
GT_B = np.array([[1, 1, 1, 1],
                 [2, 2, 0, 0],
                 [2, 2, 0, 0],
                 [3, 3, 3, 3]])
PRED_A = np.array([[5, 5, 6, 6],
                   [5, 5, 6, 6],
                   [9, 7, 7, 7],
                   [9, 9, 7, 7]])
PRED_B = np.array([[5, 5, 5, 5],
                   [6, 6, 9, 9],
                   [6, 6, 9, 9],
                   [7, 7, 8, 8]])
# Pooled areas: gt 1, 2, 3 -> 8 px each, void 8 px.
# pred 5 = 8 px (all on gt1); pred 6 = 8 px (all on gt2);
# pred 7 = 5 (view A: 4 on gt3 + 1 on void) + 2 (view B, on gt3) = 7 px, 1 on void;
# pred 8 = 2 px on gt3; pred 9 = 3 + 4 = 7 px, all on void.
# COCO IoU (void part of the prediction removed from the union):
#   1-5: 8 / (8 + 8 - 8) = 1;  2-6: 1;
#   3-7: 6 / (8 + 7 - 6 - 1) = 6/8 = 0.75   (naive union would give 6/9)
#   3-8: 2 / (8 + 2 - 2) = 0.25  (< 0.5, not a match)
# TP = {1-5, 2-6, 3-7}, FN = 0; pred 8 unmatched -> FP = 1;
# pred 9 lies 100% on void -> ignored.
# PQ = (1 + 1 + 0.75) / (3 + 0.5*1 + 0.5*0) = 2.75/3.5 = 78.571..%
# SQ = 2.75/3 = 91.667%, RQ = 3/3.5 = 85.714%
# matched mIoU (void pixels dropped): IoU(3,7) = 6/(8+6-6) = 0.75 -> (1+1+0.75)/3 = 91.667%
#   without dropping void: IoU(3,7) = 6/(8+7-6) = 2/3 -> (2 + 2/3)/3 = 88.889%
# consistency: gt1 100%, gt2 100%, gt3 6/8 = 75% -> 91.667%
PREDS = [PRED_A, PRED_B]
GTS = [GT_A, GT_B]


def test_pq_hand_example():
    out = scene_panoptic_quality(PREDS, GTS)
    assert (out["tp"], out["fp"], out["fn"]) == (3, 1, 0)
    assert out["pq"] == pytest.approx(100 * 2.75 / 3.5)
    assert out["sq"] == pytest.approx(100 * 2.75 / 3)
    assert out["rq"] == pytest.approx(100 * 3 / 3.5)
    assert out["pq"] == pytest.approx(out["sq"] * out["rq"] / 100)


def test_miou_and_consistency_hand_example():
    m = matched_miou(PREDS, GTS)
    assert m["miou"] == pytest.approx(100 * 2.75 / 3)
    assert m["matches"] == {1: 5, 2: 6, 3: 7}
    assert m["per_object"][3] == pytest.approx(75.0)
    assert matched_miou(PREDS, GTS, ignore_void=False)["miou"] == pytest.approx(100 * (2 + 2 / 3) / 3)
    c = multiview_consistency(PREDS, GTS)
    assert c["consistency"] == pytest.approx(100 * 2.75 / 3)
    assert c["per_object"] == pytest.approx({1: 100.0, 2: 100.0, 3: 75.0})


def test_inconsistent_ids_across_views_fail_scene_metrics_but_not_map():
    # Perfect per-view segmentation, but view B uses different ids.
    # Pooled: pred 1 covers 4 of gt1's 8 px -> IoU 4/8 = 0.5, not > 0.5:
    # TP = 0, FP = 6 (ids 1,2,3,11,12,13), FN = 3 -> PQ = 0.
    preds = [GT_A.copy(), np.where(GT_B > 0, GT_B + 10, 0)]
    pq = scene_panoptic_quality(preds, GTS)
    assert (pq["tp"], pq["fp"], pq["fn"]) == (0, 6, 3) and pq["pq"] == 0.0 and pq["sq"] == 0.0
    assert matched_miou(preds, GTS)["miou"] == pytest.approx(50.0)
    assert multiview_consistency(preds, GTS)["consistency"] == pytest.approx(50.0)
    assert coco_mask_map(preds, GTS)["map"] == pytest.approx(100.0)  # per-view metric
    # The consistent version is perfect everywhere.
    perfect = evaluate_all(GTS, GTS)
    for k in ("pq", "sq", "rq", "miou", "consistency", "map", "map50", "map75"):
        assert perfect[k] == pytest.approx(100.0), k


def test_pq_void_rules():
    gt = np.array([[1, 1, 1, 1],
                   [0, 0, 0, 0],
                   [0, 0, 0, 0],
                   [2, 2, 2, 2]])
    pred = np.array([[1, 1, 1, 1],
                     [5, 5, 5, 6],
                     [0, 0, 6, 6],
                     [5, 5, 6, 6]])
    # gt1 <-> pred1: IoU 1 (TP).
    # pred 5: 5 px = 3 on void + 2 on gt2 -> IoU(gt2) = 2 / (4 + 5 - 2 - 3) = 0.5 (not > 0.5);
    #         60% of it is void -> ignored (no FP).
    # pred 6: 5 px = 3 on void + 2 on gt2 -> same: IoU 0.5, 60% void -> ignored.
    # gt2 unmatched -> FN.  PQ = 1 / (1 + 0.5) = 66.67%.
    out = scene_panoptic_quality([pred], [gt])
    assert (out["tp"], out["fp"], out["fn"]) == (1, 0, 1)
    assert out["pq"] == pytest.approx(100 * 1 / 1.5)
    # Shrink pred 6 to 3 px (1 void + 2 on gt2 = 33% void): IoU = 2 / (4 + 3 - 2 - 1) = 0.5,
    # still unmatched, but now mostly on annotated pixels -> a real FP.
    pred2 = pred.copy()
    pred2[1, 3] = 0
    pred2[2, 2] = 0
    out2 = scene_panoptic_quality([pred2], [gt])
    assert (out2["tp"], out2["fp"], out2["fn"]) == (1, 1, 1)


def test_predicted_zero_counts_against_gt():
    gt = np.array([[1, 1], [1, 1]])
    pred = np.array([[3, 3], [3, 0]])
    out = scene_panoptic_quality([pred], [gt])
    # COCO rule: IoU = 3 / (4 + 3 - 3) = 0.75 (pred 0 is not void).
    assert out["sq"] == pytest.approx(75.0)
    assert multiview_consistency([pred], [gt])["consistency"] == pytest.approx(75.0)
    # A prediction of only zeros is totally inconsistent, not trivially consistent.
    assert multiview_consistency([np.zeros((2, 2), int)], [gt])["consistency"] == 0.0


def test_pq_empty_and_validation():
    z = np.zeros((3, 3), int)
    out = scene_panoptic_quality([z], [z])
    assert np.isnan(out["pq"]) and out["tp"] == out["fp"] == out["fn"] == 0
    assert np.isnan(matched_miou([z], [z])["miou"])
    with pytest.raises(ValueError):
        scene_panoptic_quality([z], [z], iou_threshold=0.3)
    with pytest.raises(ValueError):
        scene_panoptic_quality([z], [np.zeros((3, 4), int)])
    with pytest.raises(ValueError):
        scene_panoptic_quality([z, z], [z])
    with pytest.raises(ValueError):
        scene_panoptic_quality([z - 1], [z])


def test_accepts_torch_tensors_and_large_ids():
    preds = [torch.from_numpy(p * 100_003) for p in PREDS]
    gts = [torch.from_numpy(g * 7_777) for g in GTS]
    out = scene_panoptic_quality(preds, gts)
    assert out["pq"] == pytest.approx(100 * 2.75 / 3.5)


# --------------------------------------------------------------------------- random cross-checks
def _blocky(rng: np.random.Generator, h: int, w: int, n_ids: int, block: int) -> np.ndarray:
    small = rng.integers(0, n_ids, size=(h // block, w // block))
    return np.kron(small, np.ones((block, block), dtype=np.int64))


def _perturbed_pred(rng: np.random.Generator, gt: np.ndarray) -> np.ndarray:
    pred = np.roll(gt, shift=int(rng.integers(0, 3)), axis=int(rng.integers(0, 2)))
    perm = rng.permutation(50) + 1
    pred = perm[pred]  # relabel, also gives void pixels an id (no predicted 0)
    h, w = pred.shape
    y, x = rng.integers(0, h - 6), rng.integers(0, w - 6)
    pred[y : y + 6, x : x + 6] = 77  # a spurious segment
    return pred


@pytest.mark.parametrize("seed", range(6))
def test_pq_matches_torchmetrics_single_image(seed):
    tm = pytest.importorskip("torchmetrics.detection")
    rng = np.random.default_rng(seed)
    gt = _blocky(rng, 24, 24, 6, 4)
    pred = _perturbed_pred(rng, gt)
    ours = scene_panoptic_quality([pred], [gt])

    metric = tm.PanopticQuality(things={1}, stuffs=set(), return_sq_and_rq=True)
    to_tm = lambda cat, inst: torch.from_numpy(np.stack([cat, inst], -1))[None]  # noqa: E731
    p = to_tm(np.ones_like(pred), pred)
    t = to_tm((gt > 0).astype(np.int64), gt)  # category 0 is unknown -> void for targets
    pq, sq, rq = metric(p, t).tolist()
    assert ours["pq"] == pytest.approx(100 * pq, abs=1e-4)
    assert ours["sq"] == pytest.approx(100 * sq, abs=1e-4)
    assert ours["rq"] == pytest.approx(100 * rq, abs=1e-4)


def test_random_cases_exercise_tp_fp_and_ignore():
    # Guard that the torchmetrics cross-check above is not vacuous.
    tot = {"tp": 0, "fp": 0, "fn": 0}
    for seed in range(6):
        rng = np.random.default_rng(seed)
        gt = _blocky(rng, 24, 24, 6, 4)
        out = scene_panoptic_quality([_perturbed_pred(rng, gt)], [gt])
        for k in tot:
            tot[k] += out[k]
    assert tot["tp"] > 0 and tot["fp"] > 0 and tot["fn"] > 0


def _loop_iou(pred: np.ndarray, gt: np.ndarray, g: int, p: int) -> float:
    a, b = gt == g, pred == p
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("seed", range(4))
def test_matched_miou_against_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    gt = _blocky(rng, 12, 12, 4, 2)
    pred = _blocky(rng, 12, 12, 5, 3)
    g_ids = [int(v) for v in np.unique(gt) if v > 0]
    p_ids = [int(v) for v in np.unique(pred) if v > 0]
    best = 0.0
    # every injective map gt -> pred-or-nothing (pad with None)
    cand = p_ids + [None] * len(g_ids)
    for perm in itertools.permutations(cand, len(g_ids)):
        tot = sum(_loop_iou(pred, gt, g, p) for g, p in zip(g_ids, perm) if p is not None)
        best = max(best, tot)
    ours = matched_miou([pred], [gt], ignore_void=False)["miou"]
    assert ours == pytest.approx(100 * best / len(g_ids))


def test_consistency_against_loop():
    rng = np.random.default_rng(7)
    gts = [_blocky(rng, 12, 12, 5, 3) for _ in range(3)]
    preds = [_blocky(rng, 12, 12, 4, 2) for _ in range(3)]
    g_all = np.concatenate([g.ravel() for g in gts])
    p_all = np.concatenate([p.ravel() for p in preds])
    shares = []
    for g in sorted(set(g_all.tolist()) - {0}):
        pv = p_all[g_all == g]
        counts = [int((pv == p).sum()) for p in set(pv.tolist()) if p != 0]
        shares.append(max(counts, default=0) / len(pv))
    assert multiview_consistency(preds, gts)["consistency"] == pytest.approx(100 * np.mean(shares))


# --------------------------------------------------------------------------- COCO mAP
def test_map_hand_computed_ap():
    pytest.importorskip("pycocotools")
    gt = np.zeros((10, 10), int)
    gt[0:5, 0:5] = 1
    gt[5:10, 5:10] = 2
    pred = np.zeros((10, 10), int)
    pred[0:5, 0:5] = 3  # perfect match of gt 1
    pred[5:7, 0:10] = 4  # IoU with gt2 = 10 / (25 + 20 - 10) < 0.5: a false positive
    # gt 2 is missed.  Ranked TP then FP: precision 1 up to recall 0.5, then 0.
    # COCO 101-point interpolation: 51 of 101 recall points at precision 1.
    scores = np.where(pred == 3, 0.9, 0.8)
    out = coco_mask_map([pred], [gt], [scores], ignore_void=False)
    for k in ("map", "map50", "map75"):
        assert out[k] == pytest.approx(100 * 51 / 101), k
    # FP ranked first: interpolated precision 0.5 on recall <= 0.5.
    out2 = coco_mask_map([pred], [gt], [np.where(pred == 3, 0.1, 0.8)], ignore_void=False)
    assert out2["map"] == pytest.approx(100 * 0.5 * 51 / 101)


def test_map_void_region_is_ignored_only_when_requested():
    pytest.importorskip("pycocotools")
    gt = np.zeros((10, 10), int)
    gt[0:4, 0:4] = 1
    pred = gt.copy()
    pred[6:10, 6:10] = 2  # entirely on unannotated background
    scores = np.where(pred == 2, 0.99, 0.5)  # the void detection ranks first
    assert coco_mask_map([pred], [gt], [scores], ignore_void=True)["map"] == pytest.approx(100.0)
    assert coco_mask_map([pred], [gt], [scores], ignore_void=False)["map"] < 60.0


def test_map_edge_cases():
    pytest.importorskip("pycocotools")
    z = np.zeros((4, 4), int)
    assert np.isnan(coco_mask_map([z], [z])["map"])
    g = z.copy()
    g[:2] = 1
    assert coco_mask_map([z], [g])["map"] == 0.0


@pytest.mark.parametrize("seed", range(3))
def test_map_matches_torchmetrics(seed):
    pytest.importorskip("pycocotools")
    tm = pytest.importorskip("torchmetrics.detection")
    rng = np.random.default_rng(seed)
    gts = [_blocky(rng, 24, 24, 5, 4) for _ in range(2)]
    preds = [_perturbed_pred(rng, g) % 9 for g in gts]
    for p in preds:  # salt noise: keeps IoUs off exact multiples of 0.05, where
        noise = rng.random(p.shape) < 0.07  # float32 vs float64 thresholds would disagree
        p[noise] = rng.integers(0, 9, size=int(noise.sum()))
    scores = [rng.random(g.shape) for g in gts]
    ours = coco_mask_map(preds, gts, scores, ignore_void=False)

    metric = tm.MeanAveragePrecision(iou_type="segm", backend="pycocotools")
    tm_preds, tm_tgts = [], []
    for p, g, s in zip(preds, gts, scores):
        p_ids = [i for i in np.unique(p) if i > 0]
        g_ids = [i for i in np.unique(g) if i > 0]
        tm_preds.append(
            {
                "masks": torch.from_numpy(np.stack([p == i for i in p_ids])),
                "scores": torch.tensor([float(s[p == i].mean()) for i in p_ids], dtype=torch.float32),
                "labels": torch.zeros(len(p_ids), dtype=torch.long),
            }
        )
        tm_tgts.append(
            {"masks": torch.from_numpy(np.stack([g == i for i in g_ids])), "labels": torch.zeros(len(g_ids), dtype=torch.long)}
        )
    metric.update(tm_preds, tm_tgts)
    res = metric.compute()
    assert ours["map"] == pytest.approx(100 * float(res["map"]), abs=1e-3)
    assert ours["map50"] == pytest.approx(100 * float(res["map_50"]), abs=1e-3)
    assert ours["map75"] == pytest.approx(100 * float(res["map_75"]), abs=1e-3)


def test_evaluate_all_keys():
    out = evaluate_all(PREDS, GTS)
    assert set(out) == {"pq", "sq", "rq", "tp", "fp", "fn", "miou", "consistency", "small_recall", "small_count", "map", "map50", "map75"}
    assert out["pq"] == pytest.approx(100 * 2.75 / 3.5)
    assert "map" not in evaluate_all(PREDS, GTS, with_map=False)


def test_small_object_recall_counts_only_whole_small_objects():
    from ulift_ns.metrics import small_object_recall

    gt = np.zeros((20, 20), dtype=np.int64)
    gt[0:2, 0:1] = 1  # 2 px = 0.5% of 400: small
    gt[5:7, 5:6] = 2  # small
    gt[10:20, 10:20] = 3  # big: not counted
    pred = np.zeros_like(gt)
    pred[0:2, 0:1] = 7  # object 1 found exactly
    pred[5:7, 5:8] = 8  # object 2 merged into a segment 3x its size: IoU 1/3
    pred[10:20, 10:20] = 9
    r = small_object_recall([pred], [gt])
    assert r == {"small_recall": 50.0, "small_count": 2.0}
    assert np.isnan(small_object_recall([pred], [np.where(gt == 3, 3, 0)])["small_recall"])
