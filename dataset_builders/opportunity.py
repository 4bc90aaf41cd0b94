"""OPPORTUNITY Activity Recognition (UCI), high-level activities, the paper's protocol.

Official download: https://archive.ics.uci.edu/static/public/226/opportunity+activity+recognition.zip
(unpack it and pass the folder holding `OpportunityUCIDataset/`, or its `dataset/` folder, as data_dir).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._common import (
    BuildPlan,
    DatasetMetadata,
    Example,
    MergeTimeSeriesBuilder,
    StepLabelsConfig,
    describe_splits,
    describe_window_labels,
    read_whitespace_table,
    resolve_subject_splits,
)

logger = logging.getLogger(__name__)

COLUMNS = 250
SAMPLING_RATE_HZ = 30.0
HL_ACTIVITY_COLUMN = 245  # 1-based, as in the dataset's column_names.txt


def _span(first: int, last: int) -> list[int]:
    """1-based inclusive column range."""
    return list(range(first, last + 1))


# Sensor location → 1-based columns (column_names.txt of the official archive). Body-worn 3-axis
# accelerometers (2–37) go to their location: RKN^ 2–4, HIP 5–7, LUA^ 8–10, RUA_ 11–13, LH 14–16,
# BACK 17–19, RKN_ 20–22, RWR 23–25, RUA^ 26–28, LUA_ 29–31, LWR 32–34, RH 35–37.
MODALITY_COLUMNS = {
    "torso": _span(5, 7) + _span(17, 19) + _span(38, 50),
    "arms": _span(8, 16) + _span(23, 37) + _span(51, 102),
    "legs": _span(2, 4) + _span(20, 22),
    "shoes": _span(103, 134),
    "objects": _span(135, 194),
    "environment": _span(195, 231),  # reed switches and accelerometers on doors, drawers and furniture
    "location": _span(232, 243),
}
HL_ACTIVITIES = {101: "relaxing", 102: "coffee_time", 103: "early_morning", 104: "cleanup", 105: "sandwich_time"}
NULL_ACTIVITY = 0
PROTOCOL_RUNS = {
    "train": [f"S{subject}-ADL{run}" for subject in (1, 2, 3) for run in (1, 2, 3, 4)],
    "validation": [f"S{subject}-ADL5" for subject in (1, 2, 3)],
    "test": [f"S4-ADL{run}" for run in (1, 2, 3, 4, 5)],
}


@dataclass
class OpportunityConfig(StepLabelsConfig):
    """Opportunity options: window / stride in 30 Hz samples (default 100 / 50); label_granularity "window"
    (default) or "step" (one HL_Activity per 30 Hz sample, null -100).

    *_runs: file stems ("S1-ADL1") per split; *_subjects ("S1"…"S4"), when given instead, put every ADL
    run of those subjects in the split. Default: S1–S3 ADL1–4 train, S1–S3 ADL5 validation, S4 test.
    max_nan_fraction: columns whose share of NaN on the training runs is at least this are dropped (paper: 50 %).
    """

    train_runs: list[str] | None = None
    validation_runs: list[str] | None = None
    test_runs: list[str] | None = None
    max_nan_fraction: float = 0.5


class OpportunityBuilder(MergeTimeSeriesBuilder):
    """Opportunity: seven modalities by sensor location (torso, arms, legs, shoes, objects, environment,
    location), label HL_Activity (5 classes, null windows dropped; per sample with `label_granularity="step"`,
    null samples -100), Drill runs excluded.

    Columns that are mostly NaN on the training runs are dropped (a modality left with no column is
    dropped too); the rest are forward- then backward-filled per run, and a column that is NaN through a
    whole run takes its training mean.
    """

    BUILDER_CONFIG_CLASS = OpportunityConfig

    def _runs_per_split(self, available: list[str]) -> dict[str, list[str]]:
        config = self.config
        explicit = {"train": config.train_runs, "validation": config.validation_runs, "test": config.test_runs}
        if any(value is not None for value in explicit.values()):
            return resolve_subject_splits("opportunity", available, PROTOCOL_RUNS, explicit)
        by_subject = {
            split: None if subjects is None else [run for run in available if run.split("-")[0] in subjects]
            for split, subjects in config.split_overrides().items()
        }
        return resolve_subject_splits("opportunity", available, PROTOCOL_RUNS, by_subject)

    def _plan(self) -> BuildPlan:
        dataset_dir = self._find_folder(["OpportunityUCIDataset/dataset", "dataset", "."], "S*-ADL*.dat")
        available = sorted(path.stem for path in dataset_dir.glob("S*-ADL*.dat"))
        runs = self._runs_per_split(available)
        rows, valid_counts, valid_sums = 0, np.zeros(COLUMNS), np.zeros(COLUMNS)
        for run in runs["train"]:  # one run in memory at a time
            table = read_whitespace_table(dataset_dir / f"{run}.dat", COLUMNS)
            valid = np.isfinite(table)
            rows += table.shape[0]
            valid_counts += valid.sum(axis=0)
            valid_sums += np.where(valid, table, 0.0).sum(axis=0)
        nan_fraction = 1.0 - valid_counts / rows
        self._column_means = valid_sums / np.maximum(valid_counts, 1)
        self._kept_columns = {}
        dropped = []
        for name, columns in MODALITY_COLUMNS.items():
            kept = [column for column in columns if nan_fraction[column - 1] < self.config.max_nan_fraction]
            dropped += [column for column in columns if column not in kept]
            if kept:
                self._kept_columns[name] = kept
        window, stride = self.config.window or 100, self.config.stride or 50
        dropped_modalities = sorted(set(MODALITY_COLUMNS) - set(self._kept_columns))
        metadata = DatasetMetadata(
            name="opportunity",
            modalities={name: len(columns) for name, columns in self._kept_columns.items()},
            sampling_rates_hz={name: SAMPLING_RATE_HZ for name in self._kept_columns},
            token_grid_hz=SAMPLING_RATE_HZ,
            window=window,
            stride=stride,
            label_names=list(HL_ACTIVITIES.values()),
            label_granularity=self.config.label_granularity,
            channel_names={name: [f"column_{column}" for column in columns] for name, columns in self._kept_columns.items()},
            protocol=(
                f"Opportunity ADL runs (Drill excluded), label HL_Activity; "
                f"{len(dropped)} column(s) with >= {self.config.max_nan_fraction:.0%} NaN on the training runs "
                f"dropped {sorted(dropped)}, modalities dropped {dropped_modalities}; forward/backward fill per "
                f"run; windows of {window} samples (30 Hz), stride {stride}, "
                f"{describe_window_labels(self.config.label_granularity, 'null (0)')}; "
                + describe_splits(runs, "runs")
            ),
        )
        units = {split: [dataset_dir / f"{run}.dat" for run in split_runs] for split, split_runs in runs.items()}
        return BuildPlan(metadata=metadata, units=units)

    def _unit_examples(self, path: Path) -> Iterator[Example]:
        import pandas as pd

        run = path.stem
        table = read_whitespace_table(path, COLUMNS)
        labels = table[:, HL_ACTIVITY_COLUMN - 1]
        if not np.isfinite(labels).all():
            raise ValueError(f"{path}: HL_Activity (column {HL_ACTIVITY_COLUMN}) has NaN values")
        signals = {}
        for name, columns in self._kept_columns.items():
            values = pd.DataFrame(table[:, [column - 1 for column in columns]]).ffill().bfill().to_numpy(copy=True)
            empty = np.isnan(values).all(axis=0)
            if empty.any():
                logger.warning("opportunity: %s: column(s) %s NaN through the run; training mean used", run,
                               [columns[index] for index in np.flatnonzero(empty)])
                values[:, empty] = self._column_means[[columns[index] - 1 for index in np.flatnonzero(empty)]]
            signals[name] = values
        yield from self._recording_windows(
            run,
            run.split("-")[0],
            signals,
            labels.astype(np.int64),
            {activity: index for index, activity in enumerate(HL_ACTIVITIES)},
            {NULL_ACTIVITY},
            key_prefix=run,
        )
