"""Tests for the CPU rasterizer in ``ulift_ns.rasterize``.

The tiled rasterizer is checked against the brute-force ``rasterization_reference``
(forward and every gradient, float64), against ``torch.autograd.gradcheck``, against
an independent per-pixel brute force for ``absgrad``, against gsplat's own pure-torch
reference implementations (SH, projection), and against gsplat's ``DefaultStrategy``
densification contract.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import pytest
import torch
from torch import Tensor

from ulift_ns.rasterize import (
    ALPHA_MAX,
    ALPHA_MIN,
    TRANSMITTANCE_MIN,
    project_gaussians,
    rasterization,
    rasterization_reference,
    spherical_harmonics,
)

F64 = torch.float64
PARAM_NAMES = ("means", "quats", "scales", "opacities", "colors")


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """These scenes are tiny: one thread is as fast, and it avoids OpenMP spin-wait
    slowdowns (measured 5x) when other processes share the 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- scenes


def _axis_angle_to_rotmat(v: Tensor) -> Tensor:
    """Rodrigues' formula for a single axis-angle vector ``[3]``."""
    theta = v.norm()
    if float(theta) < 1e-12:
        return torch.eye(3, dtype=v.dtype)
    k = v / theta
    kx = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]], dtype=v.dtype)
    return torch.eye(3, dtype=v.dtype) + torch.sin(theta) * kx + (1 - torch.cos(theta)) * (kx @ kx)


def make_cameras(n_cameras: int, width: int, height: int, gen: torch.Generator, dtype=F64) -> Tuple[Tensor, Tensor]:
    """``C`` world-to-camera matrices near the identity (camera 0 is the identity) and pinhole Ks."""
    viewmats, ks = [], []
    for c in range(n_cameras):
        vm = torch.eye(4, dtype=dtype)
        if c > 0:
            vm[:3, :3] = _axis_angle_to_rotmat((torch.rand(3, generator=gen, dtype=dtype) - 0.5) * 0.2)
            vm[:3, 3] = (torch.rand(3, generator=gen, dtype=dtype) - 0.5) * 0.4
        f = width * (0.9 + 0.2 * float(torch.rand(1, generator=gen)))
        cx = width / 2 + (float(torch.rand(1, generator=gen)) - 0.5) * 2
        cy = height / 2 + (float(torch.rand(1, generator=gen)) - 0.5) * 2
        viewmats.append(vm)
        ks.append(torch.tensor([[f, 0.0, cx], [0.0, f * 1.05, cy], [0.0, 0.0, 1.0]], dtype=dtype))
    return torch.stack(viewmats), torch.stack(ks)


