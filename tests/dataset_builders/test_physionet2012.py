"""PhysioNet/CinC 2012 builder: the real set-a archive (a subset of records) and fixture records in the
official `Time,Parameter,Value` format."""

from __future__ import annotations

import csv
import io
import logging
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from dataset_builders import BUILDERS, build, metadata_of
from builder_fixtures import forward_through_merge
from dataset_builders._common import bin_irregular_series, stratified_record_splits
from dataset_builders.physionet2012 import PLAUSIBLE_RANGES, TIME_SERIES_MODALITIES, VARIABLE_INDEX, parse_record

MISSING_REAL_RECORDS = {"139060", "140501", "140936", "141264"}


def read_real_outcomes(root: Path) -> dict[str, int]:
    with (root / "Outcomes-a.txt").open() as handle:
        return {row["RecordID"]: int(row["In-hospital_death"]) for row in csv.DictReader(handle)}


def record_text(rows: list[tuple[str, str, float]]) -> str:
    return "Time,Parameter,Value\n" + "".join(f"{time},{parameter},{value:g}\n" for time, parameter, value in rows)


def write_physionet_fixture(root: Path, records: dict[str, list], outcomes: dict[str, int], as_tar: bool) -> Path:
    """`set-a.tar.gz` (or `set-a/`) with one `<RecordID>.txt` per record and `Outcomes-a.txt` for `outcomes`."""
    root.mkdir(parents=True, exist_ok=True)
    texts = {record: record_text([("00:00", "RecordID", float(record)), *rows]) for record, rows in records.items()}
    if as_tar:
        with tarfile.open(root / "set-a.tar.gz", "w:gz") as archive:
            for record, text in texts.items():
                payload = text.encode()
                member = tarfile.TarInfo(f"set-a/{record}.txt")
                member.size = len(payload)
                archive.addfile(member, io.BytesIO(payload))
    else:
        (root / "set-a").mkdir()
        for record, text in texts.items():
            (root / "set-a" / f"{record}.txt").write_text(text)
    lines = ["RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death"]
    lines += [f"{record},10,3,7,-1,{death}" for record, death in outcomes.items()]
    (root / "Outcomes-a.txt").write_text("\n".join(lines) + "\n")
    return root


def fixture_record(seed: int) -> list[tuple[str, str, float]]:
    rng = np.random.default_rng(seed)
    rows = [("00:00", "Age", 60.0 + seed), ("00:00", "Gender", float(seed % 2)), ("00:00", "Height", -1.0)]
    rows += [(f"{hour:02d}:{minute:02d}", "HR", float(rng.integers(60, 110))) for hour in range(0, 48, 3) for minute in (5,)]
    rows += [(f"{hour:02d}:30", "Creatinine", float(rng.uniform(0.5, 2.0))) for hour in (2, 20)]
    if seed % 3:
        rows += [("01:00", "MechVent", 1.0), ("01:00", "FiO2", 0.5)]
    return rows


# ------------------------------------------------------------------------------------ the real archive


@pytest.fixture(scope="module")
def real_subset(shared_data, tmp_path_factory):
    root = shared_data / "physionet2012"
    cache = tmp_path_factory.mktemp("physionet_cache")
    return root, build("physionet2012", data_dir=str(root), cache_dir=str(cache), max_records=200, seed=0)


def test_real_archive_labels_match_outcomes_file(real_subset):
    root, built = real_subset
    outcomes = read_real_outcomes(root)
    for split in built.values():
        for record, label in zip(split["subject"], split["label"]):
            assert outcomes[record] == label
    assert sum(split.num_rows for split in built.values()) == 200


def test_real_archive_reports_and_skips_the_four_outcome_rows_without_record_file(real_subset):
    _, built = real_subset
    skipped = metadata_of(built).skipped
    assert set(skipped) == MISSING_REAL_RECORDS
    assert all("has no" in reason for reason in skipped.values())
    subjects = {record for split in built.values() for record in split["subject"]}
    assert not subjects & MISSING_REAL_RECORDS


