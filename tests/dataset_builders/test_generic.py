"""Generic builder: a user's CSV / parquet recordings or arrays of windows, in the benchmark builders' shape."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dataset_builders import build, metadata_of

COLUMNS = {"imu": ["ax", "ay", "az"], "pulse": ["bpm"]}


def recording(subject: str, labels: list[tuple[str, int]], seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = [name for name, rows in labels for _ in range(rows)]
    frame = pd.DataFrame(rng.normal(size=(len(label), 4)), columns=["ax", "ay", "az", "bpm"])
    frame["activity"], frame["person"] = label, subject
    return frame


@pytest.fixture()
def csv_dir(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    first = pd.concat([recording("ann", [("rest", 30), ("walk", 30)], 1), recording("bob", [("walk", 40)], 2)])
    first.loc[first.index[5:8], "bpm"] = np.nan
    first.to_csv(folder / "day1.csv", index=False)
    recording("cid", [("rest", 40)], 3).to_csv(folder / "day2.csv", index=False)
    recording("dan", [("run", 20), ("rest", 20)], 4).drop(columns=["bpm"]).to_parquet(folder / "day3.parquet")
    return folder


def test_generic_turns_csv_and_parquet_files_into_the_uniform_shape(csv_dir, tmp_path):
    built = build(
        "generic", data_dir=str(csv_dir), cache_dir=str(tmp_path / "cache"), modality_columns=COLUMNS,
        label_column="activity", subject_column="person", sampling_rate_hz=50.0, window=10, stride=10,
        train_subjects=["ann", "dan"], validation_subjects=["bob"], test_subjects=["cid"],
    )
    metadata = metadata_of(built)
    assert metadata.modalities == {"imu": 3, "pulse": 1} and metadata.token_grid_hz == 50.0
    assert metadata.label_names == ["rest", "run", "walk"]
    assert built["train"].features["imu"].shape == (10, 3)
    train = built["train"].with_format("numpy")[:]
    ann = train["subject"] == "ann"
    assert [metadata.label_names[label] for label in train["label"][ann]] == ["rest"] * 3 + ["walk"] * 3
    # day3.parquet has no pulse column: dan's windows mark it absent and hold zeros
    dan = train["subject"] == "dan"
    assert train["modality_mask"][dan].tolist() == [[True, False]] * 4
    assert (train["pulse"][dan] == 0).all() and np.isfinite(train["pulse"]).all()
    assert set(built["test"]["subject"]) == {"cid"}


def test_generic_without_split_draws_a_seeded_split_of_subjects(csv_dir, tmp_path):
    kwargs = dict(modality_columns=COLUMNS, label_column="activity", subject_column="person", window=10, stride=10)
    first = metadata_of(build("generic", data_dir=str(csv_dir), cache_dir=str(tmp_path / "a"), **kwargs))
    second = metadata_of(build("generic", data_dir=str(csv_dir), cache_dir=str(tmp_path / "b"), **kwargs))
    assert first.split_units == second.split_units
    assert sorted(sum((units for units in first.split_units.values()), [])) == [
        "day1/ann", "day1/bob", "day2/cid", "day3/dan"
    ]


def test_generic_names_a_file_missing_part_of_a_modality(csv_dir, tmp_path):
    recording("eve", [("rest", 20)], 5).drop(columns=["az"]).to_csv(csv_dir / "day4.csv", index=False)
    with pytest.raises(ValueError, match="day4.csv lacks column\\(s\\) \\['az'\\] of modality 'imu'"):
        build("generic", data_dir=str(csv_dir), cache_dir=str(tmp_path / "cache"), modality_columns=COLUMNS,
              label_column="activity", subject_column="person", window=10, stride=10)


@pytest.mark.parametrize("content", ["", "ax,ay,az,bpm,activity,person\n"], ids=["zero bytes", "header only"])
def test_generic_names_an_empty_csv(csv_dir, tmp_path, content):
    (csv_dir / "day4.csv").write_text(content)
    with pytest.raises(ValueError, match="day4.csv is empty"):
        build("generic", data_dir=str(csv_dir), cache_dir=str(tmp_path / "cache"), modality_columns=COLUMNS,
              label_column="activity", subject_column="person", window=10, stride=10)


def test_generic_reads_a_utf16_csv_and_names_one_in_another_encoding(csv_dir, tmp_path):
    options = dict(modality_columns=COLUMNS, label_column="activity", subject_column="person", window=10, stride=10,
                   train_subjects=["ann", "dan"], validation_subjects=["bob"], test_subjects=["cid"])
    plain = build("generic", data_dir=str(csv_dir), cache_dir=str(tmp_path / "plain"), **options)
    day2 = csv_dir / "day2.csv"
    day2.write_bytes(day2.read_text().encode("utf-16"))
    utf16 = build("generic", data_dir=str(csv_dir), cache_dir=str(tmp_path / "utf16"), **options)
    np.testing.assert_array_equal(utf16["test"].with_format("numpy")[:]["imu"], plain["test"].with_format("numpy")[:]["imu"])
    day2.write_bytes(day2.read_text(encoding="utf-16").replace("rest", "r\u00e9st").encode("latin-1"))
    with pytest.raises(ValueError, match=r"generic: .*day2\.csv: not UTF-8 text \(byte b'\\xe9'"):
        build("generic", data_dir=str(csv_dir), cache_dir=str(tmp_path / "latin1"), **options)


def test_generic_skips_and_lists_examples_with_every_modality_absent(csv_dir, tmp_path):
    rng = np.random.default_rng(0)
    mask = np.ones((12, 2), dtype=bool)
    mask[[3, 7]] = False
    arrays = {"a": rng.normal(size=(12, 4, 1)), "b": rng.normal(size=(12, 4, 2))}
    built = build("generic", cache_dir=str(tmp_path / "arrays"), arrays=arrays, labels=np.arange(12) % 2,
                  label_names=["no", "yes"], subjects=[f"p{index // 2}" for index in range(12)], modality_mask=mask)
    assert sum(built[split].num_rows for split in built) == 10
    assert metadata_of(built).skipped == {
        "p1-3": "every modality absent (subject p1)", "p3-7": "every modality absent (subject p3)"
    }
    # a file with no column of any modality: each of its windows has every modality absent
    recording("eve", [("rest", 20)], 5)[["activity", "person"]].to_csv(csv_dir / "day4.csv", index=False)
    files = build("generic", data_dir=str(csv_dir), cache_dir=str(tmp_path / "files"), modality_columns=COLUMNS,
                  label_column="activity", subject_column="person", window=10, stride=10,
                  train_subjects=["ann", "eve"], validation_subjects=["bob"], test_subjects=["cid", "dan"])
    assert "eve" not in files["train"]["subject"]
    assert {key: reason for key, reason in metadata_of(files).skipped.items() if "eve" in reason} == {
        "day4/eve-0": "every modality absent (subject eve)", "day4/eve-10": "every modality absent (subject eve)"
    }


def test_generic_rejects_labels_outside_the_given_names(csv_dir, tmp_path):
    with pytest.raises(ValueError, match="label value\\(s\\) \\['run'\\] are not in label_names"):
        build("generic", data_dir=str(csv_dir), cache_dir=str(tmp_path / "cache"), modality_columns=COLUMNS,
              label_column="activity", subject_column="person", label_names=["rest", "walk"], window=10, stride=10)


def test_generic_arrays_give_patch_sizes_masks_and_named_labels(tmp_path):
    rng = np.random.default_rng(0)
    count = 12
    arrays = {"slow": rng.normal(size=(count, 5, 2)), "fast": rng.normal(size=(count, 20, 1))}
    mask = np.ones((count, 2), dtype=bool)
    mask[3, 1] = False
    built = build(
        "generic", cache_dir=str(tmp_path), arrays=arrays, labels=np.arange(count) % 2, label_names=["no", "yes"],
        subjects=[f"p{index // 2}" for index in range(count)], modality_mask=mask, sampling_rate_hz=2.0,
    )
    metadata = metadata_of(built)
    assert metadata.patch_sizes == {"slow": 1, "fast": 4} and metadata.window == 5
    assert metadata.sampling_rates_hz == {"slow": 2.0, "fast": 8.0}
    assert metadata.label_names == ["no", "yes"]
    assert sum(built[split].num_rows for split in built) == count
    assert built["train"].features["fast"].shape == (20, 1)
    every = [row for split in built for row in built[split].with_format("numpy")]
    masked = [row for row in every if not row["modality_mask"][1]]
    assert len(masked) == 1 and (masked[0]["fast"] == 0).all()


def test_generic_arrays_reject_nan_and_mismatched_shapes(tmp_path):
    values = np.zeros((6, 4, 1))
    values[2, 1, 0] = np.nan
    with pytest.raises(ValueError, match="modality 'x' contains NaN"):
        build("generic", cache_dir=str(tmp_path / "a"), arrays={"x": values}, labels=[0, 1] * 3, subjects=list("aabbcc"))
    with pytest.raises(ValueError, match="modality 'y' has 6 time steps, not a multiple of the shortest modality's 4"):
        build("generic", cache_dir=str(tmp_path / "b"), arrays={"x": np.zeros((6, 4, 1)), "y": np.zeros((6, 6, 1))},
              labels=[0, 1] * 3, subjects=list("aabbcc"))


def test_build_reuses_its_cache_until_asked_to_rebuild(csv_dir, tmp_path):
    kwargs = dict(data_dir=str(csv_dir), cache_dir=str(tmp_path / "cache"), modality_columns=COLUMNS,
                  label_column="activity", subject_column="person", window=10, stride=10, normalize=False,
                  train_subjects=["ann", "dan"], validation_subjects=["bob"], test_subjects=["cid"])
    before = build("generic", **kwargs)
    frame = pd.read_csv(csv_dir / "day2.csv")
    frame["ax"] = 100.0
    frame.to_csv(csv_dir / "day2.csv", index=False)
    cached = build("generic", **kwargs)
    np.testing.assert_array_equal(cached["test"].with_format("numpy")[:]["imu"], before["test"].with_format("numpy")[:]["imu"])
    rebuilt = build("generic", download_mode="force_redownload", **kwargs)
    assert (rebuilt["test"].with_format("numpy")[:]["imu"][:, :, 0] == 100.0).all()
