"""UnifiedLiftModel: splatfacto plus identity features, an object codebook and the lifting losses.

Wiring only: rendering is ``ulift_ns.rasterize.rasterization`` (gsplat on CUDA, tiled
torch on CPU) and the maths is in ``ulift_ns.lift``.  Each splatfacto override
below says in one line why it exists.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Literal, Optional, Tuple, Type, Union

import torch
from torch import Tensor
from torch.nn import Parameter

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.models.splatfacto import RGB2SH, SplatfactoModel, SplatfactoModelConfig
from nerfstudio.utils.rich_utils import CONSOLE

from ulift_ns.datamanager import SAM_LABELS, resize_labels
from ulift_ns.lift.codebook import instance_ids
from ulift_ns.lift.objective import LiftLossConfig, lift_losses
from ulift_ns.palette import instance_palette
from ulift_ns.rasterize import camera_centers, rasterization, spherical_harmonics
from ulift_ns.viewer import InstanceSelector

OPACITY_THRESHOLD = 0.5
"""Pixels whose accumulated opacity is below this get label 0 (nothing there)."""


def viewmat_from_c2w(c2w: Tensor) -> Tensor:
    """World-to-camera matrices ``[C,4,4]`` (OpenCV axes) from nerfstudio's OpenGL camera-to-world ``[C,3,4]``."""
    rot = c2w[:, :3, :3] * torch.tensor([1.0, -1.0, -1.0], device=c2w.device, dtype=c2w.dtype)
    rot_inv = rot.transpose(1, 2)
    viewmat = torch.zeros(c2w.shape[0], 4, 4, device=c2w.device, dtype=c2w.dtype)
    viewmat[:, 3, 3] = 1.0
    viewmat[:, :3, :3] = rot_inv
    viewmat[:, :3, 3:4] = -rot_inv @ c2w[:, :3, 3:4]
    return viewmat


_LPIPS_WARNED = False


_LPIPS_BACKBONES = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}


def lpips_weights_cached(net_type: str = "alex") -> Optional[bool]:
    """Whether torchvision's ImageNet weights for LPIPS' backbone are in the torch hub cache (None: cannot tell)."""
    import os

    try:
        import torchvision.models as tvm

        url = getattr(tvm, _LPIPS_BACKBONES[net_type]).IMAGENET1K_V1.url
    except (ImportError, KeyError, AttributeError):
        return None
    return os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url)))


@contextmanager
def _lpips_optional() -> Iterator[None]:
    """Let splatfacto build LPIPS if its weights are available; otherwise leave ``self.lpips = None``."""
    import torchmetrics.image.lpip as lpip_module

    original = lpip_module.LearnedPerceptualImagePatchSimilarity

    def skip(reason: str) -> None:
        global _LPIPS_WARNED
        if not _LPIPS_WARNED:
            warnings.warn(f"LPIPS weights unavailable ({reason}); the LPIPS metric is skipped.")
            _LPIPS_WARNED = True

    def build(*args, **kwargs):
        net = kwargs.get("net_type", args[0] if args else "alex")
        cached = lpips_weights_cached(net)
        if cached is not None and not cached:  # no download attempt: it would hang or fail offline
            skip(f"{net} backbone not in the torch hub cache")
            return None
        try:
            return original(*args, **kwargs)
        except Exception as err:  # e.g. a corrupt cache file
            skip(type(err).__name__)
            return None

    lpip_module.LearnedPerceptualImagePatchSimilarity = build
    try:
        yield
    finally:
        lpip_module.LearnedPerceptualImagePatchSimilarity = original


@dataclass
class UnifiedLiftModelConfig(SplatfactoModelConfig):
    _target: Type = field(default_factory=lambda: UnifiedLiftModel)
    feature_dim: int = 16
    """Identity feature size d per Gaussian."""
    feature_init_range: float = 1.8
    """Identity features start uniform in [-r, r] (official code)."""
    codebook_size: int = 256
    """Object codebook entries L: the most instances a scene can hold."""
    codebook_init_range: float = 0.25
    unit_gaussian_features: bool = True
    """Render each Gaussian's identity as a unit vector (official: raw).  Raw features of
    Gaussians that are rarely or faintly seen grow unchecked (median norm 13 after 600
    demo steps while rendered features sit at 1), so a faint Gaussian can steer a pixel's
    direction and paint one-pixel fragments of unrelated ids along silhouettes."""
    feature_grad_to_geometry: bool = False
    """Official: feature losses do not move means, scales, rotations or opacities."""
    lift: LiftLossConfig = field(default_factory=LiftLossConfig)
    rasterizer_backend: str = "auto"
    """"auto" (gsplat on CUDA, torch on CPU), "gsplat" or "torch"."""
    label_rule: Literal["multiview", "feature"] = "multiview"
    """Per-Gaussian 3D labels (export, viewer only/remove): "multiview" back-projects the training
    views' rendered labels by compositing weight (unseen Gaussians get 0); "feature" is the argmax
    on each Gaussian's own feature."""


