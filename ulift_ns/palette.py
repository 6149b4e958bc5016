"""A fixed, deterministic colour per codebook entry, shared by the viewer, renders and export."""

from __future__ import annotations

import colorsys

import torch

_GOLDEN_RATIO_CONJUGATE = 0.618033988749895


def instance_palette(n: int) -> torch.Tensor:
    """``[n, 3]`` float RGB in [0, 1]; consecutive ids get far-apart hues (golden-ratio stepping)."""
    colours = []
    for i in range(n):
        hue = (i * _GOLDEN_RATIO_CONJUGATE) % 1.0
        saturation = 0.65 + 0.35 * ((i * 7) % 3) / 2.0
        value = 0.95 - 0.3 * ((i * 5) % 4) / 3.0
        colours.append(colorsys.hsv_to_rgb(hue, saturation, value))
    return torch.tensor(colours, dtype=torch.float32)