def make_scene(
    seed: int,
    n: int,
    width: int,
    height: int,
    n_cameras: int = 1,
    channels: int = 3,
    dtype=F64,
    extras: bool = True,
) -> Dict[str, object]:
    """Random Gaussians in front of camera 0, plus (``extras``) awkward ones.

    The extras are: behind the camera, straddling the near plane, far off-screen, very
    large translucent Gaussians covering the whole image, and a fully opaque wide backdrop
    (alpha clamped at 0.999, transmittance reaching the 1e-4 stop). Indices are returned.
    """
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=gen, dtype=dtype)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    z = 2.0 + 3.0 * rand(n)
    x = (rand(n) - 0.5) * 1.4 * z  # x/z within ±0.7 (the image spans about ±0.5)
    y = (rand(n) - 0.5) * 1.4 * z * (height / width)
    means = torch.stack([x, y, z], -1)
    scales = torch.exp(randn(n, 3) * 0.4 + math.log(0.04))
    groups: Dict[str, Tensor] = {}
    if extras:
        k = max(4, n // 40)
        behind = torch.stack([randn(k) * 0.5, randn(k) * 0.5, -0.5 - 2.5 * rand(k)], -1)
        # Centres just either side of the near plane (0.01), with extents much larger than that.
        straddle = torch.stack([randn(k) * 0.02, randn(k) * 0.02, -0.02 + 0.06 * rand(k)], -1)
        side = torch.where(rand(k) < 0.5, -1.0, 1.0).to(dtype)
        offscreen = torch.stack([side * (2.0 + rand(k)) * 4.0, randn(k), 4.0 + rand(k)], -1)
        huge = torch.stack([randn(2) * 0.1, randn(2) * 0.1, 3.0 + rand(2)], -1)
        # Fully opaque, very wide and far behind everything: alpha hits the 0.999 clamp near its centre.
        backdrop = torch.stack([randn(2) * 0.3, randn(2) * 0.3, 8.0 + rand(2)], -1)
        blocks = [
            ("behind", behind, 0.05), ("straddle", straddle, 0.05), ("offscreen", offscreen, 0.05),
            ("huge", huge, 2.5), ("backdrop", backdrop, 6.0),
        ]
        start = n
        for name, pos, s in blocks:
            groups[name] = torch.arange(start, start + len(pos))
            start += len(pos)
            means = torch.cat([means, pos], 0)
            scales = torch.cat([scales, s * torch.exp(randn(len(pos), 3) * 0.2)], 0)
    total = len(means)
    quats = randn(total, 4)
    opacities = 0.05 + 0.9 * rand(total)
    # Some near-opaque Gaussians, so alpha hits the 0.999 clamp at their centres.
    opaque = torch.arange(0, n, 17)
    opacities[opaque] = 0.9995 + 0.0005 * rand(len(opaque))
    if extras:
        opacities[groups["huge"]] = torch.tensor([0.3, 0.6], dtype=dtype)  # translucent: others show through
        opacities[groups["backdrop"]] = 1.0
    colors = rand(total, channels)
    viewmats, ks = make_cameras(n_cameras, width, height, gen, dtype)
    return dict(
        means=means, quats=quats, scales=scales, opacities=opacities, colors=colors,
        viewmats=viewmats, Ks=ks, width=width, height=height, groups=groups, gen=gen,
    )


def _params(scene: Dict[str, object], colors: Optional[Tensor] = None) -> List[Tensor]:
    out = [scene[k].detach().clone().requires_grad_(True) for k in PARAM_NAMES[:4]]  # type: ignore[union-attr]
    c = scene["colors"] if colors is None else colors
    out.append(c.detach().clone().requires_grad_(True))  # type: ignore[union-attr]
    return out


def _assert_rel_close(actual: Tensor, expected: Tensor, rel: float, what: str) -> None:
    """Elementwise ``|a - e| <= rel * |e| + rel * 1e-4 * max|e|`` (a tiny floor for exact zeros)."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    scale = float(expected.detach().abs().max())
    torch.testing.assert_close(
        actual, expected, rtol=rel, atol=rel * 1e-4 * max(scale, 1e-30), msg=lambda m: f"{what}: {m}"
    )


def _compare_with_reference(
    scene: Dict[str, object],
    *,
    colors: Optional[Tensor] = None,
    sh_degree: Optional[int] = None,
    render_mode: str = "RGB",
    tile_size: int = 8,
    backgrounds: Optional[Tensor] = None,
    rel: float = 1e-5,
) -> Tuple[Tensor, Tensor, Dict]:
    params = _params(scene, colors)
    cams = dict(viewmats=scene["viewmats"], Ks=scene["Ks"], width=scene["width"], height=scene["height"])
    render, alpha, info = rasterization(
        *params, **cams, sh_degree=sh_degree, render_mode=render_mode, tile_size=tile_size, backgrounds=backgrounds
    )
    ref_render, ref_alpha = rasterization_reference(
        *params, **cams, sh_degree=sh_degree, render_mode=render_mode, backgrounds=backgrounds
    )
    c, h, w = len(scene["viewmats"]), scene["height"], scene["width"]  # type: ignore[arg-type]
    assert render.shape[:3] == (c, h, w) and alpha.shape == (c, h, w, 1)
    _assert_rel_close(render, ref_render, rel, "render")
    _assert_rel_close(alpha, ref_alpha, rel, "alpha")
    # The scene must actually exercise compositing.
    assert float(ref_alpha.detach().max()) > 0.5 and info["n_intersections"] > 0

    gen = scene["gen"]
    g_render = torch.randn(render.shape, generator=gen, dtype=render.dtype)  # type: ignore[arg-type]
    g_alpha = torch.randn(alpha.shape, generator=gen, dtype=alpha.dtype)  # type: ignore[arg-type]
    depth_only = render_mode in ("D", "ED")  # colours are not used at all
    used = params[:4] if depth_only else params
    grads = torch.autograd.grad((render * g_render).sum() + (alpha * g_alpha).sum(), used)
    ref_grads = torch.autograd.grad((ref_render * g_render).sum() + (ref_alpha * g_alpha).sum(), used)
    for name, g, rg in zip(PARAM_NAMES, grads, ref_grads):
        assert float(rg.abs().max()) > 0, f"reference gradient of {name} is all zero: scene too trivial"
        _assert_rel_close(g, rg, rel, f"d/d{name}")
    return render, alpha, info


# --------------------------------------------------------------------------- tiled == brute force


@pytest.mark.parametrize("tile_size", [8, 16])
def test_matches_reference_basic_non_multiple_of_tile(tile_size: int) -> None:
    scene = make_scene(0, 400, 37, 29)
    _, _, info = _compare_with_reference(scene, tile_size=tile_size)
    groups, radii = scene["groups"], info["radii"]
    assert (radii[0, groups["behind"]] == 0).all()
    assert (radii[0, groups["huge"]] > 37).all()


def test_matches_reference_awkward_gaussians_multi_camera_depth_background() -> None:
    """C=2, RGB+ED, background colours, Gaussians behind / straddling near / off-screen / huge."""
    scene = make_scene(1, 1200, 64, 48, n_cameras=2)
    bg = torch.tensor([[0.2, 0.5, 0.9], [1.0, 0.0, 0.3]], dtype=F64)
    render, alpha, info = _compare_with_reference(scene, render_mode="RGB+ED", tile_size=8, backgrounds=bg)
    assert render.shape == (2, 48, 64, 4)
    groups = scene["groups"]
    proj = project_gaussians(
        scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene["viewmats"], scene["Ks"], 64, 48
    )
    # The awkward groups really are what they claim to be in camera 0.
    assert (proj.depths[0, groups["behind"]] < 0).all()
    straddle_z = proj.depths[0, groups["straddle"]]
    assert (straddle_z < 0.01).any() and (straddle_z > 0.01).any()
    assert (proj.extents[0, groups["straddle"]] > 0).any(), "some near-plane Gaussians must be drawn"
    assert (proj.extents[0, groups["offscreen"]] == 0).all()
    assert (info["radii"][:, groups["offscreen"]] == 0).all()
    # Huge Gaussians cover the whole image in camera 0.
    assert (proj.extents[0, groups["huge"]] > 64).all()
    # Alpha reaches the 0.999 clamp somewhere and transmittance reaches the 1e-4 stop somewhere.
    _, _, raw_alpha, t_after = _brute_force_camera(
        proj.means2d[0], proj.conics[0], proj.opacities[0], scene["colors"], proj.extents[0] > 0, proj.depths[0], 64, 48
    )
    assert (raw_alpha >= ALPHA_MAX).any() and (t_after <= TRANSMITTANCE_MIN).any()
    # Expected depth is a depth: within the range of drawn Gaussians where alpha is substantial.
    depth = render[..., 3][alpha[..., 0] > 0.5]
    assert depth.min() > 0 and depth.max() < 6


def test_matches_reference_19_channels_three_cameras_tile16() -> None:
    scene = make_scene(2, 600, 40, 24, n_cameras=3, channels=19)
    bg = torch.rand(3, 19, dtype=F64, generator=scene["gen"])
    render, _, _ = _compare_with_reference(scene, tile_size=16, backgrounds=bg)
    assert render.shape == (3, 24, 40, 19)


def test_matches_reference_per_camera_colors_and_depth_modes() -> None:
    scene = make_scene(3, 300, 33, 21, n_cameras=2, channels=5)
    per_cam = torch.rand(2, len(scene["means"]), 5, dtype=F64, generator=scene["gen"])
    for mode in ("D", "ED", "RGB+D"):
        _compare_with_reference(scene, colors=per_cam, render_mode=mode, tile_size=8)


@pytest.mark.parametrize("sh_degree", [0, 1, 2, 3])
def test_matches_reference_sh_colors(sh_degree: int) -> None:
    scene = make_scene(10 + sh_degree, 300, 37, 29, n_cameras=2)
    n = len(scene["means"])
    coeffs = torch.randn(n, 16, 3, dtype=F64, generator=scene["gen"]) * 0.3
    coeffs[:, 0] += 1.0  # mostly positive colours so the clamp at 0 does not zero everything
    _compare_with_reference(scene, colors=coeffs, sh_degree=sh_degree, tile_size=8)


def test_float32_forward_and_backward_close_to_float64_reference() -> None:
    scene = make_scene(4, 800, 64, 48, n_cameras=2)
    cams = dict(viewmats=scene["viewmats"], Ks=scene["Ks"], width=64, height=48)
    ref_params = _params(scene)
    ref_render, ref_alpha = rasterization_reference(*ref_params, **cams, render_mode="RGB+ED")
    p32 = [p.detach().float().requires_grad_(True) for p in ref_params]
    cams32 = dict(cams, viewmats=scene["viewmats"].float(), Ks=scene["Ks"].float())
    render, alpha, _ = rasterization(*p32, **cams32, render_mode="RGB+ED")
    # Colours and alpha are in [0, 1]; measured float32 errors are ~1e-6, a real bug is >> 2e-5.
    assert (render[..., :3].double() - ref_render[..., :3]).abs().max() < 2e-5
    assert (alpha.double() - ref_alpha).abs().max() < 2e-5
    covered = ref_alpha[..., 0] > 0.05  # expected depth is ill-conditioned where nothing is drawn
    assert (render[..., 3].double() - ref_render[..., 3])[covered].abs().max() < 1e-4
    # Also the float32 reference agrees with the float32 tiled path.
    r32, a32 = rasterization_reference(*p32, **cams32, render_mode="RGB+ED")
    assert (render - r32)[..., :3].abs().max() < 2e-5 and (alpha - a32).abs().max() < 2e-5
    # Gradients in float32 stay close to the float64 ones (relative to their scale; measured <= 2e-5).
    g = torch.randn(render.shape, generator=scene["gen"], dtype=F64)
    g[..., 3] = 0  # skip expected depth, ill-conditioned at tiny alpha
    grads = torch.autograd.grad((render.double() * g).sum(), p32)
    ref_grads = torch.autograd.grad((ref_render * g).sum(), ref_params)
    for name, a, b in zip(PARAM_NAMES, grads, ref_grads):
        err = float((a.double() - b).abs().max() / b.abs().max())
        assert err < 1e-3, f"float32 d/d{name} relative error {err}"


# --------------------------------------------------------------------------- gradcheck


def _tiny_scene(seed: int, width: int, height: int, channels: int) -> Tuple[List[Tensor], Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    means = torch.tensor(
        [[0.0, 0.0, 3.0], [0.3, 0.2, 3.5], [-0.4, 0.1, 2.5], [0.2, -0.3, 4.0], [-0.2, -0.2, 3.2], [0.5, 0.4, 2.8]],
        dtype=F64,
    )
    n = len(means)
    quats = torch.randn(n, 4, generator=gen, dtype=F64)
    scales = 0.15 + 0.1 * torch.rand(n, 3, generator=gen, dtype=F64)
    opacities = 0.3 + 0.5 * torch.rand(n, generator=gen, dtype=F64)
    colors = torch.rand(n, channels, generator=gen, dtype=F64)
    viewmats = torch.eye(4, dtype=F64)[None]
    ks = torch.tensor([[width, 0.0, width / 2], [0.0, width, height / 2], [0.0, 0.0, 1.0]], dtype=F64)[None]
    return [means, quats, scales, opacities, colors], viewmats, ks


def _assert_away_from_thresholds(params: List[Tensor], viewmats: Tensor, ks: Tensor, w: int, h: int) -> None:
    """Finite differences are only valid where no alpha / transmittance threshold is crossed."""
    proj = project_gaussians(*params[:4], viewmats, ks, w, h)
    _, _, raw_alpha, t_after = _brute_force_camera(
        proj.means2d[0], proj.conics[0], proj.opacities[0], params[4], proj.extents[0] > 0, proj.depths[0], w, h
    )
    # With eps=1e-7 in gradcheck, alpha moves by < 1e-8: a 1e-6 margin is far from every threshold.
    assert (raw_alpha - ALPHA_MIN).abs().min() > 1e-6
    assert (raw_alpha - ALPHA_MAX).abs().min() > 1e-6
    assert (t_after - TRANSMITTANCE_MIN).abs().min() > 1e-6
    assert (raw_alpha >= ALPHA_MIN).sum() > 50, "tiny scene should overlap plenty of pixels"


def test_gradcheck_fast_mode() -> None:
    w, h = 12, 10
    for seed in (1, 2):
        params, viewmats, ks = _tiny_scene(seed, w, h, 3)
        _assert_away_from_thresholds(params, viewmats, ks, w, h)

        def fn(*p: Tensor) -> Tuple[Tensor, Tensor]:
            render, alpha, _ = rasterization(*p, viewmats, ks, w, h, render_mode="RGB+ED", tile_size=8)
            return render, alpha

        inputs = [p.clone().requires_grad_(True) for p in params]
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-7, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_gradcheck_full_jacobian() -> None:
    w, h = 8, 6
    params, viewmats, ks = _tiny_scene(3, w, h, 1)
    params[0] = params[0] * 0.5 + torch.tensor([0.0, 0.0, 1.5], dtype=F64)  # bring them closer: bigger on screen
    _assert_away_from_thresholds(params, viewmats, ks, w, h)

    def fn(*p: Tensor) -> Tuple[Tensor, Tensor]:
        render, alpha, _ = rasterization(*p, viewmats, ks, w, h, tile_size=8)
        return render, alpha

    inputs = [p.clone().requires_grad_(True) for p in params]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-7, atol=1e-6, rtol=1e-4)


def test_backward_twice_with_retain_graph() -> None:
    """``retain_graph=True`` must allow a second backward with identical results (gradcheck relies on it)."""
    scene = make_scene(5, 100, 24, 16, extras=False)
    params = _params(scene)
    render, alpha, _ = rasterization(*params, scene["viewmats"], scene["Ks"], 24, 16)
    loss = render.sum() + alpha.square().sum()
    g1 = torch.autograd.grad(loss, params, retain_graph=True)
    g2 = torch.autograd.grad(loss, params)
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- absgrad


def _brute_force_camera(
    means2d: Tensor, conics: Tensor, opac: Tensor, colors: Tensor, drawn: Tensor, depths: Tensor, w: int, h: int
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Independent brute-force composite of one camera, gsplat 'classic' rules.

    ``means2d`` may be ``[N,2]`` or per pixel ``[P,N,2]``. Returns render ``[P,D]``,
    alpha ``[P]``, the raw (pre-threshold) alpha ``[P,N]`` and transmittance after each
    Gaussian ``[P,N]``, all in depth order.
    """
    order = torch.argsort(depths.detach(), stable=True)
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=colors.dtype) + 0.5, torch.arange(w, dtype=colors.dtype) + 0.5, indexing="ij"
    )
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)
    m = means2d[..., order, :]
    d = pix[:, None, :] - m
    con = conics[order]
    sigma = 0.5 * con[:, 0] * d[..., 0] ** 2 + con[:, 1] * d[..., 0] * d[..., 1] + 0.5 * con[:, 2] * d[..., 1] ** 2
    raw = opac[order] * torch.exp(-sigma)
    alpha = torch.where(drawn[order] & (raw >= ALPHA_MIN), raw.clamp_max(ALPHA_MAX), torch.zeros_like(raw))
    t_after = torch.cumprod(1 - alpha, dim=1)
    t_before = torch.cat([torch.ones_like(t_after[:, :1]), t_after[:, :-1]], 1)
    weight = torch.where(t_after > TRANSMITTANCE_MIN, alpha * t_before, torch.zeros_like(alpha))
    return weight @ colors[order], weight.sum(1), raw, t_after


