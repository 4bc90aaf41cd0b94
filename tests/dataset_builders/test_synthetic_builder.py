"""The known-RUS synthetic benchmark builder: generated data, seeded splits, planted structure in the metadata."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from dataset_builders import BUILDERS, build, metadata_of
from dataset_builders.synthetic import planted_structure
from modeling_merge.rus.synthetic import make_temporal_rus_benchmark

from builder_fixtures import forward_through_merge

SMALL = dict(num_sequences=120, seq_len=8, num_lags=4, channels=2, seed=3)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return build("synthetic", cache_dir=str(tmp_path_factory.mktemp("synthetic_cache")), normalize=False, **SMALL)


def test_synthetic_needs_no_data_dir_and_has_one_array_per_generated_modality(synthetic):
    metadata = metadata_of(synthetic)
    benchmark = make_temporal_rus_benchmark(**SMALL)
    assert metadata.modality_names == benchmark.modality_names
    assert all(channels == 2 for channels in metadata.modalities.values())
    assert synthetic["train"].features["synergy_a"] == datasets.Array2D((8, 2), "float32")
    assert metadata.window == 8 and metadata.label_names == benchmark.label_names
    assert "modality_mask" not in synthetic["train"].features


def test_synthetic_examples_are_the_generated_sequences_with_their_labels(synthetic):
    benchmark = make_temporal_rus_benchmark(**SMALL)
    for split in synthetic.values():
        rows = split.with_format("numpy")[:]
        indices = [int(subject.removeprefix("seq")) for subject in rows["subject"]]
        np.testing.assert_array_equal(rows["label"], benchmark.labels[indices])
        np.testing.assert_allclose(rows["redundant_b"], benchmark.modalities["redundant_b"][indices])


def test_synthetic_split_covers_every_sequence_once_seventy_fifteen_fifteen(synthetic):
    subjects = [set(synthetic[name]["subject"]) for name in ("train", "validation", "test")]
    assert sum(len(members) for members in subjects) == len(set().union(*subjects)) == 120
    assert [len(members) for members in subjects] == pytest.approx([84, 18, 18], abs=2)


def test_synthetic_split_depends_on_the_seed(tmp_path):
    first = build("synthetic", cache_dir=str(tmp_path / "a"), **{**SMALL, "seed": 1})
    second = build("synthetic", cache_dir=str(tmp_path / "b"), **{**SMALL, "seed": 2})
    assert set(first["test"]["subject"]) != set(second["test"]["subject"])


def test_planted_structure_travels_with_the_saved_dataset(synthetic, tmp_path):
    synthetic.save_to_disk(str(tmp_path / "saved"))
    planted = planted_structure(datasets.load_from_disk(str(tmp_path / "saved")))
    expected = make_temporal_rus_benchmark(**SMALL).planted
    assert planted["unique"] == expected["unique"]
    assert planted["synergistic"] == expected["synergistic"] and planted["redundant"] == expected["redundant"]
    assert planted["generator_arguments"]["seed"] == 3
    for name in ("redundancy", "uniqueness", "synergy"):
        np.testing.assert_array_equal(planted["rus"][name], expected["rus"][name])
        assert planted["rus"][name].shape == (7, 7, 4)


def test_normalised_build_uses_training_statistics(tmp_path):
    built = build("synthetic", cache_dir=str(tmp_path), **SMALL)
    metadata = metadata_of(built)
    train = built["train"].with_format("numpy")[:]
    np.testing.assert_allclose(train["noise_0"].mean(axis=(0, 1)), 0.0, atol=1e-5)
    np.testing.assert_allclose(train["noise_0"].std(axis=(0, 1)), 1.0, atol=1e-4)
    assert metadata.normalization_applied and set(metadata.normalization) == set(metadata.modalities)


def test_window_other_than_the_sequence_length_is_refused(tmp_path):
    with pytest.raises(ValueError, match="set seq_len instead of window=4"):
        build("synthetic", cache_dir=str(tmp_path), window=4, **SMALL)


def test_planted_structure_of_another_dataset_is_a_clear_error(synthetic):
    metadata = metadata_of(synthetic)
    metadata.extras = {}
    with pytest.raises(ValueError, match="carries no planted RUS structure"):
        planted_structure(metadata)


def test_synthetic_is_registered():
    assert BUILDERS["synthetic"].__name__ == "SyntheticRusBuilder"


def test_synthetic_batch_feeds_the_merge_model(synthetic):
    forward_through_merge(synthetic)
