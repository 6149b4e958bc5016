"""Benchmark the CPU rasterizer: tiled ``rasterization`` vs brute-force ``rasterization_reference``.

Run:  python benchmarks/rasterize.py [--sizes 128 256] [--counts 5000 20000] [--repeats 5]

Each case renders one pinhole camera (focal = image width) of N random Gaussians with
3 + 16 = 19 colour channels and times forward + backward (gradients for means, quats,
scales, opacities and colours) with ``torch.set_num_threads(--threads)``.

* Time: median of ``--repeats`` runs after ``--warmup`` warm-up runs, wall clock.  The
  brute-force reference runs in the same process right after the tiled path, so the
  speed-up is a like-for-like comparison; it is much slower, so it is timed with
  ``--reference-repeats`` runs after one warm-up and skipped for cases whose
  pixels x Gaussians exceed ``--skip-reference-above``.
* Peak memory: each (case, method) runs once more in a *fresh subprocess*; after imports
  and scene construction the kernel's RSS high-water mark is reset to the current RSS
  (``/proc/self/clear_refs``), one forward + backward runs, and the reported number is
  ``VmHWM - RSS before the call``: the extra resident memory the call needed at its
  peak (inputs excluded).  Torch's CPU allocations are invisible to tracemalloc, which is
  why RSS is used.  Where clear_refs is unavailable it falls back to ``ru_maxrss`` growth.
* ``--omp-wait-policy passive``: with the default (spinning) OpenMP wait policy, 2 torch
  threads on 2 cores that other processes also use can be ~50x slower than 1 thread
  (measured: 9.7 s vs 0.2 s for 20k Gaussians at 128²); PASSIVE removes that.  The load
  average is printed so that numbers from a shared machine can be read for what they are.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# torch (and with it OpenMP) is imported in ``_import_torch`` only after the command line is
# parsed, so that ``--omp-wait-policy`` can still take effect.
torch = None  # type: ignore[assignment]
rasterization = rasterization_reference = None  # type: ignore[assignment]


def _import_torch() -> None:
    global torch, rasterization, rasterization_reference
    import torch as _torch

    from ulift_ns.rasterize import rasterization as _r, rasterization_reference as _ref

    torch, rasterization, rasterization_reference = _torch, _r, _ref


CHANNELS = 19  # 3 RGB + 16 identity-feature channels


def make_scene(n: int, size: int, channels: int = CHANNELS, seed: int = 0) -> Tuple[List[torch.Tensor], torch.Tensor, torch.Tensor]:
    """N Gaussians in front of a pinhole camera (focal = width), ~1-3 px sigmas, opacity U(0.05, 0.95)."""
    gen = torch.Generator().manual_seed(seed)
    width = height = size
    focal = float(width)
    z = 2.0 + 4.0 * torch.rand(n, generator=gen)
    u = torch.rand(n, generator=gen) * width
    v = torch.rand(n, generator=gen) * height
    means = torch.stack([(u - width / 2) / focal * z, (v - height / 2) / focal * z, z], -1)
    # Per-axis screen sigma ~ log-normal around 1.7 px (about 1-3 px), converted to a world scale at depth z.
    sigma_px = torch.exp(math.log(1.7) + 0.3 * torch.randn(n, 3, generator=gen))
    scales = sigma_px * z[:, None] / focal
    quats = torch.randn(n, 4, generator=gen)
    opacities = 0.05 + 0.9 * torch.rand(n, generator=gen)
    colors = torch.rand(n, channels, generator=gen)
    viewmats = torch.eye(4)[None]
    ks = torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])[None]
    return [means, quats, scales, opacities, colors], viewmats, ks


def fwd_bwd(method: str, params: List[torch.Tensor], viewmats, ks, size: int, g_render, g_alpha, absgrad: bool) -> Optional[int]:
    """One forward + backward. Returns the number of tile intersections for the tiled path."""
    for p in params:
        p.grad = None
    if method == "tiled":
        render, alpha, info = rasterization(*params, viewmats, ks, size, size, absgrad=absgrad)
        n_isect = info["n_intersections"]
    else:
        render, alpha = rasterization_reference(*params, viewmats, ks, size, size)
        n_isect = None
    ((render * g_render).sum() + (alpha * g_alpha).sum()).backward()
    return n_isect


def setup(n: int, size: int, channels: int):
    params, viewmats, ks = make_scene(n, size, channels)
    params = [p.requires_grad_(True) for p in params]
    gen = torch.Generator().manual_seed(1)
    g_render = torch.randn(1, size, size, channels, generator=gen)
    g_alpha = torch.randn(1, size, size, 1, generator=gen)
    return params, viewmats, ks, g_render, g_alpha


def time_case(method: str, n: int, size: int, channels: int, warmup: int, repeats: int, absgrad: bool):
    params, viewmats, ks, g_render, g_alpha = setup(n, size, channels)
    n_isect = None
    for _ in range(warmup):
        n_isect = fwd_bwd(method, params, viewmats, ks, size, g_render, g_alpha, absgrad)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n_isect = fwd_bwd(method, params, viewmats, ks, size, g_render, g_alpha, absgrad)
        times.append(1000.0 * (time.perf_counter() - t0))
    return times, n_isect


# ---------------------------------------------------------------------------- memory (subprocess)


def _rss_kib() -> Tuple[int, int]:
    """(VmRSS, VmHWM) of this process in KiB."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def memory_worker(method: str, n: int, size: int, channels: int, threads: int, absgrad: bool) -> Dict[str, object]:
    torch.set_num_threads(threads)
    params, viewmats, ks, g_render, g_alpha = setup(n, size, channels)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
        rss_before, _ = _rss_kib()
        fwd_bwd(method, params, viewmats, ks, size, g_render, g_alpha, absgrad)
        _, hwm = _rss_kib()
        return {"peak_mb": (hwm - rss_before) / 1024.0, "how": "VmHWM-RSS"}
    except OSError:
        import resource

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fwd_bwd(method, params, viewmats, ks, size, g_render, g_alpha, absgrad)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"peak_mb": (after - before) / 1024.0, "how": "ru_maxrss growth (lower bound)"}


