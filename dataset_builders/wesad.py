"""WESAD (wearable stress and affect detection), from the official pickles or from the wrist-only E4 files.

Official download: https://uni-siegen.sciebo.de/s/HGdUkoNlW1Ub0Gx/download (the `WESAD.zip` archive of
Schmidt et al., ICMI 2018; pass the unpacked `WESAD/` folder, or the folder holding it, as data_dir).
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ._common import (
    BuildPlan,
    DatasetMetadata,
    Example,
    MergeBuilderConfig,
    MergeTimeSeriesBuilder,
    describe_splits,
    majority_labels,
    resample_to_grid,
    resolve_subject_splits,
)

SUBJECTS = [f"S{number}" for number in (*range(2, 12), *range(13, 18))]
PROTOCOL_SPLITS = {"train": SUBJECTS[:10], "validation": SUBJECTS[10:12], "test": SUBJECTS[12:]}
LABEL_RATE_HZ = 700.0

# Official pickles: chest (RespiBAN, all 700 Hz) and wrist (E4) signals in this channel order.
CHEST_SIGNALS = {"ACC": ["acc_x", "acc_y", "acc_z"], "ECG": ["ecg"], "EMG": ["emg"], "EDA": ["eda"]}
CHEST_SIGNALS.update({"Temp": ["temp"], "Resp": ["resp"]})
WRIST_SIGNALS = {"ACC": (32.0, ["acc_x", "acc_y", "acc_z"]), "BVP": (64.0, ["bvp"]), "EDA": (4.0, ["eda"])}
WRIST_SIGNALS["TEMP"] = (4.0, ["temp"])
PICKLE_LABELS = ["transient", "baseline", "stress", "amusement", "meditation", "other"]
PICKLE_LABEL_TO_INDEX = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 5, 7: 5}

# E4 zip (wrist only): one modality per file.
E4_FILES = {"acc": ("ACC.csv", ["x", "y", "z"]), "bvp": ("BVP.csv", ["bvp"]), "eda": ("EDA.csv", ["eda"])}
E4_FILES["temp"] = ("TEMP.csv", ["temp"])
E4_LABELS = PICKLE_LABELS[:5]
QUEST_CONDITIONS = {"Base": 1, "TSST": 2, "Fun": 3, "Medi 1": 4, "Medi 2": 4, "bRead": 0, "sRead": 0, "fRead": 0}


@dataclass
class WesadConfig(MergeBuilderConfig):
    """WESAD options. window / stride in token-grid steps (default 100 / 25); subjects are "S2"…"S17".

    source: "pickle" (official `S<k>.pkl`, chest + wrist), "e4" (wrist E4 zip + `S<k>_quest.csv`) or "auto"
    (pickles when every subject folder has one). target_rate_hz: the token grid every signal is
    interpolated and mean-downsampled to (paper: 1 Hz); with the E4 source `None` keeps the native rates
    (grid 4 Hz, patch sizes acc 8, bvp 16).
    """

    source: Literal["auto", "pickle", "e4"] = "auto"
    target_rate_hz: float | None = 1.0


def parse_quest_times(path: Path) -> list[tuple[str, float, float]]:
    """(condition, start_s, end_s) from `S<k>_quest.csv`, whose START / END rows hold minutes.seconds."""
    rows = {}
    for line in Path(path).read_text(encoding="latin1").splitlines():
        fields = [field.strip() for field in line.split(";")]
        if fields[0] in ("# ORDER", "# START", "# END"):
            rows[fields[0][2:]] = [field for field in fields[1:] if field]
    if set(rows) != {"ORDER", "START", "END"} or not (len(rows["ORDER"]) == len(rows["START"]) == len(rows["END"])):
        raise ValueError(f"{path}: expected ORDER, START and END rows of equal length, got { {k: len(v) for k, v in rows.items()} }")

    def seconds(text: str) -> float:
        match = re.fullmatch(r"(\d+)(?:\.(\d{1,2}))?", text)
        if match is None:
            raise ValueError(f"{path}: {text!r} is not a minutes.seconds time")
        return 60.0 * int(match.group(1)) + int((match.group(2) or "0").ljust(2, "0"))

    intervals = []
    for condition, start, end in zip(rows["ORDER"], rows["START"], rows["END"]):
        if condition not in QUEST_CONDITIONS:
            raise ValueError(f"{path}: unknown protocol condition {condition!r}; known: {sorted(QUEST_CONDITIONS)}")
        intervals.append((condition, seconds(start), seconds(end)))
    return intervals


def quest_labels(intervals: list[tuple[str, float, float]], steps: int, grid_hz: float) -> np.ndarray:
    """Label (WESAD code 0–4) of each grid step, read at the step's centre; outside every interval → 0."""
    centres = (np.arange(steps) + 0.5) / grid_hz
    labels = np.zeros(steps, dtype=np.int64)
    for condition, start, end in intervals:
        labels[(centres >= start) & (centres < end)] = QUEST_CONDITIONS[condition]
    return labels


