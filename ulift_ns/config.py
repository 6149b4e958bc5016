"""``unified-lift``: the MethodSpecification nerfstudio finds through the entry point.

Imports here stay light (no SAM, no scikit-learn): nerfstudio loads every method entry
point for every ``ns-*`` command, so a failure here would break them all.
"""

from __future__ import annotations

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.plugins.types import MethodSpecification

from ulift_ns.compat import allow_numpy_scalars_in_checkpoints
from ulift_ns.datamanager import UnifiedLiftDataManagerConfig
from ulift_ns.model import UnifiedLiftModelConfig
from ulift_ns.optimizers import optimizers
from ulift_ns.pipeline import UnifiedLiftPipelineConfig
from ulift_ns.trainer import UnifiedLiftTrainerConfig

METHOD_NAME = "unified-lift"

allow_numpy_scalars_in_checkpoints()


def trainer_config(model: UnifiedLiftModelConfig | None = None, max_steps: int = 30000) -> UnifiedLiftTrainerConfig:
    """The method's config; the trainer fits the schedule to ``max_steps`` and the images at set-up."""
    return UnifiedLiftTrainerConfig(
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
        optimizers=optimizers(),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    )


def frozen_trainer_config(model=None, max_steps: int = 2000):
    """``unified-lift-frozen``: the same trainer on a loaded, frozen splat (``ulift_ns.frozen``)."""
    from ulift_ns.frozen import (
        FROZEN_METHOD_NAME,
        UnifiedLiftFrozenModelConfig,
        UnifiedLiftFrozenPipelineConfig,
        UnifiedLiftFrozenTrainerConfig,
    )

    base = trainer_config(max_steps=max_steps)
    fields = {f: getattr(base, f) for f in ("steps_per_eval_image", "steps_per_eval_batch", "steps_per_save", "steps_per_eval_all_images", "max_num_iterations", "mixed_precision", "optimizers", "viewer", "vis")}
    return UnifiedLiftFrozenTrainerConfig(
        method_name=FROZEN_METHOD_NAME,
        pipeline=UnifiedLiftFrozenPipelineConfig(
            datamanager=UnifiedLiftDataManagerConfig(), model=model or UnifiedLiftFrozenModelConfig()
        ),
        **fields,
    )


unified_lift = MethodSpecification(
    config=trainer_config(),
    description="Unified-Lift: consistent 3D instance segmentation from per-view SAM masks (CPU or CUDA).",
)

unified_lift_frozen = MethodSpecification(
    config=frozen_trainer_config(),
    description="Unified-Lift on a splat you already have (run config.yml or 3DGS PLY): geometry frozen, features only.",
)
