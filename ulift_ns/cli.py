"""``ulift``: the plugin's own commands (ns-* commands are a fixed set a plugin cannot extend)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional, Tuple, Union

import tyro


@dataclass
class Demo:
    """Generate the built-in demo scene (images, SAM-like masks, ground truth, seed points)."""

    output: Path = Path("demo_scene")
    """Scene folder to write."""
    seed: int = 0
    """Random seed of the scene layout and cameras."""
    num_views: int = 48
    """Number of camera views (nerfstudio holds out every 8th for eval)."""
    width: int = 160
    """Image width in pixels."""
    height: int = 120
    """Image height in pixels."""
    overwrite: bool = False
    """Replace an existing scene folder."""
    distortion: Optional[Tuple[float, float]] = None
    """OPENCV radial lens distortion (k1 k2) baked into images and masks, e.g. --distortion 0.2 0.05."""
    extra_objects: int = 0
    """Add this many more objects (random shapes and colours, some small)."""
    walls: bool = False
    """Surround the ground with textured walls (background)."""
    layout: Literal["transforms", "colmap"] = "transforms"
    """transforms.json + sparse_pc.ply, or a COLMAP text model in sparse/0."""

    def main(self) -> None:
        from ulift_ns.demo import generate_demo_scene

        path = generate_demo_scene(
            self.output, self.seed, self.num_views, self.width, self.height, overwrite=self.overwrite,
            distortion=self.distortion, extra_objects=self.extra_objects, walls=self.walls, layout=self.layout,
        )  # fmt: skip
        print(f"Demo scene ready at {path}. Train with: ns-train unified-lift --data {path}")


@dataclass
class RunDemo:
    """The main job: demo scene -> train unified-lift -> render labels -> segmentation metrics."""

    output: Path = Path("outputs/demo")
    """Folder for the scene, the run, the label maps and summary.json."""
    seed: int = 0
    """Random seed of the scene and of training."""
    steps: int = 2000
    """Training steps (the schedule is fitted to them)."""
    num_views: int = 48
    """Number of camera views of the demo scene."""
    width: int = 160
    """Image width in pixels."""
    height: int = 120
    """Image height in pixels."""
    device: Optional[Literal["cpu", "cuda"]] = None
    """Where to train (default: cuda when available)."""

    def main(self) -> None:
        from ulift_ns.job import report, run_demo_job

        report(run_demo_job(self.output, self.seed, self.steps, self.num_views, self.width, self.height, self.device))


@dataclass
class Render:
    """Write per-view label maps (uint16, 1 + codebook index, 0 = empty) and colour overlays."""

    load_config: Path
    """The run's config.yml (printed by ns-train at the end); any working directory works."""
    output_dir: Path
    """Folder for <image stem>.png label maps and overlay/<image stem>.png."""
    split: Literal["train", "test", "all"] = "all"
    """Which views to render: training, held-out, or both."""
    overwrite: bool = False
    """Replace label maps already in --output-dir."""

    def main(self) -> None:
        from ulift_ns.health import usable_model
        from ulift_ns.predict import check_output_folder, load_pipeline, write_predictions

        check_output_folder(self.output_dir, self.overwrite)  # before the loading, not after
        pipeline = load_pipeline(self.load_config)
        usable_model(pipeline.model, "ulift render")
        written = write_predictions(pipeline, self.split, self.output_dir, self.overwrite)
        print(f"Wrote {len(written)} label maps to {self.output_dir} (overlays in {self.output_dir / 'overlay'})")


