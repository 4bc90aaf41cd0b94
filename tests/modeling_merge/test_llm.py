"""RUS-aware gates installed into tiny random Mixtral / Qwen2-MoE / Qwen3-MoE / OLMoE causal LMs."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    OlmoeConfig,
    OlmoeForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from modeling_merge.llm import (
    RusGateConfig,
    RusGateMixin,
    RusRouting,
    install_rus_router,
    rus_router_class,
)

VOCAB = 64
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
              num_key_value_heads=1, num_experts_per_tok=2, pad_token_id=0, eos_token_id=1, bos_token_id=1)
TINY_LMS = {
    "mixtral": lambda: MixtralForCausalLM(MixtralConfig(**COMMON, num_local_experts=4)),
    "qwen2_moe": lambda: Qwen2MoeForCausalLM(
        Qwen2MoeConfig(**COMMON, num_experts=4, moe_intermediate_size=16, shared_expert_intermediate_size=16)
    ),
    "qwen3_moe": lambda: Qwen3MoeForCausalLM(Qwen3MoeConfig(**COMMON, num_experts=4, moe_intermediate_size=16)),
    "olmoe": lambda: OlmoeForCausalLM(OlmoeConfig(**COMMON, num_experts=4)),
}
SENSORS = ["acc", "ecg"]
NUM_LAGS = 3


def tiny_lm(model_type: str):
    """A tiny randomly initialised MoE causal LM (hidden 32, 2 layers, 4 experts, top-2) in eval mode."""
    return TINY_LMS[model_type]().eval()


def sensor_rus(redundancy_bits: float = 0.8, uniqueness_bits: float = 0.7, synergy_bits: float = 0.4):
    """[2, 2, L] tables for (acc, ecg) with every pair above the reference thresholds; diagonals 0."""
    off_diagonal = 1.0 - torch.eye(len(SENSORS))[:, :, None]
    lags = torch.linspace(1.0, 0.5, NUM_LAGS)
    table = off_diagonal * lags
    return SimpleNamespace(
        redundancy=redundancy_bits * table,
        uniqueness=uniqueness_bits * table,
        synergy=synergy_bits * table,
        metadata={"modality_names": SENSORS},
    )


def mixed_batch():
    """input_ids (2, 10) and modality ids: text=0, acc=1, ecg=2 interleaved differently in each sample."""
    input_ids = torch.randint(2, VOCAB, (2, 10))
    modality_ids = torch.tensor([[0, 1, 1, 2, 2, 1, 2, 0, 0, 0], [2, 2, 2, 1, 1, 1, 0, 0, 0, 0]])
    return input_ids, modality_ids


def perturb_rus_paths(model) -> None:
    """Give every gate's zero-initialised RUS output layer non-zero weights (as training would)."""
    for module in model.modules():
        if isinstance(module, RusGateMixin):
            torch.nn.init.normal_(module.rus_path.output.weight, std=2.0)


@pytest.fixture(params=list(TINY_LMS))
def model_type(request) -> str:
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_installed_gate_returns_the_stock_triple_bitwise_at_installation(model_type, dtype):
    model = tiny_lm(model_type).to(dtype)
    stock_gates = [copy.deepcopy(layer.mlp.gate) for layer in model.model.layers]
    input_ids, modality_ids = mixed_batch()
    with torch.no_grad():
        stock = model(input_ids, output_router_logits=True)
        routing = install_rus_router(model, sensor_rus())
        hidden = torch.randn(20, model.config.hidden_size, dtype=dtype)
        with routing.tokens(modality_ids):
            rus = model(input_ids, output_router_logits=True)
            routing.begin_forward(2, 10, 0, modality_ids, None)
            for layer, stock_gate in zip(model.model.layers, stock_gates):
                for new, old in zip(layer.mlp.gate(hidden), stock_gate(hidden)):
                    assert new.dtype == old.dtype
                    assert torch.equal(new, old)
    assert torch.equal(rus.logits, stock.logits)
    assert len(rus.router_logits) == len(stock.router_logits) == model.config.num_hidden_layers
    for new, old in zip(rus.router_logits, stock.router_logits):
        assert torch.equal(new, old)


