"""The RUS-routing core (`rus_routing.py`): lag mapping, per-modality uniqueness, thresholds, table validation,
pair conditions, losses and context attention — and parity: MergeModel and the LLM gates, given the same tables,
resolve the same thresholds, masks and losses."""

import dataclasses
import math

import pytest
import torch

from modeling_merge import MergeModel
from modeling_merge.configuration_merge import RusRoutingConfig
from modeling_merge.llm import RusGateConfig, RusRouting
from modeling_merge.modeling_merge import merge_auxiliary_losses
from modeling_merge.rus_routing import (
    MergeRusContextAttention,
    jensen_shannon_divergence,
    lag_index,
    pair_conditions,
    per_modality_uniqueness,
    resolve_thresholds,
    token_lags,
    validate_rus_tables,
)

from merge_tester import random_rus, tiny_config


def test_token_lags_split_the_grid_into_equal_segments():
    assert token_lags(10, 5).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert token_lags(3, 5).tolist() == [0, 1, 3]
    assert token_lags(7, 1).tolist() == [0] * 7


def test_lag_index_uses_each_positions_own_stream_length():
    positions, lengths = torch.tensor([0, 1, 2, 0, 1]), torch.tensor([3, 3, 3, 2, 2])
    assert lag_index(positions, lengths, 2).tolist() == [0, 0, 1, 0, 1]


def test_per_modality_uniqueness_is_the_maximum_over_the_other_modalities():
    uniqueness = torch.arange(18, dtype=torch.float32).reshape(3, 3, 2).flip(1)  # the diagonal is never the maximum
    expected = torch.stack([torch.stack([uniqueness[m, j] for j in range(3) if j != m]).amax(0) for m in range(3)])
    assert torch.equal(per_modality_uniqueness(uniqueness), expected)
    assert torch.equal(per_modality_uniqueness(torch.ones(1, 1, 4)), torch.zeros(1, 4))


def test_percentile_thresholds_with_no_pair_resolve_to_infinity_so_no_cell_passes():
    tables = [torch.zeros(1, 1, 3)] * 3
    tau_redundancy, _, tau_synergy = resolve_thresholds(*tables, RusRoutingConfig()).tolist()
    assert tau_redundancy == math.inf and tau_synergy == math.inf
    absolute = RusRoutingConfig(threshold_mode="absolute", redundancy_threshold=0.1, uniqueness_threshold=0.5,
                                synergy_threshold=0.2)
    assert resolve_thresholds(*tables, absolute).tolist() == pytest.approx([0.1, 0.5, 0.2])


@pytest.mark.parametrize(("table", "change", "message"), [
    ("redundancy", lambda t: t[:2], r"RUS redundancy has shape \(2, 3, 2\), expected \[M, M, L\] = \[3, 3, 2\]"),
    ("synergy", lambda t: t.index_put_((torch.tensor(0),), torch.tensor(math.nan)), "RUS synergy contains NaN"),
    ("uniqueness", lambda t: t - 5.0, "RUS uniqueness has negative values"),
    ("redundancy", lambda t: t + torch.arange(3.0)[:, None, None], "RUS redundancy must be symmetric"),
])
def test_validate_rus_tables_names_the_bad_table(table, change, message):
    tables = dict(zip(("redundancy", "uniqueness", "synergy"), random_rus(3, 2)))
    tables[table] = change(tables[table].clone())
    with pytest.raises(ValueError, match=message):
        validate_rus_tables(tables["redundancy"], tables["uniqueness"], tables["synergy"], (3, 3, 2))


def test_validate_rus_tables_with_any_lag_count_still_requires_the_same_one_for_all_tables():
    redundancy, uniqueness, synergy = random_rus(2, 4)
    assert validate_rus_tables(redundancy, uniqueness, synergy, (2, 2, None))["synergy"].shape == (2, 2, 4)
    with pytest.raises(ValueError, match=r"RUS uniqueness has shape \(2, 2, 3\), expected \[M, M, L\] = \[2, 2, 4\]"):
        validate_rus_tables(redundancy, uniqueness[:, :, :3], synergy, (2, 2, None))
    with pytest.raises(ValueError, match=r"RUS redundancy has shape \(2, 2\), expected \[M, M, L\] = \[2, 2, L\]"):
        validate_rus_tables(redundancy[:, :, 0], uniqueness, synergy, (2, 2, None))


def test_pair_conditions_compare_each_pair_and_lag_with_its_threshold():
    redundancy = torch.zeros(3, 3, 2)
    redundancy[0, 1, 1] = redundancy[1, 0, 1] = 1.0
    uniqueness = torch.zeros(3, 3, 2)
    uniqueness[0, 2, 0] = uniqueness[1, 0, 0] = 1.0  # U_0 and U_1 above 0.5 at lag 0, U_2 never
    pairs = torch.tensor([[0, 1], [0, 2]])
    conditions = pair_conditions(redundancy, uniqueness, redundancy, pairs, torch.tensor([0, 1, 1]),
                                 torch.tensor([0.5, 0.5, 0.5]), RusRoutingConfig())
    assert conditions.redundant.tolist() == [[False, True, True], [False, False, False]]
    assert conditions.unique.tolist() == [[True, False, False], [False, False, False]]
    assert torch.equal(conditions.synergistic, conditions.redundant)


