"""Tests for ulift_ns.lift.filtering (noisy-label confidence)."""

from __future__ import annotations

import pytest
import torch

from tests.lift_reference import loop_prototypes_and_temperatures
from ulift_ns.lift.filtering import confident_pixels, label_confidence


def reference_confidence(features, labels, temp_scale=0.1, temp_min=0.1, temp_max=1.0):
    """Per-mask Python loop transcription of METHOD.md item 6."""
    f_hat = features / features.norm(dim=-1, keepdim=True)
    ids = sorted(u for u in set(labels.tolist()) if u > 0)
    P, T = loop_prototypes_and_temperatures(f_hat, labels, ids, temp_scale, temp_min, temp_max)
    conf = torch.zeros(features.shape[0], dtype=features.dtype)
    for p in range(features.shape[0]):
        u = int(labels[p])
        if u == 0:
            continue
        probs = torch.softmax(f_hat[p] @ P.T / T, dim=0)
        conf[p] = probs[ids.index(u)]
    return conf


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference_loop(seed):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(300, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 5, (300,), generator=g) * 11
    labels[:3] = 999  # tiny mask: still used (no minimum count here)
    got = label_confidence(feats, labels)
    torch.testing.assert_close(got, reference_confidence(feats, labels))


def test_custom_temperature_parameters_are_used():
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(200, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(1, 4, (200,), generator=g)
    got = label_confidence(feats, labels, temp_scale=10.0, temp_min=0.5, temp_max=1.0)
    ref = reference_confidence(feats, labels, 10.0, 0.5, 1.0)
    torch.testing.assert_close(got, ref)
    assert not torch.allclose(got, label_confidence(feats, labels))


def test_unlabelled_pixels_zero_and_single_mask_one():
    feats = torch.randn(20, 3)
    labels = torch.tensor([0] * 5 + [4] * 15)
    conf = label_confidence(feats, labels)
    assert torch.all(conf[:5] == 0)
    torch.testing.assert_close(conf[5:], torch.ones(15))
    assert torch.all(label_confidence(feats, torch.zeros(20, dtype=torch.long)) == 0)


def test_mislabelled_pixels_are_filtered():
    torch.manual_seed(0)
    dirs = torch.eye(3, 8)
    true = torch.arange(3).repeat_interleave(60)
    feats = dirs[true] + 0.05 * torch.randn(180, 8)
    labels = true + 1
    flipped = torch.tensor([0, 1, 2, 60, 61, 120])  # give these pixels a wrong mask label
    labels[flipped] = torch.tensor([2, 3, 2, 1, 3, 1])
    conf = label_confidence(feats, labels)
    keep = confident_pixels(conf, 0.2)
    assert not keep[flipped].any()
    clean = torch.ones(180, dtype=torch.bool)
    clean[flipped] = False
    assert bool(keep[clean].all())
    assert conf[clean].min() > 0.9 and conf[flipped].max() < 0.1


def test_chunking_and_no_grad():
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(257, 5, generator=g, requires_grad=True)
    labels = torch.randint(0, 6, (257,), generator=g)
    a = label_confidence(feats, labels, chunk_size=7)
    b = label_confidence(feats, labels, chunk_size=100_000)
    torch.testing.assert_close(a, b)
    assert not a.requires_grad
    # Confidences of labelled pixels are probabilities.
    assert bool(((a >= 0) & (a <= 1)).all())


def test_confident_pixels_strict_threshold():
    conf = torch.tensor([0.0, 0.2, 0.2001, 0.9])
    assert confident_pixels(conf).tolist() == [False, False, True, True]
    assert confident_pixels(conf, 0.5).tolist() == [False, False, False, True]


def test_accepts_2d_label_map_and_rejects_shape_mismatch():
    feats = torch.randn(12, 3, dtype=torch.float64)
    lab2d = torch.randint(0, 3, (3, 4))
    torch.testing.assert_close(label_confidence(feats, lab2d), label_confidence(feats, lab2d.reshape(-1)))
    with pytest.raises(ValueError):
        label_confidence(torch.randn(10, 3), torch.ones(11, dtype=torch.long))
