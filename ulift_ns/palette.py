"""A fixed, deterministic colour per codebook entry, shared by the viewer, renders and export.

Colours are picked greedily, each the candidate farthest (in CIELAB) from all earlier ones,
so every prefix of the palette is as spread out as the candidates allow: the first colours
are the most distinct.  ``ranked_palette`` hands those first colours to the largest objects.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
import torch


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB colours ``[n, 3]`` in [0, 1]."""
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1)


@lru_cache(maxsize=8)
def _greedy_palette(n: int) -> np.ndarray:
    # Candidates: an sRGB grid without the darkest and greyest colours (they read as shadow or background).
    steps = np.linspace(0.0, 1.0, 12)
    grid = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), -1).reshape(-1, 3)
    spread = grid.max(1) - grid.min(1)
    grid = grid[(grid.max(1) >= 0.45) & (spread >= 0.3)]
    lab = _srgb_to_lab(grid)
    chosen = [int(np.argmax(np.linalg.norm(lab - _srgb_to_lab(np.array([[1.0, 0.0, 0.0]])), axis=1) < 1e-6))]
    dist = np.linalg.norm(lab - lab[chosen[0]], axis=1)
    while len(chosen) < min(n, len(grid)):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(lab - lab[nxt], axis=1))
    colours = grid[chosen]
    if n > len(colours):  # more entries than candidates: repeat (never reached for L <= 1000)
        colours = np.concatenate([colours] * (n // len(colours) + 1))[:n]
    return colours


def instance_palette(n: int) -> torch.Tensor:
    """``[n, 3]`` float RGB in [0, 1]; entry i is the colour farthest from entries 0..i-1."""
    return torch.tensor(_greedy_palette(int(n)), dtype=torch.float32)


def ranked_palette(n: int, rows_by_size: Sequence[int]) -> torch.Tensor:
    """The palette with its first (most distinct) colours moved to ``rows_by_size`` (largest first)."""
    base = instance_palette(n)
    rows = [int(r) for r in rows_by_size if 0 <= int(r) < n]
    rest = [r for r in range(n) if r not in set(rows)]
    out = torch.empty_like(base)
    out[torch.tensor(rows + rest, dtype=torch.long)] = base
    return out


def lab_distances(rgb: torch.Tensor) -> torch.Tensor:
    """Pairwise CIELAB distances ``[n, n]`` of RGB colours ``[n, 3]`` (for tests and checks)."""
    lab = torch.from_numpy(_srgb_to_lab(rgb.double().numpy()))
    return torch.cdist(lab, lab)
