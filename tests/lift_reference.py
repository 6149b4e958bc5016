"""Slow, obviously-correct per-mask loops that the vectorised lift functions are checked against."""

from __future__ import annotations

import math
from typing import List, Tuple

import torch


def loop_prototypes_and_temperatures(
    f_hat: torch.Tensor, labels: torch.Tensor, ids: List[int], temp_scale: float, temp_min: float, temp_max: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """METHOD.md's prototype u_i = mean f̂ and temperature clip(s·Σ‖f̂−u_i‖ / (n log(n+10))), one mask at a time."""
    protos, temps = [], []
    for u in ids:
        fm = f_hat[labels == u]
        n = fm.shape[0]
        proto = fm.mean(0)
        raw = (fm - proto).norm(dim=1).sum() / (n * math.log(n + 10))
        protos.append(proto)
        temps.append(torch.clamp(temp_scale * raw, temp_min, temp_max).detach())
    return torch.stack(protos), torch.stack(temps)
