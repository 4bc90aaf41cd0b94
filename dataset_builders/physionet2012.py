"""PhysioNet/CinC Challenge 2012: in-hospital death from the first 48 h of an ICU stay (irregular series).

Official download: https://physionet.org/content/challenge-2012/1.0.0/ (`set-a.tar.gz`, `Outcomes-a.txt`;
sets b and c likewise). `data_dir` holds `set-<x>.tar.gz` (read by streaming, never unpacked) or the
unpacked `set-<x>/` folder, and `Outcomes-<x>.txt`.

Also home of the irregular-ICU-series helpers that the MIMIC-IV builder shares: hourly (or finer) mean
binning with forward fill and observation-mask channels, and the stratified random record split.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ._common import (
    SPLITS,
    BuildPlan,
    DatasetMetadata,
    Example,
    MergeBuilderConfig,
    MergeTimeSeriesBuilder,
    bin_irregular_series,
    decode_text,
    observation_means,
    plausible_events,
    resolve_subject_splits,
    stratified_record_splits,
)

logger = logging.getLogger(__name__)

RECORD_HOURS = 48
UNKNOWN_VALUE = -1.0
TIME_SERIES_MODALITIES: dict[str, tuple[str, ...]] = {
    "vitals": (
        "HR", "NISysABP", "NIDiasABP", "NIMAP", "SysABP", "DiasABP", "MAP",
        "RespRate", "SaO2", "Temp", "GCS", "Urine", "Weight",
    ),
    "labs": (
        "ALP", "ALT", "AST", "Albumin", "BUN", "Bilirubin", "Cholesterol", "Creatinine", "Glucose", "HCO3",
        "HCT", "K", "Lactate", "Mg", "Na", "Platelets", "TroponinI", "TroponinT", "WBC",
    ),
    "ventilation": ("MechVent", "FiO2", "PaO2", "PaCO2", "pH"),
}
DESCRIPTORS = ("RecordID", "Age", "Gender", "Height", "ICUType")
ICU_TYPES = ("coronary_care", "cardiac_surgery_recovery", "medical", "surgical")  # ICUType codes 1..4
STATIC_CHANNELS = (
    "age", "age_known", "male", "gender_known", "height", "height_known", *(f"icu_{name}" for name in ICU_TYPES)
)
VARIABLES = tuple(name for names in TIME_SERIES_MODALITIES.values() for name in names)
VARIABLE_INDEX = {name: index for index, name in enumerate(VARIABLES)}
# Physically possible values (units of the challenge files); with `drop_implausible` a value outside counts as
# unobserved. Set A holds, among others, HR / blood pressures / weight / PaO2 of 0, Temp of -17.8 °C, pH 735
# (7.35 without its decimal point) and heights of 1.8 and 13 cm; no value is guessed back into range.
PLAUSIBLE_RANGES = {
    "HR": (1.0, 300.0), "NISysABP": (1.0, 300.0), "NIDiasABP": (1.0, 300.0), "NIMAP": (1.0, 300.0),
    "SysABP": (1.0, 300.0), "DiasABP": (1.0, 300.0), "MAP": (1.0, 300.0), "Temp": (25.0, 45.0),
    "Weight": (20.0, 300.0), "PaO2": (1.0, 800.0), "pH": (6.0, 8.0), "Height": (100.0, 250.0),
}
LABEL_NAMES = ["survived", "died"]


# ------------------------------------------------------------------------------------------- raw files


@dataclass
class IcuRecord:
    """One parsed PhysioNet record: time-series rows (hours since admission, variable index, value) and the
    static descriptors (`None` where unknown)."""

    record_id: str
    hours: np.ndarray
    variables: np.ndarray
    values: np.ndarray
    age: float | None
    gender: float | None
    height: float | None
    icu_type: int | None


def parse_record(text: str, source: str) -> IcuRecord:
    """Parse one `<RecordID>.txt` (`Time,Parameter,Value`, Time as hh:mm since ICU admission).

    -1 marks an unknown value (the challenge's convention): such rows count as unobserved. Errors name
    `source` and the line.
    """
    lines = text.splitlines()
    if not lines or lines[0].strip() != "Time,Parameter,Value":
        raise ValueError(f"{source}: expected the header 'Time,Parameter,Value', got {lines[:1]}")
    hours, variables, values = [], [], []
    descriptors: dict[str, float] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split(",")
        if len(fields) != 3:
            raise ValueError(f"{source}:{number}: expected 3 fields Time,Parameter,Value, got {line!r}")
        time_text, parameter, value_text = fields
        try:
            hour_text, minute_text = time_text.split(":")
            hour = int(hour_text) + int(minute_text) / 60.0
            value = float(value_text)
        except ValueError:
            raise ValueError(f"{source}:{number}: malformed time or value in {line!r}") from None
        if not np.isfinite(value):
            raise ValueError(f"{source}:{number}: value {value_text!r} of {parameter} is not a finite number")
        if parameter in DESCRIPTORS:
            descriptors.setdefault(parameter, value)
        elif parameter in VARIABLE_INDEX:
            if value != UNKNOWN_VALUE:
                hours.append(hour)
                variables.append(VARIABLE_INDEX[parameter])
                values.append(value)
        else:
            raise ValueError(f"{source}:{number}: unknown parameter {parameter!r} (known: {DESCRIPTORS + VARIABLES})")
    record_id = Path(source).stem
    if "RecordID" in descriptors and str(int(descriptors["RecordID"])) != record_id:
        raise ValueError(f"{source}: RecordID {int(descriptors['RecordID'])} does not match the file name")

    def known(name: str) -> float | None:
        value = descriptors.get(name, UNKNOWN_VALUE)
        return None if value == UNKNOWN_VALUE else value

    icu_type = known("ICUType")
    if icu_type is not None and int(icu_type) not in range(1, len(ICU_TYPES) + 1):
        raise ValueError(f"{source}: ICUType {icu_type} is not one of 1..{len(ICU_TYPES)}")
    return IcuRecord(
        record_id=record_id,
        hours=np.asarray(hours, dtype=np.float64),
        variables=np.asarray(variables, dtype=np.int64),
        values=np.asarray(values, dtype=np.float64),
        age=known("Age"),
        gender=known("Gender"),
        height=known("Height"),
        icu_type=None if icu_type is None else int(icu_type),
    )


def read_outcomes(path: Path) -> dict[str, int]:
    """`Outcomes-<x>.txt` → RecordID → In-hospital_death (0 / 1), in file order. The file may be UTF-8 with or
    without a byte-order mark or UTF-16 with one (as a spreadsheet program saves it); other bytes are an error
    naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"physionet2012: outcomes file {str(path)!r} not found")
    with io.StringIO(decode_text(path.read_bytes(), str(path)), newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"RecordID", "In-hospital_death"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)} (found {reader.fieldnames})")
        outcomes = {}
        for number, row in enumerate(reader, start=2):
            record, death = (row["RecordID"] or "").strip(), (row["In-hospital_death"] or "").strip()
            if not record or death not in ("0", "1"):
                raise ValueError(f"{path}:{number}: In-hospital_death must be 0 or 1 for a RecordID, got {row}")
            if record in outcomes:
                raise ValueError(f"{path}:{number}: RecordID {record} appears twice")
            outcomes[record] = int(death)
    return outcomes


