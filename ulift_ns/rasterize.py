"""One rasterization entry point with gsplat's contract, on CUDA or CPU.

``rasterization(...) -> (render [C,H,W,D], alpha [C,H,W,1], info)`` takes the same
arguments as ``gsplat.rasterization``.  On CUDA tensors it calls gsplat.  Everywhere
else it runs the tiled pure-PyTorch rasterizer below, which follows gsplat's
"classic" rules (EWA projection with ``eps2d`` blur, alpha = min(0.999, o·exp(-σ)),
skip alpha < 1/255, stop a pixel when its transmittance would reach 1e-4, pixel
centres at +0.5), so densification and training behave the same on both.

The CPU pipeline:

1. ``project_gaussians``: differentiable EWA projection (autograd).
2. ``plan_tiles``: tile binning and per-tile depth order (no grad, integer work).
3. ``_CompositeTiles``: front-to-back compositing of every tile with a hand-written
   backward pass, batched over tiles as dense ``[tiles, pixels, gaussians]`` blocks so
   the colour sums are matrix products.  Its backward also produces gsplat's
   ``means2d.absgrad`` (per-pixel absolute gradients, summed) for ``DefaultStrategy``.

One difference from gsplat 1.4 is deliberate: a Gaussian's tile footprint is its
*opacity-aware* extent ``sqrt(2 ln(255 o)) · sqrt(λ_max)``, outside which its alpha
is provably below 1/255.  That makes tiling exact — the tiled result equals the
brute-force sum over all pixels × all Gaussians (``rasterization_reference``) — while
``info["radii"]`` keeps gsplat's 3-sigma radii, so screen-size densification
thresholds mean the same thing on CPU and CUDA.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

ALPHA_MAX = 0.999
ALPHA_MIN = 1.0 / 255.0
TRANSMITTANCE_MIN = 1e-4
CPU_TILE_SIZE = 8
RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")

# Real spherical-harmonics constants, in the 3DGS sign convention gsplat uses.
_SH_C0 = 0.28209479177387814
_SH_C1 = 0.4886025119029199
_SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


@functools.lru_cache(maxsize=None)
def gsplat_unavailable_reason() -> Optional[str]:
    """Why gsplat's CUDA kernels cannot run here, or None when they can (checked once per process).

    gsplat 1.4 ships no prebuilt kernels: importing its backend JIT-compiles them, which
    needs ``nvcc`` from a CUDA toolkit whose major version matches torch's.  Without it
    ``_C`` stays None and the first kernel call dies with an AttributeError on NoneType.
    """
    try:
        import gsplat  # noqa: F401
    except ImportError as err:
        return f"gsplat is not installed ({err})"
    if not torch.cuda.is_available():
        return f"torch sees no CUDA device (torch {torch.__version__}, CUDA {torch.version.cuda})"
    try:
        from gsplat.cuda._backend import _C
    except Exception as err:  # a failed JIT build (e.g. nvcc's CUDA major differs from torch's)
        first = str(err).splitlines()[0] if str(err) else ""
        return f"gsplat's CUDA kernels failed to build ({type(err).__name__}: {first})"
    if _C is None:
        return (
            "gsplat has no compiled CUDA kernels: it JIT-compiles them on first use and needs `nvcc` on PATH from a "
            f"CUDA toolkit matching torch's CUDA {torch.version.cuda}"
        )
    return None


_FALLBACK_WARNED = False


def resolve_backend(backend: str, on_cuda: bool) -> str:
    """The backend that will run: ``"auto"`` is gsplat on CUDA tensors, falling back to torch with a
    warning when gsplat's kernels are missing; an explicit ``"gsplat"`` then fails, saying why."""
    global _FALLBACK_WARNED
    if backend not in ("auto", "gsplat", "torch"):
        raise ValueError(f"backend must be 'auto', 'gsplat' or 'torch', got {backend!r}")
    if backend == "torch" or (backend == "auto" and not on_cuda):
        return "torch"
    reason = gsplat_unavailable_reason()
    if reason is None:
        return "gsplat"
    if backend == "gsplat":
        raise RuntimeError(f"rasterizer backend 'gsplat' cannot run: {reason}. Or set --pipeline.model.rasterizer-backend torch.")
    if not _FALLBACK_WARNED:
        warnings.warn(f"{reason}. Falling back to the (slower) torch rasterizer on the GPU.", RuntimeWarning, stacklevel=3)
        _FALLBACK_WARNED = True
    return "torch"


def camera_centers(viewmats: Tensor) -> Tensor:
    """World positions ``[C,3]`` of rigid world-to-camera matrices: ``-Rᵀ t`` (no inverse, no host sync)."""
    rot, trans = viewmats[:, :3, :3], viewmats[:, :3, 3:4]
    return -(rot.transpose(1, 2) @ trans)[..., 0]


