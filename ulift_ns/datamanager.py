"""The SAM-mask dataset and datamanager: per-view label maps travel in the batch next to the image.

Label maps live in ``SCENE/sam_masks/<image stem>.png`` (integer PNG, 0 = unlabelled,
ids need not agree between views).  Optional ground truth for evaluation lives in
``SCENE/gt_masks/<image stem>.png`` with ids consistent across views.

The batch keys are ``"sam_labels"`` and ``"gt_labels"`` (int64 ``[H, W]``), never
``"mask"``: splatfacto multiplies its RGB loss by ``batch["mask"]``.

Label maps follow the image exactly: a distorted camera's maps go through nerfstudio's
undistortion and crop, nearest-neighbour (``ulift_ns.undistort``).  The cache holds each
map in the smallest integer dtype that holds its ids (uint16 up to 65,535, else int32),
a quarter of int64; batches hand out int64.

SAM label maps are relabelled once at load time: each view's masks become ``1..M`` in
the order of their original ids (0 stays unlabelled), and a mask that covers every pixel
of its view is dropped (it separates nothing).  The partition and the order of the masks
are unchanged, so the losses compute the same values; contiguous small ids keep the cache
small.  With ``cache_images="cpu"`` on a CUDA machine the maps are pinned and copied with
``non_blocking``; training batches move only ``sam_labels``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from copy import deepcopy
from typing import Dict, List, Literal, Sequence, Tuple, Type

import numpy as np
import torch

from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager, FullImageDatamanagerConfig
from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.utils.rich_utils import CONSOLE

from ulift_ns.dataparser import SCENE_ROOT_KEY, UnifiedLiftDataParserConfig
from ulift_ns.labelio import LabelFileError, read_label_map
from ulift_ns.undistort import is_distorted, training_cameras, undistort_labels

SAM_LABELS = "sam_labels"
GT_LABELS = "gt_labels"
LABEL_KEYS = (SAM_LABELS, GT_LABELS)
MAX_LISTED = 10
"""Error messages list at most this many files, then a count."""
MAKE_MASKS_HELP = (
    "Make them with `ulift masks --data {scene} --method felzenszwalb` (no weights needed) or "
    "`ulift masks --data {scene} --checkpoint sam_vit_h_4b8939.pth` (segment-anything)."
)


def resize_labels(labels: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of an integer label map: ids are names, never averaged."""
    if tuple(labels.shape) == tuple(size):
        return labels
    out = torch.nn.functional.interpolate(labels[None, None].double(), size=size, mode="nearest-exact")
    return out[0, 0].to(labels.dtype)


def compact_labels(labels: np.ndarray) -> torch.Tensor:
    """The smallest cache dtype holding these ids: uint16 for ids <= 65,535, else int32."""
    top = int(labels.max()) if labels.size else 0
    if labels.size and int(labels.min()) < 0:
        raise ValueError(f"label ids must be >= 0, got {int(labels.min())}")
    return torch.from_numpy(np.ascontiguousarray(labels, dtype=np.uint16 if top <= 65535 else np.int32))


def relabel_masks(labels: torch.Tensor) -> torch.Tensor:
    """One view's mask ids as ``1..M`` in increasing order of the original id (0 = unlabelled stays 0).

    A mask covering every pixel of the view is dropped (set to 0).  Returned in the compact
    cache dtype (uint16, or int32 past 65,535 masks).
    """
    flat = labels.reshape(-1).long()
    if flat.numel() == 0:
        return compact_labels(np.zeros(tuple(labels.shape), dtype=np.int64))
    ids, inverse, counts = torch.unique(flat, return_inverse=True, return_counts=True)
    keep = (ids > 0) & (counts < flat.numel())
    new_ids = torch.cumsum(keep.long(), 0) * keep
    return compact_labels(new_ids[inverse].reshape(labels.shape).numpy())


def list_paths(paths: Sequence[Path], limit: int = MAX_LISTED) -> str:
    """The first ``limit`` paths, one per line, and how many more there are."""
    lines = [f"  {p}" for p in paths[:limit]]
    if len(paths) > limit:
        lines.append(f"  ... and {len(paths) - limit} more")
    return "\n".join(lines)


