"""``unified-lift-frozen``: registration, end-to-end on a run and on a 3DGS PLY, and each bad input."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ulift_ns.splat_io import GaussianSplat, SplatInputError, load_splat, to_nerfstudio_frame, write_3dgs_ply

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12


def _frozen(scene: Path, runs: Path, splat: Path, **model_kw):
    from ulift_ns.config import frozen_trainer_config
    from ulift_ns.frozen import UnifiedLiftFrozenModelConfig
    from ulift_ns.job import train_on_scene

    cfg = frozen_trainer_config(UnifiedLiftFrozenModelConfig(splat=splat, **model_kw), max_steps=STEPS)
    return train_on_scene(scene, runs, STEPS, device="cpu", quiet=True, config=cfg)


def _expect_input_error(scene: Path, runs: Path, splat: Path, *needles: str, **model_kw) -> str:
    from ulift_ns.trainer import TrainingInputError

    with pytest.raises(TrainingInputError) as err:
        _frozen(scene, runs, splat, **model_kw)
    msg = str(err.value)
    assert msg.startswith("ns-train unified-lift-frozen: ") and "\n" not in msg.strip()
    for needle in needles:
        assert needle in msg, msg
    assert not any(p.is_file() for p in runs.rglob("*")) if runs.exists() else True, "nothing is left behind"
    return msg


@pytest.fixture(scope="module")
def frozen_run(trained_run, tiny_scene, tmp_path_factory):
    return _frozen(tiny_scene, tmp_path_factory.mktemp("frozen"), trained_run.config_path)


def test_registered_next_to_unified_lift():
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11 (tomllib)")
    entry = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["nerfstudio.method_configs"]
    module, attr = entry["unified-lift-frozen"].split(":")
    spec = getattr(importlib.import_module(module), attr)
    assert spec.config.method_name == "unified-lift-frozen"
    from ulift_ns.frozen import UnifiedLiftFrozenModelConfig
    from ulift_ns.model import UnifiedLiftModel

    assert isinstance(spec.config.pipeline.model, UnifiedLiftFrozenModelConfig)
    assert issubclass(spec.config.pipeline.model._target, UnifiedLiftModel)


def test_frozen_run_keeps_geometry_and_trains_only_features(trained_run, frozen_run):
    src = load_splat(trained_run.config_path)
    model = frozen_run.pipeline.model
    for name in ("means", "scales", "quats", "opacities", "features_dc", "features_rest"):
        torch.testing.assert_close(getattr(model, name).detach().cpu(), getattr(src, name), msg=name)
    assert set(model.get_param_groups()) == {"identity", "codebook"}
    assert model.contributors and model.contributors[0].ids.dtype == torch.int32
    assert frozen_run.psnr_after == pytest.approx(frozen_run.psnr_before, abs=1e-4)  # colours never moved


@pytest.fixture
def registered(monkeypatch):
    """nerfstudio's registry as after ``pip install -e .`` (an older editable install lacks the new entry point)."""
    from nerfstudio.configs.method_configs import all_methods

    from ulift_ns.config import unified_lift_frozen

    if "unified-lift-frozen" not in all_methods:
        monkeypatch.setitem(all_methods, "unified-lift-frozen", unified_lift_frozen.config)


def test_frozen_run_is_an_ordinary_run(frozen_run, tmp_path, registered):
    from ulift_ns.export import run_export
    from ulift_ns.predict import load_pipeline, write_predictions

    pipeline = load_pipeline(frozen_run.config_path)  # what ulift render / ns-viewer / ns-eval do
    assert pipeline.model.num_points == frozen_run.pipeline.model.num_points
    torch.testing.assert_close(pipeline.model.identity.cpu(), frozen_run.pipeline.model.identity.detach().cpu())
    assert write_predictions(pipeline, "all", tmp_path / "labels")
    summary = run_export(frozen_run.config_path, tmp_path / "export", None, False, False)
    assert summary["num_gaussians"] > 0


