"""CMU-MOSI builder on fixture pickles in the MultiBench `mosi_raw.pkl` layout."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import datasets
import numpy as np
import pytest

from dataset_builders import BUILDERS, build, metadata_of
from builder_fixtures import code_running_pickle, forward_through_merge

STEPS, CHANNELS = 6, {"vision": 5, "audio": 4, "text": 7}
SENTIMENT = {
    "train": [2.4, -1.0, 0.0, 0.6, -2.8, 1.2, -0.4, 3.0],
    "valid": [-0.2, 0.0, 1.8],
    "test": [1.0, -3.0, 0.0, -1.6],
}


def multibench_split(labels: list[float], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {name: rng.normal(size=(len(labels), STEPS, channels)).astype(np.float32) for name, channels in CHANNELS.items()}
    arrays["audio"][0, 0, 0] = -np.inf  # MultiBench's raw audio holds -inf values
    arrays["labels"] = np.asarray(labels, dtype=np.float32).reshape(-1, 1, 1)
    arrays["id"] = np.asarray([[f"video{seed}", f"{index}"] for index in range(len(labels))])
    return arrays


def write_mosi_pickle(path: Path, splits: dict[str, dict] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    splits = splits or {split: multibench_split(labels, seed) for seed, (split, labels) in enumerate(SENTIMENT.items())}
    with path.open("wb") as handle:
        pickle.dump(splits, handle)
    return path


@pytest.fixture(scope="module")
def mosi_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mosi")
    write_mosi_pickle(root / "mosi_raw.pkl")
    return root


@pytest.fixture(scope="module")
def mosi(mosi_dir, tmp_path_factory):
    return build("mosi", data_dir=str(mosi_dir), cache_dir=str(tmp_path_factory.mktemp("cache")), normalize=False,
                 allow_pickle=True)


def test_mosi_keeps_official_splits_and_drops_neutral_segments(mosi):
    assert [mosi[split].num_rows for split in ("train", "validation", "test")] == [7, 2, 3]
    assert mosi["train"]["subject"] == ["video0_0", "video0_1", "video0_3", "video0_4", "video0_5", "video0_6", "video0_7"]
    assert set(metadata_of(mosi).skipped) == {"train/video0_2", "validation/video1_1", "test/video2_2"}


def test_mosi_labels_positive_above_zero_and_negative_below(mosi):
    assert mosi["train"].features["label"].names == ["negative", "positive"]
    assert mosi["train"]["label"] == [1, 0, 1, 0, 1, 0, 1]
    assert mosi["test"]["label"] == [1, 0, 0]


def test_mosi_regression_keeps_every_segment_with_its_sentiment_score_as_a_float_target(mosi_dir, tmp_path):
    from modeling_merge.configuration_merge import MergeConfig

    built = build("mosi", data_dir=str(mosi_dir), cache_dir=str(tmp_path), normalize=False, allow_pickle=True,
                  task="regression")
    assert [built[split].num_rows for split in ("train", "validation", "test")] == [8, 3, 4]
    for split, key in (("train", "train"), ("validation", "valid"), ("test", "test")):
        np.testing.assert_allclose(built[split]["label"], SENTIMENT[key], rtol=1e-6)
    assert built["train"].features["label"] == datasets.Value("float32")
    metadata = metadata_of(built)
    assert (metadata.problem_type, metadata.label_names, metadata.num_labels, metadata.skipped) == (
        "regression", ["sentiment"], 1, {}
    )
    config = MergeConfig(**metadata.merge_config_kwargs())
    assert (config.problem_type, config.num_labels) == ("regression", 1)
    forward_through_merge(built)  # one score per segment, mean squared error against the float targets
    with pytest.raises(ValueError, match="task must be 'binary' or 'regression', got 'ordinal'"):
        build("mosi", data_dir=str(mosi_dir), cache_dir=str(tmp_path / "c2"), allow_pickle=True, task="ordinal")


def test_mosi_features_are_the_pickled_arrays_with_channels_from_the_file(mosi):
    metadata = metadata_of(mosi)
    assert metadata.modalities == CHANNELS and metadata.window == STEPS
    assert mosi["train"].features["text"] == datasets.Array2D((STEPS, 7), "float32")
    expected = multibench_split(SENTIMENT["valid"], seed=1)
    np.testing.assert_allclose(mosi["validation"].with_format("numpy")[1]["text"], expected["text"][2])


def test_mosi_sets_non_finite_features_to_zero_and_warns(mosi_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        built = build("mosi", data_dir=str(mosi_dir), cache_dir=str(tmp_path), normalize=False, allow_pickle=True)
    assert built["train"].with_format("numpy")[0]["audio"][0, 0] == 0.0
    assert any("non-finite audio values set to 0" in message for message in caplog.messages)


def test_mosi_normalises_with_training_statistics(mosi_dir, tmp_path):
    built = build("mosi", data_dir=str(mosi_dir), cache_dir=str(tmp_path), allow_pickle=True)
    train = built["train"].with_format("numpy")[:]
    np.testing.assert_allclose(train["vision"].mean(axis=(0, 1)), 0.0, atol=1e-5)
    assert metadata_of(built).normalization_applied


def test_mosi_reads_mosi_data_pkl_when_asked(tmp_path):
    write_mosi_pickle(tmp_path / "data" / "mosi_data.pkl")
    built = build("mosi", data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), file_name="mosi_data.pkl",
                  allow_pickle=True)
    assert "mosi_data.pkl" in metadata_of(built).protocol


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda splits: splits.pop("valid"), "has no 'valid' split"),
        (lambda splits: splits["test"].pop("audio"), "split 'test' lacks \\['audio'\\]"),
        (lambda splits: splits["train"].update(text=np.zeros((8, STEPS))), "modality 'text' has shape \\(8, 6\\)"),
        (lambda splits: splits["train"].update(labels=np.zeros((8, 2))), "labels of shape \\(8, 2\\)"),
        (lambda splits: splits["valid"].update(labels=np.array([1.0, np.nan, 2.0])), "non-finite sentiment labels at \\[1\\]"),
        (lambda splits: splits["test"].update(vision=np.zeros((4, STEPS, 3))), "'vision' has different"),
    ],
)
def test_mosi_malformed_pickle_is_a_clear_error(tmp_path, corrupt, message):
    splits = {split: multibench_split(labels, seed) for seed, (split, labels) in enumerate(SENTIMENT.items())}
    corrupt(splits)
    write_mosi_pickle(tmp_path / "data" / "mosi_raw.pkl", splits)
    with pytest.raises(ValueError, match=message):
        build("mosi", data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), allow_pickle=True)


def test_mosi_missing_file_or_subject_override_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="mosi_raw.pkl"):
        build("mosi", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c1"))
    write_mosi_pickle(tmp_path / "mosi_raw.pkl")
    with pytest.raises(ValueError, match="official splits are fixed"):
        build("mosi", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c2"), test_subjects=["video2_0"])


def test_mosi_never_unpickles_unless_allowed(tmp_path):
    marker = tmp_path / "code_ran"
    (tmp_path / "mosi_raw.pkl").write_bytes(code_running_pickle(marker))
    with pytest.raises(ValueError, match="pass allow_pickle=True if you trust it"):
        build("mosi", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c1"))
    assert not marker.exists()
    with pytest.raises(ValueError, match="holds a TextIOWrapper, expected a dict"):
        build("mosi", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c2"), allow_pickle=True)  # opted in: it ran
    assert marker.exists()


def test_mosi_is_registered():
    assert BUILDERS["mosi"].__name__ == "MosiBuilder"


def test_mosi_batch_feeds_the_merge_model(mosi):
    forward_through_merge(mosi)
