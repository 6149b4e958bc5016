"""Render per-view instance label maps from a trained run: how users and benchmarks read predictions.

``DIR/<image stem>.png`` holds uint16 labels (1 + codebook index; 0 where accumulated
opacity < 0.5).  Because the codebook is shared by all views, an object's label is the
same in every view.  ``DIR/overlay/<stem>.png`` shows the labels over the RGB render.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Literal, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from ulift_ns.labelio import OutputExistsError, atomic_path, check_can_write, write_label_png
from ulift_ns.model import OPACITY_THRESHOLD
from ulift_ns.progress import track

Split = Literal["train", "test", "all"]


Readout = Literal["codebook", "hdbscan"]


@dataclass
class RenderedView:
    stem: str
    labels: np.ndarray  # uint16 [H,W]
    rgb: np.ndarray  # float [H,W,3]
    colour: np.ndarray  # float [H,W,3]
    confidence: np.ndarray  # float [H,W]
    features: Optional[np.ndarray] = None  # float [H,W,d], only when asked for
    present: Optional[np.ndarray] = None  # bool [H,W], accumulated opacity >= 0.5


def load_pipeline(config_path: Path, test_mode: Literal["test", "val", "inference"] = "test"):
    """Load a trained run's pipeline (weights included) from its ``config.yml``, from any working directory.

    ``test_mode="inference"`` loads no dataset at all: the result holds only ``.model``,
    built from the checkpoint (what ``ulift export`` needs).
    """
    from ulift_ns import runs

    if test_mode == "inference":
        return runs.load_model(Path(config_path))
    return runs.load_pipeline(Path(config_path), test_mode=test_mode)


def split_cameras(pipeline, split: Split) -> List[Tuple[str, object]]:
    """``(image stem, camera)`` for each view of ``split``; ``all`` lists each image once."""
    dm = pipeline.datamanager
    datasets = {"train": [dm.train_dataset], "test": [dm.eval_dataset], "all": [dm.train_dataset, dm.eval_dataset]}
    if split not in datasets:
        raise ValueError(f"split must be train, test or all, got {split!r}")
    views: Dict[str, object] = {}
    for dataset in datasets[split]:
        # The cameras the model was trained with: undistorted intrinsics and size for a distorted capture.
        cameras = dataset.training_cameras() if hasattr(dataset, "training_cameras") else dataset.cameras
        for i, name in enumerate(dataset.image_filenames):
            views.setdefault(Path(name).stem, cameras[i : i + 1])
    return sorted(views.items())


@torch.no_grad()
def render_views(pipeline, split: Split, with_features: bool = False) -> Iterator[RenderedView]:
    pipeline.eval()  # training mode would feed the densification strategy
    model = pipeline.model
    model.eval_outputs_features = with_features
    try:
        for stem, camera in split_cameras(pipeline, split):
            out = model.get_outputs_for_camera(camera.to(model.device))
            yield RenderedView(
                stem=stem,
                labels=out["instance_id"][..., 0].round().cpu().numpy().astype(np.uint16),
                rgb=out["rgb"].clamp(0, 1).cpu().numpy(),
                colour=out["instance"].cpu().numpy(),
                confidence=out["instance_confidence"][..., 0].cpu().numpy(),
                features=out["features"].cpu().numpy() if with_features else None,
                present=(out["accumulation"][..., 0] >= OPACITY_THRESHOLD).cpu().numpy(),
            )
    finally:
        model.eval_outputs_features = False


def relabel_by_clustering(views: List[RenderedView], palette: np.ndarray) -> List[RenderedView]:
    """Replace codebook labels by HDBSCAN clusters of the rendered features (the baseline read-out)."""
    from ulift_ns.baselines import hdbscan_labels

    labels = hdbscan_labels([v.features for v in views], [v.present for v in views])
    out = []
    for view, lab in zip(views, labels):
        colour = np.where(lab[..., None] > 0, palette[(lab - 1) % len(palette)], 0.0)
        out.append(RenderedView(view.stem, lab.astype(np.uint16), view.rgb, colour, view.confidence))
    return out


def overlay(view: RenderedView, strength: float = 0.55) -> np.ndarray:
    """uint8 RGB: instance colours blended over the render where a label exists."""
    mixed = np.where(view.labels[..., None] > 0, (1 - strength) * view.rgb + strength * view.colour, view.rgb)
    return (np.clip(mixed, 0, 1) * 255).round().astype(np.uint8)


def check_output_folder(output_dir: Path, overwrite: bool) -> None:
    """Before any loading: refuse a folder that already holds label maps or overlays, unless ``overwrite``."""
    output_dir = Path(output_dir)
    existing = sorted(output_dir.glob("*.png")) + sorted((output_dir / "overlay").glob("*.png"))
    if existing and not overwrite:
        raise OutputExistsError(
            f"{output_dir} already holds {len(existing)} label map(s) or overlay(s) (e.g. {existing[0].name}); pass "
            "--overwrite to replace them, or choose another --output-dir."
        )


def write_predictions(
    pipeline, split: Split, output_dir: Path, overwrite: bool = False, readout: Readout = "codebook"
) -> List[Path]:
    """Render ``split`` and write label maps plus overlays; refuses to replace files unless ``overwrite``."""
    cameras = split_cameras(pipeline, split)
    targets = [output_dir / f"{stem}.png" for stem, _ in cameras]
    for path in targets + [output_dir / "overlay" / f"{stem}.png" for stem, _ in cameras]:
        check_can_write(path, overwrite)
    views: Iterable[RenderedView] = render_views(pipeline, split, with_features=readout == "hdbscan")
    if readout == "hdbscan":
        views = relabel_by_clustering(list(track(views, "Rendering features", len(cameras))), pipeline.model.palette.cpu().numpy())
    else:
        views = track(views, "Rendering label maps", len(cameras))
    written = []
    for view in views:
        write_label_png(output_dir / f"{view.stem}.png", view.labels)
        with atomic_path(output_dir / "overlay" / f"{view.stem}.png") as tmp:
            Image.fromarray(overlay(view)).save(tmp, format="PNG")
        written.append(output_dir / f"{view.stem}.png")
    return written