def measure_memory(method: str, n: int, size: int, args: argparse.Namespace) -> Optional[float]:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--memory-worker", method,
        "--counts", str(n), "--sizes", str(size), "--channels", str(args.channels), "--threads", str(args.threads),
    ]
    if not args.absgrad:
        cmd.append("--no-absgrad")
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode != 0:
        print(f"memory worker failed ({method}, {n}, {size}):\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"])


# ---------------------------------------------------------------------------- table


def print_table(rows: List[Dict[str, str]], title: str) -> None:
    columns = ["case", "intersections", "tiled ms", "tiled peak MB", "brute-force ms", "brute-force peak MB", "speed-up"]
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for col in columns:
            table.add_column(col, justify="left" if col == "case" else "right")
        for row in rows:
            table.add_row(*[row[c] for c in columns])
        Console(width=160).print(table)
    except ImportError:
        widths = [max(len(c), *(len(r[c]) for r in rows)) for c in columns]
        print(title)
        print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
        for row in rows:
            print("  ".join(row[c].rjust(w) for c, w in zip(columns, widths)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="square image sizes")
    parser.add_argument("--counts", type=int, nargs="+", default=[5000, 20000], help="numbers of Gaussians")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of the tiled path (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up runs of the tiled path")
    parser.add_argument("--reference-repeats", type=int, default=3, help="timed runs of the brute force (1 warm-up)")
    parser.add_argument(
        "--skip-reference-above", type=float, default=5e8,
        help="skip the brute force when pixels x Gaussians exceeds this (it is O(pixels x N))",
    )
    parser.add_argument("--channels", type=int, default=CHANNELS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-absgrad", dest="absgrad", action="store_false", help="tiled path without absgrad")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory subprocesses")
    parser.add_argument("--memory-worker", choices=["tiled", "reference"], help=argparse.SUPPRESS)
    parser.add_argument(
        "--omp-wait-policy", choices=["default", "passive", "active"], default="default",
        help="set OMP_WAIT_POLICY before torch loads; 'passive' avoids OpenMP spin-waiting, which is "
        "catastrophic when other processes share the cores",
    )
    args = parser.parse_args()
    if args.omp_wait_policy != "default":
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()  # inherited by the memory workers
    _import_torch()

    if args.memory_worker:
        result = memory_worker(args.memory_worker, args.counts[0], args.sizes[0], args.channels, args.threads, args.absgrad)
        print(json.dumps(result))
        return

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, "
          f"load average before {os.getloadavg()[0]:.2f} on {os.cpu_count()} cpus")
    print(f"{args.channels} channels, tiled path absgrad={args.absgrad}; tiled: median of {args.repeats} after "
          f"{args.warmup} warm-ups; brute force: median of {args.reference_repeats} after 1 warm-up, skipped above "
          f"{args.skip_reference_above:.2g} pixel-Gaussian pairs")
    rows = []
    for size in args.sizes:
        for n in args.counts:
            case = f"{n // 1000}k x {size}²" if n % 1000 == 0 else f"{n} x {size}²"
            t_times, n_isect = time_case("tiled", n, size, args.channels, args.warmup, args.repeats, args.absgrad)
            t_ms = statistics.median(t_times)
            row = {
                "case": case,
                "intersections": f"{n_isect:,}",
                "tiled ms": f"{t_ms:.0f} ({min(t_times):.0f}-{max(t_times):.0f})",
                "tiled peak MB": "-",
                "brute-force ms": "skipped",
                "brute-force peak MB": "-",
                "speed-up": "-",
            }
            if args.memory:
                mem = measure_memory("tiled", n, size, args)
                row["tiled peak MB"] = f"{mem:.0f}" if mem is not None else "error"
            if size * size * n <= args.skip_reference_above:
                r_times, _ = time_case("reference", n, size, args.channels, 1, args.reference_repeats, args.absgrad)
                r_ms = statistics.median(r_times)
                row["brute-force ms"] = f"{r_ms:.0f} ({min(r_times):.0f}-{max(r_times):.0f})"
                row["speed-up"] = f"{r_ms / t_ms:.1f}x"
                if args.memory:
                    mem = measure_memory("reference", n, size, args)
                    row["brute-force peak MB"] = f"{mem:.0f}" if mem is not None else "error"
            rows.append(row)
            print(f"  done {case}: tiled {row['tiled ms']} ms, brute force {row['brute-force ms']} ms", flush=True)
    print_table(rows, "CPU rasterizer, forward + backward, ms as median (min-max)")
    print(f"load average after: {os.getloadavg()[0]:.2f} (other processes on these cores inflate the times)")
    print("peak MB: extra resident memory at the peak of one forward+backward in a fresh process "
          "(VmHWM reset via /proc/self/clear_refs, minus RSS before the call; inputs excluded).")


if __name__ == "__main__":
    main()
