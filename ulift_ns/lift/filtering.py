"""Noisy-label filtering (METHOD.md, item 6).

2D masks from SAM are noisy: boundaries bleed, objects are merged or split.
Unified-Lift estimates, for every labelled pixel, how well its identity
feature agrees with its *own* mask compared with the other masks of the view,
and drops pixels with low agreement from the codebook losses (classification
and concentration).  The contrastive loss still sees every pixel, so the
features can keep correcting themselves.

The confidence uses the same per-mask prototypes as the contrastive loss, but
over *all* labelled pixels (no minimum mask size) and with a sharper
temperature ``clip(0.1 * raw, 0.1, 1.0)``.  Everything runs under
``torch.no_grad``: it is a data-dependent weight, not a loss.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .contrastive import mask_prototypes, mask_temperatures, normalise_detached

__all__ = ["label_confidence", "confident_pixels"]


@torch.no_grad()
def label_confidence(
    features: Tensor,
    labels: Tensor,
    temp_scale: float = 0.1,
    temp_min: float = 0.1,
    temp_max: float = 1.0,
    chunk_size: int = 65536,
) -> Tensor:
    """Per-pixel confidence that the pixel's 2D mask label is right.

    ``conf_p = softmax_j(f_hat_p . u_j / phi_j)[label(p)]`` where ``u_j`` is
    the mean normalised feature of mask ``j`` and ``phi_j`` its temperature.
    A pixel whose feature sits closer to another mask's prototype than to its
    own (a likely mislabelled boundary or merge) receives a low value.

    Args:
        features: ``[P, d]`` rendered features (any dtype/device).
        labels: ``[P]`` per-view mask ids, 0 = unlabelled.
        temp_scale, temp_min, temp_max: temperature parameters.
        chunk_size: pixels per block when forming the ``[P, M]`` logits, which
            bounds memory on full-resolution images.

    Returns:
        ``FloatTensor[P]`` in ``[0, 1]``; unlabelled pixels get 0.  A view with
        a single mask gives confidence 1 to all its pixels (nothing competes).
    """
    labels = labels.reshape(-1)
    if features.shape[0] != labels.shape[0]:
        raise ValueError("features and labels disagree on the number of pixels")
    conf = features.new_zeros(labels.shape[0])
    labelled = labels > 0
    if not bool(labelled.any()):
        return conf
    f_hat = normalise_detached(features[labelled])
    _, ids = torch.unique(labels[labelled], return_inverse=True)
    num_masks = int(ids.max().item()) + 1
    protos, counts = mask_prototypes(f_hat, ids, num_masks)
    phi = mask_temperatures(f_hat, ids, protos, counts, temp_scale, temp_min, temp_max)
    scaled = (protos / phi.unsqueeze(1)).t()  # [d, M]
    out = torch.empty_like(f_hat[:, 0])
    step = max(int(chunk_size), 1)
    for start in range(0, f_hat.shape[0], step):  # loop over pixel *blocks* only
        sl = slice(start, start + step)
        probs = torch.softmax(f_hat[sl] @ scaled, dim=1)
        out[sl] = probs.gather(1, ids[sl].unsqueeze(1)).squeeze(1)
    conf[labelled] = out
    return conf


def confident_pixels(conf: Tensor, threshold: float = 0.2) -> Tensor:
    """Hard mask of pixels kept for the codebook losses (``conf > threshold``).

    The official code uses a hard mask (not a soft weight) with threshold 0.2.
    """
    return conf > threshold