@dataclass
class Eval:
    """Score label maps in --pred against SCENE/gt_masks: scene PQ, matched mIoU, consistency, COCO mAP."""

    data: Path
    """Scene folder holding gt_masks/<image stem>.png (ids consistent across views)."""
    pred: Path
    """Folder of predicted label maps, as `ulift render` writes them."""
    output_json: Optional[Path] = None
    """Where to write the metrics (default: PRED/metrics.json)."""
    load_config: Optional[Path] = None
    """A trained run: also score its per-Gaussian 3D labels (demo scenes: 3D PQ, label accuracy, object count, isolation IoU)."""
    label_rule: Optional[Literal["multiview", "feature"]] = None
    """3D label rule to score (default: the run's)."""

    def main(self) -> None:
        from ulift_ns.evaluate import evaluate_predictions, print_metrics

        out = self.output_json or self.pred / "metrics.json"
        print_metrics(evaluate_predictions(self.data, self.pred, out))
        print(f"Wrote {out}")
        if self.load_config is not None:
            from ulift_ns.eval3d import run_eval_3d

            from ulift_ns.errors import InvalidArgumentError

            try:
                run_eval_3d(self.load_config, self.data, out, self.label_rule)
            except ValueError as err:  # no 3D ground truth for this scene, or a run without training cameras
                raise InvalidArgumentError(str(err)) from None


@dataclass
class Export:
    """Export each 3D object as a standard 3DGS PLY, plus scene_instances.ply (with instance_id) and objects.json."""

    load_config: Path
    """The run's config.yml (printed by ns-train at the end); any working directory works, no images needed."""
    output_dir: Path
    """Folder for object_<id>.ply, scene_instances.ply and objects.json."""
    ids: Optional[str] = None
    """Object ids to export (1 + codebook index), e.g. 3,7. Default: every object."""
    selection: bool = False
    """Export what is selected in the viewer (saved on every click in the run's selection.json)."""
    overwrite: bool = False
    """Replace an earlier export in --output-dir (as a set)."""
    label_rule: Optional[Literal["multiview", "feature"]] = None
    """Per-Gaussian labels: multiview (training views' labels back-projected) or feature; default: the run's."""
    min_gaussians: int = 20
    """Objects with fewer Gaussians are not exported (their Gaussians get instance_id 0)."""
    min_share: float = 0.001
    """Objects with less than this share of the scene's opacity are not exported either."""

    def main(self) -> None:
        from ulift_ns.export import run_export

        summary = run_export(
            self.load_config, self.output_dir, self.ids, self.selection, self.overwrite,
            self.label_rule, self.min_gaussians, self.min_share,
        )  # fmt: skip
        print(
            f"Exported {len(summary['exported_ids'])} of {len(summary['objects'])} objects and "
            f"{summary['num_gaussians']} Gaussians to {self.output_dir}"
        )


@dataclass
class Masks:
    """Make per-view 2D instance masks SCENE/sam_masks/<stem>.png (SAM, or weight-free felzenszwalb / slic)."""

    data: Path
    """Scene folder (transforms.json, sparse/0 or colmap/sparse/0 layout)."""
    method: Literal["sam", "felzenszwalb", "slic"] = "sam"
    """Mask generator: SAM (needs --checkpoint) or the weight-free felzenszwalb / slic."""
    checkpoint: Optional[Path] = None
    """SAM checkpoint, e.g. sam_vit_h_4b8939.pth (https://dl.fbaipublicfiles.com/segment_anything/)."""
    model_type: Optional[Literal["vit_h", "vit_l", "vit_b"]] = None
    """SAM backbone; default: read from the checkpoint name, else vit_h."""
    points_per_side: int = 32
    """SAM: prompt grid is points_per_side^2 points."""
    pred_iou_thresh: float = 0.88
    """SAM: keep masks whose predicted IoU is at least this."""
    stability_score_thresh: float = 0.95
    """SAM: keep masks whose stability score is at least this."""
    device: Optional[str] = None
    """SAM: cuda or cpu (default: cuda when available)."""
    scale: float = 800.0
    """felzenszwalb: larger = fewer, larger segments (800 suits ~504x378 photos)."""
    sigma: Optional[float] = None
    """felzenszwalb / slic pre-smoothing (default 0.8 / 1.0)."""
    min_size: Optional[int] = None
    """felzenszwalb: smallest segment in pixels (default 0.3% of the image)."""
    n_segments: int = 16
    """slic: approximate number of segments."""
    compactness: float = 5.0
    """slic: colour vs. position trade-off (larger = more grid-like)."""
    overwrite: bool = False
    """Replace masks in sam_masks/ that this command did not write."""

    def main(self) -> None:
        from ulift_ns.masks import FelzenszwalbParams, MaskSettings, SamParams, SlicParams, make_masks

        settings = MaskSettings(
            method=self.method,
            felzenszwalb=FelzenszwalbParams(self.scale, 0.8 if self.sigma is None else self.sigma, self.min_size),
            slic=SlicParams(self.n_segments, self.compactness, 1.0 if self.sigma is None else self.sigma),
            sam=SamParams(
                checkpoint=self.checkpoint,
                model_type=self.model_type,
                points_per_side=self.points_per_side,
                pred_iou_thresh=self.pred_iou_thresh,
                stability_score_thresh=self.stability_score_thresh,
                device=self.device,
            ),
        )
        result = make_masks(self.data, settings, overwrite=self.overwrite)
        print(
            f"{len(result.generated)} mask(s) written, {len(result.skipped)} up to date, in {result.mask_dir} "
            f"(manifest {result.manifest.name}). Train with: ns-train unified-lift --data {self.data}"
        )


