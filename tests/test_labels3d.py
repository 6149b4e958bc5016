"""Multi-view 3D labels on a trained model: agreement with the rendered labels, caching, rule switch."""

from __future__ import annotations

import pytest
import torch

import ulift_ns.labels3d as labels3d
from ulift_ns.export import export_segmented
from tests.conftest import paint_groups


@pytest.fixture()
def painted(trained_run):
    model = trained_run.pipeline.model
    saved = model.codebook.detach().clone(), model.identity.detach().clone()
    group = paint_groups(model)
    yield trained_run.pipeline, group
    with torch.no_grad():
        model.codebook.copy_(saved[0])
        model.gauss_params["identity"].copy_(saved[1])
    model.labels_cache_file = None


def test_seen_gaussians_take_the_label_of_the_pixels_they_cover(painted):
    pipeline, group = painted
    model = pipeline.model
    labels, confidence = model.gaussian_labels("multiview", quiet=True)
    weight = model._labels3d[1]["total_weight"]
    strong = weight > 1.0
    assert strong.sum() > 50
    agree = (labels[strong] == group[strong]).float().mean()
    assert agree > 0.9  # slabs are contiguous: a visible Gaussian mostly covers pixels of its own slab
    assert ((labels == 0) == (weight < labels3d.UNSEEN_WEIGHT)).all()
    assert (confidence[labels > 0] > 0).all() and (confidence[labels == 0] == 0).all()
    feature_labels, _ = model.gaussian_labels("feature")
    assert torch.equal(feature_labels, model.gaussian_instance_ids()[0])


def test_computed_once_then_cached_in_memory_and_on_disk(painted, tmp_path, monkeypatch):
    pipeline, _ = painted
    model = pipeline.model
    model.labels_cache_file = tmp_path / "labels3d" / "step-000000060.pt"
    object.__setattr__(model, "_labels3d", None)
    first, _ = model.gaussian_labels("multiview", quiet=True)
    assert model.labels_cache_file.is_file()

    def refuse(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(labels3d, "compute_multiview_labels", refuse)
    assert torch.equal(model.gaussian_labels("multiview", quiet=True)[0], first)  # memory
    object.__setattr__(model, "_labels3d", None)
    assert torch.equal(model.gaussian_labels("multiview", quiet=True)[0], first)  # disk
    with torch.no_grad():
        model.gauss_params["identity"][:5] *= -1.0  # a changed model invalidates both
    with pytest.raises(AssertionError, match="recomputed"):
        model.gaussian_labels("multiview", quiet=True)


def test_export_uses_multiview_labels_by_default(painted, tmp_path):
    pipeline, _ = painted
    model = pipeline.model
    assert model.config.label_rule == "multiview"
    summary = export_segmented(model, tmp_path / "e", min_gaussians=1, min_share=0.0)
    labels, _ = model.gaussian_labels(quiet=True)
    assert summary["label_rule"] == "multiview"
    assert sum(o["num_gaussians"] for o in summary["objects"]) + summary["unassigned"] == summary["num_gaussians"]
    assert summary["unassigned_detail"]["small_objects"] == 0 and summary["unassigned"] >= 0
    assert sorted(o["id"] for o in summary["objects"]) == sorted(int(i) for i in labels.unique() if i > 0)