def test_real_archive_split_is_disjoint_stratified_and_seventy_fifteen_fifteen(real_subset):
    _, built = real_subset
    subjects = {name: set(split["subject"]) for name, split in built.items()}
    assert not subjects["train"] & subjects["validation"] and not subjects["train"] & subjects["test"]
    assert not subjects["validation"] & subjects["test"]
    assert [built[name].num_rows for name in ("train", "validation", "test")] == pytest.approx([140, 30, 30], abs=2)
    rates = [np.mean(built[name]["label"]) for name in ("train", "validation", "test")]
    assert max(rates) - min(rates) < 0.05


def test_real_archive_gives_48_hourly_steps_of_values_plus_observation_masks(real_subset):
    _, built = real_subset
    metadata = metadata_of(built)
    assert metadata.modalities == {"vitals": 26, "labs": 38, "ventilation": 10, "static": 10}
    assert metadata.window == 48 and metadata.token_grid_hz == pytest.approx(1 / 3600)
    assert metadata.label_names == ["survived", "died"]
    assert built["train"].features["labs"].shape == (48, 38)
    train = built["train"].with_format("numpy")[:]
    assert all(np.isfinite(train[name]).all() for name in metadata.modality_names)
    # normalised with train statistics: present examples have mean ≈ 0 per channel
    present = train["modality_mask"][:, 0]
    np.testing.assert_allclose(train["vitals"][present].mean(axis=(0, 1)), 0.0, atol=1e-4)


def test_real_archive_values_outside_the_plausible_ranges_count_as_unobserved(shared_data, tmp_path):
    root = shared_data / "physionet2012"
    options = dict(data_dir=str(root), max_records=300, seed=1, normalize=False)
    kept = build("physionet2012", cache_dir=str(tmp_path / "kept"), drop_implausible=False, **options)
    cleaned = build("physionet2012", cache_dir=str(tmp_path / "cleaned"), **options)
    dropped = metadata_of(cleaned).extras["implausible_values"]
    assert sum(dropped.values()) > 0  # set A records blood pressures of 0, Temp -17.8 °C, pH 735, …
    for name, (low, high) in PLAUSIBLE_RANGES.items():
        if name not in VARIABLE_INDEX:
            continue
        modality = next(modality for modality, names in TIME_SERIES_MODALITIES.items() if name in names)
        column = TIME_SERIES_MODALITIES[modality].index(name)
        observed_of = lambda built: [(row[modality][:, column], row[modality][:, len(TIME_SERIES_MODALITIES[modality]) + column])
                                     for split in built.values() for row in split.with_format("numpy")]
        cleaned_values = np.concatenate([values[observed == 1] for values, observed in observed_of(cleaned)])
        assert ((cleaned_values >= low) & (cleaned_values <= high)).all(), name
        kept_values = np.concatenate([values[observed == 1] for values, observed in observed_of(kept)])
        assert len(kept_values) >= len(cleaned_values), name
        if dropped[name]:  # the raw data held values out of range, bin means included
            assert not ((kept_values >= low) & (kept_values <= high)).all(), name


def test_real_archive_subset_is_chosen_by_seed(shared_data, tmp_path):
    root = shared_data / "physionet2012"
    other = build("physionet2012", data_dir=str(root), cache_dir=str(tmp_path), max_records=12, seed=1)
    again = build("physionet2012", data_dir=str(root), cache_dir=str(tmp_path / "again"), max_records=12, seed=1)
    assert sorted(other["train"]["subject"]) == sorted(again["train"]["subject"])
    assert set(metadata_of(other).skipped) == MISSING_REAL_RECORDS


# ---------------------------------------------------------------------------------------- fixtures


