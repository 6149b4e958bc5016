"""Open a trained run from its ``config.yml``, from any working directory.

``ns-train`` stores the paths it was given (``data: demo_scene``, ``output_dir: outputs``)
relative to the folder it ran in.  That folder is the config's location minus
``output_dir/experiment_name/method_name/timestamp``; relative paths that do not exist
from the current directory are resolved from there.  The checkpoint is always read next
to ``config.yml``.  ``load_model`` builds the model from the checkpoint alone (no images,
no dataset), which is all ``ulift export`` needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

from ulift_ns.errors import MissingInputError, NotAUnifiedLiftRunError

CONFIG_HELP = "pass the config.yml that ns-train wrote, e.g. outputs/<scene>/unified-lift/<timestamp>/config.yml"


def splatfacto_message(config_path: Path, method: str) -> str:
    return (
        f"{config_path}: this run was trained with {method}, which has no instance features; segment it with "
        f"`ns-train unified-lift-frozen --data <scene> --pipeline.model.splat {config_path}`, then use that run's config.yml."
    )


def read_config(config_path: Path):
    """The ``TrainerConfig`` in ``config_path``, or a one-line error saying what the file is instead."""
    import yaml

    from nerfstudio.engine.trainer import TrainerConfig

    path = Path(config_path)
    if not path.is_file():
        raise MissingInputError(f"{path} does not exist: {CONFIG_HELP}.")
    try:
        config = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.Loader)
    except (yaml.YAMLError, UnicodeDecodeError, AttributeError, ModuleNotFoundError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise NotAUnifiedLiftRunError(f"{path} is not a nerfstudio config ({first}): {CONFIG_HELP}.") from None
    if not isinstance(config, TrainerConfig):
        raise NotAUnifiedLiftRunError(f"{path} is not a nerfstudio config (no TrainerConfig in it): {CONFIG_HELP}.")
    check_unified_lift(config, path)
    return config


def check_unified_lift(config, path: Path) -> None:
    from ulift_ns.model import UnifiedLiftModelConfig

    if isinstance(config.pipeline.model, UnifiedLiftModelConfig):
        return
    method = str(config.method_name)
    if method.startswith("splatfacto"):
        raise NotAUnifiedLiftRunError(splatfacto_message(path, method))
    raise NotAUnifiedLiftRunError(
        f"{path}: this run was trained with {method}, not unified-lift; train one with `ns-train unified-lift --data <scene>`."
    )


def training_folder(config, config_path: Path) -> Optional[Path]:
    """Where ``ns-train`` ran: the config's folder minus ``output_dir/experiment/method/timestamp`` (None if it does not end so)."""
    tail = Path(config.output_dir) / str(config.experiment_name) / str(config.method_name) / str(config.timestamp)
    if tail.is_absolute():
        return None
    folder = Path(config_path).resolve().parent
    n = len(tail.parts)
    if folder.parts[-n:] != tail.parts:
        return None
    return Path(*folder.parts[:-n])


def resolve(path: Optional[Path], root: Optional[Path]) -> Optional[Path]:
    """``path`` as is if it exists from here (or is absolute); else from the training folder when it exists there."""
    if path is None:
        return None
    path = Path(path)
    if path.is_absolute() or path.exists() or root is None:
        return path
    candidate = root / path
    return candidate if candidate.exists() else path


def resolve_paths(config, config_path: Path):
    """Point the config's scene folder and run folder at real paths, whatever the working directory."""
    config_path = Path(config_path)
    root = training_folder(config, config_path)
    dm = config.pipeline.datamanager
    for owner in (dm, getattr(dm, "dataparser", None)):
        if owner is not None and getattr(owner, "data", None) is not None:
            owner.data = resolve(owner.data, root)
    # The run folder is wherever config.yml is now (also after moving the run).
    folder = config_path.resolve().parent
    tail = Path(str(config.experiment_name)) / str(config.method_name) / str(config.timestamp)
    if folder.parts[-len(tail.parts) :] == tail.parts:
        config.output_dir = Path(*folder.parts[: -len(tail.parts)])
    config.load_dir = folder / config.relative_model_dir
    return config


def scene_folder(config) -> Optional[Path]:
    dm = config.pipeline.datamanager
    data = getattr(dm, "data", None) or getattr(getattr(dm, "dataparser", None), "data", None)
    return None if data is None else Path(data)


