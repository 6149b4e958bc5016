"""Non-finite values: stop a diverging run at its first bad step, keep them out of renders and exports.

A learning rate far too high (say ``--optimizers.scales.optimizer.lr 1e4``) turns parameters
into inf/NaN within a few steps; training would carry on, save NaN checkpoints and exit 0,
and ``ulift render`` / ``ulift export`` would then write empty maps or no objects without
a word.  The checks here are one device sync per call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence, Tuple

import torch
from torch import Tensor

LR_SUSPICIOUS_FACTOR = 20.0
"""A group's lr this many times above the method's default is named as the likely cause (short runs boost
the identity and codebook rates by up to 10x)."""


class NonFiniteTrainingError(SystemExit):
    """Training produced a non-finite loss or parameter; ``ns-train`` prints the message, no traceback."""


class NonFiniteModelError(ValueError):
    """A trained model is unusable because of non-finite values; the message says what and the fix."""


def non_finite_names(tensors: Mapping[str, Sequence[Tensor]]) -> List[str]:
    """Names whose tensors hold any inf/NaN, in the mapping's order (one host sync for all of them)."""
    names = [name for name, ts in tensors.items() for _ in ts]
    if not names:
        return []
    first = next(t for ts in tensors.values() for t in ts)
    flags = torch.stack([torch.isfinite(t.detach()).all().to(first.device) for ts in tensors.values() for t in ts]).cpu()
    bad = []
    for name, ok in zip(names, flags.tolist()):
        if not ok and name not in bad:
            bad.append(name)
    return bad


def divergence_message(
    step: int,
    bad_losses: Sequence[str],
    bad_groups: Sequence[str],
    lrs: Mapping[str, float],
    default_lrs: Mapping[str, float],
    checkpoint_note: str,
) -> str:
    """What went non-finite at ``step``, the likely cause and the fix, for a user."""
    what = []
    if bad_losses:
        what.append(f"loss term(s) {', '.join(bad_losses)}")
    if bad_groups:
        what.append(f"parameter group(s) {', '.join(bad_groups)}")
    high = [
        g for g in list(bad_groups) + [g for g in lrs if g not in bad_groups]
        if g in lrs and g in default_lrs and lrs[g] > LR_SUSPICIOUS_FACTOR * default_lrs[g]
    ]  # fmt: skip
    if high:
        g = high[0]
        cause = (
            f"Likely cause: the learning rate of '{g}' is {lrs[g]:.3g}, {lrs[g] / default_lrs[g]:.0f}x the method's "
            f"{default_lrs[g]:.3g}; lower it (--optimizers.{g}.optimizer.lr)."
        )
    elif bad_groups:
        g = bad_groups[0]
        cause = (
            f"Likely cause: an update too large for '{g}' (lr {lrs.get(g, float('nan')):.3g}); lower its learning rate "
            f"(--optimizers.{g}.optimizer.lr) or check the inputs for NaN/inf (images, seed points)."
        )
    else:
        cause = "Likely cause: degenerate input to that loss (check the images and masks for NaN/inf)."
    return f"Training stopped at step {step}: non-finite {' and '.join(what)}. {cause} {checkpoint_note}"


def finite_gaussians(gauss_params: Mapping[str, Tensor]) -> Tensor:
    """bool ``[N]``: the Gaussians whose every per-Gaussian value is finite."""
    keep = None
    for value in gauss_params.values():
        row = torch.isfinite(value.detach().reshape(value.shape[0], -1)).all(dim=1)
        keep = row if keep is None else keep & row
    assert keep is not None
    return keep


def check_usable(model) -> Tuple[Tensor, int]:
    """``(finite mask [N], N)`` of a trained model; ``NonFiniteModelError`` if nothing usable is left.

    Unusable: a non-finite codebook (no label can be read) or no finite Gaussian at all.
    """
    total = int(model.gauss_params["means"].shape[0])
    fix = "the run diverged: retrain it with lower learning rates (training now stops at the first non-finite step)"
    codebook = getattr(model, "codebook", None)
    if codebook is not None and not bool(torch.isfinite(codebook).all()):
        raise NonFiniteModelError(f"The model's codebook holds non-finite values, so no label can be read: {fix}.")
    keep = finite_gaussians(model.gauss_params)
    if total and not bool(keep.any()):
        raise NonFiniteModelError(f"All {total} Gaussians of the model hold non-finite values: {fix}.")
    return keep, total


def drop_non_finite_gaussians(model) -> Tuple[int, int]:
    """Remove the Gaussians with a non-finite value from a loaded model; ``(dropped, total)``."""
    keep, total = check_usable(model)
    dropped = total - int(keep.sum())
    if dropped:
        params: Dict[str, Tensor] = dict(model.gauss_params.items())
        for name, value in params.items():
            model.gauss_params[name] = torch.nn.Parameter(value.detach()[keep], requires_grad=value.requires_grad)
    return dropped, total


def usable_model(model, command: str, drop: bool = True):
    """Refuse an unusable model; otherwise say how many Gaussians are non-finite and (``drop``) remove them.

    ``ulift render`` drops them (a NaN Gaussian would blank every pixel it touches);
    ``ulift export`` keeps its own per-Gaussian rule (non-finite geometry is left out,
    a non-finite identity belongs to no object) and only reports the count.
    """
    if drop:
        bad, total = drop_non_finite_gaussians(model)
        action = "dropped"
    else:
        keep, total = check_usable(model)
        bad, action = total - int(keep.sum()), "left out of every object:"
    if bad:
        from nerfstudio.utils.rich_utils import CONSOLE

        CONSOLE.print(
            f"[yellow]{command}: {action} {bad} of {total} Gaussians with non-finite values (the run diverged; "
            "retrain with lower learning rates for a clean model)."
        )
    return model


@dataclass(frozen=True)
class SplatHealth:
    """How sound a trained splat is: fit on the training views vs the held-out ones, and its density.

    A splat that over-fits (floaters, Gaussians far smaller than a pixel) shows a held-out PSNR far
    below the training PSNR and many Gaussians per training pixel.
    """

    psnr_train: float
    psnr_eval: float
    gaussians: int
    image_size: Tuple[int, int]
    """``(width, height)`` of the largest training image."""

    @property
    def psnr_gap(self) -> float:
        """Training minus held-out PSNR (dB); small is good, NaN without held-out views."""
        return self.psnr_train - self.psnr_eval

    @property
    def gaussians_per_pixel(self) -> float:
        """Gaussians per pixel of one training image."""
        return self.gaussians / max(1, self.image_size[0] * self.image_size[1])

    def as_dict(self) -> Dict[str, float]:
        return {
            "psnr_train": self.psnr_train,
            "psnr_eval": self.psnr_eval,
            "psnr_gap": self.psnr_gap,
            "gaussians": float(self.gaussians),
            "gaussians_per_pixel": self.gaussians_per_pixel,
        }

    def line(self) -> str:
        return (
            f"Splat health: PSNR {self.psnr_train:.2f} dB on training views, {self.psnr_eval:.2f} dB held out "
            f"(gap {self.psnr_gap:.2f} dB); {self.gaussians} Gaussians = {self.gaussians_per_pixel:.2f} per pixel "
            f"of a {self.image_size[0]}x{self.image_size[1]} training image"
        )