def test_jensen_shannon_divergence_is_symmetric_zero_on_equal_and_ln2_on_disjoint():
    p, q = torch.tensor([0.7, 0.3, 0.0]), torch.tensor([0.1, 0.2, 0.7])
    assert torch.allclose(jensen_shannon_divergence(p, q), jensen_shannon_divergence(q, p))
    assert jensen_shannon_divergence(p, p).abs() < 1e-7
    disjoint = jensen_shannon_divergence(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert torch.allclose(disjoint, torch.tensor(math.log(2.0)))


def test_jensen_shannon_divergence_has_finite_gradients_when_a_softmax_underflows_to_zero():
    logits = torch.tensor([[100.0, -100.0, 0.0]], requires_grad=True)
    probabilities = logits.softmax(-1)
    assert (probabilities == 0).any()
    jensen_shannon_divergence(probabilities, torch.full((1, 3), 1 / 3)).sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_rus_context_attention_ignores_masked_partners_and_is_zero_without_any():
    attention = MergeRusContextAttention(input_dim=6, attention_dim=4)
    query = torch.randn(2, 5, 6)
    features = torch.rand(2, 5, 3, 2)
    mask = torch.tensor([True, False, True]).expand(2, 5, 3).clone()
    mask[1] = False
    context = attention(query, features, mask)
    assert context.shape == (2, 5, 4)
    assert torch.equal(context[1], torch.zeros(5, 4))
    altered = features.clone()
    altered[..., 1, :] = 100.0
    assert torch.allclose(attention(query, altered, mask), context)
    assert torch.allclose(attention(query[0], features[0, :, [0, 2]]), context[0], atol=1e-6)


def test_the_llm_gate_config_shares_the_routing_fields_instead_of_restating_them():
    shared = {field.name for field in dataclasses.fields(RusRoutingConfig)}
    own = {field.name for field in dataclasses.fields(RusGateConfig)} - shared
    assert own == {"text_rus_bits", "synergy_experts"}
    assert "RusRoutingConfig" in [base.__name__ for base in type(tiny_config()).__mro__]
    for bad, message in ((dict(synergy_threshold=101.0), "RusGateConfig.synergy_threshold must be in"),
                         (dict(synergy_target_mass=0.0), "RusGateConfig.synergy_target_mass"),
                         (dict(router_hidden_dim=0), "RusGateConfig.router_hidden_dim must be an int > 0")):
        with pytest.raises(ValueError, match=message):
            RusGateConfig(**bad)


@pytest.mark.parametrize("settings", [
    dict(),
    dict(threshold_mode="absolute", redundancy_threshold=0.4, uniqueness_threshold=0.6, synergy_threshold=0.3),
    dict(synergy_target_mass=None, synergy_loss_type="neg_log_p", uniqueness_threshold=40.0),
], ids=["percentile", "absolute", "paper synergy loss"])
def test_merge_model_and_llm_gates_agree_on_thresholds_masks_and_losses(settings):
    """Same random 4×4×3 tables and the same router distributions (one token per lag in MergeModel, one pooled
    cell per lag in the LLM) → identical thresholds and masks, equal losses."""
    config = tiny_config(modalities={f"m{index}": 1 for index in range(4)}, patch_sizes={}, num_rus_lags=3,
                         num_synergy_experts=2, num_feedforward_experts=3, **settings)
    tables = random_rus(4, 3, seed=7)
    model = MergeModel(config)
    model.set_rus(*tables)
    gate_config = RusGateConfig(synergy_experts=(0, 1), **{
        field.name: getattr(config, field.name) for field in dataclasses.fields(RusRoutingConfig)})
    routing = RusRouting(*tables, list(config.modalities), gate_config)

    assert torch.equal(model.rus_thresholds, routing.thresholds())
    presence = torch.tensor([[True, True, True, True], [True, False, True, True], [False, True, True, False]])
    context = model.rus_context(3, presence)  # T = L: token t sits at lag t
    llm_conditions = routing.pair_conditions(context.loss_pairs + 1)  # id 0 is text
    for name in ("redundant", "unique", "synergistic"):
        assert torch.equal(getattr(context.conditions, name), getattr(llm_conditions, name)), name
    assert context.conditions.redundant.any() and not context.conditions.redundant.all()

    probs = torch.randn(3, 4, 3, config.num_experts, generator=torch.Generator().manual_seed(3)).softmax(-1)
    merge_losses = merge_auxiliary_losses(probs, probs.topk(2, dim=-1).indices, presence, context, config)
    pooled = torch.cat([torch.full((3, 1, 3, config.num_experts), 1 / config.num_experts), probs], dim=1)[None]
    present = torch.cat([torch.zeros(3, 1, dtype=torch.bool), presence], dim=1)[:, :, None].expand(-1, -1, 3)
    llm_losses = routing.rus_losses(pooled, present)
    assert set(llm_losses) == {"redundancy", "uniqueness", "synergy"}
    for name, value in llm_losses.items():
        torch.testing.assert_close(value, merge_losses[name], rtol=1e-6, atol=1e-7)
        assert value != 0, name
