"""CMU-MOSI sentiment (binary, or the score as a regression target) from the MultiBench preprocessed pickles.

Official download (MultiBench, Liang et al. 2021): https://github.com/pliang279/MultiBench — `mosi_raw.pkl`
(word-aligned raw features) and `mosi_data.pkl` (processed), linked from its README (Google Drive). Original
corpus: http://multicomp.cs.cmu.edu/resources/cmu-mosi-dataset/. Unpickling runs any code a file holds, so
the builder reads the pickle only with `allow_pickle=True`: pass it for files from a source you trust.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._common import BuildPlan, DatasetMetadata, Example, MergeBuilderConfig, MergeTimeSeriesBuilder

logger = logging.getLogger(__name__)

MODALITIES = ("vision", "audio", "text")
FILE_SPLITS = {"train": "train", "validation": "valid", "test": "test"}
LABEL_NAMES = ["negative", "positive"]
REGRESSION_TARGET = "sentiment"  # the score in [-3, 3]


def segment_id(raw: Any) -> str:
    """A MultiBench `id` entry (str, bytes, or an array / list of parts such as video id and segment) → str."""
    if isinstance(raw, bytes):
        return raw.decode()
    if isinstance(raw, (list, tuple, np.ndarray)):
        return "_".join(segment_id(part) for part in np.asarray(raw, dtype=object).ravel())
    return str(raw)


def load_multibench_pickle(path: Path, allow_pickle: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """Read and check a MultiBench affect pickle: `{train, valid, test}` → `{vision, audio, text: (N, T, C),
    labels: (N, ...) one value each, id: (N, ...)}`; errors name the split, key and shape. Without
    ``allow_pickle`` the file is refused unread (unpickling runs any code it holds)."""
    if not path.is_file():
        raise FileNotFoundError(f"mosi: {str(path)!r} not found (expected the MultiBench mosi_raw.pkl / mosi_data.pkl)")
    if not allow_pickle:
        raise ValueError(f"mosi: {path} is a pickle, and unpickling runs any code a file holds: pass "
                         "allow_pickle=True if you trust it (e.g. the MultiBench download)")
    with path.open("rb") as handle:
        try:
            payload = pickle.load(handle)
        except (pickle.UnpicklingError, EOFError, ValueError) as error:
            raise ValueError(f"mosi: {path} is not a readable pickle ({error})") from error
    if not isinstance(payload, dict):
        raise ValueError(f"mosi: {path} holds a {type(payload).__name__}, expected a dict of splits")
    splits = {}
    for split, key in FILE_SPLITS.items():
        if key not in payload:
            raise ValueError(f"mosi: {path} has no {key!r} split (keys: {sorted(payload)})")
        arrays = payload[key]
        missing = [name for name in (*MODALITIES, "labels", "id") if name not in arrays]
        if missing:
            raise ValueError(f"mosi: {path} split {key!r} lacks {missing}")
        count = len(arrays["labels"])
        for name in MODALITIES:
            values = np.asarray(arrays[name])
            if values.ndim != 3 or values.shape[0] != count:
                raise ValueError(
                    f"mosi: {path} split {key!r}, modality {name!r} has shape {values.shape}, expected "
                    f"({count}, time, channels) to match {count} labels"
                )
        labels = np.asarray(arrays["labels"], dtype=np.float64).reshape(count, -1)
        if labels.shape[1] != 1:
            raise ValueError(f"mosi: {path} split {key!r} has labels of shape {np.shape(arrays['labels'])}, expected one per segment")
        if not np.isfinite(labels).all():
            raise ValueError(f"mosi: {path} split {key!r} has non-finite sentiment labels at {np.flatnonzero(~np.isfinite(labels[:, 0])).tolist()}")
        if len(arrays["id"]) != count:
            raise ValueError(f"mosi: {path} split {key!r} has {len(arrays['id'])} ids for {count} labels")
        splits[split] = {
            **{name: np.asarray(arrays[name], dtype=np.float32) for name in MODALITIES},
            "labels": labels[:, 0],
            "id": [segment_id(raw) for raw in arrays["id"]],
        }
    for name in MODALITIES:
        shapes = {split: arrays[name].shape[1:] for split, arrays in splits.items()}
        if len(set(shapes.values())) != 1:
            raise ValueError(f"mosi: {path}, modality {name!r} has different (time, channels) per split: {shapes}")
    return splits


@dataclass
class MosiConfig(MergeBuilderConfig):
    """file_name: `mosi_raw.pkl` or `mosi_data.pkl` inside data_dir. Splits are the official ones.
    allow_pickle: read the pickle at all (unpickling runs any code the file holds: only for files you trust).
    task: "binary" (positive > 0 vs negative < 0, neutral segments dropped) or "regression" (the sentiment
    score in [-3, 3] as a float `label`, every segment kept; metadata problem_type "regression", one label)."""

    file_name: str = "mosi_raw.pkl"
    allow_pickle: bool = False
    task: Literal["binary", "regression"] = "binary"


class MosiBuilder(MergeTimeSeriesBuilder):
    """CMU-MOSI sentiment, MultiBench pickles: binary (positive > 0, negative < 0; neutral dropped) or the
    score as a regression target.

    Download: https://github.com/pliang279/MultiBench (mosi_raw.pkl / mosi_data.pkl).
    """

    BUILDER_CONFIG_CLASS = MosiConfig
    BUILDER_CONFIGS = [MosiConfig(name="default")]

    def _plan(self) -> BuildPlan:
        config: MosiConfig = self.config
        overrides = {split: chosen for split, chosen in config.split_overrides().items() if chosen is not None}
        if overrides:
            raise ValueError(f"mosi: the official splits are fixed; *_subjects overrides {sorted(overrides)} are not supported")
        if config.task not in ("binary", "regression"):
            raise ValueError(f"mosi: task must be 'binary' or 'regression', got {config.task!r}")
        regression = config.task == "regression"
        path = self.data_path / config.file_name
        self._splits = load_multibench_pickle(path, config.allow_pickle)
        steps = self._splits["train"]["vision"].shape[1]
        if config.window not in (None, steps) or config.stride not in (None, steps):
            raise ValueError(f"mosi: every segment has {steps} steps; window / stride cannot be changed")
        skipped = {}
        for split, arrays in self._splits.items():
            for segment, label in zip(arrays["id"], arrays["labels"]):
                if label == 0 and not regression:
                    skipped[f"{split}/{segment}"] = "neutral sentiment (label 0) dropped by the binary task"
            for name in MODALITIES:
                bad = ~np.isfinite(arrays[name])
                if bad.any():
                    logger.warning("mosi: %s: %d non-finite %s values set to 0 (as MultiBench does)", split, int(bad.sum()), name)
                    arrays[name][bad] = 0.0
        modalities = {name: self._splits["train"][name].shape[2] for name in MODALITIES}
        for name in MODALITIES:
            if self._splits["train"][name].shape[1] != steps:
                raise ValueError(f"mosi: modality {name!r} has {self._splits['train'][name].shape[1]} steps, vision has {steps}")
        metadata = DatasetMetadata(
            name="mosi",
            modalities=modalities,
            sampling_rates_hz={name: 1.0 for name in modalities},
            token_grid_hz=1.0,
            window=steps,
            stride=steps,
            label_names=[REGRESSION_TARGET] if regression else list(LABEL_NAMES),
            problem_type="regression" if regression else "single_label_classification",
            protocol=(
                f"CMU-MOSI from MultiBench {config.file_name}: one example per segment of {steps} word-aligned steps "
                "(the 1 Hz rate is nominal). "
                + (
                    "Regression: label is the sentiment score in [-3, 3] as annotated, every segment kept. "
                    if regression
                    else "Binary sentiment: positive (> 0) vs negative (< 0); neutral (0) segments dropped and listed. "
                )
                + "Official train / valid / test splits. Non-finite feature values "
                "set to 0 (as MultiBench does). Per-channel mean/std from the training split "
                f"{'applied to every split' if config.normalize else 'not applied'}."
            ),
        )
        return BuildPlan(metadata=metadata, units={split: [split] for split in FILE_SPLITS}, skipped=skipped)

    def _unit_examples(self, unit: str) -> Iterator[Example]:
        arrays = self._splits[unit]
        regression = self.config.task == "regression"
        for index, (segment, label) in enumerate(zip(arrays["id"], arrays["labels"])):
            if label == 0 and not regression:
                continue
            yield Example(
                key=f"{unit}-{index}",
                modalities={name: arrays[name][index] for name in MODALITIES},
                label=float(label) if regression else int(label > 0),
                subject=segment,
            )