@pytest.mark.parametrize("as_tar", [True, False], ids=["tar", "folder"])
def test_fixture_records_build_from_archive_or_folder_alike(tmp_path, as_tar):
    records = {str(100 + index): fixture_record(index) for index in range(20)}
    outcomes = {record: int(index % 4 == 0) for index, record in enumerate(records)}
    outcomes["999"] = 1  # an outcome row without record file
    root = write_physionet_fixture(tmp_path / "data", records, outcomes, as_tar=as_tar)
    built = build("physionet2012", data_dir=str(root), cache_dir=str(tmp_path / "cache"), normalize=False)
    metadata = metadata_of(built)
    assert metadata.skipped == {"999": "listed in Outcomes-a.txt but set-a has no 999.txt"}
    rows = {row["subject"]: row for split in built.values() for row in split.with_format("numpy")}
    assert set(rows) == set(records)
    first = rows["100"]
    hr = VARIABLE_INDEX["HR"]
    expected_hr = np.repeat([value for _, parameter, value in fixture_record(0) if parameter == "HR"], 3)
    np.testing.assert_allclose(first["vitals"][:, hr], expected_hr)
    np.testing.assert_array_equal(first["vitals"][:, 13 + hr], np.tile([1.0, 0.0, 0.0], 16))
    # static: age 60 known, gender 0 known, height unknown → mean of known training heights (none: 0), flag 0
    np.testing.assert_allclose(first["static"][0, :6], [60.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    # seed 0 has no ventilation rows → that modality is absent
    assert first["modality_mask"].tolist() == [True, True, False, True]
    assert rows["101"]["modality_mask"].tolist() == [True, True, True, True]
    assert [rows[record]["label"] for record in records] == [outcomes[record] for record in records]


def test_implausible_values_and_heights_become_unobserved_and_are_counted_unless_kept(tmp_path):
    rows = fixture_record(1) + [("00:00", "Height", 13.0), ("04:40", "pH", 735.0), ("05:10", "Temp", -17.8)]
    rows = [row for row in rows if row[1] != "Height" or row[2] == 13.0]
    rows[rows.index(next(row for row in rows if row[1] == "HR"))] = ("00:05", "HR", 0.0)
    records = {str(100 + index): fixture_record(index) for index in range(6)} | {"200": rows}
    root = write_physionet_fixture(tmp_path / "data", records, {record: 0 for record in records} | {"200": 1}, as_tar=False)
    splits = dict(train_subjects=["200", "100", "101", "102"], validation_subjects=["103"], test_subjects=["104", "105"])
    cleaned = build("physionet2012", data_dir=str(root), cache_dir=str(tmp_path / "c"), normalize=False, **splits)
    kept = build("physionet2012", data_dir=str(root), cache_dir=str(tmp_path / "k"), normalize=False,
                 drop_implausible=False, **splits)
    counts = metadata_of(cleaned).extras["implausible_values"]
    assert (counts["HR"], counts["pH"], counts["Temp"], counts["Height"]) == (1, 1, 1, 1)
    assert "implausible_values" not in metadata_of(kept).extras
    cleaned_row, kept_row = (next(row for row in built["train"].with_format("numpy") if row["subject"] == "200")
                             for built in (cleaned, kept))
    hr, ph, temp = VARIABLE_INDEX["HR"], VARIABLE_INDEX["pH"] - 32, VARIABLE_INDEX["Temp"]
    assert kept_row["vitals"][0, hr] == 0.0 and kept_row["vitals"][0, 13 + hr] == 1.0
    assert cleaned_row["vitals"][0, 13 + hr] == 0.0 and cleaned_row["vitals"][0, hr] > 0  # back-filled from the next HR
    assert kept_row["ventilation"][4, ph] == 735.0 and cleaned_row["ventilation"][4, 5 + ph] == 0.0
    assert kept_row["vitals"][5, temp] == pytest.approx(-17.8) and cleaned_row["vitals"][:, 13 + temp].sum() == 0
    assert kept_row["static"][0, 4:6].tolist() == [13.0, 1.0] and cleaned_row["static"][0, 5] == 0.0


def test_binning_takes_bin_means_carries_forward_backfills_and_fills_unseen_variables():
    hours = np.array([1.2, 1.7, 3.0, 0.5, 48.0, 49.0])
    variables = np.array([0, 0, 0, 1, 1, 1])
    values = np.array([10.0, 20.0, 40.0, 7.0, 9.0, 100.0])
    grid = bin_irregular_series(hours, variables, values, 3, num_bins=48, bin_hours=1.0, fill_values=np.array([0, 0, -5.0]))
    assert grid.shape == (48, 6)
    np.testing.assert_allclose(grid[:5, 0], [15.0, 15.0, 15.0, 40.0, 40.0])  # back-filled, mean, carried, new
    assert grid[-1, 0] == 40.0
    np.testing.assert_allclose(grid[[0, 1, 47], 1], [7.0, 7.0, 9.0])  # 48:00 closes the last bin; 49:00 dropped
    assert (grid[:, 2] == -5.0).all() and (grid[:, 5] == 0).all()
    np.testing.assert_array_equal(np.flatnonzero(grid[:, 3]), [1, 3])
    np.testing.assert_array_equal(np.flatnonzero(grid[:, 4]), [0, 47])


def test_stratified_split_keeps_class_shares_and_depends_on_the_seed():
    records = [str(index) for index in range(200)]
    labels = [int(index < 40) for index in range(200)]
    splits = stratified_record_splits(records, labels, (0.7, 0.15), seed=0)
    positives = {split: sum(int(record) < 40 for record in members) for split, members in splits.items()}
    assert positives == {"train": 28, "validation": 6, "test": 6}
    assert sorted(sum(splits.values(), [])) == sorted(records)
    assert splits != stratified_record_splits(records, labels, (0.7, 0.15), seed=1)
    with pytest.raises(ValueError, match="must be in \\(0, 1\\)"):
        stratified_record_splits(records, labels, (0.9, 0.2), seed=0)


# -------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("01:00,HR", "132539.txt:3: expected 3 fields"),
        ("1h,HR,80", "132539.txt:3: malformed time or value"),
        ("01:00,HR,fast", "132539.txt:3: malformed time or value"),
        ("01:00,Pulse,80", "132539.txt:3: unknown parameter 'Pulse'"),
        ("01:00,HR,nan", "132539.txt:3: value 'nan' of HR is not a finite number"),
    ],
)
def test_malformed_record_rows_name_the_file_and_line(line, message):
    with pytest.raises(ValueError, match=message):
        parse_record(f"Time,Parameter,Value\n00:00,RecordID,132539\n{line}\n", "set-a/132539.txt")


