"""Built-in, deterministic demo scene for Unified-Lift (no download needed).

:func:`generate_demo_scene` ray-casts a small synthetic tabletop scene with numpy
and writes it in nerfstudio's ``transforms.json`` layout, together with
ground-truth instance masks and *SAM-like* (noisy, view-inconsistent) masks::

    DIR/
      transforms.json        nerfstudio layout, camera_model OPENCV, no distortion
                             (or k1, k2 with ``distortion=(k1, k2)`` / ``--distortion K1 K2``)
      sparse_pc.ply          seed point cloud (binary PLY: x,y,z float, red,green,blue uchar)
      images/<stem>.png      RGB uint8
      gt_masks/<stem>.png    uint16 instance ids, consistent across views
                             (0 = ground / sky / void, objects 1..K)
      sam_masks/<stem>.png   uint16 SAM-like ids, *not* consistent across views
                             (0 = unlabelled)
      demo_meta.json         parameters, noise settings, objects, per-view noise events

Scene
-----
World frame is Z-up; the ground is a textured disk on ``z = 0``; beyond it there
is a sky whose colour depends only on the ray direction.  6-8 objects (boxes with
a random yaw, spheres, upright cylinders) are placed with ``np.random.default_rng(seed)``:

* two boxes share a face (they *touch*); optionally a sphere rests on top of the
  first box (touches it too);
* two spheres share the *same* colour and texture (and optionally a small box
  shares the material of the first box);
* a *small* sphere leans against a cylinder (small and touching);
* optionally a further small box.

Surfaces have a procedural solid texture (checker, stripes or value noise)
expressed in object-local coordinates, so it is view-consistent; shading is
Lambertian (ambient + one directional light with hard shadows), hence
view-independent, which a Gaussian-splat reconstruction can fit exactly.

Cameras are on a ring around the scene centre with varying elevation (about
15-45 degrees), radius and azimuth jitter, all looking at (roughly) the centre.
``transform_matrix`` is camera-to-world in the nerfstudio/OpenGL convention:
camera looks down its -Z axis, +Y is up, +X right.  The pixel ``(row i, col j)``
is the ray through the image point ``(u, v) = (j + 0.5, i + 0.5)``, i.e. for a
camera-frame point ``(x, y, z)`` (with ``z < 0`` in front of the camera)::

    u = fl_x * x / -z + cx        v = -fl_y * y / -z + cy

which is exactly what nerfstudio uses (``pixel_offset = 0.5``).

SAM-like noise model (:class:`MaskNoiseConfig`)
-----------------------------------------------
Every view ``k`` gets its own generator ``np.random.default_rng([seed, 7919, k])``
(independent of the others and of generation order).  Starting from the visible
ground-truth objects of the view, in this order:

1. **drop** - an object whose visible area is below ``min_area`` pixels, or with
   probability ``p_drop``, gets no mask (its pixels are 0 = unlabelled);
2. **merge** (under-segmentation) - pairs of remaining objects whose masks are
   adjacent in the image (touching in 3D, or one occluding the other) are
   visited in random order and, with probability ``p_merge``, merged into one
   mask (each object takes part in at most one merge);
3. **split** (over-segmentation) - each remaining unmerged object with at least
   ``min_split_area`` pixels is, with probability ``p_split``, cut in two by a
   random line through its centroid;
4. **floor** - if ``floor_mask`` the visible ground gets its own mask (SAM
   segments the floor too), split in two by a random line through its centroid
   with probability ``p_floor_split``; the ground stays 0 in ``gt_masks``; the
   sky is never labelled;
5. **boundary noise** - each segment, with probability ``p_boundary``, is eroded
   or dilated (50/50) by ``boundary_px`` pixels (3x3 structuring element);
   segments are painted floor first, then objects in random order, so a
   dilated segment eats into its neighbours and an eroded one leaves a thin
   unlabelled ring; segments that vanish are removed;
6. **permutation** - if ``permute_ids`` the M surviving segments get the ids
   ``1..M`` in a random order, uncorrelated across views.

:meth:`MaskNoiseConfig.clean` disables 1-5 (but keeps the floor mask and the
permutation), so that ``sam_masks`` is exactly a per-view relabelling of
``gt_masks`` plus one floor id.  Every view's events (dropped/merged/split ids,
eroded/dilated segments) and the source of every SAM id are written to
``demo_meta.json`` under ``views``.

Re-running is safe: an existing non-empty directory that is not a generated demo
is never touched (error); a complete demo with the same parameters is returned
as is; a demo with different parameters is only replaced with ``overwrite=True``,
and then only the files the demo itself wrote are removed.

CLI (wired by :mod:`ulift_ns.cli` as ``ulift demo``; also ``python -m ulift_ns.demo``)::

    ulift demo --output DIR [--seed N] [--num-views 48] [--width 160] [--height 120]
               [--clean-masks] [--overwrite] [--distortion K1 K2]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from scipy import ndimage
from ulift_ns.labelio import read_label_map, write_json_atomic, write_label_png

__all__ = [
    "DEMO_FORMAT_VERSION",
    "MaskNoiseConfig",
    "DemoObject",
    "DemoScene",
    "build_scene",
    "make_cameras",
    "pixel_rays",
    "cast_rays",
    "render_view",
    "synthesize_sam_masks",
    "generate_demo_scene",
    "read_label_png",
    "write_label_png",
    "add_demo_arguments",
    "run_demo_from_args",
    "main",
]

#: Bump when the generated content changes for the same parameters.
DEMO_FORMAT_VERSION = 1
META_FILENAME = "demo_meta.json"
_EPS = 1e-6


# --------------------------------------------------------------------------- #
# Noise configuration
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class MaskNoiseConfig:
    """SAM-like corruption applied to per-view ground-truth masks (see module docstring)."""

    p_drop: float = 0.08
    """Probability that a visible object gets no mask at all in a view (pixels -> 0)."""
    min_area: int = 4
    """Objects with fewer visible pixels than this are always dropped (SAM misses tiny things)."""
    p_merge: float = 0.2
    """Probability, per adjacent pair of objects in a view, that they are merged into one mask."""
    p_split: float = 0.15
    """Probability that an object is split in two by a random line through its centroid."""
    min_split_area: int = 24
    """Objects smaller than this (pixels) are never split."""
    p_boundary: float = 0.5
    """Probability that a segment's boundary is eroded or dilated (50/50)."""
    boundary_px: int = 1
    """Erosion / dilation radius in pixels for boundary noise."""
    floor_mask: bool = True
    """Give the visible ground plane its own SAM id(s) (it stays 0 in gt_masks)."""
    p_floor_split: float = 0.3
    """Probability that the floor mask is split into two segments."""
    permute_ids: bool = True
    """Assign the ids 1..M of a view in random order (uncorrelated across views)."""

    def __post_init__(self) -> None:
        for name in ("p_drop", "p_merge", "p_split", "p_boundary", "p_floor_split"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"MaskNoiseConfig.{name} must be in [0, 1], got {value!r}")
        for name in ("min_area", "min_split_area", "boundary_px"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"MaskNoiseConfig.{name} must be >= 0")

    @classmethod
    def clean(cls) -> "MaskNoiseConfig":
        """No drops/merges/splits/boundary noise: sam = permuted gt + a floor id."""
        return cls(
            p_drop=0.0,
            min_area=0,
            p_merge=0.0,
            p_split=0.0,
            p_boundary=0.0,
            p_floor_split=0.0,
            floor_mask=True,
            permute_ids=True,
        )

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "MaskNoiseConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# --------------------------------------------------------------------------- #
# Scene description
# --------------------------------------------------------------------------- #
def _rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclass
class Material:
    """Procedural solid texture evaluated in object-local coordinates."""

    name: str
    color: Tuple[float, float, float]
    color2: Tuple[float, float, float]
    texture: str  # "checker" | "stripes" | "noise"
    scale: float
    phase: Tuple[float, float, float]
    axis: Tuple[float, float, float]
    noise_table: np.ndarray = field(repr=False)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "color": [round(float(c), 4) for c in self.color],
            "color2": [round(float(c), 4) for c in self.color2],
            "texture": self.texture,
            "scale": round(float(self.scale), 4),
        }

    def albedo(self, local: np.ndarray) -> np.ndarray:
        q = (local + np.asarray(self.phase)) / self.scale
        if self.texture == "checker":
            parity = np.floor(q).astype(np.int64).sum(axis=-1) & 1
            w = parity.astype(np.float64)
        elif self.texture == "stripes":
            w = 0.5 + 0.5 * np.sin(2.0 * math.pi * (q @ np.asarray(self.axis)))
            w = np.clip((w - 0.5) * 2.5 + 0.5, 0.0, 1.0)
        else:
            w = 0.65 * _value_noise(q, self.noise_table) + 0.35 * _value_noise(2.3 * q, self.noise_table)
            w = np.clip((w - 0.5) * 2.0 + 0.5, 0.0, 1.0)
        c1, c2 = np.asarray(self.color), np.asarray(self.color2)
        return c1[None] * (1.0 - w[:, None]) + c2[None] * w[:, None]


