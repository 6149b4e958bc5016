"""`ulift` for a user: mistakes exit 2 with one line and no traceback, runs open from any directory."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ulift_ns import cli
from ulift_ns.errors import USAGE_EXIT_CODE


def _user_error(argv, capsys) -> str:
    """Run ``ulift ARGV``: it must exit 2 with one short message on stderr and no traceback."""
    with pytest.raises(SystemExit) as err:
        cli.main(argv)
    assert err.value.code == USAGE_EXIT_CODE
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    message = captured.err.strip()
    assert message.startswith(f"ulift {argv[0]}: ") and len(message.splitlines()) <= 3, message
    return message


def test_missing_config_and_existing_output(tmp_path, capsys):
    message = _user_error(["render", "--load-config", str(tmp_path / "nope.yml"), "--output-dir", str(tmp_path / "o")], capsys)
    assert "nope.yml does not exist" in message and "config.yml that ns-train wrote" in message
    message = _user_error(["export", "--load-config", str(tmp_path / "nope.yml"), "--output-dir", str(tmp_path / "o")], capsys)
    assert "does not exist" in message
    out = tmp_path / "labels"
    out.mkdir()
    (out / "frame_00000.png").write_bytes(b"x")
    # checked before the (missing) config is even read: no time lost loading
    message = _user_error(["render", "--load-config", str(tmp_path / "nope.yml"), "--output-dir", str(out)], capsys)
    assert "already holds" in message and "--overwrite" in message


def test_a_yaml_that_is_not_a_run(tmp_path, capsys):
    plain = tmp_path / "plain.yml"
    plain.write_text("a: 1\n")
    broken = tmp_path / "broken.yml"
    broken.write_text("a: [1\n")
    for path in (plain, broken):
        message = _user_error(["render", "--load-config", str(path), "--output-dir", str(tmp_path / "o")], capsys)
        assert "is not a nerfstudio config" in message and "config.yml" in message


def test_a_splatfacto_run_names_the_frozen_method(tmp_path, capsys):
    from nerfstudio.configs.method_configs import all_methods

    config = tmp_path / "config.yml"
    config.write_text(yaml.dump(all_methods["splatfacto"]), encoding="utf-8")
    for command in ("render", "export"):
        message = _user_error([command, "--load-config", str(config), "--output-dir", str(tmp_path / command)], capsys)
        assert "trained with splatfacto" in message
        assert "ns-train unified-lift-frozen" in message and f"--pipeline.model.splat {config}" in message
    assert not (tmp_path / "render").exists() and not (tmp_path / "export").exists()


def test_eval_without_ground_truth_or_predictions(tiny_scene, tmp_path, capsys):
    message = _user_error(["eval", "--data", str(tmp_path), "--pred", str(tmp_path)], capsys)
    assert "gt_masks does not exist" in message
    empty = tmp_path / "empty"
    empty.mkdir()
    message = _user_error(["eval", "--data", str(tiny_scene), "--pred", str(empty)], capsys)
    assert "No predicted label maps" in message and "ulift render" in message


def test_bugs_keep_their_traceback(monkeypatch):
    def broken(self):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli.Render, "main", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["render", "--load-config", "c.yml", "--output-dir", "o"])


def test_exit_code_and_stderr_of_the_real_command(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ulift_ns.cli", "eval", "--data", str(tmp_path), "--pred", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == USAGE_EXIT_CODE
    assert "Traceback" not in result.stderr and "FutureWarning" not in result.stderr
    assert result.stderr.strip().startswith("ulift eval: ")


def test_every_option_has_a_description():
    """tyro prints a field's docstring as its --help line; every option of every command has one."""
    import dataclasses

    from tyro._docstrings import get_field_docstring

    for command in (cli.Demo, cli.RunDemo, cli.Render, cli.Eval, cli.Export, cli.Masks, cli.ConvertLlff):
        for field in dataclasses.fields(command):
            assert get_field_docstring(command, field.name, ()), f"{command.__name__}.{field.name} has no description"


# --------------------------------------------------------------------------- any working directory


def _relative_run(trained_run, root: Path) -> Path:
    """The trained run re-homed as `cd ROOT && ns-train unified-lift --data scene` leaves it: relative paths."""
    config = yaml.load(trained_run.config_path.read_text(), Loader=yaml.Loader)
    scene = Path(config.pipeline.datamanager.data)
    shutil.copytree(scene, root / "scene")
    config.pipeline.datamanager.data = Path("scene")
    config.pipeline.datamanager.dataparser.data = Path("scene")
    config.output_dir = Path("outputs")
    config.experiment_name = "scene"
    run_dir = root / "outputs" / "scene" / str(config.method_name) / str(config.timestamp)
    shutil.copytree(trained_run.config_path.parent / config.relative_model_dir, run_dir / config.relative_model_dir)
    # the final checkpoint's multi-view 3D labels, cached by the trainer beside nerfstudio_models/
    shutil.copytree(trained_run.config_path.parent / "labels3d", run_dir / "labels3d")
    (run_dir / "config.yml").write_text(yaml.dump(config), encoding="utf-8")
    return run_dir / "config.yml"


def test_render_and_export_from_another_directory(trained_run, tmp_path, monkeypatch, capsys):
    config = _relative_run(trained_run, tmp_path / "project")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    relative = Path("..") / config.relative_to(tmp_path)
    cli.main(["render", "--load-config", str(relative), "--output-dir", "labels", "--split", "test"])
    assert list((elsewhere / "labels").glob("*.png"))
    # export reads only the checkpoint: the scene may be gone entirely
    shutil.move(tmp_path / "project" / "scene", tmp_path / "moved_scene")
    cli.main(["export", "--load-config", str(relative), "--output-dir", "objects"])
    assert (elsewhere / "objects" / "objects.json").is_file() and list((elsewhere / "objects").glob("object_*.ply"))
    # render does need the scene (its cameras): the error names it and the fix
    message = _user_error(["render", "--load-config", str(relative), "--output-dir", "labels2"], capsys)
    assert "Scene folder scene" in message and "training folder" in message
    # and an existing export is refused before loading anything
    message = _user_error(["export", "--load-config", str(relative), "--output-dir", "objects"], capsys)
    assert "already exists" in message and "--overwrite" in message


def test_lpips_is_not_built_without_cached_weights(tmp_path, monkeypatch):
    """No download attempt: with an empty torch hub cache the LPIPS class is never constructed."""
    import torch
    import torchmetrics.image.lpip as lpip_module

    from ulift_ns.model import _lpips_optional, lpips_weights_cached

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    calls = []
    monkeypatch.setattr(lpip_module, "LearnedPerceptualImagePatchSimilarity", lambda *a, **k: calls.append(a) or "built")
    assert lpips_weights_cached("alex") is False
    with _lpips_optional(), pytest.warns(UserWarning, match="LPIPS"):
        import ulift_ns.model as model_module

        model_module._LPIPS_WARNED = False
        assert lpip_module.LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True) is None
    assert calls == []
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "alexnet-owt-7be5be79.pth").write_bytes(b"")
    with _lpips_optional():
        assert lpip_module.LearnedPerceptualImagePatchSimilarity(net_type="alex") == "built"
