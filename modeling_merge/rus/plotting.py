"""Pictures of a RUS sidecar: temporal R/U/S curves per pair and a pair × lag heat map (PNG; matplotlib lazily).

The curves reuse :func:`modeling_merge.plotting.plot_temporal_rus` (the figure the training and evaluation
examples draw); the heat map shows every pair at once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .sidecar import RusSidecar

__all__ = ["plot_rus_curves", "plot_rus_heatmap"]


def _lags_and_label(sidecar: RusSidecar) -> tuple[np.ndarray | None, str]:
    seconds = sidecar.metadata.get("lags_seconds")
    return (np.asarray(seconds), "lag (s)") if seconds is not None else (None, "lag (steps)")


def plot_rus_curves(sidecar: RusSidecar, path: str | Path, top_pairs: int = 6) -> Path:
    """Redundancy and synergy vs lag of the ``top_pairs`` strongest pairs and per-modality uniqueness → PNG."""
    from modeling_merge.plotting import plot_temporal_rus

    lags_seconds, _ = _lags_and_label(sidecar)
    return plot_temporal_rus(sidecar.redundancy.numpy(), sidecar.uniqueness.numpy(), sidecar.synergy.numpy(),
                             sidecar.modality_names, path, lags_seconds=lags_seconds, top_pairs=top_pairs)


def plot_rus_heatmap(sidecar: RusSidecar, path: str | Path) -> Path:
    """Three pair × lag heat maps (R, U_i + U_j, S in bits; one row per modality pair) → PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from modeling_merge.plotting import _save

    names = sidecar.modality_names or [str(m) for m in range(sidecar.num_modalities)]
    first, second = np.triu_indices(sidecar.num_modalities, 1)
    uniqueness = sidecar.uniqueness.numpy()
    panels = {
        "redundancy": sidecar.redundancy.numpy()[first, second],
        "uniqueness (U_i + U_j)": uniqueness[first, second] + uniqueness[second, first],
        "synergy": sidecar.synergy.numpy()[first, second],
    }
    lags, lag_label = _lags_and_label(sidecar)
    tick_labels = [f"{v:g}" for v in (lags if lags is not None else range(sidecar.num_lags))]
    pair_labels = [f"{names[i]}–{names[j]}" for i, j in zip(first, second)]
    height = 1.5 + 0.22 * len(pair_labels)
    figure, axes = plt.subplots(1, 3, figsize=(4 + 0.6 * sidecar.num_lags * 3, height), constrained_layout=True,
                                sharey=True)
    vmax = max(float(values.max()) for values in panels.values()) or 1.0
    for axis, (title, values) in zip(axes, panels.items()):
        image = axis.imshow(values, aspect="auto", cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest")
        axis.set_title(title)
        axis.set_xticks(range(sidecar.num_lags), tick_labels)
        axis.set_xlabel(lag_label)
    axes[0].set_yticks(range(len(pair_labels)), pair_labels, fontsize="small")
    figure.colorbar(image, ax=list(axes), label="bits")
    return _save(figure, path)