def read_e4_csv(archive: zipfile.ZipFile, member: str, channels: int, where: str) -> tuple[float, float, np.ndarray]:
    """(unix start time, rate Hz, samples (N, channels)) from one E4 CSV inside the session zip."""
    import pandas as pd

    try:
        text = archive.read(member).decode("ascii")
    except KeyError:
        raise FileNotFoundError(f"{where}: no {member} in the E4 zip") from None
    try:
        table = pd.read_csv(io.StringIO(text), header=None, dtype=np.float64).to_numpy()
    except ValueError as error:
        raise ValueError(f"{where}/{member}: malformed E4 CSV ({error})") from error
    if table.ndim != 2 or table.shape[1] != channels or table.shape[0] < 3 or not np.isfinite(table).all():
        raise ValueError(
            f"{where}/{member}: expected a start-time row, a rate row and samples in {channels} numeric "
            f"column(s), got shape {table.shape}"
        )
    return float(table[0, 0]), float(table[1, 0]), table[2:]


class WesadBuilder(MergeTimeSeriesBuilder):
    """WESAD with the paper's protocol: signals on a 1 Hz grid, windows of 100 steps, stride 25, split by subject
    (S2–S11 train, S13–S14 validation, S15–S17 test).

    Pickles: modalities chest (ACC ×3, ECG, EMG, EDA, Temp, Resp) and wrist (ACC ×3, BVP, EDA, TEMP); six
    classes (labels 5, 6, 7 merged into "other"). E4 source: modalities acc, bvp, eda, temp; labels from
    the quest START / END times (origin: the E4 start time, which is approximate); five classes.
    """

    BUILDER_CONFIG_CLASS = WesadConfig

    def _wesad_root(self) -> Path:
        root = self.data_path
        if (root / "WESAD").is_dir():
            root = root / "WESAD"
        if not any((root / subject).is_dir() for subject in SUBJECTS):
            raise FileNotFoundError(f"wesad: no S<k> subject folder under {root}")
        return root

    def _source(self, root: Path, subjects: list[str]) -> str:
        if self.config.source not in ("auto", "pickle", "e4"):
            raise ValueError(f"wesad: source must be 'auto', 'pickle' or 'e4', got {self.config.source!r}")
        with_pickle = [subject for subject in subjects if (root / subject / f"{subject}.pkl").is_file()]
        if self.config.source == "auto":
            return "pickle" if with_pickle and len(with_pickle) == len(subjects) else "e4"
        return self.config.source

    def _plan(self) -> BuildPlan:
        root = self._wesad_root()
        available = [subject for subject in SUBJECTS if (root / subject).is_dir()]
        splits = resolve_subject_splits("wesad", available, PROTOCOL_SPLITS, self.config.split_overrides())
        chosen = [subject for subjects in splits.values() for subject in subjects]
        source = self._source(root, chosen)
        for subject in chosen:
            needed = [f"{subject}.pkl"] if source == "pickle" else [f"{subject}_E4_Data.zip", f"{subject}_quest.csv"]
            for name in needed:
                if not (root / subject / name).is_file():
                    raise FileNotFoundError(f"wesad ({source} source): {root / subject / name} is missing")
        self._source_kind = source
        metadata = self._pickle_metadata(splits) if source == "pickle" else self._e4_metadata(splits)
        units = {split: [root / subject for subject in subjects] for split, subjects in splits.items()}
        return BuildPlan(metadata=metadata, units=units)

    def _grid(self) -> float | None:
        if self.config.target_rate_hz is not None and self.config.target_rate_hz <= 0:
            raise ValueError(f"wesad: target_rate_hz must be positive, got {self.config.target_rate_hz}")
        return self.config.target_rate_hz

    def _protocol_text(self, source: str, splits: dict[str, list[str]], grid_hz: float, window: int, stride: int) -> str:
        return (
            f"WESAD {source} source; signals resampled (interpolated, then mean-downsampled) to a {grid_hz:g} Hz "
            f"grid; windows of {window} steps, stride {stride}, majority label; " + describe_splits(splits)
        )

    def _pickle_metadata(self, splits: dict[str, list[str]]) -> DatasetMetadata:
        grid_hz = self._grid()
        if grid_hz is None or (LABEL_RATE_HZ / grid_hz) % 1:
            raise ValueError(f"wesad (pickle source): target_rate_hz must divide 700 Hz, got {grid_hz}")
        window, stride = self.config.window or 100, self.config.stride or 25
        channel_names = {
            "chest": [name for names in CHEST_SIGNALS.values() for name in names],
            "wrist": [name for _, names in WRIST_SIGNALS.values() for name in names],
        }
        return DatasetMetadata(
            name="wesad",
            modalities={name: len(names) for name, names in channel_names.items()},
            sampling_rates_hz={"chest": grid_hz, "wrist": grid_hz},
            token_grid_hz=grid_hz,
            window=window,
            stride=stride,
            label_names=list(PICKLE_LABELS),
            channel_names=channel_names,
            protocol=self._protocol_text("pickle", splits, grid_hz, window, stride) + "; labels 5, 6, 7 → other",
        )

    def _e4_metadata(self, splits: dict[str, list[str]]) -> DatasetMetadata:
        native = {"acc": 32.0, "bvp": 64.0, "eda": 4.0, "temp": 4.0}
        grid_hz = self._grid()
        if grid_hz is None:
            grid_hz = min(native.values())
            rates, patch_sizes = native, {name: int(rate // grid_hz) for name, rate in native.items()}
        else:
            rates, patch_sizes = {name: grid_hz for name in native}, {}
        window, stride = self.config.window or 100, self.config.stride or 25
        return DatasetMetadata(
            name="wesad",
            modalities={name: len(columns) for name, (_, columns) in E4_FILES.items()},
            sampling_rates_hz=rates,
            patch_sizes=patch_sizes,
            token_grid_hz=grid_hz,
            window=window,
            stride=stride,
            label_names=list(E4_LABELS),
            channel_names={name: list(columns) for name, (_, columns) in E4_FILES.items()},
            protocol=self._protocol_text("e4 (wrist only)", splits, grid_hz, window, stride)
            + "; labels from S<k>_quest.csv START/END (minutes.seconds from the E4 start time; approximate); "
            "outside Base/TSST/Fun/Medi → transient",
        )

    def _unit_examples(self, subject_dir: Path) -> Iterator[Example]:
        subject = subject_dir.name
        if self._source_kind == "pickle":
            signals, labels, label_to_index = self._pickle_signals(subject_dir)
        else:
            signals, labels, label_to_index = self._e4_signals(subject_dir)
        yield from self._recording_windows(subject, subject, signals, labels, label_to_index, set())

    def _pickle_signals(self, subject_dir: Path) -> tuple[dict[str, np.ndarray], np.ndarray, dict[int, int]]:
        path = subject_dir / f"{subject_dir.name}.pkl"
        with open(path, "rb") as handle:
            try:
                payload = pickle.load(handle, encoding="latin1")
            except (pickle.UnpicklingError, EOFError) as error:
                raise ValueError(f"{path}: not a readable WESAD pickle ({error})") from error
        try:
            chest, wrist, raw_labels = payload["signal"]["chest"], payload["signal"]["wrist"], payload["label"]
            chest_values = [np.asarray(chest[key], np.float64).reshape(len(raw_labels), -1) for key in CHEST_SIGNALS]
            wrist_values = {key: np.asarray(wrist[key], np.float64) for key in WRIST_SIGNALS}
        except KeyError as error:
            raise ValueError(f"{path}: missing field {error} (expected signal/chest, signal/wrist, label)") from None
        except ValueError as error:
            raise ValueError(f"{path}: a chest signal does not have one row per label ({error})") from None
        grid_hz = self._metadata.token_grid_hz
        block = int(LABEL_RATE_HZ // grid_hz)
        steps = len(raw_labels) // block
        labels = majority_labels(np.asarray(raw_labels, np.int64), np.arange(steps) * block, block)
        chest_grid = resample_to_grid(np.concatenate(chest_values, axis=1), LABEL_RATE_HZ, grid_hz, steps)
        wrist_grid = np.concatenate(
            [
                resample_to_grid(values.reshape(values.shape[0], -1), rate, grid_hz, steps)
                for (rate, _), values in zip(WRIST_SIGNALS.values(), wrist_values.values())
            ],
            axis=1,
        )
        return {"chest": chest_grid, "wrist": wrist_grid}, labels, PICKLE_LABEL_TO_INDEX

    def _e4_signals(self, subject_dir: Path) -> tuple[dict[str, np.ndarray], np.ndarray, dict[int, int]]:
        subject = subject_dir.name
        zip_path = subject_dir / f"{subject}_E4_Data.zip"
        try:
            archive = zipfile.ZipFile(zip_path)
        except zipfile.BadZipFile as error:
            raise ValueError(f"{zip_path}: not a readable zip ({error})") from error
        with archive:
            recordings = {
                name: read_e4_csv(archive, member, len(columns), str(zip_path))
                for name, (member, columns) in E4_FILES.items()
            }
        origin = min(start for start, _, _ in recordings.values())
        end_s = min(start - origin + values.shape[0] / rate for start, rate, values in recordings.values())
        metadata = self._metadata
        steps = int(end_s * metadata.token_grid_hz)
        signals = {}
        for name, (start, rate, values) in recordings.items():
            patch = metadata.patch_sizes[name]
            signals[name] = resample_to_grid(values, rate, metadata.token_grid_hz * patch, steps * patch, start - origin)
        intervals = parse_quest_times(subject_dir / f"{subject}_quest.csv")
        labels = quest_labels(intervals, steps, metadata.token_grid_hz)
        return signals, labels, {code: code for code in range(len(E4_LABELS))}
