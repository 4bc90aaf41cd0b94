"""Pictures of a RUS sidecar: temporal R/U/S curves per pair and a pair × lag heat map (PNG; matplotlib lazily).

The curves reuse :func:`modeling_merge.plotting.plot_temporal_rus` (the figure the training and evaluation
examples draw); the heat map shows every pair at once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .sidecar import RusSidecar

__all__ = ["plot_rus_curves", "plot_rus_heatmap"]


def plot_rus_curves(sidecar: RusSidecar, path: str | Path, top_pairs: int = 6) -> Path:
    """Redundancy and synergy vs lag of the ``top_pairs`` strongest pairs and per-modality uniqueness → PNG."""
    from modeling_merge.plotting import plot_temporal_rus

    return plot_temporal_rus(sidecar.redundancy.numpy(), sidecar.uniqueness.numpy(), sidecar.synergy.numpy(),
                             sidecar.modality_names, path, lags_seconds=sidecar.metadata.get("lags_seconds"),
                             top_pairs=top_pairs, title=f"Temporal RUS ({sidecar.metadata.get('estimator', 'unknown estimator')})")


def plot_rus_heatmap(sidecar: RusSidecar, path: str | Path) -> Path:
    """Three pair × lag heat maps (R, U_i + U_j, S in bits; one row per modality pair), each on its own colour
    scale with its own colour bar, so that small terms stay visible → PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from modeling_merge.plotting import _save, lag_axis

    names = sidecar.modality_names or [str(m) for m in range(sidecar.num_modalities)]
    first, second = np.triu_indices(sidecar.num_modalities, 1)
    uniqueness = sidecar.uniqueness.numpy()
    panels = {
        "redundancy": sidecar.redundancy.numpy()[first, second],
        "uniqueness (U_i + U_j)": uniqueness[first, second] + uniqueness[second, first],
        "synergy": sidecar.synergy.numpy()[first, second],
    }
    _, tick_labels, lag_label = lag_axis(sidecar.num_lags, sidecar.metadata.get("lags_seconds"))
    pair_labels = [f"{names[i]}–{names[j]}" for i, j in zip(first, second)]
    height = 1.9 + 0.22 * len(pair_labels)
    figure, axes = plt.subplots(1, 3, figsize=(6 + 0.6 * sidecar.num_lags * 3, height), constrained_layout=True,
                                sharey=True)
    for axis, (title, values) in zip(axes, panels.items()):
        image = axis.imshow(values, aspect="auto", cmap="viridis", vmin=0.0, vmax=float(values.max()) or 1.0,
                            interpolation="nearest")
        axis.set_title(f"{title}, max {float(values.max()):.3g} bits")
        axis.set_xticks(range(sidecar.num_lags), tick_labels)
        axis.set_xlabel(lag_label)
        figure.colorbar(image, ax=axis, label="bits (own scale)")
    axes[0].set_yticks(range(len(pair_labels)), pair_labels, fontsize="small")
    figure.suptitle(f"Temporal RUS per modality pair and lag ({sidecar.metadata.get('estimator', 'unknown estimator')})")
    return _save(figure, path)