class UnifiedLiftModel(SplatfactoModel):
    config: UnifiedLiftModelConfig

    def populate_modules(self) -> None:
        # Override: splatfacto moves seeded SH colours with .cuda() and needs LPIPS weights from the internet.
        seed = self.seed_points
        seeded_colours = seed is not None and not self.config.random_init and seed[1].shape[0] > 0
        if seeded_colours:
            self.seed_points = (seed[0], seed[1][:0])  # parent then takes its device-free random-colour branch
        with _lpips_optional():
            super().populate_modules()
        self.seed_points = seed
        if seeded_colours:
            rgb = seed[1].float() / 255.0
            dc = RGB2SH(rgb) if self.config.sh_degree > 0 else torch.logit(rgb, eps=1e-10)
            self.gauss_params["features_dc"] = Parameter(dc)
        n, d, r = self.num_points, self.config.feature_dim, self.config.feature_init_range
        self.gauss_params["identity"] = Parameter((torch.rand(n, d) * 2.0 - 1.0) * r)
        cr = self.config.codebook_init_range
        self.codebook = Parameter((torch.rand(self.config.codebook_size, d) * 2.0 - 1.0) * cr)
        self.register_buffer("palette", instance_palette(self.config.codebook_size), persistent=False)
        # Off by default: a 16-channel output would show as a flickering PCA image in the viewer.
        self.eval_outputs_features = False
        self.selector = InstanceSelector(self)
        self.surplus_reported: set = set()  # views whose surplus masks were already reported on the console
        self.label_cameras: Optional[Callable[[], Cameras]] = None  # training cameras, set by the pipeline
        self.labels_cache_file = None  # where multi-view 3D labels are cached (beside the checkpoint), if known

    def get_gaussian_param_groups(self) -> Dict[str, List[Parameter]]:
        # Override: splatfacto hard-codes six names; identity features need their own optimiser group.
        groups = super().get_gaussian_param_groups()
        groups["identity"] = [self.gauss_params["identity"]]
        return groups

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        # Override: the codebook is not per-Gaussian, so it gets its own group outside gauss_params.
        groups = super().get_param_groups()
        groups["codebook"] = [self.codebook]
        return groups

    @property
    def identity(self) -> Tensor:
        return self.gauss_params["identity"]

    def _gaussian_rgb(self, params: Dict[str, Tensor], viewmat: Tensor) -> Tensor:
        """Per-Gaussian view-dependent RGB ``[N,3]`` evaluated before rasterizing, so one pass can carry the features too
        (gsplat's fused SH kernel on CUDA, torch elsewhere)."""
        if self.config.sh_degree == 0:
            return torch.sigmoid(params["features_dc"])
        degree = min(self.step // self.config.sh_degree_interval, self.config.sh_degree)
        coeffs = torch.cat([params["features_dc"][:, None, :], params["features_rest"]], dim=1)
        cam_pos = camera_centers(viewmat)[0]  # = c2w's translation; torch.linalg.inv would sync with the host
        return torch.clamp_min(spherical_harmonics(degree, params["means"] - cam_pos, coeffs) + 0.5, 0.0)

    def _output_keys_when_empty(self, width: int, height: int) -> Dict[str, Union[Tensor, List]]:
        out = self.get_empty_outputs(width, height, self.background_color.to(self.device))
        zeros = torch.zeros(height, width, 1, device=self.device)
        out.update(instance=torch.zeros(height, width, 3, device=self.device), instance_id=zeros, instance_confidence=zeros)
        out["selection"] = out["rgb"]
        return out

    def _rasterize(self, params: Dict[str, Tensor], viewmat: Tensor, K: Tensor, W: int, H: int, render_mode: str, with_features: bool = True):
        """One fused pass: SH-evaluated RGB (+ identity features) (+ depth)."""
        d = self.config.feature_dim
        colors = self._gaussian_rgb(params, viewmat)
        if with_features:
            colors = torch.cat([colors, self.rendered_identity(params["identity"])], dim=-1)
        return rasterization(
            means=params["means"],
            quats=params["quats"],
            scales=torch.exp(params["scales"]),
            opacities=torch.sigmoid(params["opacities"]).squeeze(-1),
            colors=colors,
            viewmats=viewmat,
            Ks=K,
            width=W,
            height=H,
            packed=False,
            near_plane=0.01,
            far_plane=1e10,
            render_mode=render_mode,
            absgrad=self.strategy.absgrad,
            rasterize_mode=self.config.rasterize_mode,
            backend=self.config.rasterizer_backend,
            no_geometry_grad_channels=None if (self.config.feature_grad_to_geometry or not with_features) else (3, 3 + d),
        )

    def get_outputs(self, camera: Cameras) -> Dict[str, Union[Tensor, List]]:
        # Override: splatfacto's version hard-codes .cuda() and gsplat; this renders RGB, identity
        # features and depth in one pass of our device-agnostic rasterizer.
        if not isinstance(camera, Cameras):
            return {}
        if self.training:
            assert camera.shape[0] == 1, "Only one camera at a time"
            c2w = self.camera_optimizer.apply_to_camera(camera)
        else:
            c2w = camera.camera_to_worlds

        crop_ids = None
        if self.crop_box is not None and not self.training:
            crop_ids = self.crop_box.within(self.means).squeeze()
            if crop_ids.sum() == 0:
                return self._output_keys_when_empty(int(camera.width.item()), int(camera.height.item()))
        params = {k: (v[crop_ids] if crop_ids is not None else v) for k, v in self.gauss_params.items()}

        scale = self._get_downscale_factor()
        camera.rescale_output_resolution(1 / scale)
        viewmat = viewmat_from_c2w(c2w)
        K = camera.get_intrinsics_matrices().to(self.device)
        W, H = int(camera.width.item()), int(camera.height.item())
        self.last_size = (H, W)
        camera.rescale_output_resolution(scale)

        render_mode = "RGB+ED" if (self.config.output_depth_during_training or not self.training) else "RGB"
        render, alpha, info = self._rasterize(params, viewmat, K, W, H, render_mode)
        if self.training:
            self.info = info
            self.strategy.step_pre_backward(self.gauss_params, self.optimizers, self.strategy_state, self.step, info)

        background = self._get_background_color()
        rgb = torch.clamp(render[..., :3] + (1 - alpha) * background, 0.0, 1.0)
        if self.config.use_bilateral_grid and self.training and camera.metadata and "cam_idx" in camera.metadata:
            rgb = self._apply_bilateral_grid(rgb, camera.metadata["cam_idx"], H, W)
        features = render[0, ..., 3 : 3 + self.config.feature_dim]
        accumulation = alpha[0]
        outputs: Dict[str, Union[Tensor, List]] = {"rgb": rgb[0], "accumulation": accumulation, "background": background}
        if render_mode == "RGB+ED":
            depth = render[0, ..., -1:]
            outputs["depth"] = torch.where(accumulation > 0, depth, depth.detach().max())
        if self.training or self.eval_outputs_features:
            outputs["features"] = features
        if not self.training:
            outputs.update(self.instance_outputs(features, accumulation))

            def render_subset(keep: Tensor) -> Tensor:
                subset = {k: v[keep] for k, v in params.items()}
                sub_render, sub_alpha, _ = self._rasterize(subset, viewmat, K, W, H, "RGB", with_features=False)
                return torch.clamp(sub_render[0] + (1 - sub_alpha[0]) * background, 0.0, 1.0)

            def subset_labels() -> Tensor:
                labels3d = self.gaussian_labels()[0]
                return labels3d[crop_ids] if crop_ids is not None else labels3d

            labels = outputs["instance_id"][..., 0].long()
            outputs["selection"] = self.selector.selection_image(outputs["rgb"], labels, subset_labels, render_subset)
            if background.shape[0] == 3:
                outputs["background"] = background.expand(H, W, 3)
        return outputs

    @torch.no_grad()
    def instance_outputs(self, features: Tensor, accumulation: Tensor) -> Dict[str, Tensor]:
        """Viewer-friendly float images: instance colours, label (1 + codebook index, 0 = empty) and confidence."""
        ids, prob = self.codebook_ids(features)
        present = accumulation[..., 0] >= OPACITY_THRESHOLD
        label = torch.where(present, ids + 1, torch.zeros_like(ids))
        colour = torch.where(present[..., None], self.palette[ids], torch.zeros_like(self.palette[ids]))
        return {
            "instance": colour,
            "instance_id": label[..., None].float(),
            "instance_confidence": torch.where(present, prob, torch.zeros_like(prob))[..., None],
        }

    def rendered_identity(self, identity: Tensor) -> Tensor:
        """The per-Gaussian feature that is composited (and read out for 3D labels)."""
        return torch.nn.functional.normalize(identity, dim=-1) if self.config.unit_gaussian_features else identity

    @torch.no_grad()
    def codebook_ids(self, features: Tensor) -> Tuple[Tensor, Tensor]:
        """Codebook index (0-based) and its probability for features ``[..., d]``, with the training logits."""
        return instance_ids(features, self.codebook, self.config.lift.logit_scale, self.config.lift.cosine_logits)

    @torch.no_grad()
    def gaussian_instance_ids(self, identity: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Per-Gaussian 3D labels ``1 + codebook index`` and the winning probability.

        ``identity`` defaults to every Gaussian's feature; pass a subset (e.g. after a crop)
        to label only those.  Uses the same logits as training, on the rendered identity.
        """
        ids, prob = self.codebook_ids(self.rendered_identity(self.identity if identity is None else identity))
        return ids + 1, prob

    def gaussian_labels(self, rule: Optional[str] = None, quiet: bool = False) -> Tuple[Tensor, Tensor]:
        """The 3D labels export and the viewer use: ``config.label_rule`` unless ``rule`` is given (see ulift_ns.labels3d)."""
        from ulift_ns.labels3d import gaussian_labels

        return gaussian_labels(self, rule or self.config.label_rule, quiet=quiet)

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        # Override: adds the lifting losses to splatfacto's photometric ones.
        loss_dict = super().get_loss_dict(outputs, batch, metrics_dict)
        if self.training and SAM_LABELS in batch and "features" in outputs:
            features = outputs["features"]
            labels = resize_labels(batch[SAM_LABELS], tuple(features.shape[:2]))
            loss_dict.update(self.lift_loss_dict(features, labels, batch, metrics_dict))
        return loss_dict

    def lift_loss_dict(self, features: Tensor, labels: Tensor, batch, metrics_dict=None) -> Dict[str, Tensor]:
        """The lifting losses of one view's features ``[H,W,d]`` and labels ``[H,W]``; stats go to ``metrics_dict``."""
        losses, stats = lift_losses(features, labels, self.codebook, self.config.lift)
        if stats.get("lift_unmatched_masks", 0) > 0:
            self._report_surplus(batch.get("image_idx"), stats)
        if metrics_dict is not None:  # the trainer logs this same dict after the loss step
            metrics_dict.update(stats)
        return losses

    def _report_surplus(self, view, stats: Dict[str, float]) -> None:
        """Once per view on the console (TensorBoard has every step as ``lift_unmatched_masks``)."""
        if view in self.surplus_reported:
            return
        self.surplus_reported.add(view)
        CONSOLE.print(
            f"[yellow]View {view}: {int(stats['lift_masks'])} masks but {self.config.codebook_size} codebook rows, so "
            f"{int(stats['lift_unmatched_masks'])} are left out of the codebook losses. Raise "
            "--pipeline.model.codebook-size."
        )

    def get_image_metrics_and_images(self, outputs, batch):
        # Override: splatfacto always calls self.lpips, which is None when its weights could not be loaded.
        if self.lpips is not None:
            metrics, images = super().get_image_metrics_and_images(outputs, batch)
        else:
            self.lpips = lambda *_: torch.tensor(float("nan"))
            try:
                metrics, images = super().get_image_metrics_and_images(outputs, batch)
            finally:
                self.lpips = None
            metrics.pop("lpips", None)
            metrics.pop("cc_lpips", None)
        if "instance" in outputs:
            images["instance"] = outputs["instance"]
        return metrics, images