def test_absgrad_matches_per_pixel_brute_force() -> None:
    scene = make_scene(6, 250, 31, 23, n_cameras=2)
    params = _params(scene)
    w, h = 31, 23
    render, alpha, info = rasterization(*params, scene["viewmats"], scene["Ks"], w, h, absgrad=True, tile_size=8)
    info["means2d"].retain_grad()
    gen = scene["gen"]
    g_render = torch.randn(render.shape, generator=gen, dtype=F64)
    g_alpha = torch.randn(alpha.shape, generator=gen, dtype=F64)
    ((render * g_render).sum() + (alpha * g_alpha).sum()).backward()
    absgrad, grad = info["means2d"].absgrad, info["means2d"].grad
    assert absgrad.shape == grad.shape == (2, len(scene["means"]), 2)

    with torch.no_grad():
        proj = project_gaussians(*[p.detach() for p in params[:4]], scene["viewmats"], scene["Ks"], w, h)
    for c in range(2):
        per_pixel = proj.means2d[c][None].expand(w * h, -1, -1).clone().requires_grad_(True)  # [P,N,2]
        out, a, _, _ = _brute_force_camera(
            per_pixel, proj.conics[c], proj.opacities[c], params[4].detach(), proj.extents[c] > 0, proj.depths[c], w, h
        )
        loss = (out * g_render[c].reshape(w * h, -1)).sum() + (a * g_alpha[c].reshape(-1)).sum()
        loss.backward()
        # ``per_pixel`` is the leaf in Gaussian-id order (the helper reorders a view of it).
        ref_abs = per_pixel.grad.abs().sum(0)
        ref_grad = per_pixel.grad.sum(0)
        _assert_rel_close(grad[c], ref_grad, 1e-5, "means2d.grad")
        _assert_rel_close(absgrad[c], ref_abs, 1e-5, "means2d.absgrad")
    assert (absgrad >= grad.abs() - 1e-12).all()
    assert (absgrad > grad.abs() * 1.5 + 1e-9).any(), "absgrad should differ from |grad| in general"
    # Culled Gaussians have no screen-space gradient at all.
    assert (absgrad[:, scene["groups"]["behind"]] == 0).all()


