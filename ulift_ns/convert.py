"""Convert other scene layouts into nerfstudio's ``transforms.json`` layout.

LLFF (``ulift convert llff --data LLFF_DIR --output SCENE [--downscale N]``)
---------------------------------------------------------------------------
An LLFF capture is ``poses_bounds.npy`` plus an image folder (``images/`` at full
resolution, often also ``images_4/``, ``images_8/`` ... downscaled by 4, 8 ...).

``poses_bounds.npy`` is a float array ``[N, 17]``, one row per image *in sorted file-name
order*.  The first 15 numbers are a 3x5 matrix stored row-major::

    [ R | t | hwf ]      R: 3x3 camera-to-world rotation, t: camera centre, hwf = (H, W, focal)

and the last two are the near/far depth bounds.  ``H, W, focal`` are in pixels of the
images the poses were computed on (the full-resolution ``images/``).  The columns of ``R``
are the camera axes in LLFF's order ``[down, right, backwards]``.  nerfstudio (like
OpenGL / Blender) wants ``[right, up, backwards]``, so::

    c2w_opengl = [ R[:, 1], -R[:, 0], R[:, 2], t ]        (then the row [0, 0, 0, 1])

With ``--downscale N`` the images come from ``images_N/`` when it exists, otherwise from
the finest existing ``images_M/`` (or ``images/``, M = 1) with M dividing N, resized by
N / M here (box filter, size rounded to the nearest pixel).  Intrinsics follow the images
actually written: ``fl_x = focal * w / W``, ``fl_y = focal * h / H``, ``cx = w / 2``,
``cy = h / 2``, camera model ``PINHOLE`` (LLFF has no distortion).

Seed points.  LLFF has no sparse point cloud.  By default none is written (no
``ply_file_path``), so splatfacto / unified-lift starts from ``num_random`` random
Gaussians in a cube of side ``random_scale`` around the origin, which nerfstudio announces
with a warning.  For a forward-facing capture that cube puts many Gaussians right in
front of (or behind) the cameras, where each one is seen by a single view.  With
``--seed-points N`` the converter instead writes ``sparse_pc.ply``: N points, each on
the ray through a random pixel of a random view, at a depth drawn uniformly in
*disparity* between the file's near and far bounds (LLFF's own sampling), coloured by
that pixel.  Nothing is triangulated: this is still a random initialisation, only
placed inside the viewing frustums where the scene can be.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from ulift_ns.labelio import OutputExistsError, atomic_path, write_json_atomic

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


class LlffFormatError(ValueError):
    """An LLFF folder that cannot be converted; the message names the problem and the fix."""


def llff_to_opengl(poses_bounds: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[N,17]`` LLFF rows -> (``[N,4,4]`` OpenGL camera-to-world, ``[N,3]`` (H, W, focal), ``[N,2]`` bounds)."""
    arr = np.asarray(poses_bounds, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 17:
        raise LlffFormatError(f"poses_bounds.npy must have shape [N, 17], got {arr.shape}")
    mats = arr[:, :15].reshape(-1, 3, 5)
    rot, centre, hwf = mats[:, :, :3], mats[:, :, 3], mats[:, :, 4]
    c2w = np.zeros((arr.shape[0], 4, 4))
    c2w[:, :3, 0] = rot[:, :, 1]  # right
    c2w[:, :3, 1] = -rot[:, :, 0]  # up = -down
    c2w[:, :3, 2] = rot[:, :, 2]  # backwards
    c2w[:, :3, 3] = centre
    c2w[:, 3, 3] = 1.0
    return c2w, hwf, arr[:, 15:17]


def list_images(folder: Path) -> List[Path]:
    """Image files of ``folder``, sorted by name (the order of the rows of ``poses_bounds.npy``)."""
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS), key=lambda p: p.name)


def _image_folders(llff_dir: Path) -> Dict[int, Path]:
    """``{factor: folder}`` for ``images/`` (1) and every ``images_N/`` that holds images."""
    found: Dict[int, Path] = {}
    for folder in llff_dir.iterdir():
        if not folder.is_dir():
            continue
        if folder.name == "images":
            factor = 1
        elif folder.name.startswith("images_") and folder.name[7:].isdigit() and int(folder.name[7:]) > 0:
            factor = int(folder.name[7:])
        else:
            continue
        if list_images(folder):
            found[factor] = folder
    return found


