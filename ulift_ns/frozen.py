"""``unified-lift-frozen``: segment a splat that is already trained; only identity features and codebook learn.

``ns-train unified-lift-frozen --data SCENE --pipeline.model.splat PATH`` where PATH is a
run's ``config.yml`` (splatfacto or unified-lift) or a 3DGS PLY (``ulift_ns.splat_io``).

* Geometry, colours and opacities are loaded once and frozen: no densification, no
  photometric loss, no optimiser for them.
* Frozen geometry fixes each view's compositing weights, so set-up caches per-pixel top-K
  (Gaussian, weight) lists (``ulift_ns.contributors``) and a training step is one sparse
  product plus the lifting losses — no rasterization.
* The result is an ordinary ``UnifiedLiftModel`` checkpoint: render, eval, export and the
  viewer rasterize it as usual and never read PATH again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Type, Union

import torch
from torch import Tensor
from torch.nn import Parameter

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.utils.rich_utils import CONSOLE

from ulift_ns.contributors import ViewContributors, composite_features, describe_cache, fraction_in_view, sample_view_pixels, view_contributors
from ulift_ns.datamanager import SAM_LABELS, resize_labels
from ulift_ns.model import UnifiedLiftModel, UnifiedLiftModelConfig, viewmat_from_c2w
from ulift_ns.pipeline import UnifiedLiftPipeline, UnifiedLiftPipelineConfig
from ulift_ns.splat_io import GaussianSplat, SplatInputError, load_splat, to_nerfstudio_frame
from ulift_ns.trainer import USER_INPUT_ERRORS, TrainingInputError, UnifiedLiftTrainer, UnifiedLiftTrainerConfig

FROZEN_METHOD_NAME = "unified-lift-frozen"
FROZEN_GROUPS = ("identity", "codebook")
SPLAT_FRAMES = ("nerfstudio", "data")


@dataclass
class UnifiedLiftFrozenModelConfig(UnifiedLiftModelConfig):
    _target: Type = field(default_factory=lambda: UnifiedLiftFrozenModel)
    splat: Optional[Path] = None
    """The trained splat: a nerfstudio run's config.yml (splatfacto / unified-lift) or a 3DGS .ply (Inria layout)."""
    splat_frame: Literal["nerfstudio", "data"] = "nerfstudio"
    """"nerfstudio": the splat is in nerfstudio's world frame (a run's checkpoint, `ns-export gaussian-splat`).
    "data": it was trained on the scene's raw poses (original 3DGS, Postshot, ...): apply the dataparser's
    transform and scale."""
    top_k: int = 16
    """Contributors kept per pixel in the frozen-weight cache."""
    cache_pixels: Optional[int] = 65536
    """Pixels cached per view (a fixed random subset; views with fewer keep all); None = every pixel.
    Bounds memory: 200 views x 1 MP x top-16 would be 19 GB, at 65,536 pixels per view it is 1.3 GB."""
    min_in_view: float = 0.2
    """Fail when fewer than this share of Gaussian centres land in any training view (misaligned splat)."""
    random_init: bool = True
    """Placeholder Gaussians until the splat (training) or the checkpoint (render/eval/export) replaces them."""
    num_random: int = 16


