"""Optimiser groups of ``unified-lift``: splatfacto's per-Gaussian ones plus the identity features and the codebook."""

from __future__ import annotations

from typing import Dict, Optional

from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig, SchedulerConfig

FEATURE_GROUPS = ("identity", "codebook")
"""Groups with a constant lr that the schedule scales up for short runs."""


def _adam(lr: float, scheduler: Optional[SchedulerConfig] = None) -> dict:
    return {"optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15), "scheduler": scheduler}


def optimizers(max_steps: int = 30000) -> Dict[str, dict]:
    """Splatfacto's optimisers with their decay spread over ``max_steps``, plus identity and codebook (official lr 5e-4)."""
    warmup = max(1, round(1000 * min(1.0, max_steps / 30000)))
    return {
        "means": _adam(1.6e-4, ExponentialDecaySchedulerConfig(lr_final=1.6e-6, max_steps=max_steps)),
        "features_dc": _adam(0.0025),
        "features_rest": _adam(0.0025 / 20),
        "opacities": _adam(0.05),
        "scales": _adam(0.005),
        "quats": _adam(0.001),
        "identity": _adam(0.0025),
        "codebook": _adam(5e-4),
        "camera_opt": _adam(
            1e-4,
            ExponentialDecaySchedulerConfig(lr_final=5e-7, max_steps=max_steps, warmup_steps=warmup, lr_pre_warmup=0),
        ),
        "bilateral_grid": _adam(
            2e-3,
            ExponentialDecaySchedulerConfig(lr_final=1e-4, max_steps=max_steps, warmup_steps=warmup, lr_pre_warmup=0),
        ),
    }
