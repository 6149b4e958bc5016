"""Make the per-view 2D instance masks Unified-Lift lifts: ``ulift masks --data SCENE``.

Writes ``SCENE/sam_masks/<image stem>.png`` (uint16 label map, 0 = unlabelled, ids 1..M
per view, not consistent across views) for every image of the scene, which is exactly
what the datamanager reads.  Images are found like the dataparser finds the scene:
``transforms.json`` -> its frames' ``file_path``; COLMAP (``sparse/0`` or
``colmap/sparse/0``) -> ``SCENE/images/*``.

Methods
-------
``sam`` (default)
    segment-anything's ``SamAutomaticMaskGenerator`` (optional extra:
    ``pip install "ulift_ns[sam]"`` plus an official checkpoint).  It returns possibly
    overlapping binary masks; they are merged into one label map by **painting from the
    largest mask to the smallest**, so a later (smaller) mask overwrites an earlier
    (larger) one where they overlap: small objects lying on large ones (a cup on a table)
    survive instead of being swallowed.  Masks covered completely by smaller ones vanish;
    the survivors get ids ``1..M`` in painting order (largest first); pixels no mask
    covers stay 0.
``felzenszwalb`` (scikit-image, no weights)
    Graph-based segmentation.  ``scale`` is the main knob: larger -> fewer, larger
    segments (800 gives object-sized segments on a ~504x378 photo; use ~400 for
    thumbnails of ~64x48 and more for multi-megapixel images).  ``sigma`` is the
    Gaussian pre-smoothing (0.8); ``min_size`` the smallest segment in pixels (default:
    0.3 % of the image, at least 20 px).  Every pixel gets a label.
``slic`` (scikit-image, no weights)
    SLIC superpixels in Lab colour: ``n_segments`` is the approximate number of segments
    (16), ``compactness`` trades colour against position (5: follows colour edges
    rather than making a grid), ``sigma`` the pre-smoothing (1.0).  Every pixel gets a label.

Resuming and invalidation
-------------------------
``SCENE/sam_masks/manifest.json`` records, per image stem: the image (relative path, size
``[w, h]``, byte size, mtime and SHA-256), the settings (method and parameters; for SAM
the model type and checkpoint file name and size), and the SHA-256 of the mask written.
A run skips an image whose entry is complete and whose image size, content (SHA-256,
checked only when byte size or mtime changed) and settings all match, and whose mask
file is still the one recorded; anything else is regenerated.  Entries are written as
``pending`` before work starts, so an interrupted run is simply regenerated next time.

A PNG in ``sam_masks/`` for one of the scene's images that the manifest does not
account for (no entry, or a mask whose hash differs: made or edited by something else)
is never replaced silently: the run refuses, naming the files, unless ``--overwrite``.
Other files in ``sam_masks/`` are never touched.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ulift_ns.labelio import OutputExistsError, write_json_atomic, write_label_png

MASK_DIR = "sam_masks"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "ulift_ns.masks"
MANIFEST_VERSION = 1
METHODS = ("sam", "felzenszwalb", "slic")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

SAM_CHECKPOINTS = {
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
}
SAM_INSTALL_HELP = 'segment-anything is not installed: run `pip install "ulift_ns[sam]"` (or `pip install segment-anything`)'

Segmenter = Callable[[np.ndarray], np.ndarray]
"""``uint8 [H, W, 3]`` RGB -> integer ``[H, W]`` labels (0 = unlabelled)."""
SamGenerator = Callable[[np.ndarray], List[Dict[str, Any]]]
"""What ``SamAutomaticMaskGenerator.generate`` is: image -> list of ``{"segmentation": bool [H, W], ...}``."""


class MaskSettingsError(ValueError):
    """Bad mask-generation settings or a missing dependency; the message says what to do."""


# --------------------------------------------------------------------------- settings
@dataclass
class FelzenszwalbParams:
    scale: float = 800.0
    sigma: float = 0.8
    min_size: Optional[int] = None
    """Pixels; None = 0.3 % of the image (at least 20)."""

    def resolved_min_size(self, hw: Tuple[int, int]) -> int:
        return int(self.min_size) if self.min_size is not None else max(20, round(0.003 * hw[0] * hw[1]))


@dataclass
class SlicParams:
    n_segments: int = 16
    compactness: float = 5.0
    sigma: float = 1.0


@dataclass
class SamParams:
    checkpoint: Optional[Path] = None
    model_type: Optional[str] = None
    """vit_h, vit_l or vit_b; None = read from the checkpoint name (sam_vit_b_...), else vit_h."""
    points_per_side: int = 32
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    min_mask_region_area: int = 0
    device: Optional[str] = None
    """None = cuda when available, else cpu. Not part of the settings that invalidate masks."""

    def resolved_model_type(self) -> str:
        if self.model_type is not None:
            if self.model_type not in SAM_CHECKPOINTS:
                raise MaskSettingsError(f"--model-type must be one of {', '.join(SAM_CHECKPOINTS)}, got {self.model_type!r}")
            return self.model_type
        name = Path(self.checkpoint).name if self.checkpoint is not None else ""
        return next((t for t in SAM_CHECKPOINTS if t in name), "vit_h")


@dataclass
class MaskSettings:
    method: str = "sam"
    felzenszwalb: FelzenszwalbParams = field(default_factory=FelzenszwalbParams)
    slic: SlicParams = field(default_factory=SlicParams)
    sam: SamParams = field(default_factory=SamParams)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise MaskSettingsError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")

    def record(self) -> Dict[str, Any]:
        """What the manifest stores; a change here invalidates a mask."""
        if self.method == "felzenszwalb":
            return {"method": "felzenszwalb", **asdict(self.felzenszwalb)}
        if self.method == "slic":
            return {"method": "slic", **asdict(self.slic)}
        s = self.sam
        ckpt = Path(s.checkpoint) if s.checkpoint is not None else None
        return {
            "method": "sam",
            "model_type": s.resolved_model_type(),
            "checkpoint": ckpt.name if ckpt is not None else None,
            "checkpoint_bytes": ckpt.stat().st_size if ckpt is not None and ckpt.is_file() else None,
            "points_per_side": s.points_per_side,
            "pred_iou_thresh": s.pred_iou_thresh,
            "stability_score_thresh": s.stability_score_thresh,
            "min_mask_region_area": s.min_mask_region_area,
        }


# --------------------------------------------------------------------------- segmenters
def relabel(labels: np.ndarray) -> np.ndarray:
    """Renumber the non-zero ids of ``labels`` to 1..M in increasing order; 0 stays 0."""
    labels = np.asarray(labels)
    ids = np.unique(labels)
    ids = ids[ids != 0]
    if len(ids) > 65535:
        raise ValueError(f"{len(ids)} segments do not fit a uint16 label map")
    out = np.zeros(labels.shape, dtype=np.uint16)
    out[labels != 0] = (np.searchsorted(ids, labels[labels != 0]) + 1).astype(np.uint16)
    return out


def merge_masks(masks: Sequence[np.ndarray], shape: Tuple[int, int]) -> np.ndarray:
    """Overlapping binary masks -> one uint16 label map, painted largest first (see module docs)."""
    areas = [int(np.count_nonzero(m)) for m in masks]
    order = sorted(range(len(masks)), key=lambda i: -areas[i])  # stable: ties keep generator order
    paint = np.zeros(shape, dtype=np.int64)
    for rank, i in enumerate(order, start=1):
        m = np.asarray(masks[i], dtype=bool)
        if m.shape != tuple(shape):
            raise ValueError(f"mask {i} has shape {m.shape}, expected {tuple(shape)}")
        paint[m] = rank
    return relabel(paint)  # drop fully covered masks; ranks keep painting order


def segment_felzenszwalb(image: np.ndarray, params: FelzenszwalbParams) -> np.ndarray:
    from skimage.segmentation import felzenszwalb

    hw = image.shape[:2]
    seg = felzenszwalb(image, scale=params.scale, sigma=params.sigma, min_size=params.resolved_min_size(hw), channel_axis=-1)
    return relabel(seg + 1)


def segment_slic(image: np.ndarray, params: SlicParams) -> np.ndarray:
    from skimage.segmentation import slic

    seg = slic(
        image,
        n_segments=params.n_segments,
        compactness=params.compactness,
        sigma=params.sigma,
        start_label=1,
        channel_axis=-1,
    )
    return relabel(seg)


def import_segment_anything():
    try:
        import segment_anything
    except ImportError as err:
        raise MaskSettingsError(f"{SAM_INSTALL_HELP}; or use --method felzenszwalb / slic, which need no weights.") from err
    return segment_anything


def check_sam_checkpoint(params: SamParams) -> Path:
    model_type = params.resolved_model_type()
    url = SAM_CHECKPOINTS[model_type]
    fix = (
        f"Download the official SAM {model_type} checkpoint {Path(url).name} from {url} "
        f"(others: {', '.join(f'{t}: {Path(u).name}' for t, u in SAM_CHECKPOINTS.items() if t != model_type)}) "
        f"and pass it with `ulift masks --data SCENE --checkpoint /path/to/{Path(url).name} --model-type {model_type}`; "
        "or use --method felzenszwalb / slic, which need no weights."
    )
    if params.checkpoint is None:
        raise MaskSettingsError(f"SAM needs a checkpoint file. {fix}")
    path = Path(params.checkpoint).expanduser()
    if not path.is_file():
        raise MaskSettingsError(f"SAM checkpoint {path} does not exist. {fix}")
    return path


def build_sam_generator(params: SamParams) -> SamGenerator:
    """Load SAM from its checkpoint and wrap it in ``SamAutomaticMaskGenerator`` (the real path)."""
    sa = import_segment_anything()
    checkpoint = check_sam_checkpoint(params)
    model_type = params.resolved_model_type()
    import torch

    device = params.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        sam = sa.sam_model_registry[model_type](checkpoint=str(checkpoint))
    except RuntimeError as err:  # a vit_b file passed as vit_h and so on
        raise MaskSettingsError(
            f"Could not load {checkpoint} as SAM {model_type}: {str(err).splitlines()[0]} "
            "Pass the --model-type that matches the checkpoint (vit_h: sam_vit_h_*, vit_l: sam_vit_l_*, vit_b: sam_vit_b_*)."
        ) from err
    return sam_generator_from_model(sam.to(device), params)


def sam_generator_from_model(model, params: SamParams) -> SamGenerator:
    sa = import_segment_anything()
    generator = sa.SamAutomaticMaskGenerator(
        model,
        points_per_side=params.points_per_side,
        pred_iou_thresh=params.pred_iou_thresh,
        stability_score_thresh=params.stability_score_thresh,
        min_mask_region_area=params.min_mask_region_area,
        output_mode="binary_mask",
    )
    return generator.generate


def sam_segmenter(generate: SamGenerator) -> Segmenter:
    def segment(image: np.ndarray) -> np.ndarray:
        masks = [np.asarray(m["segmentation"], dtype=bool) for m in generate(image)]
        return merge_masks(masks, image.shape[:2])

    return segment


def make_segmenter(
    settings: MaskSettings, sam_factory: Optional[Callable[[SamParams], SamGenerator]] = None
) -> Segmenter:
    """The per-image function for ``settings``; ``sam_factory`` replaces :func:`build_sam_generator` (tests)."""
    if settings.method == "felzenszwalb":
        return lambda image: segment_felzenszwalb(image, settings.felzenszwalb)
    if settings.method == "slic":
        return lambda image: segment_slic(image, settings.slic)
    return sam_segmenter((sam_factory or build_sam_generator)(settings.sam))


# --------------------------------------------------------------------------- scene images
def scene_images(data: Path) -> Tuple[Path, List[Path]]:
    """``(scene root, image paths)`` found the way the dataparser finds the scene."""
    from ulift_ns.dataparser import detect_layout, scene_root

    data = Path(data)
    layout, _ = detect_layout(data)
    root = scene_root(data)
    if layout == "nerfstudio":
        meta_path = data if data.is_file() else data / "transforms.json"
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        images = [root / frame["file_path"] for frame in meta.get("frames", [])]
        if not images:
            raise FileNotFoundError(f"{meta_path} lists no frames.")
        missing = [p for p in images if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} image(s) listed in {meta_path} do not exist, e.g. {missing[0]}.")
    else:
        folder = root / "images"
        if not folder.is_dir():
            raise FileNotFoundError(f"COLMAP scene {root} has no images/ folder.")
        images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not images:
            raise FileNotFoundError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
    stems: Dict[str, Path] = {}
    for p in images:
        if p.stem in stems and stems[p.stem] != p:
            raise ValueError(f"{stems[p.stem]} and {p} share the stem {p.stem!r}, so they would share sam_masks/{p.stem}.png.")
        stems[p.stem] = p
    return root, list(dict.fromkeys(images))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _image_size(path: Path) -> List[int]:
    with Image.open(path) as img:
        return list(img.size)


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


# --------------------------------------------------------------------------- manifest
def load_manifest(mask_dir: Path, overwrite: bool) -> Dict[str, Any]:
    path = mask_dir / MANIFEST
    empty = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "images": {}}
    if not path.exists():
        return empty
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        ok = manifest.get("format") == MANIFEST_FORMAT and isinstance(manifest.get("images"), dict)
    except (OSError, ValueError, AttributeError):
        ok = False
    if ok and manifest.get("version") == MANIFEST_VERSION:
        return manifest
    if overwrite:
        return empty
    raise OutputExistsError(
        f"{path} is not a manifest this version of `ulift masks` wrote, so it cannot tell which masks are its own. "
        "Pass --overwrite to regenerate the masks, or move the folder away."
    )


@dataclass
class MaskRunResult:
    mask_dir: Path
    generated: List[str]
    skipped: List[str]
    manifest: Path


def _image_record(root: Path, image: Path, stat_only: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    st = image.stat()
    try:
        rel = image.relative_to(root).as_posix()
    except ValueError:
        rel = str(image)
    record = {"path": rel, "size": _image_size(image), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    if stat_only is not None and stat_only.get("bytes") == st.st_size and stat_only.get("mtime_ns") == st.st_mtime_ns:
        record["sha256"] = stat_only.get("sha256")  # unchanged on disk: trust the recorded hash
    else:
        record["sha256"] = _sha256(image)
    return record


def _is_current(entry: Dict[str, Any], image_rec: Dict[str, Any], settings: Dict[str, Any], mask: Path) -> bool:
    old = entry.get("image", {})
    return (
        entry.get("status") == "done"
        and entry.get("settings") == settings
        and old.get("size") == image_rec["size"]
        and old.get("sha256") == image_rec["sha256"]
        and mask.is_file()
        and entry.get("mask_sha256") == _sha256(mask)
    )


def _is_ours(entry: Optional[Dict[str, Any]], mask: Path) -> bool:
    """Whether the existing ``mask`` file was written by this tool (or by an interrupted run of it)."""
    if entry is None:
        return False
    if entry.get("status") == "pending":
        return True
    return entry.get("mask_sha256") == _sha256(mask)


def make_masks(
    data: Path,
    settings: Optional[MaskSettings] = None,
    overwrite: bool = False,
    sam_factory: Optional[Callable[[SamParams], SamGenerator]] = None,
    progress: bool = True,
) -> MaskRunResult:
    """Generate (or bring up to date) ``SCENE/sam_masks/*.png`` for every image of the scene."""
    settings = settings or MaskSettings()
    if settings.method == "sam" and sam_factory is None:  # fail before touching anything
        import_segment_anything()
        check_sam_checkpoint(settings.sam)
    record = settings.record()
    root, images = scene_images(Path(data))
    mask_dir = root / MASK_DIR
    manifest = load_manifest(mask_dir, overwrite)
    entries: Dict[str, Dict[str, Any]] = manifest["images"]

    todo: List[Tuple[Path, Dict[str, Any]]] = []
    skipped: List[str] = []
    foreign: List[Path] = []
    refreshed = False
    for image in images:
        mask = mask_dir / f"{image.stem}.png"
        entry = entries.get(image.stem)
        image_rec = _image_record(root, image, (entry or {}).get("image"))
        if entry is not None and _is_current(entry, image_rec, record, mask):
            skipped.append(image.stem)
            if entry["image"] != image_rec:  # e.g. touched but unchanged: refresh the cheap check
                entry["image"] = image_rec
                refreshed = True
            continue
        if mask.exists() and not _is_ours(entry, mask):
            foreign.append(mask)
        todo.append((image, image_rec))
    if foreign and not overwrite:
        names = ", ".join(p.name for p in foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputExistsError(
            f"{mask_dir} already holds {len(foreign)} mask(s) that `ulift masks` did not write (or that were edited "
            f"since): {names}. Pass --overwrite to replace them, or move them away first."
        )

    manifest_path = mask_dir / MANIFEST
    generated: List[str] = []
    if todo:
        segment = make_segmenter(settings, sam_factory)  # load the model before claiming anything
        for image, image_rec in todo:  # claim the work, so an interrupted run is resumed, not refused
            entries[image.stem] = {"status": "pending", "image": image_rec, "settings": record}
        write_json_atomic(manifest_path, manifest)
        last_flush = time.monotonic()
        try:
            with _Progress(progress, len(todo), settings.method) as advance:
                for image, image_rec in todo:
                    labels = segment(read_rgb(image))
                    mask = mask_dir / f"{image.stem}.png"
                    if labels.shape != tuple(image_rec["size"][::-1]):
                        raise RuntimeError(f"segmenter returned {labels.shape} for {image} of size {image_rec['size']}")
                    write_label_png(mask, labels)
                    entries[image.stem] = {
                        "status": "done",
                        "image": image_rec,
                        "settings": record,
                        "num_labels": int(labels.max()),
                        "mask_sha256": _sha256(mask),
                    }
                    generated.append(image.stem)
                    advance()
                    if time.monotonic() - last_flush > 2.0:
                        write_json_atomic(manifest_path, manifest)
                        last_flush = time.monotonic()
        finally:
            write_json_atomic(manifest_path, manifest)
    elif refreshed:
        write_json_atomic(manifest_path, manifest)
    return MaskRunResult(mask_dir, generated, skipped, manifest_path)


class _Progress:
    """A rich progress bar, or nothing when ``enabled`` is False."""

    def __init__(self, enabled: bool, total: int, method: str):
        self.enabled, self.total, self.method = enabled, total, method
        self._bar = None

    def __enter__(self) -> Callable[[], None]:
        if not self.enabled:
            return lambda: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn(f"[bold]masks ({self.method})"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self._bar.__enter__()
        task = self._bar.add_task("masks", total=self.total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


__all__ = [
    "FelzenszwalbParams",
    "MaskRunResult",
    "MaskSettings",
    "MaskSettingsError",
    "SamParams",
    "SlicParams",
    "make_masks",
    "merge_masks",
    "scene_images",
]
