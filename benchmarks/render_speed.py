"""Seconds per view of `ulift render` on CPU, and where they go (issue 12, item 4).

    python benchmarks/render_speed.py --config RUN/config.yml --gaussians 90000 --width 160 --height 120

The run's Gaussians are tiled with a small jitter up to --gaussians (a stand-in for a
long run's count); the camera is the first training view rescaled to --width x --height.
Prints a table: full ``get_outputs`` (what ``ulift render`` calls per view), its
rasterisation alone, the label read-out, and the viewer's click-to-feedback time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--gaussians", type=int, default=90000)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from ulift_ns.predict import load_pipeline, split_cameras
    from ulift_ns.model import viewmat_from_c2w

    pipeline = load_pipeline(args.config)
    model = pipeline.model
    with torch.no_grad():
        n = model.num_points
        reps = max(1, -(-args.gaussians // n))
        for name, value in list(model.gauss_params.items()):
            tiled = value.detach().repeat(reps, *([1] * (value.dim() - 1)))[: args.gaussians]
            if name == "means":
                tiled = tiled + 0.01 * torch.randn_like(tiled)
            model.gauss_params[name] = torch.nn.Parameter(tiled)
    _, camera = split_cameras(pipeline, "train")[0]
    camera.rescale_output_resolution(args.width / int(camera.width.item()))
    camera.height[:] = args.height
    pipeline.eval()
    params = dict(model.gauss_params.items())
    viewmat = viewmat_from_c2w(camera.camera_to_worlds)
    K = camera.get_intrinsics_matrices()
    W, H = int(camera.width.item()), int(camera.height.item())

    with torch.no_grad():
        full = best_of(lambda: model.get_outputs_for_camera(camera), args.repeats)
        raster = best_of(lambda: model._rasterize(params, viewmat, K, W, H, "RGB+ED"), args.repeats)
        features = torch.randn(H, W, model.config.feature_dim)
        alpha = torch.ones(H, W, 1)
        readout = best_of(lambda: model.instance_outputs(features, alpha), args.repeats)

        # Click to feedback: the viewer's on_click (render at CLICK_RENDER_HEIGHT, label, save selection.json, panel).
        import tempfile

        from nerfstudio.viewer.viewer_elements import ViewerClick

        from ulift_ns.viewer import CLICK_RENDER_HEIGHT

        click_camera = split_cameras(pipeline, "train")[0][1]
        click_camera.rescale_output_resolution(CLICK_RENDER_HEIGHT / int(click_camera.height.item()))
        selector = model.selector
        selector.set_camera_provider(lambda h, w: click_camera)
        selector.run_dir = Path(tempfile.mkdtemp())
        click = ViewerClick(origin=(0.0, 0.0, 0.0), direction=(0.0, 0.0, -1.0), screen_pos=(0.5, 0.5))
        latency = best_of(lambda: selector.on_click(click), args.repeats)
        click_size = f"{int(click_camera.width.item())}x{int(click_camera.height.item())}"

    table = Table(title=f"ulift render, one {W}x{H} view, {model.num_points} Gaussians, {torch.get_num_threads()} thread(s)")
    for col in ("step", "seconds"):
        table.add_column(col, justify="right")
    table.add_row("get_outputs_for_camera (per view)", f"{full:.3f}")
    table.add_row("  rasterisation (RGB + 16 features + depth)", f"{raster:.3f}")
    table.add_row("  label read-out (codebook)", f"{readout:.3f}")
    table.add_row(f"viewer click -> feedback ({click_size} render + selection.json + panel)", f"{latency:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
