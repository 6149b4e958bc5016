"""Frozen geometry makes feature rendering linear: per-pixel top-K (Gaussian, weight) lists.

When means, scales, rotations and opacities never change, every pixel's compositing
weights ``w_j = alpha_j T_j`` are fixed.  A rendered feature image is then the sparse
product ``F = W @ f`` of a ``[pixels, gaussians]`` matrix with the per-Gaussian
features, and its gradient is ``W^T @ dL/dF``.  This module builds ``W`` once per view
(keeping each pixel's ``top_k`` largest weights) and composites with it.

Pure torch, no nerfstudio imports; CPU or CUDA.  The weights follow the CPU
rasterizer's rules exactly (``ulift_ns.rasterize``: EWA projection, alpha =
min(0.999, o·exp(-σ)), skip alpha < 1/255, stop when transmittance reaches 1e-4), so
with ``top_k`` covering every contributor, ``composite_features`` equals the
rasterizer's rendered features (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from ulift_ns.rasterize import ALPHA_MAX, ALPHA_MIN, TRANSMITTANCE_MIN, plan_tiles, project_gaussians

_LOG_T_MIN = math.log(TRANSMITTANCE_MIN)


@dataclass
class ViewContributors:
    """One view's sparse compositing map, row ``p`` = pixel ``pixels[p]`` (row-major ``y * W + x``).

    ``ids [P,K] int32`` Gaussian index (0 where unused), ``weights [P,K] float16`` (0 where unused),
    ``alpha [P] float16`` the pixel's full accumulated opacity (not just the top K).
    """

    ids: Tensor
    weights: Tensor
    alpha: Tensor
    pixels: Tensor  # [P] int64
    height: int
    width: int

    @property
    def nbytes(self) -> int:
        return sum(t.element_size() * t.numel() for t in (self.ids, self.weights, self.alpha, self.pixels))

    def to(self, device) -> "ViewContributors":
        return ViewContributors(
            self.ids.to(device), self.weights.to(device), self.alpha.to(device), self.pixels.to(device), self.height, self.width
        )


def pixel_weights_in_tiles(means2d: Tensor, conics: Tensor, opacities: Tensor, gaussian_ids: Tensor, tile_origin: Tensor, tile_size: int) -> Tensor:
    """Compositing weights ``[B, tile², K]`` of depth-sorted Gaussians ``gaussian_ids [B,K]`` in ``B`` tiles.

    ``means2d [N,2]``, ``conics [N,3]``, ``opacities [N]`` are indexed by ``gaussian_ids``
    (padding ids point at a zero-opacity row); ``tile_origin [B,2]`` is each tile's top-left pixel.
    """
    lin = torch.arange(tile_size, device=means2d.device, dtype=means2d.dtype) + 0.5
    px = tile_origin[:, None, 0].to(means2d.dtype) + lin.repeat(tile_size)[None]  # [B,P] row-major
    py = tile_origin[:, None, 1].to(means2d.dtype) + lin.repeat_interleave(tile_size)[None]
    m, con, op = means2d[gaussian_ids], conics[gaussian_ids], opacities[gaussian_ids]  # [B,K,...]
    dx = px[:, :, None] - m[:, None, :, 0]
    dy = py[:, :, None] - m[:, None, :, 1]
    a, b, c = con[:, None, :, 0], con[:, None, :, 1], con[:, None, :, 2]
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = (op[:, None, :] * torch.exp(-sigma)).clamp_max(ALPHA_MAX)
    alpha = torch.where(alpha >= ALPHA_MIN, alpha, torch.zeros_like(alpha))
    log_t = torch.log1p(-alpha)
    log_t_after = torch.cumsum(log_t, dim=2)
    t_before = torch.exp(log_t_after - log_t)
    # A pixel stops at the Gaussian that would take its transmittance to 1e-4 (that one is not drawn).
    return torch.where(log_t_after > _LOG_T_MIN, alpha * t_before, torch.zeros_like(alpha))


@torch.no_grad()
def view_contributors(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmat: Tensor,
    K: Tensor,
    width: int,
    height: int,
    top_k: int = 16,
    pixels: Optional[Tensor] = None,
    tile_size: int = 8,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> ViewContributors:
    """The ``top_k`` largest compositing weights of every pixel of one view (or of ``pixels`` only).

    ``scales`` are linear (not log), ``opacities [N]`` in [0, 1]; ``viewmat [4,4]`` OpenCV
    world-to-camera, ``K [3,3]``.  Memory is bounded by the tile batches of ``plan_tiles``.
    """
    proj = project_gaussians(means, quats, scales, opacities, viewmat[None], K[None], width, height, near_plane, far_plane)
    plan = plan_tiles(proj, width, height, tile_size)
    n = means.shape[0]
    m2d = torch.cat([proj.means2d[0], proj.means2d.new_zeros(1, 2)])
    con = torch.cat([proj.conics[0], proj.conics.new_zeros(1, 3)])
    op = torch.cat([proj.opacities[0], proj.opacities.new_zeros(1)])
    n_tiles = plan.tiles_x * plan.tiles_y
    per_tile = tile_size * tile_size
    ids = torch.zeros(n_tiles, per_tile, top_k, dtype=torch.int32, device=means.device)
    weights = torch.zeros(n_tiles, per_tile, top_k, dtype=torch.float32, device=means.device)
    alpha = torch.zeros(n_tiles, per_tile, dtype=torch.float32, device=means.device)
    for batch in plan.batches:
        tiles = batch.tile_ids  # one camera: tile ids are in-camera ids
        origin = torch.stack([(tiles % plan.tiles_x) * tile_size, (tiles // plan.tiles_x) * tile_size], -1)
        w = pixel_weights_in_tiles(m2d, con, op, batch.gaussian_ids, origin, tile_size)  # [B,P,Kt]
        alpha[tiles] = w.sum(-1)
        k = min(top_k, w.shape[-1])
        top_w, slot = torch.topk(w, k, dim=-1)
        gid = torch.gather(batch.gaussian_ids[:, None, :].expand(-1, per_tile, -1), 2, slot)
        gid = torch.where(top_w > 0, gid, torch.zeros_like(gid)).clamp_max(n - 1)
        ids[tiles, :, :k] = gid.to(torch.int32)
        weights[tiles, :, :k] = top_w

    def to_image(t: Tensor) -> Tensor:
        img = t.reshape(plan.tiles_y, plan.tiles_x, tile_size, tile_size, -1).permute(0, 2, 1, 3, 4)
        return img.reshape(plan.tiles_y * tile_size, plan.tiles_x * tile_size, -1)[:height, :width].reshape(height * width, -1)

    flat_ids, flat_w, flat_alpha = to_image(ids), to_image(weights), to_image(alpha[..., None])[:, 0]
    if pixels is None:
        pixels = torch.arange(height * width, device=means.device)
    pixels = pixels.to(device=means.device, dtype=torch.int64)
    return ViewContributors(
        flat_ids[pixels].contiguous(),
        flat_w[pixels].to(torch.float16).contiguous(),
        flat_alpha[pixels].to(torch.float16),
        pixels,
        height,
        width,
    )


def composite_features(contributors: ViewContributors, features: Tensor) -> Tensor:
    """Rendered features ``[P, d]`` of the view's pixels: ``sum_k w_pk · features[id_pk]``.

    A weighted ``embedding_bag``: no ``[P,K,d]`` intermediate, and autograd's backward is
    the transposed map (a scatter-add of ``w · dL/dF`` into the Gaussians' rows).
    """
    return torch.nn.functional.embedding_bag(
        contributors.ids.long(),
        features,
        per_sample_weights=contributors.weights.to(features.dtype),
        mode="sum",
    )


def weight_coverage(contributors: ViewContributors) -> float:
    """Share of the view's accumulated opacity that the kept top-K weights carry (1 = nothing dropped)."""
    total = float(contributors.alpha.float().sum())
    return float(contributors.weights.float().sum()) / total if total > 0 else 1.0


@torch.no_grad()
def fraction_in_view(means: Tensor, viewmats: Tensor, Ks: Tensor, width: int, height: int, near_plane: float = 0.01, chunk: int = 16) -> float:
    """Share of Gaussian centres that land inside at least one camera's image, in front of it.

    ``viewmats [C,4,4]`` OpenCV world-to-camera, ``Ks [C,3,3]``; cameras are processed in chunks.
    """
    seen = torch.zeros(means.shape[0], dtype=torch.bool, device=means.device)
    for i in range(0, viewmats.shape[0], chunk):
        v, k = viewmats[i : i + chunk], Ks[i : i + chunk]
        cam = torch.einsum("cij,nj->cni", v[:, :3, :3], means) + v[:, None, :3, 3]
        z = cam[..., 2]
        safe_z = torch.where(z > near_plane, z, torch.ones_like(z))
        u = k[:, None, 0, 0] * cam[..., 0] / safe_z + k[:, None, 0, 2]
        vv = k[:, None, 1, 1] * cam[..., 1] / safe_z + k[:, None, 1, 2]
        inside = (z > near_plane) & (u >= 0) & (u < width) & (vv >= 0) & (vv < height)
        seen |= inside.any(0)
    return float(seen.float().mean()) if means.shape[0] else 0.0


def sample_view_pixels(height: int, width: int, max_pixels: Optional[int], generator: Optional[torch.Generator] = None) -> Optional[Tensor]:
    """A fixed random subset of ``max_pixels`` pixel indices (sorted), or None for all pixels."""
    total = height * width
    if max_pixels is None or max_pixels >= total:
        return None
    return torch.sort(torch.randperm(total, generator=generator)[:max_pixels]).values


def cache_nbytes(views: Sequence[ViewContributors]) -> int:
    return sum(v.nbytes for v in views)


def describe_cache(views: List[ViewContributors]) -> str:
    """One line: views, pixels, K, size and how much of the opacity the top-K lists keep."""
    if not views:
        return "contributor cache: empty"
    pixels = sum(v.ids.shape[0] for v in views)
    coverage = sum(weight_coverage(v) * float(v.alpha.float().sum()) for v in views) / max(
        1e-12, sum(float(v.alpha.float().sum()) for v in views)
    )
    return (
        f"contributor cache: {len(views)} views, {pixels:,} pixels x top-{views[0].ids.shape[1]} "
        f"= {cache_nbytes(views) / 1e6:.1f} MB (int32 ids, float16 weights); the lists keep "
        f"{100 * coverage:.1f}% of the rendered opacity"
    )
