"""MergeConfig: reference defaults, JSON round trip, Auto registration and field-naming validation."""

import pytest
from transformers import AutoConfig

from modeling_merge import MergeConfig


def test_defaults_are_the_reference_pamap2_hyper_parameters():
    config = MergeConfig()
    assert config.modalities == {"hand": 13, "chest": 13, "ankle": 13, "heart_rate": 1}
    assert (config.d_model, config.num_blocks, config.num_experts, config.num_experts_per_token) == (128, 6, 8, 2)
    assert config.num_synergy_experts == 2 and config.router_type == "rus"


@pytest.mark.parametrize(
    ("num_blocks", "num_moe_blocks", "expected"), [(6, 3, [1, 3, 5]), (2, 1, [1]), (4, 4, [0, 1, 2, 3]), (3, 0, [])]
)
def test_moe_blocks_are_evenly_spaced_and_end_at_the_last_block(num_blocks, num_moe_blocks, expected):
    assert MergeConfig(num_blocks=num_blocks, num_moe_blocks=num_moe_blocks).moe_block_indices == expected


def test_save_and_load_keeps_modality_order_patch_sizes_and_labels(tmp_path):
    config = MergeConfig(
        modalities={"zeta": 2, "alpha": 1, "mid": 5}, patch_sizes={"alpha": 4}, id2label={0: "calm", 1: "stress"}
    )
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, MergeConfig)
    assert loaded.modality_names == ["zeta", "alpha", "mid"]
    assert loaded.patch_size("alpha") == 4 and loaded.patch_size("zeta") == 1
    assert loaded.num_labels == 2 and loaded.id2label == {0: "calm", 1: "stress"}


@pytest.mark.parametrize("num_labels", [1, 2, 3, 12])
def test_num_labels_without_label_names_round_trips(tmp_path, num_labels):
    # 2 is the base class's default: its diff-only config.json used to drop the label maps, reloading as 12.
    MergeConfig(num_labels=num_labels).save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).num_labels == num_labels


def test_auto_map_names_all_three_auto_classes():
    assert set(MergeConfig().auto_map) == {"AutoConfig", "AutoModel", "AutoModelForSequenceClassification",
                                           "AutoModelForTokenClassification"}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"modalities": {}}, "modalities"),
        ({"modalities": {"acc": 0}}, "modalities"),
        ({"modalities": {"acc": 3}, "patch_sizes": {"bvp": 2}}, "patch_sizes"),
        ({"modalities": {"acc": 3}, "patch_sizes": {"acc": 0}}, "patch_sizes"),
        ({"d_model": 30, "num_attention_heads": 4}, "d_model"),
        ({"router_type": "topk"}, "router_type"),
        ({"expert_dispatch": "dense"}, "expert_dispatch"),
        ({"num_experts_per_token": 9}, "num_experts_per_token"),
        ({"num_moe_blocks": 7}, "num_moe_blocks"),
        ({"synergy_loss_type": "log"}, "synergy_loss_type"),
        ({"threshold_mode": "bits"}, "threshold_mode"),
        ({"redundancy_threshold": 150.0}, "redundancy_threshold"),
        ({"uniqueness_loss_weight": -1.0}, "uniqueness_loss_weight"),
        ({"router_top_partners": 0}, "router_top_partners"),
        ({"router_type": "softmax", "router_top_partners": 2}, "router_top_partners"),
        ({"num_rus_lags": 0}, "num_rus_lags"),
        ({"dropout": 1.0}, "dropout"),
        ({"synergy_attention_dropout": -0.1}, "synergy_attention_dropout"),
        ({"modalities": {1: 3, "1": 2}}, "modalities"),
        ({"modalities": [["acc", 3], ["acc", 2]]}, "modalities"),
        ({"synergy_loss_weight": float("inf")}, "synergy_loss_weight"),
        ({"load_balance_loss_weight": float("nan")}, "load_balance_loss_weight"),
        ({"redundancy_loss_weight": float("inf")}, "redundancy_loss_weight"),
        ({"layer_norm_eps": 0.0}, "layer_norm_eps"),
        ({"layer_norm_eps": -1e-5}, "layer_norm_eps"),
        ({"initializer_range": -0.02}, "initializer_range"),
        ({"problem_type": "ordinal"}, "problem_type"),
        ({"modalities": "acc"}, "modalities"),
        ({"modalities": [["acc", 3, 1]]}, "modalities"),
        ({"patch_sizes": [["acc", 2]]}, "patch_sizes"),
        ({"use_encoder_conv": "yes"}, "use_encoder_conv"),
        ({"d_model": "128"}, "d_model"),
        ({"num_blocks": True}, "num_blocks"),
        ({"router_bias_start": "mean"}, "router_bias_start"),
        ({"router_bias_update_rule": "log"}, "router_bias_update_rule"),
        ({"router_bias_tracks_logit_offsets": 1}, "router_bias_tracks_logit_offsets"),
        ({"uniqueness_target_jsd": 0.7}, "uniqueness_target_jsd"),
        ({"uniqueness_target_jsd": 0.0}, "uniqueness_target_jsd"),
        ({"uniqueness_excludes_redundant": 1}, "uniqueness_excludes_redundant"),
    ],
)
def test_invalid_values_raise_an_error_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=rf"MergeConfig\.{field}\b"):
        MergeConfig(**overrides)


def test_absolute_thresholds_may_exceed_one_hundred_bits():
    assert MergeConfig(threshold_mode="absolute", synergy_threshold=120.0).synergy_threshold == 120.0


def test_unknown_arguments_are_errors_but_transformers_own_arguments_still_work():
    with pytest.raises(ValueError, match=r"MergeConfig got unknown argument\(s\) \['d_modle'\]"):
        MergeConfig(d_modle=64)
    config = MergeConfig(num_labels=1, problem_type="regression", torch_dtype="float32", attn_implementation="eager",
                         output_hidden_states=True, return_dict=False, name_or_path="somewhere")
    assert config.num_labels == 1 and config.problem_type == "regression" and config._attn_implementation == "eager"
    assert config.output_hidden_states and not config.return_dict
