"""Tests for ``ulift_ns.contributors``: the frozen-geometry sparse compositing map."""

from __future__ import annotations

import pytest
import torch

from tests.test_rasterize import make_scene
from ulift_ns.contributors import (
    composite_features,
    describe_cache,
    fraction_in_view,
    sample_view_pixels,
    view_contributors,
    weight_coverage,
)
from ulift_ns.rasterize import rasterization


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _scene(seed=0, n=120, w=40, h=30, d=5):
    s = make_scene(seed, n, w, h, channels=d, dtype=torch.float32)
    return s


def _contrib(s, top_k, pixels=None):
    return view_contributors(
        s["means"], s["quats"], s["scales"], s["opacities"], s["viewmats"][0], s["Ks"][0], s["width"], s["height"],
        top_k=top_k, pixels=pixels,
    )


def test_sparse_compositing_equals_the_rasterizer_when_k_covers_every_contributor():
    s = _scene()
    render, alpha, _ = rasterization(
        s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], s["viewmats"], s["Ks"], s["width"], s["height"],
        backend="torch",
    )
    c = _contrib(s, top_k=len(s["means"]))
    assert weight_coverage(c) > 0.999
    out = composite_features(c, s["colors"]).reshape(s["height"], s["width"], -1)
    # float16 weights: about 1e-3 relative
    torch.testing.assert_close(out, render[0], atol=3e-3, rtol=3e-3)
    torch.testing.assert_close(c.alpha.float().reshape(s["height"], s["width"]), alpha[0, ..., 0], atol=2e-3, rtol=2e-3)


def test_gradient_is_the_transposed_map():
    s = _scene(seed=1)
    c = _contrib(s, top_k=8)
    feats = s["colors"].clone().requires_grad_(True)
    g_out = torch.randn(c.ids.shape[0], feats.shape[1])
    (composite_features(c, feats) * g_out).sum().backward()
    dense = torch.zeros(c.ids.shape[0], feats.shape[0])
    dense.scatter_add_(1, c.ids.long(), c.weights.float())
    torch.testing.assert_close(feats.grad, dense.T @ g_out, atol=1e-5, rtol=1e-5)


def test_top_k_keeps_the_largest_weights_and_reports_coverage():
    s = _scene(seed=2)
    full, small = _contrib(s, top_k=len(s["means"])), _contrib(s, top_k=2)
    assert small.ids.shape[1] == 2 and small.ids.dtype == torch.int32 and small.weights.dtype == torch.float16
    best = torch.sort(full.weights.float(), dim=1, descending=True).values[:, :2]
    torch.testing.assert_close(small.weights.float(), best)
    assert 0.0 < weight_coverage(small) < weight_coverage(full)
    assert "MB" in describe_cache([small]) and "top-2" in describe_cache([small])


def test_pixel_subset_rows_match_the_full_map():
    s = _scene(seed=3)
    pix = sample_view_pixels(s["height"], s["width"], 100, torch.Generator().manual_seed(0))
    assert pix is not None and len(pix) == 100 and sample_view_pixels(4, 4, 16) is None
    full, sub = _contrib(s, top_k=6), _contrib(s, top_k=6, pixels=pix)
    torch.testing.assert_close(composite_features(sub, s["colors"]), composite_features(full, s["colors"])[pix])
    assert sub.nbytes < full.nbytes


def test_fraction_in_view_counts_centres_inside_any_image():
    vm = torch.eye(4)[None]
    k = torch.tensor([[[10.0, 0, 5], [0, 10.0, 5], [0, 0, 1]]])
    means = torch.tensor([[0.0, 0, 1], [0.0, 0, -1], [10.0, 0, 1], [0.1, 0.1, 2]])
    assert fraction_in_view(means, vm, k, 10, 10) == pytest.approx(0.5)
