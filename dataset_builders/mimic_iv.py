"""MIMIC-IV ICU tasks (FuseMoE / MERGE protocol): in-hospital mortality (IHM) and length of stay (LOS) from the
first 48 h of an ICU stay; labs + vitals, with optional precomputed note and chest-X-ray embeddings.

Official download (credentialed, PhysioNet): https://physionet.org/content/mimiciv/ (v2.x: `hosp/`, `icu/`
CSV.gz), notes https://physionet.org/content/mimic-iv-note/ and images https://physionet.org/content/mimic-cxr-jpg/.
Notes and images enter as embedding files that the user computes (the paper: BioBERT on radiology notes, a
CheXpert DenseNet121 on images): an `.npz` with `stay_id` (N,) int, `charttime` (N,) ISO datetime strings and
`embedding` (N, D) float, one row per note / image.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ._common import (
    BuildPlan,
    DatasetMetadata,
    Example,
    MergeBuilderConfig,
    MergeTimeSeriesBuilder,
    bin_irregular_series,
    observation_means,
    plausible_events,
    resolve_subject_splits,
    stratified_record_splits,
)

STAY_HOURS = 48
LOS_HOURS = 96
# hosp/labevents itemids (d_labitems) of the 22 labs and icu/chartevents itemids (d_items) of the 9 vitals.
LAB_ITEMS = {
    "anion_gap": 50868, "albumin": 50862, "bicarbonate": 50882, "bilirubin_total": 50885, "calcium_total": 50893,
    "chloride": 50902, "creatinine": 50912, "glucose": 50931, "magnesium": 50960, "phosphate": 50970,
    "potassium": 50971, "sodium": 50983, "urea_nitrogen": 51006, "hematocrit": 51221, "hemoglobin": 51222,
    "inr": 51237, "platelets": 51265, "pt": 51274, "ptt": 51275, "wbc": 51301, "lactate": 50813, "ph": 50820,
}
VITAL_ITEMS = {
    "heart_rate": 220045, "nibp_systolic": 220179, "nibp_diastolic": 220180, "nibp_mean": 220181,
    "respiratory_rate": 220210, "spo2": 220277, "gcs_eye": 220739, "gcs_verbal": 223900, "gcs_motor": 223901,
}
# Physically possible values by variable name (labevents / chartevents `valuenum` units: bpm, mmHg, breaths/min, %,
# GCS points, pH units, mEq/L, mg/dL); with `drop_implausible` an event outside counts as unobserved. The bounds lie
# beyond values reported in living patients (survivals with pH near 6.3, sodium above 250 mEq/L, glucose above
# 2600 mg/dL), so only device zeros, mis-keyed entries and unit slips go. Variables not listed are not checked.
PLAUSIBLE_RANGES = {
    "heart_rate": (1.0, 300.0), "nibp_systolic": (1.0, 300.0), "nibp_diastolic": (1.0, 300.0), "nibp_mean": (1.0, 300.0),
    "respiratory_rate": (0.0, 100.0), "spo2": (0.0, 100.0), "gcs_eye": (1.0, 4.0), "gcs_verbal": (1.0, 5.0),
    "gcs_motor": (1.0, 6.0), "ph": (6.0, 8.0), "potassium": (0.5, 15.0), "sodium": (50.0, 300.0),
    "hematocrit": (1.0, 90.0), "glucose": (1.0, 3000.0),
}
TASK_LABELS = {"ihm": ["survived", "died"], "los": ["long_stay_or_died", "short_stay_survived"]}
EVENT_CHUNK_ROWS = 2_000_000


def read_table(path: Path, columns: list[str], **read_options) -> pd.DataFrame:
    """A MIMIC-IV CSV.gz with the `columns` it must have (clear errors naming the file and column)."""
    if not path.is_file():
        raise FileNotFoundError(f"mimic_iv: {str(path)!r} not found (expected the MIMIC-IV v2.x hosp/ and icu/ CSV.gz files)")
    header = pd.read_csv(path, nrows=0).columns
    missing = [column for column in columns if column not in header]
    if missing:
        raise ValueError(f"mimic_iv: {path} lacks columns {missing} (has {list(header)})")
    return pd.read_csv(path, usecols=columns, **read_options)


def parse_times(values: pd.Series, what: str) -> pd.Series:
    try:
        return pd.to_datetime(values, format="ISO8601")
    except (ValueError, TypeError) as error:
        raise ValueError(f"mimic_iv: {what}: malformed date-time ({error})") from None


def read_events(path: Path, key: str, keys: set[int], items: dict[int, int]) -> pd.DataFrame:
    """Rows of an events table (`labevents` keyed by hadm_id, `chartevents` by stay_id) for `keys` and the
    itemids in `items` (itemid → variable index), read in chunks: columns key, charttime, variable, value."""
    chunks = []
    reader = read_table(path, [key, "itemid", "charttime", "valuenum"], chunksize=EVENT_CHUNK_ROWS)
    for chunk in tqdm(reader, desc=f"mimic_iv {path.name}", unit="chunk"):
        chunk = chunk[chunk["itemid"].isin(items.keys()) & chunk[key].isin(keys) & chunk["valuenum"].notna()]
        chunks.append(
            pd.DataFrame({
                key: chunk[key].astype(np.int64),
                "charttime": parse_times(chunk["charttime"], path.name),
                "variable": chunk["itemid"].map(items).astype(np.int64),
                "value": chunk["valuenum"].astype(np.float64),
            })
        )
    return pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame(columns=[key, "charttime", "variable", "value"])


def drop_implausible_events(events: pd.DataFrame, variables: list[str]) -> tuple[pd.DataFrame, dict[str, int]]:
    """`events` (columns `variable`: index into `variables`, `value`) without the values outside `PLAUSIBLE_RANGES`,
    and how many of each ranged variable were dropped."""
    keep, dropped = plausible_events(events["variable"].to_numpy(dtype=np.int64), events["value"].to_numpy(dtype=np.float64),
                                     variables, PLAUSIBLE_RANGES)
    return events[keep], dropped


def read_embeddings(path: Path, stays: pd.DataFrame) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], int]:
    """Embedding file → stay_id → (hours since ICU admission (n,), embeddings (n, D)) and D."""
    if not path.is_file():
        raise FileNotFoundError(f"mimic_iv: embedding file {str(path)!r} not found")
    with np.load(path, allow_pickle=False) as archive:
        missing = [name for name in ("stay_id", "charttime", "embedding") if name not in archive]
        if missing:
            raise ValueError(f"mimic_iv: {path} lacks arrays {missing} (has {list(archive.keys())})")
        stay_ids, times, embeddings = archive["stay_id"], archive["charttime"], archive["embedding"]
    if embeddings.ndim != 2 or not len(stay_ids) == len(times) == len(embeddings):
        raise ValueError(
            f"mimic_iv: {path}: stay_id {stay_ids.shape}, charttime {times.shape} and embedding {embeddings.shape} "
            "must be (N,), (N,) and (N, D)"
        )
    if not np.isfinite(embeddings).all():
        raise ValueError(f"mimic_iv: {path}: embedding holds NaN or inf values")
    frame = pd.DataFrame({"stay_id": stay_ids.astype(np.int64), "charttime": parse_times(pd.Series(times.astype(str)), path.name)})
    frame["row"] = np.arange(len(frame))
    frame = frame.merge(stays[["stay_id", "intime"]], on="stay_id")
    frame["hours"] = (frame["charttime"] - frame["intime"]).dt.total_seconds() / 3600.0
    by_stay = {
        int(stay): (group["hours"].to_numpy(), embeddings[group["row"].to_numpy()].astype(np.float64))
        for stay, group in frame.groupby("stay_id")
    }
    return by_stay, embeddings.shape[1]


@dataclass
class MimicIVConfig(MergeBuilderConfig):
    """task: "ihm" (in-hospital death) or "los" (ICU stay < 96 h and survived). bin_minutes: token-grid step
    (window defaults to the 48 h). notes_file / cxr_file: embedding `.npz` files inside data_dir (None = no
    such modality). max_stays: a seeded random subset of the cohort. seed, train_fraction,
    validation_fraction: the stratified random stay split (rest = test); *_subjects: stay ids per split."""

    task: str = "ihm"
    bin_minutes: int = 60
    notes_file: str | None = None
    cxr_file: str | None = None
    max_stays: int | None = None
    seed: int = 0
    train_fraction: float = 0.7
    validation_fraction: float = 0.15
    lab_items: dict[str, int] = field(default_factory=lambda: dict(LAB_ITEMS))
    vital_items: dict[str, int] = field(default_factory=lambda: dict(VITAL_ITEMS))
    drop_implausible: bool = True
    """Lab and vital values outside `PLAUSIBLE_RANGES` (e.g. heart rate 0, pH 73.5, SpO2 150 %) count as unobserved;
    how many per variable in the first 48 h of the cohort's stays is in `extras["implausible_values"]`. False keeps
    every value as recorded."""


class MimicIVBuilder(MergeTimeSeriesBuilder):
    """MIMIC-IV IHM / LOS: labs_vitals (+ notes, cxr embeddings with presence masks), first 48 h of ICU stays.

    Download (credentialed): https://physionet.org/content/mimiciv/
    """

    BUILDER_CONFIG_CLASS = MimicIVConfig
    BUILDER_CONFIGS = [MimicIVConfig(name="default")]

    def _plan(self) -> BuildPlan:
        config: MimicIVConfig = self.config
        if config.task not in TASK_LABELS:
            raise ValueError(f"mimic_iv: task {config.task!r} is not one of {sorted(TASK_LABELS)}")
        if config.bin_minutes < 1 or (STAY_HOURS * 60) % config.bin_minutes:
            raise ValueError(f"mimic_iv: bin_minutes={config.bin_minutes} must divide {STAY_HOURS * 60}")
        bins = STAY_HOURS * 60 // config.bin_minutes
        window = config.window or bins
        if window > bins:
            raise ValueError(f"mimic_iv: window of {window} × {config.bin_minutes} min is longer than the {STAY_HOURS} h used")
        root = self.data_path
        stays = read_table(root / "icu" / "icustays.csv.gz", ["hadm_id", "stay_id", "intime", "los"])
        admissions = read_table(root / "hosp" / "admissions.csv.gz", ["hadm_id", "hospital_expire_flag"])
        stays["intime"] = parse_times(stays["intime"], "icustays.csv.gz intime")
        unknown_flags = sorted(set(admissions["hospital_expire_flag"].dropna().unique()) - {0, 1})
        if unknown_flags:
            raise ValueError(f"mimic_iv: admissions.csv.gz hospital_expire_flag has values {unknown_flags}, expected 0 / 1")
        stays = stays.merge(admissions, on="hadm_id", how="left")
        without_admission = stays["hospital_expire_flag"].isna()
        skipped = {str(stay): "no admissions.csv.gz row for its hadm_id" for stay in stays.loc[without_admission, "stay_id"]}
        short = stays["los"].isna() | (stays["los"] * 24 < STAY_HOURS)
        cohort = stays[~without_admission & ~short].reset_index(drop=True)
        died = cohort["hospital_expire_flag"].astype(int)
        cohort["label"] = died if config.task == "ihm" else ((cohort["los"] * 24 < LOS_HOURS) & (died == 0)).astype(int)
        if config.max_stays is not None:
            cohort = cohort.iloc[np.sort(np.random.default_rng(config.seed).permutation(len(cohort))[: config.max_stays])]
        if cohort.empty:
            raise ValueError(f"mimic_iv: no ICU stay of at least {STAY_HOURS} h with an admission row in {root}")
        stay_ids = [str(stay) for stay in cohort["stay_id"]]
        defaults = stratified_record_splits(
            stay_ids, cohort["label"].tolist(), (config.train_fraction, config.validation_fraction), config.seed
        )
        units = resolve_subject_splits("mimic_iv", stay_ids, defaults, config.split_overrides())

        variables = [*config.lab_items, *config.vital_items]
        labs = read_events(
            root / "hosp" / "labevents.csv.gz", "hadm_id", set(cohort["hadm_id"]),
            {itemid: index for index, itemid in enumerate(config.lab_items.values())},
        ).merge(cohort[["hadm_id", "stay_id", "intime"]], on="hadm_id")
        vitals = read_events(
            root / "icu" / "chartevents.csv.gz", "stay_id", set(cohort["stay_id"]),
            {itemid: len(config.lab_items) + index for index, itemid in enumerate(config.vital_items.values())},
        ).merge(cohort[["stay_id", "intime"]], on="stay_id")
        events = pd.concat([labs.drop(columns="hadm_id"), vitals], ignore_index=True)
        events["hours"] = (events["charttime"] - events["intime"]).dt.total_seconds() / 3600.0
        events = events[(events["hours"] >= 0) & (events["hours"] <= STAY_HOURS)]
        events, implausible = drop_implausible_events(events, variables) if config.drop_implausible else (events, {})
        self._events = {
            str(stay): (group["hours"].to_numpy(), group["variable"].to_numpy(), group["value"].to_numpy())
            for stay, group in events.groupby("stay_id")
        }
        self._labels = dict(zip(stay_ids, cohort["label"].astype(int)))
        train_events = [self._events[stay][1:] for stay in units["train"] if stay in self._events]
        self._fill_values = observation_means(train_events, len(variables))
        self._num_variables, self._window, self._bin_hours = len(variables), window, config.bin_minutes / 60.0

        modalities = {"labs_vitals": 2 * len(variables)}
        channel_names = {"labs_vitals": [*variables, *(f"{name}_observed" for name in variables)]}
        self._embeddings = {}
        for name, file_name in (("notes", config.notes_file), ("cxr", config.cxr_file)):
            if file_name is not None:
                by_stay, dimension = read_embeddings(root / file_name, cohort)
                self._embeddings[name] = (by_stay, dimension)
                modalities[name] = dimension + 1
                channel_names[name] = [*(f"e{index}" for index in range(dimension)), "observed"]
        token_grid_hz = 1.0 / (config.bin_minutes * 60.0)
        metadata = DatasetMetadata(
            name="mimic_iv",
            modalities=modalities,
            sampling_rates_hz={name: token_grid_hz for name in modalities},
            token_grid_hz=token_grid_hz,
            window=window,
            stride=window,
            label_names=list(TASK_LABELS[config.task]),
            channel_names=channel_names,
            has_modality_mask=True,
            protocol=(
                f"MIMIC-IV {config.task.upper()} ({'in-hospital death' if config.task == 'ihm' else f'ICU stay < {LOS_HOURS} h and survived'}). "
                f"ICU stays of at least {STAY_HOURS} h ({int(short.sum())} shorter stays excluded); one example per stay: "
                f"the first {window * config.bin_minutes / 60:g} h on a {config.bin_minutes}-min grid. labs_vitals: "
                f"{len(config.lab_items)} labs (labevents via hadm_id) and {len(config.vital_items)} vitals (chartevents); "
                "each channel is its bin's mean, carried forward, back-filled before its first observation and set to "
                "the training mean when a stay never observes it, plus a 0/1 observation mask per variable"
                f"{'; values outside PLAUSIBLE_RANGES count as unobserved' if config.drop_implausible else ''}. notes / "
                "cxr (when given): the bin's mean embedding carried forward (zeros before the first) plus an observed "
                "channel; a stay with none in the window has modality_mask False. "
                f"{'All stays' if config.max_stays is None else f'A seeded random {config.max_stays} stays'}; stratified "
                f"random {config.train_fraction:g}/{config.validation_fraction:g}/rest split of stays (seed {config.seed}); "
                "scaler (per-channel mean/std) fit on train and applied to every split."
            ),
        )
        if config.drop_implausible:
            metadata.extras["implausible_values"] = implausible
        return BuildPlan(metadata=metadata, units=units, skipped=skipped)

    def _unit_examples(self, unit: str) -> Iterator[Example]:
        empty = (np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0))
        hours, variables, values = self._events.get(unit, empty)
        modalities = {
            "labs_vitals": bin_irregular_series(
                hours, variables, values, self._num_variables, self._window, self._bin_hours, self._fill_values
            )
        }
        mask = [bool(hours.size)]
        for name, (by_stay, dimension) in self._embeddings.items():
            times, embeddings = by_stay.get(int(unit), (np.zeros(0), np.zeros((0, dimension))))
            grid = bin_irregular_series(
                np.repeat(times, dimension),
                np.tile(np.arange(dimension), len(times)),
                embeddings.ravel(),
                dimension,
                self._window,
                self._bin_hours,
                np.zeros(dimension),
            )
            observed = grid[:, dimension : dimension + 1]
            first = int(observed[:, 0].argmax()) if observed.any() else self._window
            grid[:first, :dimension] = 0.0
            modalities[name] = np.concatenate([grid[:, :dimension], observed], axis=1)
            mask.append(bool(observed.any()))
        yield Example(key=unit, modalities=modalities, label=self._labels[unit], subject=unit, modality_mask=mask)
