"""Per-Gaussian 3D labels from multi-view evidence: back-project rendered label maps onto the Gaussians.

A rendered image is linear in the Gaussians' colours, ``I(p) = sum_g w_g(p) c_g``, so the
gradient of ``sum_p <I(p), onehot(label(p))>`` with respect to ``c_g`` is, per label, the
sum of ``w_g(p)`` over the pixels carrying that label.  One backward pass per view with a
one-hot image over the *live* codebook rows (those winning pixels in the rendered training
views) therefore gives every Gaussian its summed compositing weight per label.  The same
holds for any rasterizer with gsplat's contract, so this works with gsplat and with
``ulift_ns.rasterize``.

Pure torch; the renderer is passed in as a function of the colours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Tuple

import torch
from torch import Tensor

UNSEEN_WEIGHT = 0.05
"""A Gaussian whose compositing weight summed over every pixel of every training view is below
this (e.g. hidden behind others, or outside all views) gets label 0, "unseen"."""

RenderColours = Callable[[Tensor], Tensor]
"""``colours [N, K] -> image [H, W, K]`` rendered with those per-Gaussian colours (differentiable)."""


def live_rows(label_maps: Iterable[Tensor]) -> Tensor:
    """Sorted 0-based codebook rows that win at least one pixel; maps hold ``1 + row`` (0 = empty)."""
    present = [torch.unique(m[m > 0]) for m in label_maps]
    if not present:
        return torch.zeros(0, dtype=torch.long)
    return torch.unique(torch.cat([p.reshape(-1).cpu().long() for p in present])) - 1


def one_hot_labels(label_map: Tensor, rows: Tensor) -> Tensor:
    """``[H, W, K]`` float one-hot of ``label_map`` (``1 + row``) over ``rows``; empty / other pixels are all zero."""
    lookup = torch.full((int(label_map.max().clamp_min(0)) + 2,), -1, dtype=torch.long, device=label_map.device)
    rows = rows.to(label_map.device)
    in_range = rows + 1 < lookup.shape[0]
    lookup[rows[in_range] + 1] = torch.arange(rows.shape[0], device=label_map.device)[in_range]
    index = lookup[label_map.long().clamp_min(0)]
    out = torch.zeros(label_map.shape + (rows.shape[0],), dtype=torch.float32, device=label_map.device)
    hit = index >= 0
    out[hit, index[hit]] = 1.0
    return out


def view_label_weights(render: RenderColours, num_gaussians: int, label_map: Tensor, rows: Tensor) -> Tensor:
    """``[N, K]``: each Gaussian's compositing weight summed over this view's pixels of each live row.

    One forward and one backward pass of ``render`` with zero colours: the gradient of
    ``<render(c), onehot>`` with respect to ``c`` is exactly the summed weight.
    """
    target = one_hot_labels(label_map, rows)
    with torch.enable_grad():
        colours = torch.zeros(num_gaussians, rows.shape[0], dtype=torch.float32, device=label_map.device, requires_grad=True)
        image = render(colours)
        (grad,) = torch.autograd.grad((image * target.to(image.device, image.dtype)).sum(), colours, allow_unused=True)
    return torch.zeros_like(colours) if grad is None else grad.detach()


@dataclass
class MultiviewLabels:
    labels: Tensor
    """``[N]`` long: 1 + codebook row, 0 = unseen."""
    confidence: Tensor
    """``[N]``: the winning label's share of the Gaussian's summed weight (0 when unseen)."""
    total_weight: Tensor
    """``[N]``: summed compositing weight over all labelled pixels of all views."""
    rows: Tensor
    """``[K]`` the live codebook rows (0-based) the weights were gathered over."""


def labels_from_weights(weights: Tensor, rows: Tensor, unseen_weight: float = UNSEEN_WEIGHT) -> MultiviewLabels:
    """label = argmax of the summed weight, confidence = its share; below ``unseen_weight`` in total: 0."""
    total = weights.sum(dim=1)
    if weights.shape[1] == 0:
        zeros = torch.zeros(weights.shape[0], dtype=torch.long, device=weights.device)
        return MultiviewLabels(zeros, torch.zeros_like(total), total, rows)
    best, arg = weights.max(dim=1)
    seen = total >= unseen_weight
    labels = torch.where(seen, rows.to(weights.device)[arg] + 1, torch.zeros_like(arg))
    confidence = torch.where(seen, best / total.clamp_min(1e-12), torch.zeros_like(best))
    return MultiviewLabels(labels, confidence, total, rows)


def multiview_labels(
    renders: Iterable[Tuple[RenderColours, Tensor]],
    num_gaussians: int,
    rows: Tensor,
    unseen_weight: float = UNSEEN_WEIGHT,
) -> MultiviewLabels:
    """Sum ``view_label_weights`` over ``(render, label_map)`` views and read out labels."""
    weights = None
    for render, label_map in renders:
        w = view_label_weights(render, num_gaussians, label_map, rows)
        weights = w if weights is None else weights.add_(w)
    if weights is None:
        weights = torch.zeros(num_gaussians, rows.shape[0])
    return labels_from_weights(weights, rows, unseen_weight)