def _value_noise(q: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Trilinear value noise on a periodic random lattice (deterministic)."""
    n = table.shape[0]
    f = np.floor(q)
    t = q - f
    t = t * t * (3.0 - 2.0 * t)
    i = f.astype(np.int64) % n
    j = (i + 1) % n
    out = np.zeros(q.shape[0])
    for dx in (0, 1):
        ix = i[:, 0] if dx == 0 else j[:, 0]
        wx = (1.0 - t[:, 0]) if dx == 0 else t[:, 0]
        for dy in (0, 1):
            iy = i[:, 1] if dy == 0 else j[:, 1]
            wy = (1.0 - t[:, 1]) if dy == 0 else t[:, 1]
            for dz in (0, 1):
                iz = i[:, 2] if dz == 0 else j[:, 2]
                wz = (1.0 - t[:, 2]) if dz == 0 else t[:, 2]
                out += wx * wy * wz * table[ix, iy, iz]
    return out


@dataclass
class DemoObject:
    """One primitive.  ``center`` is the geometric centre in world coordinates."""

    id: int
    name: str
    shape: str  # "box" | "sphere" | "cylinder"
    center: np.ndarray
    material: Material
    size: Optional[np.ndarray] = None  # box: full extents (x, y, z) in the local frame
    radius: float = 0.0  # sphere / cylinder
    height: float = 0.0  # cylinder
    yaw: float = 0.0
    small: bool = False
    touching: List[int] = field(default_factory=list)

    @property
    def rot(self) -> np.ndarray:
        return _rot_z(self.yaw)

    def xy_radius(self) -> float:
        if self.shape == "box":
            return 0.5 * float(np.hypot(self.size[0], self.size[1]))
        return float(self.radius)

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "shape": self.shape,
            "center": [round(float(c), 5) for c in self.center],
            "yaw": round(float(self.yaw), 5),
            "small": self.small,
            "touching": sorted(self.touching),
            "color": [round(float(c), 4) for c in self.material.color],
            "material": self.material.to_dict(),
        }
        if self.shape == "box":
            d["size"] = [round(float(s), 5) for s in self.size]
        if self.shape in ("sphere", "cylinder"):
            d["radius"] = round(float(self.radius), 5)
        if self.shape == "cylinder":
            d["height"] = round(float(self.height), 5)
        return d

    # -- ray intersection ------------------------------------------------- #
    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Smallest ``t > eps`` with ``o + t d`` on the surface, ``inf`` on a miss."""
        if self.shape == "sphere":
            return _ray_sphere(o, d, self.center, self.radius)
        if self.shape == "box":
            return _ray_box(o, d, self.center, 0.5 * self.size, self.rot)
        return _ray_cylinder(o, d, self.center, self.radius, self.height)

    def normal(self, p: np.ndarray) -> np.ndarray:
        if self.shape == "sphere":
            n = p - self.center[None]
        elif self.shape == "box":
            r = self.rot
            local = (p - self.center[None]) @ r  # == (R^T (p - c))^T
            half = 0.5 * self.size
            axis = np.argmax(np.abs(local) / half[None], axis=1)
            n_local = np.zeros_like(local)
            rows = np.arange(local.shape[0])
            n_local[rows, axis] = np.sign(local[rows, axis])
            n = n_local @ r.T
        else:
            rel = p - self.center[None]
            rho = np.hypot(rel[:, 0], rel[:, 1])
            half_h = 0.5 * self.height
            side = np.abs(rho - self.radius)
            cap = np.abs(np.abs(rel[:, 2]) - half_h)
            n = np.zeros_like(p)
            is_side = side <= cap
            n[is_side, 0] = rel[is_side, 0]
            n[is_side, 1] = rel[is_side, 1]
            n[~is_side, 2] = np.sign(rel[~is_side, 2])
        return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)

    def albedo(self, p: np.ndarray) -> np.ndarray:
        local = (p - self.center[None]) @ self.rot
        return self.material.albedo(local)


def _ray_sphere(o, d, c, r):
    oc = o - c[None]
    b = np.einsum("ij,ij->i", oc, d)
    cc = np.einsum("ij,ij->i", oc, oc) - r * r
    a = np.einsum("ij,ij->i", d, d)
    disc = b * b - a * cc
    hit = disc >= 0.0
    sq = np.sqrt(np.where(hit, disc, 0.0))
    t1 = (-b - sq) / a
    t2 = (-b + sq) / a
    t = np.where(t1 > _EPS, t1, np.where(t2 > _EPS, t2, np.inf))
    return np.where(hit, t, np.inf)


def _ray_box(o, d, c, half, rot):
    lo = (o - c[None]) @ rot
    ld = d @ rot
    ld = np.where(np.abs(ld) < 1e-12, np.where(ld < 0, -1e-12, 1e-12), ld)
    inv = 1.0 / ld
    t1 = (-half[None] - lo) * inv
    t2 = (half[None] - lo) * inv
    tmin = np.max(np.minimum(t1, t2), axis=1)
    tmax = np.min(np.maximum(t1, t2), axis=1)
    hit = (tmax >= tmin) & (tmax > _EPS)
    t = np.where(tmin > _EPS, tmin, tmax)
    return np.where(hit, t, np.inf)


def _ray_cylinder(o, d, c, r, h):
    """Upright (z-axis) closed cylinder centred at ``c`` with radius ``r``, height ``h``."""
    rel = o - c[None]
    z0, z1 = -0.5 * h, 0.5 * h
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = rel[:, 0] * d[:, 0] + rel[:, 1] * d[:, 1]
    cc = rel[:, 0] ** 2 + rel[:, 1] ** 2 - r * r
    disc = b * b - a * cc
    ok = (disc >= 0.0) & (a > 1e-12)
    sq = np.sqrt(np.where(ok, disc, 0.0))
    a_safe = np.where(a > 1e-12, a, 1.0)
    best = np.full(o.shape[0], np.inf)
    for sgn in (-1.0, 1.0):
        t = (-b + sgn * sq) / a_safe
        z = rel[:, 2] + t * d[:, 2]
        valid = ok & (t > _EPS) & (z >= z0) & (z <= z1)
        best = np.where(valid & (t < best), t, best)
    dz = np.where(np.abs(d[:, 2]) < 1e-12, 1e-12, d[:, 2])
    for zc in (z0, z1):
        t = (zc - rel[:, 2]) / dz
        x = rel[:, 0] + t * d[:, 0]
        y = rel[:, 1] + t * d[:, 1]
        valid = (t > _EPS) & (x * x + y * y <= r * r)
        best = np.where(valid & (t < best), t, best)
    return best


@dataclass
class DemoScene:
    seed: int
    objects: List[DemoObject]
    ground_radius: float
    ground_material: Material
    light_dir: np.ndarray
    ambient: float = 0.35
    diffuse: float = 0.75
    sky_horizon: Tuple[float, float, float] = (0.86, 0.89, 0.93)
    sky_zenith: Tuple[float, float, float] = (0.45, 0.62, 0.88)
    target: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 0.3]))
    walls: List[DemoObject] = field(default_factory=list)
    """Background slabs (hit kind 0, like the ground); empty in the default demo."""

    def object_by_id(self, obj_id: int) -> DemoObject:
        for obj in self.objects:
            if obj.id == obj_id:
                return obj
        raise KeyError(obj_id)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "world_up": [0.0, 0.0, 1.0],
            "ground": {
                "plane": "z=0",
                "radius": self.ground_radius,
                "material": self.ground_material.to_dict(),
            },
            "light_dir": [round(float(v), 5) for v in self.light_dir],
            "ambient": self.ambient,
            "diffuse": self.diffuse,
            "sky": {"horizon": list(self.sky_horizon), "zenith": list(self.sky_zenith)},
            "target": [round(float(v), 5) for v in self.target],
            "objects": [o.to_dict() for o in self.objects],
            **({"walls": [w.to_dict() for w in self.walls]} if self.walls else {}),
        }


_PALETTE = [
    ("red", (0.82, 0.18, 0.16)),
    ("green", (0.20, 0.62, 0.24)),
    ("blue", (0.18, 0.32, 0.82)),
    ("yellow", (0.92, 0.76, 0.18)),
    ("purple", (0.58, 0.28, 0.72)),
    ("orange", (0.96, 0.50, 0.12)),
    ("teal", (0.12, 0.62, 0.64)),
    ("pink", (0.92, 0.45, 0.62)),
]


def _make_material(rng: np.random.Generator, name: str, color, texture: Optional[str] = None) -> Material:
    color = np.asarray(color, dtype=np.float64)
    if rng.random() < 0.5:
        color2 = color * 0.45
    else:
        color2 = 0.45 * color + 0.55 * np.ones(3)
    if texture is None:
        texture = str(rng.choice(["checker", "stripes", "noise"]))
    scale = {"checker": rng.uniform(0.09, 0.15), "stripes": rng.uniform(0.12, 0.2), "noise": rng.uniform(0.06, 0.1)}[
        texture
    ]
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    return Material(
        name=name,
        color=tuple(float(c) for c in color),
        color2=tuple(float(c) for c in color2),
        texture=texture,
        scale=float(scale),
        phase=tuple(float(v) for v in rng.uniform(0.0, 1.0, size=3) * scale),
        axis=tuple(float(v) for v in axis),
        noise_table=rng.random((16, 16, 16)),
    )


def build_scene(seed: int = 0, extra_objects: int = 0, walls: bool = False) -> DemoScene:
    """Deterministically lay out the demo scene for ``seed`` (no rendering).

    ``extra_objects`` adds that many more single objects (random shape, size and colour),
    ``walls`` surrounds the ground with a textured octagonal wall (background, id 0).
    With the defaults the scene is exactly the original demo.
    """
    rng = np.random.default_rng([int(seed), 1])
    palette = [_PALETTE[i] for i in rng.permutation(len(_PALETTE))]
    pal_iter = iter(palette)

    def material(texture=None):
        name, color = next(pal_iter)
        return _make_material(rng, name, color, texture)

    num_objects = int(rng.integers(6, 9))  # 6..8
    mat_box = material()
    mat_box2 = material()
    mat_sphere = material()
    mat_cyl = material()
    mat_small = material()

    # Groups of objects in a group-local frame (xy offsets), placed later.
    groups: List[List[Dict[str, Any]]] = []

    # Group 1: two boxes sharing a face (+ optionally a sphere on top of box A).
    yaw = rng.uniform(0.0, math.pi)
    size_a = np.array([rng.uniform(0.4, 0.6), rng.uniform(0.35, 0.55), rng.uniform(0.3, 0.55)])
    size_b = np.array([rng.uniform(0.3, 0.45), rng.uniform(0.3, 0.45), rng.uniform(0.45, 0.75)])
    rot = _rot_z(yaw)
    slide = rng.uniform(-0.3, 0.3) * min(size_a[1], size_b[1])
    off_b = rot @ np.array([0.5 * (size_a[0] + size_b[0]), slide, 0.0])
    g1 = [
        dict(shape="box", name="box", off=np.zeros(3), size=size_a, yaw=yaw, mat=mat_box, key="A"),
        dict(shape="box", name="box", off=off_b, size=size_b, yaw=yaw, mat=mat_box2, key="B"),
    ]
    groups.append(g1)

    # Group 2: sphere, Group 3: sphere with the SAME material.
    for _ in range(2):
        r = rng.uniform(0.22, 0.34)
        groups.append([dict(shape="sphere", name="sphere", off=np.zeros(3), radius=r, mat=mat_sphere, key="S")])

    # Group 4: cylinder with a small sphere leaning against it.
    r_c = rng.uniform(0.16, 0.24)
    h_c = rng.uniform(0.55, 0.9)
    r_s = rng.uniform(0.07, 0.1)
    ang = rng.uniform(0.0, 2.0 * math.pi)
    off_s = np.array([math.cos(ang), math.sin(ang), 0.0]) * (r_c + r_s)
    groups.append(
        [
            dict(shape="cylinder", name="cylinder", off=np.zeros(3), radius=r_c, height=h_c, mat=mat_cyl, key="C"),
            dict(shape="sphere", name="small_sphere", off=off_s, radius=r_s, mat=mat_small, key="s", small=True),
        ]
    )

    extra = num_objects - 6
    if extra >= 1:  # small box sharing the material of box A
        s = rng.uniform(0.12, 0.18)
        groups.append(
            [
                dict(
                    shape="box",
                    name="small_box",
                    off=np.zeros(3),
                    size=np.array([s, s * rng.uniform(0.8, 1.2), s * rng.uniform(0.8, 1.3)]),
                    yaw=rng.uniform(0.0, math.pi),
                    mat=mat_box,
                    key="b",
                    small=True,
                )
            ]
        )
    if extra >= 2:  # sphere resting on top of box A
        r = rng.uniform(0.1, 0.14)
        r = min(r, 0.45 * float(min(size_a[0], size_a[1])))
        g1.append(dict(shape="sphere", name="top_sphere", off=np.array([0.0, 0.0, size_a[2]]), radius=r,
                       mat=material(), key="T", on_top=True))

    extra_rng = np.random.default_rng([int(seed), 5])
    for k in range(int(extra_objects)):
        hue_color = tuple(float(c) for c in extra_rng.uniform(0.12, 0.95, size=3))
        mat = _make_material(extra_rng, f"extra{k}", hue_color)
        shape = str(extra_rng.choice(["box", "sphere", "cylinder"]))
        small = bool(extra_rng.random() < 0.3)
        scale = 0.45 if small else 1.0
        if shape == "box":
            size = extra_rng.uniform(0.18, 0.4, size=3) * scale
            member = dict(shape="box", name="box", off=np.zeros(3), size=size, yaw=extra_rng.uniform(0, math.pi))
        elif shape == "sphere":
            member = dict(shape="sphere", name="sphere", off=np.zeros(3), radius=extra_rng.uniform(0.1, 0.22) * scale)
        else:
            member = dict(shape="cylinder", name="cylinder", off=np.zeros(3), radius=extra_rng.uniform(0.08, 0.16) * scale,
                          height=extra_rng.uniform(0.3, 0.7) * scale)  # fmt: skip
        groups.append([dict(member, mat=mat, key=f"x{k}", small=small)])

    # Bounding circle of each group around its anchor.
    def member_rad(m):
        if m["shape"] == "box":
            return 0.5 * float(np.hypot(m["size"][0], m["size"][1]))
        return float(m["radius"])

    group_rad = [max(float(np.hypot(m["off"][0], m["off"][1])) + member_rad(m) for m in g) for g in groups]
    # Place big groups first, rejection sampling on a disk.
    order = np.argsort(-np.asarray(group_rad), kind="stable")
    placed: Dict[int, np.ndarray] = {}
    gap, radius = 0.12, 1.25
    for gi in order:
        for attempt in range(2000):
            if attempt and attempt % 400 == 0:
                radius += 0.1
            rho = radius * math.sqrt(rng.random())
            phi = rng.uniform(0.0, 2.0 * math.pi)
            pos = np.array([rho * math.cos(phi), rho * math.sin(phi), 0.0])
            if all(
                np.hypot(*(pos - placed[gj])[:2]) >= group_rad[gi] + group_rad[gj] + gap for gj in placed
            ):
                placed[int(gi)] = pos
                break
        else:  # pragma: no cover - practically unreachable
            raise RuntimeError("could not place demo objects")

    # Instantiate objects, ids 1..K in group order.
    objects: List[DemoObject] = []
    keys: Dict[str, int] = {}
    for gi, g in enumerate(groups):
        for m in g:
            oid = len(objects) + 1
            base = placed[gi] + m["off"]
            if m["shape"] == "box":
                center = base + np.array([0.0, 0.0, 0.5 * m["size"][2]])
                obj = DemoObject(oid, f"{m['name']}_{oid}", "box", center, m["mat"], size=m["size"], yaw=m["yaw"])
            elif m["shape"] == "sphere":
                z = (m["off"][2] if m.get("on_top") else 0.0) + m["radius"]
                center = np.array([base[0], base[1], z])
                obj = DemoObject(oid, f"{m['name']}_{oid}", "sphere", center, m["mat"], radius=m["radius"],
                                 yaw=float(rng.uniform(0, 2 * math.pi)))
            else:
                center = base + np.array([0.0, 0.0, 0.5 * m["height"]])
                obj = DemoObject(oid, f"{m['name']}_{oid}", "cylinder", center, m["mat"], radius=m["radius"],
                                 height=m["height"], yaw=float(rng.uniform(0, 2 * math.pi)))
            obj.small = bool(m.get("small", False))
            objects.append(obj)
            keys.setdefault(m["key"], oid)
    touching_pairs = [("A", "B"), ("C", "s"), ("A", "T")]
    for ka, kb in touching_pairs:
        if ka in keys and kb in keys:
            a, b = objects[keys[ka] - 1], objects[keys[kb] - 1]
            a.touching.append(b.id)
            b.touching.append(a.id)

    ground_mat = Material(
        name="ground",
        color=(0.62, 0.56, 0.47),
        color2=(0.38, 0.34, 0.29),
        texture="checker",
        scale=0.5,
        phase=(0.013, 0.021, 0.25),
        axis=(1.0, 0.0, 0.0),
        noise_table=rng.random((16, 16, 16)),
    )
    light = np.array([rng.uniform(0.3, 0.6), rng.uniform(-0.5, 0.5), 1.0])
    light /= np.linalg.norm(light)
    scene = DemoScene(seed=int(seed), objects=objects, ground_radius=4.0, ground_material=ground_mat, light_dir=light)
    if walls:
        scene.walls = _octagon_walls(np.random.default_rng([int(seed), 6]), radius=scene.ground_radius)
    return scene


WALL_HEIGHT = 2.5


def _octagon_walls(rng: np.random.Generator, radius: float) -> List[DemoObject]:
    """Eight textured wall slabs standing on the ground's rim (background: they stay 0 in gt_masks)."""
    walls = []
    side = 2.0 * radius * math.tan(math.pi / 8.0) + 0.2
    for k in range(8):
        ang = 2.0 * math.pi * k / 8.0
        centre = np.array([radius * math.cos(ang), radius * math.sin(ang), 0.5 * WALL_HEIGHT])
        tint = rng.uniform(0.5, 0.85, size=3)
        mat = _make_material(rng, f"wall{k}", tuple(float(c) for c in tint), texture=str(rng.choice(["stripes", "noise"])))
        mat = Material(mat.name, mat.color, mat.color2, mat.texture, mat.scale * 3.0, mat.phase, mat.axis, mat.noise_table)
        walls.append(DemoObject(-1, f"wall_{k}", "box", centre, mat, size=np.array([0.1, side, WALL_HEIGHT]), yaw=ang))
    return walls


# --------------------------------------------------------------------------- #
# Cameras and ray casting
# --------------------------------------------------------------------------- #
def _look_at(eye: np.ndarray, target: np.ndarray, up=np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """Camera-to-world 4x4 in the OpenGL/nerfstudio convention (looks down -Z, +Y up)."""
    f = target - eye
    f = f / np.linalg.norm(f)
    x = np.cross(f, up)
    x = x / np.linalg.norm(x)
    y = np.cross(x, f)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, -f, eye
    return c2w


def make_cameras(seed: int, num_views: int, width: int, height: int, target=None):
    """Return ``(intrinsics dict, list of 4x4 camera-to-world matrices)``."""
    rng = np.random.default_rng([int(seed), 2])
    hfov = math.radians(60.0)
    fx = 0.5 * width / math.tan(0.5 * hfov)
    intr = {"fl_x": fx, "fl_y": fx, "cx": 0.5 * width, "cy": 0.5 * height, "w": int(width), "h": int(height)}
    target = np.array([0.0, 0.0, 0.3]) if target is None else np.asarray(target, dtype=np.float64)
    step = 2.0 * math.pi / num_views
    az0 = rng.uniform(0.0, 2.0 * math.pi)
    poses = []
    for k in range(num_views):
        az = az0 + k * step + rng.uniform(-0.3, 0.3) * step
        elev = math.radians(30.0 + 12.0 * math.sin(3.0 * k * step + 0.7) + rng.uniform(-4.0, 4.0))
        dist = 3.6 + rng.uniform(-0.3, 0.3)
        look = target + np.array([rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1), rng.uniform(-0.05, 0.05)])
        eye = look + dist * np.array([math.cos(elev) * math.cos(az), math.cos(elev) * math.sin(az), math.sin(elev)])
        poses.append(_look_at(eye, look))
    return intr, poses


def undistort_points(xd: np.ndarray, yd: np.ndarray, k1: float, k2: float, iterations: int = 50):
    """Invert OpenCV's radial model ``x_d = x (1 + k1 r^2 + k2 r^4)`` on normalised image coordinates."""
    x, y = xd.copy(), yd.copy()
    for _ in range(iterations):  # fixed point: a contraction for the moderate k1, k2 a lens has
        r2 = x * x + y * y
        factor = 1.0 + k1 * r2 + k2 * r2 * r2
        x, y = xd / factor, yd / factor
    return x, y


def pixel_rays(c2w: np.ndarray, intr: Dict[str, float], offsets: Tuple[float, float] = (0.5, 0.5)):
    """World-space rays for every pixel; ``offsets`` is the (x, y) sub-pixel position.

    Optional ``intr["k1"]``, ``intr["k2"]`` (OPENCV radial distortion) bend each pixel's
    ray as that lens would, so images and masks carry real distortion.
    Returns ``origins, dirs`` of shape ``(h*w, 3)`` in row-major pixel order; the
    directions are unit length.
    """
    w, h = int(intr["w"]), int(intr["h"])
    jj, ii = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    x = (jj + offsets[0] - intr["cx"]) / intr["fl_x"]
    y = (ii + offsets[1] - intr["cy"]) / intr["fl_y"]
    k1, k2 = float(intr.get("k1", 0.0)), float(intr.get("k2", 0.0))
    if k1 or k2:
        x, y = undistort_points(x, y, k1, k2)
    d_cam = np.stack([x, -y, -np.ones_like(x)], axis=-1).reshape(-1, 3)
    d = d_cam @ c2w[:3, :3].T
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    o = np.broadcast_to(c2w[:3, 3], d.shape).copy()
    return o, d