def drop_implausible_values(records) -> dict[str, int]:
    """Remove every time-series value outside `PLAUSIBLE_RANGES` from the `IcuRecord`s (in place; the row counts as
    unobserved) and forget implausible heights; returns how many values of each ranged variable were dropped."""
    dropped = Counter(dict.fromkeys([*(name for name in PLAUSIBLE_RANGES if name in VARIABLE_INDEX), "Height"], 0))
    height_low, height_high = PLAUSIBLE_RANGES["Height"]
    for record in records:
        keep, counts = plausible_events(record.variables, record.values, VARIABLES, PLAUSIBLE_RANGES)
        record.hours, record.variables, record.values = record.hours[keep], record.variables[keep], record.values[keep]
        dropped.update(counts)
        if record.height is not None and not height_low <= record.height <= height_high:
            record.height = None
            dropped["Height"] += 1
    return dict(dropped)


# what tarfile raises on a truncated or corrupt .tar.gz
DAMAGED_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


class RecordArchive:
    """The `set-<x>` records, from `set-<x>.tar.gz` (streamed) or from the unpacked `set-<x>/` folder."""

    def __init__(self, data_dir: Path, set_name: str):
        self.folder = data_dir / f"set-{set_name}"
        self.archive = data_dir / f"set-{set_name}.tar.gz"
        if not self.folder.is_dir() and not self.archive.is_file():
            raise FileNotFoundError(
                f"physionet2012: neither {str(self.archive)!r} nor the folder {str(self.folder)!r} exists"
            )

    def record_ids(self) -> set[str]:
        if self.folder.is_dir():
            return {path.stem for path in self.folder.glob("*.txt")}
        try:
            with tarfile.open(self.archive, "r:gz") as archive:
                return {Path(name).stem for name in archive.getnames() if name.endswith(".txt")}
        except DAMAGED_ARCHIVE_ERRORS as error:
            raise self._damaged(error) from error

    def texts(self, wanted: set[str]) -> Iterator[tuple[str, str]]:
        """(source name, text) of every wanted record, streaming through the archive once."""
        if self.folder.is_dir():
            for record in sorted(wanted):
                path = self.folder / f"{record}.txt"
                yield str(path), decode_text(path.read_bytes(), str(path))
            return
        try:
            with tarfile.open(self.archive, "r:gz") as archive:
                for member in archive:
                    if member.isfile() and Path(member.name).stem in wanted and member.name.endswith(".txt"):
                        source = f"{self.archive.name}:{member.name}"
                        yield source, decode_text(archive.extractfile(member).read(), source)
        except DAMAGED_ARCHIVE_ERRORS as error:
            raise self._damaged(error) from error

    def _damaged(self, error: Exception) -> ValueError:
        return ValueError(
            f"physionet2012: {self.archive} is truncated or corrupt ({type(error).__name__}: {error}); download it "
            f"again, or unpack a good copy into {self.folder}/"
        )