def spherical_harmonics(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Evaluate SH colours ``[..., 3]`` from ``coeffs [..., K, 3]`` along ``dirs [..., 3]`` (degree ≤ 3).

    On CUDA tensors with gsplat's kernels this is ``gsplat.spherical_harmonics`` (one fused
    kernel instead of ~40 elementwise passes over all Gaussians); same conventions.
    """
    if dirs.is_cuda and dirs.shape[:-1] == coeffs.shape[:-2] and 0 <= degree <= 3 and gsplat_unavailable_reason() is None:
        if coeffs.shape[-2] < (degree + 1) ** 2:
            raise ValueError(f"degree {degree} needs {(degree + 1) ** 2} SH coefficients, got {coeffs.shape[-2]}")
        from gsplat import spherical_harmonics as gsplat_spherical_harmonics

        return gsplat_spherical_harmonics(degree, dirs, coeffs)
    return torch_spherical_harmonics(degree, dirs, coeffs)


def torch_spherical_harmonics(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """The plain-torch SH evaluation, any device."""
    if not 0 <= degree <= 3:
        raise ValueError(f"spherical_harmonics supports degree 0..3, got {degree}")
    n_bases = (degree + 1) ** 2
    if coeffs.shape[-2] < n_bases:
        raise ValueError(f"degree {degree} needs {n_bases} SH coefficients, got {coeffs.shape[-2]}")
    result = _SH_C0 * coeffs[..., 0, :]
    if degree == 0:
        return result
    d = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    x, y, z = d[..., 0:1], d[..., 1:2], d[..., 2:3]
    result = result + _SH_C1 * (-y * coeffs[..., 1, :] + z * coeffs[..., 2, :] - x * coeffs[..., 3, :])
    if degree == 1:
        return result
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    result = (
        result
        + _SH_C2[0] * xy * coeffs[..., 4, :]
        + _SH_C2[1] * yz * coeffs[..., 5, :]
        + _SH_C2[2] * (2.0 * zz - xx - yy) * coeffs[..., 6, :]
        + _SH_C2[3] * xz * coeffs[..., 7, :]
        + _SH_C2[4] * (xx - yy) * coeffs[..., 8, :]
    )
    if degree == 2:
        return result
    return (
        result
        + _SH_C3[0] * y * (3.0 * xx - yy) * coeffs[..., 9, :]
        + _SH_C3[1] * xy * z * coeffs[..., 10, :]
        + _SH_C3[2] * y * (4.0 * zz - xx - yy) * coeffs[..., 11, :]
        + _SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy) * coeffs[..., 12, :]
        + _SH_C3[4] * x * (4.0 * zz - xx - yy) * coeffs[..., 13, :]
        + _SH_C3[5] * z * (xx - yy) * coeffs[..., 14, :]
        + _SH_C3[6] * x * (xx - 3.0 * yy) * coeffs[..., 15, :]
    )


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices ``[N,3,3]`` from (w, x, y, z) quaternions, normalised here as gsplat does."""
    w, x, y, z = (quats / quats.norm(dim=-1, keepdim=True)).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(quats.shape[:-1] + (3, 3))


@dataclass
class Projection:
    """Per-camera screen-space Gaussians. Differentiable fields carry autograd history."""

    means2d: Tensor  # [C,N,2] pixel coordinates
    conics: Tensor  # [C,N,3] inverse 2D covariance (a, b, c)
    depths: Tensor  # [C,N] camera-space z
    opacities: Tensor  # [C,N]
    radii: Tensor  # [C,N] int32, gsplat's 3-sigma radius, 0 where culled
    extents: Tensor  # [C,N] float, opacity-aware footprint half-size in pixels, 0 where not drawn