@dataclass
class ConvertLlff:
    """Convert an LLFF capture (poses_bounds.npy + images/ or images_N/) to transforms.json + images/."""

    data: Path
    """LLFF folder holding poses_bounds.npy."""
    output: Path
    """Scene folder to write (transforms.json, images/)."""
    downscale: Optional[int] = None
    """Use images_N/ (or resize the finest folder whose factor divides N); intrinsics follow."""
    seed_points: int = 0
    """Also write sparse_pc.ply: N random points inside the frustums between the near/far bounds (0 = none: random init)."""
    overwrite: bool = False
    """Replace transforms.json and images/ in --output."""

    def main(self) -> None:
        from ulift_ns.convert import convert_llff

        out = convert_llff(self.data, self.output, self.downscale, self.overwrite, self.seed_points)
        print(f"Wrote {out / 'transforms.json'}. Next: ulift masks --data {out} --method felzenszwalb (or SAM)")


@dataclass
class _NoFormat:
    """Placeholder: a one-member Union would collapse and `ulift convert llff` would lose its subcommand."""

    def main(self) -> None:
        raise SystemExit("Choose a format: ulift convert llff --help")


ConvertFormat = Union[
    Annotated[ConvertLlff, tyro.conf.subcommand("llff")],
    Annotated[_NoFormat, tyro.conf.subcommand("none"), tyro.conf.Suppress],
]


def convert(fmt: Annotated[ConvertFormat, tyro.conf.arg(name="")]):
    """Convert a scene to nerfstudio's transforms.json layout (formats: llff)."""
    return fmt


COMMANDS = {
    "demo": Demo,
    "run-demo": RunDemo,
    "render": Render,
    "eval": Eval,
    "export": Export,
    "masks": Masks,
    "convert": convert,
}


COMMAND_NAMES = {Demo: "demo", RunDemo: "run-demo", Render: "render", Eval: "eval", Export: "export", Masks: "masks",
                 ConvertLlff: "convert llff"}  # fmt: skip


def main(argv: Optional[list] = None) -> None:
    """Run a command; a user's mistake prints ``ulift <command>: <what and the fix>`` and exits 2, bugs keep tracebacks."""
    import sys

    from ulift_ns.errors import UserExit, quiet_known_warnings, user_errors

    command = tyro.extras.subcommand_cli_from_dict(COMMANDS, args=argv)
    name = COMMAND_NAMES.get(type(command), "")
    with quiet_known_warnings():
        try:
            command.main()
        except UserExit:
            raise
        except BaseException as err:
            if not isinstance(err, user_errors()):
                raise
            text = str(err).strip()
            message = text if text.startswith(("ulift ", "ns-train ")) else f"ulift {name}: {text}"
            print(message, file=sys.stderr)
            raise UserExit(message) from None


if __name__ == "__main__":
    main()
