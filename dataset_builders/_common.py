"""Shared machinery of the dataset builders: metadata, windowing, subject splits, train-only normalisation.

Every builder is a `datasets.GeneratorBasedBuilder` subclass of `MergeTimeSeriesBuilder`. A builder only
says how to read its raw files (`_plan`: the dataset metadata and which units — subjects or records — go to
which split; `_unit_examples`: the examples of one unit); this module computes the per-modality
normalisation statistics on the training split, writes the features and the metadata into the dataset
info, and normalises every split with the training statistics.
"""

from __future__ import annotations

import codecs
import json
import logging
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
# byte-order mark → (codec, name): spreadsheet programs save CSV as UTF-8 with a BOM or as UTF-16
TEXT_BOMS = {
    codecs.BOM_UTF8: ("utf-8-sig", "UTF-8"),
    codecs.BOM_UTF16_LE: ("utf-16", "UTF-16"),
    codecs.BOM_UTF16_BE: ("utf-16", "UTF-16"),
}
LABEL_GRANULARITIES = ("window", "step")
PROBLEM_TYPES = ("single_label_classification", "regression")
IGNORE_INDEX = -100  # a step without a label (per-step labels), as torch's cross-entropy ignores it
METADATA_MARKER = "\n\nmerge_metadata_json: "
METADATA_FORMAT_VERSION = 1


