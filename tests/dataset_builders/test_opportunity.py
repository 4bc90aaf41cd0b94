"""Opportunity builder on fixture runs in the official 250-column format."""

from __future__ import annotations

import numpy as np
import pytest

from dataset_builders import build, metadata_of

from builder_fixtures import segment_labels, write_opportunity_run

SPLIT = dict(train_runs=["S1-ADL1", "S2-ADL1"], validation_runs=["S1-ADL5"], test_runs=["S4-ADL1"])


@pytest.fixture(scope="module")
def opportunity_dir(tmp_path_factory):
    dataset = tmp_path_factory.mktemp("opportunity") / "OpportunityUCIDataset" / "dataset"
    # column 140 (objects) is lost in both training runs → dropped; windows of 20 rows, stride 10
    write_opportunity_run(dataset, "S1-ADL1", [(0, 25), (101, 60), (102, 45)], mostly_nan_columns=(140,), seed=1)
    write_opportunity_run(dataset, "S2-ADL1", [(103, 40), (104, 40)], mostly_nan_columns=(140,), seed=2)
    write_opportunity_run(dataset, "S1-ADL5", [(105, 40)], seed=3)
    lost_sensor = write_opportunity_run(dataset, "S4-ADL1", [(101, 30), (0, 30)], seed=4)
    lines = [line.split() for line in lost_sensor.read_text().splitlines()]
    lost_sensor.write_text("\n".join(" ".join(fields[:9] + ["NaN"] + fields[10:]) for fields in lines) + "\n")
    write_opportunity_run(dataset, "S1-Drill", [(101, 40)], seed=5)
    return dataset.parent.parent


@pytest.fixture(scope="module")
def opportunity(opportunity_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return build("opportunity", data_dir=str(opportunity_dir), cache_dir=str(cache), window=20, stride=10, **SPLIT)


def test_opportunity_has_seven_location_modalities_minus_mostly_nan_columns(opportunity):
    metadata = metadata_of(opportunity)
    assert list(metadata.modalities) == ["torso", "arms", "legs", "shoes", "objects", "environment", "location"]
    assert metadata.modalities["objects"] == 59 and metadata.modalities["torso"] == 19
    assert "column_140" not in metadata.channel_names["objects"]
    assert sum(metadata.modalities.values()) == 241
    assert metadata.label_names == ["relaxing", "coffee_time", "early_morning", "cleanup", "sandwich_time"]


def test_opportunity_windows_take_the_majority_high_level_activity(opportunity):
    names = opportunity["train"].features["label"].names
    rows = opportunity["train"].with_format("numpy")[:]
    s1 = rows["subject"] == "S1"
    # S1-ADL1 rows: null 0-24, relaxing 25-84, coffee 85-129; starts 0..110; null majority at 0, 10 → dropped
    assert [names[label] for label in rows["label"][s1]] == ["relaxing"] * 6 + ["coffee_time"] * 4
    assert set(rows["subject"]) == {"S1", "S2"}
    assert all(np.isfinite(rows[name]).all() for name in metadata_of(opportunity).modality_names)


def test_opportunity_step_labels_give_each_sample_its_high_level_activity_and_ignore_null(opportunity_dir, tmp_path):
    built = build("opportunity", data_dir=str(opportunity_dir), cache_dir=str(tmp_path), window=20, stride=10,
                  label_granularity="step", **SPLIT)
    assert metadata_of(built).label_granularity == "step"
    rows = built["train"].with_format("numpy")[:]
    activities = segment_labels([(0, 25), (101, 60), (102, 45)])  # S1-ADL1, 130 rows: starts 0..110
    classes = np.where(activities == 0, -100, activities - 101)
    expected = [classes[start : start + 20].tolist() for start in range(10, 120, 10)]
    assert rows["label"][rows["subject"] == "S1"].tolist() == expected  # the window at 0 is all null: dropped
    test = built["test"].with_format("numpy")[:]  # S4-ADL1: relaxing 0-29, null 30-59; starts 30, 40 all null
    assert test["label"].tolist() == [[0] * 20, [0] * 20, [0] * 10 + [-100] * 10]


def test_opportunity_fills_a_sensor_lost_for_a_whole_run_with_its_training_mean(opportunity):
    test = opportunity["test"].with_format("numpy")[:]
    column_10 = metadata_of(opportunity).channel_names["arms"].index("column_10")
    assert np.isfinite(test["arms"]).all()
    filled = test["arms"][:, :, column_10]
    assert np.ptp(filled) == 0  # one value through the run
    # the raw training mean sits near zero after z-scoring (a raw 0 would sit ~2 std below: training levels are 0-4)
    assert abs(float(filled[0, 0])) < 0.5


def test_opportunity_excludes_drill_runs_and_splits_by_run(opportunity):
    assert set(opportunity["validation"]["subject"]) == {"S1"}
    assert set(opportunity["test"]["subject"]) == {"S4"}
    assert "S1-Drill" not in [run for runs in metadata_of(opportunity).split_units.values() for run in runs]


def test_opportunity_subject_overrides_take_every_adl_run_of_those_subjects(opportunity_dir, tmp_path):
    built = build(
        "opportunity", data_dir=str(opportunity_dir), cache_dir=str(tmp_path), window=20, stride=10,
        train_subjects=["S2"], validation_subjects=["S1"], test_subjects=["S4"],
    )
    assert metadata_of(built).split_units["validation"] == ["S1-ADL1", "S1-ADL5"]


def test_opportunity_rejects_a_run_named_in_two_splits(opportunity_dir, tmp_path):
    with pytest.raises(ValueError, match="subjects \\['S1-ADL1'\\] are in both the train and the test split"):
        build("opportunity", data_dir=str(opportunity_dir), cache_dir=str(tmp_path),
              train_runs=["S1-ADL1"], validation_runs=["S1-ADL5"], test_runs=["S1-ADL1"])
