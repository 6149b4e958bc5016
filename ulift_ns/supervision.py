"""What the masks give training to learn from, summarised before the first step.

All-zero masks would train silently with no lifting loss at all; masks with more ids
than codebook rows lose the surplus from the codebook losses.  Pure numpy: the trainer
feeds the cached label maps in and prints the summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

import numpy as np


@dataclass(frozen=True)
class MaskSummary:
    folder: str
    """Where the masks came from (named in errors)."""
    num_views: int
    labelled_fraction: float
    """Share of all pixels, over every view, with a label > 0."""
    ids_per_view: List[int]
    unlabelled_views: List[str] = field(default_factory=list)
    """Views whose mask is all zero."""
    surplus_views: List[Tuple[str, int]] = field(default_factory=list)
    """``(view, ids)`` for views with more ids than codebook rows."""
    codebook_size: int = 0

    @property
    def labelled(self) -> bool:
        return self.labelled_fraction > 0.0


def summarise_masks(stems: Sequence[str], label_maps: Sequence[np.ndarray], codebook_size: int, folder: str) -> MaskSummary:
    """Labelled share, ids per view, all-zero views and views with more ids than ``codebook_size``."""
    labelled = total = 0
    ids, unlabelled, surplus = [], [], []
    for stem, labels in zip(stems, label_maps):
        labels = np.asarray(labels)
        present = np.unique(labels[labels > 0])
        labelled += int((labels > 0).sum())
        total += int(labels.size)
        ids.append(int(present.size))
        if present.size == 0:
            unlabelled.append(stem)
        if present.size > codebook_size:
            surplus.append((stem, int(present.size)))
    return MaskSummary(
        folder=folder,
        num_views=len(ids),
        labelled_fraction=labelled / max(1, total),
        ids_per_view=ids,
        unlabelled_views=unlabelled,
        surplus_views=surplus,
        codebook_size=codebook_size,
    )


def summary_lines(summary: MaskSummary) -> List[str]:
    """The summary in a few console lines (no warnings: see ``summary_warnings``)."""
    ids = np.asarray(summary.ids_per_view) if summary.ids_per_view else np.zeros(1, dtype=int)
    return [
        f"Masks in {summary.folder}: {summary.num_views} training views, {100 * summary.labelled_fraction:.1f}% of pixels "
        f"labelled, ids per view min {ids.min()} / median {int(np.median(ids))} / max {ids.max()} "
        f"(codebook rows: {summary.codebook_size}).",
    ]


def _some(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def summary_warnings(summary: MaskSummary) -> List[str]:
    out = []
    if summary.labelled and summary.unlabelled_views:
        out.append(
            f"{len(summary.unlabelled_views)} of {summary.num_views} views have no labelled pixel (the lifting losses skip "
            f"them): {_some(summary.unlabelled_views)}."
        )
    if summary.surplus_views:
        worst = max(n for _, n in summary.surplus_views)
        out.append(
            f"{len(summary.surplus_views)} views have more mask ids than the codebook's {summary.codebook_size} rows (up to "
            f"{worst}); the surplus masks are left out of the codebook losses: "
            f"{_some([s for s, _ in summary.surplus_views])}. Raise --pipeline.model.codebook-size to at least {worst}."
        )
    return out
