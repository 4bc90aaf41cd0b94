"""WESAD (wearable stress and affect detection), from the official pickles or from the wrist-only E4 files.

Official download: https://uni-siegen.sciebo.de/s/HGdUkoNlW1Ub0Gx/download (the `WESAD.zip` archive of
Schmidt et al., ICMI 2018; pass the unpacked `WESAD/` folder, or the folder holding it, as data_dir).

E4 source, protocol origin. `S<k>_quest.csv` times count from the protocol start (the start of the chest
RespiBAN recording), not from the E4 start: the E4 was switched on 15–24 minutes earlier. Each subject's
origin, in seconds after the E4 start, is taken from (in this order) `protocol_origin_s`, the start time in
the header of the official `S<k>_respiban.txt`, or the synchronisation double tap in the E4 `ACC.csv`
(`detect_protocol_origin`); the metadata records it per subject under `extras["protocol_origins"]`.
Signals before the origin (fitting the devices) are dropped.
"""

from __future__ import annotations

import datetime
import io
import json
import logging
import pickle
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

import numpy as np

from ._common import (
    BuildPlan,
    DatasetMetadata,
    Example,
    MergeTimeSeriesBuilder,
    StepLabelsConfig,
    describe_splits,
    describe_window_labels,
    decode_text,
    drop_implausible,
    majority_labels,
    resample_to_grid,
    resolve_subject_splits,
)

logger = logging.getLogger(__name__)

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
E4_LABEL_TO_INDEX = {code: code for code in range(len(E4_LABELS))}
QUEST_CONDITIONS = {"Base": 1, "TSST": 2, "Fun": 3, "Medi 1": 4, "Medi 2": 4, "bRead": 0, "sRead": 0, "fRead": 0}
# Physiologically plausible E4 values (units of the files); samples outside are dropped and interpolated over.
# The first second of every TEMP.csv reads 382 °C (sensor start-up); EDA is 0 µS without skin contact.
PLAUSIBLE_RANGES = {"acc": (-128.0, 128.0), "eda": (0.0, 100.0), "temp": (15.0, 45.0)}
HEART_RATE_BPM = (30.0, 220.0)

# Tasks: label names and raw WESAD code → class index; windows whose majority code is not mapped are dropped.
TASK_LABELS = {
    "three_class": (["baseline", "stress", "amusement"], {1: 0, 2: 1, 3: 2}),
    "binary": (["not_stress", "stress"], {1: 0, 3: 0, 2: 1}),
}

# Synchronisation double tap in E4 ACC.csv. Jerk: change of the acceleration vector, in g/s.
TAP_ACTIVE_G_S = 8.0  # a sample above this jerk belongs to a burst of movement
TAP_BURST_GAP_S = 0.4  # quieter gaps up to this long stay inside one burst
TAP_BURST_MAX_S = 2.5  # a longer burst is ordinary movement, not a tap
TAP_SPIKE_G_S = 20.0  # a tap is a jerk peak above this
TAP_PAIR_S = (0.15, 1.0)  # two taps this far apart make a double tap
TAP_STILL_G_S = 4.0  # 90th-percentile jerk in the 3 s before and after the burst: the arm is held still
TAP_STILL_S = 3.0
TAP_RETRY_S = 60.0  # a weaker double tap up to this long before the strongest is a first try
# Double taps are searched this far (s) after origins at which the protocol's seated conditions line up with
# still stretches of the recording (`activity_contrast`).
TAP_SEARCH_S = (-120.0, 240.0)
ACTIVITY_FLOOR_G_S = 0.25


