"""Accuracy benchmark: the full method vs baselines and the ablation ladder on several demo scenes (CPU).

Prints one table (scene-level PQ, matched mIoU, multi-view consistency, COCO mAP, minutes
per run) and writes every number to ``--output/accuracy.json``.  Every preset trains with
the same code, schedule, seed and step count; only the lifting losses and the read-out
differ (see ``ulift_ns/presets.py``).

    python benchmarks/accuracy.py   # 3 scenes (seeds 0 1 2), 24 views at 96x72, 600 steps
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List

from ulift_ns.demo import generate_demo_scene
from ulift_ns.evaluate import evaluate_predictions
from ulift_ns.job import predict_and_score, train_on_scene
from ulift_ns.model import UnifiedLiftModelConfig
from ulift_ns.presets import BASELINES, LADDER, PRESETS

COLUMNS = ("pq", "miou", "consistency", "map")


def run_preset(name: str, scene: Path, out: Path, steps: int) -> Dict[str, float]:
    preset = PRESETS[name]
    start = time.time()
    if preset.readout == "sam":
        metrics = evaluate_predictions(scene, scene / "sam_masks")
    else:
        base = UnifiedLiftModelConfig()
        model = replace(base, lift=preset.lift(base.lift))
        run = train_on_scene(scene, out / "runs" / name, steps, model=model, quiet=True)
        metrics = predict_and_score(run.pipeline, scene, out / "labels" / name, readout=preset.readout)
        metrics["psnr_train"] = run.psnr_after["train"]
        metrics.update(scores_3d(run.pipeline, scene))
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


def print_table(results: Dict[str, Dict[int, Dict[str, float]]], seeds: List[int]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Demo scenes (seeds {', '.join(map(str, seeds))}): mean over scenes [per-scene PQ]")
    for col in ("preset", "PQ", "mIoU", "consistency", "mAP", "min/run", "PQ per scene"):
        table.add_column(col, justify="left" if col == "preset" else "right")
    for name, per_seed in results.items():
        mean = {k: sum(per_seed[s][k] for s in seeds) / len(seeds) for k in COLUMNS + ("minutes",)}
        table.add_row(
            name,
            *[f"{mean[k]:.1f}" for k in COLUMNS],
            f"{mean['minutes']:.1f}",
            " ".join(f"{per_seed[s]['pq']:.1f}" for s in seeds),
        )
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--num-views", type=int, default=24)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--height", type=int, default=72)
    parser.add_argument("--presets", nargs="+", default=list(dict.fromkeys(BASELINES + LADDER)))
    parser.add_argument("--output", type=Path, default=Path("outputs/accuracy"))
    args = parser.parse_args()

    results: Dict[str, Dict[int, Dict[str, float]]] = {name: {} for name in args.presets}
    for seed in args.seeds:
        scene = generate_demo_scene(
            args.output / f"scene_{seed}", seed=seed, num_views=args.num_views, width=args.width, height=args.height
        )
        for name in args.presets:
            results[name][seed] = run_preset(name, scene, args.output / f"scene_{seed}_{time.strftime('%H%M%S')}", args.steps)
            print(f"seed {seed} {name}: " + ", ".join(f"{k}={results[name][seed][k]:.1f}" for k in COLUMNS + ("minutes",)), flush=True)
            (args.output / "accuracy.json").write_text(json.dumps({"args": vars(args) | {"output": str(args.output)}, "results": results}, indent=2))
    print_table(results, args.seeds)
    print_table_3d(results, args.seeds)


if __name__ == "__main__":
    main()