@dataclass
class DatasetMetadata:
    """What a model config and a RUS sidecar are built from and checked against.

    `modalities` is ordered (name → channels); that order is the modality index everywhere. A modality
    sampled `k`× faster than the token grid has `patch_sizes[name] = k` and `window * k` rows per example.
    `window` and `stride` count token-grid steps (`1 / token_grid_hz` seconds each). `normalization` maps a
    modality to `{"mean": [C], "std": [C]}` computed on the training split only. `extras` holds
    builder-specific JSON values (the synthetic benchmark's planted structure, under `planted_structure`).

    Labels: `problem_type` "single_label_classification" has one class per `label_names` entry; with
    `label_granularity` "window" an example's `label` is one class id, with "step" it is `window` class ids,
    one per token-grid step (`1 / token_grid_hz` s each, the grid every modality is on before patching),
    `IGNORE_INDEX` (-100) where a step has no label. "regression" has one float target per example and
    `label_names` holds the target's one name. `skipped` also lists examples left out because every modality
    was absent (by example key).
    """

    name: str
    modalities: dict[str, int]
    sampling_rates_hz: dict[str, float]
    token_grid_hz: float
    window: int
    stride: int
    label_names: list[str]
    protocol: str
    patch_sizes: dict[str, int] = field(default_factory=dict)
    channel_names: dict[str, list[str]] = field(default_factory=dict)
    normalization: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    normalization_applied: bool = False
    has_modality_mask: bool = False
    split_units: dict[str, list[str]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    label_granularity: str = "window"
    problem_type: str = "single_label_classification"
    format_version: int = METADATA_FORMAT_VERSION

    def __post_init__(self) -> None:
        self.modalities = {str(name): int(channels) for name, channels in self.modalities.items()}
        if not self.modalities:
            raise ValueError(f"dataset {self.name!r}: metadata needs at least one modality")
        for name, channels in self.modalities.items():
            if channels < 1:
                raise ValueError(f"dataset {self.name!r}: modality {name!r} has {channels} channels")
        for field_name in ("sampling_rates_hz", "patch_sizes", "channel_names", "normalization"):
            unknown = set(getattr(self, field_name)) - set(self.modalities)
            if unknown:
                raise ValueError(
                    f"dataset {self.name!r}: {field_name} names unknown modalities {sorted(unknown)}; "
                    f"modalities are {list(self.modalities)}"
                )
        missing_rates = [name for name in self.modalities if name not in self.sampling_rates_hz]
        if missing_rates:
            raise ValueError(f"dataset {self.name!r}: sampling_rates_hz lacks {missing_rates}")
        self.patch_sizes = {name: int(self.patch_sizes.get(name, 1)) for name in self.modalities}
        for name, patch in self.patch_sizes.items():
            if patch < 1:
                raise ValueError(f"dataset {self.name!r}: patch size of {name!r} is {patch}, must be >= 1")
        for name, names in self.channel_names.items():
            if len(names) != self.modalities[name]:
                raise ValueError(
                    f"dataset {self.name!r}: modality {name!r} has {self.modalities[name]} channels but "
                    f"{len(names)} channel names"
                )
        if self.window < 1 or self.stride < 1:
            raise ValueError(f"dataset {self.name!r}: window ({self.window}) and stride ({self.stride}) must be >= 1")
        if self.label_granularity not in LABEL_GRANULARITIES:
            raise ValueError(
                f"dataset {self.name!r}: label_granularity must be one of {LABEL_GRANULARITIES}, got "
                f"{self.label_granularity!r}"
            )
        if self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"dataset {self.name!r}: problem_type must be one of {PROBLEM_TYPES}, got {self.problem_type!r}")
        if self.problem_type == "regression":
            if len(self.label_names) != 1 or self.label_granularity != "window":
                raise ValueError(
                    f"dataset {self.name!r}: a regression target has one name and one value per window, got "
                    f"label_names {self.label_names} and label_granularity {self.label_granularity!r}"
                )
        elif len(self.label_names) < 2:
            raise ValueError(f"dataset {self.name!r}: needs at least two label names, got {self.label_names}")

    @property
    def modality_names(self) -> list[str]:
        return list(self.modalities)

    @property
    def num_labels(self) -> int:
        """Classes (classification) or 1 (regression): the model's output size per example or step."""
        return len(self.label_names)

    def rows(self, modality: str) -> int:
        """Rows (time steps at the modality's own rate) of one example of `modality`."""
        return self.window * self.patch_sizes[modality]

    def features(self) -> datasets.Features:
        """The Arrow schema: one `Array2D((rows, channels), float32)` per modality, label, subject, mask.

        `label`: a `ClassLabel` (window classification), `window` int64 class ids with -100 for unlabelled
        steps (step classification; the class names are `label_names` in the metadata, as `ClassLabel` cannot
        hold -100), or a float32 target (regression).
        """
        columns: dict[str, Any] = {
            name: datasets.Array2D((self.rows(name), channels), "float32") for name, channels in self.modalities.items()
        }
        if self.problem_type == "regression":
            columns["label"] = datasets.Value("float32")
        elif self.label_granularity == "step":
            columns["label"] = datasets.List(datasets.Value("int64"), length=self.window)
        else:
            columns["label"] = datasets.ClassLabel(names=list(self.label_names))
        columns["subject"] = datasets.Value("string")
        if self.has_modality_mask:
            columns["modality_mask"] = datasets.List(datasets.Value("bool"), length=len(self.modalities))
        return datasets.Features(columns)

    def merge_config_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `MergeConfig(**kwargs, ...)` (with `problem_type="regression"` for a regression
        target; per-step labels need a per-step head, which the caller chooses)."""
        kwargs = dict(
            modalities=dict(self.modalities),
            patch_sizes=dict(self.patch_sizes),
            token_grid_length=self.window,
            num_labels=self.num_labels,
            id2label={index: label for index, label in enumerate(self.label_names)},
            label2id={label: index for index, label in enumerate(self.label_names)},
        )
        if self.problem_type == "regression":
            kwargs["problem_type"] = self.problem_type
        return kwargs

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> DatasetMetadata:
        payload = json.loads(text)
        version = payload.get("format_version")
        if version != METADATA_FORMAT_VERSION:
            raise ValueError(f"merge metadata format_version {version!r} is not {METADATA_FORMAT_VERSION}")
        return cls(**payload)

    def description(self) -> str:
        """`DatasetInfo.description`: the protocol for people, then the metadata as JSON after a marker."""
        normalisation = (
            "every split z-scored per channel with the training split's mean / std"
            if self.normalization_applied
            else "not normalised"
        )
        return f"{self.name}: {self.protocol}. Normalisation: {normalisation}.{METADATA_MARKER}{json.dumps(asdict(self))}"


def metadata_of(dataset: datasets.Dataset | datasets.DatasetDict | datasets.DatasetInfo) -> DatasetMetadata:
    """The `DatasetMetadata` a builder stored in the dataset info (survives `save_to_disk`/`load_from_disk`)."""
    if isinstance(dataset, datasets.DatasetDict):
        if not dataset:
            raise ValueError("metadata_of: the DatasetDict has no splits")
        dataset = next(iter(dataset.values()))
    info = dataset if isinstance(dataset, datasets.DatasetInfo) else dataset.info
    description = info.description or ""
    if METADATA_MARKER not in description:
        raise ValueError(
            "metadata_of: this dataset carries no MERGE metadata (its info.description has no "
            f"{METADATA_MARKER.strip()!r} marker); build it with dataset_builders.build(...)"
        )
    return DatasetMetadata.from_json(description.split(METADATA_MARKER, 1)[1])


# --------------------------------------------------------------------------------------------- signals


def fill_nan_linear(values: np.ndarray, what: str) -> np.ndarray:
    """Linear interpolation over NaN runs of `values` (N, C), nearest value at the edges.

    Raises a ValueError naming `what` and the channel when a channel has no valid sample at all.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"{what}: expected (time, channels), got shape {values.shape}")
    filled = values.copy()
    positions = np.arange(values.shape[0])
    for channel in range(values.shape[1]):
        valid = np.isfinite(values[:, channel])
        if valid.all():
            continue
        if not valid.any():
            raise ValueError(f"{what}: channel {channel} has no valid (non-NaN) sample in {values.shape[0]} rows")
        filled[:, channel] = np.interp(positions, positions[valid], values[valid, channel])
    return filled


