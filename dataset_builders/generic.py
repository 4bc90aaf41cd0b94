"""A user's own multimodal time series, in the same shape as the benchmark builders.

Two inputs:
- files (CSV or parquet; `files=[...]` or every `*.csv` / `*.parquet` under data_dir): one row per time
  step at `sampling_rate_hz`, `modality_columns` mapping each modality to its columns, a `label_column`
  and optionally a `subject_column` (else the file name is the subject). Each subject's rows in a file
  form one recording, cut into windows labelled by their majority label. A file without any column of a
  modality has that modality absent (masked); one with only some of them is an error. A window (or array
  example) with every modality absent carries no input: it is skipped and listed in the metadata's `skipped`.
- arrays (`arrays={modality: (N, T_m, C_m)}`, `labels` (N,), optional `subjects` (N,) and
  `modality_mask` (N, M)): examples that are already windows. A modality with k× more rows than the
  shortest gets patch size k.
Splits are by subject: `*_subjects` if given, else a seeded 70 / 15 / 15 draw of the subjects.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ._common import (
    SPLITS,
    BuildPlan,
    DatasetMetadata,
    Example,
    MergeBuilderConfig,
    MergeTimeSeriesBuilder,
    decode_text,
    describe_splits,
    fill_nan_linear,
    resolve_subject_splits,
)


@dataclass
class GenericConfig(MergeBuilderConfig):
    """See the module docstring. window / stride count rows at `sampling_rate_hz` (files; default 100 / 50)."""

    files: list[str] | None = None
    modality_columns: dict[str, list[str]] | None = None
    label_column: str = "label"
    subject_column: str | None = None
    sampling_rate_hz: float = 1.0
    label_names: list[str] | None = None
    ignored_labels: list[str] | None = None
    arrays: dict[str, Any] | None = None
    labels: Any = None
    subjects: Any = None
    modality_mask: Any = None
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    dataset_name: str = "generic"


class Recording(NamedTuple):
    """One subject's rows in one file (a build unit); named "<file stem>/<subject>" in the metadata."""

    path: Path
    subject: str

    def __str__(self) -> str:
        return f"{self.path.stem}/{self.subject}"


def _read_table(path: Path):
    """A CSV (UTF-8, or UTF-16 with a byte-order mark) or parquet file as a DataFrame; an empty one is an error."""
    import io

    import pandas as pd

    if path.suffix not in (".csv", ".parquet"):
        raise ValueError(f"generic: {path} is neither .csv nor .parquet")
    try:
        if path.suffix == ".parquet":
            table = pd.read_parquet(path)
        else:
            table = pd.read_csv(io.StringIO(decode_text(path.read_bytes(), f"generic: {path}")))
    except pd.errors.EmptyDataError:
        table = None
    if table is None or table.empty:
        raise ValueError(f"generic: {path} is empty (no rows); fill it, or leave it out of files=[...] / data_dir")
    return table