def test_absgrad_not_set_without_flag() -> None:
    scene = make_scene(7, 50, 16, 16, extras=False)
    params = _params(scene)
    render, _, info = rasterization(*params, scene["viewmats"], scene["Ks"], 16, 16)
    info["means2d"].retain_grad()
    render.sum().backward()
    assert info["means2d"].grad is not None
    assert getattr(info["means2d"], "absgrad", None) is None


# --------------------------------------------------------------------------- info / strategy contract


def test_info_satisfies_default_strategy_contract() -> None:
    scene = make_scene(8, 200, 30, 20, n_cameras=2, dtype=torch.float32)
    params = _params(scene)
    _, _, info = rasterization(*params, scene["viewmats"], scene["Ks"], 30, 20, absgrad=True)
    for key in ("means2d", "radii", "width", "height", "n_cameras", "gaussian_ids"):
        assert key in info
    n = len(scene["means"])
    assert info["gaussian_ids"] is None
    assert info["width"] == 30 and info["height"] == 20 and info["n_cameras"] == 2
    assert info["radii"].shape == (2, n) and info["radii"].dtype == torch.int32
    assert info["means2d"].shape == (2, n, 2) and info["means2d"].requires_grad
    assert info["depths"].shape == (2, n) and info["conics"].shape == (2, n, 3)
    assert (info["radii"] >= 0).all() and (info["radii"] > 0).any()


