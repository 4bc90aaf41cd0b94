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
HEART_RATE_COLUMN = 2
# Physically possible values: heart rate in bpm, each IMU's temperature in °C (the IMUs sit on the body but read
# ambient air and device heat too). With `drop_implausible` a recorded sample outside counts as missing (NaN) and
# is interpolated over like the recordings' NaN runs. Accelerometers, gyroscopes and magnetometers are not checked:
# the readme gives no bounds for them beyond the scales (±16 g, ±6 g), and a saturated reading sits at its scale.
PLAUSIBLE_RANGES = {"heart_rate": (20.0, 250.0)} | {f"{location}_temperature": (-10.0, 60.0) for location in IMU_LOCATIONS}
RANGED_COLUMNS = {"heart_rate": HEART_RATE_COLUMN} | {f"{location}_temperature": first for location, first in IMU_LOCATIONS.items()}
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


def blank_implausible(table: np.ndarray) -> dict[str, int]:
    """Set the recorded (non-NaN) samples of `table` (rows, 54) outside `PLAUSIBLE_RANGES` to NaN, in place;
    returns how many per ranged channel (`PLAUSIBLE_RANGES` keys)."""
    counts = {}
    for name, column in RANGED_COLUMNS.items():
        low, high = PLAUSIBLE_RANGES[name]
        values = table[:, column]
        implausible = ~np.isnan(values) & ~((values >= low) & (values <= high))
        table[implausible, column] = np.nan
        counts[name] = int(implausible.sum())
    return counts


@dataclass
class Pamap2Config(StepLabelsConfig):
    """PAMAP2 options: window / stride in 100 Hz samples (default 100 / 50); subjects are "101"…"109";
    label_granularity "window" (default) or "step" (one activity per 100 Hz sample, transient -100)."""

    drop_implausible: bool = True
    """Heart rate and IMU temperature samples outside `PLAUSIBLE_RANGES` (e.g. 0 or 400 bpm) count as missing and
    are interpolated over like NaN samples; how many per subject and channel is in
    `extras["implausible_samples"]`. False keeps every value as recorded."""


class Pamap2Builder(MergeTimeSeriesBuilder):
    """PAMAP2: modalities chest, hand, ankle (13 IMU channels each) and heart_rate (1), 100 Hz, 12 activities.

    Protocol files `PAMAP2_Dataset/Protocol/subject1NN.dat` (54 space-separated columns). NaN runs are
    filled by linear interpolation per recording, and so are heart rate and IMU temperature samples outside
    `PLAUSIBLE_RANGES` unless `drop_implausible=False` (counted in `extras["implausible_samples"]`); windows
    take their majority activity and windows whose majority is the transient activity 0 are dropped (or, with `label_granularity="step"`, one activity per sample,
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
                "PAMAP2 Protocol recordings; NaN"
                f"{' and values outside PLAUSIBLE_RANGES (heart rate, IMU temperature)' if self.config.drop_implausible else ''} "
                f"filled by linear interpolation per subject; windows of {window} "
                f"samples (100 Hz), stride {stride}, "
                f"{describe_window_labels(self.config.label_granularity, 'transient (0)')}; "
                + describe_splits(splits)
            ),
        )
        if self.config.drop_implausible:
            metadata.extras["implausible_samples"] = {}
        units = {split: [protocol_dir / f"subject{subject}.dat" for subject in subjects] for split, subjects in splits.items()}
        return BuildPlan(metadata=metadata, units=units)

    def _unit_examples(self, path: Path) -> Iterator[Example]:
        subject = path.stem.removeprefix("subject")
        table = read_whitespace_table(path, COLUMNS)
        activity = table[:, 1]
        if not np.isfinite(activity).all():
            row = int(np.flatnonzero(~np.isfinite(activity))[0])
            raise ValueError(f"{path}: line {row + 1} has no activityID")
        ranged = ""
        if self.config.drop_implausible:
            self._metadata.extras["implausible_samples"][subject] = blank_implausible(table)
            self.info.description = self._metadata.description()
            ranged = " (samples outside PLAUSIBLE_RANGES count as NaN)"
        signals = {
            location: fill_nan_linear(
                np.delete(table[:, first : first + 17], np.s_[13:17], axis=1), f"{path.name} {location} IMU{ranged}"
            )
            for location, first in IMU_LOCATIONS.items()
        }
        signals["heart_rate"] = fill_nan_linear(
            table[:, HEART_RATE_COLUMN : HEART_RATE_COLUMN + 1], f"{path.name} heart rate{ranged}"
        )
        yield from self._recording_windows(
            path.name,
            subject,
            signals,
            activity.astype(np.int64),
            {activity_id: index for index, activity_id in enumerate(ACTIVITIES)},
            {TRANSIENT},
        )
