"""Prototype contrastive loss (OmniSeg3D-style InfoNCE) used by Unified-Lift.

Every rendered pixel carries an identity feature ``f``.  Within one training
view, the pixels of each 2D mask should agree with each other and disagree with
the other masks of the same view.  Instead of pixel-to-pixel pairs (quadratic in
the number of pixels) each mask is summarised by a *prototype*, the mean of its
unit-normalised features, and each pixel is classified against the prototypes of
all masks of the view (an InfoNCE / softmax cross-entropy).  Every mask gets its
own temperature, proportional to how spread-out its features are, so that
already-tight masks are not pushed further while loose ones receive sharp
gradients.

All functions here are pure torch (no nerfstudio) and fully vectorised: masks
are handled with ``torch.unique(return_inverse=True)`` and ``index_add_`` so the
cost is independent of how many masks a view has (the official code loops over
masks in Python).

Conventions
-----------
* ``labels`` are per-view integer mask ids; ``0`` means *unlabelled* and such
  pixels never take part in the InfoNCE term.
* ``f_hat = f / ||f||`` with the norm *detached*: the direction receives the
  contrastive gradient, while the separate norm regulariser alone controls the
  length.  This mirrors METHOD.md (loss 1).
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "normalise_detached",
    "sample_pixels",
    "mask_prototypes",
    "mask_temperatures",
    "contrastive_loss",
]

_EPS = 1e-8


def normalise_detached(features: Tensor, eps: float = _EPS) -> Tensor:
    """Return ``f / ||f||`` where the norm is treated as a constant.

    Detaching the norm means gradients only rotate the feature; its length is
    governed by the separate ``(||f|| - 1)^2`` regulariser.  ``eps`` guards the
    all-zero features rendered over empty background.
    """
    norm = features.norm(dim=-1, keepdim=True).detach().clamp_min(eps)
    return features / norm


def sample_pixels(
    labels: Tensor,
    num_samples: int,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Draw random flat pixel indices among labelled pixels (``label > 0``).

    Args:
        labels: integer label map ``[H, W]`` or flat ``[P]``; 0 = unlabelled.
        num_samples: how many pixels to draw (the official code uses 32768).
        generator: optional ``torch.Generator`` for reproducibility; it must
            live on the same device as ``labels``.

    Returns:
        ``LongTensor[min(num_samples, #labelled)]`` of flat indices into
        ``labels.reshape(-1)``, drawn *without replacement*.  When fewer
        labelled pixels exist than requested, all of them are returned (in
        random order) rather than padding with duplicates: duplicates would only
        re-weight pixels and inflate the per-mask sums of the loss.
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    flat = labels.reshape(-1)
    candidates = torch.nonzero(flat > 0, as_tuple=False).squeeze(1)
    n = candidates.numel()
    if n == 0 or num_samples == 0:
        return candidates[:0]
    perm = torch.randperm(n, generator=generator, device=flat.device)
    return candidates[perm[: min(num_samples, n)]]


def mask_prototypes(
    feat_norm: Tensor,
    labels: Tensor,
    num_masks: int,
) -> Tuple[Tensor, Tensor]:
    """Mean feature (prototype) of every mask, computed with one ``index_add_``.

    Args:
        feat_norm: ``[P, d]`` (normalised) features; gradients flow through.
        labels: ``LongTensor[P]`` of *contiguous* mask ids in ``0..num_masks-1``.
        num_masks: ``M``.

    Returns:
        ``(prototypes [M, d], counts [M])``.  ``counts`` is a LongTensor; masks
        with no pixel get a zero prototype (division guarded by ``clamp_min``).
        The prototypes are *not* re-normalised: the InfoNCE of METHOD.md uses
        the plain mean, whose shrinking length already encodes mask spread.
    """
    labels = labels.long()
    d = feat_norm.shape[-1]
    sums = feat_norm.new_zeros((num_masks, d)).index_add_(0, labels, feat_norm)
    counts = torch.bincount(labels, minlength=num_masks)
    prototypes = sums / counts.clamp_min(1).to(feat_norm.dtype).unsqueeze(1)
    return prototypes, counts


@torch.no_grad()
def mask_temperatures(
    feat_norm: Tensor,
    labels: Tensor,
    prototypes: Tensor,
    counts: Tensor,
    temp_scale: float,
    temp_min: float,
    temp_max: float,
) -> Tensor:
    """Per-mask temperature ``clip(s * sum ||f_hat - u_i|| / (n_i log(n_i + 10)), lo, hi)``.

    The raw value measures how spread a mask's features are around its
    prototype; a loose mask gets a larger temperature (softer logits).  The
    ``log(n + 10)`` factor damps the estimate for small masks.  The result is
    always detached (no gradient through the temperature), as in OmniSeg3D.

    Args:
        feat_norm: ``[P, d]``; labels: contiguous ids ``[P]``;
        prototypes: ``[M, d]``; counts: ``[M]`` pixel counts.

    Returns:
        ``FloatTensor[M]``.
    """
    labels = labels.long()
    dist = (feat_norm - prototypes[labels]).norm(dim=-1)
    dist_sum = feat_norm.new_zeros(prototypes.shape[0]).index_add_(0, labels, dist)
    n = counts.to(feat_norm.dtype)
    raw = dist_sum / (n * torch.log(n + 10.0)).clamp_min(_EPS)
    return (temp_scale * raw).clamp(temp_min, temp_max).detach()


def contrastive_loss(
    features: Tensor,
    labels: Tensor,
    min_pixels: int = 20,
    temp_scale: float = 10.0,
    temp_min: float = 0.5,
    temp_max: float = 1.0,
    norm_weight: float = 1.0,
) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Prototype InfoNCE + norm regulariser of one view (METHOD.md, loss 1).

    For each mask ``i`` with *more than* ``min_pixels`` pixels among the given
    ones::

        u_i   = mean_{p in i} f_hat_p                       (differentiable)
        phi_i = clip(temp_scale * sum_{p in i} ||f_hat_p - u_i|| / (n_i log(n_i+10)),
                     temp_min, temp_max)                       (detached)
        L_i   = sum_{p in i} -log softmax_j(f_hat_p . u_j / phi_j)[i]

    ``infonce = mean_i L_i``.  Masks with ``<= min_pixels`` pixels are dropped
    from *both* positives and negatives: their prototypes are too noisy to
    serve as anchors.  Pixels with label 0 are ignored too.  Note the per-mask
    *sum* (not mean) over pixels: the loss scale grows with the number of
    sampled pixels, exactly as in the official code.

    Degenerate views: with exactly one valid mask the softmax has a single
    entry, so the InfoNCE term is exactly 0 (no negatives means nothing to
    contrast); with none it is a zero that is still connected to ``features``
    so ``backward()`` works uniformly.  The norm regulariser is always applied.

    The norm regulariser ``mean_p (||f_p|| - 1)^2`` runs over *all* given
    pixels (also the dropped / unlabelled ones) and keeps features on the unit
    sphere, where the detached normalisation is nearly the identity.

    Args:
        features: ``[P, d]`` rendered identity features of sampled pixels.
        labels: ``[P]`` integer mask ids of this view (arbitrary positive ids,
            0 = unlabelled).
        min_pixels: masks need strictly more pixels than this.
        temp_scale, temp_min, temp_max: temperature parameters.
        norm_weight: weight of the norm regulariser (0 disables it).

    Returns:
        ``(loss, stats)``; ``stats`` holds detached scalar tensors:
        ``infonce``, ``norm_reg``, ``num_masks`` (valid masks),
        ``num_dropped_masks``, ``num_pixels`` (pixels in valid masks),
        ``mean_temperature`` (nan when no valid mask).
    """
    if features.dim() != 2:
        raise ValueError(f"features must be [P, d], got {tuple(features.shape)}")
    labels = labels.reshape(-1)
    if labels.shape[0] != features.shape[0]:
        raise ValueError("features and labels disagree on the number of pixels")

    # Norm regulariser over every given pixel.
    norm_reg = ((features.norm(dim=-1) - 1.0) ** 2).mean() if features.shape[0] > 0 else features.sum() * 0.0

    uniq, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    valid_mask = (counts > min_pixels) & (uniq > 0)  # [U]
    # Contiguous ids 0..M-1 for valid masks, -1 for dropped ones.
    new_id = torch.cumsum(valid_mask.long(), 0) - 1
    new_id = torch.where(valid_mask, new_id, torch.full_like(new_id, -1))
    pix_id = new_id[inverse]
    keep = pix_id >= 0
    num_masks = int(valid_mask.sum().item())
    num_dropped = int((uniq > 0).sum().item()) - num_masks

    if num_masks == 0:
        infonce = features.sum() * 0.0
        mean_temp = features.new_tensor(float("nan"))
        num_pix = 0
    else:
        f_hat = normalise_detached(features[keep])
        ids = pix_id[keep]
        protos, cnt = mask_prototypes(f_hat, ids, num_masks)
        phi = mask_temperatures(f_hat, ids, protos, cnt, temp_scale, temp_min, temp_max)
        logits = (f_hat @ protos.t()) / phi.unsqueeze(0)  # [Pk, M]
        nll = -torch.log_softmax(logits, dim=1).gather(1, ids.unsqueeze(1)).squeeze(1)
        per_mask = nll.new_zeros(num_masks).index_add_(0, ids, nll)
        infonce = per_mask.mean()
        mean_temp = phi.mean()
        num_pix = int(ids.numel())

    loss = infonce + norm_weight * norm_reg
    stats: Dict[str, Tensor] = {
        "infonce": infonce.detach(),
        "norm_reg": norm_reg.detach(),
        "num_masks": torch.tensor(num_masks),
        "num_dropped_masks": torch.tensor(num_dropped),
        "num_pixels": torch.tensor(num_pix),
        "mean_temperature": mean_temp.detach(),
    }
    return loss, stats