def check_aspect(mask_path: Path, mask_hw: Tuple[int, int], image_hw: Tuple[int, int]) -> None:
    """Masks may be at another resolution than the image, but not another shape."""
    (mh, mw), (ih, iw) = mask_hw, image_hw
    # Tolerate the rounding of a downscaled image: one pixel on either side.
    if abs(mw * ih - mh * iw) > max(mw, iw) + max(mh, ih):
        raise LabelFileError(
            f"{mask_path} is {mw}x{mh} but its image is {iw}x{ih}: the aspect ratios differ, so the mask "
            f"belongs to another image or was cropped. " + MAKE_MASKS_HELP.format(scene=mask_path.parent.parent)
        )


class SamMaskDataset(InputDataset):
    """An ``InputDataset`` whose items also carry ``sam_labels`` (and ``gt_labels`` when present)."""

    def __init__(
        self,
        dataparser_outputs: DataparserOutputs,
        scale_factor: float = 1.0,
        require_masks: bool = True,
        mask_dir: str = "sam_masks",
        gt_dir: str = "gt_masks",
    ):
        super().__init__(dataparser_outputs, scale_factor)
        self.require_masks = require_masks
        root = dataparser_outputs.metadata.get(SCENE_ROOT_KEY)
        self.scene_root = Path(root) if root is not None else None
        self.mask_dir, self.gt_dir = mask_dir, gt_dir
        # The parser's cameras: nerfstudio replaces self.cameras' intrinsics when it undistorts the images.
        self.source_cameras = deepcopy(self.cameras)
        if require_masks:
            self.check_masks_exist()

    def check_masks_exist(self) -> None:
        """Every training image needs its mask: name all the missing ones at once, before anything loads."""
        missing = [p for p in (self.label_path(i, self.mask_dir) for i in range(len(self))) if not p.is_file()]
        if missing:
            folder = missing[0].parent
            raise LabelFileError(
                f"{len(missing)} of {len(self)} training images have no mask in {folder}:\n{list_paths(missing)}\n"
                + MAKE_MASKS_HELP.format(scene=folder.parent)
            )

    def training_cameras(self):
        """The cameras the model is trained with (undistorted intrinsics and size), without loading images."""
        return training_cameras(self.source_cameras)

    def label_path(self, image_idx: int, folder: str) -> Path:
        image_path = Path(self._dataparser_outputs.image_filenames[image_idx])
        # Other dataparsers do not record the scene root; images/ (or images_2/) sits directly in it.
        root = self.scene_root if self.scene_root is not None else image_path.parent.parent
        return root / folder / f"{image_path.stem}.png"

    def _load_labels(self, path: Path, image_hw: Tuple[int, int]) -> torch.Tensor:
        labels = read_label_map(path)
        check_aspect(path, labels.shape, image_hw)
        return resize_labels(compact_labels(labels), image_hw)

    def get_metadata(self, data: Dict) -> Dict:
        idx = data["image_idx"]
        image_hw = tuple(data["image"].shape[:2])
        out: Dict[str, torch.Tensor] = {}
        sam_path = self.label_path(idx, self.mask_dir)
        if sam_path.is_file():
            out[SAM_LABELS] = self._load_labels(sam_path, image_hw)
        elif self.require_masks:
            raise LabelFileError(
                f"Missing SAM mask {sam_path} for image {self._dataparser_outputs.image_filenames[idx]}. "
                + MAKE_MASKS_HELP.format(scene=sam_path.parent.parent)
            )
        gt_path = self.label_path(idx, self.gt_dir)
        if gt_path.is_file():
            out[GT_LABELS] = self._load_labels(gt_path, image_hw)
        return out


@dataclass
class UnifiedLiftDataManagerConfig(FullImageDatamanagerConfig):
    _target: Type = field(default_factory=lambda: UnifiedLiftDataManager)
    dataparser: UnifiedLiftDataParserConfig = field(default_factory=UnifiedLiftDataParserConfig)
    cache_images: Literal["cpu", "gpu"] = "gpu"
    """"gpu" means the training device (CPU or CUDA); "cpu" pins host memory and needs a CUDA driver."""
    cache_images_type: Literal["uint8", "float32"] = "uint8"
    mask_dir: str = "sam_masks"
    gt_dir: str = "gt_masks"