@dataclass
class WesadConfig(StepLabelsConfig):
    """WESAD options. window / stride in token-grid steps (default 100 / 25); subjects are "S2"…"S17".

    Benchmark protocol (E4): `task="three_class"` or `"binary"`, `per_subject_normalize=True`,
    `heart_rate=True`, window 60 s with stride ≤ window (e.g. 15 s; a stride above the window leaves signal
    unused), and the 15 folds of `loso_fold` (3 test subjects are too few for claims).

    source: "pickle" (official `S<k>.pkl`, chest + wrist), "e4" (wrist E4 zip + `S<k>_quest.csv`) or "auto"
    (pickles when every subject folder has one and `allow_pickle=True`, else E4). allow_pickle: read the
    `S<k>.pkl` files at all; unpickling runs any code a file holds, so pass True only for files you trust
    (the E4 source never reads a pickle). target_rate_hz: the token grid every signal is
    interpolated and mean-downsampled to (paper: 1 Hz); with the E4 source `None` keeps the native rates
    (grid 4 Hz, patch sizes acc 8, bvp 16). label_granularity: "window" (majority label) or "step" (one label
    per token-grid step; steps of a condition outside the task's classes are -100).
    """

    source: Literal["auto", "pickle", "e4"] = "auto"
    allow_pickle: bool = False
    target_rate_hz: float | None = 1.0
    task: Literal["paper", "three_class", "binary"] = "paper"
    """Labels: "paper" (E4: transient / baseline / stress / amusement / meditation; pickles add "other"),
    "three_class" (baseline / stress / amusement) or "binary" (not_stress = baseline or amusement, vs stress);
    with the last two, windows of any other condition are dropped."""
    protocol_origin_s: dict[str, float] | None = None
    """E4 source: per subject ("S3": 1090.0), seconds after the E4 start at which the protocol (the quest
    times' zero) starts; overrides the RespiBAN header and the double-tap detection for those subjects."""
    respiban_timezone: str = "Europe/Berlin"
    """Time zone of the local start time in the `S<k>_respiban.txt` header (the study site's)."""
    per_subject_normalize: bool = False
    """z-score every channel with the mean / std of that subject's own whole recording, before windowing.
    This uses the (unlabelled) signal of validation and test subjects, as is standard on WESAD."""
    heart_rate: bool = False
    """E4 source: add a modality "hr" (heart rate, bpm, on the token grid) from the BVP pulse peaks at 64 Hz."""
    loso_fold: int | None = None
    """Leave-one-subject-out fold k (0–14): test subject SUBJECTS[k], validation the next one, train the rest
    (instead of the paper's 10 / 2 / 3 split; not combinable with *_subjects)."""


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
        text = decode_text(archive.read(member), f"{where}/{member}")
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
    if (table[1] <= 0).any() or (table[1] != table[1, 0]).any():
        raise ValueError(
            f"{where}/{member}: sampling rate (row 2) must be one positive value in every column, got "
            f"{table[1].tolist()} Hz"
        )
    return float(table[0, 0]), float(table[1, 0]), table[2:]



def acc_jerk(acc: np.ndarray, rate_hz: float) -> np.ndarray:
    """Jerk (N,) in g/s: the change of the acceleration vector (N, 3) in 1/64 g from one sample to the next."""
    return np.r_[0.0, np.linalg.norm(np.diff(acc, axis=0), axis=1)] * rate_hz / 64.0


