"""The ``unified-lift`` trainer: nerfstudio's Trainer, with the schedule fitted to the run before set-up.

``ns-train unified-lift --data scene/ --max-num-iterations 3000`` on 160 px images would
otherwise run splatfacto's 30k-step, ~1000 px schedule (see ``ulift_ns.schedule``).
When the trainer sets up, every schedule knob the user left at its default is adapted
to ``max_num_iterations`` and the training image size; a value that differs from the
default (set on the command line or in code) is kept.  The chosen schedule is printed
in one block and written to ``config.yml``, so ``ns-viewer`` / ``ns-eval`` load the
schedule that was actually used.

It also makes a run fail loudly instead of silently:

* a scene or mask problem found while setting up (missing masks, no labelled pixel at
  all, an empty ``frames`` list) ends ``ns-train`` with one message, no traceback;
* before the first step it prints a summary of the masks (views, labelled share, ids
  per view) and warns about views without labels or with more ids than codebook rows;
* after ``--load-dir`` the optimisers are rebound to the loaded parameters;
* the first non-finite loss or parameter stops the run, naming the step, the group and
  the likely cause, before anything is saved over the last good checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Sequence, Tuple, Type

import torch

from nerfstudio.engine.optimizers import Optimizers
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE

from ulift_ns.dataparser import SceneFormatError
from ulift_ns.health import NonFiniteTrainingError, divergence_message, non_finite_names
from ulift_ns.labelio import LabelFileError
from ulift_ns.optimizers import FEATURE_GROUPS, optimizers
from ulift_ns.schedule import REFERENCE_STEPS, Schedule, adapted_schedule
from ulift_ns.supervision import MaskSummary, summarise_masks, summary_lines, summary_warnings

MODEL_KNOBS = tuple(f.name for f in dataclasses.fields(Schedule) if f.name != "feature_lr_boost")


@dataclass
class UnifiedLiftTrainerConfig(TrainerConfig):
    _target: Type = field(default_factory=lambda: UnifiedLiftTrainer)
    adapt_schedule: bool = True
    """Fit splatfacto's 30k-step, ~1000 px schedule (densification, coarse-to-fine, SH, learning rates) to
    --max-num-iterations and the training image size. Values you set yourself are kept."""
    stop_on_non_finite: bool = True
    """Stop at the first step whose loss or parameters are not finite (one device sync per step)."""


class TrainingInputError(SystemExit):
    """The scene or its masks cannot be trained on; ``ns-train`` prints the message, no traceback."""


USER_INPUT_ERRORS = (LabelFileError, SceneFormatError, FileNotFoundError)
"""Errors that describe the user's files (each names the file and the fix), not a bug."""


@dataclass(frozen=True)
class ScheduleChoice:
    """One adapted knob: the value used, splatfacto's default, and whether it came from the user."""

    name: str
    value: object
    default: object
    user_set: bool


def training_image_size(config: TrainerConfig) -> Tuple[int, int]:
    """``(width, height)`` of the largest training image, as the datamanager will load it.

    Runs the configured dataparser without seed points (cheap) and applies
    ``camera_res_scale_factor``, the only resize the datamanager adds.
    """
    dm = config.pipeline.datamanager
    parser_config = copy.deepcopy(dm.dataparser)
    if getattr(dm, "data", None) is not None:
        parser_config.data = dm.data
    if hasattr(parser_config, "load_3D_points"):
        parser_config.load_3D_points = False
    cameras = parser_config.setup().get_dataparser_outputs(split="train").cameras
    scale = float(getattr(dm, "camera_res_scale_factor", 1.0))
    return int(round(int(cameras.width.max()) * scale)), int(round(int(cameras.height.max()) * scale))


def adapt_to_run(config: TrainerConfig, image_size: Tuple[int, int]) -> List[ScheduleChoice]:
    """Set every schedule knob and optimiser group left at its default to the run's schedule (in place)."""
    model = config.pipeline.model
    defaults = type(model)()
    reference = Schedule(**{name: getattr(defaults, name) for name in MODEL_KNOBS})
    schedule = adapted_schedule(config.max_num_iterations, max(image_size), reference)
    choices = []
    for name in MODEL_KNOBS:
        user_set = getattr(model, name) != getattr(defaults, name)
        if not user_set:
            setattr(model, name, getattr(schedule, name))
        choices.append(ScheduleChoice(name, getattr(model, name), getattr(defaults, name), user_set))

    default_groups, run_groups = optimizers(REFERENCE_STEPS), optimizers(config.max_num_iterations)
    for group, default in default_groups.items():
        current = config.optimizers.get(group)
        user_set = current is not None and current != default
        if current is not None and not user_set:
            current = copy.deepcopy(run_groups[group])
            if group in FEATURE_GROUPS:
                current["optimizer"].lr *= schedule.feature_lr_boost
            config.optimizers[group] = current
        if group in FEATURE_GROUPS and current is not None:
            choices.append(ScheduleChoice(f"{group} lr", current["optimizer"].lr, default["optimizer"].lr, user_set))
    return choices


def print_schedule(choices: List[ScheduleChoice], max_steps: int, image_size: Tuple[int, int]) -> None:
    from rich.table import Table

    table = Table(title=f"unified-lift schedule for {max_steps} steps on {image_size[0]}x{image_size[1]} px images")
    for col in ("setting", "value", "splatfacto default", "source"):
        table.add_column(col, justify="left" if col in ("setting", "source") else "right")
    for c in choices:
        source = "yours (kept)" if c.user_set else ("default" if c.value == c.default else "adapted")
        fmt = (lambda v: f"{v:.3g}") if isinstance(c.value, float) else str
        table.add_row(c.name, fmt(c.value), fmt(c.default), source)
    CONSOLE.print(table)
    CONSOLE.print("Set any of these yourself (e.g. --pipeline.model.refine-every 50) to keep it, or pass --adapt-schedule False.")