def test_gate_keeps_the_stock_weight_parameter_and_class(model_type):
    model = tiny_lm(model_type)
    stock_gate = model.model.layers[0].mlp.gate
    install_rus_router(model, sensor_rus())
    gate = model.model.layers[0].mlp.gate
    assert isinstance(gate, type(stock_gate)) and isinstance(gate, RusGateMixin)
    assert gate.weight is stock_gate.weight


def test_trained_rus_path_makes_routing_depend_on_token_modalities(model_type):
    model = tiny_lm(model_type)
    routing = install_rus_router(model, sensor_rus())
    perturb_rus_paths(model)
    input_ids, modality_ids = mixed_batch()
    with torch.no_grad():
        as_sensors = model(input_ids, modality_ids=modality_ids, output_router_logits=True)
        as_text = model(input_ids, output_router_logits=True)
    assert not torch.equal(as_sensors.router_logits[0], as_text.router_logits[0])
    assert routing.token_state.features is None  # cleared after every forward


def test_load_balancing_loss_is_computed_from_the_rus_gate_logits(model_type):
    model = tiny_lm(model_type)
    input_ids, modality_ids = mixed_batch()
    model(input_ids, output_router_logits=True)  # capture hooks installed on the stock gates first
    install_rus_router(model, sensor_rus())
    before = model(input_ids, modality_ids=modality_ids, output_router_logits=True)
    perturb_rus_paths(model)
    after = model(input_ids, modality_ids=modality_ids, output_router_logits=True)
    num_experts = model.model.layers[0].mlp.gate.num_experts
    expected = load_balancing_loss_func(after.router_logits, num_experts, model.config.num_experts_per_tok)
    assert len(after.router_logits) == model.config.num_hidden_layers
    assert torch.allclose(after.aux_loss, expected)
    assert not torch.allclose(after.aux_loss, before.aux_loss)


def test_lm_loss_includes_rus_losses_and_backward_reaches_the_rus_path(model_type):
    model = tiny_lm(model_type).train()
    rus = sensor_rus()
    rus.redundancy[:, :, 0] = 0.0  # lag 0 unique and not redundant, so either unique-pair rule pushes it apart
    install_rus_router(model, rus)
    perturb_rus_paths(model)
    input_ids, modality_ids = mixed_batch()
    out = model(input_ids, modality_ids=modality_ids, labels=input_ids, output_router_logits=True)
    lm_loss = model.loss_function(out.logits, input_ids, model.config.vocab_size)
    expected = lm_loss + model.config.router_aux_loss_coef * out.aux_loss + out.rus_aux_loss
    assert torch.allclose(out.loss, expected)
    # a fresh gate's unique pairs are closer than the target JSD, so the uniqueness hinge is active
    assert out.rus_aux_losses["redundancy"] > 0 and out.rus_aux_losses["uniqueness"] > 0
    out.loss.backward()
    gate = model.model.layers[0].mlp.gate
    for parameter in gate.rus_path.parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all()
    assert gate.rus_path.hidden.weight.grad.abs().sum() > 0


def _generate_recording_router_probs(model, routing, input_ids, use_cache: bool):
    """Greedy generation; returns the output and, per forward, the gates' (layers, B, S_forward, E) probabilities."""
    recorded = []

    def record(module, args, output):
        probs = torch.stack(routing.token_state.router_probs)
        recorded.append(probs.reshape(probs.shape[0], input_ids.shape[0], -1, probs.shape[-1]).clone())

    handle = model.register_forward_hook(record)
    try:
        out = model.generate(input_ids, use_cache=use_cache, max_new_tokens=4, do_sample=False,
                             attention_mask=torch.ones_like(input_ids), output_logits=True,
                             return_dict_in_generate=True)
    finally:
        handle.remove()
    return out, recorded


def test_decoding_with_a_kv_cache_gives_the_router_probabilities_and_logits_of_decoding_without_it(model_type):
    model = tiny_lm(model_type)
    routing = install_rus_router(model, sensor_rus())
    perturb_rus_paths(model)
    input_ids, modality_ids = mixed_batch()
    with torch.no_grad(), routing.tokens(modality_ids):
        cached, cached_probs = _generate_recording_router_probs(model, routing, input_ids, use_cache=True)
        uncached, uncached_probs = _generate_recording_router_probs(model, routing, input_ids, use_cache=False)
    assert cached.sequences.shape == (2, 14)
    assert torch.equal(cached.sequences, uncached.sequences)
    for cached_logits, uncached_logits in zip(cached.logits, uncached.logits, strict=True):
        torch.testing.assert_close(cached_logits, uncached_logits, rtol=0, atol=1e-5)
    # the cached forwards see the prompt, then one token each; the last uncached forward sees all 13 positions
    assert [p.shape[2] for p in cached_probs] == [10, 1, 1, 1]
    torch.testing.assert_close(torch.cat(cached_probs, dim=2), uncached_probs[-1], rtol=0, atol=1e-5)


