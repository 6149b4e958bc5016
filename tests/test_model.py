"""UnifiedLiftModel trained for real on CPU: photometric progress, densification, outputs, checkpoints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ulift_ns.job import train_on_scene
from ulift_ns.model import UnifiedLiftModelConfig
from ulift_ns.predict import load_pipeline, split_cameras

from tests.conftest import TRAIN_STEPS as STEPS


@pytest.fixture(scope="module")
def run(trained_run):
    return trained_run


def _seed_point_count(scene: Path) -> int:
    from plyfile import PlyData

    return len(PlyData.read(str(scene / "sparse_pc.ply"))["vertex"])


def test_training_on_cpu_raises_psnr(run):
    assert run.psnr_after["train"] > run.psnr_before["train"] + 1.5, (run.psnr_before, run.psnr_after)


def test_densification_changed_the_gaussian_count(run, tiny_scene: Path):
    model = run.pipeline.model
    assert model.num_points != _seed_point_count(tiny_scene)
    # identity features are a Gaussian parameter, so the strategy grew/pruned them in step with the means
    assert model.gauss_params["identity"].shape == (model.num_points, model.config.feature_dim)


def test_lifting_losses_are_in_the_training_loss(run):
    pipeline = run.pipeline
    pipeline.train()
    _, loss_dict, metrics = pipeline.get_train_loss_dict(step=STEPS)
    for key in ("main_loss", "contrastive_loss", "class_loss", "concentration_loss"):
        assert key in loss_dict and torch.isfinite(loss_dict[key]), key
    assert 0.0 <= metrics["lift_filtered_fraction"] <= 1.0
    assert metrics["lift_masks"] >= 1


def test_eval_outputs_have_instance_images(run):
    pipeline = run.pipeline
    pipeline.eval()
    _, camera = split_cameras(pipeline, "train")[0]
    out = pipeline.model.get_outputs_for_camera(camera)
    for key in ("rgb", "depth", "accumulation", "instance", "instance_id", "instance_confidence"):
        assert key in out, key
    assert "features" not in out  # a 16-channel image would flicker as PCA in the viewer
    ids = out["instance_id"][..., 0].long()
    assert out["instance"].shape == out["rgb"].shape and out["instance"].dtype == torch.float32
    labelled = ids > 0
    assert labelled.any()
    palette = pipeline.model.palette
    assert torch.allclose(out["instance"][labelled], palette[ids[labelled] - 1])
    assert torch.all(out["instance"][~labelled] == 0)
    assert torch.all(ids[out["accumulation"][..., 0] < 0.5] == 0)


def test_per_gaussian_labels_follow_the_codebook(run):
    model = run.pipeline.model
    labels, prob = model.gaussian_instance_ids()
    assert labels.shape == (model.num_points,) and labels.min() >= 1
    # Default rule: cosine between each Gaussian's identity and each codebook row.
    cos = torch.nn.functional.cosine_similarity(model.identity[:, None, :], model.codebook[None, :, :], dim=-1)
    expected = torch.argmax(cos, dim=-1) + 1
    assert torch.equal(labels, expected)
    assert torch.all((prob > 0) & (prob <= 1))


def test_rendered_features_depend_only_on_identity_directions(run):
    model = run.pipeline.model
    model.eval()
    _, camera = split_cameras(run.pipeline, "train")[0]
    saved = model.gauss_params["identity"].detach().clone()
    lengths = torch.rand(saved.shape[0], 1, generator=torch.Generator().manual_seed(0)) * 20 + 0.05
    model.eval_outputs_features = True
    try:
        with torch.no_grad():
            before = model.get_outputs_for_camera(camera)["features"]
            model.gauss_params["identity"].mul_(lengths)
            after = model.get_outputs_for_camera(camera)["features"]
            model.config.unit_gaussian_features = False
            raw = model.get_outputs_for_camera(camera)["features"]
    finally:
        model.config.unit_gaussian_features = True
        model.eval_outputs_features = False
        with torch.no_grad():
            model.gauss_params["identity"].copy_(saved)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-4)
    assert float(before.norm(dim=-1).max()) <= 1.0 + 1e-4  # a convex mix of unit vectors
    assert not torch.allclose(raw, before, atol=1e-2)  # the official raw rendering does see the lengths


def test_checkpoint_reloads_with_the_same_predictions(run):
    reloaded = load_pipeline(run.config_path)
    assert reloaded.model.num_points == run.pipeline.model.num_points
    _, camera = split_cameras(reloaded, "train")[0]
    run.pipeline.eval()
    a = run.pipeline.model.get_outputs_for_camera(camera)["instance_id"]
    b = reloaded.model.get_outputs_for_camera(camera)["instance_id"]
    assert torch.equal(a, b)


def test_lpips_without_weights_is_skipped_not_fatal(run):
    pipeline = run.pipeline
    pipeline.eval()
    camera, batch = pipeline.datamanager.next_eval_image(0)
    out = pipeline.model.get_outputs_for_camera(camera)
    metrics, images = pipeline.model.get_image_metrics_and_images(out, batch)
    assert "psnr" in metrics and "instance" in images
    assert ("lpips" in metrics) == (pipeline.model.lpips is not None)


@pytest.mark.parametrize("to_geometry", [False, True])
def test_feature_gradients_reach_geometry_only_when_asked(run, to_geometry: bool):
    model = run.pipeline.model
    model.config.feature_grad_to_geometry = to_geometry
    try:
        model.train()
        camera, _ = run.pipeline.datamanager.next_train(STEPS)
        model.zero_grad()
        out = model.get_outputs(camera)
        out["features"].square().sum().backward()
        means_grad = model.gauss_params["means"].grad
        assert model.gauss_params["identity"].grad.abs().sum() > 0
        moved = means_grad is not None and means_grad.abs().sum() > 0
        assert moved == to_geometry
    finally:
        model.config.feature_grad_to_geometry = False
        model.zero_grad()


def test_ns_train_cli_trains_on_cpu(tiny_scene: Path, tmp_path: Path):
    cmd = [
        sys.executable, "-c", "from nerfstudio.scripts.train import entrypoint; entrypoint()",
        "unified-lift", "--data", str(tiny_scene), "--machine.device-type", "cpu", "--max-num-iterations", "4",
        "--vis", "tensorboard", "--output-dir", str(tmp_path), "--viewer.quit-on-train-completion", "True",
    ]
    done = subprocess.run(cmd + ["--pipeline.model.refine-every", "7"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    configs = list(tmp_path.rglob("config.yml"))
    ckpts = list(tmp_path.rglob("*.ckpt"))
    assert len(configs) == 1 and len(ckpts) == 1
    # The schedule is printed in one block and config.yml holds what was used: adapted, and the user's value kept.
    assert "unified-lift schedule for 4 steps on 48x36 px images" in done.stdout
    assert "yours (kept)" in done.stdout
    saved = yaml.load(configs[0].read_text(), Loader=yaml.Loader)
    assert saved.pipeline.model.warmup_length == 20 and saved.pipeline.model.refine_every == 7
    assert saved.optimizers["means"]["scheduler"].max_steps == 4


def test_model_config_values_travel_to_the_model(tiny_scene: Path, tmp_path: Path):
    cfg = UnifiedLiftModelConfig(feature_dim=5, codebook_size=7)
    run = train_on_scene(tiny_scene, tmp_path, 2, model=cfg, device="cpu", quiet=True)
    model = run.pipeline.model
    assert model.codebook.shape == (7, 5) and model.identity.shape[1] == 5
    assert np.isfinite(run.psnr_after["train"])


def test_ns_eval_adds_segmentation_metrics(run, tmp_path: Path):
    import json

    out = tmp_path / "eval.json"
    cmd = [sys.executable, "-c", "from nerfstudio.scripts.eval import entrypoint; entrypoint()",
           "--load-config", str(run.config_path), "--output-path", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert "psnr" in results and "lpips" not in results
    for key in ("seg_pq", "seg_miou", "seg_consistency", "seg_map"):
        assert 0.0 <= results[key] <= 100.0, key
    assert results["seg_num_views"] >= 1


def test_ns_render_writes_an_instance_video(run, tmp_path: Path):
    out = tmp_path / "instance.mp4"
    cmd = [sys.executable, "-c", "from nerfstudio.scripts.render import entrypoint; entrypoint()", "interpolate",
           "--load-config", str(run.config_path), "--rendered-output-names", "instance", "--frame-rate", "4",
           "--interpolation-steps", "2", "--pose-source", "train", "--output-path", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.is_file() and out.stat().st_size > 1000