class UnifiedLiftFrozenModel(UnifiedLiftModel):
    config: UnifiedLiftFrozenModelConfig

    def populate_modules(self) -> None:
        super().populate_modules()
        self.contributors: List[ViewContributors] = []

    @torch.no_grad()
    def attach_splat(self, splat: GaussianSplat) -> None:
        """Replace the placeholder Gaussians by the splat's (frozen) and start fresh identity features."""
        n, d, r = splat.num_points, self.config.feature_dim, self.config.feature_init_range
        for name in ("means", "scales", "quats", "features_dc", "features_rest", "opacities"):
            self.gauss_params[name] = Parameter(getattr(splat, name).to(self.device).contiguous(), requires_grad=False)
        self.gauss_params["identity"] = Parameter((torch.rand(n, d, device=self.device) * 2.0 - 1.0) * r)

    @torch.no_grad()
    def build_contributor_cache(self, cameras: Cameras) -> List[ViewContributors]:
        """Per training view, the top-K compositing lists of the frozen Gaussians (printed size)."""
        from rich.progress import Progress

        start = time.time()
        means, quats = self.means.detach(), self.quats.detach()
        scales, opac = torch.exp(self.scales.detach()), torch.sigmoid(self.opacities.detach()).squeeze(-1)
        gen = torch.Generator().manual_seed(0)
        views = []
        with Progress(transient=True, console=CONSOLE) as progress:
            task = progress.add_task("Caching frozen compositing weights", total=len(cameras))
            for i in range(len(cameras)):
                cam = cameras[i : i + 1].to(self.device)
                w, h = int(cam.width.item()), int(cam.height.item())
                views.append(
                    view_contributors(
                        means, quats, scales, opac, viewmat_from_c2w(cam.camera_to_worlds)[0], cam.get_intrinsics_matrices()[0],
                        w, h, top_k=self.config.top_k, pixels=sample_view_pixels(h, w, self.config.cache_pixels, gen),
                    )
                )
                progress.advance(task)
        self.contributors = views
        CONSOLE.print(f"{describe_cache(views)}; built in {time.time() - start:.1f} s")
        return views

    def get_gaussian_param_groups(self) -> Dict[str, List[Parameter]]:
        # Override: geometry and colours are frozen, so only the identity features get an optimiser.
        return {"identity": [self.gauss_params["identity"]]}

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        # Override: no camera optimiser or bilateral grid either: identity features and codebook only.
        return {"identity": [self.gauss_params["identity"]], "codebook": [self.codebook]}

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        # Override: splatfacto's post-backward callback densifies; frozen geometry keeps only the step counter.
        return [TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], self.step_cb, args=[training_callback_attributes.optimizers])]

    def _gaussian_rgb(self, params: Dict[str, Tensor], viewmat: Tensor) -> Tensor:
        # Override: loaded colours are final, so the SH degree does not ramp up with the (restarted) step.
        step, self.step = self.step, 1 << 30
        try:
            return super()._gaussian_rgb(params, viewmat)
        finally:
            self.step = step

    def _fast_view(self, camera: Cameras) -> Optional[ViewContributors]:
        meta = camera.metadata or {}
        idx = meta.get("cam_idx")
        if not self.training or not self.contributors or idx is None:
            return None
        return self.contributors[int(idx)]

    def get_outputs(self, camera: Cameras) -> Dict[str, Union[Tensor, List]]:
        # Override: a training step on cached frozen weights is one sparse product, no rasterization.
        view = self._fast_view(camera) if isinstance(camera, Cameras) else None
        if view is None:
            return super().get_outputs(camera)
        features = composite_features(view, self.rendered_identity(self.identity))
        return {"features": features[:, None, :], "frozen_view": view}  # type: ignore[dict-item]

    def get_metrics_dict(self, outputs, batch) -> Dict[str, Tensor]:
        # Override: the fast path renders no RGB, so there is no PSNR to report.
        if "frozen_view" not in outputs:
            return super().get_metrics_dict(outputs, batch)
        return {"gaussian_count": torch.tensor(float(self.num_points))}

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        # Override: no photometric loss; the lifting losses on the cached pixels only.
        if "frozen_view" not in outputs:
            return super().get_loss_dict(outputs, batch, metrics_dict)
        if SAM_LABELS not in batch:
            return {}
        view: ViewContributors = outputs["frozen_view"]
        labels = resize_labels(batch[SAM_LABELS], (view.height, view.width)).reshape(-1)[view.pixels.to(batch[SAM_LABELS].device)]
        return self.lift_loss_dict(outputs["features"], labels[:, None].to(self.device), batch, metrics_dict)