class GenericBuilder(MergeTimeSeriesBuilder):
    """Generic MERGE dataset from CSV / parquet recordings or from arrays of windows (see the module docstring)."""

    BUILDER_CONFIG_CLASS = GenericConfig
    REQUIRES_DATA_DIR = False  # arrays, or files=[...] without a data_dir

    # --------------------------------------------------------------------------------------- shared

    def _split_subjects(self, subjects: list[str]) -> dict[str, list[str]]:
        overrides = self.config.split_overrides()
        if all(value is None for value in overrides.values()):
            fractions = np.asarray(self.config.split_fractions, dtype=np.float64)
            if fractions.shape != (3,) or (fractions <= 0).any():
                raise ValueError(f"generic: split_fractions must be three positive numbers, got {self.config.split_fractions}")
            if len(subjects) < 3:
                raise ValueError(
                    f"generic: {len(subjects)} subject(s) {subjects} cannot fill train / validation / test; give "
                    "a subject_column (or subjects) with at least three subjects, or *_subjects"
                )
            order = [subjects[index] for index in np.random.default_rng(self.config.seed).permutation(len(subjects))]
            counts = np.maximum(1, np.round(fractions / fractions.sum() * len(subjects)).astype(int))
            counts[0] = len(subjects) - counts[1] - counts[2]
            bounds = np.cumsum(counts)
            defaults = {split: sorted(order[start:end]) for split, start, end in zip(SPLITS, [0, *bounds[:2]], bounds)}
        else:
            defaults = {split: [] for split in SPLITS}
        return resolve_subject_splits(self.config.dataset_name, subjects, defaults, overrides)

    def _label_names(self, observed: list[str]) -> list[str]:
        ignored = set(self.config.ignored_labels or [])
        if self.config.label_names is None:
            return sorted(set(observed) - ignored)
        unknown = sorted(set(observed) - set(self.config.label_names) - ignored)
        if unknown:
            raise ValueError(f"generic: label value(s) {unknown} are not in label_names {self.config.label_names}")
        return [str(name) for name in self.config.label_names]

    def _plan(self) -> BuildPlan:
        if (self.config.arrays is None) == (self.config.files is None and self.config.data_dir is None):
            raise ValueError("generic: give either arrays=... (with labels) or files=[...] / data_dir with CSV or parquet files")
        return self._plan_arrays() if self.config.arrays is not None else self._plan_files()

    def _unit_examples(self, unit: Hashable) -> Iterator[Example]:
        return self._array_examples(unit) if self.config.arrays is not None else self._file_examples(unit)

    # --------------------------------------------------------------------------------------- files

    def _file_paths(self) -> list[Path]:
        if self.config.files is not None:
            paths = [Path(file).expanduser() for file in self.config.files]
        else:
            paths = sorted(path for pattern in ("*.csv", "*.parquet") for path in self.data_path.glob(pattern))
        if not paths:
            raise FileNotFoundError(f"generic: no .csv or .parquet file under {self.config.data_dir}")
        missing = [str(path) for path in paths if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"generic: file(s) {missing} do not exist")
        return paths

    def _plan_files(self) -> BuildPlan:
        config = self.config
        if not config.modality_columns:
            raise ValueError("generic: modality_columns={modality: [column, ...]} is required with files")
        recordings: dict[str, list[Recording]] = {}
        observed_labels: set[str] = set()
        absent_anywhere = False
        for path in self._file_paths():
            table = _read_table(path)
            required = [config.label_column] + ([config.subject_column] if config.subject_column else [])
            for column in required:
                if column not in table.columns:
                    raise ValueError(f"generic: {path} has no column {column!r} (columns: {list(table.columns)})")
            for modality, columns in config.modality_columns.items():
                present = [column for column in columns if column in table.columns]
                if present and len(present) != len(columns):
                    missing = sorted(set(columns) - set(present))
                    raise ValueError(f"generic: {path} lacks column(s) {missing} of modality {modality!r}")
                absent_anywhere |= not present
            if table[config.label_column].isna().any():
                row = int(np.flatnonzero(table[config.label_column].isna().to_numpy())[0])
                raise ValueError(f"generic: {path} row {row + 1} has no {config.label_column!r} value")
            observed_labels |= set(table[config.label_column].astype(str))
            subjects = table[config.subject_column].astype(str).unique() if config.subject_column else [path.stem]
            for subject in subjects:
                recordings.setdefault(str(subject), []).append(Recording(path, str(subject)))
        splits = self._split_subjects(sorted(recordings))
        window, stride = config.window or 100, config.stride or 50
        metadata = DatasetMetadata(
            name=config.dataset_name,
            modalities={name: len(columns) for name, columns in config.modality_columns.items()},
            sampling_rates_hz={name: config.sampling_rate_hz for name in config.modality_columns},
            token_grid_hz=config.sampling_rate_hz,
            window=window,
            stride=stride,
            label_names=self._label_names(sorted(observed_labels)),
            channel_names={name: list(columns) for name, columns in config.modality_columns.items()},
            has_modality_mask=absent_anywhere,
            protocol=(
                f"generic recordings from CSV/parquet files; NaN filled by linear interpolation per recording; "
                f"windows of {window} rows ({config.sampling_rate_hz:g} Hz), stride {stride}, majority label, "
                f"windows whose majority label is in {sorted(config.ignored_labels or [])} dropped; "
                + describe_splits(splits)
            ),
        )
        units = {split: [unit for subject in subjects for unit in recordings[subject]] for split, subjects in splits.items()}
        return BuildPlan(metadata=metadata, units=units)

    def _file_examples(self, unit: Recording) -> Iterator[Example]:
        path, subject = unit
        config, metadata = self.config, self._metadata
        table = _read_table(path)
        if config.subject_column:
            table = table[table[config.subject_column].astype(str) == subject]
        signals, mask = {}, []
        for name, columns in config.modality_columns.items():
            present = columns[0] in table.columns
            mask.append(present)
            if present:
                try:
                    values = table[columns].to_numpy(dtype=np.float64)
                except ValueError as error:
                    raise ValueError(f"generic: {path}, modality {name!r}: a value is not a number ({error})") from None
                signals[name] = fill_nan_linear(values, f"{path.name} subject {subject} modality {name!r}")
            else:
                signals[name] = np.zeros((len(table), len(columns)))
        label_to_index = {label: index for index, label in enumerate(metadata.label_names)}
        windows = self._recording_windows(
            unit,
            subject,
            signals,
            table[config.label_column].astype(str).to_numpy(),
            label_to_index,
            set(config.ignored_labels or []),
            key_prefix=str(unit),
        )
        for example in windows:
            example.modality_mask = mask if metadata.has_modality_mask else None
            yield example

    # --------------------------------------------------------------------------------------- arrays

    def _plan_arrays(self) -> BuildPlan:
        config = self.config
        arrays = {name: np.asarray(values) for name, values in config.arrays.items()}
        if config.labels is None:
            raise ValueError("generic: arrays=... needs labels=... (one per example)")
        labels = np.asarray(config.labels)
        if np.issubdtype(labels.dtype, np.integer) and config.label_names is not None:
            if labels.min() < 0 or labels.max() >= len(config.label_names):
                raise ValueError(f"generic: integer labels must index label_names (0..{len(config.label_names) - 1})")
            labels = np.asarray(config.label_names, dtype=object)[labels]
        labels = labels.astype(str)
        count = labels.shape[0]
        for name, values in arrays.items():
            if values.ndim != 3 or values.shape[0] != count:
                raise ValueError(f"generic: modality {name!r} has shape {values.shape}, expected ({count}, time, channels)")
        shortest = min(values.shape[1] for values in arrays.values())
        patch_sizes = {}
        for name, values in arrays.items():
            if values.shape[1] % shortest:
                raise ValueError(
                    f"generic: modality {name!r} has {values.shape[1]} time steps, not a multiple of the shortest "
                    f"modality's {shortest}"
                )
            patch_sizes[name] = values.shape[1] // shortest
        subjects = np.asarray([str(subject) for subject in (config.subjects if config.subjects is not None else range(count))])
        if subjects.shape != (count,):
            raise ValueError(f"generic: subjects has {subjects.shape[0]} entries for {count} examples")
        if config.modality_mask is not None and np.asarray(config.modality_mask).shape != (count, len(arrays)):
            raise ValueError(
                f"generic: modality_mask has shape {np.asarray(config.modality_mask).shape}, expected ({count}, {len(arrays)})"
            )
        observed = sorted(set(labels.tolist()))
        splits = self._split_subjects(sorted(set(subjects.tolist())))
        metadata = DatasetMetadata(
            name=config.dataset_name,
            modalities={name: values.shape[2] for name, values in arrays.items()},
            sampling_rates_hz={name: config.sampling_rate_hz * patch for name, patch in patch_sizes.items()},
            patch_sizes=patch_sizes,
            token_grid_hz=config.sampling_rate_hz,
            window=shortest,
            stride=shortest,
            label_names=self._label_names(observed),
            has_modality_mask=config.modality_mask is not None,
            protocol="generic examples given as arrays (already windows); " + describe_splits(splits),
        )
        self._arrays, self._labels, self._subjects = arrays, labels, subjects
        units = {split: list(names) for split, names in splits.items()}
        return BuildPlan(metadata=metadata, units=units)

    def _array_examples(self, subject: str) -> Iterator[Example]:
        label_to_index = {label: index for index, label in enumerate(self._metadata.label_names)}
        ignored = set(self.config.ignored_labels or [])
        masks = None if self.config.modality_mask is None else np.asarray(self.config.modality_mask, dtype=bool)
        for index in np.flatnonzero(self._subjects == subject).tolist():
            label = self._labels[index]
            if label in ignored:
                continue
            yield Example(
                key=f"{subject}-{index}",
                modalities={name: values[index].astype(np.float64) for name, values in self._arrays.items()},
                label=label_to_index[label],
                subject=subject,
                modality_mask=None if masks is None else masks[index].tolist(),
            )
