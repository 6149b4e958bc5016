"""Per-Gaussian 3D labels for export, the viewer's only/remove and objects.json: the rules and their cache.

Rules (``--label-rule``):

* ``multiview`` (default): back-project the rendered label maps of the training views onto
  the Gaussians, weighted by compositing weight (``ulift_ns.lift.backproject``).  A faint,
  hidden or never-seen Gaussian gets 0 ("unseen") instead of an arbitrary codebook row.
* ``feature``: argmax of the codebook logits on each Gaussian's own feature (the old rule).

The multi-view labels are computed once per model state (Gaussian count and a fingerprint
of geometry, features and codebook) and kept on the model; when the run's checkpoint folder is known they are also
saved beside the checkpoints as ``RUN/labels3d/step-<step>.pt`` and read back next time.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Dict, List, Literal, Optional, Tuple

import torch
from torch import Tensor

from ulift_ns.lift.backproject import UNSEEN_WEIGHT, live_rows, multiview_labels
from ulift_ns.rasterize import rasterization

LabelRule = Literal["multiview", "feature"]
LABEL_RULES: Tuple[str, ...] = ("multiview", "feature")
CACHE_FORMAT = "ulift_ns.labels3d/1"


def cache_path(checkpoint_dir: Path, step: int) -> Path:
    """``RUN/labels3d/step-<step>.pt``: beside ``nerfstudio_models/``, not in it (ns-* parse every file name there)."""
    return Path(checkpoint_dir).parent / "labels3d" / f"step-{int(step):09d}.pt"


def _camera_views(model, cameras) -> List[Tuple[Tensor, Tensor, int, int]]:
    from ulift_ns.model import viewmat_from_c2w

    views = []
    for i in range(cameras.shape[0]):
        cam = cameras[i : i + 1].to(model.device)
        views.append(
            (viewmat_from_c2w(cam.camera_to_worlds), cam.get_intrinsics_matrices().to(model.device), int(cam.width.item()), int(cam.height.item()))
        )
    return views


@torch.no_grad()
def compute_multiview_labels(model, cameras, unseen_weight: float = UNSEEN_WEIGHT, progress: bool = True) -> Dict[str, object]:
    """Label maps of ``cameras`` rendered by ``model``, back-projected onto all its Gaussians."""
    start = time.time()
    was_training, crop_box = model.training, model.crop_box
    selector = getattr(model, "selector", None)
    selected = selector.selected if selector is not None else None
    model.eval()
    model.crop_box = None  # every Gaussian gets a label, whatever the viewer's crop
    if selector is not None:
        selector.selected = set()  # no selection image: it would ask for these very labels
    label_maps = []
    try:
        for i in range(cameras.shape[0]):
            out = model.get_outputs(cameras[i : i + 1].to(model.device))
            label_maps.append(out["instance_id"][..., 0].round().long())
    finally:
        model.train(was_training)
        model.crop_box = crop_box
        if selector is not None:
            selector.selected = selected
    rows = live_rows(label_maps)
    pixels = torch.zeros(rows.shape[0], dtype=torch.long)
    for m in label_maps:
        values, counts = torch.unique(m[m > 0].cpu(), return_counts=True)
        pixels += torch.zeros_like(pixels).index_add_(0, torch.searchsorted(rows, values - 1), counts)
    p = model.gauss_params
    geometry = dict(
        means=p["means"].detach(),
        quats=p["quats"].detach(),
        scales=torch.exp(p["scales"].detach()),
        opacities=torch.sigmoid(p["opacities"].detach()).squeeze(-1),
    )

    def renderer(viewmat: Tensor, K: Tensor, W: int, H: int) -> Callable[[Tensor], Tensor]:
        def render(colours: Tensor) -> Tensor:
            image, _, _ = rasterization(
                colors=colours, viewmats=viewmat, Ks=K, width=W, height=H, packed=False, near_plane=0.01,
                far_plane=1e10, render_mode="RGB", rasterize_mode=model.config.rasterize_mode,
                backend=model.config.rasterizer_backend, **geometry,
            )  # fmt: skip
            return image[0]

        return render

    views = _camera_views(model, cameras)
    pairs = ((renderer(*v), m.to(model.device)) for v, m in zip(views, label_maps))
    if progress:
        from rich.progress import track

        pairs = track(pairs, total=len(views), description="3D labels from training views", transient=True)
    result = multiview_labels(pairs, int(p["means"].shape[0]), rows.to(model.device), unseen_weight)
    seconds = time.time() - start
    return {
        "format": CACHE_FORMAT,
        "num_gaussians": int(p["means"].shape[0]),
        "unseen_weight": float(unseen_weight),
        "labels": result.labels.cpu(),
        "confidence": result.confidence.cpu(),
        "total_weight": result.total_weight.cpu(),
        "rows": result.rows.cpu(),
        "rows_by_size": rows[torch.argsort(pixels, descending=True, stable=True)].cpu(),
        "seconds": seconds,
        "num_views": len(views),
    }


@torch.no_grad()
def model_fingerprint(model) -> Tuple[float, ...]:
    """Cheap sums of the state the labels depend on: an edited feature, codebook or geometry invalidates them."""
    p = model.gauss_params
    parts = [p["means"], p["opacities"], p["scales"], p["identity"], model.codebook]
    return tuple(float(t.detach().double().nan_to_num(0.0, 0.0, 0.0).sum()) for t in parts)


def _same_fingerprint(a, b) -> bool:
    return a is not None and len(a) == len(b) and all(abs(x - y) <= 1e-5 * max(1.0, abs(x), abs(y)) for x, y in zip(a, b))


def _valid_cache(data: object, model, unseen_weight: float, fingerprint) -> bool:
    return (
        isinstance(data, dict)
        and data.get("format") == CACHE_FORMAT
        and data.get("num_gaussians") == int(model.gauss_params["means"].shape[0])
        and data.get("unseen_weight") == float(unseen_weight)
        and _same_fingerprint(data.get("fingerprint"), fingerprint)
    )


def model_multiview_labels(model, unseen_weight: float = UNSEEN_WEIGHT, quiet: bool = False) -> Tuple[Tensor, Tensor]:
    """The model's multi-view labels and confidences (on its device), computed once and cached.

    Needs ``model.label_cameras`` (set by the pipeline: the training cameras).  Cached in
    memory per model state (``model_fingerprint``) and, when ``model.labels_cache_file`` is set, on disk.
    """
    from nerfstudio.utils.rich_utils import CONSOLE

    fingerprint = model_fingerprint(model)
    key = (int(model.gauss_params["means"].shape[0]), float(unseen_weight), fingerprint)
    cached = getattr(model, "_labels3d", None)
    if cached is not None and cached[0] == key:
        data = cached[1]
    else:
        data = None
        path: Optional[Path] = getattr(model, "labels_cache_file", None)
        if path is not None and Path(path).is_file():
            try:
                loaded = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # unreadable cache: recompute it
                loaded = None
            if _valid_cache(loaded, model, unseen_weight, fingerprint):
                data = loaded
        if data is None:
            provider = getattr(model, "label_cameras", None)
            if provider is None:
                from ulift_ns.errors import MissingInputError

                raise MissingInputError(
                    "multi-view 3D labels of this checkpoint are not cached and its scene's cameras are not available: "
                    "restore the scene folder (the --data of training), or pass --label-rule feature"
                )
            data = compute_multiview_labels(model, provider(), unseen_weight, progress=not quiet)
            data["fingerprint"] = fingerprint
            if not quiet:
                unseen = int((data["labels"] == 0).sum())
                CONSOLE.print(
                    f"3D labels from {data['num_views']} training views in {data['seconds']:.1f} s "
                    f"({len(data['rows'])} live rows, {unseen} of {data['num_gaussians']} Gaussians unseen)"
                )
            if path is not None:
                from ulift_ns.labelio import atomic_path

                try:
                    with atomic_path(Path(path)) as tmp:
                        torch.save(data, tmp)
                except OSError:
                    pass  # a read-only run folder: keep the labels in memory only
        object.__setattr__(model, "_labels3d", (key, data))
        if "rows_by_size" in data and hasattr(model, "palette"):  # the largest objects get the most distinct colours
            from ulift_ns.palette import ranked_palette

            model.palette = ranked_palette(model.palette.shape[0], data["rows_by_size"].tolist()).to(model.palette.device)
    return data["labels"].to(model.device), data["confidence"].to(model.device)


def gaussian_labels(model, rule: LabelRule = "multiview", quiet: bool = False) -> Tuple[Tensor, Tensor]:
    """Per-Gaussian ``(labels [N] long: 1 + codebook row, 0 = none, confidence [N])`` by ``rule``."""
    if rule == "feature":
        return model.gaussian_instance_ids()
    if rule != "multiview":
        raise ValueError(f"label rule must be one of {', '.join(LABEL_RULES)}, got {rule!r}")
    return model_multiview_labels(model, quiet=quiet)
