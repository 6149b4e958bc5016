"""Keep nerfstudio 1.1.5 checkpoints loadable on torch >= 2.6.

nerfstudio's schedulers store learning rates as numpy float64, and torch >= 2.6 loads
checkpoints with ``weights_only=True``, which refuses numpy scalars: ns-viewer, ns-eval,
ns-export and ns-render all fail on a finished run.  Allow-listing exactly the numpy
scalar reconstructors (not arbitrary globals) restores them.
"""

from __future__ import annotations

import numpy as np
import torch


def allow_numpy_scalars_in_checkpoints() -> None:
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is None:  # torch < 2.4 loads everything anyway
        return
    import importlib

    try:
        scalar = importlib.import_module("numpy._core.multiarray").scalar  # numpy >= 2
    except ImportError:
        scalar = importlib.import_module("numpy.core.multiarray").scalar
    add([(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype])
    add([type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32)])
