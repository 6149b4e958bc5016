"""Score predicted label maps against a scene's ground truth (``SCENE/gt_masks/<stem>.png``)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ulift_ns.labelio import read_label_map, write_json_atomic
from ulift_ns.metrics import evaluate_all

SUMMARY_KEYS = ("pq", "sq", "rq", "miou", "consistency", "map", "map50")


def load_label_pairs(scene: Path, pred_dir: Path) -> tuple[List[str], List[np.ndarray], List[np.ndarray]]:
    """Predictions in ``pred_dir`` paired with ``scene/gt_masks`` by image stem (views without gt are skipped)."""
    gt_dir = Path(scene) / "gt_masks"
    if not gt_dir.is_dir():
        raise FileNotFoundError(f"{gt_dir} does not exist: ground-truth label maps (one per image stem) are needed to evaluate.")
    preds = sorted(p for p in Path(pred_dir).glob("*.png"))
    if not preds:
        raise FileNotFoundError(f"No predicted label maps in {pred_dir}: make them with `ulift render --load-config ... --output-dir {pred_dir}`.")
    stems, pred_maps, gt_maps = [], [], []
    for path in preds:
        gt_path = gt_dir / path.name
        if not gt_path.is_file():
            continue
        pred, gt = read_label_map(path), read_label_map(gt_path)
        if pred.shape != gt.shape:
            raise ValueError(f"{path} is {pred.shape[::-1]} but {gt_path} is {gt.shape[::-1]}: render at the ground truth's resolution.")
        stems.append(path.stem)
        pred_maps.append(pred)
        gt_maps.append(gt)
    if not stems:
        raise FileNotFoundError(f"None of the predictions in {pred_dir} has a ground truth in {gt_dir} (matched by file name).")
    return stems, pred_maps, gt_maps


def evaluate_predictions(scene: Path, pred_dir: Path, output_json: Optional[Path] = None) -> Dict[str, float]:
    stems, preds, gts = load_label_pairs(scene, pred_dir)
    metrics = {k: float(v) for k, v in evaluate_all(preds, gts).items() if np.isscalar(v)}
    metrics["num_views"] = float(len(stems))
    if output_json is not None:
        write_json_atomic(output_json, {"scene": str(scene), "predictions": str(pred_dir), "metrics": metrics})
    return metrics


def print_metrics(metrics: Dict[str, float], title: str = "Segmentation metrics") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for key in SUMMARY_KEYS:
        if key in metrics:
            table.add_column(key.upper() if len(key) <= 3 else key, justify="right")
    table.add_row(*[f"{metrics[k]:.1f}" for k in SUMMARY_KEYS if k in metrics])
    Console().print(table)
