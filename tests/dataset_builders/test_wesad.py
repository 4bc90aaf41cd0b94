"""WESAD builder: official-format pickles (fixtures) and the real wrist-only E4 files in ../shared/data."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest

from dataset_builders import build, metadata_of
from dataset_builders.wesad import parse_quest_times

from builder_fixtures import write_wesad_pickle

PICKLE_SPLIT = dict(train_subjects=["S2", "S3"], validation_subjects=["S4"], test_subjects=["S5"])
E4_SPLIT = dict(train_subjects=["S2", "S3"], validation_subjects=["S4"], test_subjects=["S5"])


@pytest.fixture(scope="module")
def pickle_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("wesad_pickles") / "WESAD"
    write_wesad_pickle(root / "S2", "S2", [(0, 20), (1, 40), (2, 40), (6, 30)], seed=2)
    write_wesad_pickle(root / "S3", "S3", [(1, 30), (3, 30), (4, 30), (7, 20)], seed=3)
    write_wesad_pickle(root / "S4", "S4", [(2, 40), (5, 20)], seed=4)
    write_wesad_pickle(root / "S5", "S5", [(0, 10), (1, 30)], seed=5)
    return root.parent


@pytest.fixture(scope="module")
def from_pickles(pickle_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return build("wesad", data_dir=str(pickle_dir), cache_dir=str(cache), window=10, stride=5, normalize=False, **PICKLE_SPLIT)


def test_wesad_pickles_give_chest_and_wrist_on_a_one_hertz_grid(from_pickles):
    metadata = metadata_of(from_pickles)
    assert metadata.modalities == {"chest": 8, "wrist": 6}
    assert metadata.token_grid_hz == 1.0 and metadata.patch_sizes == {"chest": 1, "wrist": 1}
    assert metadata.label_names == ["transient", "baseline", "stress", "amusement", "meditation", "other"]
    assert from_pickles["train"].features["wrist"].shape == (10, 6)


def test_wesad_pickle_windows_carry_their_majority_label_and_merge_six_and_seven_into_other(from_pickles):
    names = from_pickles["train"].features["label"].names
    rows = from_pickles["train"].with_format("numpy")[:]
    s2 = rows["subject"] == "S2"
    # S2 seconds: transient 0-19, baseline 20-59, stress 60-99, label 6 100-129; windows of 10 s, stride 5.
    labels = [names[label] for label in rows["label"][s2]]
    assert labels == ["transient"] * 4 + ["baseline"] * 8 + ["stress"] * 8 + ["other"] * 5
    # every signal level equals the raw label of its second, so a window inside one segment averages to it
    chest_means = rows["chest"][s2].mean(axis=(1, 2))
    np.testing.assert_allclose(chest_means[-1], 6.0, atol=0.01)
    wrist_means = rows["wrist"][s2].mean(axis=(1, 2))
    np.testing.assert_allclose(wrist_means[5], 1.0, atol=0.01)
    assert set(rows["label"][rows["subject"] == "S3"]) >= {names.index("amusement"), names.index("meditation")}


def test_wesad_pickle_split_is_by_subject(from_pickles):
    assert set(from_pickles["validation"]["subject"]) == {"S4"}
    assert set(from_pickles["test"]["subject"]) == {"S5"}


def test_wesad_pickle_missing_field_is_named(tmp_path, pickle_dir):
    root = tmp_path / "WESAD"
    shutil.copytree(pickle_dir / "WESAD", root)
    with open(root / "S3" / "S3.pkl", "rb") as handle:
        payload = pickle.load(handle, encoding="latin1")
    del payload["signal"]["wrist"]["BVP"]
    with open(root / "S3" / "S3.pkl", "wb") as handle:
        pickle.dump(payload, handle, protocol=2)
    with pytest.raises(ValueError, match="S3.pkl: missing field 'BVP'"):
        build("wesad", data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), window=10, stride=5, **PICKLE_SPLIT)


def test_wesad_asking_for_pickles_without_them_names_the_missing_file(tmp_path, shared_data):
    with pytest.raises(FileNotFoundError, match="S2.pkl is missing"):
        build("wesad", data_dir=str(shared_data / "wesad_e4"), cache_dir=str(tmp_path), source="pickle", **E4_SPLIT)
    with pytest.raises(ValueError, match="source must be 'auto', 'pickle' or 'e4', got 'chest'"):
        build("wesad", data_dir=str(shared_data / "wesad_e4"), cache_dir=str(tmp_path), source="chest", **E4_SPLIT)


def test_quest_times_are_minutes_dot_seconds(tmp_path):
    quest = tmp_path / "S9_quest.csv"
    quest.write_text("# Subj;S9;;\n# ORDER;Base;TSST;fRead;\n# START;2;34.3;7.08;\n# END;22.5;46.03;8;\n")
    assert parse_quest_times(quest) == [("Base", 120.0, 1370.0), ("TSST", 2070.0, 2763.0), ("fRead", 428.0, 480.0)]
    quest.write_text("# ORDER;Base;Nap;\n# START;2;3;\n# END;2.5;4;\n")
    with pytest.raises(ValueError, match="unknown protocol condition 'Nap'"):
        parse_quest_times(quest)


@pytest.fixture(scope="module")
def from_e4(shared_data, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return build("wesad_e4", data_dir=str(shared_data / "wesad_e4"), cache_dir=str(cache), window=60, stride=60, **E4_SPLIT)


def test_wesad_e4_builds_wrist_modalities_from_the_real_files(from_e4):
    metadata = metadata_of(from_e4)
    assert metadata.modalities == {"acc": 3, "bvp": 1, "eda": 1, "temp": 1}
    assert metadata.label_names == ["transient", "baseline", "stress", "amusement", "meditation"]
    assert set(from_e4["train"]["subject"]) == {"S2", "S3"}
    for split in ("train", "validation", "test"):
        rows = from_e4[split].with_format("numpy")[:]
        assert all(np.isfinite(rows[name]).all() for name in metadata.modality_names)


def test_wesad_e4_labels_follow_the_quest_file(from_e4, shared_data):
    names = from_e4["train"].features["label"].names
    intervals = parse_quest_times(shared_data / "wesad_e4" / "WESAD" / "S2" / "S2_quest.csv")
    expected_code = {"Base": "baseline", "TSST": "stress", "Fun": "amusement", "Medi 1": "meditation", "Medi 2": "meditation"}
    labels = np.asarray(from_e4["train"]["label"])[np.asarray(from_e4["train"]["subject"]) == "S2"]
    checked = 0
    for index, label in enumerate(labels):  # window i covers seconds [60 i, 60 i + 60): nothing is dropped
        start, end = 60.0 * index, 60.0 * index + 60
        inside = [condition for condition, first, last in intervals if first <= start and end <= last]
        outside = all(end <= first or last <= start for _, first, last in intervals)
        if inside and inside[0] in expected_code:
            assert names[label] == expected_code[inside[0]], (index, inside)
            checked += 1
        elif outside:
            assert names[label] == "transient", index
    assert checked >= 20  # S2 spends > 40 minutes in labelled conditions


def test_wesad_e4_native_rates_keep_fast_signals_as_patches(shared_data, tmp_path):
    built = build(
        "wesad", data_dir=str(shared_data / "wesad_e4"), cache_dir=str(tmp_path), target_rate_hz=None,
        window=240, stride=240, normalize=False, train_subjects=["S4"], validation_subjects=["S5"], test_subjects=["S6"],
    )
    metadata = metadata_of(built)
    assert metadata.token_grid_hz == 4.0 and metadata.patch_sizes == {"acc": 8, "bvp": 16, "eda": 1, "temp": 1}
    assert built["test"].features["bvp"].shape == (240 * 16, 1)
    temperature = built["train"].with_format("numpy")[:]["temp"]
    assert 20.0 < float(np.median(temperature)) < 40.0  # degrees Celsius, untouched when normalize=False


def test_wesad_e4_subject_without_samples_is_named(shared_data, tmp_path):
    import zipfile

    root = tmp_path / "WESAD"
    for subject in ("S2", "S3", "S4"):
        shutil.copytree(shared_data / "wesad_e4" / "WESAD" / subject, root / subject)
    archive_path = root / "S3" / "S3_E4_Data.zip"
    with zipfile.ZipFile(archive_path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["EDA.csv"] = b"\n".join(members["EDA.csv"].splitlines()[:2]) + b"\n"  # header rows only
    with zipfile.ZipFile(archive_path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    with pytest.raises(ValueError, match="S3_E4_Data.zip/EDA.csv: expected a start-time row, a rate row and samples"):
        build("wesad", data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), window=60, stride=60,
              train_subjects=["S2"], validation_subjects=["S3"], test_subjects=["S4"])