def _run_densification(
    n_steps: int, grow_grad2d: float, low_opacity: int, seed: int = 0, verbose: bool = False
) -> Tuple[List[int], torch.nn.ParameterDict]:
    from gsplat.strategy import DefaultStrategy

    w, h, n = 32, 24, 150
    scene = make_scene(seed, n, w, h, extras=False, dtype=torch.float32)
    opac = scene["opacities"].clone()
    opac[:low_opacity] = 0.001  # below prune_opa
    # Mix of small (duplicated) and large (split) Gaussians relative to grow_scale3d=0.01.
    scales = scene["scales"].clone()
    scales[n // 2 :] *= 0.1
    params = torch.nn.ParameterDict(
        {
            "means": scene["means"],
            "scales": torch.log(scales),
            "quats": scene["quats"],
            "opacities": torch.logit(opac),
            "colors": scene["colors"],
        }
    )
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    strategy = DefaultStrategy(
        refine_start_iter=0, refine_every=2, reset_every=10_000, absgrad=True, grow_grad2d=grow_grad2d, verbose=verbose
    )
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)
    target = torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(1))
    counts = [len(params["means"])]
    for step in range(1, n_steps + 1):
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        render, alpha, info = rasterization(
            means=params["means"],
            quats=params["quats"],
            scales=torch.exp(params["scales"]),
            opacities=torch.sigmoid(params["opacities"]),
            colors=params["colors"],
            viewmats=scene["viewmats"],
            Ks=scene["Ks"],
            width=w,
            height=h,
            packed=False,
            absgrad=strategy.absgrad,
            rasterize_mode="classic",
        )
        strategy.step_pre_backward(params, optimizers, state, step, info)
        loss = (render - target).square().mean()
        loss.backward()
        assert info["means2d"].absgrad is not None
        for opt in optimizers.values():
            opt.step()
        strategy.step_post_backward(params, optimizers, state, step, info, packed=False)
        counts.append(len(params["means"]))
        for k, p in params.items():
            assert len(p) == counts[-1] and optimizers[k].param_groups[0]["params"][0] is p
    return counts, params