class UnifiedLiftDataManager(FullImageDatamanager[SamMaskDataset]):
    config: UnifiedLiftDataManagerConfig

    def __init__(self, config: UnifiedLiftDataManagerConfig, *args, **kwargs):
        _no_pinning_without_cuda(config)
        super().__init__(config, *args, **kwargs)
        # Again: past 500 training images nerfstudio's __init__ switches to cache_images="cpu" itself.
        _no_pinning_without_cuda(self.config)

    def _dataset(self, outputs: DataparserOutputs, require_masks: bool) -> SamMaskDataset:
        return SamMaskDataset(
            outputs,
            scale_factor=self.config.camera_res_scale_factor,
            require_masks=require_masks,
            mask_dir=self.config.mask_dir,
            gt_dir=self.config.gt_dir,
        )

    def create_train_dataset(self) -> SamMaskDataset:
        # Only training needs masks; ns-eval / ns-render / ns-export / the viewer run without them.
        return self._dataset(self.train_dataparser_outputs, require_masks=self.test_mode == "val")

    def create_eval_dataset(self) -> SamMaskDataset:
        return self._dataset(self.dataparser.get_dataparser_outputs(split=self.test_split), require_masks=False)

    def _load_images(self, split: Literal["train", "eval"], cache_images_device: Literal["cpu", "gpu"]) -> List[Dict[str, torch.Tensor]]:
        # The parent undistorts and caches only "image"/"mask"; label maps must land on the same pixels.
        cache = super()._load_images(split, cache_images_device)
        dataset = self.train_dataset if split == "train" else self.eval_dataset
        pin = cache_images_device == "cpu" and torch.cuda.is_available()
        for idx, data in enumerate(cache):
            camera = dataset.source_cameras[idx]
            for key in LABEL_KEYS:
                if key in data:
                    labels = undistort_labels(data[key], camera) if is_distorted(camera) else data[key]
                    labels = resize_labels(labels, tuple(data["image"].shape[:2]))
                    if key == SAM_LABELS:
                        labels = relabel_masks(labels)
                    if cache_images_device == "gpu":
                        labels = labels.to(self.device)
                    elif pin:
                        labels = labels.pin_memory()
                    data[key] = labels
        report_cache_size(split, cache)
        return cache

    def _labels_to_device(self, data: Dict, keys: Sequence[str] = LABEL_KEYS) -> Dict:
        for key in keys:
            if key in data:
                # Cached compact (and pinned when on the host): copy small, widen on the device for the losses.
                data[key] = data[key].to(self.device, non_blocking=True).long()
        return data

    def next_train(self, step: int):
        # The parent moves only "image" to the device; the losses need only sam_labels (gt is for evaluation).
        camera, data = super().next_train(step)
        return camera, self._labels_to_device(data, keys=(SAM_LABELS,))

    def next_eval_image(self, step: int):
        camera, data = super().next_eval_image(step)
        return camera, self._labels_to_device(data)


def _no_pinning_without_cuda(config: UnifiedLiftDataManagerConfig) -> None:
    """pin_memory() in FullImageDatamanager needs a CUDA driver; without one cache on the training device."""
    if config.cache_images == "cpu" and not torch.cuda.is_available():
        CONSOLE.print("[yellow]No CUDA: caching images on the training device instead of pinned host memory.")
        config.cache_images = "gpu"



def report_cache_size(split: str, cache: List[Dict[str, torch.Tensor]]) -> Dict[str, int]:
    """Print (and return) the bytes the cache holds for images and for each kind of label map."""

    def nbytes(key: str) -> int:
        return sum(d[key].element_size() * d[key].numel() for d in cache if key in d)

    sizes = {key: nbytes(key) for key in ("image",) + LABEL_KEYS}
    dtypes = sorted({str(d[k].dtype).replace("torch.", "") for d in cache for k in LABEL_KEYS if k in d})
    parts = [f"images {sizes['image'] / 1e6:.1f} MB"]
    parts += [f"{key} {sizes[key] / 1e6:.1f} MB" for key in LABEL_KEYS if sizes[key]]
    CONSOLE.print(f"Cached {len(cache)} {split} views: {', '.join(parts)} (label maps as {'/'.join(dtypes) or '-'})")
    return sizes