def test_a_cache_of_an_unknown_kind_is_refused_rather_than_read_as_no_past(model_type):
    model = tiny_lm(model_type)
    install_rus_router(model, sensor_rus())
    input_ids, modality_ids = mixed_batch()
    legacy_cache = tuple((torch.zeros(2, 1, 3, 16), torch.zeros(2, 1, 3, 16)) for _ in range(2))
    with pytest.raises(ValueError, match="past_key_values.*transformers Cache"):
        model(input_ids, modality_ids=modality_ids, past_key_values=legacy_cache)


def test_save_pretrained_then_rus_router_class_reloads_gates_tables_and_outputs(model_type, tmp_path):
    model = tiny_lm(model_type)
    install_rus_router(model, sensor_rus(), gate_config=RusGateConfig(router_hidden_dim=16, router_attention_dim=8))
    perturb_rus_paths(model)
    input_ids, modality_ids = mixed_batch()
    with torch.no_grad():
        expected = model(input_ids, modality_ids=modality_ids).logits
    model.save_pretrained(tmp_path)
    reloaded = rus_router_class(type(model)).from_pretrained(tmp_path).eval()
    assert reloaded.config.rus_router["router_hidden_dim"] == 16
    assert torch.equal(reloaded.rus_routing.redundancy, model.rus_routing.redundancy)
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids, modality_ids=modality_ids).logits, expected)


def test_a_gate_called_outside_a_model_forward_routes_its_tokens_as_text():
    model = tiny_lm("qwen2_moe")
    routing = install_rus_router(model, sensor_rus())
    perturb_rus_paths(model)
    gate, hidden = model.model.layers[1].mlp.gate, torch.randn(6, model.config.hidden_size)
    with torch.no_grad():
        outside = gate(hidden)
        routing.begin_forward(1, 6, 0, torch.zeros(1, 6, dtype=torch.long), None)
        as_text = gate(hidden)
    for got, expected in zip(outside, as_text):
        assert torch.equal(got, expected)


def test_modality_names_are_required_when_the_tables_carry_none():
    rus = sensor_rus()
    rus.metadata = {}
    with pytest.raises(ValueError, match="needs modality_names"):
        install_rus_router(tiny_lm("mixtral"), rus)


def test_unsupported_architecture_is_an_error_listing_the_supported_ones():
    llama = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in COMMON.items() if k != "num_experts_per_tok"}))
    with pytest.raises(ValueError, match="llama.*mixtral, qwen2_moe, qwen3_moe, olmoe"):
        install_rus_router(llama, sensor_rus())


def test_installing_twice_is_an_error():
    model = tiny_lm("mixtral")
    install_rus_router(model, sensor_rus())
    with pytest.raises(ValueError, match="already installed"):
        install_rus_router(model, sensor_rus())


def test_bad_modality_ids_are_errors_naming_the_problem():
    model = tiny_lm("mixtral")
    install_rus_router(model, sensor_rus())
    input_ids, modality_ids = mixed_batch()
    with pytest.raises(ValueError, match=r"modality_ids must lie in \[0, 3\).*0=text, 1=acc, 2=ecg"):
        model(input_ids, modality_ids=modality_ids + 5)
    with pytest.raises(ValueError, match=r"modality_ids must be \(batch=2, seq_len\)"):
        model(input_ids, modality_ids=modality_ids[0])
    with pytest.raises(ValueError, match="must hold integers"):
        model(input_ids, modality_ids=modality_ids.float())


def test_rus_tables_of_the_wrong_shape_or_with_text_as_a_sensor_name_are_errors():
    rus = sensor_rus()
    with pytest.raises(ValueError, match=r"RUS redundancy has shape \(2, 2, 3\), expected \[M, M, L\] = \[3, 3, 3\]"):
        install_rus_router(tiny_lm("olmoe"), rus, modality_names=["acc", "ecg", "eda"])
    with pytest.raises(ValueError, match="built-in text modality"):
        install_rus_router(tiny_lm("olmoe"), rus, modality_names=["text", "ecg"])
    rus.synergy[0, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="RUS synergy contains NaN or Inf"):
        install_rus_router(tiny_lm("olmoe"), rus)


