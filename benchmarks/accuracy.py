"""Accuracy benchmark on the user's path: ``ns-train unified-lift`` itself, on scenes unlike the default demo (CPU).

For every scene kind and seed the demo generator writes a fresh scene (walls, 12+
objects, COLMAP as well as transforms.json, 96-128 px, 24-32 views; see ``SCENES``).
The ``full`` preset (``--user-path``, default) is trained by running the user's command
as a subprocess, with nothing but::

    ns-train unified-lift --data SCENE --max-num-iterations N --machine.device-type cpu \\
        --output-dir OUT --vis tensorboard          # where to write, no viewer: training unchanged

and the run is then loaded from its ``config.yml``, rendered and scored.  The other
presets (baselines, ablation ladder) need model switches, so they train in-process
through the same ``UnifiedLiftTrainer`` (same schedule adaptation, seed and step count).

Prints one table per scene kind, mean ± standard deviation over the seeds (CPU runs are
not deterministic): scene-level PQ over objects, matched mIoU, multi-view consistency,
COCO mAP, training and held-out PSNR, Gaussians per training pixel, minutes per run.
Every number also goes to ``--output/accuracy.json``.

    python benchmarks/accuracy.py                                  # full, 3 scene kinds x 3 seeds
    python benchmarks/accuracy.py --presets full contrastive-hdbscan panoptic-lifting --seeds 0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Sequence

from ulift_ns.demo import generate_demo_scene
from ulift_ns.evaluate import evaluate_predictions
from ulift_ns.job import predict_and_score, splat_health, train_on_scene
from ulift_ns.model import UnifiedLiftModelConfig
from ulift_ns.presets import BASELINES, LADDER, PRESETS

SCENES: Dict[str, Dict[str, object]] = {
    "walls-13+": dict(walls=True, extra_objects=7, width=96, height=72, num_views=24),
    "colmap-128px": dict(layout="colmap", extra_objects=4, width=128, height=96, num_views=32),
    "demo-96px": dict(width=96, height=72, num_views=24),
}
"""Scene kinds: keyword arguments of ``generate_demo_scene`` (the default demo is 6-8 objects, 160x120, 48 views)."""

COLUMNS = ("pq", "miou", "consistency", "map", "small_recall", "psnr_train", "psnr_eval", "gaussians_per_pixel", "minutes")
HEADERS = {"pq": "PQ", "miou": "mIoU", "consistency": "consist.", "map": "mAP", "small_recall": "small rec.", "psnr_train": "PSNR train",
           "psnr_eval": "PSNR held-out", "gaussians_per_pixel": "G/px", "minutes": "min"}  # fmt: skip


def user_command(scene: Path, steps: int, out: Path) -> List[str]:
    """The user's command: only --data, --max-num-iterations, --machine.device-type, plus where to write / no viewer."""
    ns_train = Path(sys.executable).with_name("ns-train")
    return [
        str(ns_train) if ns_train.exists() else "ns-train",
        "unified-lift",
        "--data", str(scene),
        "--max-num-iterations", str(steps),
        "--machine.device-type", "cpu",
        "--output-dir", str(out),
        "--vis", "tensorboard",
    ]  # fmt: skip


def train_with_ns_train(scene: Path, steps: int, out: Path) -> Path:
    """Run ``ns-train unified-lift`` as a subprocess; return the run's config.yml (log in ``out/ns-train.log``)."""
    out.mkdir(parents=True, exist_ok=True)
    log = out / "ns-train.log"
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.run(user_command(scene, steps, out), stdout=fh, stderr=subprocess.STDOUT, env=os.environ.copy())
    if proc.returncode != 0:
        raise RuntimeError(f"ns-train failed (exit {proc.returncode}), see {log}")
    configs = sorted(out.glob("**/config.yml"), key=lambda p: p.stat().st_mtime)
    if not configs:
        raise RuntimeError(f"ns-train wrote no config.yml under {out}, see {log}")
    return configs[-1]


def run_preset(name: str, scene: Path, out: Path, steps: int, user_path: bool) -> Dict[str, float]:
    preset = PRESETS[name]
    start = time.time()
    if preset.readout == "sam":
        return {**evaluate_predictions(scene, scene / "sam_masks"), "minutes": 0.0}
    if user_path and name == "full":
        from ulift_ns.predict import load_pipeline

        pipeline = load_pipeline(train_with_ns_train(scene, steps, out / "runs" / name))
        health = splat_health(pipeline)
    else:
        base = UnifiedLiftModelConfig()
        model = replace(base, lift=preset.lift(base.lift))
        run = train_on_scene(scene, out / "runs" / name, steps, model=model, device="cpu", quiet=True)
        pipeline, health = run.pipeline, run.health
    metrics = predict_and_score(pipeline, scene, out / "labels" / name, readout=preset.readout)
    metrics.update(health.as_dict())
    metrics.update(scores_3d(pipeline, scene))
    metrics["minutes"] = (time.time() - start) / 60
    return metrics


