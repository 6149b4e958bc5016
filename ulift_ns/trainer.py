"""The ``unified-lift`` trainer: nerfstudio's Trainer, with the schedule fitted to the run before set-up.

``ns-train unified-lift --data scene/ --max-num-iterations 3000`` on 160 px images would
otherwise run splatfacto's 30k-step, ~1000 px schedule (see ``ulift_ns.schedule``).
When the trainer sets up, every schedule knob the user left at its default is adapted
to ``max_num_iterations`` and the training image size; a value that differs from the
default (set on the command line or in code) is kept.  The chosen schedule is printed
in one block and written to ``config.yml``, so ``ns-viewer`` / ``ns-eval`` load the
schedule that was actually used.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Tuple, Type

from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE

from ulift_ns.optimizers import FEATURE_GROUPS, optimizers
from ulift_ns.schedule import REFERENCE_STEPS, Schedule, adapted_schedule

MODEL_KNOBS = tuple(f.name for f in dataclasses.fields(Schedule) if f.name != "feature_lr_boost")


@dataclass
class UnifiedLiftTrainerConfig(TrainerConfig):
    _target: Type = field(default_factory=lambda: UnifiedLiftTrainer)
    adapt_schedule: bool = True
    """Fit splatfacto's 30k-step, ~1000 px schedule (densification, coarse-to-fine, SH, learning rates) to
    --max-num-iterations and the training image size. Values you set yourself are kept."""


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


class UnifiedLiftTrainer(Trainer):
    config: UnifiedLiftTrainerConfig

    def setup(self, test_mode: Literal["test", "val", "inference"] = "val") -> None:
        # Override: the schedule must be fixed before the pipeline builds the densification strategy.
        if self.config.adapt_schedule:
            # A private copy: nerfstudio's method configs are module-level objects, reused within a process.
            self.config = copy.deepcopy(self.config)
            self.image_size = training_image_size(self.config)
            self.schedule_choices = adapt_to_run(self.config, self.image_size)
            print_schedule(self.schedule_choices, self.config.max_num_iterations, self.image_size)
            self.config.save_config()
        super().setup(test_mode=test_mode)

    def schedule_summary(self) -> Dict[str, object]:
        """The knobs this run used, for summaries and benchmarks."""
        return {c.name: c.value for c in getattr(self, "schedule_choices", [])}