def cast_rays(scene: DemoScene, o: np.ndarray, d: np.ndarray, objects_only: bool = False):
    """Nearest hit along each ray.

    Returns ``(t, kind)``: ``kind`` is -1 for a miss (sky), 0 for the ground disk,
    otherwise the object id; ``t`` is ``inf`` on a miss.
    """
    n = o.shape[0]
    best_t = np.full(n, np.inf)
    kind = np.full(n, -1, dtype=np.int32)
    if not objects_only:
        dz = d[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(dz < -1e-9, -o[:, 2] / dz, np.inf)
        p = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
        ok = np.isfinite(t) & (t > _EPS) & (p[:, 0] ** 2 + p[:, 1] ** 2 <= scene.ground_radius**2)
        best_t = np.where(ok, t, best_t)
        kind = np.where(ok, 0, kind)
        for wall in scene.walls:
            t = wall.intersect(o, d)
            closer = t < best_t
            best_t = np.where(closer, t, best_t)
            kind = np.where(closer, 0, kind)
    for obj in scene.objects:
        t = obj.intersect(o, d)
        closer = t < best_t
        best_t = np.where(closer, t, best_t)
        kind = np.where(closer, obj.id, kind)
    return best_t, kind


def _shade(scene: DemoScene, o: np.ndarray, d: np.ndarray):
    """Radiance, hit kind, depth and hit points for a batch of rays."""
    t, kind = cast_rays(scene, o, d)
    n_rays = o.shape[0]
    rgb = np.zeros((n_rays, 3))
    hit = kind >= 0
    # Sky: gradient by ray elevation (direction only -> consistent at infinity).
    sky = ~hit
    if sky.any():
        e = np.clip(d[sky, 2], 0.0, 1.0)[:, None] ** 0.7
        rgb[sky] = (1.0 - e) * np.asarray(scene.sky_horizon)[None] + e * np.asarray(scene.sky_zenith)[None]
    p = o + np.where(hit, t, 0.0)[:, None] * d
    normals = np.zeros((n_rays, 3))
    albedo = np.zeros((n_rays, 3))
    g = kind == 0
    if g.any():
        normals[g] = np.array([0.0, 0.0, 1.0])
        gp = p[g]
        base = scene.ground_material.albedo(gp)
        mod = 0.8 + 0.4 * _value_noise(gp / 0.35, scene.ground_material.noise_table)
        albedo[g] = base * mod[:, None]
        for wall in scene.walls:  # a ground-kind hit that lies on a wall takes the wall's surface
            on = np.zeros_like(g)
            on[g] = np.abs(wall.intersect(o[g], d[g]) - t[g]) < 1e-9
            if on.any():
                normals[on] = wall.normal(p[on])
                albedo[on] = wall.albedo(p[on])
    for obj in scene.objects:
        m = kind == obj.id
        if m.any():
            normals[m] = obj.normal(p[m])
            albedo[m] = obj.albedo(p[m])
    if hit.any():
        ph, nh = p[hit], normals[hit]
        L = np.broadcast_to(scene.light_dir, ph.shape)
        lam = np.clip(nh @ scene.light_dir, 0.0, None)
        lit = lam > 0
        vis = np.zeros(ph.shape[0])
        if lit.any():
            ts, _ = cast_rays(scene, ph[lit] + 1e-4 * nh[lit], np.ascontiguousarray(L[lit]), objects_only=True)
            vis[lit] = (~np.isfinite(ts)).astype(np.float64)
        shade = scene.ambient + scene.diffuse * lam * vis
        rgb[hit] = albedo[hit] * shade[:, None]
    return np.clip(rgb, 0.0, 1.0), kind, t, p


def render_view(scene: DemoScene, c2w: np.ndarray, intr: Dict[str, float], supersample: int = 2):
    """Render one view.

    Returns a dict with ``rgb`` (h, w, 3) uint8 (``supersample``^2 rays per pixel),
    and, for the pixel-centre rays, ``kind`` (h, w) int32 (-1 sky, 0 ground, ids),
    ``depth`` (h, w) float (ray distance, ``inf`` for sky), ``points`` (h*w, 3) and
    ``colors`` (h*w, 3) float in [0, 1].
    """
    w, h = int(intr["w"]), int(intr["h"])
    o, d = pixel_rays(c2w, intr)
    rgb_c, kind, t, p = _shade(scene, o, d)
    if supersample > 1:
        acc = np.zeros_like(rgb_c)
        subs = (np.arange(supersample) + 0.5) / supersample
        for sy in subs:
            for sx in subs:
                o2, d2 = pixel_rays(c2w, intr, (sx, sy))
                acc += _shade(scene, o2, d2)[0]
        rgb = acc / (supersample * supersample)
    else:
        rgb = rgb_c
    return {
        "rgb": np.round(rgb.reshape(h, w, 3) * 255.0).astype(np.uint8),
        "kind": kind.reshape(h, w),
        "depth": t.reshape(h, w),
        "points": p,
        "colors": rgb_c,
    }


# --------------------------------------------------------------------------- #
# SAM-like masks
# --------------------------------------------------------------------------- #
_STRUCT = np.ones((3, 3), dtype=bool)


def _split_by_line(mask: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    ii, jj = np.nonzero(mask)
    ci, cj = ii.mean(), jj.mean()
    theta = rng.uniform(0.0, math.pi)
    side = (jj - cj) * math.cos(theta) + (ii - ci) * math.sin(theta) > 0.0
    a = np.zeros_like(mask)
    b = np.zeros_like(mask)
    a[ii[side], jj[side]] = True
    b[ii[~side], jj[~side]] = True
    return a, b


def synthesize_sam_masks(
    gt: np.ndarray, floor: np.ndarray, noise: MaskNoiseConfig, rng: np.random.Generator
) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Corrupt one view's gt instance map into a SAM-like label map (see module docstring).

    Args:
        gt: (h, w) integer map, 0 = background, objects > 0.
        floor: (h, w) bool, visible ground pixels.
        noise: noise settings.
        rng: the view's generator.

    Returns:
        ``(sam, info)``: ``sam`` is (h, w) uint16 with ids 1..M (0 unlabelled);
        ``info`` has ``events`` and ``segments`` (``sam_id``, ``kind`` in
        {"object", "part", "merged", "floor"}, ``gt_ids``), JSON-serialisable.
    """
    ids = [int(i) for i in np.unique(gt) if i > 0]
    masks = {i: gt == i for i in ids}
    areas = {i: int(masks[i].sum()) for i in ids}
    events: Dict[str, Any] = {"dropped": [], "merged": [], "split": [], "eroded": [], "dilated": [], "vanished": []}

    # 1. drops
    kept = []
    for i in ids:
        if areas[i] < noise.min_area or (noise.p_drop > 0 and rng.random() < noise.p_drop):
            events["dropped"].append(i)
        else:
            kept.append(i)

    # 2. merges of image-adjacent pairs
    segments: List[Dict[str, Any]] = []
    merged_ids = set()
    if noise.p_merge > 0 and len(kept) > 1:
        dil = {i: ndimage.binary_dilation(masks[i], structure=_STRUCT) for i in kept}
        pairs = [(a, b) for ai, a in enumerate(kept) for b in kept[ai + 1 :] if (dil[a] & masks[b]).any()]
        for pi in rng.permutation(len(pairs)) if pairs else []:
            a, b = pairs[int(pi)]
            if a in merged_ids or b in merged_ids:
                continue
            if rng.random() < noise.p_merge:
                merged_ids.update((a, b))
                events["merged"].append([a, b])
                segments.append({"mask": masks[a] | masks[b], "kind": "merged", "gt_ids": [a, b]})

    # 3. splits
    for i in kept:
        if i in merged_ids:
            continue
        if noise.p_split > 0 and areas[i] >= max(noise.min_split_area, 2) and rng.random() < noise.p_split:
            a, b = _split_by_line(masks[i], rng)
            if a.any() and b.any():
                events["split"].append(i)
                segments.append({"mask": a, "kind": "part", "gt_ids": [i]})
                segments.append({"mask": b, "kind": "part", "gt_ids": [i]})
                continue
        segments.append({"mask": masks[i], "kind": "object", "gt_ids": [i]})

    # 4. floor
    floor_segments: List[Dict[str, Any]] = []
    if noise.floor_mask and floor.any():
        if noise.p_floor_split > 0 and floor.sum() >= 2 and rng.random() < noise.p_floor_split:
            a, b = _split_by_line(floor, rng)
            parts = [m for m in (a, b) if m.any()]
            events["floor_split"] = len(parts) > 1
        else:
            parts = [floor]
            events["floor_split"] = False
        floor_segments = [{"mask": m, "kind": "floor", "gt_ids": [0]} for m in parts]

    # 5. boundary noise + compositing (floor first, objects in random order)
    all_segments = floor_segments + segments
    label = np.zeros(gt.shape, dtype=np.int32)  # index into all_segments, +1
    paint_order = list(range(len(floor_segments)))
    obj_idx = list(range(len(floor_segments), len(all_segments)))
    paint_order += [obj_idx[int(k)] for k in rng.permutation(len(obj_idx))] if obj_idx else []
    for si in paint_order:
        seg = all_segments[si]
        m = seg["mask"]
        if noise.p_boundary > 0 and noise.boundary_px > 0 and rng.random() < noise.p_boundary:
            if rng.random() < 0.5:
                m = ndimage.binary_erosion(m, structure=_STRUCT, iterations=noise.boundary_px, border_value=1)
                events["eroded"].append(seg["gt_ids"])
            else:
                m = ndimage.binary_dilation(m, structure=_STRUCT, iterations=noise.boundary_px)
                events["dilated"].append(seg["gt_ids"])
        label[m] = si + 1

    # 6. survivors and permutation
    present = [si for si in range(len(all_segments)) if (label == si + 1).any()]
    for si in range(len(all_segments)):
        if si not in present:
            events["vanished"].append(all_segments[si]["gt_ids"])
    m_count = len(present)
    new_ids = (rng.permutation(m_count) + 1) if noise.permute_ids else np.arange(1, m_count + 1)
    lut = np.zeros(len(all_segments) + 1, dtype=np.uint16)
    seg_info = []
    for k, si in enumerate(present):
        lut[si + 1] = int(new_ids[k])
        seg_info.append(
            {"sam_id": int(new_ids[k]), "kind": all_segments[si]["kind"], "gt_ids": all_segments[si]["gt_ids"]}
        )
    seg_info.sort(key=lambda s: s["sam_id"])
    sam = lut[label]
    return sam, {"events": events, "segments": seg_info}


# --------------------------------------------------------------------------- #
# I/O helpers
# --------------------------------------------------------------------------- #
def read_label_png(path: Path) -> np.ndarray:
    """Read a label PNG written by :func:`write_label_png` as a (h, w) uint16 array."""
    return read_label_map(path).astype(np.uint16)


def _sky_points(scene: DemoScene, rng: np.random.Generator, count: int, radius_factor: float = 4.0):
    """Seed points on a far shell, coloured like the sky in their direction.

    The sky is infinitely far; without seeds there, splatting must grow Gaussians into
    half of every image from nothing, as an SfM cloud with far background points avoids.
    """
    d = rng.normal(size=(count, 3))
    d[:, 2] = np.abs(d[:, 2])  # upper hemisphere: the sky is what cameras above the ground see
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    e = np.clip(d[:, 2], 0.0, 1.0)[:, None] ** 0.7
    rgb = (1.0 - e) * np.asarray(scene.sky_horizon)[None] + e * np.asarray(scene.sky_zenith)[None]
    return d * radius_factor * scene.ground_radius, rgb


def _write_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    """Binary little-endian PLY with x,y,z (float) and red,green,blue (uchar)."""
    n = int(xyz.shape[0])
    vert = np.empty(
        n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    )
    vert["x"], vert["y"], vert["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    vert["red"], vert["green"], vert["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment ulift_ns demo scene seed points\n"
        f"element vertex {n}\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    with open(path, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(vert.tobytes())


def _stems(num_views: int) -> List[str]:
    return [f"frame_{k:05d}" for k in range(num_views)]


COLMAP_FILES = ["sparse/0/cameras.txt", "sparse/0/images.txt", "sparse/0/points3D.txt"]


def _expected_files(num_views: int, layout: str = "transforms") -> List[str]:
    files = list(COLMAP_FILES) if layout == "colmap" else ["transforms.json", "sparse_pc.ply"]
    for sub in ("images", "gt_masks", "sam_masks"):
        files += [f"{sub}/{s}.png" for s in _stems(num_views)]
    return files


def _params(
    seed: int,
    num_views: int,
    width: int,
    height: int,
    noise: MaskNoiseConfig,
    distortion: Optional[Tuple[float, float]] = None,
    extra_objects: int = 0,
    walls: bool = False,
    layout: str = "transforms",
) -> Dict[str, Any]:
    p = {
        "format_version": DEMO_FORMAT_VERSION,
        "seed": int(seed),
        "num_views": int(num_views),
        "width": int(width),
        "height": int(height),
        "noise": noise.to_dict(),
    }
    if distortion is not None:  # only when asked for, so undistorted demos keep their parameters
        p["distortion"] = {"k1": float(distortion[0]), "k2": float(distortion[1])}
    if extra_objects:  # likewise: only non-default scene options are recorded
        p["extra_objects"] = int(extra_objects)
    if walls:
        p["walls"] = True
    if layout != "transforms":
        p["layout"] = layout
    return json.loads(json.dumps(p))  # normalise types as they will read back


def _remove_generated(output_dir: Path, meta: Dict[str, Any]) -> None:
    """Remove only the files a previous demo run wrote (never anything else)."""
    root = output_dir.resolve()
    for rel in list(meta.get("files", [])) + [META_FILENAME]:
        p = (output_dir / rel).resolve()
        if root not in p.parents or not p.is_file():
            continue
        p.unlink()
    for sub in ("images", "gt_masks", "sam_masks", "sparse/0", "sparse"):
        d = output_dir / sub
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


def _rotation_to_qvec(r: np.ndarray) -> np.ndarray:
    """COLMAP quaternion ``(w, x, y, z)`` of a rotation matrix."""
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(r).as_quat()
    return np.array([w, x, y, z]) if w >= 0 else -np.array([w, x, y, z])


def write_colmap_text(
    folder: Path, intr: Dict[str, float], stems: Sequence[str], poses: Sequence[np.ndarray], xyz: np.ndarray, rgb: np.ndarray
) -> None:
    """``cameras.txt``, ``images.txt`` and ``points3D.txt`` of a COLMAP text model in ``folder``.

    One shared camera (PINHOLE, or OPENCV when ``intr`` has k1/k2); poses are world-to-camera
    in OpenCV axes, from the nerfstudio/OpenGL camera-to-world matrices; points have no tracks.
    """
    folder.mkdir(parents=True, exist_ok=True)
    w, h = int(intr["w"]), int(intr["h"])
    intr = {k: float(v) for k, v in intr.items()}
    if "k1" in intr:
        cam = f"1 OPENCV {w} {h} {intr['fl_x']!r} {intr['fl_y']!r} {intr['cx']!r} {intr['cy']!r} {intr['k1']!r} {intr['k2']!r} 0 0"
    else:
        cam = f"1 PINHOLE {w} {h} {intr['fl_x']!r} {intr['fl_y']!r} {intr['cx']!r} {intr['cy']!r}"
    (folder / "cameras.txt").write_text(f"# Camera list (ulift demo)\n{cam}\n", encoding="utf-8")
    lines = ["# Image list (ulift demo): IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, then an empty POINTS2D line"]
    for k, (stem, c2w) in enumerate(zip(stems, poses)):
        c2w_cv = np.asarray(c2w) @ np.diag([1.0, -1.0, -1.0, 1.0])
        w2c = np.linalg.inv(c2w_cv)
        q, t = _rotation_to_qvec(w2c[:3, :3]), w2c[:3, 3]
        lines.append(" ".join([str(k + 1), *(repr(float(v)) for v in q), *(repr(float(v)) for v in t), "1", f"{stem}.png"]))
        lines.append("")
    (folder / "images.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    pts = ["# 3D point list (ulift demo): POINT3D_ID X Y Z R G B ERROR (no tracks)"]
    colours = np.round(np.clip(rgb, 0, 1) * 255.0).astype(int)
    for i, (p, c) in enumerate(zip(xyz, colours)):
        pts.append(f"{i + 1} {float(p[0])!r} {float(p[1])!r} {float(p[2])!r} {c[0]} {c[1]} {c[2]} 0.0")
    (folder / "points3D.txt").write_text("\n".join(pts) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- #
# Main entry point
# --------------------------------------------------------------------------- #
def generate_demo_scene(
    output_dir: Path,
    seed: int = 0,
    num_views: int = 48,
    width: int = 160,
    height: int = 120,
    noise: Optional[MaskNoiseConfig] = None,
    overwrite: bool = False,
    distortion: Optional[Tuple[float, float]] = None,
    extra_objects: int = 0,
    walls: bool = False,
    layout: str = "transforms",
) -> Path:
    """Generate (or reuse) the demo scene in ``output_dir`` and return that directory.

    Args:
        output_dir: target directory (created if missing).  A non-empty directory
            that is not a previously generated demo is never modified.
        seed: layout, cameras and mask noise all derive from it.
        num_views: number of cameras on the ring (default 48).
        width, height: image size in pixels.
        noise: SAM-like noise settings; ``None`` -> ``MaskNoiseConfig()`` defaults,
            ``MaskNoiseConfig.clean()`` for noise-free (only permuted) masks.
        overwrite: replace a previous demo that was generated with different
            parameters (only the files it wrote are removed).
        distortion: ``(k1, k2)`` OPENCV radial distortion baked into images and masks
            (as a real lens would) and written to ``transforms.json``; ``None``: a pinhole.
        extra_objects: that many more single objects (random shape, size, colour; some small).
        walls: surround the ground with a textured octagonal wall (background, 0 in gt_masks).
        layout: ``"transforms"`` (nerfstudio ``transforms.json`` + ``sparse_pc.ply``) or ``"colmap"``
            (a COLMAP text model in ``sparse/0`` with the seed points as ``points3D.txt``).

    Raises:
        FileExistsError: ``output_dir`` is a file, or a non-empty directory that
            is not a demo, or a demo with other parameters and ``overwrite`` is False.
        ValueError: invalid sizes.
    """
    output_dir = Path(output_dir).expanduser()
    noise = MaskNoiseConfig() if noise is None else noise
    if int(num_views) < 1:
        raise ValueError("num_views must be >= 1")
    if int(width) < 8 or int(height) < 8:
        raise ValueError("width and height must be >= 8 pixels")
    if layout not in ("transforms", "colmap"):
        raise ValueError(f"layout must be 'transforms' or 'colmap', got {layout!r}")
    params = _params(seed, num_views, width, height, noise, distortion, extra_objects, walls, layout)
    expected = _expected_files(int(num_views), layout)

    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} exists and is not a directory; choose another --output")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        meta_path = output_dir / META_FILENAME
        old: Any = None
        if meta_path.is_file():
            try:
                with open(meta_path, encoding="utf-8") as fh:
                    old = json.load(fh)
            except (OSError, ValueError):
                old = None
        if not isinstance(old, dict) or old.get("generator") != "ulift_ns.demo":
            raise FileExistsError(
                f"{output_dir} is not empty and is not a generated ulift demo scene (no valid {META_FILENAME}); "
                "refusing to write into it. Choose an empty or new directory."
            )
        complete = bool(old.get("complete"))
        same = old.get("params") == params
        if complete and same and all((output_dir / rel).is_file() for rel in expected):
            return output_dir
        if complete and not same and not overwrite:
            raise FileExistsError(
                f"{output_dir} holds a demo scene generated with different parameters "
                f"({old.get('params')}); pass overwrite=True (--overwrite) to replace it, "
                "or choose another directory."
            )
        # Incomplete / partially deleted previous demo, or overwrite requested.
        _remove_generated(output_dir, old)

    output_dir.mkdir(parents=True, exist_ok=True)
    meta: Dict[str, Any] = {
        "generator": "ulift_ns.demo",
        "complete": False,
        "params": params,
        "files": expected,
    }
    write_json_atomic(output_dir / META_FILENAME, meta)
    for sub in ("images", "gt_masks", "sam_masks"):
        (output_dir / sub).mkdir(exist_ok=True)

    scene = build_scene(seed, extra_objects=extra_objects, walls=walls)
    intr, poses = make_cameras(seed, num_views, width, height, target=scene.target)
    if distortion is not None:
        intr = {**intr, "k1": float(distortion[0]), "k2": float(distortion[1])}
    pts_rng = np.random.default_rng([int(seed), 3])
    pts_per_view = max(8, int(math.ceil(4000 / num_views)))
    all_xyz, all_rgb = [], []
    frames, views_meta = [], []
    for k, (stem, c2w) in enumerate(zip(_stems(num_views), poses)):
        view = render_view(scene, c2w, intr)
        kind = view["kind"]
        gt = np.where(kind > 0, kind, 0).astype(np.uint16)
        floor = kind == 0
        sam, info = synthesize_sam_masks(gt, floor, noise, np.random.default_rng([int(seed), 7919, k]))
        Image.fromarray(view["rgb"]).save(output_dir / "images" / f"{stem}.png")
        write_label_png(output_dir / "gt_masks" / f"{stem}.png", gt)
        write_label_png(output_dir / "sam_masks" / f"{stem}.png", sam)
        frames.append({"file_path": f"images/{stem}.png", "transform_matrix": c2w.tolist()})
        visible = {int(i): int(c) for i, c in zip(*np.unique(gt[gt > 0], return_counts=True))}
        views_meta.append({"stem": stem, "visible_gt_ids": visible, **info})
        # Seed points: half on objects, half on the ground (like an SfM cloud); sky points are added below.
        flat = kind.reshape(-1)
        for sel, n_sel in ((np.nonzero(flat > 0)[0], pts_per_view // 2), (np.nonzero(flat == 0)[0], pts_per_view // 2)):
            if sel.size == 0:
                continue
            pick = pts_rng.choice(sel, size=min(n_sel, sel.size), replace=False)
            all_xyz.append(view["points"][pick])
            all_rgb.append(view["colors"][pick])
    xyz = np.concatenate(all_xyz) if all_xyz else np.zeros((0, 3))
    rgb = np.concatenate(all_rgb) if all_rgb else np.zeros((0, 3))
    xyz = xyz + pts_rng.normal(scale=0.004, size=xyz.shape)
    sky_xyz, sky_rgb = _sky_points(scene, pts_rng, count=max(200, len(xyz) // 3))
    xyz, rgb = np.concatenate([xyz, sky_xyz]), np.concatenate([rgb, sky_rgb])
    if layout == "colmap":
        write_colmap_text(output_dir / "sparse" / "0", intr, _stems(num_views), poses, xyz, rgb)
    else:
        _write_ply(output_dir / "sparse_pc.ply", xyz, np.round(rgb * 255.0).astype(np.uint8))

    transforms = {
        "camera_model": "OPENCV",
        "fl_x": intr["fl_x"],
        "fl_y": intr["fl_y"],
        "cx": intr["cx"],
        "cy": intr["cy"],
        "w": intr["w"],
        "h": intr["h"],
        "k1": float(intr.get("k1", 0.0)),
        "k2": float(intr.get("k2", 0.0)),
        "p1": 0.0,
        "p2": 0.0,
        "ply_file_path": "sparse_pc.ply",
        "frames": frames,
    }
    if layout != "colmap":
        write_json_atomic(output_dir / "transforms.json", transforms)

    totals = {
        key: int(sum(len(v["events"][key]) for v in views_meta))
        for key in ("dropped", "merged", "split", "eroded", "dilated", "vanished")
    }
    meta.update(
        {
            "complete": True,
            "seed": int(seed),
            "num_objects": len(scene.objects),
            "noise": noise.to_dict(),
            "noise_totals": totals,
            "scene": {k: v for k, v in scene.to_dict().items() if k != "objects"},
            "objects": [o.to_dict() for o in scene.objects],
            "num_points": int(xyz.shape[0]),
            "views": views_meta,
        }
    )
    write_json_atomic(output_dir / META_FILENAME, meta)
    return output_dir


# --------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------- #
def add_demo_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``ulift demo`` options to ``parser`` (for the main CLI to reuse)."""
    parser.add_argument("--output", "-o", type=Path, required=True, help="directory to write the scene into")
    parser.add_argument("--seed", type=int, default=0, help="scene / camera / mask-noise seed (default 0)")
    parser.add_argument("--num-views", type=int, default=48, help="number of views (default 48)")
    parser.add_argument("--width", type=int, default=160, help="image width (default 160)")
    parser.add_argument("--height", type=int, default=120, help="image height (default 120)")
    parser.add_argument(
        "--clean-masks", action="store_true", help="no SAM-like noise (masks = per-view permuted ground truth)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a demo generated with other parameters")
    parser.add_argument(
        "--distortion", type=float, nargs=2, metavar=("K1", "K2"), default=None,
        help="bake OPENCV radial lens distortion into images and masks, e.g. --distortion 0.2 0.05",
    )  # fmt: skip
    parser.add_argument("--extra-objects", type=int, default=0, help="add N more objects (random shapes, some small)")
    parser.add_argument("--walls", action="store_true", help="surround the ground with textured walls")
    parser.add_argument("--layout", choices=("transforms", "colmap"), default="transforms",
                        help="transforms.json (default) or a COLMAP text model in sparse/0")  # fmt: skip
    return parser


def run_demo_from_args(args: argparse.Namespace) -> Path:
    noise = MaskNoiseConfig.clean() if getattr(args, "clean_masks", False) else None
    out = generate_demo_scene(
        args.output,
        seed=args.seed,
        num_views=args.num_views,
        width=args.width,
        height=args.height,
        noise=noise,
        overwrite=args.overwrite,
        distortion=getattr(args, "distortion", None),
        extra_objects=getattr(args, "extra_objects", 0),
        walls=getattr(args, "walls", False),
        layout=getattr(args, "layout", "transforms"),
    )
    print(f"demo scene ready: {out} (transforms.json, images/, gt_masks/, sam_masks/, sparse_pc.ply)")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = add_demo_arguments(argparse.ArgumentParser(prog="ulift demo", description=__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    try:
        run_demo_from_args(args)
    except (FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
