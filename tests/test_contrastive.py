"""Tests for ulift_ns.lift.contrastive against slow per-mask reference loops."""

from __future__ import annotations

import math

import pytest
import torch

from tests.lift_reference import loop_prototypes_and_temperatures
from ulift_ns.lift.contrastive import (
    contrastive_loss,
    mask_prototypes,
    mask_temperatures,
    normalise_detached,
    sample_pixels,
)


# --------------------------------------------------------------------------- reference
def reference_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    min_pixels: int = 20,
    temp_scale: float = 10.0,
    temp_min: float = 0.5,
    temp_max: float = 1.0,
    norm_weight: float = 1.0,
    detach_norm: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Straightforward Python-loop transcription of METHOD.md loss 1."""
    norm = features.norm(dim=-1, keepdim=True)
    f_hat = features / (norm.detach() if detach_norm else norm)
    ids = [u for u in sorted(set(labels.tolist())) if u > 0 and int((labels == u).sum()) > min_pixels]
    norm_reg = ((features.norm(dim=-1) - 1) ** 2).mean()
    if not ids:
        return features.sum() * 0 + norm_weight * norm_reg, torch.tensor(0.0)
    P, T = loop_prototypes_and_temperatures(f_hat, labels, ids, temp_scale, temp_min, temp_max)
    total = 0.0
    for i, u in enumerate(ids):
        fm = f_hat[labels == u]
        logits = fm @ P.T / T
        total = total + (-torch.log_softmax(logits, dim=1)[:, i]).sum()
    infonce = total / len(ids)
    return infonce + norm_weight * norm_reg, infonce.detach()


def _random_view(n: int = 600, d: int = 8, n_masks: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, d, generator=g, dtype=torch.float64) * 1.3
    labels = torch.randint(1, n_masks + 1, (n,), generator=g) * 7  # arbitrary, non-contiguous ids
    return feats, labels


# --------------------------------------------------------------------------- sample_pixels
def test_sample_pixels_only_labelled_unique_and_flat():
    labels = torch.zeros(10, 12, dtype=torch.long)
    labels[2:6, 3:9] = 4
    labels[7, :] = 9
    gen = torch.Generator().manual_seed(1)
    idx = sample_pixels(labels, 20, generator=gen)
    assert idx.dtype == torch.long and idx.numel() == 20
    assert torch.unique(idx).numel() == 20  # without replacement
    assert bool((labels.reshape(-1)[idx] > 0).all())


def test_sample_pixels_fewer_than_requested_returns_all_labelled():
    labels = torch.tensor([0, 3, 0, 5, 5, 0])
    idx = sample_pixels(labels, 100)
    assert sorted(idx.tolist()) == [1, 3, 4]


def test_sample_pixels_reproducible_and_empty():
    labels = torch.randint(0, 3, (50, 50))
    a = sample_pixels(labels, 64, torch.Generator().manual_seed(3))
    b = sample_pixels(labels, 64, torch.Generator().manual_seed(3))
    c = sample_pixels(labels, 64, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert sample_pixels(torch.zeros(4, 4, dtype=torch.long), 10).numel() == 0


# --------------------------------------------------------------------------- prototypes
def test_mask_prototypes_matches_loop():
    feats, _ = _random_view(n=300, d=5)
    labels = torch.randint(0, 7, (300,))
    labels[labels == 4] = 3  # make mask 4 empty
    protos, counts = mask_prototypes(feats, labels, 7)
    for m in range(7):
        sel = labels == m
        assert counts[m].item() == int(sel.sum())
        if sel.any():
            torch.testing.assert_close(protos[m], feats[sel].mean(0))
        else:
            assert torch.all(protos[m] == 0)


def test_mask_temperatures_clip_and_detached():
    f = torch.randn(200, 4, requires_grad=True)
    f_hat = normalise_detached(f)
    labels = torch.arange(200) % 2
    protos, counts = mask_prototypes(f_hat, labels, 2)
    phi = mask_temperatures(f_hat, labels, protos, counts, 10.0, 0.5, 1.0)
    assert not phi.requires_grad
    for m in range(2):
        fm = f_hat[labels == m].detach()
        n = fm.shape[0]
        raw = (fm - fm.mean(0)).norm(dim=1).sum() / (n * math.log(n + 10))
        assert phi[m].item() == pytest.approx(min(max(10 * raw.item(), 0.5), 1.0), rel=1e-5)
    # A perfectly tight mask has raw spread 0 -> clipped to temp_min.
    tight = torch.ones(30, 4) / 2.0
    p, c = mask_prototypes(tight, torch.zeros(30, dtype=torch.long), 1)
    assert mask_temperatures(tight, torch.zeros(30, dtype=torch.long), p, c, 10.0, 0.5, 1.0).item() == 0.5


# --------------------------------------------------------------------------- loss value / grads
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_contrastive_loss_matches_reference_value_and_grad(seed):
    feats, labels = _random_view(seed=seed)
    # Add a few too-small masks and unlabelled pixels that must be ignored.
    labels[:15] = 1000
    labels[15:35] = 2000  # exactly 20 pixels: dropped (needs > 20)
    labels[35:50] = 0
    f1 = feats.clone().requires_grad_(True)
    f2 = feats.clone().requires_grad_(True)
    loss, stats = contrastive_loss(f1, labels)
    ref, ref_infonce = reference_loss(f2, labels)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(stats["infonce"], ref_infonce)
    assert stats["num_dropped_masks"].item() == 2
    loss.backward()
    ref.backward()
    torch.testing.assert_close(f1.grad, f2.grad)
    assert f1.grad.abs().sum() > 0


def _clustered_view(seed: int = 0, noise: float = 0.12):
    """Moderately tight clusters, so that temperatures fall strictly inside (0.5, 1)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(5, 8, generator=g, dtype=torch.float64)
    centers = centers / centers.norm(dim=1, keepdim=True)
    labels = torch.arange(5).repeat_interleave(100)
    feats = centers[labels] + noise * torch.randn(500, 8, generator=g, dtype=torch.float64)
    return feats, labels + 1


