"""A DatasetDict from each builder (part A) feeds a MERGE forward pass directly:
`MergeConfig(**metadata_of(built).merge_config_kwargs())` and a batch in the torch format; per-step labels feed
`MergeForTokenClassification`."""

from __future__ import annotations

import numpy as np
import pytest

from dataset_builders import build, metadata_of
from modeling_merge.configuration_merge import MergeConfig

from builder_fixtures import forward_through_merge, write_opportunity_run, write_pamap2_subject, write_wesad_pickle

def pamap2(root, cache, **options):
    for seed, subject in enumerate(("101", "102", "103")):
        write_pamap2_subject(root / "Protocol", subject, [(0, 10), (1, 30), (4, 30)], seed=seed)
    return build("pamap2", data_dir=str(root), cache_dir=str(cache), window=20, stride=10,
                 train_subjects=["101"], validation_subjects=["102"], test_subjects=["103"], **options)


def wesad_pickles(root, cache, **options):
    for seed, subject in enumerate(("S2", "S3", "S4")):
        write_wesad_pickle(root / "WESAD" / subject, subject, [(1, 20), (2, 20)], seed=seed)
    return build("wesad", data_dir=str(root), cache_dir=str(cache), window=10, stride=5, allow_pickle=True,
                 train_subjects=["S2"], validation_subjects=["S3"], test_subjects=["S4"], **options)


def opportunity(root, cache, **options):
    for seed, run in enumerate(("S1-ADL1", "S1-ADL5", "S4-ADL1")):
        write_opportunity_run(root / "dataset", run, [(101, 30), (104, 30)], seed=seed)
    return build("opportunity", data_dir=str(root), cache_dir=str(cache), window=20, stride=10,
                 train_runs=["S1-ADL1"], validation_runs=["S1-ADL5"], test_runs=["S4-ADL1"], **options)


def generic_arrays(root, cache):
    rng = np.random.default_rng(0)
    mask = np.ones((12, 2), dtype=bool)
    mask[::3, 1] = False
    return build("generic", cache_dir=str(cache), arrays={"slow": rng.normal(size=(12, 6, 2)), "fast": rng.normal(size=(12, 12, 1))},
                 labels=np.arange(12) % 2, subjects=[str(index // 2) for index in range(12)], modality_mask=mask)


BUILDS = {"pamap2": pamap2, "wesad_pickles": wesad_pickles, "opportunity": opportunity, "generic": generic_arrays}


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_built_dataset_feeds_the_model(name, tmp_path):
    forward_through_merge(BUILDS[name](tmp_path / "data", tmp_path / "cache"))


@pytest.mark.parametrize("build_steps", [pamap2, wesad_pickles, opportunity], ids=["pamap2", "wesad_pickles", "opportunity"])
def test_per_step_labels_feed_the_token_classification_head(build_steps, tmp_path):
    built = build_steps(tmp_path / "data", tmp_path / "cache", label_granularity="step")
    forward_through_merge(built)  # logits (rows, window, classes); PAMAP2's transient steps are -100 in the loss


def test_real_wesad_e4_at_native_rates_feeds_the_model_through_patch_sizes(shared_data, tmp_path):
    built = build(
        "wesad", data_dir=str(shared_data / "wesad_e4"), cache_dir=str(tmp_path), target_rate_hz=None, window=32,
        stride=800, train_subjects=["S2"], validation_subjects=["S3"], test_subjects=["S4"],
    )
    assert MergeConfig(**metadata_of(built).merge_config_kwargs()).patch_sizes["bvp"] == 16
    forward_through_merge(built, rows=3)


def test_real_wesad_e4_step_labels_at_native_rates_feed_the_token_head_one_label_per_token(shared_data, tmp_path):
    built = build(
        "wesad", data_dir=str(shared_data / "wesad_e4"), cache_dir=str(tmp_path), target_rate_hz=None, window=32,
        stride=800, task="binary", label_granularity="step", train_subjects=["S2"], validation_subjects=["S3"],
        test_subjects=["S4"],
    )
    metadata = metadata_of(built)
    assert (metadata.token_grid_hz, metadata.window, built["train"].features["label"].length) == (4.0, 32, 32)
    assert built["train"].features["acc"].shape == (32 * 8, 3)  # 32 Hz rows: 8 per labelled 4 Hz step
    forward_through_merge(built, rows=3)