def project_gaussians(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
) -> Projection:
    """EWA-project 3D Gaussians into ``C`` pinhole cameras, culling as gsplat does."""
    rot_c, trans_c = viewmats[:, :3, :3], viewmats[:, :3, 3]
    means_c = torch.einsum("cij,nj->cni", rot_c, means) + trans_c[:, None, :]
    m = quat_to_rotmat(quats) * scales[:, None, :]
    cov_c = rot_c[:, None] @ (m @ m.transpose(-1, -2))[None] @ rot_c.transpose(-1, -2)[:, None]

    x, y, z = means_c.unbind(-1)
    in_depth = (z > near_plane) & (z < far_plane)
    # Culled Gaussians still flow through the maths; a safe depth keeps their (unused) values finite.
    z = torch.where(in_depth, z, torch.ones_like(z))
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    # gsplat clamps the Jacobian's view direction to 1.3x the frustum to keep off-screen blobs sane.
    tx = z * torch.minimum(torch.maximum(x / z, -(cx / fx + 0.3 * tan_fovx)), (width - cx) / fx + 0.3 * tan_fovx)
    ty = z * torch.minimum(torch.maximum(y / z, -(cy / fy + 0.3 * tan_fovy)), (height - cy) / fy + 0.3 * tan_fovy)
    zeros = torch.zeros_like(z)
    jac = torch.stack(
        [fx / z, zeros, -fx * tx / (z * z), zeros, fy / z, -fy * ty / (z * z)], dim=-1
    ).reshape(z.shape + (2, 3))
    cov2d = jac @ cov_c @ jac.transpose(-1, -2)
    a = cov2d[..., 0, 0] + eps2d
    b = cov2d[..., 0, 1]
    c = cov2d[..., 1, 1] + eps2d
    det = a * c - b * b
    valid = in_depth & (det > 0)
    det = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)
    opac = opacities.expand(z.shape) if opacities.dim() == 2 else opacities[None].expand(z.shape)

    with torch.no_grad():
        half_trace = 0.5 * (a + c)
        sigma_max = torch.sqrt(half_trace + torch.sqrt((half_trace * half_trace - det).clamp_min(0.01)))
        radius = torch.ceil(3.0 * sigma_max)
        mx, my = means2d[..., 0], means2d[..., 1]

        def on_screen(r: Tensor) -> Tensor:
            return (mx + r > 0) & (mx - r < width) & (my + r > 0) & (my - r < height)

        keep = valid & (radius > radius_clip)
        radii = torch.where(keep & on_screen(radius), radius, torch.zeros_like(radius)).to(torch.int32)
        # Outside this half-size, o·exp(-σ) < 1/255 for every pixel, so nothing is lost by tiling.
        reach = torch.sqrt(2.0 * torch.log((255.0 * opac.detach()).clamp_min(1.0)))
        extent = torch.ceil(reach * sigma_max)
        drawn = keep & (extent > 0) & on_screen(extent)
        extents = torch.where(drawn, extent, torch.zeros_like(extent))
    return Projection(means2d, conics, means_c[..., 2], opac, radii, extents)


@dataclass
class TileBatch:
    """Tiles composited together: global tile ids ``[B]`` and their depth-sorted Gaussians ``[B,K]``."""

    tile_ids: Tensor
    gaussian_ids: Tensor  # flat (camera * N + gaussian); ``pad_id`` marks padding


@dataclass
class TilePlan:
    tile_size: int
    tiles_x: int
    tiles_y: int
    n_cameras: int
    pad_id: int
    batches: List[TileBatch]
    n_intersections: int


