"""Reading and writing label maps and small files: atomic writes, no silent overwrites.

A label map is one integer id per pixel, 0 = unlabelled, stored as a single-channel
8- or 16-bit PNG.  Every writer here goes through a temporary file and a rename, so
an interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List

import numpy as np
from PIL import Image

_INTEGER_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L", "1")


class LabelFileError(ValueError):
    """A label-map file is missing or unusable; the message names the file and the fix."""


class OutputExistsError(FileExistsError):
    """Refusing to replace a file the user already has."""


def check_can_write(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass --overwrite to replace it, or choose another output folder.")


_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.tmp(?P<pid>\d+)(\.[^.]+)?$")
"""``atomic_path``'s temporary names: ``.<name>.tmp<pid><suffix>``."""


def temp_path(path: Path) -> Path:
    """The hidden sibling ``atomic_path`` writes first (named after this process)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temp_files(folder: Path) -> List[Path]:
    """Delete the temporary files that a killed writer left in ``folder``; returns them.

    Only ``atomic_path``'s own names are touched, and only when the process that was
    writing them is gone (a running writer's file is left alone).
    """
    removed = []
    if not Path(folder).is_dir():
        return removed
    for path in Path(folder).iterdir():
        match = _TEMP_NAME.match(path.name)
        if match and path.is_file() and not _process_alive(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; it replaces ``path`` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_label_png(path: Path, labels: np.ndarray) -> None:
    """Write an integer label map as a 16-bit greyscale PNG (PIL mode ``I;16``), atomically."""
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(f"label map for {path} must be 2-D, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise ValueError(f"label values for {path} must fit in uint16, got range [{arr.min()}, {arr.max()}]")
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(arr.astype(np.uint16))).save(tmp, format="PNG")


def read_label_map(path: Path) -> np.ndarray:
    """Read an integer label-map PNG as ``int64 [H, W]``, refusing colour or float images."""
    try:
        with Image.open(path) as img:
            mode = img.mode
            array = np.array(img)
    except (OSError, ValueError) as err:
        raise LabelFileError(f"Cannot read label map {path}: {err}. Re-create it as a single-channel PNG.") from err
    integer = np.issubdtype(array.dtype, np.integer) or array.dtype == bool
    if mode not in _INTEGER_MODES or array.ndim != 2 or not integer:
        raise LabelFileError(
            f"{path} is not an integer label map (PIL mode {mode!r}, shape {array.shape}). "
            "Save one id per pixel as a single-channel 8- or 16-bit PNG (0 = unlabelled)."
        )
    return array.astype(np.int64)


def write_json_atomic(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