def prepare_frozen_model(model: UnifiedLiftFrozenModel, datamanager) -> None:
    """Load the splat into the model in the scene's frame, check it lines up with the cameras, cache the weights."""
    cfg = model.config
    splat = load_splat_checked(cfg)
    outputs = datamanager.train_dataparser_outputs
    if cfg.splat_frame == "data":
        splat = to_nerfstudio_frame(splat, outputs.dataparser_transform, float(outputs.dataparser_scale))
    cameras = datamanager.train_dataset.cameras
    viewmats = viewmat_from_c2w(cameras.camera_to_worlds.float())
    ks = cameras.get_intrinsics_matrices().float()
    share = fraction_in_view(splat.means, viewmats, ks, int(cameras.width.max()), int(cameras.height.max()))
    if share < cfg.min_in_view:
        other = "data" if cfg.splat_frame == "nerfstudio" else "nerfstudio"
        raise SplatInputError(
            f"{cfg.splat}: only {100 * share:.1f}% of its {splat.num_points} Gaussians project into any of the "
            f"{len(cameras)} training views (need {100 * cfg.min_in_view:.0f}%), so the splat does not line up with "
            f"{datamanager.config.data}. Check it belongs to this scene, or pass --pipeline.model.splat-frame {other}."
        )
    CONSOLE.print(
        f"Loaded {splat.num_points:,} Gaussians (SH degree {splat.sh_degree}) from {cfg.splat}, frame '{cfg.splat_frame}': "
        f"{100 * share:.0f}% land in a training view. Geometry and colours are frozen."
    )
    model.attach_splat(splat)
    model.build_contributor_cache(cameras)


_LOADED: Dict[tuple, GaussianSplat] = {}


def load_splat_checked(cfg: UnifiedLiftFrozenModelConfig, check_sh: bool = True) -> GaussianSplat:
    """``load_splat`` once per file version (the trainer checks it before set-up, the pipeline then uses it)."""
    if cfg.splat is None:
        raise SplatInputError(
            "unified-lift-frozen needs the splat to segment: pass --pipeline.model.splat PATH (a run's config.yml or a 3DGS .ply)."
        )
    path = Path(cfg.splat)
    key = (str(path.resolve()), path.stat().st_mtime_ns if path.is_file() else None)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = load_splat(path)
    splat = _LOADED[key]
    if check_sh and splat.sh_degree != cfg.sh_degree:
        raise SplatInputError(
            f"{path} has SH degree {splat.sh_degree} but --pipeline.model.sh-degree is {cfg.sh_degree}: "
            f"pass --pipeline.model.sh-degree {splat.sh_degree} (or leave it unset)."
        )
    return splat


@dataclass
class UnifiedLiftFrozenPipelineConfig(UnifiedLiftPipelineConfig):
    _target: Type = field(default_factory=lambda: UnifiedLiftFrozenPipeline)


class UnifiedLiftFrozenPipeline(UnifiedLiftPipeline):
    def __init__(self, config, device, test_mode: Literal["test", "val", "inference"] = "val", *args, **kwargs):
        super().__init__(config, device, test_mode, *args, **kwargs)
        if test_mode == "val":  # training; render/eval/export load the checkpoint instead
            prepare_frozen_model(self.model, self.datamanager)


@dataclass
class UnifiedLiftFrozenTrainerConfig(UnifiedLiftTrainerConfig):
    _target: Type = field(default_factory=lambda: UnifiedLiftFrozenTrainer)


class UnifiedLiftFrozenTrainer(UnifiedLiftTrainer):
    config: UnifiedLiftFrozenTrainerConfig

    def setup(self, test_mode: Literal["test", "val", "inference"] = "val") -> None:
        try:
            if test_mode == "val":
                self._adopt_splat_sh_degree()
            self._setup(test_mode)
        except USER_INPUT_ERRORS + (SplatInputError,) as err:
            self._remove_unused_run_dir()
            raise TrainingInputError(f"ns-train {FROZEN_METHOD_NAME}: {err}") from None

    def _adopt_splat_sh_degree(self) -> None:
        """Check the splat before anything else; an --sh-degree left at its default follows the splat's."""
        model = self.config.pipeline.model
        splat = load_splat_checked(model, check_sh=False)
        if splat.sh_degree != model.sh_degree and model.sh_degree == type(model)().sh_degree:
            CONSOLE.print(f"Using SH degree {splat.sh_degree} from {model.splat}.")
            model.sh_degree = splat.sh_degree
            self.config.save_config()
        load_splat_checked(model)

    def _remove_unused_run_dir(self) -> None:
        """A run that never started leaves nothing behind: only ns-train's config.yml is removed, empty folders pruned."""
        base = Path(self.base_dir)
        if not base.is_dir() or any(p.name != "config.yml" for p in base.iterdir()):
            return
        (base / "config.yml").unlink(missing_ok=True)
        top = Path(self.config.output_dir).resolve()
        folder = base.resolve()
        while folder != top and top in folder.parents and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent
