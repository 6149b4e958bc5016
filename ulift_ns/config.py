"""``unified-lift``: the MethodSpecification nerfstudio finds through the entry point.

Imports here stay light (no SAM, no scikit-learn): nerfstudio loads every method entry
point for every ``ns-*`` command, so a failure here would break them all.
"""

from __future__ import annotations

import math
from typing import Optional

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.plugins.types import MethodSpecification

from ulift_ns.compat import allow_numpy_scalars_in_checkpoints
from ulift_ns.datamanager import UnifiedLiftDataManagerConfig
from ulift_ns.model import UnifiedLiftModelConfig
from ulift_ns.pipeline import UnifiedLiftPipelineConfig

METHOD_NAME = "unified-lift"

allow_numpy_scalars_in_checkpoints()


def _adam(lr: float, scheduler=None) -> dict:
    return {"optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15), "scheduler": scheduler}


def optimizers(max_steps: int = 30000) -> dict:
    """Splatfacto's Gaussian optimisers plus the identity features and the codebook (official lr 5e-4)."""
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
            ExponentialDecaySchedulerConfig(lr_final=5e-7, max_steps=max_steps, warmup_steps=1000, lr_pre_warmup=0),
        ),
        "bilateral_grid": _adam(
            2e-3,
            ExponentialDecaySchedulerConfig(lr_final=1e-4, max_steps=max_steps, warmup_steps=1000, lr_pre_warmup=0),
        ),
    }


def trainer_config(model: UnifiedLiftModelConfig | None = None, max_steps: int = 30000) -> TrainerConfig:
    return TrainerConfig(
        method_name=METHOD_NAME,
        steps_per_eval_image=100,
        steps_per_eval_batch=0,
        steps_per_save=2000,
        steps_per_eval_all_images=1000,
        max_num_iterations=max_steps,
        mixed_precision=False,
        pipeline=UnifiedLiftPipelineConfig(
            datamanager=UnifiedLiftDataManagerConfig(),
            model=model or UnifiedLiftModelConfig(),
        ),
        optimizers=optimizers(max_steps),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    )


unified_lift = MethodSpecification(
    config=trainer_config(),
    description="Unified-Lift: consistent 3D instance segmentation from per-view SAM masks (CPU or CUDA).",
)


SMALL_IMAGE_SIDE = 256
"""Below this long side (px), the screen-size densification rules are switched off in short runs."""


def downscales_for(image_long_side: int) -> int:
    """Splatfacto's coarse-to-fine start (1/4 resolution) is sized for ~1000 px photos; small images skip it.

    gsplat splits any Gaussian wider than 5% of the training image, and the smallest
    possible footprint is ~2 px, so at under ~40 px everything would split every refine.
    """
    return min(2, max(0, int(math.floor(math.log2(max(1, image_long_side) / 256)))))


def scale_schedule(config: TrainerConfig, max_steps: int, image_long_side: Optional[int] = None) -> TrainerConfig:
    """Shrink splatfacto's 30k-step schedule (warm-up, densification, resolution, SH) to ``max_steps``.

    For short CPU runs; every step-based knob keeps its share of training.  With
    ``image_long_side`` the coarse-to-fine resolution start is sized to the images.
    """
    model = config.pipeline.model
    small_images = image_long_side is not None and image_long_side < SMALL_IMAGE_SIDE
    if image_long_side is not None:
        model.num_downscales = downscales_for(image_long_side)
    f = max_steps / 30000.0

    def steps(n: int, floor: int) -> int:
        return max(floor, int(round(n * f)))

    model.warmup_length = steps(500, 20)
    model.refine_every = steps(100, 20)
    model.resolution_schedule = steps(3000, 50)
    model.sh_degree_interval = steps(1000, 50)
    model.stop_split_at = steps(15000, 100)
    # gsplat's screen-size split/prune (radius > 5% / 15% of the image) fires for almost every
    # Gaussian on images of a few dozen to ~200 px and grows the model without bound; off there.
    model.stop_screen_size_at = 0 if small_images else steps(4000, 100)
    config.max_num_iterations = max_steps
    config.optimizers = optimizers(max_steps)
    # Adam moves a parameter about lr per step, so identity features and the codebook (constant lr,
    # starting far from their targets) would travel too little in a short run: give them the same
    # total travel as in 30k steps, capped at 10x.
    boost = min(10.0, max(1.0, 30000.0 / max_steps))
    for group in ("identity", "codebook"):
        config.optimizers[group]["optimizer"].lr *= boost
    config.steps_per_save = max_steps
    config.steps_per_eval_all_images = max_steps + 1
    return config
