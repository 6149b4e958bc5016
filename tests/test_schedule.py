"""The schedule fitted to a run: pure rules, the trainer applying them, and what a short user run gets."""

from __future__ import annotations

import pytest

from ulift_ns.schedule import STEP_FLOORS, Schedule, adapted_schedule, downscales_for, feature_lr_boost

SPLATFACTO = Schedule(
    warmup_length=500,
    refine_every=100,
    resolution_schedule=3000,
    sh_degree_interval=1000,
    stop_split_at=15000,
    stop_screen_size_at=4000,
    num_downscales=2,
)


def test_long_runs_on_large_images_keep_splatfacto_schedule():
    for steps in (30000, 60000):
        assert adapted_schedule(steps, 1600, SPLATFACTO) == SPLATFACTO


def test_short_runs_keep_each_knob_share_of_training():
    s = adapted_schedule(3000, 1600, SPLATFACTO)
    assert (s.warmup_length, s.refine_every, s.resolution_schedule) == (50, 20, 300)
    assert (s.sh_degree_interval, s.stop_split_at, s.stop_screen_size_at) == (100, 1500, 400)
    assert s.feature_lr_boost == 10.0
    # Densification stops at half the run, as splatfacto's 15k of 30k.
    assert s.stop_split_at / 3000 == pytest.approx(0.5)


def test_floors_hold_for_tiny_runs():
    s = adapted_schedule(10, 1600, SPLATFACTO)
    for name, floor in STEP_FLOORS.items():
        assert getattr(s, name) == floor


def test_small_images_drop_screen_size_rules_and_coarse_start():
    s = adapted_schedule(3000, 160, SPLATFACTO)
    assert s.stop_screen_size_at == 0
    assert s.num_downscales == 0
    assert adapted_schedule(3000, 600, SPLATFACTO).num_downscales == 1
    assert [downscales_for(n) for n in (40, 255, 511, 512, 1023, 1024, 4000)] == [0, 0, 0, 1, 1, 2, 2]


def test_feature_lr_boost_is_capped_and_never_below_one():
    assert [feature_lr_boost(n) for n in (100, 3000, 6000, 30000, 90000)] == [10.0, 10.0, 5.0, 1.0, 1.0]


def test_bad_step_count_is_refused():
    with pytest.raises(ValueError, match="positive"):
        adapted_schedule(0, 160, SPLATFACTO)


def test_densify_threshold_scales_with_small_images_only():
    from ulift_ns.schedule import grad_threshold_factor

    assert adapted_schedule(3000, 1024, SPLATFACTO).densify_grad_thresh == pytest.approx(0.0008)
    assert adapted_schedule(3000, 2000, SPLATFACTO).densify_grad_thresh == pytest.approx(0.0008)
    assert adapted_schedule(3000, 128, SPLATFACTO).densify_grad_thresh == pytest.approx(0.0064)
    assert [grad_threshold_factor(n) for n in (96, 512, 1024, 4096)] == pytest.approx([1024 / 96, 2.0, 1.0, 1.0])
