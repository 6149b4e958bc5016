"""Score predicted label maps against a scene's ground truth (``SCENE/gt_masks/<stem>.png``)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ulift_ns.errors import InvalidArgumentError, MissingInputError
from ulift_ns.labelio import read_label_map, write_json_atomic
from ulift_ns.metrics import evaluate_all

SUMMARY_KEYS = ("pq", "sq", "rq", "miou", "consistency", "map", "map50", "small_recall")


def distorted_cameras(scene: Path) -> Dict[str, object]:
    """Image stem -> source camera, for the scene's distorted cameras (none for a pinhole or unknown layout)."""
    from ulift_ns.dataparser import UnifiedLiftDataParserConfig, detect_layout

    try:
        detect_layout(Path(scene))
    except FileNotFoundError:
        return {}  # a folder of ground truth only: nothing to undistort
    from ulift_ns.undistort import is_distorted

    config = UnifiedLiftDataParserConfig(data=Path(scene), eval_mode="all", load_3D_points=False)
    outputs = config.setup().get_dataparser_outputs(split="train")
    cameras = outputs.cameras
    return {
        Path(name).stem: cameras[i]
        for i, name in enumerate(outputs.image_filenames)
        if is_distorted(cameras[i])
    }


def gt_in_training_camera(gt: np.ndarray, camera) -> np.ndarray:
    """Ground truth of a distorted view, warped as its image was for training (what ``ulift render`` renders)."""
    import torch

    from ulift_ns.undistort import undistort_labels

    camera = camera.reshape(())
    if int(camera.width.item()) != gt.shape[1]:
        camera.rescale_output_resolution(gt.shape[1] / int(camera.width.item()))
    return undistort_labels(torch.from_numpy(gt), camera).numpy()


def load_label_pairs(scene: Path, pred_dir: Path) -> tuple[List[str], List[np.ndarray], List[np.ndarray]]:
    """Predictions in ``pred_dir`` paired with ``scene/gt_masks`` by image stem (views without gt are skipped).

    For a distorted camera the ground truth is first undistorted and cropped like its image,
    so it lands on the pixels of the camera the model was trained and rendered with.
    """
    gt_dir = Path(scene) / "gt_masks"
    if not gt_dir.is_dir():
        raise MissingInputError(f"{gt_dir} does not exist: ground-truth label maps (one per image stem) are needed to evaluate.")
    preds = sorted(p for p in Path(pred_dir).glob("*.png"))
    if not preds:
        raise MissingInputError(f"No predicted label maps in {pred_dir}: make them with `ulift render --load-config ... --output-dir {pred_dir}`.")
    distorted = distorted_cameras(scene)
    stems, pred_maps, gt_maps = [], [], []
    from ulift_ns.progress import track

    for path in track(preds, "Reading label maps"):
        gt_path = gt_dir / path.name
        if not gt_path.is_file():
            continue
        pred, gt = read_label_map(path), read_label_map(gt_path)
        if path.stem in distorted:
            gt = gt_in_training_camera(gt, distorted[path.stem])
        if pred.shape != gt.shape:
            raise InvalidArgumentError(f"{path} is {pred.shape[::-1]} but {gt_path} is {gt.shape[::-1]}: render at the ground truth's resolution.")
        stems.append(path.stem)
        pred_maps.append(pred)
        gt_maps.append(gt)
    if not stems:
        raise MissingInputError(f"None of the predictions in {pred_dir} has a ground truth in {gt_dir} (matched by file name).")
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

    # Column names are the keys of metrics.json / summary.json (ns-eval: the same with a seg_ prefix).
    views = metrics.get("num_views")
    table = Table(title=title, caption=None if views is None else f"over {int(views)} view(s) with ground truth")
    for key in SUMMARY_KEYS:
        if key in metrics:
            table.add_column(key, justify="right")
    table.add_row(*[f"{metrics[k]:.1f}" for k in SUMMARY_KEYS if k in metrics])
    Console().print(table)
