"""Segment a splat you already have: ``unified-lift-frozen`` vs full ``unified-lift`` training (CPU or CUDA).

One run on a demo scene:

1. train a plain splat once (unified-lift with every lifting loss off: splatfacto-like);
2. ``ns-export gaussian-splat`` it to a 3DGS PLY;
3. segment it with ``unified-lift-frozen`` from the run's ``config.yml`` and from that PLY,
   timing each from load to ``ulift export`` (wall clock, including set-up and the cache);
4. train full ``unified-lift`` for the same number of steps as the plain splat.

Prints seconds and 2D scene PQ / mIoU / consistency for every row, and writes
``--output/frozen.json``.

    python benchmarks/frozen.py                                        # 48 views, 160x120
    python benchmarks/frozen.py --num-views 24 --width 96 --height 72  # smaller, for a shared CPU
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict

import torch

from ulift_ns.config import frozen_trainer_config
from ulift_ns.demo import generate_demo_scene
from ulift_ns.export import run_export
from ulift_ns.frozen import UnifiedLiftFrozenModelConfig
from ulift_ns.job import predict_and_score, train_on_scene
from ulift_ns.model import UnifiedLiftModelConfig

COLUMNS = ("pq", "miou", "consistency")


def _register_frozen() -> None:
    """ns-export / eval_setup look methods up by name; an editable install made before this method lacks it."""
    from nerfstudio.configs.method_configs import all_methods

    from ulift_ns.config import unified_lift_frozen

    all_methods.setdefault("unified-lift-frozen", unified_lift_frozen.config)


def _seed(seed: int = 42) -> None:
    """Every row starts from the same RNG state (ns-train seeds in train_loop, which in-process runs skip)."""
    from nerfstudio.scripts.train import _set_random_seed

    _set_random_seed(seed)


def _train(config, scene: Path, runs: Path, steps: int, device: str):
    config.max_num_iterations = steps
    config.steps_per_save = steps
    config.steps_per_eval_all_images = steps + 1
    config.steps_per_eval_image = steps + 1
    config.pipeline.datamanager.data = scene
    config.output_dir = runs
    config.vis = "tensorboard"
    config.machine.device_type = device
    config.logging.local_writer.enable = False
    config.set_timestamp()
    config.save_config()
    _seed(config.machine.seed)
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    trainer.train()
    return config.get_base_dir() / "config.yml", trainer.pipeline


def segment_splat(splat: Path, scene: Path, out: Path, name: str, steps: int, device: str, **model_kw) -> Dict[str, float]:
    start = time.time()
    cfg = frozen_trainer_config(UnifiedLiftFrozenModelConfig(splat=splat, **model_kw), max_steps=steps)
    config_path, pipeline = _train(cfg, scene, out / "runs" / name, steps, device)
    trained = time.time()
    run_export(config_path, out / "export" / name, None, False, False)
    seconds = time.time() - start
    metrics = predict_and_score(pipeline, scene, out / "labels" / name)
    metrics.update(seconds=seconds, train_seconds=trained - start, steps=steps)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("outputs/bench_frozen"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-views", type=int, default=48)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--steps", type=int, default=2000, help="plain splat and full unified-lift")
    parser.add_argument("--frozen-steps", type=int, default=1000)
    parser.add_argument("--top-k", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    _register_frozen()
    out = args.output
    scene = generate_demo_scene(out / "scene", seed=args.seed, num_views=args.num_views, width=args.width, height=args.height)
    rows: Dict[str, Dict[str, float]] = {}

    t = time.time()
    base = UnifiedLiftModelConfig()
    plain_model = replace(base, lift=replace(base.lift, contrastive_weight=0.0, use_codebook=False))
    _seed()
    plain = train_on_scene(scene, out / "runs" / "plain", args.steps, model=plain_model, device=args.device, quiet=True)
    plain_seconds = time.time() - t

    from nerfstudio.scripts.exporter import ExportGaussianSplat

    t = time.time()
    ExportGaussianSplat(load_config=plain.config_path, output_dir=out / "ply").main()
    ply = out / "ply" / "splat.ply"
    ply_seconds = time.time() - t

    rows["frozen, run config.yml"] = segment_splat(plain.config_path, scene, out, "frozen_config", args.frozen_steps, args.device, top_k=args.top_k)
    rows["frozen, 3DGS PLY"] = segment_splat(ply, scene, out, "frozen_ply", args.frozen_steps, args.device, top_k=args.top_k)

    t = time.time()
    _seed()
    full = train_on_scene(scene, out / "runs" / "full", args.steps, device=args.device, quiet=True)
    full_train = time.time() - t
    run_export(full.config_path, out / "export" / "full", None, False, False)
    rows["full unified-lift"] = predict_and_score(full.pipeline, scene, out / "labels" / "full")
    rows["full unified-lift"].update(seconds=time.time() - t, train_seconds=full_train, steps=args.steps)

    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"Demo scene seed {args.seed}: {args.num_views} views at {args.width}x{args.height}, {args.device}; "
        f"plain splat {args.steps} steps in {plain_seconds:.0f} s, ns-export PLY in {ply_seconds:.0f} s"
    )
    for col in ("run", "steps", "s load->export", "s training", "PQ", "mIoU", "consistency"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for name, m in rows.items():
        table.add_row(name, str(int(m["steps"])), f"{m['seconds']:.1f}", f"{m['train_seconds']:.1f}", *[f"{m[k]:.1f}" for k in COLUMNS])
    Console().print(table)
    summary = {"args": {k: str(v) for k, v in vars(args).items()}, "plain_seconds": plain_seconds, "ply_seconds": ply_seconds, "rows": rows}
    (out / "frozen.json").write_text(json.dumps(summary, indent=2))
    print(f"Wrote {out / 'frozen.json'}")


if __name__ == "__main__":
    main()