def test_default_strategy_densifies_with_cpu_rasterizer(capsys: pytest.CaptureFixture) -> None:
    import re

    counts, params = _run_densification(n_steps=4, grow_grad2d=1e-6, low_opacity=10, verbose=True)
    log = capsys.readouterr().out
    grown = [(int(d), int(s)) for d, s in re.findall(r"(\d+) GSs duplicated, (\d+) GSs split", log)]
    pruned = [int(p) for p in re.findall(r"(\d+) GSs pruned", log)]
    assert len(grown) == 2 and len(pruned) == 2, log
    assert grown[0][0] > 0 and grown[0][1] > 0, f"both clone (small) and split (large) should happen: {log}"
    assert pruned[0] >= 10, f"the 10 low-opacity Gaussians should be pruned: {log}"
    assert counts[1] == counts[0], "no refinement before step 2"
    assert counts[2] > counts[0], f"Gaussians should grow by split/clone: {counts}"
    assert counts[4] > counts[2], f"second refinement should grow again: {counts}"
    assert (torch.sigmoid(params["opacities"]) >= 0.005).all(), "low-opacity Gaussians pruned"


def test_default_strategy_prunes_low_opacity() -> None:
    counts, params = _run_densification(n_steps=2, grow_grad2d=1e9, low_opacity=12)
    assert counts == [150, 150, 150 - 12], counts
    assert (torch.sigmoid(params["opacities"]) >= 0.005).all()


# --------------------------------------------------------------------------- culling and dispatch


def test_culled_gaussians_have_zero_radii_and_gradients() -> None:
    w, h = 24, 20
    means = torch.tensor(
        [
            [0.0, 0.0, 3.0],  # visible
            [0.2, -0.1, 2.5],  # visible
            [0.0, 0.0, -3.0],  # behind the camera
            [0.1, 0.0, 0.005],  # in front of the camera but closer than the near plane
            [40.0, 0.0, 3.0],  # far off-screen right
            [0.0, -50.0, 4.0],  # far off-screen up
            [-0.1, 0.1, 3.0],  # on screen but opacity below 1/255
        ],
        dtype=F64,
    )
    n = len(means)
    gen = torch.Generator().manual_seed(0)
    quats = torch.randn(n, 4, generator=gen, dtype=F64)
    scales = torch.full((n, 3), 0.2, dtype=F64)
    opacities = torch.tensor([0.8, 0.7, 0.9, 0.9, 0.9, 0.9, 0.002], dtype=F64)
    colors = torch.rand(n, 3, generator=gen, dtype=F64)
    viewmats = torch.eye(4, dtype=F64)[None]
    ks = torch.tensor([[24.0, 0.0, 12.0], [0.0, 24.0, 10.0], [0.0, 0.0, 1.0]], dtype=F64)[None]
    params = [t.clone().requires_grad_(True) for t in (means, quats, scales, opacities, colors)]
    render, alpha, info = rasterization(*params, viewmats, ks, w, h, render_mode="RGB+ED", absgrad=True)
    info["means2d"].retain_grad()
    (render.square().sum() + alpha.sum()).backward()
    radii = info["radii"][0]
    assert (radii[:2] > 0).all() and (radii[2:6] == 0).all()
    assert radii[6] > 0, "low opacity does not change gsplat's 3-sigma radius"
    for name, p in zip(PARAM_NAMES, params):
        assert (p.grad[2:] == 0).all(), f"culled Gaussians got d/d{name} != 0"
        assert p.grad[:2].abs().sum() > 0, f"visible Gaussians got no d/d{name}"
    assert (info["means2d"].grad[0, 2:] == 0).all() and (info["means2d"].absgrad[0, 2:] == 0).all()


@pytest.mark.parametrize("case", ["empty", "all_behind"])
def test_nothing_drawn_gives_empty_images_and_zero_gradients(case: str) -> None:
    n = 0 if case == "empty" else 5
    gen = torch.Generator().manual_seed(0)
    means = torch.randn(n, 3, generator=gen, dtype=F64) * 0.1 + torch.tensor([0.0, 0.0, -3.0], dtype=F64)
    params = [
        means, torch.randn(n, 4, generator=gen, dtype=F64), torch.full((n, 3), 0.1, dtype=F64),
        torch.full((n,), 0.9, dtype=F64), torch.rand(n, 3, generator=gen, dtype=F64),
    ]
    params = [p.requires_grad_(True) for p in params]
    viewmats = torch.eye(4, dtype=F64)[None].repeat(2, 1, 1)
    ks = torch.tensor([[16.0, 0.0, 8.0], [0.0, 16.0, 6.0], [0.0, 0.0, 1.0]], dtype=F64)[None].repeat(2, 1, 1)
    bg = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], dtype=F64)
    render, alpha, info = rasterization(*params, viewmats, ks, 16, 12, render_mode="RGB+ED", backgrounds=bg, absgrad=True)
    assert render.shape == (2, 12, 16, 4) and info["n_intersections"] == 0
    assert (alpha == 0).all() and (render[..., 3] == 0).all()
    torch.testing.assert_close(render[..., :3], bg[:, None, None, :].expand(2, 12, 16, 3))
    info["means2d"].retain_grad()
    (render.sum() + alpha.sum()).backward()
    assert all(p.grad is not None and (p.grad == 0).all() for p in params)
    assert info["means2d"].absgrad.shape == (2, n, 2) and (info["radii"] == 0).all()
    with torch.no_grad():
        render2, _, _ = rasterization(*params, viewmats, ks, 16, 12, render_mode="RGB+ED", backgrounds=bg)
    torch.testing.assert_close(render2, render.detach())


