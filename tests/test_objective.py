"""The per-view objective: which losses run, their weights, and the logged statistics."""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from ulift_ns.lift.objective import LiftLossConfig, lift_losses


def _view(masks: int = 4, h: int = 12, w: int = 16, d: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, masks + 1, (h, w), generator=gen)
    features = torch.randn(h, w, d, generator=gen, requires_grad=True)
    return features, labels


def test_contrastive_only_without_codebook():
    features, labels = _view()
    losses, stats = lift_losses(features, labels, None, LiftLossConfig(use_codebook=False))
    assert set(losses) == {"contrastive_loss"}
    assert stats["lift_sampled_pixels"] == float((labels > 0).sum())


def test_official_class_weight_and_our_default():
    features, labels = _view()
    codebook = torch.randn(32, 8, requires_grad=True)
    config = LiftLossConfig(use_filter=False, concentration_weight=0.0, num_samples=10**6)
    ours, _ = lift_losses(features, labels, codebook, config, generator=torch.Generator().manual_seed(1))
    official, _ = lift_losses(
        features, labels, codebook, replace(config, class_weight=None), generator=torch.Generator().manual_seed(1)
    )
    assert config.class_weight == 1.0
    torch.testing.assert_close(official["class_loss"], ours["class_loss"] * 1e-4 / math.log(32))


def test_codebook_losses_train_only_the_codebook_by_default():
    features, labels = _view()
    codebook = torch.randn(32, 8, requires_grad=True)
    losses, _ = lift_losses(features, labels, codebook, LiftLossConfig(contrastive_weight=0.0, norm_weight=0.0))
    (losses["class_loss"] + losses["concentration_loss"]).backward()
    assert codebook.grad.abs().sum() > 0
    assert features.grad is None or features.grad.abs().sum() == 0


def test_surplus_masks_are_counted_not_mapped():
    features, labels = _view(masks=9)
    codebook = torch.randn(4, 8, requires_grad=True)
    _, stats = lift_losses(features, labels, codebook, LiftLossConfig(use_filter=False))
    assert stats["lift_masks"] == float(len(labels[labels > 0].unique()))
    assert stats["lift_unmatched_masks"] == stats["lift_masks"] - 4


def test_filtering_removes_pixels_from_the_codebook_losses():
    features, labels = _view()
    codebook = torch.randn(32, 8, requires_grad=True)
    config = LiftLossConfig(concentration_weight=0.0, num_samples=10**6, filter_threshold=0.99)
    filtered, stats = lift_losses(features, labels, codebook, config)
    unfiltered, _ = lift_losses(features, labels, codebook, replace(config, use_filter=False))
    assert 0.0 < stats["lift_filtered_fraction"] <= 1.0
    assert not torch.allclose(filtered["class_loss"], unfiltered["class_loss"])


def test_mask_size_limit_fixed_by_default_and_a_share_of_the_sampled_pixels_with_a_floor():
    from ulift_ns.lift.objective import LiftLossConfig, min_mask_pixels_for

    c = LiftLossConfig()  # 20 of 32768 sampled pixels
    assert min_mask_pixels_for(32768, c) == 20 and min_mask_pixels_for(96 * 72, c) == 20  # default: the official fixed 20
    c = LiftLossConfig(min_mask_pixels_floor=3)
    assert min_mask_pixels_for(32768, c) == 20 and min_mask_pixels_for(10**6, c) == 20
    assert min_mask_pixels_for(96 * 72, c) == 4  # a 96x72 view: 20 * 6912 / 32768
    assert min_mask_pixels_for(100, c) == 3  # the floor
    assert min_mask_pixels_for(100, LiftLossConfig(min_mask_pixels=2)) == 2  # never above the user's limit
