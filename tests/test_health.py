"""Splat health: the train/held-out PSNR gap and Gaussians per training pixel."""

import math

from ulift_ns.health import SplatHealth


def test_gap_and_density():
    h = SplatHealth(psnr_train=32.5, psnr_eval=21.0, gaussians=82944, image_size=(96, 72))
    assert math.isclose(h.psnr_gap, 11.5)
    assert math.isclose(h.gaussians_per_pixel, 12.0)
    d = h.as_dict()
    assert d["gaussians"] == 82944 and math.isclose(d["gaussians_per_pixel"], 12.0)
    assert "12.00 per pixel" in h.line() and "gap 11.50 dB" in h.line()


def test_no_held_out_views_gives_nan_gap():
    h = SplatHealth(psnr_train=30.0, psnr_eval=float("nan"), gaussians=10, image_size=(10, 10))
    assert math.isnan(h.psnr_gap)