def rebind_optimizers(optimizers: Optimizers, param_groups: Dict[str, List[torch.nn.Parameter]]) -> List[str]:
    """Point each optimiser (and its loaded state) at the model's current Parameters; returns the groups changed.

    splatfacto's ``load_state_dict`` replaces every per-Gaussian Parameter to resize it,
    while the optimisers built before the load keep updating the old, detached ones.
    """
    changed = []
    for name, params in param_groups.items():
        optimizer = optimizers.optimizers.get(name)
        if optimizer is None:
            continue
        old = optimizer.param_groups[0]["params"]
        if len(old) != len(params) or all(o is n for o, n in zip(old, params)):
            continue
        for o, n in zip(old, params):
            if o in optimizer.state:
                optimizer.state[n] = optimizer.state.pop(o)
        optimizer.param_groups[0]["params"] = list(params)
        optimizers.parameters[name] = params
        changed.append(name)
    return changed


def report_supervision(pipeline, codebook_size: int) -> MaskSummary:
    """Print the masks' summary and warnings; no labelled pixel in any view is an error."""
    from ulift_ns.datamanager import MAKE_MASKS_HELP, SAM_LABELS

    dm = pipeline.datamanager
    dataset = dm.train_dataset
    folder = dataset.label_path(0, dataset.mask_dir).parent
    stems = [Path(name).stem for name in dataset.image_filenames]
    maps = [data[SAM_LABELS].cpu().numpy() for data in dm.cached_train if SAM_LABELS in data]
    summary = summarise_masks(stems, maps, codebook_size, str(folder))
    if not summary.labelled:
        raise LabelFileError(
            f"No labelled pixel in any of the {summary.num_views} masks in {folder}: every mask is all zero (0 = "
            "unlabelled), so there is nothing to lift. " + MAKE_MASKS_HELP.format(scene=folder.parent)
        )
    for line in summary_lines(summary):
        CONSOLE.print(line)
    for line in summary_warnings(summary):
        CONSOLE.print(f"[yellow]Warning: {line}")
    return summary


def learning_rates(optimizers: Optimizers) -> Dict[str, float]:
    return {name: float(opt.param_groups[0]["lr"]) for name, opt in optimizers.optimizers.items()}


class UnifiedLiftTrainer(Trainer):
    config: UnifiedLiftTrainerConfig

    def setup(self, test_mode: Literal["test", "val", "inference"] = "val") -> None:
        try:
            self._setup(test_mode)
        except USER_INPUT_ERRORS as err:
            raise TrainingInputError(f"ns-train unified-lift: {err}") from None

    def _setup(self, test_mode: Literal["test", "val", "inference"]) -> None:
        # Override: the schedule must be fixed before the pipeline builds the densification strategy.
        if self.config.adapt_schedule:
            # A private copy: nerfstudio's method configs are module-level objects, reused within a process.
            self.config = copy.deepcopy(self.config)
            self.image_size = training_image_size(self.config)
            self.schedule_choices = adapt_to_run(self.config, self.image_size)
            print_schedule(self.schedule_choices, self.config.max_num_iterations, self.image_size)
            self.config.save_config()
        super().setup(test_mode=test_mode)
        if test_mode == "val":  # training: the masks are what it learns from
            self.mask_summary = report_supervision(self.pipeline, int(self.config.pipeline.model.codebook_size))

    def _load_checkpoint(self) -> None:
        # Override: after --load-dir the optimisers must update the loaded Parameters (splatfacto 1.1.5 bug).
        super()._load_checkpoint()
        rebind_optimizers(self.optimizers, self.pipeline.get_param_groups())

    def train_iteration(self, step: int):
        # Override: stop at the first non-finite loss or parameter, before the step's checkpoint is saved.
        loss, loss_dict, metrics_dict = super().train_iteration(step)
        if self.config.stop_on_non_finite:
            bad_losses = non_finite_names({name: [value] for name, value in loss_dict.items()})
            bad_groups = non_finite_names(self.pipeline.get_param_groups())
            if bad_losses or bad_groups:
                self.shutdown()  # stops the viewer, if any, so the process can exit
                raise NonFiniteTrainingError(self._divergence_message(step, bad_losses, bad_groups))
        return loss, loss_dict, metrics_dict

    def _after_train(self) -> None:
        # Override: the final checkpoint's multi-view 3D labels are cached with it, so export needs no scene.
        super()._after_train()
        model = self.pipeline.model
        if getattr(model, "label_cameras", None) is None or getattr(model.config, "label_rule", None) != "multiview":
            return
        from ulift_ns.labels3d import cache_path

        model.labels_cache_file = cache_path(self.checkpoint_dir, self.step)
        model.eval()
        try:
            model.gaussian_labels("multiview")
        finally:  # the file belongs to the checkpoint: later edits of this live model must not overwrite it
            model.labels_cache_file = None

    def _divergence_message(self, step: int, bad_losses: Sequence[str], bad_groups: Sequence[str]) -> str:
        defaults = {name: group["optimizer"].lr for name, group in optimizers(self.config.max_num_iterations).items()}
        saved = sorted(self.checkpoint_dir.glob("step-*.ckpt")) if self.checkpoint_dir.is_dir() else []
        note = (
            f"The last good checkpoint, {saved[-1]}, is kept; nothing was saved after it."
            if saved
            else "No checkpoint was saved."
        )
        return divergence_message(step, bad_losses, bad_groups, learning_rates(self.optimizers), defaults, note)

    def schedule_summary(self) -> Dict[str, object]:
        """The knobs this run used, for summaries and benchmarks."""
        return {c.name: c.value for c in getattr(self, "schedule_choices", [])}
