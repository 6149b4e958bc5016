"""``ulift``: the plugin's own commands (ns-* commands are a fixed set a plugin cannot extend)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import tyro


@dataclass
class Demo:
    """Generate the built-in demo scene (images, SAM-like masks, ground truth, seed points)."""

    output: Path = Path("demo_scene")
    seed: int = 0
    num_views: int = 48
    width: int = 160
    height: int = 120
    overwrite: bool = False

    def main(self) -> None:
        from ulift_ns.demo import generate_demo_scene

        path = generate_demo_scene(self.output, self.seed, self.num_views, self.width, self.height, overwrite=self.overwrite)
        print(f"Demo scene ready at {path}. Train with: ns-train unified-lift --data {path}")


@dataclass
class RunDemo:
    """The main job: demo scene -> train unified-lift -> render labels -> segmentation metrics."""

    output: Path = Path("outputs/demo")
    seed: int = 0
    steps: int = 2000
    num_views: int = 48
    width: int = 160
    height: int = 120
    device: Optional[Literal["cpu", "cuda"]] = None

    def main(self) -> None:
        from ulift_ns.job import report, run_demo_job

        report(run_demo_job(self.output, self.seed, self.steps, self.num_views, self.width, self.height, self.device))


@dataclass
class Render:
    """Write per-view label maps (uint16, 1 + codebook index, 0 = empty) and colour overlays."""

    load_config: Path
    output_dir: Path
    split: Literal["train", "test", "all"] = "all"
    overwrite: bool = False

    def main(self) -> None:
        from ulift_ns.predict import load_pipeline, write_predictions

        written = write_predictions(load_pipeline(self.load_config), self.split, self.output_dir, self.overwrite)
        print(f"Wrote {len(written)} label maps to {self.output_dir} (overlays in {self.output_dir / 'overlay'})")


@dataclass
class Eval:
    """Score label maps in --pred against SCENE/gt_masks: scene PQ, matched mIoU, consistency, COCO mAP."""

    data: Path
    pred: Path
    output_json: Optional[Path] = None
    """Defaults to PRED/metrics.json."""

    def main(self) -> None:
        from ulift_ns.evaluate import evaluate_predictions, print_metrics

        out = self.output_json or self.pred / "metrics.json"
        print_metrics(evaluate_predictions(self.data, self.pred, out))
        print(f"Wrote {out}")


COMMANDS = {
    "demo": Demo,
    "run-demo": RunDemo,
    "render": Render,
    "eval": Eval,
}


def main(argv: Optional[list] = None) -> None:
    command = tyro.extras.subcommand_cli_from_dict({k: v for k, v in COMMANDS.items()}, args=argv)
    command.main()


if __name__ == "__main__":
    main()