# ---------------------------------------------------------------------------------------------- builder


@dataclass
class PhysioNet2012Config(MergeBuilderConfig):
    """set_name: a, b or c. max_records: a seeded random subset of the outcome rows (None = all).
    bin_minutes: token-grid step; window (token steps) defaults to the whole 48 h. seed: subset and split.
    train_fraction / validation_fraction: the stratified random record split (rest = test).
    *_subjects: record ids per split, overriding the random split."""

    set_name: str = "a"
    max_records: int | None = None
    bin_minutes: int = 60
    seed: int = 0
    train_fraction: float = 0.7
    validation_fraction: float = 0.15
    drop_implausible: bool = True
    """Values outside `PLAUSIBLE_RANGES` (e.g. HR 0, pH 735, Temp -17.8 °C, Height 13 cm) count as unobserved;
    how many per variable is in `extras["implausible_values"]`. False keeps every value as recorded."""


class PhysioNet2012Builder(MergeTimeSeriesBuilder):
    """PhysioNet/CinC 2012 in-hospital death: vitals, labs, ventilation and static descriptors per ICU stay.

    Download: https://physionet.org/content/challenge-2012/1.0.0/ (set-a.tar.gz + Outcomes-a.txt).
    """

    BUILDER_CONFIG_CLASS = PhysioNet2012Config
    BUILDER_CONFIGS = [PhysioNet2012Config(name="default")]

    def _plan(self) -> BuildPlan:
        config: PhysioNet2012Config = self.config
        if config.bin_minutes < 1 or (RECORD_HOURS * 60) % config.bin_minutes:
            raise ValueError(f"physionet2012: bin_minutes={config.bin_minutes} must divide {RECORD_HOURS * 60}")
        bins_per_record = RECORD_HOURS * 60 // config.bin_minutes
        window = config.window or bins_per_record
        if window > bins_per_record:
            raise ValueError(
                f"physionet2012: window of {window} × {config.bin_minutes} min is longer than the "
                f"{RECORD_HOURS} h each record covers"
            )
        outcomes = read_outcomes(self.data_path / f"Outcomes-{config.set_name}.txt")
        archive = RecordArchive(self.data_path, config.set_name)
        available = archive.record_ids()
        skipped = {
            record: f"listed in Outcomes-{config.set_name}.txt but set-{config.set_name} has no {record}.txt"
            for record in outcomes
            if record not in available
        }
        present = [record for record in outcomes if record in available]
        if config.max_records is not None:
            if config.max_records < 3:
                raise ValueError(f"physionet2012: max_records={config.max_records} cannot fill three splits")
            order = np.random.default_rng(config.seed).permutation(len(present))[: config.max_records]
            present = [present[index] for index in sorted(order)]
        defaults = stratified_record_splits(
            present, [outcomes[record] for record in present], (config.train_fraction, config.validation_fraction), config.seed
        )
        units = resolve_subject_splits("physionet2012", present, defaults, config.split_overrides())
        chosen = {record for split in SPLITS for record in units[split]}
        self._records = {
            parsed.record_id: parsed
            for parsed in (
                parse_record(text, source)
                for source, text in tqdm(archive.texts(chosen), total=len(chosen), desc="physionet2012 records")
            )
        }
        implausible = drop_implausible_values(self._records.values()) if config.drop_implausible else {}
        self._labels = outcomes
        self._window = window
        self._bin_hours = config.bin_minutes / 60.0
        train = [self._records[record] for record in units["train"]]
        self._fill_values = observation_means([(record.variables, record.values) for record in train], len(VARIABLES))
        self._static_fill = {
            name: float(np.mean(known)) if (known := [getattr(r, name) for r in train if getattr(r, name) is not None]) else 0.0
            for name in ("age", "gender", "height")
        }
        token_grid_hz = 1.0 / (config.bin_minutes * 60.0)
        modalities = {name: 2 * len(variables) for name, variables in TIME_SERIES_MODALITIES.items()}
        modalities["static"] = len(STATIC_CHANNELS)
        channel_names = {
            name: [*variables, *(f"{variable}_observed" for variable in variables)]
            for name, variables in TIME_SERIES_MODALITIES.items()
        }
        channel_names["static"] = list(STATIC_CHANNELS)
        metadata = DatasetMetadata(
            name="physionet2012",
            modalities=modalities,
            sampling_rates_hz={name: token_grid_hz for name in modalities},
            token_grid_hz=token_grid_hz,
            window=window,
            stride=window,
            label_names=list(LABEL_NAMES),
            channel_names=channel_names,
            has_modality_mask=True,
            protocol=(
                f"PhysioNet/CinC 2012 set {config.set_name}, in-hospital death. One example per ICU stay: the first "
                f"{window * config.bin_minutes / 60:g} h on a {config.bin_minutes}-min grid. The 37 irregular "
                "variables form vitals, labs and ventilation; each channel is its bin's mean, carried forward, "
                "back-filled before its first observation and set to the training mean when a stay never "
                "observes it, plus one 0/1 observation-mask channel per variable. -1 (unknown) values count as "
                f"unobserved{', and so do values outside PLAUSIBLE_RANGES' if config.drop_implausible else ''}; "
                "values are otherwise as recorded. 'static' repeats age, gender, height (with known "
                "flags; unknown = training mean) and a one-hot ICU type (all zero when absent) at every step. "
                "A modality with no observation in the window has modality_mask False. Records: "
                f"{'all' if config.max_records is None else f'a seeded random {config.max_records}'} outcome rows "
                f"that have a record file (rows without one are skipped and listed); stratified random "
                f"{config.train_fraction:g}/{config.validation_fraction:g}/rest split of records (seed "
                f"{config.seed}); per-channel mean/std from the training split applied to every split."
            ),
        )
        if config.drop_implausible:
            metadata.extras["implausible_values"] = implausible
        return BuildPlan(metadata=metadata, units=units, skipped=skipped)

    def _unit_examples(self, unit: str) -> Iterator[Example]:
        record = self._records[unit]
        grid = bin_irregular_series(
            record.hours, record.variables, record.values, len(VARIABLES), self._window, self._bin_hours, self._fill_values
        )
        values, observed = grid[:, : len(VARIABLES)], grid[:, len(VARIABLES) :]
        modalities, mask, start = {}, [], 0
        for name, variables in TIME_SERIES_MODALITIES.items():
            columns = slice(start, start + len(variables))
            modalities[name] = np.concatenate([values[:, columns], observed[:, columns]], axis=1)
            mask.append(bool(observed[:, columns].any()))
            start += len(variables)
        modalities["static"] = np.broadcast_to(self._static_row(record), (self._window, len(STATIC_CHANNELS))).copy()
        mask.append(True)
        yield Example(key=unit, modalities=modalities, label=self._labels[unit], subject=unit, modality_mask=mask)

    def _static_row(self, record: IcuRecord) -> np.ndarray:
        """(len(STATIC_CHANNELS),): age, known, male, known, height, known, one-hot ICU type."""
        row = []
        for name in ("age", "gender", "height"):
            value = getattr(record, name)
            row += [self._static_fill[name] if value is None else value, float(value is not None)]
        icu = [0.0] * len(ICU_TYPES)
        if record.icu_type is not None:
            icu[record.icu_type - 1] = 1.0
        return np.asarray(row + icu)

