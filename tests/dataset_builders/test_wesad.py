"""WESAD builder: official-format pickles (fixtures) and the real wrist-only E4 files in ../shared/data."""

from __future__ import annotations

import json
import pickle
import shutil
import zipfile

import numpy as np
import pytest

from dataset_builders import build, metadata_of
from dataset_builders._common import drop_implausible
from dataset_builders.wesad import (
    SUBJECTS,
    WesadBuilder,
    detect_protocol_origin,
    parse_quest_times,
    respiban_start,
)

from builder_fixtures import code_running_pickle, write_wesad_pickle

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
    return build("wesad", data_dir=str(pickle_dir), cache_dir=str(cache), window=10, stride=5, normalize=False,
                 allow_pickle=True, **PICKLE_SPLIT)


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


def test_wesad_pickle_step_labels_give_each_one_hertz_step_its_label(pickle_dir, tmp_path):
    paper = build("wesad", data_dir=str(pickle_dir), cache_dir=str(tmp_path / "p"), window=10, stride=5, normalize=False,
                  allow_pickle=True, label_granularity="step", **PICKLE_SPLIT)
    assert metadata_of(paper).label_granularity == "step" and metadata_of(paper).token_grid_hz == 1.0
    rows = paper["train"].with_format("numpy")[:]
    s2 = rows["subject"] == "S2"
    # S2 seconds: transient 0-19, baseline 20-59, stress 60-99, label 6 ("other", class 5) 100-129; every step kept
    codes = np.repeat([0, 1, 2, 5], [20, 40, 40, 30])
    assert rows["label"][s2].tolist() == [codes[start : start + 10].tolist() for start in range(0, 121, 5)]
    # every signal's level is the raw label of its second: the chest level per step matches its step label
    labels, chest = rows["label"], rows["chest"][..., 0]
    np.testing.assert_allclose(chest[labels < 5], labels[labels < 5], atol=0.05)
    three = build("wesad", data_dir=str(pickle_dir), cache_dir=str(tmp_path / "t"), window=10, stride=5, normalize=False,
                  allow_pickle=True, label_granularity="step", task="three_class", **PICKLE_SPLIT)
    three_rows = three["train"].with_format("numpy")[:]
    three_codes = np.repeat([-100, 0, 1, -100], [20, 40, 40, 30])  # transient and "other" are outside the task
    expected = [three_codes[start : start + 10].tolist() for start in range(0, 121, 5)]
    assert three_rows["label"][three_rows["subject"] == "S2"].tolist() == [ids for ids in expected if max(ids) >= 0]


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
        build("wesad", data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), window=10, stride=5, allow_pickle=True,
              **PICKLE_SPLIT)


def test_wesad_asking_for_pickles_without_them_names_the_missing_file(tmp_path, shared_data):
    with pytest.raises(FileNotFoundError, match="S2.pkl is missing"):
        build("wesad", data_dir=str(shared_data / "wesad_e4"), cache_dir=str(tmp_path), source="pickle",
              allow_pickle=True, **E4_SPLIT)
    with pytest.raises(ValueError, match="source must be 'auto', 'pickle' or 'e4', got 'chest'"):
        build("wesad", data_dir=str(shared_data / "wesad_e4"), cache_dir=str(tmp_path), source="chest", **E4_SPLIT)


def test_wesad_never_unpickles_unless_allowed(tmp_path):
    marker = tmp_path / "code_ran"
    for subject in sorted({subject for subjects in PICKLE_SPLIT.values() for subject in subjects}):
        (tmp_path / "WESAD" / subject).mkdir(parents=True)
        (tmp_path / "WESAD" / subject / f"{subject}.pkl").write_bytes(code_running_pickle(marker))
    options = dict(data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), window=10, stride=5, **PICKLE_SPLIT)
    with pytest.raises(FileNotFoundError, match=r"S2_E4_Data.zip is missing; S2.pkl is there but is read only with "
                                                r"allow_pickle=True"):
        build("wesad", **options)  # source "auto"
    with pytest.raises(ValueError, match="pass allow_pickle=True if you trust the files"):
        build("wesad", source="pickle", **options)
    assert not marker.exists()
    with pytest.raises(Exception):
        build("wesad", allow_pickle=True, **options)  # opted in: the code runs, then the non-WESAD payload fails
    assert marker.exists()


