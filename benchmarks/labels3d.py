"""3D label rules, before / after: the feature argmax vs multi-view back-projection, in the same run (CPU).

For each demo seed: train once, score the rendered 2D labels (PQ, consistency: the same for
both rules, since rules only change per-Gaussian labels), then the 3D evaluation of
``ulift_ns.eval3d`` with each rule.  Prints one table (mean and worst over seeds) and
writes every number to ``--output/labels3d.json``.

    python benchmarks/labels3d.py   # seeds 0 1 2, 24 views at 96x72, 600 steps
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List

from ulift_ns.demo import generate_demo_scene
from ulift_ns.eval3d import evaluate_3d
from ulift_ns.job import predict_and_score, train_on_scene

RULES = ("feature", "multiview")
COLUMNS = ("objects", "true_objects", "pq3d", "label_acc", "iso_iou", "pq", "consistency")


def run_seed(seed: int, args) -> Dict[str, Dict[str, float]]:
    scene = generate_demo_scene(args.output / f"scene_{seed}", seed=seed, num_views=args.num_views, width=args.width, height=args.height)
    run = train_on_scene(scene, args.output / f"runs_{seed}", args.steps, device="cpu", quiet=True)
    scores2d = predict_and_score(run.pipeline, scene, args.output / f"labels_{seed}_{time.strftime('%H%M%S')}")
    out = {}
    for rule in RULES:
        start = time.time()
        metrics = evaluate_3d(run.pipeline, scene, label_rule=rule, quiet=False)
        metrics["eval_seconds"] = time.time() - start
        metrics.update({k: scores2d[k] for k in ("pq", "consistency")})
        out[rule] = metrics
    labels = getattr(run.pipeline.model, "_labels3d", None)
    out["multiview"]["label_seconds"] = float(labels[1]["seconds"]) if labels else float("nan")
    out["multiview"]["num_gaussians"] = float(run.pipeline.model.num_points)
    return out


def print_table(results: Dict[int, Dict[str, Dict[str, float]]], seeds: List[int]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"3D labels on demo seeds {', '.join(map(str, seeds))}: mean [worst]")
    table.add_column("rule")
    for c in COLUMNS:
        table.add_column(c, justify="right")
    for rule in RULES:
        cells = []
        for c in COLUMNS:
            values = [results[s][rule][c] for s in seeds]
            if c in ("objects", "true_objects"):
                cells.append(" ".join(f"{v:.0f}" for v in values))
            else:
                cells.append(f"{sum(values) / len(values):.1f} [{min(values):.1f}]")
        table.add_row(rule, *cells)
    Console().print(table)
    secs = [results[s]["multiview"]["label_seconds"] for s in seeds]
    Console().print(f"multi-view label computation: {', '.join(f'{s:.1f}' for s in secs)} s per run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--num-views", type=int, default=24)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--height", type=int, default=72)
    parser.add_argument("--output", type=Path, default=Path("outputs/labels3d"))
    args = parser.parse_args()
    results: Dict[int, Dict[str, Dict[str, float]]] = {}
    for seed in args.seeds:
        results[seed] = run_seed(seed, args)
        for rule in RULES:
            print(f"seed {seed} {rule}: " + ", ".join(f"{k}={v:.2f}" for k, v in results[seed][rule].items()), flush=True)
        (args.output / "labels3d.json").write_text(json.dumps({"args": vars(args) | {"output": str(args.output)}, "results": results}, indent=2))
    print_table(results, args.seeds)


if __name__ == "__main__":
    main()
