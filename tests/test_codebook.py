"""Tests for ulift_ns.lift.codebook (Hungarian mapping and codebook losses)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from ulift_ns.lift.codebook import (
    AssignmentResult,
    area_aware_assignment,
    classification_loss,
    codebook_logits,
    concentration_loss,
    instance_ids,
)


# --------------------------------------------------------------------------- helpers
def loop_cost(probs: torch.Tensor, labels: torch.Tensor, area_normalised: bool) -> tuple[list[int], torch.Tensor]:
    """Per-mask cost matrix built with an explicit Python loop (reference)."""
    ids = sorted(u for u in set(labels.tolist()) if u > 0)
    rows = []
    for u in ids:
        s = probs[labels == u].sum(0)
        if area_normalised:
            s = s / int((labels == u).sum())
        rows.append(-s)
    return ids, torch.stack(rows).double()


def brute_force_min(cost: torch.Tensor) -> float:
    """Minimum total cost of an injective mask->slot map when S <= L."""
    s, l = cost.shape
    best = float("inf")
    for perm in itertools.permutations(range(l), s):
        best = min(best, float(sum(cost[i, perm[i]] for i in range(s))))
    return best


def _view(n=400, L=5, n_masks=4, seed=0, with_void=True):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(n, L, generator=g, dtype=torch.float64) * 2, dim=1)
    labels = torch.randint(0 if with_void else 1, n_masks + 1, (n,), generator=g) * 3
    return probs, labels


# --------------------------------------------------------------------------- logits / ids
def test_codebook_logits_is_matmul():
    f = torch.randn(7, 4)
    C = torch.randn(3, 4)
    out = codebook_logits(f, C)
    assert out.shape == (7, 3)
    for p in range(7):
        for k in range(3):
            assert out[p, k].item() == pytest.approx(float((f[p] * C[k]).sum()), abs=1e-5)


def test_cosine_logits_scale_a_cosine_and_ignore_norms():
    f = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
    C = torch.tensor([[10.0, 0.0], [0.0, 0.5], [-1.0, -1.0]])
    out = codebook_logits(f, C, scale=10.0, cosine=True)
    expected = 10.0 * torch.tensor([[0.6, 0.8, -1.4 / 2**0.5], [0.0, -1.0, 2**0.5 / 2]])
    torch.testing.assert_close(out, expected)
    # Row and feature lengths do not matter, only directions: rescaling changes nothing.
    torch.testing.assert_close(codebook_logits(7 * f, C * torch.tensor([[0.1], [9.0], [2.0]]), 10.0, True), expected)
    # The raw (official) logits do depend on the row length, so row 0 wins for pixel 0 there.
    assert codebook_logits(f, C).argmax(1).tolist() == [0, 2]
    assert out.argmax(1).tolist() == [1, 2]


def test_concentration_with_unit_rows_ignores_row_length():
    f = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    C = torch.tensor([[5.0, 0.0], [0.0, 0.2]])
    targets = torch.tensor([0, 1])
    assert concentration_loss(f, C, targets, unit_rows=True).item() == pytest.approx(0.0, abs=1e-6)
    assert concentration_loss(f, C, targets).item() == pytest.approx((4.0 + 0.8) / 2)


def test_instance_ids_argmax_and_prob_any_leading_shape():
    f = torch.randn(3, 5, 4)
    C = torch.randn(6, 4)
    ids, prob = instance_ids(f, C)
    assert ids.shape == (3, 5) and prob.shape == (3, 5) and ids.dtype == torch.long
    logits = torch.einsum("hwd,kd->hwk", f, C)
    assert torch.equal(ids, logits.argmax(-1))
    torch.testing.assert_close(prob, torch.softmax(logits, -1).max(-1).values)
    assert bool((prob >= 1 / 6 - 1e-6).all() and (prob <= 1).all())


# --------------------------------------------------------------------------- assignment
@pytest.mark.parametrize("area_normalised", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_assignment_is_optimal_against_brute_force(area_normalised, seed):
    probs, labels = _view(seed=seed)
    res = area_aware_assignment(probs, labels, area_normalised=area_normalised)
    ids, cost = loop_cost(probs, labels, area_normalised)
    assert res.mask_ids.tolist() == ids
    assert res.num_unmatched == 0 and bool((res.codebook_index >= 0).all())
    assert len(set(res.codebook_index.tolist())) == len(ids)  # distinct slots
    got = float(sum(cost[i, k] for i, k in enumerate(res.codebook_index.tolist())))
    assert got == pytest.approx(brute_force_min(cost), abs=1e-9)


def test_pixel_targets_follow_mask_assignment():
    probs, labels = _view(seed=4)
    res = area_aware_assignment(probs, labels)
    assert res.pixel_targets.shape == labels.shape
    assert bool((res.pixel_targets[labels == 0] == -1).all())
    for m, k in zip(res.mask_ids.tolist(), res.codebook_index.tolist()):
        assert bool((res.pixel_targets[labels == m] == k).all())


def test_surplus_masks_get_minus_one_never_zero():
    # 6 masks, 3 slots, and every pixel strongly prefers slot 0: the official
    # code would give all surplus masks slot 0.
    L, n_masks = 3, 6
    labels = torch.arange(1, n_masks + 1).repeat_interleave(torch.tensor([50, 40, 30, 20, 10, 5]))
    logits = torch.tensor([5.0, 0.0, 0.0]).expand(labels.numel(), L)
    probs = torch.softmax(logits + 0.01 * torch.randn(labels.numel(), L), dim=1)
    res = area_aware_assignment(probs, labels)
    assert isinstance(res, AssignmentResult)
    assert res.num_unmatched == 3
    idx = res.codebook_index
    assert int((idx == -1).sum()) == 3
    assert int((idx == 0).sum()) == 1  # slot 0 used exactly once
    assert sorted(idx[idx >= 0].tolist()) == [0, 1, 2]
    unmatched = res.mask_ids[idx == -1]
    for m in unmatched.tolist():
        assert bool((res.pixel_targets[labels == m] == -1).all())
    # Area-aware: the biggest mask wins slot 0, the three smallest are left out.
    assert res.codebook_index[0].item() == 0
    assert sorted(unmatched.tolist()) == [4, 5, 6]


def test_area_aware_vs_area_normalised_differ_on_big_vs_small():
    # Big mask (100 px) prefers slot 0 mildly (0.6 vs 0.4); small mask (5 px)
    # prefers slot 0 strongly (0.95 vs 0.05).
    #   area-aware costs:  big->0 -60, big->1 -40, small->0 -4.75, small->1 -0.25
    #     {big:0, small:1} = -60.25  <  {big:1, small:0} = -44.75 -> big takes 0
    #   area-normalised:   big->0 -0.6, big->1 -0.4, small->0 -0.95, small->1 -0.05
    #     {big:0, small:1} = -0.65   >  {big:1, small:0} = -1.35  -> small takes 0
    probs = torch.cat([torch.tensor([[0.6, 0.4]]).repeat(100, 1), torch.tensor([[0.95, 0.05]]).repeat(5, 1)])
    labels = torch.tensor([1] * 100 + [2] * 5)
    aware = area_aware_assignment(probs, labels, area_normalised=False)
    normed = area_aware_assignment(probs, labels, area_normalised=True)
    assert aware.codebook_index.tolist() == [0, 1]
    assert normed.codebook_index.tolist() == [1, 0]


def test_assignment_empty_view():
    res = area_aware_assignment(torch.rand(10, 4), torch.zeros(10, dtype=torch.long))
    assert res.mask_ids.numel() == 0 and res.num_unmatched == 0
    assert bool((res.pixel_targets == -1).all())


def test_assignment_shape_check():
    with pytest.raises(ValueError):
        area_aware_assignment(torch.rand(10, 4), torch.ones(9, dtype=torch.long))


# --------------------------------------------------------------------------- classification
def test_classification_loss_matches_ce_on_kept_pixels():
    torch.manual_seed(0)
    logits = torch.randn(50, 6)
    targets = torch.randint(-1, 6, (50,))
    weight = torch.rand(50) > 0.3
    keep = (targets >= 0) & weight
    expected = F.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(classification_loss(logits, targets, weight), expected)
    expected_all = F.cross_entropy(logits[targets >= 0], targets[targets >= 0])
    torch.testing.assert_close(classification_loss(logits, targets, None), expected_all)


def test_classification_loss_zero_when_nothing_kept_and_backward_ok():
    logits = torch.randn(8, 3, requires_grad=True)
    loss = classification_loss(logits, torch.full((8,), -1), None)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(logits.grad == 0)
    loss2 = classification_loss(logits, torch.zeros(8, dtype=torch.long), torch.zeros(8, dtype=torch.bool))
    assert loss2.item() == 0.0


def test_classification_skip_rule():
    targets = torch.tensor([0, 1, 2, -1])
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [9.0, 0, 0]])
    # -1 pixel is ignored, so every kept pixel is already correct.
    assert classification_loss(logits, targets, skip_if_all_correct=True).item() == 0.0
    assert classification_loss(logits, targets, skip_if_all_correct=False).item() > 0.0
    wrong = logits.clone()
    wrong[2] = torch.tensor([5.0, 0, 0])
    expected = F.cross_entropy(wrong[:3], targets[:3])
    torch.testing.assert_close(classification_loss(wrong, targets, skip_if_all_correct=True), expected)
    # A wrong pixel that is masked out by the filter does not prevent skipping.
    w = torch.tensor([True, True, False, True])
    assert classification_loss(wrong, targets, w, skip_if_all_correct=True).item() == 0.0


def test_classification_with_detached_features_trains_only_codebook():
    f = torch.randn(30, 4, requires_grad=True)
    C = torch.randn(5, 4, requires_grad=True)
    targets = torch.randint(0, 5, (30,))
    loss = classification_loss(codebook_logits(f.detach(), C), targets)
    loss.backward()
    assert f.grad is None
    assert C.grad is not None and C.grad.abs().sum() > 0


# --------------------------------------------------------------------------- concentration
def test_concentration_matches_loop_reference():
    torch.manual_seed(1)
    f = torch.randn(40, 4, dtype=torch.float64) * 3
    C = torch.randn(5, 4, dtype=torch.float64)
    targets = torch.randint(-1, 5, (40,))
    keep = torch.rand(40) > 0.25
    dists = []
    for p in range(40):
        if targets[p] >= 0 and keep[p]:
            fh = f[p] / f[p].norm()
            dists.append(float((fh - C[targets[p]]).norm()))  # unsquared L2
    expected = sum(dists) / len(dists)
    assert concentration_loss(f, C, targets, keep).item() == pytest.approx(expected, rel=1e-10)


def test_concentration_grad_only_to_target_rows_of_codebook():
    f = torch.randn(20, 4, requires_grad=True)
    C = torch.randn(6, 4, requires_grad=True)
    targets = torch.tensor([1, 3] * 10)
    loss = concentration_loss(f.detach(), C, targets)
    loss.backward()
    assert f.grad is None
    row_has_grad = C.grad.abs().sum(1) > 0
    assert row_has_grad.tolist() == [False, True, False, True, False, False]


def test_concentration_zero_cases_and_finite_grad_at_zero_distance():
    C = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    f = torch.tensor([[2.0, 0.0], [0.0, 5.0]])  # f_hat equals the codebook rows exactly
    loss = concentration_loss(f, C, torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    assert torch.isfinite(C.grad).all()
    none = concentration_loss(f, C, torch.tensor([-1, -1]))
    assert none.item() == 0.0 and none.requires_grad


def test_concentration_descent_pulls_rows_to_object_directions():
    torch.manual_seed(0)
    dirs = F.normalize(torch.randn(3, 8), dim=1)
    targets = torch.arange(3).repeat_interleave(50)
    f = dirs[targets] * 2 + 0.01 * torch.randn(150, 8)
    C = torch.nn.Parameter(torch.empty(3, 8).uniform_(-0.25, 0.25))
    opt = torch.optim.Adam([C], lr=5e-2)
    for _ in range(200):
        opt.zero_grad()
        concentration_loss(f, C, targets).backward()
        opt.step()
    cos = F.cosine_similarity(C.detach(), dirs, dim=1)
    assert bool((cos > 0.99).all())


@pytest.mark.parametrize("cosine", [False, True])
def test_instance_ids_in_chunks_equal_the_full_softmax(cosine: bool):
    gen = torch.Generator().manual_seed(3)
    f = torch.randn(7, 11, 5, generator=gen)
    C = torch.randn(256, 5, generator=gen)
    probs = torch.softmax(codebook_logits(f, C, 10.0, cosine), dim=-1)
    full_prob, full_ids = probs.max(dim=-1)
    for chunk in (1, 10, 77, 10_000):  # 77 = one chunk plus a ragged one
        ids, prob = instance_ids(f, C, 10.0, cosine, chunk_size=chunk)
        assert ids.shape == (7, 11) and torch.equal(ids, full_ids)
        # float32 logits reach ~30 here, where one rounding step is ~2e-6: both forms carry that error.
        torch.testing.assert_close(prob, full_prob, rtol=1e-5, atol=1e-6)
    ids, prob = instance_ids(f[:0], C)
    assert ids.shape == (0, 11) and prob.shape == (0, 11)