def plausible_events(codes: np.ndarray, values: np.ndarray, names: Sequence[str],
                     ranges: Mapping[str, tuple[float, float]]) -> tuple[np.ndarray, dict[str, int]]:
    """Irregular events, `codes` (N,) indexing `names` and `values` (N,): the (N,) mask of values inside their
    variable's [low, high] in `ranges` (variables without a range always pass), and how many events of each
    ranged variable fall outside."""
    low = np.array([ranges.get(name, (-np.inf, np.inf))[0] for name in names], dtype=np.float64)
    high = np.array([ranges.get(name, (-np.inf, np.inf))[1] for name in names], dtype=np.float64)
    keep = (values >= low[codes]) & (values <= high[codes])
    outside = np.bincount(codes[~keep], minlength=len(names))
    return keep, {name: int(outside[index]) for index, name in enumerate(names) if name in ranges}


def drop_implausible(values: np.ndarray, low: float, high: float, what: str) -> tuple[np.ndarray, int]:
    """(values, count): samples of `values` (N, C) outside [low, high] (or not finite) replaced by linear
    interpolation between their plausible neighbours, and how many samples that was. A channel with no
    plausible sample is a ValueError naming `what`."""
    values = np.asarray(values, dtype=np.float64)
    implausible = ~((values >= low) & (values <= high))
    count = int(implausible.sum())
    if count == 0:
        return values, 0
    return fill_nan_linear(np.where(implausible, np.nan, values), f"{what} (plausible range [{low}, {high}])"), count


