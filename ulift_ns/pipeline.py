"""VanillaPipeline plus scene-level segmentation metrics wherever nerfstudio averages eval metrics.

``ns-eval`` and the trainer's all-image evaluation call ``get_average_eval_image_metrics``;
when the eval views have ground truth (``SCENE/gt_masks``), PQ / mIoU / consistency / mAP
over those views (pooled, so ids must agree across views) join PSNR and SSIM there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Type

import torch

from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig

from ulift_ns.datamanager import GT_LABELS
from ulift_ns.metrics import evaluate_all

SEGMENTATION_PREFIX = "seg_"


@dataclass
class UnifiedLiftPipelineConfig(VanillaPipelineConfig):
    _target: Type = field(default_factory=lambda: UnifiedLiftPipeline)


class UnifiedLiftPipeline(VanillaPipeline):
    def __init__(self, *args, **kwargs):
        # Override: the model's multi-view 3D labels are rendered from the training cameras, which only the datamanager knows.
        super().__init__(*args, **kwargs)
        dataset = self.datamanager.train_dataset
        self.model.label_cameras = lambda: (dataset.training_cameras() if hasattr(dataset, "training_cameras") else dataset.cameras)

    @torch.no_grad()
    def segmentation_metrics(self) -> dict:
        """Metrics over every eval view that has a ground-truth label map; empty when none has."""
        preds, gts = [], []
        for camera, batch in self.datamanager.fixed_indices_eval_dataloader:
            if GT_LABELS not in batch:
                continue
            out = self.model.get_outputs_for_camera(camera)
            preds.append(out["instance_id"][..., 0].round().long().cpu().numpy())
            gts.append(batch[GT_LABELS].long().cpu().numpy())  # cached compact (uint16)
        if not preds:
            return {}
        scores = evaluate_all(preds, gts)
        from nerfstudio.utils.rich_utils import CONSOLE

        CONSOLE.print(
            f"Segmentation metrics ({SEGMENTATION_PREFIX}*) over {len(preds)} eval view(s) with ground truth "
            f"(seg_num_views); `ulift render` + `ulift eval` score every view."
        )
        return {f"{SEGMENTATION_PREFIX}{k}": float(v) for k, v in scores.items()} | {"seg_num_views": len(preds)}

    def get_average_eval_image_metrics(self, step=None, output_path=None, get_std=False):
        # Override: per-image averages cannot express scene-level (cross-view) segmentation quality.
        metrics = super().get_average_eval_image_metrics(step=step, output_path=output_path, get_std=get_std)
        was_training = self.training
        self.eval()
        try:
            metrics.update(self.segmentation_metrics())
        finally:
            self.train(was_training)
        return metrics
