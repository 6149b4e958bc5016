"""The CUDA dispatch of ``ulift_ns.rasterize``, checked on the CPU with gsplat stand-ins.

What the real kernels compute is compared in ``test_gsplat_crosscheck.py`` (CUDA only);
here: missing kernels, absgrad with many channels, the eval shortcut, and which inputs the
identity-feature channels send gradients to.
"""

from __future__ import annotations

from typing import Dict, List

import pytest
import torch

import ulift_ns.rasterize as rast
from tests.test_rasterize import PARAM_NAMES, make_scene
from ulift_ns.rasterize import camera_centers, rasterization, resolve_backend


def _args(scene):
    return [scene[k] for k in PARAM_NAMES] + [scene["viewmats"], scene["Ks"], 16, 12]


@pytest.fixture
def no_kernels(monkeypatch: pytest.MonkeyPatch) -> str:
    reason = "gsplat has no compiled CUDA kernels: it JIT-compiles them on first use and needs `nvcc` on PATH"
    monkeypatch.setattr(rast, "gsplat_unavailable_reason", lambda: reason)
    monkeypatch.setattr(rast, "_FALLBACK_WARNED", False)
    return reason


@pytest.fixture
def fake_gsplat(monkeypatch: pytest.MonkeyPatch) -> List[Dict]:
    import gsplat

    calls: List[Dict] = []

    def fake(**kwargs):
        calls.append(kwargs)
        return "gsplat-result"

    monkeypatch.setattr(rast, "gsplat_unavailable_reason", lambda: None)
    monkeypatch.setattr(gsplat, "rasterization", fake)
    return calls


def test_missing_kernels_fall_back_to_torch_with_a_warning(no_kernels: str) -> None:
    with pytest.warns(RuntimeWarning, match="nvcc.*Falling back to the .*torch rasterizer"):
        assert resolve_backend("auto", on_cuda=True) == "torch"
    assert resolve_backend("auto", on_cuda=False) == "torch"
    assert resolve_backend("torch", on_cuda=True) == "torch"


def test_missing_kernels_with_explicit_gsplat_backend_say_why(no_kernels: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import gsplat

    def must_not_run(**kwargs):
        raise AssertionError("gsplat's kernels were called")

    monkeypatch.setattr(gsplat, "rasterization", must_not_run)
    scene = make_scene(9, 20, 16, 12, extras=False, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="nvcc.*rasterizer-backend torch"):
        rasterization(*_args(scene), backend="gsplat")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is visible: the kernels may well build here")
def test_real_detection_without_cuda_names_the_cause() -> None:
    reason = rast.gsplat_unavailable_reason()
    assert reason is not None and ("no CUDA device" in reason or "not installed" in reason)


def test_absgrad_with_many_channels_renders_them_in_one_chunk(fake_gsplat: List[Dict]) -> None:
    scene = make_scene(9, 20, 16, 12, channels=40, extras=False, dtype=torch.float32)
    rasterization(*_args(scene), backend="gsplat", absgrad=True)
    assert fake_gsplat[-1]["channel_chunk"] == 40
    rasterization(*_args(scene), backend="gsplat", absgrad=True, render_mode="RGB+ED")
    assert fake_gsplat[-1]["channel_chunk"] == 41  # the depth channel counts too
    rasterization(*_args(scene), backend="gsplat", absgrad=False)
    assert "channel_chunk" not in fake_gsplat[-1]  # gsplat's default when absgrad is off
    with pytest.raises(ValueError, match="channel_chunk >= 40"):
        rasterization(*_args(scene), backend="gsplat", absgrad=True, channel_chunk=32)
    small = make_scene(9, 20, 16, 12, channels=20, extras=False, dtype=torch.float32)
    rasterization(*_args(small), backend="gsplat", absgrad=True)
    assert "channel_chunk" not in fake_gsplat[-1]


def test_without_grad_the_feature_channels_ride_in_the_main_pass(fake_gsplat: List[Dict]) -> None:
    scene = make_scene(9, 20, 16, 12, channels=19, extras=False, dtype=torch.float32)
    params = [scene[k].clone().requires_grad_(True) for k in PARAM_NAMES]
    with torch.no_grad():
        out = rasterization(*params, scene["viewmats"], scene["Ks"], 16, 12, backend="gsplat", no_geometry_grad_channels=(3, 19))
    assert out == "gsplat-result" and len(fake_gsplat) == 1 and fake_gsplat[0]["colors"].shape[-1] == 19


def test_feature_channels_send_no_gradient_to_geometry_or_camera() -> None:
    """With the camera optimiser on, viewmats carry grad: feature losses must not move the poses."""
    scene = make_scene(21, 120, 24, 18, channels=7)
    params = [scene[k].clone().requires_grad_(True) for k in PARAM_NAMES]
    viewmats = scene["viewmats"].clone().requires_grad_(True)
    render, _, _ = rasterization(*params, viewmats, scene["Ks"], 24, 18, backend="torch", no_geometry_grad_channels=(3, 7))
    grads = torch.autograd.grad(render[..., 3:7].square().sum(), params + [viewmats], allow_unused=True)
    for name, g in zip(PARAM_NAMES[:4] + ("viewmats",), grads[:4] + grads[5:]):
        assert g is None or (g == 0).all(), name
    assert grads[4][:, 3:7].abs().sum() > 0  # the features themselves learn
    # The RGB channels still move the camera.
    render, _, _ = rasterization(*params, viewmats, scene["Ks"], 24, 18, backend="torch", no_geometry_grad_channels=(3, 7))
    (g_view,) = torch.autograd.grad(render[..., :3].sum(), viewmats)
    assert g_view.abs().sum() > 0


def test_camera_centers_match_the_inverse() -> None:
    scene = make_scene(3, 10, 16, 12, n_cameras=3)
    viewmats = scene["viewmats"]
    torch.testing.assert_close(camera_centers(viewmats), torch.linalg.inv(viewmats)[:, :3, 3])