def block_mean(values: np.ndarray, factor: int) -> np.ndarray:
    """Mean over consecutive blocks of `factor` rows: (N, C) → (N // factor, C); a partial last block is dropped."""
    if factor < 1:
        raise ValueError(f"block_mean: factor must be >= 1, got {factor}")
    usable = (values.shape[0] // factor) * factor
    return values[:usable].reshape(usable // factor, factor, *values.shape[1:]).mean(axis=1)


def window_starts(length: int, window: int, stride: int) -> np.ndarray:
    """Start indices of every full window of `window` steps, `stride` apart, in a series of `length` steps."""
    if window < 1 or stride < 1:
        raise ValueError(f"window ({window}) and stride ({stride}) must be >= 1")
    if length < window:
        return np.zeros(0, dtype=np.int64)
    return np.arange(0, length - window + 1, stride, dtype=np.int64)


def majority_labels(labels: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """Most frequent value of `labels` (N,) in each window `[start, start + window)`; ties → smallest value."""
    labels = np.asarray(labels)
    if starts.size == 0:
        return labels[:0]
    values, codes = np.unique(labels, return_inverse=True)
    per_window = np.empty((starts.size, values.size), dtype=np.int64)
    running = np.zeros(labels.shape[0] + 1, dtype=np.int64)
    for code in range(values.size):  # one class at a time: O(N) memory for long 700 Hz label streams
        np.cumsum(codes == code, out=running[1:])
        per_window[:, code] = running[starts + window] - running[starts]
    return values[per_window.argmax(axis=1)]


def resample_to_grid(
    values: np.ndarray, rate_hz: float, grid_hz: float, steps: int, start_s: float = 0.0
) -> np.ndarray:
    """Put a signal (N, C) sampled at `rate_hz` from `start_s` seconds onto steps 0..`steps` of a `grid_hz` grid.

    Step k is the mean of the signal (linearly interpolated) over [k, k + 1) / grid_hz seconds, so a faster
    signal is mean-downsampled and a slower one interpolated. Times outside the samples hold the edge value.
    When the rate is an integer multiple of the grid and the signal starts at 0, step k is exactly the mean
    of its samples k·ratio … (k + 1)·ratio − 1.
    """
    values = np.asarray(values, dtype=np.float64)
    ratio = rate_hz / grid_hz
    if start_s == 0 and ratio == int(ratio) and values.shape[0] >= steps * int(ratio):
        return block_mean(values[: steps * int(ratio)], int(ratio))  # aligned integer ratio: exact block means
    factor = max(1, int(np.ceil(ratio)))
    fine_times = (np.arange(steps * factor) + 0.5) / (grid_hz * factor)
    sample_times = start_s + np.arange(values.shape[0]) / rate_hz
    fine = np.stack([np.interp(fine_times, sample_times, values[:, c]) for c in range(values.shape[1])], axis=1)
    return block_mean(fine, factor)


def decode_text(data: bytes, source: str) -> str:
    """`data` as text: UTF-8 (a byte-order mark is dropped) or UTF-16 with a byte-order mark. Anything else is a
    ValueError naming `source`, the first bad byte and its offset."""
    codec, name = next((known for bom, known in TEXT_BOMS.items() if data.startswith(bom)), ("utf-8", "UTF-8"))
    try:
        return data.decode(codec)
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{source}: not {name} text (byte {data[error.start:error.start + 1]!r} at offset {error.start}); "
            "save it as UTF-8, or download it again if it came from the official archive"
        ) from None


def fields_per_line(raw: bytes) -> np.ndarray:
    """Number of whitespace-separated fields on each line of `raw` (a trailing newline ends the last line)."""
    data = np.frombuffer(raw, dtype=np.uint8)
    newline = data == ord("\n")
    blank = newline | (data == ord(" ")) | (data == ord("\t")) | (data == ord("\r"))
    token_start = ~blank
    token_start[1:] &= blank[:-1]
    starts = np.flatnonzero(token_start)
    line_ends = np.flatnonzero(newline)
    if data.size and not newline[-1]:
        line_ends = np.append(line_ends, data.size)
    return np.diff(np.searchsorted(starts, line_ends), prepend=0)


def read_whitespace_table(path: Path, columns: int) -> np.ndarray:
    """A space-separated numeric table without header (`NaN` allowed) as float64 (rows, columns).

    Raises a ValueError naming the file and the first line when a line has another number of fields
    (a truncated or malformed row) or a field is not a number; an empty file is an error too.
    """
    import pandas as pd

    raw = Path(path).read_bytes()
    counts = fields_per_line(raw)
    counts = counts[: np.flatnonzero(counts).max() + 1] if counts.any() else counts[:0]
    if counts.size == 0:
        raise ValueError(f"{path}: the file is empty")
    bad = np.flatnonzero(counts != columns)
    if bad.size:
        raise ValueError(
            f"{path}: line {bad[0] + 1} has {counts[bad[0]]} fields, expected {columns} "
            f"({bad.size} malformed line(s) in all)"
        )
    try:
        table = pd.read_csv(path, sep=r"\s+", header=None, dtype=np.float64, engine="c")
    except ValueError as error:
        raise ValueError(f"{path}: a field is not a number ({error})") from error
    return table.to_numpy()


def recording_windows(
    subject: str,
    signals: Mapping[str, np.ndarray],
    labels: np.ndarray,
    label_to_index: Mapping[Any, int],
    ignored_labels: set,
    window: int,
    stride: int,
    patch_sizes: Mapping[str, int] | None = None,
    key_prefix: str | None = None,
    label_granularity: str = "window",
) -> Iterator[Example]:
    """Cut one recording into windows labelled by their majority label, or by one label per step.

    signals[name]: (steps · patch_sizes[name], C) on the token grid; labels: (steps,) raw label values. With
    `label_granularity` "window" a window whose majority label is in `ignored_labels` is dropped; with "step"
    each window's label is its (window,) class ids, `IGNORE_INDEX` on steps whose label is ignored, and a
    window with no labelled step is dropped. A raw label neither mapped nor ignored is a ValueError naming it.
    """
    labels = np.asarray(labels)
    patch_sizes = patch_sizes or {}
    unknown = sorted(set(np.unique(labels).tolist()) - set(label_to_index) - set(ignored_labels))
    if unknown:
        raise ValueError(
            f"subject {subject}: unknown label value(s) {unknown}; known: {sorted(label_to_index)}, "
            f"ignored: {sorted(ignored_labels)}"
        )
    for name, values in signals.items():
        expected = labels.shape[0] * patch_sizes.get(name, 1)
        if values.shape[0] != expected:
            raise ValueError(f"subject {subject}: modality {name!r} has {values.shape[0]} rows, expected {expected}")
    starts = window_starts(labels.shape[0], window, stride)
    if label_granularity == "step":
        step_ids = np.full(labels.shape, IGNORE_INDEX, dtype=np.int64)
        for raw_label, index in label_to_index.items():
            step_ids[labels == raw_label] = index
        labelled = [(start, step_ids[start : start + window]) for start in starts.tolist()]
        labelled = [(start, ids) for start, ids in labelled if (ids != IGNORE_INDEX).any()]
    else:
        majority = majority_labels(labels, starts, window).tolist()
        labelled = [(start, label_to_index[raw]) for start, raw in zip(starts.tolist(), majority) if raw not in ignored_labels]
    for start, label in labelled:
        yield Example(
            key=f"{key_prefix or subject}-{start}",
            modalities={
                name: values[start * patch_sizes.get(name, 1) : (start + window) * patch_sizes.get(name, 1)]
                for name, values in signals.items()
            },
            label=label,
            subject=subject,
        )


def describe_window_labels(granularity: str, ignored: str) -> str:
    """How windows are labelled, for the protocol text; `ignored` names the excluded labels ("transient (0)")."""
    if granularity == "step":
        return f"one label per step, steps labelled {ignored} set to -100 (ignored), windows without a labelled step dropped"
    return f"majority label, windows whose majority label is {ignored} dropped"


def describe_splits(splits: Mapping[str, Sequence[str]], what: str = "subjects") -> str:
    """'subjects train [...], validation [...], test [...]' for the protocol text."""
    return f"{what} " + ", ".join(f"{split} {list(splits[split])}" for split in SPLITS)


def resolve_subject_splits(
    dataset: str,
    available: Sequence[str],
    defaults: Mapping[str, Sequence[str]],
    overrides: Mapping[str, Sequence[str] | None],
) -> dict[str, list[str]]:
    """Subjects per split: `overrides[split]` where given, else `defaults[split]`; disjoint and all available."""
    available_set = set(available)
    splits = {}
    for split in SPLITS:
        chosen = overrides.get(split)
        splits[split] = [str(subject) for subject in (defaults[split] if chosen is None else chosen)]
        unknown = [subject for subject in splits[split] if subject not in available_set]
        if unknown:
            raise ValueError(
                f"{dataset}: {split} subjects {unknown} are not in the data directory "
                f"(found subjects: {sorted(available_set)})"
            )
        if not splits[split]:
            raise ValueError(f"{dataset}: the {split} split has no subjects")
    for first_index, first in enumerate(SPLITS):
        for second in SPLITS[first_index + 1 :]:
            shared = sorted(set(splits[first]) & set(splits[second]))
            if shared:
                raise ValueError(f"{dataset}: subjects {shared} are in both the {first} and the {second} split")
    return splits


class ChannelMoments:
    """Running per-channel mean / std in float64 over arrays (T, C) of one modality."""

    def __init__(self, channels: int):
        self.count = 0
        self.total = np.zeros(channels)
        self.total_squares = np.zeros(channels)

    def update(self, values: np.ndarray) -> None:
        values = values.astype(np.float64, copy=False)
        self.count += values.shape[0]
        self.total += values.sum(axis=0)
        self.total_squares += np.square(values).sum(axis=0)

    def statistics(self) -> dict[str, list[float]]:
        """`{"mean": [C], "std": [C]}`; a constant channel gets std 1 so that it normalises to zeros."""
        if self.count == 0:
            raise ValueError("no training sample to compute normalisation statistics from")
        mean = self.total / self.count
        std = np.sqrt(np.maximum(self.total_squares / self.count - np.square(mean), 0.0))
        std = np.where(std > 1e-8 * np.maximum(1.0, np.abs(mean)), std, 1.0)
        return {"mean": mean.tolist(), "std": std.tolist()}


# ------------------------------------------------------------------------------------------ the builder


def unit_name(unit: Hashable) -> str:
    """How the metadata names a unit: a file or folder by its stem (no local paths), anything else as str."""
    return unit.stem if isinstance(unit, Path) else str(unit)


@dataclass
class Example:
    """One example before normalisation: `modalities[name]` is (rows, channels); `label` a class index, a
    (window,) int array of class ids / `IGNORE_INDEX` (per-step labels) or a float (regression)."""

    key: str
    modalities: dict[str, np.ndarray]
    label: int | float | np.ndarray
    subject: str
    modality_mask: list[bool] | None = None


@dataclass
class BuildPlan:
    """What a builder reads before generating: the metadata (no statistics yet) and the units per split.

    A unit is anything hashable and picklable that `_unit_examples` understands (a subject id, a file).
    `skipped` maps a unit or file that was left out to the reason (reported, and kept in the metadata).
    """

    metadata: DatasetMetadata
    units: dict[str, list[Hashable]]
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass
class MergeBuilderConfig(datasets.BuilderConfig):
    """Fields every MERGE builder has. `None` means the paper protocol's value for that dataset.

    window / stride: in token-grid steps. *_subjects: subject ids per split (overrides the protocol's
    split). normalize: apply the training split's per-channel mean / std to every split.
    """

    window: int | None = None
    stride: int | None = None
    train_subjects: list[str] | None = None
    validation_subjects: list[str] | None = None
    test_subjects: list[str] | None = None
    normalize: bool = True

    def split_overrides(self) -> dict[str, list[str] | None]:
        return {"train": self.train_subjects, "validation": self.validation_subjects, "test": self.test_subjects}


@dataclass
class StepLabelsConfig(MergeBuilderConfig):
    """Config of a benchmark labelled at every sample. label_granularity: "window" (one majority label per
    window, the paper's protocol) or "step" (one class id per token-grid step, -100 where the step's label is
    excluded; for `MergeForTokenClassification`-style per-step heads)."""

    label_granularity: Literal["window", "step"] = "window"


class MergeTimeSeriesBuilder(datasets.GeneratorBasedBuilder):
    """Base class: subclasses implement `_plan()` and `_unit_examples(unit)` (and keep the official URL in
    their docstring). The builder writes train / validation / test splits with the uniform columns."""

    BUILDER_CONFIG_CLASS = MergeBuilderConfig
    REQUIRES_DATA_DIR = True  # checked before `_plan`; builders that can generate without files set False

    def _info(self) -> datasets.DatasetInfo:
        # Features depend on the files (channels kept, label names) and are set in `_split_generators`.
        return datasets.DatasetInfo(description=(self.__doc__ or "").strip().split("\n")[0])

    def _plan(self) -> BuildPlan:
        raise NotImplementedError

    def _unit_examples(self, unit: Hashable) -> Iterator[Example]:
        raise NotImplementedError

    @property
    def data_path(self) -> Path:
        """`config.data_dir` as a Path, with a clear error when it is not given or not a directory."""
        return self._checked_data_dir()

    def _checked_data_dir(self) -> Path:
        if self.config.data_dir is None:
            raise ValueError(f"{self.name}: pass data_dir=<folder with the unpacked official download>")
        path = Path(self.config.data_dir).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"{self.name}: data_dir {str(path)!r} does not exist or is not a directory")
        return path

    def download_and_prepare(self, *args, **kwargs) -> None:
        """As in `datasets`, but a problem with the input found while writing a split surfaces as its own
        clear error (ValueError / OSError naming the file, modality or field) rather than wrapped."""
        try:
            super().download_and_prepare(*args, **kwargs)
        except datasets.exceptions.DatasetGenerationError as error:
            if isinstance(error.__cause__, (ValueError, OSError)):
                raise error.__cause__ from None
            raise

    def _find_folder(self, relative_candidates: Sequence[str], pattern: str) -> Path:
        """The first of `data_dir / candidate` that holds a file matching `pattern` (clear error if none)."""
        root = self.data_path
        for candidate in (root / relative for relative in relative_candidates):
            if any(candidate.glob(pattern)):
                return candidate
        raise FileNotFoundError(f"{self.name}: no {pattern} file under {root} (looked in {list(relative_candidates)})")

    def _split_generators(self, dl_manager) -> list[datasets.SplitGenerator]:
        if self.REQUIRES_DATA_DIR:
            self._checked_data_dir()
        plan = self._plan()
        metadata = plan.metadata
        metadata.skipped = {unit_name(unit): reason for unit, reason in plan.skipped.items()}
        for unit, reason in metadata.skipped.items():
            logger.warning("%s: skipped %s: %s", self.name, unit, reason)
        self._metadata = metadata
        metadata.split_units = {split: [unit_name(unit) for unit in plan.units.get(split, [])] for split in SPLITS}
        if self.config.normalize:
            metadata.normalization = self._train_statistics(metadata, plan.units["train"])
            metadata.normalization_applied = True
        self.info.features = metadata.features()
        self.info.description = metadata.description()
        return [
            datasets.SplitGenerator(name=split, gen_kwargs={"units": plan.units[split], "split": split})
            for split in SPLITS
        ]

    def _report_skip(self, unit: Hashable, reason: str) -> None:
        """Record (and log) a unit left out while reading; the metadata in the dataset info lists it."""
        if unit_name(unit) not in self._metadata.skipped:
            logger.warning("%s: skipped %s: %s", self.name, unit, reason)
            self._metadata.skipped[unit_name(unit)] = reason
            self.info.description = self._metadata.description()

    def _recording_windows(
        self,
        unit: Hashable,
        subject: str,
        signals: Mapping[str, np.ndarray],
        labels: np.ndarray,
        label_to_index: Mapping[Any, int],
        ignored_labels: set,
        key_prefix: str | None = None,
    ) -> Iterator[Example]:
        """`recording_windows` with this dataset's window, stride and patch sizes; a recording shorter than
        one window is reported as skipped."""
        metadata = self._metadata
        if labels.shape[0] < metadata.window:
            self._report_skip(unit, f"{labels.shape[0]} steps, shorter than one window ({metadata.window})")
            return
        yield from recording_windows(
            subject, signals, labels, label_to_index, ignored_labels, metadata.window, metadata.stride,
            metadata.patch_sizes, key_prefix, metadata.label_granularity,
        )

    def _train_statistics(self, metadata: DatasetMetadata, units: list[Hashable]) -> dict[str, dict[str, list[float]]]:
        from tqdm.auto import tqdm

        moments = {name: ChannelMoments(channels) for name, channels in metadata.modalities.items()}
        examples = self._checked_examples(units, "train")
        for example in tqdm(examples, desc=f"{self.name}: train normalisation statistics", unit=" examples"):
            for index, name in enumerate(metadata.modality_names):
                if example.modality_mask is None or example.modality_mask[index]:
                    moments[name].update(example.modalities[name])
        statistics = {}
        for name, moment in moments.items():
            if moment.count == 0:
                raise ValueError(f"{self.name}: modality {name!r} is absent from every training example")
            statistics[name] = moment.statistics()
        return statistics

    def _checked_examples(self, units: list[Hashable], split: str) -> Iterator[Example]:
        """The examples of `units`, shape-, NaN- and label-checked; an example whose modality mask marks every
        modality absent carries no input and is skipped (listed in `metadata.skipped` under its key); an empty
        split is an error."""
        count = 0
        for unit in units:
            for example in self._unit_examples(unit):
                if example.modality_mask is not None and not any(example.modality_mask):
                    self._report_skip(example.key, f"every modality absent (subject {example.subject})")
                    continue
                self._check_example(example, self._metadata)
                count += 1
                yield example
        if count == 0:
            raise ValueError(
                f"{self.name}: the {split} split ({[unit_name(unit) for unit in units]}) gives no example; "
                "check the window length against the recordings and the subjects chosen"
            )

    def _check_example(self, example: Example, metadata: DatasetMetadata) -> None:
        if set(example.modalities) != set(metadata.modalities):
            raise ValueError(
                f"{self.name}: example {example.key} has modalities {sorted(example.modalities)}, "
                f"expected {metadata.modality_names}"
            )
        for name, channels in metadata.modalities.items():
            values = example.modalities[name]
            expected = (metadata.rows(name), channels)
            if values.shape != expected:
                raise ValueError(
                    f"{self.name}: example {example.key}, modality {name!r} has shape {values.shape}, "
                    f"expected {expected}"
                )
            if not np.isfinite(values).all():
                raise ValueError(f"{self.name}: example {example.key}, modality {name!r} contains NaN or inf values")
        check_label(example.label, metadata, f"{self.name}: example {example.key}")

    def _generate_examples(self, units: list[Hashable], split: str):
        metadata = self._metadata
        names = metadata.modality_names
        for example in self._checked_examples(units, split):
            record: dict[str, Any] = {}
            for index, name in enumerate(names):
                values = example.modalities[name].astype(np.float32, copy=False)
                present = example.modality_mask is None or example.modality_mask[index]
                if not present:
                    values = np.zeros_like(values)
                elif metadata.normalization_applied:
                    statistics = metadata.normalization[name]
                    values = (values - np.asarray(statistics["mean"], np.float32)) / np.asarray(
                        statistics["std"], np.float32
                    )
                record[name] = values
            record["label"] = label_value(example.label, metadata)
            record["subject"] = example.subject
            if metadata.has_modality_mask:
                record["modality_mask"] = (
                    [True] * len(names) if example.modality_mask is None else [bool(v) for v in example.modality_mask]
                )
            yield example.key, record


def check_label(label: int | float | np.ndarray, metadata: DatasetMetadata, where: str) -> None:
    """A ValueError naming `where` unless `label` fits the metadata: a class id in [0, num_labels), a (window,)
    array of such ids or `IGNORE_INDEX` with at least one labelled step, or a finite float (regression)."""
    if metadata.problem_type == "regression":
        if not np.isscalar(label) or not np.isfinite(float(label)):
            raise ValueError(f"{where}: regression target {label!r} is not a finite number")
        return
    ids = np.asarray(label)
    expected_shape = (metadata.window,) if metadata.label_granularity == "step" else ()
    if ids.shape != expected_shape or ids.dtype.kind not in "iu":
        raise ValueError(
            f"{where}: {metadata.label_granularity} label must be integer class id(s) of shape {expected_shape}, got "
            f"{ids.dtype} of shape {ids.shape}"
        )
    labelled = ids[ids != IGNORE_INDEX] if metadata.label_granularity == "step" else ids.reshape(1)
    if labelled.size == 0 or labelled.min() < 0 or labelled.max() >= metadata.num_labels:
        raise ValueError(
            f"{where}: label(s) {np.unique(ids).tolist()} outside the {metadata.num_labels} classes "
            f"{metadata.label_names}" + (f" (or {IGNORE_INDEX} for an unlabelled step)" if ids.ndim else "")
        )


def label_value(label: int | float | np.ndarray, metadata: DatasetMetadata) -> int | float | list[int]:
    """`label` as stored in the `label` column (see `DatasetMetadata.features`)."""
    if metadata.problem_type == "regression":
        return float(label)
    if metadata.label_granularity == "step":
        return np.asarray(label, dtype=np.int64).tolist()
    return int(label)


# ------------------------------------------------------------------- irregular series and record splits


def bin_irregular_series(
    hours: np.ndarray,
    variables: np.ndarray,
    values: np.ndarray,
    num_variables: int,
    num_bins: int,
    bin_hours: float,
    fill_values: np.ndarray,
) -> np.ndarray:
    """Irregular observations → a regular grid: (num_bins, 2 · num_variables) float64.

    `hours` (n,) since admission, `variables` (n,) indices, `values` (n,). Observations in `[0, num_bins ·
    bin_hours]` are kept (one at the closing edge goes to the last bin). Channels `[:V]` hold each bin's mean,
    carried forward over empty bins, back-filled before the first observation and `fill_values[v]` for a
    variable never observed; channels `[V:]` are 1.0 where the bin holds an observation of that variable.
    """
    horizon = num_bins * bin_hours
    keep = (hours >= 0) & (hours <= horizon)
    bins = np.minimum((hours[keep] / bin_hours).astype(np.int64), num_bins - 1)
    variables, values = variables[keep], values[keep]
    sums = np.zeros((num_bins, num_variables))
    counts = np.zeros((num_bins, num_variables))
    np.add.at(sums, (bins, variables), values)
    np.add.at(counts, (bins, variables), 1.0)
    observed = counts > 0
    means = np.divide(sums, counts, out=np.zeros_like(sums), where=observed)
    last_observed = np.maximum.accumulate(np.where(observed, np.arange(num_bins)[:, None], -1), axis=0)
    first_observed = observed.argmax(axis=0)
    source = np.where(last_observed >= 0, last_observed, first_observed[None, :])
    filled = np.take_along_axis(means, source, axis=0)
    never = ~observed.any(axis=0)
    filled[:, never] = np.asarray(fill_values, dtype=np.float64)[never]
    return np.concatenate([filled, observed.astype(np.float64)], axis=1)


def stratified_record_splits(
    records: Sequence[str], labels: Sequence[int], fractions: tuple[float, float], seed: int
) -> dict[str, list[str]]:
    """Random train / validation / test split of `records`, stratified by `labels` (fractions of train and
    validation; the rest is test). Deterministic for a seed; each split's records come back sorted."""
    train_fraction, validation_fraction = fractions
    if not (0 < train_fraction < 1 and 0 < validation_fraction < 1 and train_fraction + validation_fraction < 1):
        raise ValueError(
            f"split fractions train={train_fraction}, validation={validation_fraction} must be in (0, 1) "
            "and leave a test share"
        )
    rng = np.random.default_rng(seed)
    records, labels = np.asarray(records, dtype=object), np.asarray(labels)
    splits: dict[str, list[str]] = {split: [] for split in SPLITS}
    for label in np.unique(labels):
        members = records[labels == label][rng.permutation(int((labels == label).sum()))]
        train_end = int(round(len(members) * train_fraction))
        validation_end = train_end + int(round(len(members) * validation_fraction))
        for split, part in zip(SPLITS, (members[:train_end], members[train_end:validation_end], members[validation_end:])):
            splits[split].extend(str(record) for record in part)
    return {split: sorted(members) for split, members in splits.items()}


def observation_means(records: Sequence[tuple[np.ndarray, np.ndarray]], num_variables: int) -> np.ndarray:
    """Mean value per variable over `records` (each `(variables (n,), values (n,))`); 0 for a variable no record has."""
    sums, counts = np.zeros(num_variables), np.zeros(num_variables)
    for variables, values in records:
        np.add.at(sums, variables, values)
        np.add.at(counts, variables, 1.0)
    return np.divide(sums, counts, out=np.zeros(num_variables), where=counts > 0)
