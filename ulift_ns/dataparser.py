"""A dataparser that finds the scene layout by itself, so ``--data scene/`` just works.

nerfstudio's own parsers each expect one layout (``nerfstudio-data`` needs
``transforms.json``; ``colmap`` defaults to ``colmap/sparse/0``).  This one looks,
in order, for ``transforms.json``, ``sparse/0`` and ``colmap/sparse/0`` and hands the
scene to the matching nerfstudio parser, so all their pose conventions, splits and
seed-point loading are reused unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Type

from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.plugins.registry_dataparser import DataParserSpecification

SCENE_ROOT_KEY = "ulift_scene_root"
"""``DataparserOutputs.metadata`` key holding the scene folder (where ``sam_masks/`` lives)."""

LAYOUT_HELP = (
    "Expected one of: SCENE/transforms.json (nerfstudio, e.g. from `ns-process-data` or `ulift convert llff`), "
    "SCENE/sparse/0 + SCENE/images (COLMAP), or SCENE/colmap/sparse/0 + SCENE/images (ns-process-data COLMAP)."
)


class SceneFormatError(ValueError):
    """A scene file nerfstudio would choke on with an unexplained error; the message names it and the fix."""


def check_transforms(path: Path) -> None:
    """nerfstudio fails on an empty ``frames`` list with a bare IndexError; say what is wrong instead."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SceneFormatError(f"Cannot read {path} ({err}): it must be a JSON file as ns-process-data writes.") from err
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not frames:
        raise SceneFormatError(
            f"{path} lists no frames: add one entry per image to \"frames\" (file_path + transform_matrix), "
            "e.g. by re-running ns-process-data or ulift convert llff."
        )


def detect_layout(data: Path) -> tuple[Literal["nerfstudio", "colmap"], Optional[Path]]:
    """Return the layout of ``data`` and, for COLMAP, the model folder relative to it."""
    if data.is_file() and data.suffix == ".json":
        return "nerfstudio", None
    if not data.exists():
        raise FileNotFoundError(f"Scene folder {data} does not exist. {LAYOUT_HELP}")
    if (data / "transforms.json").is_file():
        return "nerfstudio", None
    for colmap_dir in (Path("sparse/0"), Path("colmap/sparse/0")):
        if (data / colmap_dir).is_dir():
            return "colmap", colmap_dir
    raise FileNotFoundError(f"Could not find a scene layout in {data}. {LAYOUT_HELP}")


def scene_root(data: Path) -> Path:
    return data.parent if data.is_file() else data


@dataclass
class UnifiedLiftDataParserConfig(DataParserConfig):
    """Auto-detecting dataparser; options left at None keep the detected parser's own default."""

    _target: Type = field(default_factory=lambda: UnifiedLiftDataParser)
    data: Path = Path()
    scale_factor: float = 1.0
    downscale_factor: Optional[int] = None
    orientation_method: Literal["pca", "up", "vertical", "none"] = "up"
    center_method: Literal["poses", "focus", "none"] = "poses"
    auto_scale_poses: bool = True
    eval_mode: Optional[Literal["fraction", "filename", "interval", "all"]] = None
    train_split_fraction: float = 0.9
    eval_interval: int = 8
    load_3D_points: bool = True
    images_path: Path = Path("images")
    """COLMAP only: image folder relative to the scene."""


class UnifiedLiftDataParser(DataParser):
    config: UnifiedLiftDataParserConfig

    def __init__(self, config: UnifiedLiftDataParserConfig):
        super().__init__(config=config)
        # FullImageDatamanager sets this to 1 in inference mode; forwarded to the inner parser.
        self.downscale_factor: Optional[int] = config.downscale_factor

    def inner_config(self) -> DataParserConfig:
        from nerfstudio.data.dataparsers.colmap_dataparser import ColmapDataParserConfig
        from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

        c = self.config
        layout, colmap_dir = detect_layout(c.data)
        common = dict(
            data=c.data,
            scale_factor=c.scale_factor,
            downscale_factor=self.downscale_factor,
            orientation_method=c.orientation_method,
            center_method=c.center_method,
            auto_scale_poses=c.auto_scale_poses,
            train_split_fraction=c.train_split_fraction,
            eval_interval=c.eval_interval,
            load_3D_points=c.load_3D_points,
        )
        if c.eval_mode is not None:
            common["eval_mode"] = c.eval_mode
        if layout == "nerfstudio":
            check_transforms(c.data if c.data.is_file() else c.data / "transforms.json")
            return NerfstudioDataParserConfig(**common)
        assert colmap_dir is not None
        if not (c.data / c.images_path).is_dir():
            raise FileNotFoundError(f"COLMAP scene {c.data} has no image folder {c.data / c.images_path}. {LAYOUT_HELP}")
        return ColmapDataParserConfig(colmap_path=colmap_dir, images_path=c.images_path, **common)

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        inner = self.inner_config().setup()
        outputs = inner.get_dataparser_outputs(split=split, **kwargs)
        outputs.metadata[SCENE_ROOT_KEY] = scene_root(self.config.data)
        return outputs


ulift_dataparser = DataParserSpecification(
    config=UnifiedLiftDataParserConfig(),
    description="Finds transforms.json, sparse/0 or colmap/sparse/0 by itself (ulift_ns).",
)
