"""From a built dataset to a model: the config its metadata implies, ablated losses, and the RUS it holds."""

import pytest
import torch

from dataset_builders import build, metadata_of
from modeling_merge.from_dataset import merge_config_from_dataset, model_from_dataset
from modeling_merge.rus.sidecar import RusSidecar, RusSidecarMismatch

TINY = dict(d_model=16, num_blocks=1, num_moe_blocks=1, num_encoder_layers=1, ffn_dim=32, expert_hidden_dim=32,
            num_attention_heads=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    splits = build("synthetic", cache_dir=str(tmp_path_factory.mktemp("cache")), num_sequences=200, seq_len=8,
                   num_noise_modalities=0)
    metadata = metadata_of(splits)
    sidecar = RusSidecar.for_dataset(splits, metadata, num_lags=2, estimator="quantized_exact", num_bins=2,
                                     progress=False)
    return metadata, sidecar


def test_the_config_follows_the_metadata_and_the_overrides(data):
    metadata, _ = data
    config = merge_config_from_dataset(metadata, num_rus_lags=2, disable_aux_losses=["synergy"], router_type="softmax",
                                       **TINY)
    assert dict(config.modalities) == dict(metadata.modalities) and list(config.modalities) == metadata.modality_names
    assert config.num_labels == len(metadata.label_names) and config.token_grid_length == metadata.window
    assert config.router_type == "softmax" and config.num_rus_lags == 2
    assert config.synergy_loss_weight == 0.0 and config.redundancy_loss_weight > 0
    with pytest.raises(ValueError, match=r"disable_aux_losses got \['synergie'\]; choose from \('redundancy'"):
        merge_config_from_dataset(metadata, disable_aux_losses=["synergie"])


def test_the_model_holds_the_sidecars_rus_and_refuses_another_datasets(data):
    metadata, sidecar = data
    model = model_from_dataset(metadata, sidecar, **TINY)
    assert model.config.num_rus_lags == sidecar.num_lags
    assert torch.equal(model.merge.rus_synergy, sidecar.synergy)
    swapped = RusSidecar(sidecar.redundancy, sidecar.uniqueness, sidecar.synergy,
                         {**sidecar.metadata, "modality_names": sidecar.modality_names[::-1]})
    with pytest.raises(RusSidecarMismatch, match="order differs"):
        model_from_dataset(metadata, swapped, **TINY)


def test_the_head_and_problem_type_follow_the_labels_the_metadata_describes(data):
    from dataclasses import replace

    from modeling_merge.modeling_merge import MergeForSequenceClassification, MergeForTokenClassification

    metadata, sidecar = data
    window = model_from_dataset(metadata, sidecar, **TINY)
    per_step = model_from_dataset(replace(metadata, label_granularity="step"), sidecar, **TINY)
    regression = model_from_dataset(replace(metadata, problem_type="regression", label_names=["score"]), sidecar, **TINY)
    assert type(window) is MergeForSequenceClassification
    assert window.config.problem_type == "single_label_classification"
    assert type(per_step) is MergeForTokenClassification and per_step.config.num_labels == len(metadata.label_names)
    assert type(regression) is MergeForSequenceClassification
    assert (regression.config.problem_type, regression.config.num_labels) == ("regression", 1)
