"""A DatasetDict from each builder (part A) feeds a MergeForSequenceClassification forward pass directly:
`MergeConfig(**metadata_of(built).merge_config_kwargs())` and a batch in the torch format."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dataset_builders import build, metadata_of
from modeling_merge.configuration_merge import MergeConfig
from modeling_merge.modeling_merge import MergeForSequenceClassification

from builder_fixtures import write_opportunity_run, write_pamap2_subject, write_wesad_pickle

TINY_MODEL = dict(
    d_model=16, num_attention_heads=2, ffn_dim=32, num_encoder_layers=1, num_blocks=2, num_moe_blocks=1,
    num_feedforward_experts=3, num_synergy_experts=1, expert_hidden_dim=16, router_hidden_dim=8, router_gru_dim=8,
    router_attention_dim=8, num_rus_lags=2, dropout=0.0, router_type="softmax",
)


def pamap2(root, cache):
    for seed, subject in enumerate(("101", "102", "103")):
        write_pamap2_subject(root / "Protocol", subject, [(1, 30), (4, 30)], seed=seed)
    return build("pamap2", data_dir=str(root), cache_dir=str(cache), window=20, stride=10,
                 train_subjects=["101"], validation_subjects=["102"], test_subjects=["103"])


def wesad_pickles(root, cache):
    for seed, subject in enumerate(("S2", "S3", "S4")):
        write_wesad_pickle(root / "WESAD" / subject, subject, [(1, 20), (2, 20)], seed=seed)
    return build("wesad", data_dir=str(root), cache_dir=str(cache), window=10, stride=5,
                 train_subjects=["S2"], validation_subjects=["S3"], test_subjects=["S4"])


def opportunity(root, cache):
    for seed, run in enumerate(("S1-ADL1", "S1-ADL5", "S4-ADL1")):
        write_opportunity_run(root / "dataset", run, [(101, 30), (104, 30)], seed=seed)
    return build("opportunity", data_dir=str(root), cache_dir=str(cache), window=20, stride=10,
                 train_runs=["S1-ADL1"], validation_runs=["S1-ADL5"], test_runs=["S4-ADL1"])


def generic_arrays(root, cache):
    rng = np.random.default_rng(0)
    mask = np.ones((12, 2), dtype=bool)
    mask[::3, 1] = False
    return build("generic", cache_dir=str(cache), arrays={"slow": rng.normal(size=(12, 6, 2)), "fast": rng.normal(size=(12, 12, 1))},
                 labels=np.arange(12) % 2, subjects=[str(index // 2) for index in range(12)], modality_mask=mask)


BUILDS = {"pamap2": pamap2, "wesad_pickles": wesad_pickles, "opportunity": opportunity, "generic": generic_arrays}


def forward_first_rows(built, rows: int = 4):
    metadata = metadata_of(built)
    model = MergeForSequenceClassification(MergeConfig(**metadata.merge_config_kwargs(), **TINY_MODEL)).eval()
    batch = built["train"].with_format("torch")[:rows]
    with torch.no_grad():
        output = model(
            modalities={name: batch[name] for name in metadata.modality_names},
            modality_mask=batch.get("modality_mask"),
            labels=batch["label"],
        )
    assert output.logits.shape == (min(rows, built["train"].num_rows), len(metadata.label_names))
    assert torch.isfinite(output.loss)
    return output


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_built_dataset_feeds_the_model(name, tmp_path):
    forward_first_rows(BUILDS[name](tmp_path / "data", tmp_path / "cache"))


def test_real_wesad_e4_at_native_rates_feeds_the_model_through_patch_sizes(shared_data, tmp_path):
    built = build(
        "wesad", data_dir=str(shared_data / "wesad_e4"), cache_dir=str(tmp_path), target_rate_hz=None, window=32,
        stride=800, train_subjects=["S2"], validation_subjects=["S3"], test_subjects=["S4"],
    )
    assert MergeConfig(**metadata_of(built).merge_config_kwargs()).patch_sizes["bvp"] == 16
    forward_first_rows(built, rows=3)