def plan_tiles(
    proj: Projection, width: int, height: int, tile_size: int = 16, batch_elements: int = 1 << 19
) -> TilePlan:
    """Bin drawn Gaussians into tiles, depth-sort each tile, and group tiles into padded batches.

    Tiles are sorted by how many Gaussians they hold and batched greedily so that
    ``B * K_max * tile_size²`` stays under ``batch_elements``: similar-sized tiles share
    a batch, which keeps padding (wasted work) small.
    """
    n_cameras, n_gauss = proj.depths.shape
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    tiles_per_cam = tiles_x * tiles_y
    pad_id = n_cameras * n_gauss
    with torch.no_grad():
        cam, gid = torch.nonzero(proj.extents > 0, as_tuple=True)
        depth = proj.depths.detach()[cam, gid]
        order = torch.argsort(depth, stable=True)
        cam, gid = cam[order], gid[order]
        r = proj.extents[cam, gid]
        mx, my = proj.means2d.detach()[cam, gid].unbind(-1)
        # Pixel centres sit at i + 0.5, so pixel i is inside [m - r, m + r] iff m - r - 0.5 <= i <= m + r - 0.5.
        x0 = torch.ceil(mx - r - 0.5).clamp(0, width - 1).long() // tile_size
        x1 = torch.floor(mx + r - 0.5).clamp(0, width - 1).long() // tile_size
        y0 = torch.ceil(my - r - 0.5).clamp(0, height - 1).long() // tile_size
        y1 = torch.floor(my + r - 0.5).clamp(0, height - 1).long() // tile_size
        nx, ny = (x1 - x0 + 1).clamp_min(0), (y1 - y0 + 1).clamp_min(0)
        counts = nx * ny
        owner = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
        start = torch.cumsum(counts, 0) - counts
        local = torch.arange(len(owner), device=owner.device) - start[owner]
        tx = x0[owner] + local % nx[owner]
        ty = y0[owner] + local // nx[owner]
        tile = cam[owner] * tiles_per_cam + ty * tiles_x + tx
        by_tile = torch.argsort(tile, stable=True)  # stable: keeps depth order inside each tile
        isect_tile = tile[by_tile]
        isect_gauss = (cam * n_gauss + gid)[owner][by_tile]

        tile_counts = torch.bincount(isect_tile, minlength=n_cameras * tiles_per_cam)
        tile_start = torch.cumsum(tile_counts, 0) - tile_counts
        busy = torch.nonzero(tile_counts > 0).squeeze(1)
        busy = busy[torch.argsort(tile_counts[busy], descending=True, stable=True)]
        busy_counts = tile_counts[busy].tolist()

        batches: List[TileBatch] = []
        pixels = tile_size * tile_size
        i = 0
        while i < len(busy_counts):
            k_max = busy_counts[i]
            n = max(1, min(len(busy_counts) - i, batch_elements // max(1, k_max * pixels)))
            tiles = busy[i : i + n]
            slot = torch.arange(k_max, device=tiles.device)
            idx = tile_start[tiles][:, None] + slot[None, :]
            inside = slot[None, :] < tile_counts[tiles][:, None]
            gauss = torch.where(inside, isect_gauss[idx.clamp_max(max(len(isect_gauss) - 1, 0))], pad_id)
            batches.append(TileBatch(tiles, gauss))
            i += n
    return TilePlan(tile_size, tiles_x, tiles_y, n_cameras, pad_id, batches, int(len(isect_tile)))


def _tile_pixel_basis(tile_size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``[P,6]`` monomials (u², uv, v², u, v, 1) of each pixel centre, relative to the tile centre.

    With these, ``log(alpha_raw) = -σ + log o`` is one matrix product per tile batch.
    Tile-centred coordinates keep the expanded quadratic well conditioned in float32.
    """
    lin = torch.arange(tile_size, device=device, dtype=dtype) + 0.5 - 0.5 * tile_size
    u, v = lin.repeat(tile_size), lin.repeat_interleave(tile_size)  # row-major pixels
    return torch.stack([u * u, u * v, v * v, u, v, torch.ones_like(u)], dim=-1)


def _tile_gaussians(plan: TilePlan, batch: TileBatch, flat: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
    """Gathered per-(tile, gaussian) conic ``(a,b,c)``, tile-centred mean ``(mu,mv)`` and opacity."""
    means2d, conics, opacities, _ = flat
    in_cam = batch.tile_ids % (plan.tiles_x * plan.tiles_y)
    half = 0.5 * plan.tile_size
    cx = ((in_cam % plan.tiles_x) * plan.tile_size + half).to(means2d.dtype)[:, None]
    cy = ((in_cam // plan.tiles_x) * plan.tile_size + half).to(means2d.dtype)[:, None]
    g = batch.gaussian_ids
    conic = conics[g]
    return conic[..., 0], conic[..., 1], conic[..., 2], means2d[g][..., 0] - cx, means2d[g][..., 1] - cy, opacities[g]


def _log_alpha_coefficients(a: Tensor, b: Tensor, c: Tensor, mu: Tensor, mv: Tensor, opac: Tensor) -> Tensor:
    """``[B,6,K]`` coefficients such that ``basis @ coef = -σ(pixel) + log o``."""
    sigma0 = 0.5 * a * mu * mu + b * mu * mv + 0.5 * c * mv * mv
    return torch.stack(
        [-0.5 * a, -b, -0.5 * c, a * mu + b * mv, b * mu + c * mv, torch.log(opac) - sigma0], dim=1
    )


_LOG_T_MIN = math.log(TRANSMITTANCE_MIN)


class _CompositeTiles(torch.autograd.Function):
    """Composite all tiles of a plan. Inputs are per-camera Gaussian tensors ``[C,N,…]``.

    Per batch the work is dense over ``[B tiles, P pixels, K gaussians]``; every pass is
    an in-place or fused op, because on CPU the cost is the number of passes over that block.
    """

    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, plan: TilePlan, want_absgrad: bool, geometry_grad_mask):  # type: ignore[override]
        flat = _flatten_with_pad(means2d, conics, opacities, colors)
        basis = _tile_pixel_basis(plan.tile_size, means2d.dtype, means2d.device)
        n_tiles = plan.n_cameras * plan.tiles_x * plan.tiles_y
        render = colors.new_zeros(n_tiles, basis.shape[0], colors.shape[-1])
        alpha_img = colors.new_zeros(n_tiles, basis.shape[0])
        saved = []
        for batch in plan.batches:
            alpha = torch.matmul(basis, _log_alpha_coefficients(*_tile_gaussians(plan, batch, flat))).exp_()
            alpha.clamp_max_(ALPHA_MAX)
            torch.nn.functional.threshold_(alpha, ALPHA_MIN - 1e-12, 0.0)  # gsplat skips alpha < 1/255
            log_t = torch.log1p(-alpha)
            log_t_after = torch.cumsum(log_t, dim=2)
            # Past the pixel's stop (T_after <= 1e-4) nothing is composited: T_before becomes exactly 0 there.
            torch.nn.functional.threshold_(log_t_after, _LOG_T_MIN, -math.inf)
            t_before = log_t_after.sub_(log_t).exp_()
            weights = alpha * t_before
            col = flat[3][batch.gaussian_ids]
            render[batch.tile_ids] = torch.bmm(weights, col)
            alpha_img[batch.tile_ids] = weights.sum(-1)
            saved.append((alpha, t_before, weights))
        ctx.save_for_backward(means2d, conics, opacities, colors)
        ctx.plan, ctx.want_absgrad, ctx.saved_blocks = plan, want_absgrad, saved
        ctx.geometry_grad_mask = geometry_grad_mask
        return render, alpha_img

    @staticmethod
    def backward(ctx, grad_render, grad_alpha):  # type: ignore[override]
        means2d, conics, opacities, colors = ctx.saved_tensors
        plan: TilePlan = ctx.plan
        flat = _flatten_with_pad(means2d, conics, opacities, colors)
        basis = _tile_pixel_basis(plan.tile_size, means2d.dtype, means2d.device)
        g_means, g_abs = torch.zeros_like(flat[0]), torch.zeros_like(flat[0])
        g_conics, g_opac, g_colors = torch.zeros_like(flat[1]), torch.zeros_like(flat[2]), torch.zeros_like(flat[3])
        for batch, (alpha, t_before, weights) in zip(plan.batches, ctx.saved_blocks):
            ids = batch.gaussian_ids.reshape(-1)
            g_out = grad_render[batch.tile_ids]  # [B,P,D]
            col = flat[3][batch.gaussian_ids]
            g_colors.index_add_(0, ids, torch.bmm(weights.transpose(1, 2), g_out).flatten(0, 1))
            # dL/dw per (pixel, gaussian): colour term plus the accumulated-alpha term.
            g_out_geometry = g_out if ctx.geometry_grad_mask is None else g_out * ctx.geometry_grad_mask
            g_w = torch.bmm(g_out_geometry, col.transpose(1, 2)).add_(grad_alpha[batch.tile_ids][..., None])
            # w_j = alpha_j T_j, T_j = prod_{i<j}(1 - alpha_i): raising alpha_k dims everything behind it.
            contrib = weights * g_w
            behind = torch.cumsum(contrib, dim=-1).neg_().add_(contrib.sum(-1, keepdim=True))
            g_log_alpha = g_w.mul_(t_before).sub_(behind.div_(1.0 - alpha)).mul_(alpha)
            g_log_alpha.masked_fill_(alpha >= ALPHA_MAX, 0.0)  # clamped alphas do not move
            g_coef = torch.matmul(g_log_alpha.transpose(1, 2), basis)  # [B,K,6]
            a, b, c, mu, mv, opac = _tile_gaussians(plan, batch, flat)
            g0, g1, g2, g3, g4, g5 = g_coef.unbind(-1)
            g_a = -0.5 * g0 + mu * g3 - 0.5 * mu * mu * g5
            g_b = -g1 + mv * g3 + mu * g4 - mu * mv * g5
            g_c = -0.5 * g2 + mv * g4 - 0.5 * mv * mv * g5
            g_mu = a * g3 + b * g4 - (a * mu + b * mv) * g5
            g_mv = b * g3 + c * g4 - (b * mu + c * mv) * g5
            g_conics.index_add_(0, ids, torch.stack([g_a, g_b, g_c], -1).flatten(0, 1))
            g_means.index_add_(0, ids, torch.stack([g_mu, g_mv], -1).flatten(0, 1))
            g_opac.index_add_(0, ids, (g5 / opac.clamp_min(1e-30)).flatten())
            if ctx.want_absgrad:
                # Per-pixel d(log alpha)/d(mean) is linear in the pixel: a(u-mu) + b(v-mv), b(u-mu) + c(v-mv).
                lin = basis[:, 3:]
                per_pixel_x = torch.matmul(lin, torch.stack([a, b, -(a * mu + b * mv)], 1)).mul_(g_log_alpha)
                per_pixel_y = torch.matmul(lin, torch.stack([b, c, -(b * mu + c * mv)], 1)).mul_(g_log_alpha)
                # Reductions over the pixel axis run as products with a ones row: BLAS beats a strided sum.
                ones = torch.ones(1, basis.shape[0], dtype=basis.dtype, device=basis.device)
                abs_x = torch.matmul(ones, per_pixel_x.abs_())[:, 0]
                abs_y = torch.matmul(ones, per_pixel_y.abs_())[:, 0]
                g_abs.index_add_(0, ids, torch.stack([abs_x, abs_y], -1).flatten(0, 1))
        shape = means2d.shape[:2]
        if ctx.want_absgrad:
            # gsplat's contract: DefaultStrategy reads the summed per-pixel |grad| from this attribute.
            means2d.absgrad = g_abs[:-1].reshape(shape + (2,))
        return (
            g_means[:-1].reshape(means2d.shape),
            g_conics[:-1].reshape(conics.shape),
            g_opac[:-1].reshape(opacities.shape),
            g_colors[:-1].reshape(colors.shape),
            None,
            None,
            None,
        )


def _flatten_with_pad(means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor) -> Tuple[Tensor, ...]:
    """Flatten ``[C,N,…]`` to ``[C*N+1,…]``; the extra zero-opacity row is what padding slots point at."""

    def pad(t: Tensor) -> Tensor:
        flat = t.reshape((-1,) + t.shape[2:])
        return torch.cat([flat, flat.new_zeros((1,) + flat.shape[1:])], 0)

    return pad(means2d), pad(conics), pad(opacities), pad(colors)


def _tiles_to_image(tiles: Tensor, plan: TilePlan, width: int, height: int) -> Tensor:
    ts = plan.tile_size
    img = tiles.reshape(plan.n_cameras, plan.tiles_y, plan.tiles_x, ts, ts, -1)
    img = img.permute(0, 1, 3, 2, 4, 5).reshape(plan.n_cameras, plan.tiles_y * ts, plan.tiles_x * ts, -1)
    return img[:, :height, :width]


def _prepare_colors(
    means: Tensor, colors: Tensor, viewmats: Tensor, sh_degree: Optional[int], n_cameras: int
) -> Tensor:
    """Per-camera colours ``[C,N,D]``; evaluates SH (as gsplat: +0.5, clamp at 0) when ``sh_degree`` is set."""
    if sh_degree is not None:
        dirs = means[None] - camera_centers(viewmats)[:, None]
        coeffs = colors if colors.dim() == 4 else colors[None].expand(n_cameras, *colors.shape)
        return torch.clamp_min(torch_spherical_harmonics(sh_degree, dirs, coeffs) + 0.5, 0.0)
    return colors if colors.dim() == 3 else colors[None].expand(n_cameras, *colors.shape)


def _add_depth_channel(colors: Tensor, depths: Tensor, render_mode: str) -> Tensor:
    if render_mode in ("D", "ED"):
        return depths[..., None]
    if render_mode in ("RGB+D", "RGB+ED"):
        return torch.cat([colors, depths[..., None]], dim=-1)
    return colors


def _finish(render: Tensor, alpha: Tensor, render_mode: str, backgrounds: Optional[Tensor]) -> Tensor:
    if render_mode in ("ED", "RGB+ED"):
        render = torch.cat([render[..., :-1], render[..., -1:] / alpha.clamp_min(1e-10)], dim=-1)
    if backgrounds is not None:
        n_bg = backgrounds.shape[-1]
        render = torch.cat([render[..., :n_bg] + (1.0 - alpha) * backgrounds[:, None, None, :], render[..., n_bg:]], -1)
    return render


def _check_args(render_mode: str, rasterize_mode: str, packed: bool) -> None:
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    if rasterize_mode != "classic":
        raise NotImplementedError(
            f"rasterize_mode={rasterize_mode!r} is CUDA-only; the CPU rasterizer implements 'classic'. "
            "Set --pipeline.model.rasterize-mode classic to train on CPU."
        )


def rasterization(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: Optional[int] = None,
    packed: bool = False,
    tile_size: Optional[int] = None,
    backgrounds: Optional[Tensor] = None,
    render_mode: str = "RGB",
    rasterize_mode: str = "classic",
    absgrad: bool = False,
    backend: str = "auto",
    no_geometry_grad_channels: Optional[Tuple[int, int]] = None,
    **gsplat_kwargs: Any,
) -> Tuple[Tensor, Tensor, Dict[str, Any]]:
    """Render ``C`` cameras: ``(render [C,H,W,D], alpha [C,H,W,1], info)``, gsplat's contract.

    ``backend``: ``"auto"`` (gsplat on CUDA tensors, torch otherwise), ``"gsplat"`` or ``"torch"``.
    ``tile_size`` defaults per backend: 16 for gsplat's kernels, 8 for the torch path, where
    smaller tiles waste fewer (pixel, gaussian) pairs and were measured ~1.4x faster.
    Any number of colour channels works; depth is appended per ``render_mode``.

    ``no_geometry_grad_channels=(start, stop)`` (an extension, ``sh_degree=None`` only): gradients
    reaching those colour channels update the colours but not means, scales, quats or opacities,
    so noisy mask supervision on identity features cannot damage the reconstruction.
    """
    if no_geometry_grad_channels is not None and sh_degree is not None:
        raise ValueError("no_geometry_grad_channels needs pre-evaluated colours (sh_degree=None)")
    if no_geometry_grad_channels is not None and not _needs_grad(means, quats, scales, opacities, colors, viewmats):
        # Nothing will be backpropagated (eval, viewer): the separate geometry gradient is moot, one pass does.
        no_geometry_grad_channels = None
    if resolve_backend(backend, means.is_cuda) == "gsplat":
        from gsplat import rasterization as gsplat_rasterization

        n_channels = colors.shape[-1] + (1 if render_mode in ("RGB+D", "RGB+ED") else 0)
        chunk = gsplat_kwargs.pop("channel_chunk", None)
        if absgrad:
            # gsplat renders channel_chunk channels per kernel call and each call overwrites means2d.absgrad.
            if chunk is not None and chunk < n_channels:
                raise ValueError(
                    f"absgrad with {n_channels} channels needs channel_chunk >= {n_channels} (got {chunk}): gsplat "
                    "keeps only the last chunk's means2d.absgrad"
                )
            chunk = n_channels if n_channels > 32 else chunk
        if chunk is not None:
            gsplat_kwargs["channel_chunk"] = chunk
        kw = dict(
            means=means, quats=quats, scales=scales, opacities=opacities, viewmats=viewmats, Ks=Ks, width=width,
            height=height, near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip, eps2d=eps2d,
            packed=packed, tile_size=tile_size or 16, render_mode=render_mode, rasterize_mode=rasterize_mode,
            absgrad=absgrad, **gsplat_kwargs,
        )
        if no_geometry_grad_channels is not None:
            return _gsplat_two_pass(gsplat_rasterization, no_geometry_grad_channels, colors=colors, backgrounds=backgrounds, **kw)
        return gsplat_rasterization(colors=colors, sh_degree=sh_degree, backgrounds=backgrounds, **kw)
    _check_args(render_mode, rasterize_mode, packed)
    n_cameras = viewmats.shape[0]
    proj = project_gaussians(
        means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane, eps2d, radius_clip
    )
    colors = _add_depth_channel(_prepare_colors(means, colors, viewmats, sh_degree, n_cameras), proj.depths, render_mode)
    tile_size = tile_size or CPU_TILE_SIZE
    plan = plan_tiles(proj, width, height, tile_size)
    grad_mask = None
    if no_geometry_grad_channels is not None:
        grad_mask = torch.ones(colors.shape[-1], dtype=colors.dtype, device=colors.device)
        grad_mask[no_geometry_grad_channels[0] : no_geometry_grad_channels[1]] = 0.0
    tiles, tile_alpha = _CompositeTiles.apply(
        proj.means2d, proj.conics, proj.opacities, colors, plan, absgrad, grad_mask
    )
    render = _tiles_to_image(tiles, plan, width, height)
    alpha = _tiles_to_image(tile_alpha[..., None], plan, width, height)
    render = _finish(render, alpha, render_mode, backgrounds)
    info: Dict[str, Any] = {
        "camera_ids": None,
        "gaussian_ids": None,  # not packed: per-camera tensors are [C,N]
        "radii": proj.radii,
        "means2d": proj.means2d,
        "depths": proj.depths,
        "conics": proj.conics,
        "opacities": proj.opacities,
        "tile_width": plan.tiles_x,
        "tile_height": plan.tiles_y,
        "tile_size": tile_size,
        "n_intersections": plan.n_intersections,
        "width": width,
        "height": height,
        "n_cameras": n_cameras,
    }
    return render, alpha, info


def _needs_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _gsplat_two_pass(gsplat_rasterization, channels: Tuple[int, int], **kw: Any) -> Tuple[Tensor, Tensor, Dict[str, Any]]:
    """gsplat cannot mask geometry gradients per channel: render the other channels first, then
    composite ``channels`` again with ``gsplat.rasterize_to_pixels`` on the first pass's *detached*
    screen-space Gaussians and tile lists (no second projection, intersection or sort).  Only the
    colours of those channels get gradients; means, scales, quats, opacities and viewmats do not."""
    start, stop = channels
    colors = kw.pop("colors")
    backgrounds = kw.pop("backgrounds")
    main_colors = torch.cat([colors[..., :start], colors[..., stop:]], dim=-1)
    render, alpha, info = gsplat_rasterization(colors=main_colors, backgrounds=None, **kw)
    side = rasterize_side_channels(info, colors[..., start:stop], packed=kw.get("packed", False))
    render = torch.cat([render[..., :start], side, render[..., start:]], dim=-1)
    if backgrounds is not None:
        n_bg = backgrounds.shape[-1]
        render = torch.cat([render[..., :n_bg] + (1.0 - alpha) * backgrounds[:, None, None, :], render[..., n_bg:]], -1)
    return render, alpha, info


def rasterize_side_channels(info: Dict[str, Any], colors: Tensor, packed: bool = False) -> Tensor:
    """Composite extra per-Gaussian channels ``[(C,) N, D]`` through a finished gsplat pass's tiles.

    Uses ``info``'s means2d, conics, opacities (detached), isect_offsets and flatten_ids, so
    the result equals rendering those channels in the same pass, but only ``colors`` get gradients.
    """
    from gsplat import rasterize_to_pixels

    if packed:
        raise NotImplementedError("the side-channel pass supports packed=False only (what the model uses)")
    n_cameras, n_gauss = info["means2d"].shape[:2]
    if colors.dim() == 2:
        colors = colors[None].expand(n_cameras, n_gauss, colors.shape[-1])
    side, _ = rasterize_to_pixels(
        info["means2d"].detach(), info["conics"].detach(), colors, info["opacities"].detach(),
        info["width"], info["height"], info["tile_size"], info["isect_offsets"], info["flatten_ids"],
    )
    return side


def rasterization_reference(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    sh_degree: Optional[int] = None,
    backgrounds: Optional[Tensor] = None,
    render_mode: str = "RGB",
    pixel_chunk: int = 4096,
) -> Tuple[Tensor, Tensor]:
    """Brute force: every pixel against every Gaussian in depth order, plain autograd.

    The yardstick for the tiled rasterizer (tests, benchmark). Pixel chunks are
    checkpointed so memory stays bounded on big cases.
    """
    from torch.utils.checkpoint import checkpoint

    _check_args(render_mode, "classic", False)
    n_cameras = viewmats.shape[0]
    proj = project_gaussians(means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane, eps2d)
    colors = _add_depth_channel(_prepare_colors(means, colors, viewmats, sh_degree, n_cameras), proj.depths, render_mode)
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=means.dtype, device=means.device) + 0.5,
        torch.arange(width, dtype=means.dtype, device=means.device) + 0.5,
        indexing="ij",
    )
    pix = torch.stack([xs.flatten(), ys.flatten()], -1)  # [HW,2]

    def composite(pix_chunk: Tensor, m2d: Tensor, con: Tensor, op: Tensor, col: Tensor, drawn: Tensor) -> Tensor:
        d = pix_chunk[:, None, :] - m2d[None]  # [P,N,2]
        sigma = 0.5 * (con[:, 0] * d[..., 0] ** 2 + con[:, 2] * d[..., 1] ** 2) + con[:, 1] * d[..., 0] * d[..., 1]
        alpha = (op * torch.exp(-sigma)).clamp_max(ALPHA_MAX)
        alpha = torch.where(drawn & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))
        t_after = torch.cumprod(1.0 - alpha, dim=1)
        t_before = torch.cat([torch.ones_like(t_after[:, :1]), t_after[:, :-1]], 1)
        w = torch.where((alpha > 0) & (t_after > TRANSMITTANCE_MIN), alpha * t_before, torch.zeros_like(alpha))
        return torch.cat([w @ col, w.sum(1, keepdim=True)], -1)

    outputs = []
    for c in range(n_cameras):
        # "drawn" uses the same culling as the tiled path: near/far, degenerate, and off-screen.
        drawn = proj.extents[c] > 0
        order = torch.argsort(proj.depths[c].detach(), stable=True)
        args = (proj.means2d[c][order], proj.conics[c][order], proj.opacities[c][order], colors[c][order], drawn[order])
        chunks = [
            checkpoint(composite, pix[i : i + pixel_chunk], *args, use_reentrant=False)
            for i in range(0, pix.shape[0], pixel_chunk)
        ]
        outputs.append(torch.cat(chunks, 0).reshape(height, width, -1))
    out = torch.stack(outputs, 0)
    render, alpha = out[..., :-1], out[..., -1:]
    return _finish(render, alpha, render_mode, backgrounds), alpha
