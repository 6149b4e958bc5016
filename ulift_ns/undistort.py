"""Label maps and cameras through exactly the undistortion nerfstudio applies to the images.

``FullImageDatamanager`` undistorts and crops each image of a distorted camera
(OPENCV, FISHEYE, ...) with OpenCV and replaces the camera's intrinsics and size.
Label maps must land on the same pixels, but ids are names: they are sampled
nearest-neighbour, never interpolated.

Rather than re-derive nerfstudio's new intrinsics, crop and sampling, this runs
nerfstudio's own ``_undistort_image`` on an image of pixel *coordinates*.
Bilinear interpolation of a linear function is exact, so the warped image holds,
for every undistorted pixel, the (OpenCV-quantised) source position at which the
RGB image was sampled; a third channel of ones marks pixels sampled outside it.
Rounding that position gives the nearest source pixel.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np
import torch

from nerfstudio.cameras.cameras import Cameras


@dataclass(frozen=True)
class Undistortion:
    """Where each pixel of the undistorted, cropped image samples the original one."""

    K: np.ndarray
    """Intrinsics ``[3,3]`` of the undistorted image (nerfstudio's, +0.5 pixel-centre convention)."""
    source_rows: np.ndarray
    """int32 ``[h,w]``: nearest source row per undistorted pixel."""
    source_cols: np.ndarray
    """int32 ``[h,w]``: nearest source column."""
    inside: np.ndarray
    """bool ``[h,w]``: the sample lies inside the source image (else the pixel is unlabelled)."""

    @property
    def size(self) -> Tuple[int, int]:
        """``(height, width)`` of the undistorted image."""
        return tuple(self.source_rows.shape)  # type: ignore[return-value]


def is_distorted(camera: Cameras) -> bool:
    """nerfstudio's own test: it undistorts exactly the cameras with a non-zero distortion parameter."""
    return camera.distortion_params is not None and bool(torch.any(camera.distortion_params != 0))


def _key(camera: Cameras) -> tuple:
    values = [camera.fx, camera.fy, camera.cx, camera.cy, camera.width, camera.height, camera.camera_type]
    values.append(camera.distortion_params)
    key = tuple(float(x) for v in values for x in v.reshape(-1).tolist())
    if camera.metadata and "fisheye_crop_radius" in camera.metadata:
        key += (float(camera.metadata["fisheye_crop_radius"]),)
    return key


_CACHE: Dict[tuple, Undistortion] = {}
"""Most captures share one camera: compute its sampling once per process."""


def undistortion(camera: Cameras) -> Undistortion:
    """nerfstudio's undistortion of a single distorted camera (``is_distorted(camera)``), as a sampling map."""
    from nerfstudio.data.datamanagers.full_images_datamanager import _undistort_image

    camera = camera.reshape(())
    key = _key(camera)
    if key not in _CACHE:
        h, w = int(camera.height.item()), int(camera.width.item())
        rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
        coords = np.stack([cols, rows, np.ones_like(rows)], axis=-1)
        K = camera.get_intrinsics_matrices().numpy()
        K, warped, _ = _undistort_image(camera, camera.distortion_params.numpy(), {}, coords, K)
        inside = warped[..., 2] > 1.0 - 1e-3  # a blend with the zero border is not a sample of the image
        src_cols = np.clip(np.rint(warped[..., 0]), 0, w - 1).astype(np.int32)
        src_rows = np.clip(np.rint(warped[..., 1]), 0, h - 1).astype(np.int32)
        _CACHE[key] = Undistortion(np.asarray(K, dtype=np.float64), src_rows, src_cols, inside)
    return _CACHE[key]


def undistort_labels(labels: torch.Tensor, camera: Cameras) -> torch.Tensor:
    """A label map at the camera's (distorted) size, warped nearest-neighbour onto its undistorted image."""
    u = undistortion(camera)
    if tuple(labels.shape) != (int(camera.height.item()), int(camera.width.item())):
        raise ValueError(f"label map {tuple(labels.shape)} does not match its camera {int(camera.height)}x{int(camera.width)}")
    rows, cols = torch.from_numpy(u.source_rows).long(), torch.from_numpy(u.source_cols).long()
    out = labels[rows.to(labels.device), cols.to(labels.device)]
    return torch.where(torch.from_numpy(u.inside).to(labels.device), out, torch.zeros_like(out))


def training_cameras(cameras: Cameras) -> Cameras:
    """The cameras the model trains with: nerfstudio's undistorted intrinsics and size, no distortion left.

    Computed from the source cameras without reading any image, so ``ulift render`` and
    ``ulift eval`` use the same cameras as training without loading the dataset.
    """
    out = copy.deepcopy(cameras)
    for i in range(out.shape[0]):
        camera = cameras[i]
        if not is_distorted(camera):
            continue
        u = undistortion(camera)
        out.fx[i], out.fy[i] = float(u.K[0, 0]), float(u.K[1, 1])
        out.cx[i], out.cy[i] = float(u.K[0, 2]), float(u.K[1, 2])
        out.height[i], out.width[i] = u.size
        out.distortion_params[i] = 0.0
    return out
