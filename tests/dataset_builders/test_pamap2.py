"""PAMAP2 builder on fixture files in the official Protocol format."""

from __future__ import annotations

import numpy as np
import pytest

from dataset_builders import build, metadata_of

from builder_fixtures import segment_labels, write_pamap2_subject

SPLIT = dict(train_subjects=["101", "102"], validation_subjects=["107"], test_subjects=["108"])


@pytest.fixture(scope="module")
def pamap2_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pamap2")
    protocol = root / "PAMAP2_Dataset" / "Protocol"
    # 0 = transient; windows of 20 rows, stride 10
    write_pamap2_subject(protocol, "101", [(0, 25), (1, 60), (0, 20), (4, 55)], seed=1)
    write_pamap2_subject(protocol, "102", [(24, 40), (17, 40)], seed=2)
    write_pamap2_subject(protocol, "107", [(5, 40)], seed=3)
    write_pamap2_subject(protocol, "108", [(12, 30), (13, 30)], seed=4)
    return root


@pytest.fixture(scope="module")
def pamap2(pamap2_dir, tmp_path_factory):
    return build("pamap2", data_dir=str(pamap2_dir), cache_dir=str(tmp_path_factory.mktemp("cache")), window=20, stride=10, **SPLIT)


def test_pamap2_has_four_modalities_with_thirteen_imu_channels(pamap2):
    metadata = metadata_of(pamap2)
    assert metadata.modalities == {"chest": 13, "hand": 13, "ankle": 13, "heart_rate": 1}
    assert pamap2["train"].features["chest"].shape == (20, 13)
    assert pamap2["train"].features["label"].names[:3] == ["lying", "sitting", "standing"]
    assert len(metadata.label_names) == 12


def test_pamap2_splits_are_by_subject(pamap2):
    assert set(pamap2["train"]["subject"]) == {"101", "102"}
    assert set(pamap2["validation"]["subject"]) == {"107"}
    assert set(pamap2["test"]["subject"]) == {"108"}


def test_pamap2_windows_take_the_majority_activity_and_drop_transient_ones(pamap2):
    names = pamap2["train"].features["label"].names
    subject_101 = pamap2["train"].filter(lambda row: row["subject"] == "101")
    labels = [names[label] for label in subject_101["label"]]
    # rows: transient 0-24, lying 25-84, transient 85-104, walking 105-159; starts 0, 10, ..., 140.
    # Majority over [s, s + 20): transient for s = 0, 10, 80, 90 (dropped), lying 20-70, walking 100-140.
    assert labels == ["lying"] * 6 + ["walking"] * 5
    assert "transient" not in names


def test_pamap2_step_labels_give_each_100_hz_sample_its_activity_and_ignore_transient(pamap2_dir, tmp_path):
    built = build("pamap2", data_dir=str(pamap2_dir), cache_dir=str(tmp_path), window=20, stride=10, normalize=False,
                  label_granularity="step", **SPLIT)
    metadata = metadata_of(built)
    assert (metadata.label_granularity, metadata.token_grid_hz, metadata.window) == ("step", 100.0, 20)
    assert "one label per step, steps labelled transient (0) set to -100" in metadata.protocol
    rows = built["train"].with_format("numpy")[:]
    subject_101 = rows["subject"] == "101"
    activities = segment_labels([(0, 25), (1, 60), (0, 20), (4, 55)])  # the fixture's activity per row
    class_of = {0: -100, **{activity: index for index, activity in enumerate([1, 2, 3, 4, 5, 6, 7, 12, 13, 16, 17, 24])}}
    # starts 0, 10, ..., 140: only the window at 0 is all transient; every other one keeps its 20 rows' activities
    expected = [[class_of[activity] for activity in activities[start : start + 20]] for start in range(10, 150, 10)]
    assert rows["label"][subject_101].tolist() == expected
    # the fixture's IMU level is the activity: steps labelled walking sit ~3 above those labelled lying
    chest, labels = rows["chest"][subject_101][..., 1], rows["label"][subject_101]
    assert 2.5 < chest[labels == 3].mean() - chest[labels == 0].mean() < 3.5


def test_pamap2_fills_nan_runs_and_normalises_with_train_statistics(pamap2):
    metadata = metadata_of(pamap2)
    train = pamap2["train"].with_format("numpy")[:]
    for name in metadata.modality_names:
        assert np.isfinite(train[name]).all()
    flattened = train["chest"].reshape(-1, 13)
    # overlapping windows weight rows unevenly, so the mean is near (not exactly) zero
    assert np.abs(flattened.mean(axis=0)).max() < 0.2
    assert metadata.normalization_applied and len(metadata.normalization["heart_rate"]["mean"]) == 1


def test_pamap2_rejects_a_truncated_row(tmp_path):
    protocol = tmp_path / "Protocol"
    path = write_pamap2_subject(protocol, "101", [(1, 40)])
    for subject in ("102", "103"):
        write_pamap2_subject(protocol, subject, [(1, 40)])
    lines = path.read_text().splitlines()
    lines[5] = " ".join(lines[5].split()[:30])
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="subject101.dat: line 6 has 30 fields, expected 54"):
        build("pamap2", data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), window=20, stride=10,
              train_subjects=["101"], validation_subjects=["102"], test_subjects=["103"])


def test_pamap2_rejects_an_unknown_activity(tmp_path):
    protocol = tmp_path / "Protocol"
    write_pamap2_subject(protocol, "101", [(1, 30), (99, 30)])
    for subject in ("102", "103"):
        write_pamap2_subject(protocol, subject, [(1, 40)])
    with pytest.raises(ValueError, match="unknown label value\\(s\\) \\[99\\]"):
        build("pamap2", data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), window=20, stride=10,
              train_subjects=["101"], validation_subjects=["102"], test_subjects=["103"])


def test_pamap2_names_a_missing_directory_and_a_missing_subject(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build("pamap2", data_dir=str(tmp_path / "nowhere"), cache_dir=str(tmp_path / "cache"))
    write_pamap2_subject(tmp_path / "Protocol", "101", [(1, 40)])
    with pytest.raises(ValueError, match="validation subjects \\['107'\\] are not in the data directory"):
        build("pamap2", data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), train_subjects=["101"])


def test_pamap2_window_longer_than_every_recording_is_a_clear_error(tmp_path):
    protocol = tmp_path / "Protocol"
    for subject in ("101", "102", "103"):
        write_pamap2_subject(protocol, subject, [(1, 40)])
    with pytest.raises(ValueError, match="the train split .* gives no example"):
        build("pamap2", data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), window=50, stride=10,
              train_subjects=["101"], validation_subjects=["102"], test_subjects=["103"])


def test_pamap2_without_data_dir_says_what_to_pass(tmp_path):
    with pytest.raises(ValueError, match="pamap2: pass data_dir="):
        build("pamap2", cache_dir=str(tmp_path))