def routing_for(rus=None, **gate_settings) -> RusRouting:
    """RusRouting over (acc, ecg) with absolute thresholds τ_R 0.1, τ_U 0.5, τ_S 0.1 bits unless overridden."""
    rus = rus or sensor_rus()
    settings = dict(threshold_mode="absolute", redundancy_threshold=0.1, uniqueness_threshold=0.5,
                    synergy_threshold=0.1)
    settings.update(gate_settings)
    return RusRouting(rus.redundancy, rus.uniqueness, rus.synergy, SENSORS, RusGateConfig(**settings))


def test_percentile_thresholds_are_quantiles_of_the_sensor_pairs_values():
    routing = routing_for(threshold_mode="percentile", redundancy_threshold=50.0, text_rus_bits=5.0)
    sensor_values = sorted(sensor_rus().redundancy[0, 1].tolist())  # the one pair i < j; text (5 bits) left out
    middle = len(sensor_values) // 2
    median = sensor_values[middle] if len(sensor_values) % 2 else 0.5 * (sensor_values[middle - 1] + sensor_values[middle])
    assert routing.thresholds()[0].item() == pytest.approx(median)
    assert routing_for().thresholds()[1].item() == 0.5


def test_text_rows_of_the_tables_hold_the_configured_text_value():
    routing = routing_for(text_rus_bits=0.25)
    assert torch.equal(routing.redundancy[1:, 1:], sensor_rus().redundancy)
    assert (routing.synergy[0, 1:] == 0.25).all() and (routing.uniqueness[1:, 0] == 0.25).all()
    assert (routing.redundancy[0, 0] == 0).all()


def test_default_lag_splits_each_stream_into_equal_segments_and_text_uses_lag_zero():
    routing = routing_for()
    modality_ids = torch.tensor([[0, 1, 2, 1, 1, 0, 2, 1, 1, 1]])  # acc: 6 tokens, ecg: 2 tokens
    features = routing.token_features(modality_ids, None, batch_size=1, offset=0, seq_len=10)
    # acc n·3/6 = 0, 0, 1, 1, 2, 2; ecg n·3/2 = 0, 1; text 0
    assert features.lag_ids.tolist() == [[0, 0, 0, 0, 1, 0, 1, 1, 2, 2]]


def test_partners_are_the_other_modalities_seen_at_or_before_the_token():
    routing = routing_for()
    modality_ids = torch.tensor([[1, 1, 0, 2, 1]])
    features = routing.token_features(modality_ids, None, batch_size=1, offset=0, seq_len=5)
    #                    text   acc    ecg
    assert features.pair_mask.tolist() == [
        [False, False, False],  # first acc: nothing before it
        [False, False, False],
        [False, True, False],  # text sees acc
        [True, True, False],  # ecg sees text and acc
        [True, False, True],  # acc sees text and ecg, not itself
    ]


def test_features_of_decoded_tokens_past_the_given_ids_are_text_with_the_prompts_partners():
    routing = routing_for()
    modality_ids = torch.tensor([[1, 2, 0]])
    features = routing.token_features(modality_ids, None, batch_size=1, offset=5, seq_len=1)
    assert features.modality_ids.tolist() == [[0]]
    assert features.pair_mask.tolist() == [[False, True, True]]


def test_pair_features_are_redundancy_and_synergy_of_own_modality_at_the_tokens_lag():
    rus = sensor_rus()
    routing = routing_for(rus)
    lag_ids = torch.tensor([[2, 1]])
    features = routing.token_features(torch.tensor([[1, 2]]), lag_ids, batch_size=1, offset=0, seq_len=2)
    acc_token = features.pair_features[0]  # partners text, acc, ecg
    assert torch.equal(acc_token[2], torch.stack([rus.redundancy[0, 1, 2], rus.synergy[0, 1, 2]]))
    assert features.uniqueness[1, 0] == rus.uniqueness[1, 0, 1]


def record_pooled(routing: RusRouting, modality_ids: torch.Tensor, probs: torch.Tensor) -> None:
    """Put one layer's (N, E) router probabilities for (B, S) modality ids into the routing state."""
    batch, seq = modality_ids.shape
    routing.begin_forward(batch, seq, 0, modality_ids, torch.zeros_like(modality_ids))
    routing.token_state.record(probs, probs.topk(2, dim=-1).indices)


