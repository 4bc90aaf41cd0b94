"""MIMIC-IV builder on fixture CSV.gz files in the v2.x `hosp/` + `icu/` layout, with note / CXR embedding files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dataset_builders import BUILDERS, build, metadata_of
from builder_fixtures import forward_through_merge
from dataset_builders.mimic_iv import LAB_ITEMS, PLAUSIBLE_RANGES, VITAL_ITEMS

NUM_STAYS = 22  # stays 20 and 21 last < 48 h
START = pd.Timestamp("2150-01-01 08:00:00")
CREATININE, HEART_RATE = list(LAB_ITEMS).index("creatinine"), len(LAB_ITEMS) + list(VITAL_ITEMS).index("heart_rate")
CHANNELS = len(LAB_ITEMS) + len(VITAL_ITEMS)


def stay_los_days(index: int) -> float:
    return 1.5 if index >= 20 else 2.5 + (index % 8) * 0.5


def died(index: int) -> bool:
    return index % 4 == 0


def when(index: int, hours: float) -> str:
    return str(START + pd.Timedelta(days=index) + pd.Timedelta(hours=hours))


def write_csv_gz(path: Path, rows: list[dict], columns: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False, compression="gzip")


def write_mimic_fixture(root: Path) -> Path:
    """hosp/patients, hosp/admissions, hosp/labevents, icu/icustays, icu/chartevents (v2.2 columns)."""
    patients, admissions, stays, labs, charts = [], [], [], [], []
    for index in range(NUM_STAYS):
        subject, hadm, stay = 10000 + index, 20000 + index, 30000 + index
        los = stay_los_days(index)
        patients.append(dict(subject_id=subject, gender="F", anchor_age=60, anchor_year=2150, anchor_year_group="2017 - 2019"))
        admissions.append(dict(
            subject_id=subject, hadm_id=hadm, admittime=when(index, -3), dischtime=when(index, 24 * los + 5),
            deathtime=when(index, 24 * los + 5) if died(index) else "", admission_type="EW EMER.",
            admission_location="EMERGENCY ROOM", insurance="Other", race="WHITE",
            hospital_expire_flag=int(died(index)),
        ))
        stays.append(dict(
            subject_id=subject, hadm_id=hadm, stay_id=stay, first_careunit="Medical Intensive Care Unit (MICU)",
            last_careunit="Medical Intensive Care Unit (MICU)", intime=when(index, 0), outtime=when(index, 24 * los), los=los,
        ))
        for hours, value in ((2.5, index + 1.0), (-5.0, 999.0)):  # the second is before ICU admission
            labs.append(dict(
                labevent_id=len(labs), subject_id=subject, hadm_id=hadm, specimen_id=len(labs), itemid=LAB_ITEMS["creatinine"],
                charttime=when(index, hours), storetime=when(index, hours + 1), value=str(value), valuenum=value, valueuom="mg/dL",
            ))
        labs.append(dict(labevent_id=len(labs), subject_id=subject, hadm_id=None, specimen_id=len(labs),
                         itemid=LAB_ITEMS["sodium"], charttime=when(index, 3), value="140", valuenum=140.0))
        for hours in range(0, 48, 4):
            charts.append(dict(subject_id=subject, hadm_id=hadm, stay_id=stay, caregiver_id=1, charttime=when(index, hours + 0.25),
                               storetime=when(index, hours + 0.5), itemid=VITAL_ITEMS["heart_rate"], value=str(70 + index),
                               valuenum=70.0 + index, valueuom="bpm"))
        charts.append(dict(subject_id=subject, hadm_id=hadm, stay_id=stay, charttime=when(index, 50), itemid=VITAL_ITEMS["heart_rate"],
                           value="999", valuenum=999.0))
        charts.append(dict(subject_id=subject, hadm_id=hadm, stay_id=stay, charttime=when(index, 1), itemid=220050,
                           value="120", valuenum=120.0))  # arterial BP: not one of the nine vitals
    write_csv_gz(root / "hosp" / "patients.csv.gz", patients, ["subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod"])
    write_csv_gz(root / "hosp" / "admissions.csv.gz", admissions, [
        "subject_id", "hadm_id", "admittime", "dischtime", "deathtime", "admission_type", "admit_provider_id",
        "admission_location", "discharge_location", "insurance", "language", "marital_status", "race", "edregtime",
        "edouttime", "hospital_expire_flag"])
    write_csv_gz(root / "hosp" / "labevents.csv.gz", labs, [
        "labevent_id", "subject_id", "hadm_id", "specimen_id", "itemid", "order_provider_id", "charttime", "storetime",
        "value", "valuenum", "valueuom", "ref_range_lower", "ref_range_upper", "flag", "priority", "comments"])
    write_csv_gz(root / "icu" / "icustays.csv.gz", stays, [
        "subject_id", "hadm_id", "stay_id", "first_careunit", "last_careunit", "intime", "outtime", "los"])
    write_csv_gz(root / "icu" / "chartevents.csv.gz", charts, [
        "subject_id", "hadm_id", "stay_id", "caregiver_id", "charttime", "storetime", "itemid", "value", "valuenum",
        "valueuom", "warning"])
    return root


def write_embeddings(path: Path, rows: list[tuple[int, float, list[float]]]) -> None:
    """(stay index, hours since ICU admission, embedding) rows → the .npz embedding-file layout."""
    np.savez(
        path,
        stay_id=np.array([30000 + index for index, _, _ in rows]),
        charttime=np.array([when(index, hours) for index, hours, _ in rows]),
        embedding=np.array([vector for _, _, vector in rows], dtype=np.float32),
    )


@pytest.fixture(scope="module")
def mimic_dir(tmp_path_factory):
    root = write_mimic_fixture(tmp_path_factory.mktemp("mimic"))
    notes = [(index, 10.0, [float(index), -float(index), 1.0]) for index in range(0, 20, 2)] + [(0, 30.0, [5.0, 5.0, 5.0])]
    write_embeddings(root / "notes.npz", notes)
    write_embeddings(root / "cxr.npz", [(index, 1.0, [1.0, 2.0]) for index in range(0, 20, 3)])
    return root


@pytest.fixture(scope="module")
def ihm(mimic_dir, tmp_path_factory):
    return build("mimic_iv", data_dir=str(mimic_dir), cache_dir=str(tmp_path_factory.mktemp("cache")),
                 notes_file="notes.npz", cxr_file="cxr.npz", normalize=False)


def rows_by_stay(built) -> dict[str, dict]:
    return {row["subject"]: row for split in built.values() for row in split.with_format("numpy")}


def test_ihm_cohort_keeps_stays_of_48_hours_and_labels_in_hospital_death(ihm):
    rows = rows_by_stay(ihm)
    assert set(rows) == {str(30000 + index) for index in range(20)}
    assert all(rows[str(30000 + index)]["label"] == died(index) for index in range(20))
    assert metadata_of(ihm).label_names == ["survived", "died"]


def test_split_is_a_disjoint_stratified_seventy_fifteen_fifteen_split_of_stays(ihm):
    subjects = [set(ihm[name]["subject"]) for name in ("train", "validation", "test")]
    assert sum(map(len, subjects)) == len(set().union(*subjects)) == 20
    assert [len(members) for members in subjects] == pytest.approx([14, 3, 3], abs=1)
    assert 1 in ihm["train"]["label"] and 0 in ihm["train"]["label"]


def test_labs_and_vitals_are_hourly_means_carried_forward_with_observation_masks(ihm):
    metadata = metadata_of(ihm)
    assert metadata.modalities == {"labs_vitals": 2 * CHANNELS, "notes": 4, "cxr": 3}
    assert metadata.window == 48
    stay = rows_by_stay(ihm)["30005"]["labs_vitals"]
    assert stay.shape == (48, 2 * CHANNELS)
    # creatinine once at 2.5 h (the one before admission is dropped): back-filled and carried everywhere
    assert (stay[:, CREATININE] == 6.0).all()
    np.testing.assert_array_equal(np.flatnonzero(stay[:, CHANNELS + CREATININE]), [2])
    # heart rate every 4 h; the reading at 50 h is outside the window
    assert (stay[:, HEART_RATE] == 75.0).all()
    np.testing.assert_array_equal(np.flatnonzero(stay[:, CHANNELS + HEART_RATE]), np.arange(0, 48, 4))
    # sodium only in a lab row without hadm_id → never observed in the stay → training mean (none: 0), mask 0
    sodium = list(LAB_ITEMS).index("sodium")
    assert (stay[:, sodium] == 0).all() and (stay[:, CHANNELS + sodium] == 0).all()


def test_note_embeddings_are_carried_forward_from_their_time_with_presence_masks(ihm):
    rows = rows_by_stay(ihm)
    first = rows["30000"]["notes"]
    assert (first[:10] == 0).all()
    np.testing.assert_allclose(first[10:30, :3], np.tile([0.0, 0.0, 1.0], (20, 1)))
    np.testing.assert_allclose(first[30:, :3], np.tile([5.0, 5.0, 5.0], (18, 1)))
    np.testing.assert_array_equal(np.flatnonzero(first[:, 3]), [10, 30])
    np.testing.assert_allclose(rows["30004"]["notes"][20, :3], [4.0, -4.0, 1.0])
    assert rows["30004"]["modality_mask"].tolist() == [True, True, False]
    assert rows["30003"]["modality_mask"].tolist() == [True, False, True]
    assert (rows["30001"]["notes"] == 0).all() and (rows["30001"]["cxr"] == 0).all()


def test_los_task_labels_short_stays_of_survivors(mimic_dir, tmp_path):
    built = build("mimic_iv", data_dir=str(mimic_dir), cache_dir=str(tmp_path), task="los")
    rows = rows_by_stay(built)
    for index in range(20):
        assert rows[str(30000 + index)]["label"] == int(stay_los_days(index) * 24 < 96 and not died(index))
    assert metadata_of(built).modalities == {"labs_vitals": 2 * CHANNELS}
    assert "modality_mask" in built["train"].features


def test_scaler_is_fit_on_train_and_max_stays_subsets_the_cohort(mimic_dir, tmp_path):
    built = build("mimic_iv", data_dir=str(mimic_dir), cache_dir=str(tmp_path), max_stays=12)
    assert sum(split.num_rows for split in built.values()) == 12
    metadata = metadata_of(built)
    train = built["train"].with_format("numpy")[:]
    expected_mean = np.mean([int(stay) - 30000 + 1 for stay in train["subject"]])
    assert metadata.normalization["labs_vitals"]["mean"][CREATININE] == pytest.approx(expected_mean)
    np.testing.assert_allclose(train["labs_vitals"][:, :, CREATININE].mean(), 0.0, atol=1e-5)


def append_csv_gz(path: Path, rows: list[dict]) -> None:
    """Add rows to a fixture CSV.gz, keeping its columns."""
    table = pd.read_csv(path)
    pd.concat([table, pd.DataFrame(rows, columns=table.columns)]).to_csv(path, index=False, compression="gzip")


def test_implausible_labs_and_vitals_become_unobserved_and_are_counted_unless_kept(tmp_path):
    root = write_mimic_fixture(tmp_path / "data")
    index, subject, hadm, stay = 5, 10005, 20005, 30005  # heart rate 75 bpm every 4 h from 0.25 h

    def vital(item: str, hours: float, value: float) -> dict:
        return dict(subject_id=subject, hadm_id=hadm, stay_id=stay, charttime=when(index, hours), itemid=VITAL_ITEMS[item],
                    value=str(value), valuenum=value)

    append_csv_gz(root / "icu" / "chartevents.csv.gz", [
        vital("heart_rate", 2.5, 400.0), vital("heart_rate", 4.5, 0.0), vital("spo2", 3.0, 97.0), vital("spo2", 7.0, 150.0),
    ])
    append_csv_gz(root / "hosp" / "labevents.csv.gz", [
        dict(labevent_id=1000 + number, subject_id=subject, hadm_id=hadm, specimen_id=1000 + number, itemid=LAB_ITEMS["ph"],
             charttime=when(index, hours), value=str(value), valuenum=value, valueuom="units")
        for number, (hours, value) in enumerate(((10.0, 7.31), (6.0, 73.5)))
    ])
    stays = [str(30000 + index) for index in range(20)]
    options = dict(data_dir=str(root), normalize=False, train_subjects=stays[:14], validation_subjects=stays[14:17],
                   test_subjects=stays[17:])
    cleaned = build("mimic_iv", cache_dir=str(tmp_path / "c"), **options)
    kept = build("mimic_iv", cache_dir=str(tmp_path / "k"), drop_implausible=False, **options)

    # exactly the planted values; every stay's heart rate of 999 at 50 h lies outside the 48 h and is not counted
    counts = metadata_of(cleaned).extras["implausible_values"]
    assert counts == {name: 0 for name in PLAUSIBLE_RANGES} | {"heart_rate": 2, "spo2": 1, "ph": 1}
    assert "values outside PLAUSIBLE_RANGES count as unobserved" in metadata_of(cleaned).protocol
    assert "implausible_values" not in metadata_of(kept).extras
    assert "PLAUSIBLE_RANGES" not in metadata_of(kept).protocol

    cleaned_rows, kept_rows = rows_by_stay(cleaned), rows_by_stay(kept)
    cleaned_stay, kept_stay = cleaned_rows["30005"]["labs_vitals"], kept_rows["30005"]["labs_vitals"]
    ph, spo2 = list(LAB_ITEMS).index("ph"), len(LAB_ITEMS) + list(VITAL_ITEMS).index("spo2")
    # kept as recorded: bins 2 (400 bpm), 4 (mean of 75 and 0 bpm), 6 (pH 73.5) and 7 (SpO2 150 %)
    assert (kept_stay[2, HEART_RATE], kept_stay[4, HEART_RATE], kept_stay[6, ph], kept_stay[7, spo2]) == (400.0, 37.5, 73.5, 150.0)
    assert kept_stay[[2, 6, 7], [CHANNELS + HEART_RATE, CHANNELS + ph, CHANNELS + spo2]].tolist() == [1.0, 1.0, 1.0]
    # dropped: unobserved bins carry the last plausible value forward (pH is back-filled from 10 h)
    assert (cleaned_stay[:, HEART_RATE] == 75.0).all()
    np.testing.assert_array_equal(np.flatnonzero(cleaned_stay[:, CHANNELS + HEART_RATE]), np.arange(0, 48, 4))
    np.testing.assert_allclose(cleaned_stay[:, ph], 7.31)
    assert cleaned_stay[:, CHANNELS + ph].tolist() == [0.0] * 10 + [1.0] + [0.0] * 37
    assert (cleaned_stay[3:, spo2] == 97.0).all() and np.flatnonzero(cleaned_stay[:, CHANNELS + spo2]).tolist() == [3]
    # a stay without pH gets the training mean of the plausible values only
    assert cleaned_rows["30001"]["labs_vitals"][0, ph] == pytest.approx(7.31)
    assert kept_rows["30001"]["labs_vitals"][0, ph] == pytest.approx((7.31 + 73.5) / 2)


def test_missing_files_columns_and_bad_values_are_clear_errors(mimic_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="icustays.csv.gz"):
        build("mimic_iv", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c0"))
    with pytest.raises(ValueError, match="task 'mortality' is not one of"):
        build("mimic_iv", data_dir=str(mimic_dir), cache_dir=str(tmp_path / "c1"), task="mortality")
    with pytest.raises(FileNotFoundError, match="embedding file .*radiology.npz"):
        build("mimic_iv", data_dir=str(mimic_dir), cache_dir=str(tmp_path / "c2"), notes_file="radiology.npz")
    broken = write_mimic_fixture(tmp_path / "broken")
    stays = pd.read_csv(broken / "icu" / "icustays.csv.gz")
    stays.drop(columns="los").to_csv(broken / "icu" / "icustays.csv.gz", index=False, compression="gzip")
    with pytest.raises(ValueError, match="icustays.csv.gz lacks columns \\['los'\\]"):
        build("mimic_iv", data_dir=str(broken), cache_dir=str(tmp_path / "c3"))
    stays.assign(intime="yesterday").to_csv(broken / "icu" / "icustays.csv.gz", index=False, compression="gzip")
    with pytest.raises(ValueError, match="icustays.csv.gz intime: malformed date-time"):
        build("mimic_iv", data_dir=str(broken), cache_dir=str(tmp_path / "c4"))


def test_embedding_file_with_nan_or_wrong_shape_is_rejected(mimic_dir, tmp_path):
    write_embeddings(tmp_path / "bad.npz", [(0, 1.0, [np.nan, 1.0])])
    with pytest.raises(ValueError, match="embedding holds NaN"):
        build("mimic_iv", data_dir=str(mimic_dir), cache_dir=str(tmp_path / "c1"), notes_file=str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "flat.npz", stay_id=np.array([30000]), charttime=np.array([when(0, 1)]), embedding=np.ones(3))
    with pytest.raises(ValueError, match="must be \\(N,\\), \\(N,\\) and \\(N, D\\)"):
        build("mimic_iv", data_dir=str(mimic_dir), cache_dir=str(tmp_path / "c2"), cxr_file=str(tmp_path / "flat.npz"))


def test_mimic_iv_is_registered():
    assert BUILDERS["mimic_iv"].__name__ == "MimicIVBuilder"


def test_mimic_iv_batch_with_missing_modalities_feeds_the_merge_model(ihm):
    forward_through_merge(ihm)