def test_quest_times_are_minutes_dot_seconds(tmp_path):
    quest = tmp_path / "S9_quest.csv"
    quest.write_text("# Subj;S9;;\n# ORDER;Base;TSST;fRead;\n# START;2;34.3;7.08;\n# END;22.5;46.03;8;\n")
    assert parse_quest_times(quest) == [("Base", 120.0, 1370.0), ("TSST", 2070.0, 2763.0), ("fRead", 428.0, 480.0)]
    quest.write_text("# ORDER;Base;Nap;\n# START;2;3;\n# END;2.5;4;\n")
    with pytest.raises(ValueError, match="unknown protocol condition 'Nap'"):
        parse_quest_times(quest)


def read_e4(subject_dir, member, channels):
    """(unix start, rate Hz, samples) of one CSV in the subject's real E4 zip, read without the builder."""
    with zipfile.ZipFile(subject_dir / f"{subject_dir.name}_E4_Data.zip") as archive:
        table = np.loadtxt(archive.open(member), delimiter=",", ndmin=2)
    assert table.shape[1] == channels
    return table[0, 0], table[1, 0], table[2:]


def stress_above_baseline(subject_dir, origin_s):
    """Independent of ACC: is mean EDA, or mean heart rate (the E4's own HR.csv), higher in the TSST block than
    in the Base block when the quest times count from `origin_s` (s after the E4 start)?"""
    blocks = {condition: (start, end) for condition, start, end in parse_quest_times(subject_dir / f"{subject_dir.name}_quest.csv")}
    e4_start = read_e4(subject_dir, "ACC.csv", 3)[0]
    rises = []
    for member in ("EDA.csv", "HR.csv"):
        start, rate, values = read_e4(subject_dir, member, 1)
        times = start - e4_start + np.arange(values.shape[0]) / rate - origin_s

        def block_mean(condition):
            first, last = blocks[condition]
            return values[(times >= first) & (times < last), 0].mean()

        rises.append(block_mean("TSST") > block_mean("Base"))
    return any(rises)


def test_wesad_e4_detected_origins_pass_a_physiological_check_that_the_e4_start_fails(shared_data):
    root = shared_data / "wesad_e4" / "WESAD"
    subjects = sorted((path for path in root.iterdir() if (path / f"{path.name}_E4_Data.zip").is_file()), key=lambda p: int(p.name[1:]))
    assert len(subjects) == 15
    old_origin_fails = 0
    for subject_dir in subjects:
        _, rate, acc = read_e4(subject_dir, "ACC.csv", 3)
        intervals = parse_quest_times(subject_dir / f"{subject_dir.name}_quest.csv")
        origin = detect_protocol_origin(acc, rate, intervals, subject_dir.name)
        assert 0 <= origin <= acc.shape[0] / rate - max(end for _, _, end in intervals), subject_dir.name
        assert stress_above_baseline(subject_dir, origin), f"{subject_dir.name}: origin {origin:.1f} s fails the check"
        old_origin_fails += not stress_above_baseline(subject_dir, 0.0)
    assert old_origin_fails > len(subjects) / 2, f"the E4 start fails the check for only {old_origin_fails} subjects"


