from __future__ import annotations

from pathlib import Path

import pytest

from ulift_ns.demo import generate_demo_scene

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_scene(tmp_path_factory) -> Path:
    """A small demo scene shared by tests that only read it (48x36, 10 views: nerfstudio keeps 1 for eval)."""
    return generate_demo_scene(tmp_path_factory.mktemp("scene") / "demo", seed=3, num_views=10, width=48, height=36)


TRAIN_STEPS = 60


@pytest.fixture(scope="session")
def trained_run(tiny_scene: Path, tmp_path_factory):
    """A short CPU training run on the tiny scene, shared by model, viewer and export tests."""
    from ulift_ns.job import train_on_scene

    return train_on_scene(tiny_scene, tmp_path_factory.mktemp("runs"), TRAIN_STEPS, device="cpu", quiet=True)


def copy_scene(scene: Path, dest: Path) -> Path:
    """A private, writable copy of a scene for tests that damage it."""
    import shutil

    shutil.copytree(scene, dest)
    return dest


def paint_groups(model, groups: int = 4):
    """Give every Gaussian a known identity: its quantile bin along the scene's x axis; returns its label (1 + bin).

    A 60-step run has not yet made per-Gaussian labels agree with rendered pixel labels;
    painting makes both exact, so tests that use it check the glue, not training quality.
    """
    import torch

    with torch.no_grad():
        x = model.means[:, 0]
        edges = torch.quantile(x, torch.linspace(0, 1, groups + 1)[1:-1])
        group = torch.bucketize(x, edges)
        codebook = torch.zeros_like(model.codebook)
        codebook[:groups, :groups] = torch.eye(groups) * 10.0
        model.codebook.copy_(codebook)
        identity = torch.zeros_like(model.identity)
        identity[torch.arange(len(group)), group] = 1.0
        model.gauss_params["identity"].copy_(identity)
    return group + 1