def test_dispatch_and_argument_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    import gsplat

    import ulift_ns.rasterize as rast

    monkeypatch.setattr(rast, "gsplat_unavailable_reason", lambda: None)  # pretend the kernels were built

    scene = make_scene(9, 20, 16, 12, extras=False, dtype=torch.float32)
    args = [scene[k] for k in PARAM_NAMES] + [scene["viewmats"], scene["Ks"], 16, 12]
    with pytest.raises(ValueError, match="backend"):
        rasterization(*args, backend="cuda")
    with pytest.raises(NotImplementedError, match="classic"):
        rasterization(*args, rasterize_mode="antialiased")
    with pytest.raises(ValueError, match="render_mode"):
        rasterization(*args, render_mode="RGBA")

    calls: List[Dict] = []

    def fake_gsplat(**kwargs):
        calls.append(kwargs)
        return "gsplat-result"

    monkeypatch.setattr(gsplat, "rasterization", fake_gsplat)
    # backend="gsplat" forwards every argument (incl. unknown kwargs) with gsplat's default tile size.
    assert rasterization(*args, backend="gsplat", absgrad=True, sparse_grad=False) == "gsplat-result"
    assert calls[-1]["tile_size"] == 16 and calls[-1]["absgrad"] is True and calls[-1]["sparse_grad"] is False
    assert calls[-1]["means"] is scene["means"] and calls[-1]["width"] == 16
    # CPU tensors with "auto" or "torch" never touch gsplat's kernels.
    n_calls = len(calls)
    for backend in ("auto", "torch"):
        render, _, info = rasterization(*args, backend=backend)
        assert render.shape == (1, 12, 16, 3) and info["tile_size"] == 8
    assert len(calls) == n_calls


# --------------------------------------------------------------------------- gsplat's torch references


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_spherical_harmonics_matches_gsplat_torch_impl(degree: int) -> None:
    from gsplat.cuda._torch_impl import _spherical_harmonics

    gen = torch.Generator().manual_seed(degree)
    dirs = torch.randn(500, 3, generator=gen, dtype=F64) * 3.0  # unnormalised: both normalise
    for k in ((degree + 1) ** 2, 16):
        coeffs = torch.randn(500, k, 3, generator=gen, dtype=F64)
        ours = spherical_harmonics(degree, dirs, coeffs)
        theirs = _spherical_harmonics(degree, dirs, coeffs)
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    # Batched leading dims [C,N] as rasterization uses them.
    coeffs = torch.randn(2, 50, 16, 3, generator=gen, dtype=F64)
    d2 = torch.randn(2, 50, 3, generator=gen, dtype=F64)
    torch.testing.assert_close(spherical_harmonics(degree, d2, coeffs), _spherical_harmonics(degree, d2, coeffs))


def test_spherical_harmonics_rejects_bad_degree() -> None:
    with pytest.raises(ValueError):
        spherical_harmonics(4, torch.randn(3, 3), torch.randn(3, 25, 3))
    with pytest.raises(ValueError):
        spherical_harmonics(2, torch.randn(3, 3), torch.randn(3, 4, 3))


