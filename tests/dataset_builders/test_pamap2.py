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


def plant_fields(path, planted: dict[tuple[int, int], str]) -> None:
    """Overwrite fields of a `.dat` file: (0-based row, 0-based column) → text."""
    lines = path.read_text().splitlines()
    for (row, column), text in planted.items():
        fields = lines[row].split()
        fields[column] = text
        lines[row] = " ".join(fields)
    path.write_text("\n".join(lines) + "\n")


def test_pamap2_implausible_heart_rate_and_imu_temperature_are_filled_like_nan_and_counted_unless_kept(tmp_path):
    # (row, column) → value: heart rate (column 2) 0 and 400 bpm, chest (20) and ankle (37) IMU temperature 300 / -40 °C
    planted = {(22, 2): 0.0, (44, 2): 400.0, (30, 20): 300.0, (50, 37): -40.0}

    def write_subjects(protocol):
        for subject in ("102", "103"):
            write_pamap2_subject(protocol, subject, [(1, 40)])
        return write_pamap2_subject(protocol, "101", [(0, 25), (1, 60), (0, 20), (4, 55)], seed=1)

    planted_path, nan_path = write_subjects(tmp_path / "planted"), write_subjects(tmp_path / "nan")
    recorded = np.loadtxt(planted_path)
    plant_fields(planted_path, {cell: f"{value:.1f}" for cell, value in planted.items()})
    plant_fields(nan_path, {cell: "NaN" for cell in planted})
    options = dict(window=20, stride=10, normalize=False, train_subjects=["101"], validation_subjects=["102"],
                   test_subjects=["103"])
    cleaned = build("pamap2", data_dir=str(tmp_path / "planted"), cache_dir=str(tmp_path / "c"), **options)
    kept = build("pamap2", data_dir=str(tmp_path / "planted"), cache_dir=str(tmp_path / "k"), drop_implausible=False, **options)
    as_nan = build("pamap2", data_dir=str(tmp_path / "nan"), cache_dir=str(tmp_path / "n"), **options)

    none = {"heart_rate": 0, "chest_temperature": 0, "hand_temperature": 0, "ankle_temperature": 0}
    counts = metadata_of(cleaned).extras["implausible_samples"]
    assert counts == {"101": none | {"heart_rate": 2, "chest_temperature": 1, "ankle_temperature": 1}, "102": none, "103": none}
    assert "values outside PLAUSIBLE_RANGES" in metadata_of(cleaned).protocol
    assert "implausible_samples" not in metadata_of(kept).extras
    assert "PLAUSIBLE_RANGES" not in metadata_of(kept).protocol

    cleaned_rows, kept_rows, nan_rows = (built["train"].with_format("numpy")[:] for built in (cleaned, kept, as_nan))
    for name in metadata_of(cleaned).modality_names:  # out-of-range samples are interpolated exactly like NaN ones
        np.testing.assert_array_equal(cleaned_rows[name], nan_rows[name], err_msg=name)
    # windows of subject 101 start at rows 20, 30, 40, ...: row 22 is window 0 step 2, row 30 window 1 step 0, rows 44
    # and 50 window 2 steps 4 and 10
    assert kept_rows["heart_rate"][0, 2, 0] == 0.0 and kept_rows["heart_rate"][2, 4, 0] == 400.0
    assert kept_rows["chest"][1, 0, 0] == 300.0 and kept_rows["ankle"][2, 10, 0] == -40.0
    # heart rate is recorded every 11th row: 80 bpm at row 11 (transient), 81 at rows 33 and 55 (lying)
    assert cleaned_rows["heart_rate"][0, 2, 0] == pytest.approx(80.5) and cleaned_rows["heart_rate"][2, 4, 0] == 81.0
    assert cleaned_rows["chest"][1, 0, 0] == pytest.approx(recorded[[29, 31], 20].mean(), abs=1e-5)
    assert cleaned_rows["ankle"][2, 10, 0] == pytest.approx(recorded[[49, 51], 37].mean(), abs=1e-5)


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
