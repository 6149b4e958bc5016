"""Tests for ulift_ns.metrics3d: exact 3D PQ, Hungarian accuracy and the demo's per-Gaussian ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from ulift_ns.metrics3d import (
    hungarian_label_accuracy,
    hungarian_match,
    mask_iou,
    nearest_primitive,
    panoptic_quality_3d,
)


def test_pq3d_by_hand():
    gt = np.array([1, 1, 1, 1, 2, 2, 3, 3])
    pred = np.array([5, 5, 5, 0, 7, 8, 9, 9])
    w = np.ones(8)
    # 5 vs 1: IoU 3/4 (match); 7, 8 vs 2: IoU 1/2 each (not > 0.5); 9 vs 3: IoU 1 (match)
    got = panoptic_quality_3d(pred, gt, w)
    assert (got["tp"], got["fp"], got["fn"]) == (2, 2, 1)
    assert got["pq"] == pytest.approx(100 * (0.75 + 1.0) / (2 + 1 + 0.5))
    assert got["sq"] == pytest.approx(100 * 1.75 / 2)
    # weights: making the unassigned Gaussian heavy drops object 1's IoU below 0.5
    heavy = w.copy()
    heavy[3] = 4.0
    assert panoptic_quality_3d(pred, gt, heavy)["tp"] == 1


def test_perfect_prediction_is_100_under_any_relabelling():
    gt = np.repeat([1, 2, 3], 5)
    assert panoptic_quality_3d(gt * 10 + 3, gt, np.ones(15))["pq"] == pytest.approx(100.0)
    assert hungarian_label_accuracy(gt * 10 + 3, gt, np.ones(15)) == pytest.approx(100.0)


def test_hungarian_accuracy_is_one_to_one_and_weighted():
    gt = np.array([1, 1, 2, 2, 2, 3])
    pred = np.array([4, 4, 4, 4, 0, 4])  # one label for everything: only its best object counts
    w = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 5.0])
    assert hungarian_match(pred, gt, w) == {4: 3}
    assert hungarian_label_accuracy(pred, gt, w) == pytest.approx(100 * 5 / 10)
    assert hungarian_label_accuracy(np.zeros(6, int), gt, w) == 0.0  # unassigned never matches


def test_mask_iou():
    a = np.array([True, True, False, False])
    assert mask_iou(a, np.array([True, False, True, False])) == pytest.approx(1 / 3)
    assert mask_iou(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


def test_nearest_primitive_labels_surfaces_ground_and_sky():
    objects = [
        {"id": 1, "shape": "sphere", "center": [0.0, 0.0, 1.0], "radius": 0.5},
        {"id": 2, "shape": "box", "center": [2.0, 0.0, 0.5], "size": [1.0, 2.0, 1.0], "yaw": np.pi / 2},
        {"id": 5, "shape": "cylinder", "center": [-2.0, 0.0, 0.5], "radius": 0.3, "height": 1.0},
    ]
    points = np.array(
        [
            [0.0, 0.0, 1.5],  # sphere top
            [0.0, 0.0, 1.0],  # sphere centre: inside, 0.5 from its surface
            [3.0, 0.0, 0.5],  # rotated box: its x half-extent is 1.0 after the 90 degree yaw
            [-2.0, 0.3, 0.5],  # cylinder side
            [-2.0, 0.0, 1.0],  # cylinder cap
            [1.0, 2.5, 0.01],  # ground
            [0.0, 0.0, 9.0],  # sky
        ]
    )
    labels = nearest_primitive(points, objects, ground_radius=4.0, sky_distance=0.5)
    assert labels.tolist() == [1, 1, 2, 5, 5, 6, 7]