def test_ply_in_the_data_frame_lines_up_through_the_dataparser_transform(trained_run, tiny_scene, tmp_path):
    src = load_splat(trained_run.config_path)
    outputs = trained_run.pipeline.datamanager.train_dataparser_outputs
    t, s = outputs.dataparser_transform.float(), float(outputs.dataparser_scale)
    # The inverse transform gives the splat as trained on the raw poses.
    inv = torch.cat([t[:3, :3].T, (-t[:3, :3].T @ t[:3, 3])[:, None]], 1)
    raw = to_nerfstudio_frame(GaussianSplat(src.means / s, src.scales, src.quats, src.opacities, src.features_dc, src.features_rest, src.source), inv, 1.0)
    raw.scales = src.scales - np.log(s)
    raw.features_rest = raw.features_rest[:, :0]  # a degree-0 PLY: the run adopts its SH degree
    raw.features_dc = torch.logit((src.features_dc * 0.28209479177387814 + 0.5).clamp(1e-4, 1 - 1e-4))
    back = to_nerfstudio_frame(raw, t, s)
    torch.testing.assert_close(back.means, src.means, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(back.scales, src.scales, atol=1e-5, rtol=1e-5)
    dots = (torch.nn.functional.normalize(back.quats, dim=-1) * torch.nn.functional.normalize(src.quats, dim=-1)).sum(-1).abs()
    assert float(dots.min()) > 0.9999
    ply = tmp_path / "raw.ply"
    write_3dgs_ply(ply, raw)
    run = _frozen(tiny_scene, tmp_path / "runs", ply, splat_frame="data")
    torch.testing.assert_close(run.pipeline.model.means.detach().cpu(), src.means, atol=1e-4, rtol=1e-4)
    assert run.pipeline.model.config.sh_degree == 0
    # Degree 0: PLY colours are SH DC, the model's are logit RGB; both mean the same colour.
    rgb_ply = load_splat(ply).features_dc.sigmoid()
    torch.testing.assert_close(rgb_ply, (src.features_dc * 0.28209479177387814 + 0.5).clamp(1e-4, 1 - 1e-4), atol=1e-4, rtol=1e-3)
    # The same PLY read as if it were in nerfstudio's frame does not line up.
    _expect_input_error(tiny_scene, tmp_path / "runs2", ply, "raw.ply", "splat-frame data", min_in_view=0.9)


def test_point_cloud_ply_is_refused(tiny_scene, tmp_path):
    from plyfile import PlyData, PlyElement

    ply = tmp_path / "points.ply"
    arr = np.zeros(5, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1")])
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(ply))
    _expect_input_error(tiny_scene, tmp_path / "runs", ply, str(ply), "f_dc_0", "not a Gaussian splat", "ns-export gaussian-splat")


def test_non_splat_config_is_refused(tiny_scene, tmp_path):
    from nerfstudio.engine.trainer import TrainerConfig
    from nerfstudio.models.nerfacto import NerfactoModelConfig
    from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig

    cfg = tmp_path / "nerfacto" / "config.yml"
    cfg.parent.mkdir()
    cfg.write_text(yaml.dump(TrainerConfig(method_name="nerfacto", pipeline=VanillaPipelineConfig(model=NerfactoModelConfig()))))
    _expect_input_error(tiny_scene, tmp_path / "runs", cfg, str(cfg), "'nerfacto' run, not a Gaussian splat", "ns-train splatfacto")


def test_misaligned_splat_is_refused(trained_run, tiny_scene, tmp_path):
    src = load_splat(trained_run.config_path)
    src.means = src.means + 1000.0
    ply = tmp_path / "elsewhere.ply"
    write_3dgs_ply(ply, src)
    _expect_input_error(tiny_scene, tmp_path / "runs", ply, str(ply), "0.0% of its", "does not line up", "--pipeline.model.splat-frame data")


def test_checkpoint_sh_degree_differing_from_its_config_is_refused(trained_run, tiny_scene, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run.config_path.parent, run)
    text = (run / "config.yml").read_text()
    degree = yaml.load(text, Loader=yaml.Loader).pipeline.model.sh_degree
    (run / "config.yml").write_text(text.replace(f"sh_degree: {degree}\n", f"sh_degree: {degree - 1}\n", 1))
    _expect_input_error(tiny_scene, tmp_path / "runs", run / "config.yml", "step-", f"SH degree {degree}", f"sh_degree {degree - 1}")


def test_explicit_sh_degree_differing_from_the_ply_is_refused(trained_run, tiny_scene, tmp_path):
    src = load_splat(trained_run.config_path)
    ply = tmp_path / "splat.ply"
    write_3dgs_ply(ply, src)
    _expect_input_error(tiny_scene, tmp_path / "runs", ply, str(ply), f"--pipeline.model.sh-degree {src.sh_degree}", sh_degree=src.sh_degree - 1)


def test_missing_splat_argument_names_the_flag(tiny_scene, tmp_path):
    with pytest.raises(SplatInputError, match="does not exist"):
        load_splat(tmp_path / "nope.ply")


def test_ns_train_flags_parse():
    import tyro

    from ulift_ns.config import unified_lift_frozen

    cfg = tyro.cli(
        type(unified_lift_frozen.config),
        default=unified_lift_frozen.config,
        args=["--pipeline.model.splat", "splat.ply", "--pipeline.model.splat-frame", "data", "--pipeline.model.top-k", "8"],
    )
    assert cfg.pipeline.model.splat == Path("splat.ply") and cfg.pipeline.model.splat_frame == "data"
    assert cfg.pipeline.model.top_k == 8 and cfg.method_name == "unified-lift-frozen"
