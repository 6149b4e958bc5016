"""Tests for ulift_ns.lift.backproject: multi-view 3D labels from compositing weights, against brute force."""

from __future__ import annotations

import torch

from ulift_ns.lift.backproject import (
    labels_from_weights,
    live_rows,
    multiview_labels,
    one_hot_labels,
    view_label_weights,
)
from ulift_ns.rasterize import rasterization, rasterization_reference

W, H = 24, 16


def _camera():
    viewmat = torch.eye(4)[None]
    K = torch.tensor([[[20.0, 0.0, W / 2], [0.0, 20.0, H / 2], [0.0, 0.0, 1.0]]])
    return viewmat, K


def _gaussians(means, scales, opacities):
    n = means.shape[0]
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    return dict(means=means, quats=quats, scales=scales, opacities=opacities)


def _renderer(geometry):
    viewmat, K = _camera()

    def render(colours):
        return rasterization(colors=colours, viewmats=viewmat, Ks=K, width=W, height=H, backend="torch", **geometry)[0][0]

    return render


def _brute_force_weights(geometry) -> torch.Tensor:
    """``[H, W, N]`` per-pixel compositing weights: render the identity matrix as colours, brute force."""
    viewmat, K = _camera()
    n = geometry["means"].shape[0]
    image, _ = rasterization_reference(colors=torch.eye(n), viewmats=viewmat, Ks=K, width=W, height=H, **geometry)
    return image[0]


def _random_scene(seed: int = 0, n: int = 12):
    g = torch.Generator().manual_seed(seed)
    means = torch.stack(
        [torch.rand(n, generator=g) * 2 - 1, torch.rand(n, generator=g) * 1.2 - 0.6, 2 + torch.rand(n, generator=g) * 2], -1
    )
    scales = 0.05 + 0.2 * torch.rand(n, 3, generator=g)
    opacities = 0.2 + 0.7 * torch.rand(n, generator=g)
    return _gaussians(means, scales, opacities)


def test_live_rows_and_one_hot():
    maps = [torch.tensor([[0, 3], [3, 8]]), torch.tensor([[1, 0], [0, 0]])]
    rows = live_rows(maps)
    assert rows.tolist() == [0, 2, 7]
    hot = one_hot_labels(maps[0], rows)
    assert hot.shape == (2, 2, 3)
    assert hot[0, 0].sum() == 0  # empty pixel
    assert hot[0, 1].tolist() == [0.0, 1.0, 0.0]
    assert hot[1, 1].tolist() == [0.0, 0.0, 1.0]
    # a label outside the live rows contributes to nothing
    assert one_hot_labels(torch.tensor([[5]]), rows).sum() == 0


def test_summed_weights_equal_brute_force():
    geometry = _random_scene()
    g = torch.Generator().manual_seed(1)
    label_map = torch.randint(0, 4, (H, W), generator=g) * 3  # labels 0 (empty), 3, 6, 9
    rows = torch.tensor([2, 5, 8])
    got = view_label_weights(_renderer(geometry), 12, label_map, rows)
    w = _brute_force_weights(geometry)  # [H,W,N]
    hot = one_hot_labels(label_map, rows)  # [H,W,K]
    expected = torch.einsum("hwn,hwk->nk", w, hot)
    assert expected.sum() > 1.0  # the scene is actually visible
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_two_views_sum_and_read_out():
    geometry = _random_scene(seed=2)
    rows = torch.tensor([0, 4])
    maps = [torch.full((H, W), 1), torch.where(torch.arange(W)[None].expand(H, W) < W // 2, 1, 5)]
    render = _renderer(geometry)
    result = multiview_labels([(render, m) for m in maps], 12, rows, unseen_weight=0.0)
    w = _brute_force_weights(geometry).sum((0, 1))  # total weight per Gaussian in one view
    torch.testing.assert_close(result.total_weight, 2 * w, atol=1e-5, rtol=1e-4)


def test_visible_gaussians_get_their_pixels_label_hidden_and_unseen_get_zero():
    # 0, 1: left, two layers; 2: right; 3: small, on the same ray behind 0 and 1 (hidden); 4: behind the camera (never seen)
    means = torch.tensor([[-0.5, 0.0, 2.0], [-0.625, 0.0, 2.5], [0.5, 0.0, 2.0], [-1.0, 0.0, 4.0], [0.0, 0.0, -3.0]])
    scales = torch.tensor([[0.25] * 3, [0.3] * 3, [0.25] * 3, [0.05] * 3, [0.3] * 3])
    opacities = torch.tensor([0.999, 0.999, 0.999, 0.95, 0.9])
    geometry = _gaussians(means, scales, opacities)
    label_map = torch.where(torch.arange(W)[None].expand(H, W) < W // 2, 4, 9)
    rows = live_rows([label_map])
    result = multiview_labels([(_renderer(geometry), label_map)], 5, rows)
    assert result.labels.tolist() == [4, 4, 9, 0, 0]
    assert result.confidence[0] > 0.95 and result.confidence[2] > 0.95
    assert result.total_weight[3] < 0.05  # it does get a little weight, through the front layers' edges
    assert result.confidence[3] == 0 and result.confidence[4] == 0
    assert result.total_weight[4] == 0


def test_labels_from_weights_exact():
    weights = torch.tensor([[1.0, 3.0], [0.01, 0.02], [0.0, 0.0], [2.0, 2.0]])
    result = labels_from_weights(weights, torch.tensor([6, 1]), unseen_weight=0.05)
    assert result.labels.tolist() == [2, 0, 0, 7]  # ties go to the first live row
    torch.testing.assert_close(result.confidence, torch.tensor([0.75, 0.0, 0.0, 0.5]))
    empty = labels_from_weights(torch.zeros(3, 0), torch.zeros(0, dtype=torch.long))
    assert empty.labels.tolist() == [0, 0, 0]

