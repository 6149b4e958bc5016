"""Export the segmented splat: a standard 3DGS PLY per object, the scene with ``instance_id``, ``objects.json``.

``ns-export gaussian-splat`` only knows splatfacto and writes its PLY one float at a
time in Python.  Here the same file is built as one numpy structured array and written
with plyfile in a single call:

* Property names and order are exactly those of ``ns-export gaussian-splat``
  (``ply_color_mode="sh_coeffs"``): ``x y z nx ny nz f_dc_0..2 [f_rest_0..] opacity
  scale_0..2 rot_0..3``, all float32, binary little endian.  With ``sh_degree == 0``
  ``f_dc`` holds ``RGB2SH(sigmoid(features_dc))`` and there is no ``f_rest``, as there.
  Values are stored as-is (log-scales, logit opacity, unnormalised quaternions), as there.
* Like ``ns-export``, Gaussians with a NaN/inf value in any exported attribute, or with
  opacity below 1/255 (which the CUDA rasteriser skips), are dropped by default
  (``filter_gaussians=False`` keeps them).  Unlike ``ns-export``, a NaN in one
  position drops only that Gaussian (``ns-export`` reduces 1-D columns to a single flag
  and then drops every Gaussian).
* Object ids are ``1 + codebook index``, as in the rendered label maps; per Gaussian they
  come from ``model.gaussian_labels()`` (``ulift_ns.labels3d``: multi-view by default).
  ``instance_id == 0`` in ``scene_instances.ply`` marks a Gaussian in no object: unseen in
  the training views, part of an object below the minimum size, or with a non-finite feature.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ulift_ns.errors import InvalidArgumentError, MissingInputError, UserError
from ulift_ns.labelio import atomic_path, check_can_write, remove_stale_temp_files, write_json_atomic

SELECTION_FILENAME = "selection.json"
"""Written by the viewer into the run directory (``config.yml``'s folder) as ``{"ids": [...]}``."""
SCENE_FILENAME = "scene_instances.ply"
OBJECTS_FILENAME = "objects.json"
OBJECTS_FORMAT = "ulift_ns.objects/1"
LOW_OPACITY_LOGIT = -5.5373
"""logit(1/255): ns-export's threshold; Gaussians below it are invisible to the CUDA rasteriser."""

_SH_C0 = 0.28209479177387814

ArrayLike = Union[np.ndarray, Tensor]


class UnknownObjectError(UserError, ValueError):
    """Requested object ids that the model does not contain."""


class SelectionError(UserError, ValueError):
    """The viewer's selection file is missing, empty or unreadable."""


def object_filename(object_id: int) -> str:
    return f"object_{int(object_id)}.ply"


# --------------------------------------------------------------------------- PLY arrays


def standard_property_names(sh_degree: int, num_rest_coeffs: int) -> List[str]:
    """ns-export's property order; ``num_rest_coeffs`` is ``features_rest.shape[1]`` (SH bases minus one)."""
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    if sh_degree > 0:
        names += [f"f_rest_{i}" for i in range(3 * num_rest_coeffs)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    return names


def _numpy(t: ArrayLike) -> np.ndarray:
    if isinstance(t, Tensor):
        return t.detach().cpu().numpy()
    return np.asarray(t)


def _as_index(mask: Optional[ArrayLike], n: int) -> Optional[np.ndarray]:
    if mask is None:
        return None
    m = _numpy(mask)
    if m.dtype != np.bool_ or m.shape != (n,):
        raise ValueError(f"mask must be a boolean vector of length {n}, got dtype {m.dtype} and shape {m.shape}")
    return m


def float_block(array: np.ndarray, num_fields: int) -> np.ndarray:
    """``[n, num_fields]`` float32 view of the leading float32 fields of a structured array (no copy)."""
    return np.ndarray(
        shape=(array.shape[0], num_fields),
        dtype="<f4",
        buffer=array,
        offset=0,
        strides=(array.dtype.itemsize, 4),
    )


def ply_array_from_params(
    means: ArrayLike,
    features_dc: ArrayLike,
    features_rest: ArrayLike,
    opacities: ArrayLike,
    scales: ArrayLike,
    quats: ArrayLike,
    sh_degree: int,
    mask: Optional[ArrayLike] = None,
    extra: Optional[Mapping[str, ArrayLike]] = None,
) -> np.ndarray:
    """The ns-export vertex array from raw splatfacto parameters (``[N,3] [N,3] [N,K-1,3] [N,1] [N,3] [N,4]``).

    ``mask`` (bool ``[N]``) selects Gaussians; ``extra`` maps property names to length-``N``
    arrays (any numeric dtype, e.g. ``int32``) appended after the standard properties.
    """
    n = int(means.shape[0])
    keep = _as_index(mask, n)

    def take(t: ArrayLike) -> np.ndarray:
        if isinstance(t, Tensor):
            t = t.detach()
            if keep is not None:
                t = t[torch.from_numpy(keep).to(t.device)]
            return t.cpu().numpy()
        a = np.asarray(t)
        return a[keep] if keep is not None else a

    if sh_degree == 0:  # splatfacto's shs_0: colours stored as logits -> SH DC, on all rows like ns-export
        logits = features_dc.detach() if isinstance(features_dc, Tensor) else torch.as_tensor(np.asarray(features_dc))
        features_dc = (torch.sigmoid(logits.float()) - 0.5) / _SH_C0
    dc = take(features_dc).reshape(-1, 3)
    rest = None
    if sh_degree > 0:
        rest = take(features_rest)
        # [M, K-1, 3] -> [M, 3, K-1] -> [M, 3(K-1)]: the Inria channel-major order ns-export writes
        rest = rest.transpose(0, 2, 1).reshape(rest.shape[0], rest.shape[1] * rest.shape[2])
    num_rest = 0 if rest is None else rest.shape[1] // 3
    names = standard_property_names(sh_degree, num_rest)
    extras = {name: take(values) for name, values in (extra or {}).items()}
    for name, values in extras.items():
        if name in names:
            raise ValueError(f"extra property {name!r} clashes with a standard 3DGS property")
        if values.ndim != 1 or values.shape[0] != dc.shape[0]:
            raise ValueError(f"extra property {name!r} must be a vector of length {n} before masking")

    dtype = np.dtype([(name, "<f4") for name in names] + [(k, v.dtype.newbyteorder("<")) for k, v in extras.items()])
    m = dc.shape[0]
    out = np.empty(m, dtype=dtype)
    if m == 0:
        return out
    block = float_block(out, len(names))
    c = 0

    def put(values: np.ndarray, width: int) -> None:
        nonlocal c
        block[:, c : c + width] = values.reshape(m, width)
        c += width

    put(take(means), 3)
    block[:, c : c + 3] = 0.0  # normals
    c += 3
    put(dc, 3)
    if rest is not None:
        put(rest, rest.shape[1])
    put(take(opacities), 1)
    put(take(scales), 3)
    put(take(quats), 4)
    for name, values in extras.items():
        out[name] = values
    return out


def gaussian_ply_array(
    model, mask: Optional[ArrayLike] = None, extra: Optional[Mapping[str, ArrayLike]] = None
) -> np.ndarray:
    """The model's Gaussians (optionally ``mask``-ed) as the structured array ``ns-export gaussian-splat`` writes."""
    p = model.gauss_params
    return ply_array_from_params(
        p["means"], p["features_dc"], p["features_rest"], p["opacities"], p["scales"], p["quats"],
        sh_degree=int(model.config.sh_degree), mask=mask, extra=extra,
    )  # fmt: skip


def write_ply(path: Path, array: np.ndarray, comments: Sequence[str] = ()) -> Path:
    """Write a structured vertex array as a binary little-endian PLY, atomically (temp file + rename)."""
    from plyfile import PlyData, PlyElement

    path = Path(path)
    element = PlyElement.describe(array, "vertex")
    header = ["Generated by ulift_ns", "Vertical Axis: z", *comments]
    ply = PlyData([element], text=False, byte_order="<", comments=header)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        ply.write(f)
    return path


# --------------------------------------------------------------------------- filtering


def _row_finite(t: Tensor) -> Tensor:
    return torch.isfinite(t.detach().reshape(t.shape[0], -1)).all(dim=1)


@torch.no_grad()
def export_filter(model) -> Dict[str, Tensor]:
    """Per-Gaussian masks as ns-export: ``finite`` (all exported attributes), ``visible`` (opacity >= 1/255)."""
    p = model.gauss_params
    names = ["means", "features_dc", "opacities", "scales", "quats"]
    if model.config.sh_degree > 0:
        names.append("features_rest")
    finite = torch.ones(p["means"].shape[0], dtype=torch.bool, device=p["means"].device)
    for name in names:
        finite &= _row_finite(p[name])
    opacity = p["opacities"].detach().reshape(-1)
    visible = ~(opacity < LOW_OPACITY_LOGIT)  # NaN opacity is caught by ``finite``
    return {"finite": finite.cpu(), "visible": visible.cpu()}


# --------------------------------------------------------------------------- selection file


def selection_path(run: Path) -> Path:
    """``RUN_DIR/selection.json`` for a run directory or its ``config.yml``."""
    run = Path(run)
    return (run.parent if run.suffix in (".yml", ".yaml") or run.is_file() else run) / SELECTION_FILENAME


def write_selection(run: Path, ids: Iterable[int]) -> Path:
    """Store the selected object ids (for the viewer); atomic."""
    path = selection_path(run)
    write_json_atomic(path, {"ids": sorted({int(i) for i in ids})})
    return path


def read_selection(run: Path) -> List[int]:
    path = selection_path(run)
    if not path.is_file():
        raise SelectionError(
            f"No selection at {path}: click objects in the viewer first (it saves their ids there), or pass --ids."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        ids = data["ids"]
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise TypeError("'ids' must be a list of integers")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SelectionError(f"Cannot read {path} ({err}); expected {{\"ids\": [3, 7]}}.") from err
    if not ids:
        raise SelectionError(f"{path} selects no objects: click objects in the viewer first, or pass --ids.")
    return sorted(set(ids))


def parse_ids(text: str) -> List[int]:
    """``"3,7"`` or ``"3 7"`` -> ``[3, 7]``."""
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        ids = [int(p) for p in parts]
    except ValueError as err:
        raise InvalidArgumentError(f"--ids must be integers separated by commas, e.g. --ids 3,7; got {text!r}") from err
    if not ids:
        raise InvalidArgumentError("--ids is empty; pass e.g. --ids 3,7, or leave it out to export every object")
    return sorted(set(ids))


# --------------------------------------------------------------------------- segmented export


def previous_export_files(output_dir: Path) -> List[Path]:
    """The files an earlier ``ulift export`` wrote into ``output_dir``, as its ``objects.json`` lists them.

    Nothing is listed for a missing, unreadable or foreign ``objects.json``: only a set we
    wrote ourselves is ever replaced as a set.
    """
    path = Path(output_dir) / OBJECTS_FILENAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(data, dict) or data.get("format") != OBJECTS_FORMAT:
        return []
    objects = data.get("objects") if isinstance(data.get("objects"), list) else []
    names = [data.get("scene_ply")] + [o.get("ply") for o in objects if isinstance(o, dict)]
    # Plain file names only: a listed "../x.ply" must never reach outside the export folder.
    files = [path.parent / n for n in names if isinstance(n, str) and n.endswith(".ply") and Path(n).name == n]
    return files + [path]



MIN_OBJECT_GAUSSIANS = 20
"""Objects with fewer Gaussians than this are not listed: their Gaussians count as unassigned."""
MIN_OBJECT_SHARE = 0.001
"""Objects holding less than this share of the scene's opacity (sum of sigmoid(opacity)) are not listed either."""
BBOX_FAINT_SHARE = 0.01
"""Bounding boxes ignore the faintest 1% of an object's Gaussians (by opacity)."""


def robust_bbox(points: np.ndarray, opacity: np.ndarray, faint_share: float = BBOX_FAINT_SHARE):
    """Min / max corner of ``points`` ``[n,3]`` after dropping the faintest ``faint_share`` of them."""
    n = points.shape[0]
    drop = int(np.floor(faint_share * n))
    if drop > 0:
        points = points[np.argsort(opacity, kind="stable")[drop:]]
    return points.min(axis=0), points.max(axis=0)


def real_objects(
    labels: np.ndarray, opacity: np.ndarray, min_gaussians: int = MIN_OBJECT_GAUSSIANS, min_share: float = MIN_OBJECT_SHARE
) -> np.ndarray:
    """Labels (> 0) with at least ``min_gaussians`` Gaussians and ``min_share`` of the total opacity, sorted."""
    present, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    mass = np.bincount(inverse.reshape(-1), weights=opacity.astype(np.float64), minlength=present.size)
    total = max(float(opacity.sum()), 1e-12)
    ok = (present > 0) & (counts >= min_gaussians) & (mass / total >= min_share)
    return present[ok]


def _object_table(labels: np.ndarray, means: np.ndarray, prob: np.ndarray, opacity: np.ndarray):
    """Per present label (> 0): count, robust bbox min/max, mean probability and opacity share."""
    present = np.unique(labels[labels > 0])
    counts = np.array([int((labels == i).sum()) for i in present], dtype=np.int64)
    bbox_min, bbox_max = np.zeros((present.size, 3)), np.zeros((present.size, 3))
    mean_prob, share = np.zeros(present.size), np.zeros(present.size)
    total = max(float(opacity.sum()), 1e-12)
    for k, label in enumerate(present):
        sel = labels == label
        bbox_min[k], bbox_max[k] = robust_bbox(means[sel].astype(np.float64), opacity[sel])
        mean_prob[k] = float(prob[sel].astype(np.float64).mean())
        share[k] = float(opacity[sel].sum()) / total
    return present, counts, bbox_min, bbox_max, mean_prob, share


@torch.no_grad()
def export_segmented(
    model,
    output_dir: Path,
    ids: Optional[Sequence[int]] = None,
    overwrite: bool = False,
    filter_gaussians: bool = True,
    label_rule: Optional[str] = None,
    min_gaussians: int = MIN_OBJECT_GAUSSIANS,
    min_share: float = MIN_OBJECT_SHARE,
) -> dict:
    """Write ``object_<id>.ply`` per object (all, or only ``ids``), ``scene_instances.ply`` and ``objects.json``.

    Labels come from ``model.gaussian_labels(label_rule)`` (default: the model's rule, multi-view).
    Only real objects are listed (``min_gaussians``, ``min_share`` of the opacity); the Gaussians
    of smaller ones, and unseen ones, are unassigned: ``instance_id`` 0 and in no object's PLY.

    Every target is checked before anything is written, so an existing file (without
    ``overwrite``) or an unknown id leaves ``output_dir`` untouched.  With ``overwrite``
    the earlier export's set is replaced: the files its ``objects.json`` lists and this one
    does not write are removed, and nothing else.  Returns the content of ``objects.json``.
    """
    output_dir = Path(output_dir)
    n_total = int(model.gauss_params["means"].shape[0])
    labels_t, prob_t = model.gaussian_labels(label_rule)
    labels = labels_t.detach().cpu().numpy().astype(np.int64)
    prob = prob_t.detach().cpu().numpy().astype(np.float64)
    labels = np.where(np.isfinite(prob), labels, 0)  # non-finite identity: no object
    prob = np.where(np.isfinite(prob), prob, 0.0)

    masks = export_filter(model)
    finite, visible = masks["finite"].numpy(), masks["visible"].numpy()
    keep = finite & visible if filter_gaussians else np.ones(n_total, dtype=bool)
    dropped = {
        "non_finite": int((~finite).sum()) if filter_gaussians else 0,
        "low_opacity": int((finite & ~visible).sum()) if filter_gaussians else 0,
    }

    opacity = torch.sigmoid(model.gauss_params["opacities"].detach().float()).reshape(-1).cpu().numpy().astype(np.float64)
    opacity = np.nan_to_num(opacity, nan=0.0)
    unseen = int((labels[keep] == 0).sum())
    real = real_objects(labels[keep], opacity[keep], min_gaussians, min_share)
    small = np.setdiff1d(np.unique(labels[keep][labels[keep] > 0]), real)
    small_gaussians = int(np.isin(labels[keep], small).sum())
    labels = np.where(np.isin(labels, real), labels, 0)
    kept_labels = labels[keep]
    means = model.gauss_params["means"].detach().cpu().numpy()[keep]
    present, counts, bbox_min, bbox_max, mean_prob, share = _object_table(kept_labels, means, prob[keep], opacity[keep])
    existing = [int(i) for i in present]

    if ids is None:
        selected = existing
    else:
        selected = sorted({int(i) for i in ids})
        unknown = [i for i in selected if i not in set(existing)]
        if unknown:
            raise UnknownObjectError(
                f"No object with id {', '.join(map(str, unknown))}. Existing object ids "
                f"({len(existing)}): {', '.join(map(str, existing)) or 'none'}."
            )

    targets = [output_dir / object_filename(i) for i in selected]
    targets += [output_dir / SCENE_FILENAME, output_dir / OBJECTS_FILENAME]
    for path in targets:
        check_can_write(path, overwrite)
    remove_stale_temp_files(output_dir)  # left by an export that was killed
    replaced = previous_export_files(output_dir) if overwrite else []

    scene = gaussian_ply_array(model, mask=keep, extra={"instance_id": labels.astype(np.int32)})
    num_std = len(scene.dtype.names) - 1
    std_dtype = np.dtype([(name, "<f4") for name in scene.dtype.names[:num_std]])
    floats = float_block(scene, num_std) if scene.shape[0] else np.zeros((0, num_std), np.float32)
    palette = model.palette.detach().cpu().numpy()

    row = {int(label): k for k, label in enumerate(present)}
    selected_set = set(selected)
    objects = []
    for label in existing:
        k = row[label]
        colour = palette[label - 1] if 0 < label <= palette.shape[0] else np.zeros(3)
        objects.append(
            {
                "id": label,
                "codebook_index": label - 1,
                "num_gaussians": int(counts[k]),
                "bbox_min": [float(v) for v in bbox_min[k]],
                "bbox_max": [float(v) for v in bbox_max[k]],
                "color": [int(v) for v in np.clip(np.round(colour * 255.0), 0, 255)],
                "mean_confidence": float(mean_prob[k]),
                "opacity_share": float(share[k]),
                "ply": object_filename(label) if label in selected_set else None,
            }
        )

    from ulift_ns.progress import track

    for label in track(selected, "Exporting objects"):
        part = np.ascontiguousarray(floats[kept_labels == label]).view(std_dtype).reshape(-1)
        write_ply(output_dir / object_filename(label), part, comments=[f"ulift_ns object {label}"])
    write_ply(output_dir / SCENE_FILENAME, scene, comments=["instance_id: 1 + codebook index, 0 = unassigned (unseen or too small)"])

    for path in set(replaced) - set(targets):  # --overwrite replaces the earlier export as a set
        path.unlink(missing_ok=True)
    summary = {
        "format": OBJECTS_FORMAT,
        "num_gaussians": int(keep.sum()),
        "num_gaussians_model": n_total,
        "filtered": bool(filter_gaussians),
        "dropped": dropped,
        "unassigned": int((kept_labels == 0).sum()),
        "unassigned_detail": {
            "unseen_or_no_label": unseen,
            "small_objects": int(small.size),
            "small_object_gaussians": small_gaussians,
            "min_gaussians": int(min_gaussians),
            "min_share": float(min_share),
        },
        "label_rule": str(label_rule or getattr(model.config, "label_rule", "feature")),
        "sh_degree": int(model.config.sh_degree),
        "scene_ply": SCENE_FILENAME,
        "exported_ids": selected,
        "objects": objects,
    }
    write_json_atomic(output_dir / OBJECTS_FILENAME, summary)
    return summary


def check_export_targets(output_dir: Path, ids: Optional[Sequence[int]], overwrite: bool) -> None:
    """The existing-file check ``export_segmented`` repeats, done before loading (every object when ``ids`` is None)."""
    if overwrite:
        return
    names = [SCENE_FILENAME, OBJECTS_FILENAME]
    names += [object_filename(i) for i in ids] if ids is not None else [p.name for p in sorted(Path(output_dir).glob("object_*.ply"))]
    for name in names:
        check_can_write(Path(output_dir) / name, overwrite)


def run_export(
    load_config: Path,
    output_dir: Path,
    ids: Optional[str] = None,
    selection: bool = False,
    overwrite: bool = False,
    label_rule: Optional[str] = None,
    min_gaussians: int = MIN_OBJECT_GAUSSIANS,
    min_share: float = MIN_OBJECT_SHARE,
) -> dict:
    """What ``ulift export`` does: resolve the ids, check the outputs, load the model (checkpoint only), export."""
    if ids is not None and selection:
        raise InvalidArgumentError("pass either --ids or --selection, not both")
    if not Path(load_config).is_file():
        from ulift_ns.runs import CONFIG_HELP

        raise MissingInputError(f"{load_config} does not exist: {CONFIG_HELP}.")
    wanted = parse_ids(ids) if ids is not None else (read_selection(load_config) if selection else None)
    check_export_targets(Path(output_dir), wanted, overwrite)  # before the ~seconds of loading

    from ulift_ns.predict import load_pipeline

    from ulift_ns.health import usable_model

    pipeline = load_pipeline(Path(load_config), test_mode="inference")
    model = usable_model(pipeline.model, "ulift export", drop=False)
    return export_segmented(
        model, output_dir, ids=wanted, overwrite=overwrite, label_rule=label_rule, min_gaussians=min_gaussians, min_share=min_share
    )
