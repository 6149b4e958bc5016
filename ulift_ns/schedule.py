"""Fit splatfacto's 30k-step, ~1000 px training schedule to a run's length and image size.

Pure functions, no nerfstudio imports: the trainer (``ulift_ns.trainer``) applies the
result to the config when ``ns-train unified-lift`` sets up, and prints it.

Why each rule exists (measured on the demo scenes, see README):

* every step-based knob keeps its *share* of training: a 3000-step run warms up,
  refines, resets opacity and stops splitting at the same fractions as a 30k one;
* splatfacto's coarse-to-fine start (1/4 resolution) is sized for ~1000 px photos:
  on a 160 px image it would train on 40 px, where gsplat's "wider than 5% of the
  image" rule splits nearly every Gaussian;
* the screen-size split/prune rules (radius > 5% / 15% of the image) fire for almost
  every Gaussian on images of a few dozen to ~250 px and grow the model without
  bound (141k Gaussians for 160x120 views), so they are off there;
* gsplat densifies a Gaussian when its mean screen-space gradient, measured in
  normalised [-1, 1] image coordinates, exceeds ``densify_grad_thresh``; for a
  Gaussian of about one pixel that gradient grows like 1 / image side (the loss is a
  mean over fewer, larger pixels), so on a 96 px image splatfacto's threshold keeps
  splitting far below pixel size: 8 Gaussians per pixel that fit each training view and
  float in the held-out ones (3000 steps on 24 views of 96x72: train 37.8 dB vs held-out
  28.6 dB, 55k Gaussians; with the scaled threshold 33.1 vs 29.3 dB, 5k).  The threshold is
  scaled by ``REFERENCE_IMAGE_SIDE / long side``, so densification stops at the same size
  in *pixels* as splatfacto's on ~1000 px photos;
* Adam moves a parameter by about its lr per step, so the identity features and the
  codebook (constant lr, starting far from their targets) get the same total travel
  as in 30k steps, capped at 10x.

Runs of 30k steps or more on images of 1024 px or more get splatfacto's schedule
unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Dict

REFERENCE_STEPS = 30000
"""The run length splatfacto's defaults are tuned for."""
SMALL_IMAGE_SIDE = 256
"""Below this long side (px), the screen-size densification rules are switched off."""
MAX_LR_BOOST = 10.0
REFERENCE_IMAGE_SIDE = 1024
"""The image long side (px) splatfacto's densification threshold is tuned for."""


@dataclass(frozen=True)
class Schedule:
    """The schedule knobs this module adapts, named as in ``SplatfactoModelConfig``.

    The reference (30k-step) values come from the model config's defaults, never from here.
    """

    warmup_length: int
    refine_every: int
    resolution_schedule: int
    sh_degree_interval: int
    stop_split_at: int
    stop_screen_size_at: int
    num_downscales: int
    densify_grad_thresh: float = 0.0008
    """Screen-space gradient (normalised image coordinates) above which a Gaussian is split or duplicated."""
    feature_lr_boost: float = 1.0
    """Multiplier on the identity and codebook learning rates."""

    def as_dict(self) -> Dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


STEP_FLOORS: Dict[str, int] = {
    "warmup_length": 20,
    "refine_every": 20,
    "resolution_schedule": 50,
    "sh_degree_interval": 50,
    "stop_split_at": 100,
    "stop_screen_size_at": 100,
}
"""Smallest value of each step knob: below these densification has no time to act."""


def step_fraction(max_steps: int) -> float:
    """Share of the 30k reference run; never above 1, so long runs keep splatfacto's values."""
    if max_steps <= 0:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    return min(1.0, max_steps / REFERENCE_STEPS)


def scaled_steps(reference: int, max_steps: int, floor: int) -> int:
    """``reference`` steps of a 30k run, scaled to ``max_steps`` and kept at or above ``floor``."""
    return max(floor, int(round(reference * step_fraction(max_steps))))


def downscales_for(image_long_side: int) -> int:
    """How many 2x downscales the coarse-to-fine start may use: 2 at >= 1024 px, 1 at >= 512, else 0.

    gsplat splits any Gaussian wider than 5% of the training image and the smallest
    footprint is ~2 px, so below ~40 px everything would split at every refine.
    """
    return min(2, max(0, int(math.floor(math.log2(max(1, image_long_side) / 256)))))


def grad_threshold_factor(image_long_side: int) -> float:
    """How much to raise the densification threshold on images smaller than ``REFERENCE_IMAGE_SIDE``."""
    return max(1.0, REFERENCE_IMAGE_SIDE / max(1, image_long_side))


def feature_lr_boost(max_steps: int) -> float:
    return min(MAX_LR_BOOST, max(1.0, REFERENCE_STEPS / max_steps))


def adapted_schedule(max_steps: int, image_long_side: int, reference: Schedule) -> Schedule:
    """The schedule for a run of ``max_steps`` on training images whose long side is ``image_long_side`` px.

    ``reference`` holds the 30k-step values (splatfacto's defaults).
    """
    steps = {name: scaled_steps(getattr(reference, name), max_steps, floor) for name, floor in STEP_FLOORS.items()}
    if image_long_side < SMALL_IMAGE_SIDE:
        steps["stop_screen_size_at"] = 0
    return Schedule(
        **steps,
        num_downscales=min(reference.num_downscales, downscales_for(image_long_side)),
        densify_grad_thresh=reference.densify_grad_thresh * grad_threshold_factor(image_long_side),
        feature_lr_boost=feature_lr_boost(max_steps),
    )