def double_taps(jerk: np.ndarray, rate_hz: float) -> list[tuple[float, float]]:
    """(start s, strength g/s) of every double tap: a burst of movement no longer than `TAP_BURST_MAX_S` holding
    two jerk peaks `TAP_PAIR_S` apart, with the arm still for `TAP_STILL_S` before and after. Strength: the
    second-highest jerk peak of the burst."""
    active = np.flatnonzero(jerk > TAP_ACTIVE_G_S)
    if active.size == 0:
        return []
    bursts = np.split(active, np.flatnonzero(np.diff(active) > TAP_BURST_GAP_S * rate_hz) + 1)
    half_peak, still, edge = max(1, round(0.0625 * rate_hz)), round(TAP_STILL_S * rate_hz), round(0.25 * rate_hz)
    taps = []
    for burst in bursts:
        first, last = int(burst[0]), int(burst[-1])
        before, after = jerk[max(0, first - still) : max(0, first - edge)], jerk[last + edge : last + still]
        if (last - first) / rate_hz > TAP_BURST_MAX_S or min(before.size, after.size) < rate_hz:
            continue
        if max(np.percentile(before, 90), np.percentile(after, 90)) > TAP_STILL_G_S:
            continue
        segment = np.pad(jerk[first : last + 1], half_peak, constant_values=-np.inf)
        local_max = np.lib.stride_tricks.sliding_window_view(segment, 2 * half_peak + 1).max(axis=1)
        peaks = np.flatnonzero((segment[half_peak:-half_peak] == local_max) & (local_max > TAP_SPIKE_G_S))
        gaps = (peaks[None, :] - peaks[:, None]) / rate_hz
        if ((gaps >= TAP_PAIR_S[0]) & (gaps <= TAP_PAIR_S[1])).any():
            taps.append((first / rate_hz, float(np.sort(jerk[first + peaks])[-2])))
    return taps


def activity_contrast(jerk: np.ndarray, rate_hz: float, intervals: list[tuple[str, float, float]], latest_s: float) -> np.ndarray:
    """For each whole-second origin 0 … latest_s: mean log-activity (log(1 + jerk / 0.25 g/s), per second) over
    the protocol's unlabelled stretches (questionnaires, walking) minus that over its seated conditions (Base,
    Fun, Medi). It peaks within minutes of the true origin (on WESAD 0.5–3 min before the double tap)."""
    seconds = np.floor(np.arange(jerk.size) / rate_hz).astype(np.int64)
    activity = np.log1p(np.bincount(seconds, weights=jerk / ACTIVITY_FLOOR_G_S) / np.bincount(seconds))
    cumulative = np.r_[0.0, np.cumsum(activity)]
    origins = np.arange(int(latest_s) + 1)
    span = int(np.ceil(max(end for _, _, end in intervals)))

    def total_over(blocks: list[tuple[str, float, float]]) -> tuple[np.ndarray, int]:
        total = sum(cumulative[origins + round(end)] - cumulative[origins + round(start)] for _, start, end in blocks)
        return total, sum(round(end) - round(start) for _, start, end in blocks)

    seated, seated_length = total_over([block for block in intervals if block[0] in ("Base", "Fun", "Medi 1", "Medi 2")])
    labelled, labelled_length = total_over([block for block in intervals if QUEST_CONDITIONS[block[0]] > 0])
    unlabelled = cumulative[origins + span] - cumulative[origins] - labelled
    return unlabelled / max(1, span - labelled_length) - seated / max(1, seated_length)


def detect_protocol_origin(acc: np.ndarray, rate_hz: float, intervals: list[tuple[str, float, float]], subject: str) -> float:
    """Protocol start (s after the first ACC sample) from the synchronisation double tap in E4 `ACC.csv` (N, 3).

    Candidates: double taps from `TAP_SEARCH_S[0]` to `TAP_SEARCH_S[1]` seconds after an origin whose
    `activity_contrast` is within 10 % of its maximum, and early enough for the whole protocol to fit in the
    recording. The strongest candidate wins; a candidate at least half as strong up to `TAP_RETRY_S` before it
    is the first try of a repeated tap and wins instead. Raises a ValueError naming the subject and the override
    when there is no candidate.
    """
    jerk = acc_jerk(acc, rate_hz)
    duration_s, protocol_s = acc.shape[0] / rate_hz, max(end for _, _, end in intervals)
    latest = duration_s - protocol_s
    if latest < 0:
        raise ValueError(
            f"wesad {subject}: the protocol in {subject}_quest.csv lasts {protocol_s:g} s, longer than the E4 "
            f"recording ({duration_s:g} s)"
        )
    contrast = activity_contrast(jerk, rate_hz, intervals, latest)
    near = np.flatnonzero(contrast >= contrast.max() - 0.1 * abs(contrast.max()))
    taps = [
        (start, strength)
        for start, strength in double_taps(jerk, rate_hz)
        if start <= latest and ((near >= start - TAP_SEARCH_S[1]) & (near <= start - TAP_SEARCH_S[0])).any()
    ]
    if not taps:
        raise ValueError(
            f"wesad {subject}: no synchronisation double tap found in ACC.csv where the protocol fits the "
            f"recording's activity; give the protocol start with protocol_origin_s={{{subject!r}: seconds after "
            "the E4 start}"
        )
    chosen, strength = max(taps, key=lambda tap: tap[1])
    return min(start for start, other in taps if chosen - TAP_RETRY_S <= start <= chosen and other >= 0.5 * strength)