def test_record_with_another_record_id_or_no_header_is_rejected():
    with pytest.raises(ValueError, match="RecordID 5 does not match"):
        parse_record("Time,Parameter,Value\n00:00,RecordID,5\n", "set-a/132539.txt")
    with pytest.raises(ValueError, match="expected the header"):
        parse_record("00:00,RecordID,132539\n", "set-a/132539.txt")


def test_outcome_that_is_not_zero_or_one_is_rejected(tmp_path):
    root = write_physionet_fixture(tmp_path, {"100": fixture_record(0)}, {"100": 2}, as_tar=False)
    with pytest.raises(ValueError, match="Outcomes-a.txt:2: In-hospital_death must be 0 or 1"):
        build("physionet2012", data_dir=str(root), cache_dir=str(tmp_path / "cache"))


def test_missing_directory_archive_or_overlong_window_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build("physionet2012", data_dir=str(tmp_path / "nowhere"), cache_dir=str(tmp_path / "c1"))
    (tmp_path / "Outcomes-a.txt").write_text("RecordID,In-hospital_death\n1,0\n")
    with pytest.raises(FileNotFoundError, match="set-a.tar.gz"):
        build("physionet2012", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c2"))
    root = write_physionet_fixture(tmp_path / "data", {"100": fixture_record(0)}, {"100": 0}, as_tar=False)
    with pytest.raises(ValueError, match="longer than the 48 h"):
        build("physionet2012", data_dir=str(root), cache_dir=str(tmp_path / "c3"), window=49)


@pytest.mark.parametrize("as_tar", [True, False], ids=["tar", "folder"])
def test_a_record_that_is_not_utf8_is_an_error_naming_the_file(tmp_path, as_tar):
    records = {str(100 + index): fixture_record(index) for index in range(20)}
    root = write_physionet_fixture(tmp_path / "data", records, {record: 0 for record in records}, as_tar=False)
    (root / "set-a" / "105.txt").write_bytes(record_text([("00:00", "RecordID", 105.0)]).encode() + b"00:10,HR,\xff\n")
    if as_tar:
        with tarfile.open(root / "set-a.tar.gz", "w:gz") as archive:
            archive.add(root / "set-a", arcname="set-a")
        shutil.rmtree(root / "set-a")
    with pytest.raises(ValueError, match=r"105\.txt: not UTF-8 text .*download it again"):
        build("physionet2012", data_dir=str(root), cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize(
    "encode", [lambda text: b"\xef\xbb\xbf" + text.encode(), lambda text: text.encode("utf-16")], ids=["utf8 bom", "utf16"]
)
def test_an_outcomes_file_saved_with_a_bom_or_as_utf16_reads_as_the_plain_one(tmp_path, encode):
    records = {str(100 + index): fixture_record(index) for index in range(12)}
    outcomes = {record: index % 2 for index, record in enumerate(records)}
    root = write_physionet_fixture(tmp_path / "data", records, outcomes, as_tar=False)
    plain = build("physionet2012", data_dir=str(root), cache_dir=str(tmp_path / "plain"))
    path = root / "Outcomes-a.txt"
    path.write_bytes(encode(path.read_text()))
    (root / "set-a" / "100.txt").write_bytes(b"\xef\xbb\xbf" + (root / "set-a" / "100.txt").read_bytes())
    saved = build("physionet2012", data_dir=str(root), cache_dir=str(tmp_path / "saved"))
    for split in ("train", "validation", "test"):
        assert saved[split]["subject"] == plain[split]["subject"] and saved[split]["label"] == plain[split]["label"]


def test_an_outcomes_file_in_another_encoding_is_an_error_naming_it(tmp_path):
    root = write_physionet_fixture(tmp_path / "data", {"100": fixture_record(0)}, {"100": 0}, as_tar=False)
    path = root / "Outcomes-a.txt"
    path.write_bytes(path.read_bytes().replace(b"Survival", "Überleben".encode("latin-1")))
    with pytest.raises(ValueError, match=r"Outcomes-a\.txt: not UTF-8 text \(byte b'\\xdc' at offset \d+\); save it as UTF-8"):
        build("physionet2012", data_dir=str(root), cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("kept", [0.0, 0.01, 0.5], ids=["empty", "gzip header only", "half"])
def test_a_truncated_archive_is_an_error_naming_the_file(tmp_path, kept):
    records = {str(100 + index): fixture_record(index) for index in range(20)}
    root = write_physionet_fixture(tmp_path / "data", records, {record: 0 for record in records}, as_tar=True)
    archive = root / "set-a.tar.gz"
    data = archive.read_bytes()
    archive.write_bytes(data[: int(len(data) * kept)])
    with pytest.raises(ValueError, match=r"set-a\.tar\.gz is truncated or corrupt .*download it again"):
        build("physionet2012", data_dir=str(root), cache_dir=str(tmp_path / "cache"))


def test_warning_lists_each_skipped_record(tmp_path, caplog):
    records = {str(100 + index): fixture_record(index) for index in range(20)}
    outcomes = {**{record: index % 2 for index, record in enumerate(records)}, "777": 0}
    root = write_physionet_fixture(tmp_path / "data", records, outcomes, as_tar=True)
    with caplog.at_level(logging.WARNING):
        build("physionet2012", data_dir=str(root), cache_dir=str(tmp_path / "cache"))
    assert any("777" in message and "no 777.txt" in message for message in caplog.messages)


def test_physionet_is_registered():
    assert BUILDERS["physionet2012"].__name__ == "PhysioNet2012Builder"


def test_real_archive_batch_feeds_the_merge_model(real_subset):
    forward_through_merge(real_subset[1])