def scores_3d(pipeline, scene: Path) -> Dict[str, float]:
    """Per-Gaussian 3D metrics (ulift_ns.eval3d, the default multi-view label rule), keys prefixed ``3d_``."""
    from ulift_ns.eval3d import evaluate_3d

    return {f"3d_{k}": v for k, v in evaluate_3d(pipeline, scene).items()}


def print_table_3d(results: Dict[str, Dict[int, Dict[str, float]]], seeds: List[int]) -> None:
    """The 3D columns: 3D PQ, label accuracy, isolation IoU (means) and exported / true object counts per scene."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Per-Gaussian 3D labels (multi-view rule), mean over scenes")
    for col in ("preset", "3D PQ", "label acc", "isolation IoU", "objects / true per scene"):
        table.add_column(col, justify="left" if col == "preset" else "right")
    for name, per_seed in results.items():
        if not all("3d_pq3d" in per_seed[s] for s in seeds):
            continue
        mean = {k: sum(per_seed[s][f"3d_{k}"] for s in seeds) / len(seeds) for k in ("pq3d", "label_acc", "iso_iou")}
        counts = " ".join(f"{per_seed[s]['3d_objects']:.0f}/{per_seed[s]['3d_true_objects']:.0f}" for s in seeds)
        table.add_row(name, f"{mean['pq3d']:.1f}", f"{mean['label_acc']:.1f}", f"{mean['iso_iou']:.1f}", counts)
    Console().print(table)


def mean_spread(values: Sequence[float]) -> str:
    """``mean ± sample standard deviation`` (just the mean for one value)."""
    values = [v for v in values if v == v]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    digits = 2 if abs(mean) < 10 else 1
    return f"{mean:.{digits}f}" if len(values) < 2 else f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def print_tables(results: Dict[str, Dict[str, Dict[int, Dict[str, float]]]], steps: int) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for scene_kind, per_preset in results.items():
        seeds = sorted({s for per_seed in per_preset.values() for s in per_seed})
        table = Table(title=f"{scene_kind} ({SCENES[scene_kind]}), {steps} steps, seeds {seeds}: mean ± std over seeds")
        table.add_column("preset")
        for col in COLUMNS:
            table.add_column(HEADERS[col], justify="right")
        for name, per_seed in per_preset.items():
            runs = list(per_seed.values())
            table.add_row(name, *[mean_spread([r.get(col, float("nan")) for r in runs]) for col in COLUMNS])
        console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--scenes", nargs="+", default=list(SCENES), choices=list(SCENES))
    parser.add_argument("--presets", nargs="+", default=["full"], choices=list(dict.fromkeys(BASELINES + LADDER + ("full",))))
    parser.add_argument("--no-user-path", dest="user_path", action="store_false",
                        help="train `full` in-process too (same trainer) instead of through ns-train")  # fmt: skip
    parser.add_argument("--output", type=Path, default=Path("outputs/accuracy"))
    args = parser.parse_args()

    results: Dict[str, Dict[str, Dict[int, Dict[str, float]]]] = {k: {p: {} for p in args.presets} for k in args.scenes}
    for scene_kind in args.scenes:
        for seed in args.seeds:
            scene = generate_demo_scene(args.output / f"{scene_kind}_seed{seed}", seed=seed, **SCENES[scene_kind])  # type: ignore[arg-type]
            for name in args.presets:
                out = args.output / f"{scene_kind}_seed{seed}_{name}_{time.strftime('%H%M%S')}"
                r = run_preset(name, scene, out, args.steps, args.user_path)
                results[scene_kind][name][seed] = r
                print(f"{scene_kind} seed {seed} {name}: " + ", ".join(f"{k}={r.get(k, float('nan')):.2f}" for k in COLUMNS), flush=True)
                (args.output / "accuracy.json").write_text(
                    json.dumps({"args": {**vars(args), "output": str(args.output)}, "scenes": SCENES, "results": results}, indent=2)
                )
    print_tables(results, args.steps)
    for scene_kind in args.scenes:
        print(f"{scene_kind}:")
        print_table_3d(results[scene_kind], args.seeds)


if __name__ == "__main__":
    main()
