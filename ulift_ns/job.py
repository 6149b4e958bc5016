"""The main job: generate the demo scene, train unified-lift on it, render labels and score them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Literal, Optional

import torch

from ulift_ns.config import trainer_config
from ulift_ns.demo import generate_demo_scene
from ulift_ns.health import SplatHealth
from ulift_ns.labelio import write_json_atomic
from ulift_ns.model import UnifiedLiftModelConfig
from ulift_ns.evaluate import evaluate_predictions, print_metrics
from ulift_ns.predict import Readout, write_predictions


@dataclass
class DemoJobResult:
    scene: Path
    config: Path
    labels: Path
    psnr_before: Dict[str, float]
    psnr_after: Dict[str, float]
    metrics: Dict[str, float]
    minutes: float
    health: SplatHealth
    metrics_3d: Optional[Dict[str, float]] = None


@torch.no_grad()
def average_psnr(pipeline, split: Literal["train", "eval"]) -> float:
    """Mean PSNR over every image of ``split`` at full resolution (the model's own background rule)."""
    pipeline.eval()
    dm, model = pipeline.datamanager, pipeline.model
    images = dm.cached_train if split == "train" else dm.cached_eval
    cameras = dm.train_dataset.cameras if split == "train" else dm.eval_dataset.cameras
    values = []
    for i, data in enumerate(images):
        out = model.get_outputs_for_camera(cameras[i : i + 1].to(model.device))
        gt = model.composite_with_background(model.get_gt_img(data["image"]), out["background"])
        values.append(float(model.psnr(out["rgb"], gt)))
    pipeline.train()
    return sum(values) / max(1, len(values)) if values else float("nan")


def splat_health(pipeline) -> SplatHealth:
    """Train and held-out PSNR and Gaussians per training pixel of a trained pipeline."""
    cameras = pipeline.datamanager.train_dataset.cameras
    size = (int(cameras.width.max()), int(cameras.height.max()))
    return SplatHealth(
        average_psnr(pipeline, "train"), average_psnr(pipeline, "eval"), int(pipeline.model.num_points), size
    )


@dataclass
class TrainedRun:
    config_path: Path
    pipeline: object
    psnr_before: Dict[str, float]
    """Mean PSNR per split ("train", "eval") before and after training."""
    psnr_after: Dict[str, float]
    schedule: Dict[str, object]
    """The schedule knobs the trainer chose (``UnifiedLiftTrainer.schedule_summary``)."""
    health: SplatHealth


def train_on_scene(
    scene: Path,
    runs_dir: Path,
    steps: int,
    model: Optional[UnifiedLiftModelConfig] = None,
    device: Optional[str] = None,
    quiet: bool = False,
    seed: int = 42,
    config=None,
) -> TrainedRun:
    """Train unified-lift on ``scene`` in-process, as ``ns-train unified-lift --max-num-iterations steps`` would.

    The trainer fits the schedule to ``steps`` and the images, exactly as on the user's
    command line (``config``: another method's trainer config, e.g. ``frozen_trainer_config``).  Only logging differs: one checkpoint at the end, no periodic all-image eval.
    """
    config = config or trainer_config(model=model, max_steps=steps)
    config.max_num_iterations = steps
    config.steps_per_save = steps
    config.steps_per_eval_all_images = steps + 1
    config.pipeline.datamanager.data = scene
    config.output_dir = runs_dir
    config.vis = "tensorboard"
    config.machine.device_type = device or ("cuda" if torch.cuda.is_available() else "cpu")
    config.machine.seed = seed
    config.logging.local_writer.enable = not quiet
    config.set_timestamp()
    config.save_config()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    psnr_before = {split: average_psnr(trainer.pipeline, split) for split in ("train", "eval")}
    trainer.train()
    health = splat_health(trainer.pipeline)
    psnr_after = {"train": health.psnr_train, "eval": health.psnr_eval}
    return TrainedRun(
        config.get_base_dir() / "config.yml", trainer.pipeline, psnr_before, psnr_after, trainer.schedule_summary(), health
    )


def predict_and_score(pipeline, scene: Path, labels_dir: Path, readout: Readout = "codebook") -> Dict[str, float]:
    write_predictions(pipeline, "all", labels_dir, readout=readout)
    return evaluate_predictions(scene, labels_dir, labels_dir / "metrics.json")


def run_demo_job(
    output: Path,
    seed: int = 0,
    steps: int = 2000,
    num_views: int = 48,
    width: int = 160,
    height: int = 120,
    device: Optional[str] = None,
    model: Optional[UnifiedLiftModelConfig] = None,
    quiet: bool = False,
) -> DemoJobResult:
    """Train on a freshly generated (or reused) demo scene; everything lands under ``output``."""
    start = time.time()
    scene = generate_demo_scene(output / "scene", seed=seed, num_views=num_views, width=width, height=height)
    run = train_on_scene(scene, output / "runs", steps, model=model, device=device, quiet=quiet)
    labels = output / "labels" / run.config_path.parent.name
    metrics = predict_and_score(run.pipeline, scene, labels)
    minutes = (time.time() - start) / 60
    result = DemoJobResult(scene, run.config_path, labels, run.psnr_before, run.psnr_after, metrics, minutes, run.health)
    summary = {
        "scene": str(scene),
        "config": str(run.config_path),
        "labels": str(labels),
        "psnr_before": run.psnr_before,
        "psnr_after": run.psnr_after,
        "splat_health": run.health.as_dict(),
        "steps": steps,
        "minutes": result.minutes,
        "metrics": metrics,
    }
    add_3d_scores(result, summary, run.pipeline)
    write_json_atomic(labels / "summary.json", summary)
    return result


def add_3d_scores(result: DemoJobResult, summary: Dict[str, object], pipeline) -> None:
    """The per-Gaussian 3D evaluation (``ulift_ns.eval3d``, default label rule) into the result and summary."""
    from ulift_ns.eval3d import evaluate_3d

    result.metrics_3d = evaluate_3d(pipeline, result.scene, quiet=False)
    summary["metrics_3d"] = result.metrics_3d


def report(result: DemoJobResult) -> None:
    from rich.console import Console

    console = Console()
    print_metrics(result.metrics, title="Demo scene: segmentation metrics (all views)")
    for split, name in (("train", "training views"), ("eval", "held-out views")):
        console.print(
            f"PSNR on {name}: {result.psnr_before[split]:.2f} dB before training -> {result.psnr_after[split]:.2f} dB after"
        )
    console.print(result.health.line())
    if result.metrics_3d:
        from ulift_ns.eval3d import print_metrics_3d

        print_metrics_3d(result.metrics_3d, title="Demo scene: 3D segmentation (per Gaussian, opacity-weighted)")
    console.print(f"Scene:        {result.scene}")
    console.print(f"Trained run:  {result.config}  (open with: ns-viewer --load-config {result.config})")
    console.print(f"Label maps:   {result.labels}  (overlays in {result.labels / 'overlay'}, summary.json beside them)")
    console.print(f"Took {result.minutes:.1f} min")