def latest_checkpoint(config, config_path: Path) -> Tuple[Path, int]:
    ckpt_dir = Path(config.load_dir)
    steps = sorted(int(p.stem.split("-")[1]) for p in ckpt_dir.glob("step-*.ckpt")) if ckpt_dir.is_dir() else []
    if not steps:
        raise MissingInputError(
            f"No checkpoint in {ckpt_dir} (next to {config_path}): training saves one every --steps-per-save steps and "
            "at the end; let it run longer, or pass another run's config.yml."
        )
    step = steps[-1] if config.load_step is None else int(config.load_step)
    return ckpt_dir / f"step-{step:09d}.ckpt", step


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_pipeline(config_path: Path, test_mode: str = "test"):
    """nerfstudio's ``eval_setup`` with the run's paths resolved (any working directory) and clean errors."""
    import torch

    from nerfstudio.configs.method_configs import all_methods
    from nerfstudio.utils.eval_utils import eval_load_checkpoint

    config_path = Path(config_path)
    config = read_config(config_path)
    root = training_folder(config, config_path)
    config = resolve_paths(config, config_path)
    if config.method_name in all_methods:
        config.pipeline.datamanager._target = all_methods[config.method_name].pipeline.datamanager._target
    checkpoint, step = latest_checkpoint(config, config_path)  # a clean error before the dataset is loaded
    data = scene_folder(config)
    if data is not None and not data.exists():
        raise MissingInputError(
            f"Scene folder {data} (the --data of {config_path}) does not exist here"
            + (f" nor in the training folder {root}" if root is not None else "")
            + ": run from the folder you trained in, or fix `data:` in config.yml."
        )
    pipeline = config.pipeline.setup(device=_device(), test_mode=test_mode)
    pipeline.eval()
    with torch.no_grad():
        eval_load_checkpoint(config, pipeline)
    attach_labels_cache(pipeline.model, checkpoint, step)
    return pipeline


def attach_labels_cache(model, checkpoint: Path, step: int) -> None:
    """Multi-view 3D labels are cached beside the checkpoint they belong to (``ulift_ns.labels3d``)."""
    from ulift_ns.labels3d import cache_path

    model.labels_cache_file = cache_path(Path(checkpoint).parent, step)


def training_cameras_provider(config):
    """The run's training cameras from its dataparser alone (no images), for multi-view 3D labels."""

    def cameras():
        from ulift_ns.undistort import training_cameras

        dm = config.pipeline.datamanager
        outputs = dm.dataparser.setup().get_dataparser_outputs(split="train")
        cams = training_cameras(outputs.cameras)
        scale = float(getattr(dm, "camera_res_scale_factor", 1.0))
        if scale != 1.0:
            cams.rescale_output_resolution(scale)
        return cams

    return cameras


@dataclass
class ModelOnly:
    """What ``ulift export`` needs of a pipeline: the model (loaded from the checkpoint alone)."""

    model: object
    config: object
    checkpoint: Path


def _num_cameras(model_state: Dict[str, object]) -> int:
    """Training-view count, as far as the checkpoint's per-camera tensors say (1 when none)."""
    for key in ("camera_optimizer.pose_adjustment", "bil_grids.grids"):
        if key in model_state:
            return int(model_state[key].shape[0])
    return 1


def load_model(config_path: Path) -> ModelOnly:
    """Build the run's model from ``config.yml`` and its latest checkpoint, without the scene's images."""
    import torch

    from nerfstudio.data.scene_box import SceneBox

    config_path = Path(config_path)
    config = resolve_paths(read_config(config_path), config_path)
    path, step = latest_checkpoint(config, config_path)
    state = torch.load(path, map_location="cpu", weights_only=False)
    prefix = "_model."
    model_state = {k[len(prefix) :]: v for k, v in state["pipeline"].items() if k.startswith(prefix)}
    if model_state and all(k.startswith("module.") for k in model_state):
        model_state = {k[len("module.") :]: v for k, v in model_state.items()}
    device = _device()
    model = config.pipeline.model.setup(
        scene_box=SceneBox(aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])),
        num_train_data=_num_cameras(model_state),
        metadata={},
        device=device,
        grad_scaler=None,
        seed_points=None,
    )
    model.to(device)
    model.update_to_step(int(state["step"]))
    model.load_state_dict(model_state, strict=False)
    model.eval()
    attach_labels_cache(model, path, step)
    if scene_folder(config) is not None and scene_folder(config).exists():  # computed only when not cached yet
        model.label_cameras = training_cameras_provider(config)
    return ModelOnly(model=model, config=config, checkpoint=path)