def test_projection_matches_gsplat_torch_impl() -> None:
    # ``_fully_fused_projection`` / ``_quat_scale_to_covar_preci`` are pure torch (no CUDA calls).
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    w, h = 64, 48
    scene = make_scene(11, 1500, w, h, n_cameras=3)
    means, quats, scales = scene["means"], scene["quats"], scene["scales"]
    # gsplat's reference divides by z without guarding it: keep the near-plane group away from z == 0.
    keep = torch.ones(len(means), dtype=torch.bool)
    keep[scene["groups"]["straddle"]] = False
    means, quats, scales, opac = means[keep], quats[keep], scales[keep], scene["opacities"][keep]
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(
        means, covars, scene["viewmats"], scene["Ks"], w, h, eps2d=0.3, near_plane=0.01, far_plane=1e10
    )
    proj = project_gaussians(means, quats, scales, opac, scene["viewmats"], scene["Ks"], w, h)
    assert torch.equal(proj.radii, radii.to(torch.int32))
    vis = radii > 0
    assert vis.sum() > 1000 and (~vis).sum() > 50
    # Means and conics of every Gaussian in front of the near plane, on screen or not (this also
    # checks the Jacobian's off-screen clamp, which only matters for off-screen Gaussians).
    front = depths > 0.01
    assert (front & ~vis).sum() > 30
    torch.testing.assert_close(proj.means2d[front], means2d[front], rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(proj.conics[front], conics[front], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(proj.depths, depths, rtol=1e-12, atol=1e-12)
    # Every Gaussian with a 3-sigma radius is also drawn (the opacity-aware extent only
    # adds or drops Gaussians whose alpha is below 1/255 everywhere on screen).
    drawn = proj.extents > 0
    strong = vis & (opac[None] > 0.5)
    assert drawn[strong].all()


# --------------------------------------------------------------------------- no_geometry_grad_channels


def _masked_reference(params: List[Tensor], scene: Dict[str, object], channels: Tuple[int, int], **kw):
    """Brute force where channels ``[start, stop)`` see geometry only through a detached copy."""
    start, stop = channels
    cams = dict(viewmats=scene["viewmats"], Ks=scene["Ks"], width=scene["width"], height=scene["height"])
    full, alpha = rasterization_reference(*params, **cams, **kw)
    geometry = [p.detach() for p in params[:4]]
    side, _ = rasterization_reference(*geometry, params[4], **cams, **kw)
    return torch.cat([full[..., :start], side[..., start:stop], full[..., stop:]], -1), alpha


def test_no_geometry_grad_channels_matches_detached_reference() -> None:
    scene = make_scene(12, 300, 37, 29, n_cameras=2, channels=7)
    channels = (3, 7)
    bg = torch.rand(2, 3, dtype=F64, generator=scene["gen"])
    params = _params(scene)
    cams = dict(viewmats=scene["viewmats"], Ks=scene["Ks"], width=37, height=29)
    render, alpha, _ = rasterization(
        *params, **cams, render_mode="RGB+ED", backgrounds=bg, no_geometry_grad_channels=channels
    )
    ref_render, ref_alpha = _masked_reference(params, scene, channels, render_mode="RGB+ED", backgrounds=bg)
    _assert_rel_close(render, ref_render, 1e-5, "render")
    _assert_rel_close(alpha, ref_alpha, 1e-5, "alpha")
    g_render = torch.randn(render.shape, generator=scene["gen"], dtype=F64)
    g_alpha = torch.randn(alpha.shape, generator=scene["gen"], dtype=F64)
    grads = torch.autograd.grad((render * g_render).sum() + (alpha * g_alpha).sum(), params)
    ref_grads = torch.autograd.grad((ref_render * g_render).sum() + (ref_alpha * g_alpha).sum(), params)
    for name, g, rg in zip(PARAM_NAMES, grads, ref_grads):
        _assert_rel_close(g, rg, 1e-5, f"d/d{name}")
    # Gradient only on the masked channels: colours move, geometry does not.
    render, _, _ = rasterization(*params, **cams, render_mode="RGB+ED", no_geometry_grad_channels=channels)
    g_only = torch.zeros_like(render)
    g_only[..., 3:7] = 1.0
    grads = torch.autograd.grad((render * g_only).sum(), params)
    assert all((g == 0).all() for g in grads[:4]) and grads[4][:, 3:7].abs().sum() > 0
    with pytest.raises(ValueError, match="sh_degree"):
        rasterization(*params, **cams, sh_degree=0, no_geometry_grad_channels=channels)


def test_no_geometry_grad_channels_gsplat_two_pass_matches_torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA path's two-pass emulation, run here with the torch rasterizer standing in for gsplat.

    The stand-in ``rasterize_to_pixels`` re-renders the first pass's scene on detached geometry;
    what this checks is the splice of the channels, the backgrounds, and that the side pass only
    receives detached screen-space tensors (the real kernels are compared in test_gsplat_crosscheck).
    """
    import gsplat

    import ulift_ns.rasterize as rast

    monkeypatch.setattr(rast, "gsplat_unavailable_reason", lambda: None)
    last: Dict = {}

    def torch_as_gsplat(**kw):
        kw.pop("tile_size")
        last.clear()
        last.update(kw)
        render, alpha, info = rasterization(**kw, tile_size=8, backend="torch")
        info.update(isect_offsets="offsets", flatten_ids="ids")
        return render, alpha, info

    def torch_as_rasterize_to_pixels(means2d, conics, colors, opacities, width, height, tile_size, offsets, ids):
        assert not (means2d.requires_grad or conics.requires_grad or opacities.requires_grad)
        assert (offsets, ids) == ("offsets", "ids") and colors.dim() == 3
        geometry = {k: last[k].detach() for k in ("means", "quats", "scales", "opacities", "viewmats")}
        side, alpha, _ = rasterization(
            **geometry, colors=colors, Ks=last["Ks"], width=width, height=height, tile_size=8, backend="torch"
        )
        return side, alpha

    monkeypatch.setattr(gsplat, "rasterization", torch_as_gsplat)
    monkeypatch.setattr(gsplat, "rasterize_to_pixels", torch_as_rasterize_to_pixels)
    scene = make_scene(13, 200, 30, 22, n_cameras=2, channels=6)
    bg = torch.rand(2, 3, dtype=F64, generator=scene["gen"])
    cams = dict(viewmats=scene["viewmats"], Ks=scene["Ks"], width=30, height=22)
    kw = dict(render_mode="RGB+ED", backgrounds=bg, no_geometry_grad_channels=(3, 6))
    results = []
    for backend in ("gsplat", "torch"):
        params = _params(scene)
        render, alpha, _ = rasterization(*params, **cams, backend=backend, **kw)
        g = torch.randn(render.shape, generator=torch.Generator().manual_seed(0), dtype=F64)
        grads = torch.autograd.grad((render * g).sum() + alpha.sum(), params)
        results.append((render, alpha, grads))
    (r1, a1, g1), (r2, a2, g2) = results
    _assert_rel_close(r1, r2, 1e-5, "render")
    _assert_rel_close(a1, a2, 1e-5, "alpha")
    for name, x, y in zip(PARAM_NAMES, g1, g2):
        _assert_rel_close(x, y, 1e-5, f"d/d{name}")
