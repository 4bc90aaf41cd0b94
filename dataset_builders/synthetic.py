"""The known-RUS temporal benchmark as a dataset: sequences whose modalities carry planted redundancy,
uniqueness and synergy about the label at known lags (`modeling_merge.rus.synthetic`).

No download: the data are generated from the config (seeded), in seconds. The planted structure travels
with the dataset in its metadata's `extras["planted_structure"]` (`planted_structure(dataset)` reads it back).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np

from ._common import (
    BuildPlan,
    DatasetMetadata,
    Example,
    MergeBuilderConfig,
    MergeTimeSeriesBuilder,
    metadata_of,
    stratified_record_splits,
)

@dataclass
class SyntheticConfig(MergeBuilderConfig):
    """Arguments of `make_temporal_rus_benchmark` (sequence labels) plus the split.

    num_sequences, seq_len (token steps, = window; the default 12 puts the planted lags 0–3 among 8 uninformative
    steps, which the default small model learns in a few CPU minutes), num_lags, seed, noise (Gaussian std around the class
    prototypes), symbol_noise (probability that a planted symbol is replaced at random), num_classes,
    channels (per modality), num_noise_modalities; train_fraction / validation_fraction: seeded stratified
    random split of the sequences (rest = test).
    """

    num_sequences: int = 2000
    seq_len: int = 12
    num_lags: int = 4
    seed: int = 0
    noise: float = 0.5
    symbol_noise: float = 0.1
    num_classes: int = 2
    channels: int = 3
    num_noise_modalities: int = 1
    train_fraction: float = 0.7
    validation_fraction: float = 0.15


class SyntheticRusBuilder(MergeTimeSeriesBuilder):
    """Known-RUS synthetic temporal benchmark (generated; no data_dir, no download URL)."""

    BUILDER_CONFIG_CLASS = SyntheticConfig
    BUILDER_CONFIGS = [SyntheticConfig(name="default")]
    REQUIRES_DATA_DIR = False

    def _plan(self) -> BuildPlan:
        from modeling_merge.rus.synthetic import make_temporal_rus_benchmark

        config: SyntheticConfig = self.config
        if config.window not in (None, config.seq_len) or config.stride not in (None, config.seq_len):
            raise ValueError(
                f"synthetic: each sequence is one example of seq_len={config.seq_len} steps; set seq_len "
                f"instead of window={config.window} / stride={config.stride}"
            )
        generator_arguments = dict(
            num_sequences=config.num_sequences,
            seq_len=config.seq_len,
            num_lags=config.num_lags,
            seed=config.seed,
            noise=config.noise,
            symbol_noise=config.symbol_noise,
            num_classes=config.num_classes,
            channels=config.channels,
            num_noise_modalities=config.num_noise_modalities,
        )
        benchmark = make_temporal_rus_benchmark(**generator_arguments)
        self._benchmark = benchmark
        ids = [f"seq{index:05d}" for index in range(config.num_sequences)]
        units = stratified_record_splits(
            ids, benchmark.labels.tolist(), (config.train_fraction, config.validation_fraction), config.seed
        )
        planted = _jsonable({**benchmark.planted, "generator_arguments": generator_arguments})
        modalities = {name: values.shape[-1] for name, values in benchmark.modalities.items()}
        metadata = DatasetMetadata(
            name="synthetic",
            modalities=modalities,
            sampling_rates_hz={name: 1.0 for name in modalities},
            token_grid_hz=1.0,
            window=config.seq_len,
            stride=config.seq_len,
            label_names=list(benchmark.label_names),
            protocol=(
                f"Known-RUS temporal benchmark: {config.num_sequences} generated sequences of {config.seq_len} "
                "steps (nominal 1 Hz), one sequence label each; lag τ is step seq_len − 1 − τ. Seeded stratified "
                f"random {config.train_fraction:g}/{config.validation_fraction:g}/rest split of sequences "
                f"(seed {config.seed}); per-channel mean/std from the training split "
                f"{'applied to every split' if config.normalize else 'not applied'}."
            ),
            extras={"planted_structure": planted},
        )
        return BuildPlan(metadata=metadata, units=units)

    def _unit_examples(self, unit: str) -> Iterator[Example]:
        index = int(unit.removeprefix("seq"))
        benchmark = self._benchmark
        yield Example(
            key=unit,
            modalities={name: values[index] for name, values in benchmark.modalities.items()},
            label=int(benchmark.labels[index]),
            subject=unit,
        )


def planted_structure(dataset: datasets.Dataset | datasets.DatasetDict | DatasetMetadata) -> dict[str, Any]:
    """The planted structure of a built synthetic dataset: `unique` (name → lag), `synergistic` /
    `redundant` ({"pair", "lag"}), `noise`, `information_bits`, `num_lags`, `generator_arguments` and
    `rus` with `redundancy` / `uniqueness` / `synergy` as float32 arrays [M, M, L] in modality order (bits)."""
    metadata = dataset if isinstance(dataset, DatasetMetadata) else metadata_of(dataset)
    if "planted_structure" not in metadata.extras:
        raise ValueError(f"dataset {metadata.name!r} carries no planted RUS structure (not a synthetic build)")
    planted = dict(metadata.extras["planted_structure"])
    planted["rus"] = {name: np.asarray(values, dtype=np.float32) for name, values in planted["rus"].items()}
    return planted


def _jsonable(value: Any) -> Any:
    """Arrays → nested lists, recursively through dicts and lists."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value
