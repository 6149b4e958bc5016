"""Seconds to write N Gaussians (sh_degree 3) as a 3DGS PLY: ulift_ns's vectorised writer vs ns-export's.

    python benchmarks/export.py                 # 1M Gaussians, both writers (ns-export's takes minutes)
    python benchmarks/export.py --ns-num 100000 # time ns-export on fewer and scale linearly (marked "~")

Both start from the same torch parameters and write to a temporary folder.  "ns-export"
is nerfstudio's own property dict (as ``ExportGaussianSplat.main`` builds it) followed by
``ExportGaussianSplat.write_ply``, whose per-vertex Python loop dominates.
"""

from __future__ import annotations

import argparse
import importlib
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch


def synthetic_model(n: int, sh_degree: int = 3, seed: int = 0) -> SimpleNamespace:
    g = torch.Generator().manual_seed(seed)
    bases = (sh_degree + 1) ** 2
    params = {
        "means": torch.randn(n, 3, generator=g),
        "features_dc": torch.randn(n, 3, generator=g),
        "features_rest": torch.randn(n, bases - 1, 3, generator=g) * 0.1,
        "opacities": torch.randn(n, 1, generator=g),
        "scales": torch.randn(n, 3, generator=g) - 4.0,
        "quats": torch.randn(n, 4, generator=g),
    }
    return SimpleNamespace(gauss_params=params, config=SimpleNamespace(sh_degree=sh_degree))


def ours(model, path: Path) -> None:
    from ulift_ns.export import gaussian_ply_array, write_ply

    write_ply(path, gaussian_ply_array(model))


def nerfstudio(model, path: Path) -> None:
    """ExportGaussianSplat.main's dict (sh_coeffs mode, no crop), then its write_ply."""
    from nerfstudio.scripts.exporter import ExportGaussianSplat

    p = model.gauss_params
    m = OrderedDict()
    positions = p["means"].cpu().numpy()
    n = positions.shape[0]
    m["x"], m["y"], m["z"] = positions[:, 0], positions[:, 1], positions[:, 2]
    for k in ("nx", "ny", "nz"):
        m[k] = np.zeros(n, dtype=np.float32)
    shs_0 = p["features_dc"].contiguous().cpu().numpy()
    for i in range(shs_0.shape[1]):
        m[f"f_dc_{i}"] = shs_0[:, i, None]
    shs_rest = p["features_rest"].transpose(1, 2).contiguous().cpu().numpy().reshape((n, -1))
    for i in range(shs_rest.shape[-1]):
        m[f"f_rest_{i}"] = shs_rest[:, i, None]
    m["opacity"] = p["opacities"].cpu().numpy()
    scales = p["scales"].cpu().numpy()
    for i in range(3):
        m[f"scale_{i}"] = scales[:, i, None]
    quats = p["quats"].cpu().numpy()
    for i in range(4):
        m[f"rot_{i}"] = quats[:, i, None]
    ExportGaussianSplat.write_ply(str(path), n, m)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=1_000_000, help="Gaussians to export")
    parser.add_argument("--ns-num", type=int, default=None, help="time ns-export on this many and scale to --num")
    parser.add_argument("--repeats", type=int, default=3, help="runs of our writer (best is reported)")
    args = parser.parse_args()
    importlib.import_module("nerfstudio.scripts.exporter")  # import cost (open3d) kept out of the timings

    model = synthetic_model(args.num)
    ns_num = min(args.ns_num or args.num, args.num)
    with tempfile.TemporaryDirectory() as tmp:
        ours_s = min(timed(ours, model, Path(tmp) / "ours.ply") for _ in range(max(1, args.repeats)))
        size = (Path(tmp) / "ours.ply").stat().st_size
        small = model if ns_num == args.num else synthetic_model(ns_num)
        ns_s = timed(nerfstudio, small, Path(tmp) / "ns.ply")
        if ns_num == args.num:
            a, b = (Path(tmp) / "ours.ply").read_bytes(), (Path(tmp) / "ns.ply").read_bytes()
            same = a[a.index(b"end_header\n") :] == b[b.index(b"end_header\n") :]
        else:
            same = None
    scaled = ns_s * args.num / ns_num
    approx = "" if ns_num == args.num else "~"
    rows = [
        ("writer", "Gaussians", "seconds", "M Gaussians/s"),
        ("ulift_ns (numpy + plyfile)", f"{args.num:,}", f"{ours_s:.2f}", f"{args.num / ours_s / 1e6:.2f}"),
        ("ns-export write_ply", f"{args.num:,}", f"{approx}{scaled:.1f}", f"{args.num / scaled / 1e6:.3f}"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]

    def line(r) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    print(line(rows[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows[1:]:
        print(line(r))
    detail = f"sh_degree 3, 62 float32 properties, {size / 1e6:.0f} MB file"
    print(f"\nspeed-up: {approx}{scaled / ours_s:.0f}x   ({detail})")
    if ns_num != args.num:
        print(f"ns-export was timed on {ns_num:,} Gaussians ({ns_s:.1f} s) and scaled linearly to {args.num:,}.")
    elif same is not None:
        print(f"vertex data byte-identical: {same}")


if __name__ == "__main__":
    main()
