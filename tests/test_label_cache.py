"""Label maps at load time: relabelled per view, dropped full masks, and no pinning without CUDA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager

from tests.test_datamanager import make_datamanager
from ulift_ns.datamanager import GT_LABELS, SAM_LABELS, relabel_masks
from ulift_ns.lift.objective import LiftLossConfig, lift_losses


def test_relabel_masks_is_contiguous_keeps_order_and_drops_full_masks():
    labels = torch.tensor([[0, 7, 7], [300, 70000, 7]])
    out = relabel_masks(labels)
    assert out.dtype == torch.uint16
    assert out.long().tolist() == [[0, 1, 1], [2, 3, 1]]
    assert relabel_masks(torch.full((2, 3), 5)).long().tolist() == [[0, 0, 0]] * 2  # selects everything
    assert relabel_masks(torch.zeros(2, 2, dtype=torch.long)).long().sum() == 0
    assert relabel_masks(torch.zeros(0, 3, dtype=torch.long)).shape == (0, 3)


def test_relabelled_masks_give_the_same_losses():
    """The partition and the order of ids are kept, so every lift loss is unchanged."""
    gen = torch.Generator().manual_seed(0)
    raw = torch.tensor([0, 3, 17, 42, 900])[torch.randint(0, 5, (24, 20), generator=gen)]
    features = torch.randn(24, 20, 8, generator=gen)
    codebook = torch.randn(16, 8, generator=gen)
    config = LiftLossConfig(num_samples=200, min_mask_pixels=5)
    a, _ = lift_losses(features, raw, codebook, config, generator=torch.Generator().manual_seed(1))
    b, _ = lift_losses(features, relabel_masks(raw).long(), codebook, config, generator=torch.Generator().manual_seed(1))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_cache_is_relabelled_and_train_batches_move_only_sam_labels(tiny_scene: Path):
    dm = make_datamanager(tiny_scene)
    for data in dm.cached_train:
        sam = data[SAM_LABELS].long()
        present = torch.unique(sam[sam > 0])
        assert torch.equal(present, torch.arange(1, len(present) + 1))
    camera, batch = dm.next_train(0)
    assert batch[SAM_LABELS].dtype == torch.int64
    assert batch[GT_LABELS].dtype == dm.cached_train[camera.metadata["cam_idx"]][GT_LABELS].dtype  # left as cached


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CUDA-less machine")
def test_nerfstudio_switching_to_cpu_cache_past_500_images_does_not_pin(tiny_scene: Path, monkeypatch):
    original = FullImageDatamanager.__init__

    def over_500_images(self, config, *args, **kwargs):
        original(self, config, *args, **kwargs)
        self.config.cache_images = "cpu"  # what nerfstudio does when len(train_dataset) > 500

    monkeypatch.setattr(FullImageDatamanager, "__init__", over_500_images)
    dm = make_datamanager(tiny_scene)
    assert dm.config.cache_images == "gpu"
    _, batch = dm.next_train(0)  # pin_memory() would raise without a CUDA driver
    assert batch["image"].shape[:2] == batch[SAM_LABELS].shape
