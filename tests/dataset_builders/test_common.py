"""The shared builder machinery: metadata round trips, windowing, splits, train-only normalisation."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest

from dataset_builders import BuildPlan, DatasetMetadata, Example, MergeTimeSeriesBuilder, build, metadata_of
from dataset_builders._common import (
    IGNORE_INDEX,
    ChannelMoments,
    block_mean,
    decode_text,
    fields_per_line,
    fill_nan_linear,
    majority_labels,
    plausible_events,
    read_whitespace_table,
    recording_windows,
    resample_to_grid,
    resolve_subject_splits,
    window_starts,
)


def small_metadata(**overrides) -> DatasetMetadata:
    fields = dict(
        name="toy",
        modalities={"fast": 2, "slow": 1},
        sampling_rates_hz={"fast": 4.0, "slow": 2.0},
        patch_sizes={"fast": 2},
        token_grid_hz=2.0,
        window=3,
        stride=3,
        label_names=["rest", "move"],
        protocol="toy protocol",
        has_modality_mask=True,
    )
    fields.update(overrides)
    return DatasetMetadata(**fields)


class ToyBuilder(MergeTimeSeriesBuilder):
    """Toy builder: subject s gives 2 examples whose values are s (fast) and 10·s (slow); subject 'c' lacks 'slow'."""

    REQUIRES_DATA_DIR = False

    def _plan(self) -> BuildPlan:
        return BuildPlan(
            metadata=small_metadata(),
            units={"train": ["1", "3", "c"], "validation": ["5"], "test": ["7"]},
            skipped={"9": "no file"},
        )

    def _unit_examples(self, unit):
        value = 2.0 if unit == "c" else float(unit)
        for index in range(2):
            yield Example(
                key=f"{unit}-{index}",
                modalities={
                    "fast": np.full((6, 2), value + index, np.float32),
                    "slow": np.full((3, 1), 10 * value, np.float32),
                },
                label=index,
                subject=unit,
                modality_mask=[True, unit != "c"],
            )


def test_metadata_round_trips_through_json():
    metadata = small_metadata(normalization={"slow": {"mean": [1.0], "std": [2.0]}})
    assert DatasetMetadata.from_json(metadata.to_json()) == metadata
    assert json.loads(metadata.to_json())["modalities"] == {"fast": 2, "slow": 1}


def test_metadata_rejects_names_outside_the_modalities():
    with pytest.raises(ValueError, match="patch_sizes names unknown modalities \\['audio'\\]"):
        small_metadata(patch_sizes={"audio": 2})
    with pytest.raises(ValueError, match="sampling_rates_hz lacks \\['slow'\\]"):
        small_metadata(sampling_rates_hz={"fast": 4.0})


def test_merge_config_kwargs_give_modalities_patches_and_labels():
    kwargs = small_metadata().merge_config_kwargs()
    assert kwargs["modalities"] == {"fast": 2, "slow": 1}
    assert kwargs["patch_sizes"] == {"fast": 2, "slow": 1}
    assert kwargs["num_labels"] == 2
    assert kwargs["id2label"] == {0: "rest", 1: "move"} and kwargs["label2id"] == {"rest": 0, "move": 1}


def test_per_step_labels_are_window_int64_ids_and_a_regression_target_one_float():
    step = small_metadata(label_granularity="step")
    assert step.features()["label"] == datasets.List(datasets.Value("int64"), length=3)
    assert step.merge_config_kwargs()["num_labels"] == 2
    regression = small_metadata(label_names=["score"], problem_type="regression")
    assert regression.features()["label"] == datasets.Value("float32")
    kwargs = regression.merge_config_kwargs()
    assert kwargs["problem_type"] == "regression" and kwargs["num_labels"] == 1
    assert "problem_type" not in small_metadata().merge_config_kwargs()
    assert DatasetMetadata.from_json(step.to_json()) == step


def test_metadata_saved_before_label_options_existed_reads_as_window_classification():
    payload = json.loads(small_metadata().to_json())
    del payload["label_granularity"], payload["problem_type"]
    metadata = DatasetMetadata.from_json(json.dumps(payload))
    assert (metadata.label_granularity, metadata.problem_type, metadata.num_labels) == ("window", "single_label_classification", 2)


def test_metadata_refuses_unknown_label_options_and_a_regression_without_one_name():
    with pytest.raises(ValueError, match=r"label_granularity must be one of \('window', 'step'\), got 'token'"):
        small_metadata(label_granularity="token")
    with pytest.raises(ValueError, match="problem_type must be one of .*got 'multi_label'"):
        small_metadata(problem_type="multi_label")
    with pytest.raises(ValueError, match="a regression target has one name and one value per window"):
        small_metadata(problem_type="regression")
    with pytest.raises(ValueError, match="a regression target has one name and one value per window"):
        small_metadata(label_names=["score"], problem_type="regression", label_granularity="step")


def test_features_have_one_array_per_modality_with_rows_times_patch():
    features = small_metadata().features()
    assert features["fast"] == datasets.Array2D((6, 2), "float32")
    assert features["slow"] == datasets.Array2D((3, 1), "float32")
    assert features["label"].names == ["rest", "move"]
    assert features["modality_mask"] == datasets.List(datasets.Value("bool"), length=2)


def test_window_starts_cover_only_full_windows():
    assert window_starts(10, 4, 3).tolist() == [0, 3, 6]
    assert window_starts(3, 4, 1).size == 0


def test_majority_labels_take_the_most_frequent_value_per_window():
    labels = np.array([5, 5, 1, 1, 1, 2, 2, 2, 2])
    assert majority_labels(labels, np.array([0, 3, 5]), 4).tolist() == [1, 1, 2]
    # tie between 5 and 1 → the smaller value
    assert majority_labels(labels, np.array([0]), 4).tolist() == [1]


def test_fill_nan_linear_interpolates_runs_and_names_empty_channels():
    values = np.array([[np.nan, 1.0], [2.0, np.nan], [np.nan, np.nan], [4.0, 7.0]])
    filled = fill_nan_linear(values, "heart rate")
    assert filled[:, 0].tolist() == [2.0, 2.0, 3.0, 4.0]
    assert filled[:, 1].tolist() == [1.0, 3.0, 5.0, 7.0]
    with pytest.raises(ValueError, match="heart rate: channel 1 has no valid"):
        fill_nan_linear(np.array([[1.0, np.nan], [2.0, np.nan]]), "heart rate")


def test_block_mean_averages_consecutive_rows_and_drops_the_partial_block():
    values = np.arange(7, dtype=float)[:, None]
    assert block_mean(values, 3)[:, 0].tolist() == [1.0, 4.0]


def test_subject_splits_take_overrides_and_reject_overlaps_and_unknown_subjects():
    defaults = {"train": ["a", "b"], "validation": ["c"], "test": ["d"]}
    splits = resolve_subject_splits("toy", "abcd", defaults, {"train": ["a"], "validation": None, "test": None})
    assert splits == {"train": ["a"], "validation": ["c"], "test": ["d"]}
    with pytest.raises(ValueError, match="subjects \\['c'\\] are in both the train and the validation split"):
        resolve_subject_splits("toy", "abcd", defaults, {"train": ["a", "c"]})
    with pytest.raises(ValueError, match="test subjects \\['z'\\] are not in the data directory"):
        resolve_subject_splits("toy", "abcd", defaults, {"test": ["z"]})


def test_channel_moments_match_numpy_and_keep_constant_channels_finite():
    rng = np.random.default_rng(0)
    first, second = rng.normal(size=(5, 2)), rng.normal(size=(7, 2))
    moments = ChannelMoments(2)
    moments.update(first)
    moments.update(second)
    stacked = np.concatenate([first, second])
    statistics = moments.statistics()
    np.testing.assert_allclose(statistics["mean"], stacked.mean(axis=0))
    np.testing.assert_allclose(statistics["std"], stacked.std(axis=0))
    constant = ChannelMoments(1)
    constant.update(np.full((4, 1), 3.0))
    assert constant.statistics()["std"] == [1.0]


def test_builder_normalises_every_split_with_train_statistics_only(tmp_path):
    builder = ToyBuilder(cache_dir=str(tmp_path / "cache"))
    builder.download_and_prepare()
    built = builder.as_dataset()
    metadata = metadata_of(built)
    # train fast values: subjects 1, 3, c(=2) with offsets 0 and 1 → mean 2.5; slow only from present 1, 3.
    assert metadata.normalization["fast"]["mean"] == pytest.approx([2.5, 2.5])
    assert metadata.normalization["slow"]["mean"] == pytest.approx([20.0])
    assert metadata.normalization["slow"]["std"] == pytest.approx([10.0])
    test_row = built["test"].with_format("numpy")[0]
    np.testing.assert_allclose(test_row["slow"], np.full((3, 1), (70.0 - 20.0) / 10.0))
    absent = built["train"].filter(lambda row: row["subject"] == "c").with_format("numpy")[:]
    assert (absent["slow"] == 0).all() and absent["modality_mask"][:, 1].tolist() == [False, False]
    assert metadata.skipped == {"9": "no file"}
    assert metadata.split_units["validation"] == ["5"]


def test_metadata_survives_save_to_disk_and_load_from_disk(tmp_path):
    builder = ToyBuilder(cache_dir=str(tmp_path / "cache"))
    builder.download_and_prepare()
    built = builder.as_dataset()
    built.save_to_disk(str(tmp_path / "saved"))
    assert metadata_of(datasets.load_from_disk(str(tmp_path / "saved"))) == metadata_of(built)


def test_metadata_survives_a_second_builder_reading_the_cache(tmp_path):
    first = ToyBuilder(cache_dir=str(tmp_path / "cache"))
    first.download_and_prepare()
    second = ToyBuilder(cache_dir=str(tmp_path / "cache"))
    second.download_and_prepare()
    assert metadata_of(second.as_dataset()) == metadata_of(first.as_dataset())


def test_metadata_of_a_plain_dataset_says_it_has_none():
    with pytest.raises(ValueError, match="carries no MERGE metadata"):
        metadata_of(datasets.Dataset.from_dict({"x": [1]}))


def test_resample_to_grid_averages_fast_signals_and_interpolates_slow_ones():
    fast = np.repeat(np.arange(4.0), 8)[:, None]  # 8 Hz, one level per second
    np.testing.assert_array_equal(resample_to_grid(fast, 8.0, 1.0, 4)[:, 0], [0.0, 1.0, 2.0, 3.0])
    ramp = (np.arange(18) / 3.0)[:, None]  # x(t) = t at 3 Hz onto 2 Hz: interpolated, then averaged
    np.testing.assert_allclose(resample_to_grid(ramp, 3.0, 2.0, 8)[:, 0], (np.arange(8) + 0.5) / 2.0)
    slow = np.array([[0.0], [10.0]])  # 1 Hz ramp onto 4 Hz: step centres at 0.125, 0.375, ...
    np.testing.assert_allclose(resample_to_grid(slow, 1.0, 4.0, 4)[:, 0], [1.25, 3.75, 6.25, 8.75])
    shifted = resample_to_grid(slow, 1.0, 4.0, 4, start_s=0.5)[:, 0]  # samples at 0.5 s and 1.5 s
    np.testing.assert_allclose(shifted, [0.0, 0.0, 1.25, 3.75])


def test_fields_per_line_counts_whitespace_separated_fields():
    assert fields_per_line(b"1 2 3\n4  5\t6\n\n7 NaN").tolist() == [3, 3, 0, 2]
    assert fields_per_line(b"1 2\n").tolist() == [2]


def test_read_whitespace_table_names_an_empty_file_and_a_non_number(tmp_path):
    empty = tmp_path / "empty.dat"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.dat: the file is empty"):
        read_whitespace_table(empty, 3)
    wrong = tmp_path / "wrong.dat"
    wrong.write_text("1 2 3\n4 five 6\n")
    with pytest.raises(ValueError, match="wrong.dat: a field is not a number"):
        read_whitespace_table(wrong, 3)


def test_recording_windows_reject_unknown_labels_and_misaligned_signals():
    signals = {"a": np.zeros((6, 1)), "b": np.zeros((12, 2))}
    windows = recording_windows("s1", signals, np.array([1, 1, 1, 2, 2, 2]), {1: 0, 2: 1}, set(), 3, 3, {"b": 2})
    assert [(example.key, example.label, example.modalities["b"].shape) for example in windows] == [
        ("s1-0", 0, (6, 2)), ("s1-3", 1, (6, 2))
    ]
    with pytest.raises(ValueError, match="subject s1: unknown label value\\(s\\) \\[7\\]"):
        list(recording_windows("s1", signals, np.array([1, 1, 1, 7, 7, 7]), {1: 0, 2: 1}, set(), 3, 3, {"b": 2}))
    with pytest.raises(ValueError, match="modality 'b' has 12 rows, expected 6"):
        list(recording_windows("s1", signals, np.array([1] * 6), {1: 0}, set(), 3, 3))


def test_recording_windows_with_step_labels_give_one_id_per_step_and_ignore_excluded_steps():
    signals = {"a": np.arange(12.0)[:, None]}
    raw = np.array([0, 0, 0, 0, 1, 1, 2, 2, 0, 0, 0, 0])  # 0 is excluded
    windows = list(recording_windows("s1", signals, raw, {1: 0, 2: 1}, {0}, 4, 2, label_granularity="step"))
    # starts 0, 2, 4, 6, 8: the window at 0 and at 8 hold no labelled step and are dropped
    assert [example.key for example in windows] == ["s1-2", "s1-4", "s1-6"]
    assert [example.label.tolist() for example in windows] == [
        [IGNORE_INDEX, IGNORE_INDEX, 0, 0], [0, 0, 1, 1], [1, 1, IGNORE_INDEX, IGNORE_INDEX]
    ]
    assert windows[1].modalities["a"][:, 0].tolist() == [4.0, 5.0, 6.0, 7.0]
    by_majority = list(recording_windows("s1", signals, raw, {1: 0, 2: 1}, {0}, 4, 2))
    assert [(example.key, example.label) for example in by_majority] == [("s1-4", 0)]  # tie 1 / 2 → smaller code


class StepToyBuilder(MergeTimeSeriesBuilder):
    """Toy builder with per-step labels: unit u gives one example whose step labels are `STEP_LABELS[u]`."""

    REQUIRES_DATA_DIR = False
    STEP_LABELS = {"1": [0, 1, IGNORE_INDEX], "2": [1, 1, 0], "3": [IGNORE_INDEX, 0, 0]}

    def _plan(self) -> BuildPlan:
        units = {"train": ["1"], "validation": ["2"], "test": ["3"]}
        return BuildPlan(metadata=small_metadata(label_granularity="step"), units=units)

    def _unit_examples(self, unit):
        modalities = {"fast": np.full((6, 2), float(unit)), "slow": np.full((3, 1), 1.0)}
        yield Example(key=unit, modalities=modalities, label=np.asarray(self.STEP_LABELS[unit]), subject=unit)


def test_step_labels_round_trip_through_arrow_save_to_disk_and_parquet(tmp_path):
    builder = StepToyBuilder(cache_dir=str(tmp_path / "cache"))
    builder.download_and_prepare()
    built = builder.as_dataset()
    assert [built[split]["label"][0] for split in ("train", "validation", "test")] == list(StepToyBuilder.STEP_LABELS.values())
    assert metadata_of(built).label_granularity == "step"
    built.save_to_disk(str(tmp_path / "saved"))
    assert datasets.load_from_disk(str(tmp_path / "saved"))["train"]["label"] == [[0, 1, IGNORE_INDEX]]
    built["test"].to_parquet(str(tmp_path / "test.parquet"))
    reread = datasets.load_dataset("parquet", data_files=str(tmp_path / "test.parquet"), split="train",
                                   cache_dir=str(tmp_path / "parquet_cache"))
    assert reread.features["label"] == built["test"].features["label"]
    assert reread["label"] == [[IGNORE_INDEX, 0, 0]]
    as_numpy = reread.with_format("numpy")[:]["label"]
    assert as_numpy.dtype == np.int64 and as_numpy.shape == (1, 3)


class BadLabelBuilder(StepToyBuilder):
    """Unit "2" gives a step label outside the classes."""

    STEP_LABELS = {"1": [0, 1, 1], "2": [0, 2, 1], "3": [0, 0, 0]}


def test_a_label_outside_the_classes_is_an_error_naming_the_example(tmp_path):
    with pytest.raises(ValueError, match=r"example 2: label\(s\) \[0, 1, 2\] outside the 2 classes \['rest', 'move'\]"):
        BadLabelBuilder(cache_dir=str(tmp_path / "cache")).download_and_prepare()


class AllAbsentToyBuilder(ToyBuilder):
    """ToyBuilder whose subject '3' has every modality absent in its second example."""

    def _unit_examples(self, unit):
        for example in super()._unit_examples(unit):
            if example.key == "3-1":
                example.modality_mask = [False, False]
            yield example


def test_an_example_with_every_modality_absent_is_skipped_and_listed(tmp_path):
    builder = AllAbsentToyBuilder(cache_dir=str(tmp_path / "cache"))
    builder.download_and_prepare()
    built = builder.as_dataset()
    assert built["train"]["subject"].count("3") == 1 and built["train"].num_rows == 5
    assert metadata_of(built).skipped == {"9": "no file", "3-1": "every modality absent (subject 3)"}
    # train fast values: subject 1 → 1, 2; subject 3 → 3 (its 4 skipped); subject c → 2, 3
    assert metadata_of(built).normalization["fast"]["mean"] == pytest.approx([(1 + 2 + 3 + 2 + 3) / 5] * 2)


def test_decode_text_reads_utf8_with_or_without_a_bom_and_utf16_and_names_other_bytes():
    assert decode_text("RecordID,x\n".encode(), "f.txt") == "RecordID,x\n"
    assert decode_text(b"\xef\xbb\xbfRecordID,x\n", "f.txt") == "RecordID,x\n"
    assert decode_text("RecordID,x\n".encode("utf-16"), "f.txt") == "RecordID,x\n"
    with pytest.raises(ValueError, match=r"f.txt: not UTF-8 text \(byte b'\\xe9' at offset 3\)"):
        decode_text("Caf\u00e9".encode("latin-1"), "f.txt")


def test_an_unknown_builder_name_lists_the_builders_and_aliases():
    with pytest.raises(KeyError, match=r"unknown dataset builder 'wesad-e4'.*'pamap2'.*aliases: \['wesad_e4'\]"):
        build("wesad-e4")


def test_plausible_events_keep_values_inside_their_variables_range_and_count_the_rest_per_ranged_variable():
    codes = np.array([0, 0, 1, 1, 2, 2])
    values = np.array([80.0, 0.0, 7.35, 735.0, -5.0, 1e9])
    keep, outside = plausible_events(codes, values, ["HR", "pH", "Urine"], {"HR": (1.0, 300.0), "pH": (6.0, 8.0)})
    assert keep.tolist() == [True, False, True, False, True, True]  # Urine has no range: every value passes
    assert outside == {"HR": 1, "pH": 1}
