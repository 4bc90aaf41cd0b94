"""Per-example summary features for the classical anchors of `benchmarks/quality.py` (not part of the package).

One row per example (a WESAD window, a PhysioNet stay, a synthetic sequence), computed from exactly the arrays a
neural run sees (the builder's splits, already normalised with the builder's statistics), at each modality's own
rate (no pooling to the token grid). For every modality and channel, over time:

    mean, std, min, max, first, last, slope

(slope: least-squares slope against time rescaled to [0, 1], i.e. the fitted change over the window). Where the
split has a ``modality_mask`` column (modalities that can be missing, e.g. PhysioNet), one 0 / 1 presence feature
per modality is appended. PhysioNet's observation-mask channels (``<variable>_observed``) are ordinary channels
here, so their ``mean`` is the observed fraction of the 48 h bins and their ``first`` / ``last`` tell whether the
variable was measured in the first / last bin.

    features, names = summary_features(split, modality_names)   # (N, F) float64, F names
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

STATISTICS = ("mean", "std", "min", "max", "first", "last", "slope")


def channel_summaries(values: np.ndarray) -> np.ndarray:
    """(N, T, C) → (N, C, len(STATISTICS)): the statistics of each example's channels over time."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 3:
        raise ValueError(f"expected (examples, time, channels), got shape {values.shape}")
    steps = values.shape[1]
    time = np.linspace(0.0, 1.0, steps) if steps > 1 else np.zeros(1)
    centred_time = time - time.mean()
    denominator = float((centred_time ** 2).sum()) or 1.0  # one step: slope 0
    slope = np.einsum("t,ntc->nc", centred_time, values - values.mean(axis=1, keepdims=True)) / denominator
    stacked = [values.mean(axis=1), values.std(axis=1), values.min(axis=1), values.max(axis=1),
               values[:, 0], values[:, -1], slope]
    return np.stack(stacked, axis=-1)


def summary_features(split, modality_names: Sequence[str], channel_names: dict[str, list[str]] | None = None
                     ) -> tuple[np.ndarray, list[str]]:
    """(N, F) features of a `datasets` split and their names ``<modality>.<channel>.<statistic>`` (plus
    ``<modality>.present`` when the split has a ``modality_mask``). ``channel_names`` (the metadata's) only
    names the columns; channels are numbered without it."""
    table = split.with_format("numpy")
    blocks, names = [], []
    for name in modality_names:
        summaries = channel_summaries(np.asarray(table[name], dtype=np.float64))
        blocks.append(summaries.reshape(len(summaries), -1))
        channels = (channel_names or {}).get(name) or [str(index) for index in range(summaries.shape[1])]
        names += [f"{name}.{channel}.{statistic}" for channel in channels for statistic in STATISTICS]
    if "modality_mask" in split.column_names:
        blocks.append(np.asarray(table["modality_mask"], dtype=np.float64))
        names += [f"{name}.present" for name in modality_names]
    features = np.concatenate(blocks, axis=1)
    if not np.isfinite(features).all():
        raise ValueError(f"{int((~np.isfinite(features)).sum())} summary features are NaN or infinite")
    return features, names
