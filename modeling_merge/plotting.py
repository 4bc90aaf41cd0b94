"""Figures for interpreting MERGE: routing distribution per modality × expert per MoE layer (paper Fig. 8),
temporal RUS curves per modality pair (paper Fig. 5) and auxiliary-loss ablations (paper Fig. 7). PNG files;
matplotlib is imported lazily."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .files import atomic_write


def routing_shares(
    selected_experts: Sequence[np.ndarray], num_experts: int, modality_mask: np.ndarray | None = None
) -> np.ndarray:
    """Share of each modality's top-k slots given to each expert, per MoE layer.

    ``selected_experts``: one int array per MoE layer, (B, M, T, k) expert ids. ``modality_mask``: (B, M)
    bool, absent modalities are not counted. Returns (layers, M, E) floats; each row sums to 1 (or is all 0
    for a modality that is never present).
    """
    shares = []
    for layer, experts in enumerate(selected_experts):
        experts = np.asarray(experts)
        if experts.ndim != 4:
            raise ValueError(f"MoE layer {layer}: selected experts have shape {experts.shape}, expected (B, M, T, k)")
        if experts.size and (experts.min() < 0 or experts.max() >= num_experts):
            raise ValueError(f"MoE layer {layer}: expert ids outside [0, {num_experts})")
        weight = np.ones(experts.shape[:2]) if modality_mask is None else np.asarray(modality_mask, dtype=float)
        counts = np.zeros((experts.shape[1], num_experts))
        for modality in range(experts.shape[1]):
            slot_weights = np.broadcast_to(weight[:, modality, None, None], experts[:, modality].shape)
            counts[modality] = np.bincount(experts[:, modality].ravel(), weights=slot_weights.ravel(), minlength=num_experts)
        totals = counts.sum(axis=1, keepdims=True)
        shares.append(np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0))
    return np.stack(shares)


def plot_routing_distribution(
    shares: np.ndarray,
    modality_names: Sequence[str],
    path: str | Path,
    expert_names: Sequence[str] | None = None,
    num_synergy_experts: int = 0,
    title: str | None = None,
    alignment_text: str | None = None,
) -> Path:
    """Heat maps of ``shares`` (layers, M, E) from :func:`routing_shares`, one panel per MoE layer, each cell
    labelled with its share, saved as PNG. The first ``num_synergy_experts`` experts are named "syn i" (the
    cross-modal attention experts), the rest "ffn j"; ``alignment_text`` (e.g. :func:`~modeling_merge.training.
    routing_summary` of the routing-alignment metrics) goes under the ``title``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_layers, num_modalities, num_experts = shares.shape
    if len(modality_names) != num_modalities:
        raise ValueError(f"{len(modality_names)} modality names for {num_modalities} rows of routing shares")
    expert_names = list(expert_names or [f"syn {e}" if e < num_synergy_experts else f"ffn {e - num_synergy_experts}"
                                         for e in range(num_experts)])
    figure, axes = plt.subplots(1, num_layers, figsize=(2.0 + 0.6 * num_experts * num_layers, 0.5 * num_modalities + 2.2),
                                squeeze=False, constrained_layout=True)
    for layer, axis in enumerate(axes[0]):
        image = axis.imshow(shares[layer], vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        axis.set_title(f"MoE layer {layer}")
        axis.set_xticks(range(num_experts), expert_names, rotation=90)
        axis.set_yticks(range(num_modalities), modality_names if layer == 0 else [""] * num_modalities)
        axis.set_xlabel("expert")
        if num_synergy_experts:
            axis.axvline(num_synergy_experts - 0.5, color="white", linewidth=2)
        if num_modalities * num_experts <= 400:
            for (row, column), value in np.ndenumerate(shares[layer]):
                axis.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                          color="black" if value > 0.6 else "white")
    figure.colorbar(image, ax=axes[0].tolist(), label="share of the modality's routing slots")
    lines = [title or "Routing: share of each modality's top-k slots per expert"]
    if alignment_text:
        lines.append(alignment_text)
    figure.suptitle("\n".join(textwrap.fill(line, 110) for line in lines), fontsize=9)
    return _save(figure, path)


