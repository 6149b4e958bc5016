"""Object codebook, area-aware Hungarian ID mapping and codebook losses.

Unified-Lift keeps a learnable codebook ``C in R^{L x d}``: one row per 3D
object slot.  A pixel's probability of belonging to slot ``k`` is
``softmax_k(C_k . f_p)``.  Because 2D mask ids are arbitrary per view, every
view's masks are first mapped to distinct codebook slots by a Hungarian
assignment ("virtual labels"); the codebook is then trained with a
cross-entropy against those labels (loss 4) and a concentration term pulling
each slot towards its objects' feature direction (loss 5).

Everything is pure torch / scipy and vectorised: per-mask sums use
``index_add_`` instead of Python loops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

__all__ = [
    "AssignmentResult",
    "codebook_logits",
    "area_aware_assignment",
    "classification_loss",
    "concentration_loss",
    "instance_ids",
]

_EPS = 1e-8


def codebook_logits(features: Tensor, codebook: Tensor, scale: float = 1.0, cosine: bool = False) -> Tensor:
    """Logits ``scale * f_p . C_k`` of every pixel against every codebook row.

    Following the official code (``scale=1``, ``cosine=False``), ``f`` is *not*
    normalised here (the caller detaches it so that the codebook losses train
    only ``C``).  ``cosine=True`` normalises both ``f`` and the rows, so a logit
    is ``scale`` times a cosine: the concentration loss then sets only the
    rows' directions and ``scale`` alone sets how peaked ``P`` is.

    Args:
        features: ``[P, d]`` (or ``[..., d]``).
        codebook: ``[L, d]``.
        scale: multiplies every logit (an inverse temperature).
        cosine: use unit features and unit rows.

    Returns:
        ``[P, L]`` (or ``[..., L]``).
    """
    if cosine:
        features = F.normalize(features, dim=-1, eps=_EPS)
        codebook = F.normalize(codebook, dim=-1, eps=_EPS)
    return scale * (features @ codebook.t())


@dataclass
class AssignmentResult:
    """Outcome of mapping one view's 2D masks to codebook slots.

    Attributes:
        mask_ids: ``LongTensor[S]`` the view's distinct positive mask ids
            (sorted ascending).
        codebook_index: ``LongTensor[S]`` slot assigned to each mask, ``-1``
            for surplus masks the solver left unmatched (only when ``S > L``).
        pixel_targets: ``LongTensor[P]`` per-pixel virtual label, ``-1`` where
            the pixel is unlabelled (label 0) or its mask is unmatched.
        num_unmatched: number of masks with ``codebook_index == -1``.
    """

    mask_ids: Tensor
    codebook_index: Tensor
    pixel_targets: Tensor
    num_unmatched: int

    @property
    def num_masks(self) -> int:
        """Number of distinct positive masks in the view."""
        return int(self.mask_ids.numel())


@torch.no_grad()
def area_aware_assignment(
    probs: Tensor,
    labels: Tensor,
    area_normalised: bool = False,
) -> AssignmentResult:
    """Hungarian mapping of a view's masks to distinct codebook slots.

    ``cost[s, k] = -sum_{p in s} P_k(p)``: a mask is drawn to the slot its
    pixels already vote for, and because the sum is *not* divided by the mask
    area (Unified-Lift's "area-aware" change), large masks dominate the
    assignment and small masks settle for what is left.  ``area_normalised=True``
    divides each row by the mask area, i.e. Panoptic Lifting's mean-probability
    cost, where every mask counts equally.

    When the view has more masks than slots (``S > L``), the solver matches
    exactly ``L`` of them; the rest are marked ``-1`` and their pixels are
    ignored by the losses.  (The official code silently gives them slot 0,
    corrupting that slot; we never do.)  With the area-aware cost the surplus
    tends to be the smallest / least confident masks, since they contribute
    the least to the objective.

    Args:
        probs: ``[P, L]`` codebook probabilities (no gradient needed).
        labels: ``[P]`` per-view mask ids, 0 = unlabelled.
        area_normalised: use Panoptic Lifting's per-area cost instead.

    Returns:
        :class:`AssignmentResult`.
    """
    labels = labels.reshape(-1)
    if probs.dim() != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"probs must be [P, L] matching labels [P]; got {tuple(probs.shape)} / {tuple(labels.shape)}")
    device = labels.device
    num_slots = probs.shape[1]
    pixel_targets = torch.full_like(labels, -1, dtype=torch.long)

    labelled = labels > 0
    lab = labels[labelled]
    mask_ids, inverse, counts = torch.unique(lab, return_inverse=True, return_counts=True)
    num_masks = int(mask_ids.numel())
    if num_masks == 0 or num_slots == 0:
        codebook_index = torch.full((num_masks,), -1, dtype=torch.long, device=device)
        return AssignmentResult(mask_ids.long(), codebook_index, pixel_targets, num_masks)

    score = probs.new_zeros((num_masks, num_slots)).index_add_(0, inverse, probs[labelled])
    if area_normalised:
        score = score / counts.to(score.dtype).unsqueeze(1)
    cost = (-score).detach().to("cpu", torch.float64).numpy()
    rows, cols = linear_sum_assignment(cost)

    codebook_index_np = np.full(num_masks, -1, dtype=np.int64)
    codebook_index_np[rows] = cols
    codebook_index = torch.from_numpy(codebook_index_np).to(device)
    pixel_targets[labelled] = codebook_index[inverse]
    return AssignmentResult(
        mask_ids=mask_ids.long(),
        codebook_index=codebook_index,
        pixel_targets=pixel_targets,
        num_unmatched=num_masks - int(len(rows)),
    )


def _kept(targets: Tensor, weight_mask: Optional[Tensor]) -> Tensor:
    keep = targets >= 0
    if weight_mask is not None:
        keep = keep & weight_mask.reshape(-1).bool()
    return keep


def classification_loss(
    logits: Tensor,
    targets: Tensor,
    weight_mask: Optional[Tensor] = None,
    skip_if_all_correct: bool = False,
) -> Tensor:
    """Cross-entropy of codebook logits against virtual labels (loss 4).

    Only pixels with ``target >= 0`` and (if given) ``weight_mask`` True count
    (``weight_mask`` is the confident-pixel mask of the noisy-label filter; it
    is a *hard* mask, as in the official code).  The mean is taken over kept
    pixels; with none kept the result is a zero connected to ``logits``.

    ``skip_if_all_correct`` applies Panoptic Lifting's rule: when every kept
    pixel's argmax already equals its target the loss is zeroed, which stops
    the codebook from sharpening logits without bound once the mapping is
    self-consistent.

    The implementation is sync-free (no boolean indexing) so it does not stall
    a CUDA stream.

    Args:
        logits: ``[P, L]``.
        targets: ``LongTensor[P]`` with ``-1`` = ignore.
        weight_mask: optional ``BoolTensor[P]``.
        skip_if_all_correct: Panoptic Lifting's skip rule.

    Returns:
        Scalar tensor.
    """
    targets = targets.reshape(-1).long()
    keep = _kept(targets, weight_mask)
    ce = F.cross_entropy(logits, targets.clamp_min(0), reduction="none")
    ce = torch.where(keep, ce, torch.zeros_like(ce))
    loss = ce.sum() / keep.sum().clamp_min(1).to(ce.dtype)
    if skip_if_all_correct:
        all_correct = ((logits.argmax(dim=1) == targets) | ~keep).all()
        loss = torch.where(all_correct, torch.zeros_like(loss), loss)
    return loss


def concentration_loss(
    features: Tensor,
    codebook: Tensor,
    targets: Tensor,
    keep: Optional[Tensor] = None,
    unit_rows: bool = False,
) -> Tensor:
    """Mean unsquared L2 distance ``||f_hat_p - C[target_p]||`` (loss 5).

    Pulls each codebook row towards the (unit) direction of the features of the
    pixels mapped to it, so the row becomes a good classifier direction for its
    object.  The paper calls it L1; the released code uses this unsquared L2
    norm, which we follow.  Pass detached ``features`` to train only the
    codebook (official behaviour).  Pixels with ``target < 0`` or
    ``keep == False`` are ignored; with none left the result is a zero
    connected to the graph.

    Args:
        features: ``[P, d]`` (unnormalised; normalised here).
        codebook: ``[L, d]``.
        targets: ``LongTensor[P]`` virtual labels, ``-1`` = ignore.
        keep: optional ``BoolTensor[P]`` confident-pixel mask.
        unit_rows: compare with the rows' directions only (for cosine logits,
            where a row's norm has no meaning).

    Returns:
        Scalar tensor.
    """
    targets = targets.reshape(-1).long()
    mask = _kept(targets, keep)
    f_hat = features / features.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    rows = F.normalize(codebook, dim=-1, eps=_EPS) if unit_rows else codebook
    dist = (f_hat - rows[targets.clamp_min(0)]).norm(dim=-1)
    dist = torch.where(mask, dist, torch.zeros_like(dist))
    return dist.sum() / mask.sum().clamp_min(1).to(dist.dtype)


def instance_ids(
    features: Tensor, codebook: Tensor, scale: float = 1.0, cosine: bool = False, chunk_size: int = 65536
) -> Tuple[Tensor, Tensor]:
    """Inference rule: ``id = argmax_k softmax(C_k . f)`` and its probability.

    Works on any leading shape (rendered images ``[H, W, d]``, per-Gaussian
    features ``[N, d]``).  The returned ids are codebook slot indices
    ``0..L-1``; the probability can serve as a detection score.

    Never forms the full ``[..., L]`` softmax: rows go ``chunk_size`` at a time and
    the winner's probability is ``exp(max logit - logsumexp)`` (at 1080p with L = 256
    the full softmax alone would be 2 GB, twice over).

    Returns:
        ``(ids LongTensor[...], max_prob FloatTensor[...])``.
    """
    shape = features.shape[:-1]
    flat = features.reshape(-1, features.shape[-1])
    ids = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
    max_prob = torch.empty(flat.shape[0], dtype=torch.promote_types(flat.dtype, codebook.dtype), device=flat.device)
    step = max(int(chunk_size), 1)
    for start in range(0, flat.shape[0], step):
        logits = codebook_logits(flat[start : start + step], codebook, scale, cosine)
        top, arg = logits.max(dim=-1)
        ids[start : start + step] = arg
        max_prob[start : start + step] = torch.exp(top - torch.logsumexp(logits, dim=-1))
    return ids.reshape(shape), max_prob.reshape(shape)
