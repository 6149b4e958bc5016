"""Label read-outs for the baselines: HDBSCAN over rendered features (Contrastive Lift / SAGA style).

Pure numpy + scikit-learn.  Clusters are found once over pixels pooled from every view,
so a cluster id means the same object in all views, as the codebook's ids do.
"""

from __future__ import annotations

from typing import List, Sequence

import numpy as np


def hdbscan_labels(
    features: Sequence[np.ndarray],
    present: Sequence[np.ndarray],
    min_cluster_fraction: float = 0.005,
    max_fit_pixels: int = 20000,
    seed: int = 0,
) -> List[np.ndarray]:
    """Per-view label maps (0 = empty, clusters 1..K) from features ``[H,W,d]`` and presence masks ``[H,W]``.

    HDBSCAN has no out-of-sample prediction, so it is fitted on a pooled random sample of
    normalised features; every pixel then takes the cluster whose mean direction is
    closest (cosine).  Noise points are left out of the means, not out of the labels.
    """
    from sklearn.cluster import HDBSCAN

    rng = np.random.default_rng(seed)
    unit = [f / np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), 1e-8) for f in features]
    pooled = np.concatenate([u[m] for u, m in zip(unit, present)], 0)
    if len(pooled) == 0:
        return [np.zeros(m.shape, dtype=np.int64) for m in present]
    fit = pooled[rng.choice(len(pooled), size=min(max_fit_pixels, len(pooled)), replace=False)]
    clusterer = HDBSCAN(min_cluster_size=max(5, int(min_cluster_fraction * len(fit))), copy=True)
    assignment = clusterer.fit_predict(fit)
    clusters = [c for c in np.unique(assignment) if c >= 0]
    if not clusters:
        return [np.where(m, 1, 0).astype(np.int64) for m in present]
    centres = np.stack([fit[assignment == c].mean(0) for c in clusters])
    centres /= np.maximum(np.linalg.norm(centres, axis=-1, keepdims=True), 1e-8)
    return [np.where(m, np.argmax(u @ centres.T, axis=-1) + 1, 0).astype(np.int64) for u, m in zip(unit, present)]