def test_clustered_view_matches_reference_with_unclipped_temperatures():
    feats, labels = _clustered_view()
    f1 = feats.clone().requires_grad_(True)
    f2 = feats.clone().requires_grad_(True)
    loss, stats = contrastive_loss(f1, labels)
    assert 0.5 < stats["mean_temperature"].item() < 1.0  # not clipped: temperature grads would matter
    ref, _ = reference_loss(f2, labels)
    torch.testing.assert_close(loss, ref)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(f1.grad, f2.grad)


def test_contrastive_grad_uses_detached_norm():
    """The gradient must be that of the detached-norm formulation, not the full one."""
    feats, labels = _random_view(seed=5)
    f1 = feats.clone().requires_grad_(True)
    f2 = feats.clone().requires_grad_(True)
    contrastive_loss(f1, labels, norm_weight=0.0)[0].backward()
    reference_loss(f2, labels, norm_weight=0.0, detach_norm=False)[0].backward()
    assert not torch.allclose(f1.grad, f2.grad, atol=1e-6)


def test_min_pixels_threshold_is_strict():
    feats = torch.randn(42, 4, dtype=torch.float64)
    labels = torch.tensor([1] * 21 + [2] * 21)
    assert contrastive_loss(feats, labels, min_pixels=20)[1]["num_masks"].item() == 2
    assert contrastive_loss(feats, labels, min_pixels=21)[1]["num_masks"].item() == 0


def test_small_masks_and_unlabelled_pixels_do_not_affect_infonce():
    feats, labels = _random_view(seed=3)
    base = contrastive_loss(feats, labels)[1]["infonce"]
    extra_f = torch.randn(30, feats.shape[1], dtype=feats.dtype)
    extra_l = torch.tensor([0] * 12 + [555] * 18)  # unlabelled + an 18-pixel mask
    got = contrastive_loss(torch.cat([feats, extra_f]), torch.cat([labels, extra_l]))[1]["infonce"]
    torch.testing.assert_close(got, base)


def test_invariant_to_label_renaming_and_pixel_order():
    feats, labels = _random_view(seed=4)
    remap = {u: 10_000 - 3 * u for u in set(labels.tolist())}
    relabelled = torch.tensor([remap[u] for u in labels.tolist()])
    perm = torch.randperm(feats.shape[0], generator=torch.Generator().manual_seed(0))
    a = contrastive_loss(feats, labels)[0]
    b = contrastive_loss(feats[perm], relabelled[perm])[0]
    torch.testing.assert_close(a, b)


def test_single_valid_mask_gives_zero_infonce_with_grad():
    f = torch.randn(50, 6, requires_grad=True)
    labels = torch.full((50,), 3)
    loss, stats = contrastive_loss(f, labels, norm_weight=0.0)
    assert stats["num_masks"].item() == 1
    assert loss.item() == 0.0
    loss.backward()
    assert f.grad is not None and torch.all(f.grad == 0)


def test_no_valid_mask_keeps_norm_term_and_backward_works():
    f = torch.randn(10, 6, requires_grad=True)
    labels = torch.tensor([1] * 5 + [2] * 5)
    loss, stats = contrastive_loss(f, labels)
    assert stats["num_masks"].item() == 0 and stats["infonce"].item() == 0.0
    expected = ((f.detach().norm(dim=-1) - 1) ** 2).mean()
    torch.testing.assert_close(loss.detach(), expected)
    loss.backward()
    assert f.grad.abs().sum() > 0


def test_norm_regulariser_weight_and_unit_features():
    feats, labels = _random_view(seed=6)
    l0, s0 = contrastive_loss(feats, labels, norm_weight=0.0)
    l2, s2 = contrastive_loss(feats, labels, norm_weight=2.0)
    torch.testing.assert_close(l2 - l0, 2.0 * s2["norm_reg"])
    unit = feats / feats.norm(dim=-1, keepdim=True)
    assert contrastive_loss(unit, labels)[1]["norm_reg"].item() == pytest.approx(0.0, abs=1e-12)


def test_separated_clusters_have_lower_loss_than_random():
    torch.manual_seed(0)
    centers = torch.eye(4, 8) * 3
    labels = torch.arange(4).repeat_interleave(100) + 1
    clustered = centers[labels - 1] + 0.05 * torch.randn(400, 8)
    random = torch.randn(400, 8)
    lc = contrastive_loss(clustered, labels)[1]["infonce"]
    lr = contrastive_loss(random, labels)[1]["infonce"]
    assert lc < 0.5 * lr


def test_descent_reduces_loss():
    feats, labels = _random_view(n=400, seed=7)
    f = feats.float().clone().requires_grad_(True)
    opt = torch.optim.Adam([f], lr=0.05)
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss, _ = contrastive_loss(f, labels)
        first = loss.item() if first is None else first
        loss.backward()
        opt.step()
    assert contrastive_loss(f, labels)[0].item() < 0.75 * first


def test_shape_validation():
    with pytest.raises(ValueError):
        contrastive_loss(torch.randn(5, 3), torch.ones(6, dtype=torch.long))
    with pytest.raises(ValueError):
        contrastive_loss(torch.randn(5), torch.ones(5, dtype=torch.long))