def choose_image_folder(llff_dir: Path, downscale: Optional[int]) -> Tuple[Path, int]:
    """The folder to read and the extra factor to resize its images by."""
    folders = _image_folders(llff_dir)
    available = ", ".join(f"{folders[f].name}/" for f in sorted(folders)) or "none"
    want = downscale or 1
    if want < 1:
        raise LlffFormatError(f"--downscale must be a positive integer, got {downscale}")
    if want in folders:
        return folders[want], 1
    usable = [f for f in folders if want % f == 0]
    if not usable:
        hint = f" Pass --downscale N for one of them (N = {', '.join(str(f) for f in sorted(folders))})." if folders else ""
        raise LlffFormatError(
            f"{llff_dir} has no image folder usable for downscale {want}: found {available}.{hint} "
            "An LLFF scene keeps its images in images/ (full resolution) or images_N/ (downscaled by N)."
        )
    source = max(usable)  # the coarsest folder that is still at least as fine as wanted
    return folders[source], want // source


def _write_image(src: Path, dst_dir: Path, resize_by: int) -> Tuple[str, Tuple[int, int]]:
    """Copy (or box-downscale) one image into ``dst_dir``; returns its new file name and (w, h)."""
    if resize_by == 1:
        with Image.open(src) as img:
            size = img.size
        dst = dst_dir / src.name
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
        return dst.name, size
    with Image.open(src) as img:
        img.load()
        w, h = img.size
        size = (max(1, round(w / resize_by)), max(1, round(h / resize_by)))
        small = img.resize(size, Image.BOX)
    dst = dst_dir / f"{src.stem}.png"  # re-encoded losslessly, whatever the source format
    with atomic_path(dst) as tmp:
        small.save(tmp, format="PNG")
    return dst.name, size


def frustum_seed_points(
    c2w: np.ndarray,
    bounds: np.ndarray,
    intrinsics: Dict[str, float],
    images: List[np.ndarray],
    count: int,
    seed: int = 0,
) -> Tuple[np.ndarray, np.ndarray]:
    """``count`` random points inside the views' frustums between the near/far bounds, and their colours.

    Each point: a random view, a random pixel (centre), a depth uniform in disparity
    between that view's bounds; colour = that pixel.  Returns ``float32 [N,3]``, ``uint8 [N,3]``.
    """
    rng = np.random.default_rng(seed)
    n_views = len(c2w)
    view = rng.integers(0, n_views, count)
    h, w = images[0].shape[:2]
    col = rng.integers(0, w, count)
    row = rng.integers(0, h, count)
    near, far = bounds[view, 0], bounds[view, 1]
    disparity = rng.uniform(1.0 / far, 1.0 / near)
    depth = 1.0 / disparity
    # OpenGL camera: x right, y up, looking down -z; pixel centres at +0.5.
    x = (col + 0.5 - intrinsics["cx"]) / intrinsics["fl_x"]
    y = -(row + 0.5 - intrinsics["cy"]) / intrinsics["fl_y"]
    cam = np.stack([x * depth, y * depth, -depth], axis=1)
    rot, centre = c2w[view, :3, :3], c2w[view, :3, 3]
    xyz = np.einsum("nij,nj->ni", rot, cam) + centre
    rgb = np.stack([images[v][r, c, :3] for v, r, c in zip(view, row, col)]) if count else np.zeros((0, 3), np.uint8)
    return xyz.astype(np.float32), rgb.astype(np.uint8)


def write_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    """Binary PLY with ``x, y, z`` (float) and ``red, green, blue`` (uchar), as nerfstudio's parsers read it."""
    from plyfile import PlyData, PlyElement

    vertex = np.empty(len(xyz), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for i, k in enumerate("xyz"):
        vertex[k] = xyz[:, i]
    for i, k in enumerate(("red", "green", "blue")):
        vertex[k] = rgb[:, i]
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(vertex, "vertex")], text=False).write(str(tmp))


