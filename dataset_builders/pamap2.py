"""PAMAP2 Physical Activity Monitoring (UCI), the paper's protocol.

Official download: https://archive.ics.uci.edu/static/public/231/pamap2+physical+activity+monitoring.zip
(unpack it and pass the folder that holds `PAMAP2_Dataset/`, or `PAMAP2_Dataset/` itself, as data_dir).
"""

from __future__ import annotations

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
    fill_nan_linear,
    read_whitespace_table,
    resolve_subject_splits,
)

COLUMNS = 54
SAMPLING_RATE_HZ = 100.0
IMU_LOCATIONS = {"chest": 20, "hand": 3, "ankle": 37}  # modality → first (0-based) column of its 17-column IMU
IMU_CHANNELS = ["temperature", "acc16_x", "acc16_y", "acc16_z", "acc6_x", "acc6_y", "acc6_z"]
IMU_CHANNELS += ["gyro_x", "gyro_y", "gyro_z", "mag_x", "mag_y", "mag_z"]  # orientation (4 columns) dropped
ACTIVITIES = {
    1: "lying",
    2: "sitting",
    3: "standing",
    4: "walking",
    5: "running",
    6: "cycling",
    7: "nordic_walking",
    12: "ascending_stairs",
    13: "descending_stairs",
    16: "vacuum_cleaning",
    17: "ironing",
    24: "rope_jumping",
}
TRANSIENT = 0
SUBJECTS = [str(number) for number in range(101, 110)]
PROTOCOL_SPLITS = {"train": SUBJECTS[:6], "validation": SUBJECTS[6:7], "test": SUBJECTS[7:]}


@dataclass
class Pamap2Config(StepLabelsConfig):
    """PAMAP2 options: window / stride in 100 Hz samples (default 100 / 50); subjects are "101"…"109";
    label_granularity "window" (default) or "step" (one activity per 100 Hz sample, transient -100)."""


class Pamap2Builder(MergeTimeSeriesBuilder):
    """PAMAP2: modalities chest, hand, ankle (13 IMU channels each) and heart_rate (1), 100 Hz, 12 activities.

    Protocol files `PAMAP2_Dataset/Protocol/subject1NN.dat` (54 space-separated columns). NaN runs are
    filled by linear interpolation per recording; windows take their majority activity and windows whose
    majority is the transient activity 0 are dropped (or, with `label_granularity="step"`, one activity per sample,
    transient samples -100); subjects 101–106 train, 107 validation, 108–109 test.
    """

    BUILDER_CONFIG_CLASS = Pamap2Config

    def _plan(self) -> BuildPlan:
        protocol_dir = self._find_folder(["PAMAP2_Dataset/Protocol", "Protocol", "."], "subject1*.dat")
        available = sorted(path.stem.removeprefix("subject") for path in protocol_dir.glob("subject1*.dat"))
        splits = resolve_subject_splits("pamap2", available, PROTOCOL_SPLITS, self.config.split_overrides())
        window, stride = self.config.window or 100, self.config.stride or 50
        modalities = {location: len(IMU_CHANNELS) for location in IMU_LOCATIONS}
        modalities["heart_rate"] = 1
        metadata = DatasetMetadata(
            name="pamap2",
            modalities=modalities,
            sampling_rates_hz={name: SAMPLING_RATE_HZ for name in modalities},
            token_grid_hz=SAMPLING_RATE_HZ,
            window=window,
            stride=stride,
            label_names=list(ACTIVITIES.values()),
            label_granularity=self.config.label_granularity,
            channel_names={**{location: list(IMU_CHANNELS) for location in IMU_LOCATIONS}, "heart_rate": ["bpm"]},
            protocol=(
                f"PAMAP2 Protocol recordings; NaN filled by linear interpolation per subject; windows of {window} "
                f"samples (100 Hz), stride {stride}, "
                f"{describe_window_labels(self.config.label_granularity, 'transient (0)')}; "
                + describe_splits(splits)
            ),
        )
        units = {split: [protocol_dir / f"subject{subject}.dat" for subject in subjects] for split, subjects in splits.items()}
        return BuildPlan(metadata=metadata, units=units)

    def _unit_examples(self, path: Path) -> Iterator[Example]:
        subject = path.stem.removeprefix("subject")
        table = read_whitespace_table(path, COLUMNS)
        activity = table[:, 1]
        if not np.isfinite(activity).all():
            row = int(np.flatnonzero(~np.isfinite(activity))[0])
            raise ValueError(f"{path}: line {row + 1} has no activityID")
        signals = {
            location: fill_nan_linear(
                np.delete(table[:, first : first + 17], np.s_[13:17], axis=1), f"{path.name} {location} IMU"
            )
            for location, first in IMU_LOCATIONS.items()
        }
        signals["heart_rate"] = fill_nan_linear(table[:, 2:3], f"{path.name} heart rate")
        yield from self._recording_windows(
            path.name,
            subject,
            signals,
            activity.astype(np.int64),
            {activity_id: index for index, activity_id in enumerate(ACTIVITIES)},
            {TRANSIENT},
        )
