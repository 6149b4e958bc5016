"""Read a splat someone already trained: a nerfstudio run (``config.yml``) or a 3DGS PLY.

PLY layout (Inria's, as the original 3DGS code, gsplat, Postshot and
``ns-export gaussian-splat`` write it): ``x y z``, ``f_dc_0..2``, ``f_rest_*`` (SH
coefficients, channel-major), ``opacity`` (logit), ``scale_0..2`` (log), ``rot_0..3``
(quaternion w, x, y, z).  Values are kept in those raw (pre-activation) forms, which are
splatfacto's parameter forms too.

Frames: a nerfstudio run's checkpoint and ``ns-export gaussian-splat`` are in
nerfstudio's world frame (after the dataparser's orientation, centring and scale).  A PLY
trained on the raw COLMAP / ``transforms.json`` poses (original 3DGS, Postshot, ...) is in
the data frame; ``to_nerfstudio_frame`` applies the dataparser transform and scale to it.

Only numpy, torch, plyfile and yaml here; nerfstudio classes are needed only to unpickle a
``config.yml`` and are imported there.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

REQUIRED_PLY = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
SH_C0 = 0.28209479177387814
SPLAT_PARAMS = ("means", "scales", "quats", "features_dc", "features_rest", "opacities")


class SplatInputError(ValueError):
    """A splat file the frozen method cannot use; the message names the file and the fix."""


@dataclass
class GaussianSplat:
    """Gaussians in splatfacto's parameter forms: log scales, opacity logits, SH DC + rest."""

    means: Tensor  # [N,3]
    scales: Tensor  # [N,3] log
    quats: Tensor  # [N,4] w, x, y, z
    opacities: Tensor  # [N,1] logit
    features_dc: Tensor  # [N,3] SH DC, or (degree 0) logit RGB: splatfacto's convention
    features_rest: Tensor  # [N,(deg+1)^2-1,3]
    source: Path

    @property
    def num_points(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        return sh_degree_of(self.features_rest.shape[1] + 1, self.source)


def sh_degree_of(num_bases: int, source: Path) -> int:
    degree = int(round(math.sqrt(num_bases))) - 1
    if (degree + 1) ** 2 != num_bases or degree > 3:
        raise SplatInputError(f"{source}: {num_bases} SH coefficients per colour channel is not (degree+1)^2 for a degree 0-3; the file is not a 3DGS splat.")
    return degree


def read_3dgs_ply(path: Path) -> GaussianSplat:
    """A standard 3DGS PLY, read with plyfile."""
    from plyfile import PlyData

    try:
        ply = PlyData.read(str(path))
        vertex = ply["vertex"]
    except Exception as err:  # plyfile raises several types for a non-PLY file
        raise SplatInputError(f"{path} is not a readable PLY ({type(err).__name__}: {err}). Pass a 3DGS PLY or a run's config.yml.") from None
    names = [p.name for p in vertex.properties]
    missing = [p for p in REQUIRED_PLY if p not in names]
    if missing:
        raise SplatInputError(
            f"{path} has no 3DGS properties {', '.join(missing)}: it is a point cloud, not a Gaussian splat. "
            "Pass a 3DGS PLY (Inria layout, e.g. from `ns-export gaussian-splat`) or the run's config.yml."
        )
    data = vertex.data

    def cols(keys):
        return torch.from_numpy(np.stack([np.asarray(data[k], dtype=np.float32) for k in keys], -1))

    rest_keys = sorted((n for n in names if re.fullmatch(r"f_rest_\d+", n)), key=lambda n: int(n.split("_")[-1]))
    n = len(data)
    if len(rest_keys) % 3:
        raise SplatInputError(f"{path} has {len(rest_keys)} f_rest_* properties, not a multiple of 3. Re-export the splat.")
    per_channel = len(rest_keys) // 3
    rest = cols(rest_keys).reshape(n, 3, per_channel).transpose(1, 2) if rest_keys else torch.zeros(n, 0, 3)
    dc = cols(("f_dc_0", "f_dc_1", "f_dc_2"))
    if not rest_keys:  # splatfacto keeps degree-0 colours as logit RGB; PLYs always hold the SH DC term
        dc = torch.logit((dc * SH_C0 + 0.5).clamp(1e-4, 1 - 1e-4))
    splat = GaussianSplat(
        means=cols(("x", "y", "z")),
        scales=cols(("scale_0", "scale_1", "scale_2")),
        quats=cols(("rot_0", "rot_1", "rot_2", "rot_3")),
        opacities=cols(("opacity",)),
        features_dc=dc,
        features_rest=rest.contiguous(),
        source=Path(path),
    )
    splat.sh_degree  # validates the coefficient count
    return splat


def latest_checkpoint(config_path: Path) -> Path:
    ckpts = sorted((config_path.parent / "nerfstudio_models").glob("step-*.ckpt"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
    if not ckpts:
        raise SplatInputError(f"{config_path}: no checkpoint in {config_path.parent / 'nerfstudio_models'}. Train the run (or pass its PLY) first.")
    return ckpts[-1]


def read_nerfstudio_run(config_path: Path) -> GaussianSplat:
    """The Gaussians of a splatfacto (or unified-lift) run from its ``config.yml`` and latest checkpoint."""
    import yaml
    from nerfstudio.models.splatfacto import SplatfactoModelConfig

    try:
        config = yaml.load(Path(config_path).read_text(), Loader=yaml.Loader)
        model_config = config.pipeline.model
    except Exception as err:
        raise SplatInputError(f"{config_path} is not a nerfstudio run config ({type(err).__name__}). Pass the config.yml that ns-train wrote, or a 3DGS PLY.") from None
    if not isinstance(model_config, SplatfactoModelConfig):
        method = getattr(config, "method_name", type(model_config).__name__)
        raise SplatInputError(
            f"{config_path} is a '{method}' run, not a Gaussian splat: only splatfacto-style runs (splatfacto, unified-lift) "
            "have Gaussians to segment. Train one with `ns-train splatfacto --data SCENE` or pass a 3DGS PLY."
        )
    ckpt = latest_checkpoint(Path(config_path))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["pipeline"]
    prefix = next((p for p in ("_model.gauss_params.", "_model.") if f"{p}means" in state), None)
    if prefix is None:
        raise SplatInputError(f"{ckpt} holds no Gaussian parameters (_model.gauss_params.means). Pass the run's config.yml or a 3DGS PLY.")
    p = {k: state[f"{prefix}{k}"].float() for k in SPLAT_PARAMS}
    splat = GaussianSplat(
        p["means"], p["scales"], p["quats"], p["opacities"].reshape(-1, 1), p["features_dc"], p["features_rest"], Path(config_path)
    )
    if splat.sh_degree != model_config.sh_degree:
        raise SplatInputError(
            f"{ckpt} has SH degree {splat.sh_degree} but its {config_path} says sh_degree {model_config.sh_degree}: "
            "the checkpoint belongs to another run. Point --pipeline.model.splat at the config.yml next to that checkpoint."
        )
    return splat


def load_splat(path: Path) -> GaussianSplat:
    """A 3DGS ``.ply`` or a nerfstudio run's ``config.yml``."""
    path = Path(path)
    if not path.is_file():
        raise SplatInputError(f"{path} does not exist. Pass --pipeline.model.splat PATH: a run's config.yml or a 3DGS .ply.")
    if path.suffix.lower() == ".ply":
        return read_3dgs_ply(path)
    if path.suffix.lower() in (".yml", ".yaml"):
        return read_nerfstudio_run(path)
    raise SplatInputError(f"{path}: expected a .ply (3DGS) or a run's config.yml.")


def to_nerfstudio_frame(splat: GaussianSplat, transform: Tensor, scale: float) -> GaussianSplat:
    """Data-frame Gaussians in nerfstudio's world: ``x' = scale · (R x + t)``, rotations by R, log scales + log(scale).

    ``transform [3,4]`` is the dataparser transform (rotation ``R`` and translation ``t``).
    View-dependent SH coefficients (degree >= 1) are not rotated: only the viewer's colours
    depend on them, never the segmentation.
    """
    rot, trans = transform[:3, :3].float(), transform[:3, 3].float()
    means = scale * (splat.means @ rot.T + trans)
    q = torch.nn.functional.normalize(splat.quats, dim=-1)
    qr = _rotmat_to_quat(rot)
    quats = _quat_mul(qr.expand_as(q), q)
    return replace(splat, means=means, quats=quats, scales=splat.scales + math.log(scale))


def _quat_mul(a: Tensor, b: Tensor) -> Tensor:
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
         aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], -1
    )


def _rotmat_to_quat(r: Tensor) -> Tensor:
    """(w, x, y, z) of a proper rotation matrix (Shepperd's method via the largest diagonal term)."""
    m = r.double()
    tr = m.trace()
    cands = torch.stack([tr, m[0, 0], m[1, 1], m[2, 2]])
    i = int(torch.argmax(cands))
    if i == 0:
        s = torch.sqrt(tr + 1.0) * 2
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif i == 1:
        s = torch.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2]) * 2
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif i == 2:
        s = torch.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2]) * 2
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = torch.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1]) * 2
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    return torch.stack(q).float()


def write_3dgs_ply(path: Path, splat: GaussianSplat, extra_props: Optional[dict] = None) -> None:
    """Write Inria's layout (used by tests and the benchmark) with the exporter's writer, as ``ns-export gaussian-splat`` does."""
    from ulift_ns.export import ply_array_from_params, write_ply

    array = ply_array_from_params(
        splat.means, splat.features_dc, splat.features_rest, splat.opacities, splat.scales, splat.quats,
        sh_degree=splat.sh_degree, extra=extra_props,
    )  # fmt: skip
    write_ply(Path(path), array)