def convert_llff(
    llff_dir: Path,
    output: Path,
    downscale: Optional[int] = None,
    overwrite: bool = False,
    seed_points: int = 0,
) -> Path:
    """Write ``output/transforms.json`` and ``output/images/`` from an LLFF folder; returns ``output``.

    Refuses an existing ``output/transforms.json`` or ``output/images/`` unless ``overwrite``
    (which replaces exactly those two, and ``sparse_pc.ply``; other files in ``output`` are kept).
    ``seed_points > 0`` also writes ``sparse_pc.ply`` (see the module docs).
    """
    llff_dir, output = Path(llff_dir), Path(output)
    pb_path = llff_dir / "poses_bounds.npy"
    if not pb_path.is_file():
        raise LlffFormatError(f"{pb_path} does not exist: an LLFF scene has poses_bounds.npy next to its images/ folder.")
    c2w, hwf, bounds = llff_to_opengl(np.load(pb_path))
    folder, resize_by = choose_image_folder(llff_dir, downscale)
    images = list_images(folder)
    if len(images) != len(c2w):
        raise LlffFormatError(
            f"{pb_path} has {len(c2w)} poses but {folder} has {len(images)} images; LLFF matches them in sorted "
            "file-name order, so the counts must agree. Remove extra images or use the matching poses_bounds.npy."
        )
    if not np.allclose(hwf, hwf[:1], rtol=1e-6, atol=1e-6):
        raise LlffFormatError(f"{pb_path} has different (H, W, focal) per image; only one shared camera is supported.")
    H, W, focal = (float(v) for v in hwf[0])
    if min(H, W, focal) <= 0:
        raise LlffFormatError(f"{pb_path} has non-positive (H, W, focal) = ({H}, {W}, {focal}).")

    if output.exists() and not output.is_dir():
        raise OutputExistsError(f"{output} exists and is not a folder.")
    transforms, image_dir, ply = output / "transforms.json", output / "images", output / "sparse_pc.ply"
    if seed_points < 0:
        raise LlffFormatError(f"--seed-points must be >= 0, got {seed_points}")
    if seed_points and not (np.isfinite(bounds).all() and (bounds[:, 0] > 0).all() and (bounds[:, 1] > bounds[:, 0]).all()):
        raise LlffFormatError(f"{pb_path} has unusable near/far bounds, so --seed-points cannot place points; pass --seed-points 0.")
    if not overwrite:
        for path in (transforms, image_dir, ply):
            if path.exists():
                raise OutputExistsError(f"{path} already exists; pass --overwrite to replace it, or choose another --output.")
    if image_dir.exists():
        shutil.rmtree(image_dir)
    if ply.exists():
        ply.unlink()
    image_dir.mkdir(parents=True)

    frames, sizes = [], set()
    for src, pose, bound in zip(images, c2w, bounds):
        name, size = _write_image(src, image_dir, resize_by)
        sizes.add(size)
        frames.append({"file_path": f"images/{name}", "transform_matrix": pose.tolist(), "llff_bounds": bound.tolist()})
    if len(sizes) != 1:
        raise LlffFormatError(f"Images in {folder} have different sizes {sorted(sizes)}; LLFF expects one camera.")
    w, h = sizes.pop()
    if abs(w / h - W / H) > 0.02 * (W / H):
        raise LlffFormatError(
            f"Images in {folder} are {w}x{h} but poses_bounds.npy says {W:.0f}x{H:.0f}: the aspect ratios differ, "
            "so these are not the images the poses belong to."
        )
    meta = {
        "camera_model": "PINHOLE",
        "fl_x": focal * w / W,
        "fl_y": focal * h / H,
        "cx": w / 2.0,
        "cy": h / 2.0,
        "w": w,
        "h": h,
        "frames": frames,
        "ulift_source": {"format": "llff", "data": str(llff_dir), "image_folder": folder.name, "resized_by": resize_by},
    }
    if seed_points:
        pixels = []
        for frame in frames:
            with Image.open(output / frame["file_path"]) as img:
                pixels.append(np.asarray(img.convert("RGB")))
        xyz, rgb = frustum_seed_points(c2w, bounds, meta, pixels, seed_points)
        write_ply(ply, xyz, rgb)
        meta["ply_file_path"] = ply.name
    write_json_atomic(transforms, meta)
    return output