def test_wesad_e4_tap_agrees_with_the_official_respiban_start_of_s2(shared_data, tmp_path):
    # The official S2_respiban.txt (not in our copy) starts "# OpenSignals Text File Format" and holds
    # "date": "2017-5-22", "time": "9:39:1.0" (Central European Summer Time) in its JSON header line.
    root = tmp_path / "WESAD"
    shutil.copytree(shared_data / "wesad_e4" / "WESAD" / "S2", root / "S2")
    header = {"00:07:80:D8:AB:58": {"device name": "RespiBan", "sampling rate": 700, "date": "2017-5-22", "time": "9:39:1.0"}}
    (root / "S2" / "S2_respiban.txt").write_text(
        "# OpenSignals Text File Format\n# " + json.dumps(header) + "\n# EndOfHeader\n0\t0\t1\t2\t3\t4\t5\t6\t7\t8\n"
    )
    e4_start, rate, acc = read_e4(root / "S2", "ACC.csv", 3)
    official = respiban_start(root / "S2" / "S2_respiban.txt", "Europe/Berlin") - e4_start
    tap = detect_protocol_origin(acc, rate, parse_quest_times(root / "S2" / "S2_quest.csv"), "S2")
    assert abs(tap - official) < 5.0, (tap, official)
    builder = WesadBuilder(data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), source="e4",
                           train_subjects=["S2"], validation_subjects=["S2"], test_subjects=["S2"])
    assert builder._protocol_origin(root / "S2") == {"origin_s": official, "method": "respiban"}
    overridden = WesadBuilder(data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache2"), source="e4", protocol_origin_s={"S2": 1400.0})
    assert overridden._protocol_origin(root / "S2") == {"origin_s": 1400.0, "method": "override"}


@pytest.fixture(scope="module")
def from_e4(shared_data, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return build("wesad_e4", data_dir=str(shared_data / "wesad_e4"), cache_dir=str(cache), window=60, stride=60,
                 heart_rate=True, normalize=False, **E4_SPLIT)


def test_wesad_e4_builds_wrist_modalities_from_the_real_files(from_e4):
    metadata = metadata_of(from_e4)
    assert metadata.modalities == {"acc": 3, "bvp": 1, "eda": 1, "temp": 1, "hr": 1}
    assert metadata.label_names == ["transient", "baseline", "stress", "amusement", "meditation"]
    assert set(from_e4["train"]["subject"]) == {"S2", "S3"}
    for split in ("train", "validation", "test"):
        rows = from_e4[split].with_format("numpy")[:]
        assert all(np.isfinite(rows[name]).all() for name in metadata.modality_names)
        assert 15.0 <= rows["temp"].min() and rows["temp"].max() <= 45.0  # °C: no start-up artefact
        assert rows["eda"].min() >= 0.0
        assert 30.0 <= rows["hr"].min() and rows["hr"].max() <= 220.0  # bpm


def test_wesad_e4_metadata_records_each_subjects_origin_and_dropped_samples(from_e4):
    extras = metadata_of(from_e4).extras
    assert set(extras["protocol_origins"]) == {"S2", "S3", "S4", "S5"}
    for subject, origin in extras["protocol_origins"].items():
        assert origin["method"] == "acc_tap" and origin["origin_s"] > 0, subject
    assert all(counts["temp"] >= 1 for counts in extras["implausible_samples"].values())  # 382 °C at start-up


def test_wesad_e4_labels_follow_the_quest_file_from_the_protocol_origin(from_e4, shared_data):
    names = from_e4["train"].features["label"].names
    intervals = parse_quest_times(shared_data / "wesad_e4" / "WESAD" / "S2" / "S2_quest.csv")
    expected_code = {"Base": "baseline", "TSST": "stress", "Fun": "amusement", "Medi 1": "meditation", "Medi 2": "meditation"}
    labels = np.asarray(from_e4["train"]["label"])[np.asarray(from_e4["train"]["subject"]) == "S2"]
    checked = 0
    for index, label in enumerate(labels):  # window i covers seconds [60 i, 60 i + 60) after the origin
        start, end = 60.0 * index, 60.0 * index + 60
        inside = [condition for condition, first, last in intervals if first <= start and end <= last]
        outside = all(end <= first or last <= start for _, first, last in intervals)
        if inside and inside[0] in expected_code:
            assert names[label] == expected_code[inside[0]], (index, inside)
            checked += 1
        elif outside:
            assert names[label] == "transient", index
    assert checked >= 20  # S2 spends > 40 minutes in labelled conditions


def quest_codes(intervals, steps: int) -> np.ndarray:
    """Expected WESAD code of each 1 Hz step after the origin, read from the quest intervals at the step's centre."""
    code = {"Base": 1, "TSST": 2, "Fun": 3, "Medi 1": 4, "Medi 2": 4}
    centres = np.arange(steps) + 0.5
    return np.asarray([next((code.get(name, 0) for name, first, last in intervals if first <= t < last), 0) for t in centres])


@pytest.fixture(scope="module")
def from_e4_steps(shared_data, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return build("wesad_e4", data_dir=str(shared_data / "wesad_e4"), cache_dir=str(cache), window=60, stride=60,
                 heart_rate=True, normalize=False, label_granularity="step", **E4_SPLIT)


def test_wesad_e4_step_labels_follow_the_quest_file_second_by_second(from_e4_steps, shared_data):
    metadata = metadata_of(from_e4_steps)
    assert (metadata.label_granularity, metadata.token_grid_hz) == ("step", 1.0)
    assert from_e4_steps["train"].features["label"].length == 60
    for subject in ("S2", "S3"):
        labels = np.asarray(from_e4_steps["train"]["label"])[np.asarray(from_e4_steps["train"]["subject"]) == subject]
        intervals = parse_quest_times(shared_data / "wesad_e4" / "WESAD" / subject / f"{subject}_quest.csv")
        # the paper task labels every step (transient is a class), so window i holds steps 60 i … 60 i + 59
        np.testing.assert_array_equal(labels.reshape(-1), quest_codes(intervals, labels.size), err_msg=subject)
        assert set(labels.reshape(-1).tolist()) == {0, 1, 2, 3, 4}


def test_wesad_e4_window_labels_are_the_majority_of_the_step_labels(from_e4, from_e4_steps):
    for split in ("train", "validation", "test"):
        steps = np.asarray(from_e4_steps[split]["label"])
        majority = [int(np.bincount(window).argmax()) for window in steps]
        assert majority == from_e4[split]["label"], split
        same_windows = from_e4_steps[split].with_format("numpy")[:]["eda"], from_e4[split].with_format("numpy")[:]["eda"]
        np.testing.assert_array_equal(*same_windows)


def test_wesad_e4_step_labels_of_a_task_set_excluded_conditions_to_minus_100(shared_data, tmp_path):
    split = dict(train_subjects=["S2"], validation_subjects=["S3"], test_subjects=["S4"], window=60, stride=60)
    built = build("wesad_e4", data_dir=str(shared_data / "wesad_e4"), cache_dir=str(tmp_path), task="three_class",
                  label_granularity="step", **split)
    labels = np.asarray(built["train"]["label"])
    intervals = parse_quest_times(shared_data / "wesad_e4" / "WESAD" / "S2" / "S2_quest.csv")
    to_class = {0: -100, 1: 0, 2: 1, 3: 2, 4: -100}  # transient and meditation are outside the three classes
    paper = np.vectorize(to_class.get)(quest_codes(intervals, 60 * 200))
    windows = [paper[start : start + 60] for start in range(0, paper.size - 59, 60)]
    kept = [window for window in windows if (window >= 0).any()]
    np.testing.assert_array_equal(labels, np.asarray(kept))  # the protocol ends well inside the recording
    assert (labels == -100).any() and set(labels[labels >= 0].tolist()) == {0, 1, 2}
    assert "steps labelled outside the task's classes set to -100" in metadata_of(built).protocol


def test_wesad_e4_three_class_and_binary_tasks_drop_the_other_windows(shared_data, tmp_path):
    split = dict(train_subjects=["S2"], validation_subjects=["S3"], test_subjects=["S4"], window=60, stride=60)
    paper = build("wesad_e4", data_dir=str(shared_data / "wesad_e4"), cache_dir=str(tmp_path / "p"), **split)
    three = build("wesad_e4", data_dir=str(shared_data / "wesad_e4"), cache_dir=str(tmp_path / "t"), task="three_class", **split)
    binary = build("wesad_e4", data_dir=str(shared_data / "wesad_e4"), cache_dir=str(tmp_path / "b"), task="binary", **split)
    assert metadata_of(three).label_names == ["baseline", "stress", "amusement"]
    assert metadata_of(binary).label_names == ["not_stress", "stress"]
    paper_names = paper["train"].features["label"].names
    paper_labels = [paper_names[label] for label in paper["train"]["label"]]
    kept = [label for label in paper_labels if label in ("baseline", "stress", "amusement")]
    assert [three["train"].features["label"].names[label] for label in three["train"]["label"]] == kept
    assert [label == 1 for label in binary["train"]["label"]] == [label == "stress" for label in kept]


def test_wesad_e4_per_subject_normalisation_uses_each_subjects_own_statistics(shared_data, tmp_path):
    built = build("wesad_e4", data_dir=str(shared_data / "wesad_e4"), cache_dir=str(tmp_path), per_subject_normalize=True,
                  normalize=False, window=30, stride=30, train_subjects=["S2", "S3"], validation_subjects=["S4"], test_subjects=["S5"])
    rows = built["train"].with_format("numpy")[:]
    for subject in ("S2", "S3"):
        eda = rows["eda"][rows["subject"] == subject]
        assert abs(eda.mean()) < 0.1 and abs(eda.std() - 1.0) < 0.1, subject  # windows cover all but < 30 s
    assert "z-scored per subject" in metadata_of(built).protocol


def test_wesad_e4_temp_start_up_artefact_is_dropped_when_the_origin_keeps_it(shared_data, tmp_path):
    built = build("wesad_e4", data_dir=str(shared_data / "wesad_e4"), cache_dir=str(tmp_path), normalize=False,
                  protocol_origin_s={"S2": 0.0}, window=30, stride=30, **E4_SPLIT)
    metadata = metadata_of(built)
    assert metadata.extras["protocol_origins"]["S2"] == {"origin_s": 0.0, "method": "override"}
    first = built["train"].with_format("numpy")[:]
    assert first["temp"][first["subject"] == "S2"].max() <= 45.0
    assert metadata.extras["implausible_samples"]["S2"]["temp"] >= 1


def test_drop_implausible_interpolates_and_counts():
    values = np.array([[382.2], [35.0], [np.nan], [37.0], [36.0]])
    kept, count = drop_implausible(values, 15.0, 45.0, "TEMP.csv")
    assert count == 2 and kept[:, 0].tolist() == [35.0, 35.0, 36.0, 37.0, 36.0]
    with pytest.raises(ValueError, match="TEMP.csv .plausible range"):
        drop_implausible(np.full((3, 1), 382.2), 15.0, 45.0, "TEMP.csv")


def test_wesad_e4_protocol_outside_the_recording_and_window_zero_are_refused(shared_data, tmp_path):
    data_dir = str(shared_data / "wesad_e4")
    with pytest.raises(ValueError, match=r"wesad S2: the protocol .*from override.* does not lie inside .*protocol_origin_s\['S2'\]"):
        build("wesad_e4", data_dir=data_dir, cache_dir=str(tmp_path / "a"), protocol_origin_s={"S2": 5000.0}, **E4_SPLIT)
    with pytest.raises(ValueError, match="window .0. and stride .25. must be >= 1"):
        build("wesad_e4", data_dir=data_dir, cache_dir=str(tmp_path / "b"), window=0, **E4_SPLIT)
    with pytest.raises(ValueError, match=r"protocol_origin_s names unknown subjects \['S1'\]"):
        build("wesad_e4", data_dir=data_dir, cache_dir=str(tmp_path / "c"), protocol_origin_s={"S1": 0.0}, **E4_SPLIT)


def copy_with_s3_member(shared_data, tmp_path, member, rewrite):
    """S2, S3, S4 of the real data under tmp_path/WESAD, with `member` of S3's E4 zip replaced by rewrite(lines)."""
    root = tmp_path / "WESAD"
    for subject in ("S2", "S3", "S4"):
        shutil.copytree(shared_data / "wesad_e4" / "WESAD" / subject, root / subject)
    archive_path = root / "S3" / "S3_E4_Data.zip"
    with zipfile.ZipFile(archive_path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members[member] = b"\n".join(rewrite(members[member].splitlines())) + b"\n"
    with zipfile.ZipFile(archive_path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)


def test_wesad_e4_without_a_tap_names_the_subject_and_the_override(shared_data, tmp_path):
    copy_with_s3_member(shared_data, tmp_path, "ACC.csv", lambda lines: lines[:2] + [b"0,0,64"] * (len(lines) - 2))  # still
    with pytest.raises(ValueError, match=r"wesad S3: no synchronisation double tap .*protocol_origin_s=\{'S3'"):
        build("wesad", data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), window=60, stride=60,
              train_subjects=["S2"], validation_subjects=["S3"], test_subjects=["S4"])
    built = build("wesad", data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache2"), window=60, stride=60,
                  protocol_origin_s={"S3": 1090.0}, train_subjects=["S2"], validation_subjects=["S3"], test_subjects=["S4"])
    assert metadata_of(built).extras["protocol_origins"]["S3"] == {"origin_s": 1090.0, "method": "override"}


def test_wesad_loso_folds_hold_out_one_subject(tmp_path):
    folds = [WesadBuilder(data_dir=str(tmp_path), cache_dir=str(tmp_path), loso_fold=k)._splits(SUBJECTS) for k in range(15)]
    assert sorted(fold["test"][0] for fold in folds) == sorted(SUBJECTS)
    for fold in folds:
        assert sorted(fold["train"] + fold["validation"] + fold["test"]) == sorted(SUBJECTS) and len(fold["validation"]) == 1
    with pytest.raises(ValueError, match="do not combine it with"):
        WesadBuilder(data_dir=str(tmp_path), cache_dir=str(tmp_path), loso_fold=0, test_subjects=["S2"])._splits(SUBJECTS)
    with pytest.raises(ValueError, match="loso_fold must be in 0…14"):
        WesadBuilder(data_dir=str(tmp_path), cache_dir=str(tmp_path), loso_fold=15)._splits(SUBJECTS)


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


@pytest.mark.parametrize("rate", [b"0.000000", b"-4.000000"], ids=["zero", "negative"])
def test_wesad_e4_sampling_rate_zero_or_negative_is_named(shared_data, tmp_path, rate):
    copy_with_s3_member(shared_data, tmp_path, "EDA.csv", lambda lines: [lines[0], rate, *lines[2:]])
    with pytest.raises(ValueError, match=r"S3_E4_Data.zip/EDA.csv: sampling rate \(row 2\) must be one positive value"):
        build("wesad", data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), window=60, stride=60,
              train_subjects=["S2"], validation_subjects=["S3"], test_subjects=["S4"])


def test_wesad_e4_csv_in_another_encoding_is_named(shared_data, tmp_path):
    copy_with_s3_member(shared_data, tmp_path, "TEMP.csv", lambda lines: [*lines[:5], "35,5°".encode("latin-1"), *lines[5:]])
    with pytest.raises(ValueError, match=r"S3_E4_Data.zip/TEMP.csv: not UTF-8 text"):
        build("wesad", data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), window=60, stride=60,
              train_subjects=["S2"], validation_subjects=["S3"], test_subjects=["S4"])


def test_wesad_e4_subject_without_samples_is_named(shared_data, tmp_path):
    copy_with_s3_member(shared_data, tmp_path, "EDA.csv", lambda lines: lines[:2])  # header rows only
    with pytest.raises(ValueError, match="S3_E4_Data.zip/EDA.csv: expected a start-time row, a rate row and samples"):
        build("wesad", data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), window=60, stride=60,
              train_subjects=["S2"], validation_subjects=["S3"], test_subjects=["S4"])
