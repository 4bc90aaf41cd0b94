"""Temporal RUS: lagged samples from multimodal sequences, class balance, and ``estimate_temporal_rus``.

For a pair (i, j) and lag τ the samples are (x_{i,t−τ}, x_{j,t−τ}, y_t) treated as i.i.d. (the reference
code's choice; no conditioning on past labels). Sequence-level labels use t = the last step, so lag τ is
step T − 1 − τ; per-step labels use every t ≥ τ. Labels < 0 mark unlabelled steps and are dropped.
Estimation uses only the arrays it is given — pass the training split.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .batch import BatchConfig, all_reduce_sum, multiscale_batch, process_group, stepwise_batch
from .pid import PairwiseRus, quantized_pid
from .progress import PartialResults
from .sidecar import FORMAT_VERSION, RusSidecar, fingerprint_arrays

__all__ = ["ESTIMATORS", "LaggedSamples", "pool_to_grid", "lagged_samples", "balanced_subsample",
           "arrays_from_dataset", "estimate_temporal_rus"]

ESTIMATORS = ("multiscale_batch", "stepwise_batch", "quantized_exact")
_RESERVED_COLUMNS = ("label", "subject", "modality_mask")
BOUND_TOLERANCE_BITS = 0.1  # estimation noise allowed above H(Y) before an estimate is refused


def pool_to_grid(values: np.ndarray, patch_size: int, name: str = "modality") -> np.ndarray:
    """Mean-pool (N, T_m, C) over non-overlapping windows of ``patch_size`` steps → (N, T_m / patch_size, C)."""
    values = np.asarray(values)
    if values.ndim != 3:
        raise ValueError(f"{name}: expected (N, T, C) values, got shape {values.shape}")
    if patch_size < 1 or values.shape[1] % patch_size:
        raise ValueError(f"{name}: length {values.shape[1]} is not a multiple of its patch size {patch_size}")
    n, t_len, channels = values.shape
    return values.reshape(n, t_len // patch_size, patch_size, channels).mean(axis=2)


@dataclass
class LaggedSamples:
    """Per lag τ: ``features[τ]`` (N_τ, M, C_max) float32 z-scored (channels zero-padded, absent modalities 0)
    and ``labels[τ]`` (N_τ,) int64 contiguous class ids; ``classes[k]`` is the original label of id k."""

    features: list[np.ndarray]
    labels: list[np.ndarray]
    modality_names: list[str]
    channels: list[int]
    num_classes: int
    classes: list[int]


def _validated_arrays(modalities: Mapping[str, np.ndarray], labels: np.ndarray, num_lags: int,
                      modality_mask: np.ndarray | None) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    if len(modalities) < 2:
        raise ValueError(f"RUS needs at least two modalities, got {list(modalities)}")
    arrays = []
    for name, values in modalities.items():
        values = np.asarray(values, dtype=np.float32)
        if values.ndim != 3:
            raise ValueError(f"modality {name!r}: expected (N, T, C), got shape {values.shape}")
        if not np.all(np.isfinite(values)):
            raise ValueError(f"modality {name!r} holds NaN or inf values; impute them before estimating RUS")
        arrays.append(values)
    first_name, (n, t_len, _) = next(iter(modalities)), arrays[0].shape
    for name, values in zip(modalities, arrays):
        if values.shape[:2] != (n, t_len):
            raise ValueError(f"modality {name!r} has (N, T) = {values.shape[:2]} but {first_name!r} has "
                             f"{(n, t_len)}; pool faster modalities to the token grid first (pool_to_grid)")
    if n == 0:
        raise ValueError("no sequences given (N = 0)")
    labels = np.asarray(labels)
    if labels.shape not in ((n,), (n, t_len)) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers of shape (N,) = {(n,)} or (N, T) = {(n, t_len)}, "
                         f"got {labels.dtype} {labels.shape}")
    if not 1 <= num_lags <= t_len:
        raise ValueError(f"num_lags must be in [1, T = {t_len}], got {num_lags}")
    mask = np.ones((n, len(arrays)), dtype=bool) if modality_mask is None else np.asarray(modality_mask, bool)
    if mask.shape != (n, len(arrays)):
        raise ValueError(f"modality_mask must be (N, M) = {(n, len(arrays))}, got {mask.shape}")
    return arrays, labels.astype(np.int64), mask


def lagged_samples(modalities: Mapping[str, np.ndarray], labels: np.ndarray, num_lags: int,
                   modality_mask: np.ndarray | None = None, max_samples_per_lag: int | None = 20000,
                   seed: int = 0) -> LaggedSamples:
    """Build per-lag samples from modalities name → (N, T, C_m) (one token grid) and labels (N,) or (N, T).

    Each modality is z-scored per channel over the present sequences; absent modalities (``modality_mask``
    (N, M) False) become 0, the training mean. Lags with more than ``max_samples_per_lag`` samples are
    subsampled uniformly. Labels become contiguous ids 0..K-1 in sorted order of the original labels.
    """
    arrays, labels, mask = _validated_arrays(modalities, labels, num_lags, modality_mask)
    n, t_len = arrays[0].shape[:2]
    channels = max(values.shape[2] for values in arrays)
    stacked = np.zeros((n, t_len, len(arrays), channels), dtype=np.float32)
    for index, (name, values) in enumerate(zip(modalities, arrays)):
        present = values[mask[:, index]]
        if len(present) == 0:
            raise ValueError(f"modality {name!r} is absent from every sequence")
        mean, std = present.mean(axis=(0, 1)), present.std(axis=(0, 1))
        stacked[:, :, index, : values.shape[2]] = np.where(
            mask[:, index, None, None], (values - mean) / np.where(std > 0, std, 1.0), 0.0)
    present_labels = labels[labels >= 0]
    if present_labels.size == 0:
        raise ValueError("no labelled samples (all labels are negative / unlabelled)")
    classes = np.unique(present_labels)  # ids 0..K-1: the estimators' heads and priors span exactly K classes
    labels = np.where(labels >= 0, np.searchsorted(classes, labels), -1)
    rng = np.random.default_rng(seed)
    features, lag_labels = [], []
    for lag in range(num_lags):
        if labels.ndim == 1:
            x, y = stacked[:, t_len - 1 - lag], labels
        else:
            x = stacked[:, : t_len - lag].reshape(-1, len(arrays), channels)
            y = labels[:, lag:].reshape(-1)
        keep = np.flatnonzero(y >= 0)
        if max_samples_per_lag is not None and len(keep) > max_samples_per_lag:
            keep = np.sort(rng.choice(keep, max_samples_per_lag, replace=False))
        features.append(x[keep])
        lag_labels.append(y[keep])
    return LaggedSamples(features, lag_labels, list(modalities), [v.shape[2] for v in arrays], len(classes),
                         classes.tolist())


def balanced_subsample(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Indices that undersample every present class to the rarest class's count (sorted).

    Raises ValueError for an empty input or a single class.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if labels.size == 0:
        raise ValueError("cannot balance an empty set of samples")
    if len(classes) < 2:
        raise ValueError(f"RUS estimation needs at least two classes; the samples hold only class {classes[0]}")
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(labels == c), counts.min(), replace=False) for c in classes]
    return np.sort(np.concatenate(picks))


def _quantized_exact(samples: LaggedSamples, num_bins: int, store: PartialResults, seed: int,
                     progress: bool, rank: int, world: int) -> PairwiseRus:
    """Quantise each modality per lag (k-means / quantile bins) on a class-balanced subsample, then solve
    the exact PID per pair (the solver is per pair; resumable per (lag, pair); (lag, pair) units shared
    round-robin among the ``world`` processes and all-reduced)."""
    num_modalities = len(samples.modality_names)
    pairs = np.stack(np.triu_indices(num_modalities, 1))
    num_lags = len(samples.features)
    results = torch.zeros(5, num_lags, pairs.shape[1], dtype=torch.float64)  # R, U_i, U_j, S, clipped
    channels_of = samples.channels
    units = [(lag, index) for lag in range(num_lags) for index in range(pairs.shape[1])][rank::world]
    subsamples: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for lag, index in tqdm(units, desc="exact PID (lag, pair)", disable=not progress):
        i, j = pairs[:, index]
        key = f"quantized/lag{lag}/pair{i}-{j}"
        if key not in store:
            if lag not in subsamples:
                keep = balanced_subsample(samples.labels[lag], seed)
                subsamples[lag] = samples.features[lag][keep], samples.labels[lag][keep]
            x, y = subsamples[lag]
            pid = quantized_pid(x[:, i, : channels_of[i]], x[:, j, : channels_of[j]], y, num_bins, seed)
            store.put(key, torch.tensor([pid.redundancy, pid.unique_1, pid.unique_2, pid.synergy, pid.clipped],
                                        dtype=torch.float64))
        results[:, lag, index] = store[key]
    if world > 1:
        all_reduce_sum(results)
    return PairwiseRus(pairs, *results[:4].numpy(), clipped=float(results[4].sum()),
                       diagnostics={"num_bins": num_bins, "processes": world})


def _check_bounds(pairwise: PairwiseRus, samples: LaggedSamples) -> None:
    """Refuse an estimate with R + U_i + U_j + S > H(Y) + ``BOUND_TOLERANCE_BITS`` for any pair and lag (the
    terms are non-negative, so each is bounded too). H(Y) = log2 of the classes at that lag: every estimator
    balances the classes."""
    names = samples.modality_names
    for lag, labels in enumerate(samples.labels):
        entropy = float(np.log2(len(np.unique(labels))))
        terms = np.stack([pairwise.redundancy[lag], pairwise.unique_i[lag], pairwise.unique_j[lag],
                          pairwise.synergy[lag]])
        for index, (i, j) in enumerate(pairwise.pairs.T):
            redundancy, unique_i, unique_j, synergy = terms[:, index]
            total = terms[:, index].sum()
            if not total <= entropy + BOUND_TOLERANCE_BITS:  # also catches NaN
                raise ValueError(
                    f"RUS estimate out of bounds for the pair ({names[i]!r}, {names[j]!r}) at lag {lag}: R = "
                    f"{redundancy:.3f}, U_{names[i]} = {unique_i:.3f}, U_{names[j]} = {unique_j:.3f}, S = "
                    f"{synergy:.3f}, sum {total:.3f} bits, but H(Y) = {entropy:.3f} bits bounds the sum (tolerance "
                    f"{BOUND_TOLERANCE_BITS} bits). No sidecar was made: raise the estimator's steps or samples, or "
                    "use estimator='quantized_exact'.")


def estimate_temporal_rus(
    modalities: Mapping[str, np.ndarray],
    labels: np.ndarray,
    num_lags: int,
    estimator: str = "multiscale_batch",
    config: BatchConfig | None = None,
    modality_mask: np.ndarray | None = None,
    split: str = "train",
    lags_seconds: Sequence[float] | None = None,
    num_bins: int = 4,
    max_samples_per_lag: int | None = 20000,
    partial_path: str | None = None,
    output: str | os.PathLike | None = None,
    progress: bool = True,
    distributed: bool = False,
) -> RusSidecar:
    """Estimate temporal RUS of every modality pair on one split → :class:`RusSidecar` ([M, M, L] float32, bits).

    ``modalities``: name → (N, T, C_m) on one token grid (``pool_to_grid`` first); ``labels``: (N,) sequence
    labels (lags count back from the last step) or (N, T) per-step labels. ``estimator`` is one of
    ``ESTIMATORS``. ``partial_path`` makes the run resumable (a file of finished units); it is removed only once
    the sidecar is written to ``output`` (atomically), so a kill in between loses no work — without ``output``
    the caller saves the sidecar and removes it.
    ``distributed=True``: every process of a ``torch.distributed`` group calls this (``accelerate launch``; an
    uninitialised group is started from the launcher's environment) and the BATCH estimators share their units
    (pair blocks, ``BatchConfig.pair_block_size``; step-wise also lags) among the processes, every process
    returns the same sidecar (that of one process for the same seed), process 0 writes ``output``, and each
    process resumes from its own ``{partial_path}.rank{r}-of-{world}`` (resume with the same number of
    processes). The quantised estimator shares its (lag, pair) units the same way.
    Batches / subsamples are class-balanced; a single-class or empty input is an error, and so is an estimate
    whose terms sum to more than H(Y) at some pair and lag (the error names them).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")
    config = config or BatchConfig()
    if lags_seconds is not None and len(lags_seconds) != num_lags:
        raise ValueError(f"lags_seconds has {len(lags_seconds)} entries for num_lags={num_lags}")
    samples = lagged_samples(modalities, labels, num_lags, modality_mask, max_samples_per_lag, config.seed)
    for lag, lag_labels in enumerate(samples.labels):
        if len(np.unique(lag_labels)) < 2:
            raise ValueError(f"lag {lag}: RUS estimation needs at least two classes, got "
                             f"{np.unique(lag_labels).tolist()} in {len(lag_labels)} samples")
    fingerprint = fingerprint_arrays(dict(modalities), np.asarray(labels))
    settings = config.to_dict() if estimator != "quantized_exact" else {"num_bins": num_bins, "seed": config.seed}
    settings["max_samples_per_lag"] = max_samples_per_lag
    signature = json.dumps({"fingerprint": fingerprint, "estimator": estimator, "settings": settings,
                            "num_lags": num_lags}, sort_keys=True)
    rank, world = process_group(config.device) if distributed else (0, 1)
    if partial_path is not None and world > 1:
        partial_path = f"{partial_path}.rank{rank}-of-{world}"  # one resumable file per process
    store = PartialResults(partial_path, signature)
    if estimator == "quantized_exact":
        pairwise = _quantized_exact(samples, num_bins, store, config.seed, progress, rank, world)
    else:
        run = multiscale_batch if estimator == "multiscale_batch" else stepwise_batch
        pairwise = run(samples.features, samples.labels, samples.num_classes, config, store, progress, distributed)
    _check_bounds(pairwise, samples)
    redundancy, uniqueness, synergy = pairwise.to_matrices(len(samples.modality_names))
    metadata = {
        "modality_names": samples.modality_names,
        "lags_steps": list(range(num_lags)),
        "lags_seconds": list(map(float, lags_seconds)) if lags_seconds is not None else None,
        "units": "bits",
        "estimator": estimator,
        "estimator_settings": settings,
        "diagnostics": pairwise.diagnostics or {},
        "split": split,
        "class_balanced": True,
        "label_kind": "sequence" if np.asarray(labels).ndim == 1 else "step",
        "num_classes": samples.num_classes,
        "classes": samples.classes,
        "samples_per_lag": [int(len(y)) for y in samples.labels],
        "missing_modalities": "imputed with the training mean" if modality_mask is not None else "none",
        "clipped_negative_mass_bits": pairwise.clipped,
        "fingerprint": fingerprint,
        "format_version": FORMAT_VERSION,
    }
    sidecar = RusSidecar(torch.from_numpy(redundancy), torch.from_numpy(uniqueness), torch.from_numpy(synergy),
                         metadata)
    if output is not None:
        if rank == 0:
            sidecar.save(output)
        if world > 1:
            import torch.distributed as dist

            dist.barrier()  # the sidecar is on disk before any process drops its partial results
        store.remove_file()
    return sidecar


def arrays_from_dataset(split, modality_names: Sequence[str] | None = None,
                        patch_sizes: Mapping[str, int] | None = None
                        ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray | None]:
    """Turn a Hugging Face ``datasets.Dataset`` split into (modalities name → (N, T, C), labels, mask or None).

    Columns: one per modality (``Array2D``), ``label`` and optionally ``modality_mask`` (N, M). Without
    ``modality_names`` every ``Array2D`` column is a modality, in column order. Modalities listed in
    ``patch_sizes`` are mean-pooled onto the common token grid (:func:`pool_to_grid`).
    """
    import datasets

    if modality_names is None:
        modality_names = [name for name, feature in split.features.items()
                          if isinstance(feature, datasets.Array2D) and name not in _RESERVED_COLUMNS]
    missing = [name for name in [*modality_names, "label"] if name not in split.column_names]
    if missing:
        raise ValueError(f"dataset split lacks the columns {missing}; it has {split.column_names}")
    table = split.with_format("numpy")
    patch_sizes = patch_sizes or {}
    modalities = {name: pool_to_grid(np.asarray(table[name], dtype=np.float32), patch_sizes.get(name, 1), name)
                  for name in modality_names}
    labels = np.asarray(table["label"])
    mask = np.asarray(table["modality_mask"], dtype=bool) if "modality_mask" in split.column_names else None
    return modalities, labels, mask