def lag_axis(num_lags: int, lags_seconds: Sequence[float] | None = None) -> tuple[np.ndarray, list[str], str]:
    """(positions, tick labels, axis label) of a lag axis with one tick per lag τ = 0 … num_lags − 1: the lag in
    seconds where ``lags_seconds`` gives it ("lag τ (s)"), else in token-grid steps ("lag τ (steps)")."""
    if lags_seconds is None:
        return np.arange(num_lags, dtype=float), [str(lag) for lag in range(num_lags)], "lag τ (steps)"
    if len(lags_seconds) != num_lags:
        raise ValueError(f"{len(lags_seconds)} lag times for {num_lags} lags")
    positions = np.asarray(lags_seconds, dtype=float)
    return positions, [f"{lag:g}" for lag in positions], "lag τ (s)"


def plot_temporal_rus(
    redundancy: np.ndarray,
    uniqueness: np.ndarray,
    synergy: np.ndarray,
    modality_names: Sequence[str],
    path: str | Path,
    lags_seconds: Sequence[float] | None = None,
    top_pairs: int = 6,
    title: str | None = None,
) -> Path:
    """Temporal RUS curves (bits vs lag) saved as PNG: redundancy and synergy of the ``top_pairs`` pairs with the
    largest peak, and per-modality uniqueness U_m(τ) = max over pairs containing m (the reference rule).
    Inputs are [M, M, L] arrays in ``modality_names`` order; the lag axis is in seconds when ``lags_seconds``
    (L values) is given, else in steps (:func:`lag_axis`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_modalities, _, num_lags = np.shape(redundancy)
    if len(modality_names) != num_modalities:
        raise ValueError(f"{len(modality_names)} modality names for RUS tensors over {num_modalities} modalities")
    lags, tick_labels, lag_label = lag_axis(num_lags, lags_seconds)
    pairs = [(i, j) for i in range(num_modalities) for j in range(i + 1, num_modalities)]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.3), constrained_layout=True)
    for axis, values, name in ((axes[0], redundancy, "redundancy R"), (axes[1], synergy, "synergy S")):
        ranked = sorted(pairs, key=lambda pair: -float(np.max(values[pair[0], pair[1]])))[:top_pairs]
        for i, j in ranked:
            axis.plot(lags, values[i, j], marker="o", label=f"{modality_names[i]}–{modality_names[j]}")
        axis.set_title(f"{name} (top {len(ranked)} pairs by peak)")
    per_modality_uniqueness = np.max(np.asarray(uniqueness), axis=1)
    for m, name in enumerate(modality_names):
        axes[2].plot(lags, per_modality_uniqueness[m], marker="o", label=name)
    axes[2].set_title("uniqueness U_m (max over pairs with m)")
    for axis in axes:
        axis.set_xticks(lags, tick_labels)
        axis.set_xlabel(lag_label)
        axis.set_ylabel("bits")
        axis.legend(fontsize="small")
    figure.suptitle(title or "Temporal RUS: information about the label shared (R), unique (U) and synergistic (S) per lag")
    return _save(figure, path)


def plot_ablation(test_metrics: dict[str, dict[str, float]], path: str | Path, title: str | None = None) -> Path:
    """Grouped bars of test metrics (in [0, 1]) per run, each labelled with its value, e.g. MERGE with each
    auxiliary loss disabled (paper Fig. 7). ``test_metrics``: run label → metric name → value. Saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not test_metrics:
        raise ValueError("plot_ablation needs at least one run")
    labels = list(test_metrics)
    metric_names = sorted({name for metrics in test_metrics.values() for name in metrics})
    width = 0.8 / len(labels)
    figure, axis = plt.subplots(figsize=(2.5 + 1.2 * len(metric_names) * max(1, len(labels) / 2), 4.5),
                                constrained_layout=True)
    for index, label in enumerate(labels):
        values = [test_metrics[label].get(name, np.nan) for name in metric_names]
        bars = axis.bar(np.arange(len(metric_names)) + index * width, values, width, label=label)
        axis.bar_label(bars, labels=["" if np.isnan(value) else f"{value:.3f}" for value in values], fontsize=7,
                       rotation=90 if len(labels) > 3 else 0, padding=2)
    axis.set_xticks(np.arange(len(metric_names)) + 0.4 - width / 2, metric_names)
    axis.set_ylim(0, 1.15)
    axis.set_ylabel("test score")
    axis.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), title="run")
    axis.set_title(title or f"Test metrics of {len(labels)} run(s) (router − auxiliary losses disabled)")
    return _save(figure, path)


def _save(figure, path: str | Path) -> Path:
    """Save ``figure`` as PNG atomically (:func:`modeling_merge.files.atomic_write`), then close it."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda temporary: figure.savefig(temporary, dpi=120, format="png"))
    finally:
        plt.close(figure)
