"""The trainer fits the schedule to the run: user values kept, config.yml records it, short runs learn."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ulift_ns.config import trainer_config
from ulift_ns.trainer import adapt_to_run, training_image_size


def test_adapt_to_run_scales_defaults_and_keeps_user_values():
    config = trainer_config(max_steps=3000)
    config.pipeline.model.refine_every = 7
    config.optimizers["codebook"]["optimizer"].lr = 0.02
    choices = {c.name: c for c in adapt_to_run(config, (160, 120))}
    model = config.pipeline.model
    assert model.refine_every == 7 and choices["refine_every"].user_set
    assert (model.warmup_length, model.stop_split_at, model.stop_screen_size_at, model.num_downscales) == (50, 1500, 0, 0)
    assert config.optimizers["codebook"]["optimizer"].lr == 0.02 and choices["codebook lr"].user_set
    assert config.optimizers["identity"]["optimizer"].lr == pytest.approx(0.025)
    assert config.optimizers["means"]["scheduler"].max_steps == 3000


def test_adapt_to_run_leaves_long_large_runs_as_splatfacto():
    config = trainer_config(max_steps=30000)
    reference = trainer_config(max_steps=30000)
    choices = adapt_to_run(config, (1600, 1200))
    assert all(c.value == c.default for c in choices)
    assert config.optimizers == reference.optimizers


def test_training_image_size_reads_the_scene(tiny_scene: Path):
    config = trainer_config()
    config.pipeline.datamanager.data = tiny_scene
    assert training_image_size(config) == (48, 36)
    config.pipeline.datamanager.camera_res_scale_factor = 0.5
    assert training_image_size(config) == (24, 18)


def test_short_run_on_small_images_densifies_moderately_and_learns_identities(tiny_scene: Path, tmp_path: Path):
    """300 steps on 48x36 views through the trainer, as `ns-train unified-lift --max-num-iterations 300` would.

    With splatfacto's 30k schedule the same run never densifies (warm-up 500) and its
    identity features barely move (measured: consistency 27.6, PQ 4.0).
    """
    from ulift_ns.evaluate import evaluate_predictions
    from ulift_ns.job import train_on_scene
    from ulift_ns.predict import write_predictions

    from tests.test_model import _seed_point_count

    torch.manual_seed(0)
    run = train_on_scene(tiny_scene, tmp_path / "runs", 300, device="cpu", quiet=True)
    assert run.schedule["warmup_length"] == 20 and run.schedule["num_downscales"] == 0
    seeds, n = _seed_point_count(tiny_scene), run.pipeline.model.num_points
    # The densification threshold follows the 48 px images: no explosion (the 1000 px threshold grows it ~10x).
    assert run.schedule["densify_grad_thresh"] > 0.01
    assert n <= 1.5 * seeds, (seeds, n)
    assert run.health.psnr_eval > run.psnr_before["eval"] + 3.0, (run.psnr_before, run.health)
    write_predictions(run.pipeline, "all", tmp_path / "labels")
    metrics = evaluate_predictions(tiny_scene, tmp_path / "labels")
    assert metrics["consistency"] >= 85.0 and metrics["pq"] >= 60.0, metrics


def test_mask_problems_are_reported_before_training(tiny_scene: Path, tmp_path: Path, capsys):
    """Summary of the masks, a warning for a view without labels and for surplus ids, also during training."""
    import numpy as np

    from tests.conftest import copy_scene
    from ulift_ns.job import train_on_scene
    from ulift_ns.labelio import read_label_map, write_label_png
    from ulift_ns.model import UnifiedLiftModelConfig

    scene = copy_scene(tiny_scene, tmp_path / "scene")
    first = sorted((scene / "sam_masks").glob("*.png"))[0]
    write_label_png(first, np.zeros_like(read_label_map(first)))
    train_on_scene(scene, tmp_path / "runs", 4, model=UnifiedLiftModelConfig(codebook_size=2), device="cpu", quiet=True)
    out = " ".join(capsys.readouterr().out.split())
    assert "training views" in out and "% of pixels labelled" in out and "ids per view" in out
    assert "have no labelled pixel" in out and first.stem in out
    assert "more mask ids than the codebook's 2 rows" in out and "--pipeline.model.codebook-size" in out
    assert "codebook rows, so" in out  # the same surplus, reported on the console during training


def test_missing_masks_end_ns_train_with_one_message(tiny_scene: Path, tmp_path: Path):
    from tests.conftest import copy_scene
    from ulift_ns.job import train_on_scene
    from ulift_ns.trainer import TrainingInputError

    scene = copy_scene(tiny_scene, tmp_path / "scene")
    victims = sorted((scene / "sam_masks").glob("*.png"))[:3]
    for v in victims:
        v.unlink()
    with pytest.raises(TrainingInputError) as err:
        train_on_scene(scene, tmp_path / "runs", 4, device="cpu", quiet=True)
    assert str(err.value).startswith("ns-train unified-lift: 3 of") and all(v.name in str(err.value) for v in victims)
