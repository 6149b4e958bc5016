"""Named method variants: the full method, the paper's ablation ladder and the baselines.

Each preset is a function of the lifting-loss config plus how labels are read out:
``"codebook"`` (argmax over the codebook, the method's own rule) or ``"hdbscan"``
(cluster rendered features, the Contrastive Lift / SAGA style), or ``"sam"`` (the raw
per-view masks, no training).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Dict, Literal

from ulift_ns.lift.objective import LiftLossConfig

Readout = Literal["codebook", "hdbscan", "sam"]


@dataclass(frozen=True)
class Preset:
    description: str
    readout: Readout
    lift: Callable[[LiftLossConfig], LiftLossConfig]


def _codebook(area_normalised: bool, concentration: bool, filtering: bool) -> Callable[[LiftLossConfig], LiftLossConfig]:
    def apply(c: LiftLossConfig) -> LiftLossConfig:
        return replace(
            c,
            use_codebook=True,
            area_normalised=area_normalised,
            concentration_weight=c.concentration_weight if concentration else 0.0,
            use_filter=filtering,
        )

    return apply


def _panoptic_lifting(c: LiftLossConfig) -> LiftLossConfig:
    # Panoptic Lifting: features trained by the matched cross-entropy alone, area-normalised matching.
    return replace(
        c,
        contrastive_weight=0.0,
        use_codebook=True,
        area_normalised=True,
        codebook_grad_to_features=True,
        concentration_weight=0.0,
        use_filter=False,
        skip_if_all_correct=True,
    )


PRESETS: Dict[str, Preset] = {
    "sam": Preset("raw per-view SAM masks (no lifting)", "sam", lambda c: c),
    "contrastive-hdbscan": Preset(
        "contrastive features + HDBSCAN (Contrastive Lift / SAGA style)",
        "hdbscan",
        lambda c: replace(c, use_codebook=False),
    ),
    "panoptic-lifting": Preset("Panoptic Lifting: area-normalised Hungarian + CE", "codebook", _panoptic_lifting),
    "ladder-codebook": Preset("contrastive + codebook (area-normalised matching)", "codebook", _codebook(True, False, False)),
    "ladder-area-aware": Preset("+ area-aware matching", "codebook", _codebook(False, False, False)),
    "ladder-concentration": Preset("+ concentration loss", "codebook", _codebook(False, True, False)),
    "full": Preset("+ noisy-label filtering = Unified-Lift", "codebook", _codebook(False, True, True)),
}

LADDER = ("contrastive-hdbscan", "ladder-codebook", "ladder-area-aware", "ladder-concentration", "full")
BASELINES = ("sam", "contrastive-hdbscan", "panoptic-lifting")