def test_redundancy_loss_is_the_jsd_of_the_pair_mean_distributions():
    routing = routing_for(uniqueness_loss_weight=0.0)
    acc_probs, ecg_probs = torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0, 0.0])
    record_pooled(routing, torch.tensor([[1, 2]]), torch.stack([acc_probs, ecg_probs]))
    losses = routing.auxiliary_losses()
    assert losses["redundancy"].item() == pytest.approx(math.log(2.0), rel=1e-5)  # disjoint supports
    assert "synergy" not in losses
    record_pooled(routing, torch.tensor([[1, 2]]), torch.stack([acc_probs, acc_probs]))
    assert routing.auxiliary_losses()["redundancy"].item() == pytest.approx(0.0, abs=1e-6)


def test_uniqueness_loss_rewards_divergent_routing_and_ignores_pairs_below_threshold():
    routing = routing_for(sensor_rus(redundancy_bits=0.0))  # unique and not redundant: unique under either rule
    losses = []
    for apart in (0.6, 0.8):  # the second pair routes farther apart, still closer than the target JSD
        probs = torch.tensor([[apart] + [(1 - apart) / 3] * 3, [(1 - apart) / 3, apart] + [(1 - apart) / 3] * 2])
        record_pooled(routing, torch.tensor([[1, 2]]), probs)
        losses.append(routing.auxiliary_losses()["uniqueness"].item())
    assert 0 < losses[1] < losses[0] < RusGateConfig().uniqueness_target_jsd
    routing.set_rus(**{k: v for k, v in vars(sensor_rus(uniqueness_bits=0.1)).items() if k != "metadata"})
    record_pooled(routing, torch.tensor([[1, 2]]), probs)
    assert routing.auxiliary_losses()["uniqueness"] == 0


def test_synergy_loss_is_one_minus_the_mean_mass_on_the_designated_experts():
    routing = routing_for(redundancy_loss_weight=0.0, uniqueness_loss_weight=0.0, synergy_experts=(0, 1),
                          synergy_target_mass=None)
    probs = torch.tensor([[0.5, 0.1, 0.2, 0.2], [0.1, 0.1, 0.4, 0.4]])  # synergy mass 0.6 and 0.2
    record_pooled(routing, torch.tensor([[1, 2]]), probs)
    assert routing.auxiliary_losses()["synergy"].item() == pytest.approx(1.0 - 0.4)


def test_pairs_involving_text_or_an_absent_modality_add_no_rus_loss():
    routing = routing_for()
    probs = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    record_pooled(routing, torch.tensor([[0, 1]]), probs)  # text and acc only
    assert routing.auxiliary_losses()["total"] == 0


def test_expert_usage_by_modality_counts_top_k_slots_per_modality():
    routing = routing_for()
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]])
    record_pooled(routing, torch.tensor([[1, 2]]), probs)
    usage = routing.expert_usage_by_modality()
    assert usage.tolist() == [[0, 0, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]]


def test_a_deep_copy_of_a_routed_model_routes_with_its_own_state():
    model = tiny_lm("qwen3_moe")
    install_rus_router(model, sensor_rus())
    perturb_rus_paths(model)
    twin = copy.deepcopy(model)
    input_ids, modality_ids = mixed_batch()
    with torch.no_grad():
        expected = model(input_ids, modality_ids=modality_ids, output_router_logits=True).router_logits[0]
        got = twin(input_ids, modality_ids=modality_ids, output_router_logits=True).router_logits[0]
    assert twin.rus_routing is not model.rus_routing
    assert torch.equal(got, expected)


def test_expert_usage_of_the_latest_model_forward_gives_each_present_modality_a_distribution():
    model = tiny_lm("olmoe")
    routing = install_rus_router(model, sensor_rus())
    with pytest.raises(ValueError, match="no routing recorded yet"):
        routing.expert_usage_by_modality()
    input_ids, modality_ids = mixed_batch()
    with torch.no_grad():
        model(input_ids, modality_ids=modality_ids)
    usage = routing.expert_usage_by_modality()
    assert usage.shape == (3, 4)
    assert torch.allclose(usage.sum(dim=1), torch.ones(3))
