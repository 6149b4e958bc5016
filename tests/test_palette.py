"""Tests for ulift_ns.palette: distinct colours, the most distinct ones for the largest objects."""

from __future__ import annotations

import torch

from ulift_ns.palette import instance_palette, lab_distances, ranked_palette


def _min_distance(colours: torch.Tensor) -> float:
    d = lab_distances(colours)
    d.fill_diagonal_(float("inf"))
    return float(d.min())


def test_first_colours_are_far_apart():
    palette = instance_palette(256)
    assert palette.shape == (256, 3) and float(palette.min()) >= 0 and float(palette.max()) <= 1
    assert _min_distance(palette[:8]) > 60.0  # CIELAB; ~2.3 is a just-noticeable difference
    assert _min_distance(palette[:32]) > 25.0
    assert _min_distance(palette) > 5.0  # no two of the 256 entries look alike (the old one had 112 pairs < 2)


def test_ids_144_apart_differ():
    palette = instance_palette(256)
    d = lab_distances(palette)
    assert float(torch.diagonal(d, offset=144).min()) > 5.0


def test_ranked_palette_gives_the_largest_objects_the_first_colours():
    base = instance_palette(256)
    ranked = ranked_palette(256, [200, 7, 55])
    assert torch.equal(ranked[200], base[0]) and torch.equal(ranked[7], base[1]) and torch.equal(ranked[55], base[2])
    assert torch.equal(torch.sort(ranked, dim=0).values, torch.sort(base, dim=0).values)  # a permutation
    assert _min_distance(ranked[[200, 7, 55]]) > 60.0