def respiban_start(path: Path, timezone: str) -> float:
    """Unix time of the RespiBAN recording start: the local "date" / "time" in the JSON header line of the
    OpenSignals file `S<k>_respiban.txt` (`# {"<MAC>": {..., "date": "2017-5-22", "time": "9:39:1.0"}}`)."""
    with open(path, encoding="latin1") as handle:
        header = [handle.readline() for _ in range(3)]
    try:
        device = next(iter(json.loads(header[1].lstrip("# ").strip()).values()))
        day = datetime.date(*(int(part) for part in device["date"].split("-")))
        hours, minutes, seconds = device["time"].split(":")
    except (ValueError, KeyError, TypeError, AttributeError, StopIteration) as error:
        raise ValueError(f"{path}: no OpenSignals JSON header with a 'date' and 'time' on line 2 ({error!r})") from None
    local = datetime.datetime(day.year, day.month, day.day, int(hours), int(minutes), tzinfo=ZoneInfo(timezone))
    return local.timestamp() + float(seconds)


def heart_rate_from_bvp(bvp: np.ndarray, rate_hz: float, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(beat times s, heart rate bpm) from E4 BVP (N,): pulse peaks of the band-passed signal (0.1 s minus
    1.5 s moving averages) at least 0.25 s apart; beats outside `HEART_RATE_BPM` or more than 30 % off the
    median of their 9 neighbours are dropped."""

    def moving_average(values: np.ndarray, seconds: float) -> np.ndarray:
        width = max(1, round(seconds * rate_hz))
        cumulative = np.r_[0.0, np.cumsum(np.pad(values, (width // 2, width - 1 - width // 2), mode="edge"))]
        return (cumulative[width:] - cumulative[:-width]) / width

    pulse = moving_average(bvp, 0.1) - moving_average(bvp, 1.5)
    half = round(0.25 * rate_hz)
    local_max = np.lib.stride_tricks.sliding_window_view(np.pad(pulse, half, mode="edge"), 2 * half + 1).max(axis=1)
    peaks = np.flatnonzero((pulse == local_max) & (pulse > 0))
    peaks = peaks[np.r_[True, np.diff(peaks) > half]]
    times, bpm = peaks[1:] / rate_hz, 60.0 * rate_hz / np.diff(peaks)
    median = np.median(np.lib.stride_tricks.sliding_window_view(np.pad(bpm, 4, mode="edge"), 9), axis=1)
    keep = (bpm >= HEART_RATE_BPM[0]) & (bpm <= HEART_RATE_BPM[1]) & (np.abs(bpm - median) <= 0.3 * median)
    if keep.sum() < 2:
        raise ValueError(f"{where}: fewer than two plausible heart beats found in BVP.csv")
    return times[keep], bpm[keep]


class WesadBuilder(MergeTimeSeriesBuilder):
    """WESAD with the paper's protocol: signals on a 1 Hz grid, windows of 100 steps, stride 25, split by subject
    (S2–S11 train, S13–S14 validation, S15–S17 test).

    Pickles: modalities chest (ACC ×3, ECG, EMG, EDA, Temp, Resp) and wrist (ACC ×3, BVP, EDA, TEMP); six
    classes (labels 5, 6, 7 merged into "other"). E4 source: modalities acc, bvp, eda, temp (+ hr); labels from
    the quest START / END times counted from each subject's protocol origin; five classes. Implausible E4
    samples (`PLAUSIBLE_RANGES`) are interpolated over and counted in `extras["implausible_samples"]`.
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
            return "pickle" if with_pickle and len(with_pickle) == len(subjects) and self.config.allow_pickle else "e4"
        if self.config.source == "pickle" and not self.config.allow_pickle:
            raise ValueError(f"wesad: source='pickle' reads the official S<k>.pkl files, and unpickling runs any code a "
                             f"file holds: pass allow_pickle=True if you trust the files in {root}, or use source='e4'")
        return self.config.source

    def _splits(self, available: list[str]) -> dict[str, list[str]]:
        fold = self.config.loso_fold
        if fold is None:
            return resolve_subject_splits("wesad", available, PROTOCOL_SPLITS, self.config.split_overrides())
        if any(chosen is not None for chosen in self.config.split_overrides().values()):
            raise ValueError("wesad: loso_fold chooses every split; do not combine it with train/validation/test_subjects")
        if not 0 <= fold < len(available):
            raise ValueError(f"wesad: loso_fold must be in 0…{len(available) - 1} ({len(available)} subjects), got {fold}")
        test, validation = available[fold], available[(fold + 1) % len(available)]
        rest = [subject for subject in available if subject not in (test, validation)]
        return {"train": rest, "validation": [validation], "test": [test]}

    def _check_options(self, source: str) -> None:
        config = self.config
        if config.task not in ("paper", *TASK_LABELS):
            raise ValueError(f"wesad: task must be 'paper', 'three_class' or 'binary', got {config.task!r}")
        if source == "pickle" and (config.heart_rate or config.protocol_origin_s):
            raise ValueError("wesad: heart_rate and protocol_origin_s apply to the E4 source (source='e4') only")
        unknown = sorted(set(config.protocol_origin_s or {}) - set(SUBJECTS))
        if unknown:
            raise ValueError(f"wesad: protocol_origin_s names unknown subjects {unknown}; subjects are {SUBJECTS}")

    def _plan(self) -> BuildPlan:
        root = self._wesad_root()
        available = [subject for subject in SUBJECTS if (root / subject).is_dir()]
        splits = self._splits(available)
        chosen = [subject for subjects in splits.values() for subject in subjects]
        source = self._source(root, chosen)
        self._check_options(source)
        for subject in chosen:
            needed = [f"{subject}.pkl"] if source == "pickle" else [f"{subject}_E4_Data.zip", f"{subject}_quest.csv"]
            for name in needed:
                if not (root / subject / name).is_file():
                    unread = (root / subject / f"{subject}.pkl").is_file() and not self.config.allow_pickle
                    raise FileNotFoundError(f"wesad ({source} source): {root / subject / name} is missing" + (
                        f"; {subject}.pkl is there but is read only with allow_pickle=True (unpickling runs any code "
                        "a file holds: only for files you trust)" if unread else ""))
        self._source_kind = source
        metadata = self._pickle_metadata(splits) if source == "pickle" else self._e4_metadata(splits)
        metadata.extras["per_recording_normalize"] = self.config.per_subject_normalize  # read by MergeProcessor
        if source == "e4":
            metadata.extras["protocol_origins"] = {subject: self._protocol_origin(root / subject) for subject in chosen}
            metadata.extras["implausible_samples"] = {}
        units = {split: [root / subject for subject in subjects] for split, subjects in splits.items()}
        return BuildPlan(metadata=metadata, units=units)

    def _grid(self) -> float | None:
        if self.config.target_rate_hz is not None and self.config.target_rate_hz <= 0:
            raise ValueError(f"wesad: target_rate_hz must be positive, got {self.config.target_rate_hz}")
        return self.config.target_rate_hz

    def _window_stride(self) -> tuple[int, int]:
        window = 100 if self.config.window is None else self.config.window
        stride = 25 if self.config.stride is None else self.config.stride
        if window < 1 or stride < 1:
            raise ValueError(f"wesad: window ({window}) and stride ({stride}) must be >= 1 token-grid steps")
        if stride > window:
            logger.warning("wesad: stride %d > window %d leaves %d of every %d steps unused", stride, window, stride - window, stride)
        return window, stride

    def _labels(self, paper_labels: list[str], paper_map: dict[int, int]) -> tuple[list[str], dict[int, int], set[int]]:
        """(label names, raw code → class, ignored raw codes) of the configured task."""
        names, label_to_index = (paper_labels, paper_map) if self.config.task == "paper" else TASK_LABELS[self.config.task]
        return list(names), dict(label_to_index), set(paper_map) - set(label_to_index)

    def _protocol_text(self, source: str, splits: dict[str, list[str]], grid_hz: float, window: int, stride: int) -> str:
        config = self.config
        return (
            f"WESAD {source} source, task {config.task}; signals resampled (interpolated, then mean-downsampled) to a "
            f"{grid_hz:g} Hz grid; windows of {window} steps, stride {stride}, "
            + describe_window_labels(config.label_granularity, "outside the task's classes")
            + ("; every channel z-scored per subject over its own recording" if config.per_subject_normalize else "")
            + "; "
            + describe_splits(splits)
            + (f" (leave-one-subject-out fold {config.loso_fold})" if config.loso_fold is not None else "")
        )

    def _pickle_metadata(self, splits: dict[str, list[str]]) -> DatasetMetadata:
        grid_hz = self._grid()
        if grid_hz is None or (LABEL_RATE_HZ / grid_hz) % 1:
            raise ValueError(f"wesad (pickle source): target_rate_hz must divide 700 Hz, got {grid_hz}")
        window, stride = self._window_stride()
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
            label_names=self._labels(PICKLE_LABELS, PICKLE_LABEL_TO_INDEX)[0],
            label_granularity=self.config.label_granularity,
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
        channel_names = {name: list(columns) for name, (_, columns) in E4_FILES.items()}
        if self.config.heart_rate:
            rates, channel_names["hr"] = {**rates, "hr": grid_hz}, ["bpm"]
        window, stride = self._window_stride()
        return DatasetMetadata(
            name="wesad",
            modalities={name: len(columns) for name, columns in channel_names.items()},
            sampling_rates_hz=rates,
            patch_sizes=patch_sizes,
            token_grid_hz=grid_hz,
            window=window,
            stride=stride,
            label_names=self._labels(E4_LABELS, E4_LABEL_TO_INDEX)[0],
            label_granularity=self.config.label_granularity,
            channel_names=channel_names,
            protocol=self._protocol_text("e4 (wrist only)", splits, grid_hz, window, stride)
            + "; labels from S<k>_quest.csv START/END counted from each subject's protocol origin "
            "(extras.protocol_origins), signals before it dropped; outside Base/TSST/Fun/Medi → transient"
            + ("; hr: heart rate from BVP pulse peaks" if self.config.heart_rate else ""),
        )

    def _protocol_origin(self, subject_dir: Path) -> dict[str, float | str]:
        """{"origin_s": seconds after the E4 start, "method": "override" | "respiban" | "acc_tap"} of one subject."""
        subject = subject_dir.name
        overrides = self.config.protocol_origin_s or {}
        if subject in overrides:
            return {"origin_s": float(overrides[subject]), "method": "override"}
        zip_path = subject_dir / f"{subject}_E4_Data.zip"
        with self._open_zip(zip_path) as archive:
            start, rate, acc = read_e4_csv(archive, "ACC.csv", 3, str(zip_path))
        respiban = subject_dir / f"{subject}_respiban.txt"
        if respiban.is_file():
            return {"origin_s": respiban_start(respiban, self.config.respiban_timezone) - start, "method": "respiban"}
        intervals = parse_quest_times(subject_dir / f"{subject}_quest.csv")
        return {"origin_s": round(detect_protocol_origin(acc, rate, intervals, subject), 3), "method": "acc_tap"}

    @staticmethod
    def _open_zip(zip_path: Path) -> zipfile.ZipFile:
        try:
            return zipfile.ZipFile(zip_path)
        except zipfile.BadZipFile as error:
            raise ValueError(f"{zip_path}: not a readable zip ({error})") from error

    def _unit_examples(self, subject_dir: Path) -> Iterator[Example]:
        subject = subject_dir.name
        if self._source_kind == "pickle":
            signals, labels = self._pickle_signals(subject_dir)
            _, label_to_index, ignored = self._labels(PICKLE_LABELS, PICKLE_LABEL_TO_INDEX)
        else:
            signals, labels = self._e4_signals(subject_dir)
            _, label_to_index, ignored = self._labels(E4_LABELS, E4_LABEL_TO_INDEX)
        if self.config.per_subject_normalize:
            signals = {name: (values - values.mean(axis=0)) / np.maximum(values.std(axis=0), 1e-8) for name, values in signals.items()}
        yield from self._recording_windows(subject, subject, signals, labels, label_to_index, ignored)

    def _pickle_signals(self, subject_dir: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
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
        return {"chest": chest_grid, "wrist": wrist_grid}, labels

    def _e4_signals(self, subject_dir: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
        subject = subject_dir.name
        zip_path = subject_dir / f"{subject}_E4_Data.zip"
        with self._open_zip(zip_path) as archive:
            recordings = {
                name: read_e4_csv(archive, member, len(columns), str(zip_path))
                for name, (member, columns) in E4_FILES.items()
            }
        e4_start = min(start for start, _, _ in recordings.values())
        end_s = min(start - e4_start + values.shape[0] / rate for start, rate, values in recordings.values())
        origin = self._metadata.extras["protocol_origins"][subject]
        intervals = parse_quest_times(subject_dir / f"{subject}_quest.csv")
        first_s, last_s = min(start for _, start, _ in intervals), max(end for _, _, end in intervals)
        if origin["origin_s"] + first_s < 0 or origin["origin_s"] + last_s > end_s:
            raise ValueError(
                f"wesad {subject}: the protocol ({subject}_quest.csv, {first_s:g}–{last_s:g} s) starting "
                f"{origin['origin_s']:g} s after the E4 start (from {origin['method']}) does not lie inside the E4 "
                f"recording (0–{end_s:g} s); correct protocol_origin_s[{subject!r}]"
            )
        metadata = self._metadata
        grid_hz, offset = metadata.token_grid_hz, e4_start + origin["origin_s"]
        steps = int((end_s - origin["origin_s"]) * grid_hz)
        counts, signals = {}, {}
        for name, (start, rate, values) in recordings.items():
            if name in PLAUSIBLE_RANGES:
                values, counts[name] = drop_implausible(values, *PLAUSIBLE_RANGES[name], f"{zip_path}/{E4_FILES[name][0]}")
            patch = metadata.patch_sizes[name]
            signals[name] = resample_to_grid(values, rate, grid_hz * patch, steps * patch, start - offset)
        if self.config.heart_rate:
            start, rate, bvp = recordings["bvp"]
            beats, bpm = heart_rate_from_bvp(bvp[:, 0], rate, f"{zip_path}/BVP.csv")
            signals["hr"] = np.interp((np.arange(steps) + 0.5) / grid_hz, beats + start - offset, bpm)[:, None]
        metadata.extras["implausible_samples"][subject] = counts
        if any(counts.values()):
            logger.info("wesad %s: implausible samples interpolated over: %s", subject, counts)
        self.info.description = metadata.description()
        return signals, quest_labels(intervals, steps, grid_hz)
