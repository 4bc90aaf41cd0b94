"""MERGE model: shapes, losses, RUS handling, batch independence, missing modalities, dispatch parity,
save/load and input validation, on a tiny configuration (ModelTester style)."""

import copy
import io
import math
import zipfile

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification

from modeling_merge import MergeConfig, MergeForSequenceClassification, MergeModel
from modeling_merge.configuration_merge import PAPER_ROUTING
from modeling_merge.modeling_merge import (
    MergeFeedForwardExperts,
    MergeMoeLayer,
    MergeSynergyExpert,
    _all_other_modalities,
    merge_auxiliary_losses,
    routing_alignment_counts,
)
from modeling_merge.rus_routing import jensen_shannon_divergence

from merge_tester import make_inputs, random_rus, tiny_config, tiny_model, train_steps

ROUTER_TYPES = ["rus", "softmax", "laplace", "laplace_per_modality", "dense"]


def subset(inputs: dict[str, torch.Tensor], rows) -> dict[str, torch.Tensor]:
    return {name: values[rows] for name, values in inputs.items()}


@pytest.mark.parametrize("router_type", ROUTER_TYPES)
def test_output_shapes_for_odd_batch_and_time_sizes(router_type):
    model = tiny_model(router_type=router_type).eval()
    inputs = make_inputs(model.config, batch=3, tokens=5)
    output = model(modalities=inputs, labels=torch.tensor([0, 2, 1]), output_router_probs=True)
    assert output.logits.shape == (3, 3)
    assert output.loss.shape == () and torch.isfinite(output.loss)
    if router_type == "dense":
        assert output.router_probs == () and output.aux_losses == {}
    else:
        assert [probs.shape for probs in output.router_probs] == [(3, 3, 5, 5)]
        assert [experts.shape for experts in output.selected_experts] == [(3, 3, 5, 2)]
        assert torch.allclose(output.router_probs[0].sum(-1), torch.ones(3, 3, 5))
    base = MergeModel(model.config)
    base.set_rus(*random_rus(3, 3))
    hidden = base(modalities=inputs)
    assert hidden.last_hidden_state.shape == (3, 3, 5, 16) and hidden.pooler_output.shape == (3, 16)


def test_rus_router_reports_every_auxiliary_loss_and_their_weighted_sum():
    model = tiny_model(redundancy_loss_weight=2.0, uniqueness_loss_weight=3.0, synergy_loss_weight=0.5)
    output = model(modalities=make_inputs(model.config, 2, 4))
    assert set(output.aux_losses) == {"redundancy", "uniqueness", "synergy", "load_balance"}
    weights = {"redundancy": 2.0, "uniqueness": 3.0, "synergy": 0.5, "load_balance": 0.02}
    expected = sum(weights[name] * value for name, value in output.aux_losses.items())
    assert torch.allclose(output.aux_loss, expected)
    assert 0 <= output.aux_losses["uniqueness"] <= model.config.uniqueness_target_jsd  # a hinge below the target


def test_modalities_come_as_one_dict_and_stray_keywords_are_errors():
    model = tiny_model().eval()
    inputs = make_inputs(model.config, 2, 4)
    with pytest.raises(TypeError, match="unexpected keyword argument 'acc'"):
        model(**inputs)
    with pytest.raises(ValueError, match=r"Pass the inputs as `modalities=\{name: \(batch, time, channels\) tensor\}`"):
        model()
    with pytest.raises(ValueError, match=r"MERGE takes `modalities=\{name: tensor\}` and `modality_mask`, not \['input_ids'\]"):
        model(modalities=inputs, input_ids=torch.zeros(2, 4, dtype=torch.long))


def test_aux_loss_backward_reaches_every_part_of_the_rus_router():
    model = tiny_model()
    model(modalities=make_inputs(model.config, 2, 6)).aux_loss.backward()
    router = model.merge.blocks[1].feed_forward.router
    for name, parameter in router.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_rus_router_without_rus_is_a_clear_error():
    model = MergeForSequenceClassification(tiny_config())
    with pytest.raises(ValueError, match="set_rus"):
        model(modalities=make_inputs(model.config, 2, 4))


@pytest.mark.parametrize("router_type", ["rus", "softmax", "laplace_per_modality"])
def test_a_samples_logits_do_not_change_when_other_samples_join_its_batch(router_type):
    model = tiny_model(router_type=router_type, num_synergy_experts=4, num_feedforward_experts=1).eval()
    inputs = make_inputs(model.config, batch=5, tokens=4)
    full = model(modalities=inputs, output_router_probs=True)
    assert (full.selected_experts[0] < 4).any(), "the synergy experts must be exercised"
    for rows in ([0], [3, 1], [4, 2, 0]):
        alone = model(modalities=subset(inputs, rows)).logits
        assert torch.allclose(alone, full.logits[rows], atol=1e-5), rows


@pytest.mark.parametrize("router_type", ["rus", "softmax"])
def test_an_absent_modality_changes_nothing_for_the_present_ones(router_type):
    model = tiny_model(router_type=router_type).eval()
    inputs = make_inputs(model.config, batch=3, tokens=4)
    mask = torch.ones(3, 3, dtype=torch.bool)
    mask[1, 0] = mask[2, 2] = False
    labels = torch.tensor([0, 1, 2])
    reference = model(modalities=inputs, modality_mask=mask, labels=labels)
    scrambled = dict(inputs)
    scrambled["acc"] = inputs["acc"].clone()
    scrambled["acc"][1] = float("nan")
    scrambled["eda"] = inputs["eda"].clone()
    scrambled["eda"][2] = torch.randn(4, 2) * 100
    changed = model(modalities=scrambled, modality_mask=mask, labels=labels)
    assert torch.allclose(changed.logits, reference.logits, atol=1e-6)
    assert torch.allclose(changed.loss, reference.loss, atol=1e-6)
    for name, value in reference.aux_losses.items():
        assert torch.allclose(changed.aux_losses[name], value, atol=1e-6), name


def test_absent_modalities_get_no_expert_slots_and_no_cross_attention():
    model = tiny_model(num_synergy_experts=4, num_feedforward_experts=1).eval()
    inputs = make_inputs(model.config, batch=2, tokens=3)
    only_acc = torch.tensor([[True, False, False], [True, False, False]])
    output = model(modalities=inputs, modality_mask=only_acc)
    assert torch.isfinite(output.logits).all() and torch.isfinite(output.aux_loss)
    assert output.aux_losses["redundancy"] == 0 and output.aux_losses["synergy"] == 0


def test_top_k_weights_sum_to_one():
    config = tiny_config(router_type="softmax", num_synergy_experts=0, num_feedforward_experts=4)
    layer = MergeMoeLayer(config)
    experts = layer.feedforward_experts
    with torch.no_grad():
        for parameter in (experts.w_in, experts.b_in, experts.w_out, experts.b_out):
            parameter.normal_()
            parameter.copy_(parameter[:1].expand_as(parameter))
    hidden = torch.randn(2, 3, 5, 16)
    output, _, _ = layer(hidden, torch.ones(2, 3, dtype=torch.bool), None, _all_other_modalities(3))
    single_expert = experts(hidden.reshape(-1, 16), torch.zeros(30, dtype=torch.long)).reshape(hidden.shape)
    assert torch.allclose(output, single_expert, atol=1e-5)


@pytest.mark.parametrize("dispatch", ["sorted", "grouped_mm"])
def test_sparse_dispatch_matches_the_eager_reference_in_values_and_gradients(dispatch):
    eager = tiny_model(expert_dispatch="eager", d_model=32, expert_hidden_dim=64, num_attention_heads=4)
    other = tiny_model(expert_dispatch=dispatch, d_model=32, expert_hidden_dim=64, num_attention_heads=4)
    other.load_state_dict(eager.state_dict())
    inputs = make_inputs(eager.config, batch=3, tokens=5)
    labels = torch.tensor([0, 1, 2])
    outputs = [model(modalities=inputs, labels=labels) for model in (eager, other)]
    assert torch.allclose(outputs[0].logits, outputs[1].logits, atol=1e-5)
    for output in outputs:
        output.loss.backward()
    for (name, reference), (_, parameter) in zip(eager.named_parameters(), other.named_parameters()):
        reference_grad = torch.zeros_like(reference) if reference.grad is None else reference.grad
        grad = torch.zeros_like(parameter) if parameter.grad is None else parameter.grad
        assert torch.allclose(reference_grad, grad, atol=1e-5), name


def test_feedforward_experts_only_compute_the_routed_tokens():
    experts = MergeFeedForwardExperts(tiny_config(expert_dispatch="sorted"))
    calls = []
    experts._expert = lambda tokens, expert: calls.append((expert, tokens.shape[0])) or tokens
    experts(torch.randn(7, 16), torch.tensor([2, 0, 2, 2, 0, 2, 2]))
    assert sorted(calls) == [(0, 2), (2, 5)]


@pytest.mark.parametrize("router_type", ROUTER_TYPES)
def test_each_router_type_learns_a_tiny_synthetic_task(router_type):
    model = tiny_model(router_type=router_type)
    generator = torch.Generator().manual_seed(1)
    inputs = make_inputs(model.config, batch=24, tokens=4, seed=1)
    labels = torch.randint(0, 3, (24,), generator=generator)
    inputs["eda"] = inputs["eda"] + 2.0 * (labels.float() - 1.0)[:, None, None]
    losses = train_steps(model, dict(modalities=inputs, labels=labels), steps=12)
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses


def test_save_and_reload_through_the_auto_classes_gives_identical_logits(tmp_path):
    model = tiny_model().eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, MergeForSequenceClassification)
    for name in ("rus_redundancy", "rus_uniqueness", "rus_synergy", "rus_thresholds", "rus_partner_index"):
        assert torch.equal(getattr(reloaded.merge, name), getattr(model.merge, name)), name
    inputs = make_inputs(model.config, batch=3, tokens=5)
    assert torch.equal(reloaded(modalities=inputs).logits, model(modalities=inputs).logits)
    base = AutoModel.from_pretrained(tmp_path)
    assert isinstance(base, MergeModel) and bool(base.rus_is_set)


def test_set_rus_resolves_percentile_thresholds_from_the_stored_values():
    model = tiny_model(redundancy_threshold=50.0, synergy_threshold=100.0, uniqueness_threshold=0.0)
    redundancy = torch.zeros(3, 3, 3)
    for (i, j), value in {(0, 1): 1.0, (0, 2): 2.0, (1, 2): 3.0}.items():
        redundancy[i, j] = redundancy[j, i] = value
    uniqueness = torch.arange(27, dtype=torch.float32).reshape(3, 3, 3)
    model.set_rus(redundancy, uniqueness, redundancy)
    tau_redundancy, tau_uniqueness, tau_synergy = model.merge.rus_thresholds.tolist()
    assert tau_redundancy == 2.0 and tau_synergy == 3.0
    per_modality = [max(uniqueness[m, j, lag].item() for j in range(3) if j != m) for m in range(3) for lag in range(3)]
    assert tau_uniqueness == min(per_modality)


def test_router_top_partners_keeps_only_the_strongest_pairs_in_context_and_losses():
    modalities = {f"m{index}": 1 for index in range(5)}
    model = tiny_model(modalities=modalities, patch_sizes={}, router_top_partners=1, threshold_mode="absolute",
                       redundancy_threshold=0.5, synergy_threshold=0.5, uniqueness_threshold=0.5).eval()
    strength = torch.zeros(5, 5, 3)
    for i, j in [(0, 1), (2, 3), (3, 4)]:
        strength[i, j] = strength[j, i] = 1.0 + i
    model.set_rus(strength, torch.zeros(5, 5, 3), torch.zeros(5, 5, 3))
    assert model.merge.rus_partner_index.squeeze(1).tolist() == [1, 0, 3, 4, 3]
    with torch.no_grad():
        for parameter in model.merge.blocks[1].feed_forward.router.parameters():
            parameter.normal_()
    inputs = make_inputs(model.config, batch=2, tokens=4)
    reference = model(modalities=inputs, output_router_probs=True).router_probs[0]
    weaker = strength.clone()
    weaker[2, 3] = weaker[3, 2] = 0.0
    weaker[0, 2] = weaker[2, 0] = 0.3
    model.set_rus(weaker, torch.zeros(5, 5, 3), torch.zeros(5, 5, 3))
    assert model.merge.rus_partner_index.squeeze(1).tolist() == [1, 0, 0, 4, 3]
    context = model.merge.rus_context(4, torch.ones(2, 5, dtype=torch.bool))
    assert context.pair_features.shape == (5, 4, 1, 2)
    assert sorted(map(tuple, context.loss_pairs.tolist())) == [(0, 1), (0, 2), (3, 4)]
    probs = model(modalities=inputs, output_router_probs=True).router_probs[0]
    unchanged = [0, 1, 3, 4]
    assert torch.allclose(probs[:, unchanged], reference[:, unchanged], atol=1e-7)
    assert not torch.allclose(probs[:, 2], reference[:, 2], atol=1e-7)


@pytest.mark.parametrize("partner_index", [torch.tensor([[1, 2], [0, 3], [1, 3], [0, 1]]), _all_other_modalities(4)],
                         ids=["two partners (keys gathered per sample and modality)", "all partners (keys per sample)"])
def test_synergy_expert_matches_a_token_by_token_reference_over_its_present_partners(partner_index):
    config = tiny_config(modalities={f"m{index}": 1 for index in range(4)}, patch_sizes={})
    expert = MergeSynergyExpert(config).eval()
    hidden = torch.randn(3, 4, 5, config.d_model)
    presence = torch.tensor([[True, True, True, True], [True, False, True, False], [False, True, True, True]])
    token_index = torch.sort(torch.randperm(3 * 4 * 5)[:40]).values
    outputs = expert(hidden, token_index, presence, partner_index)
    for flat, output in zip(token_index.tolist(), outputs):
        sample, modality, step = flat // 20, flat // 5 % 4, flat % 5
        query = hidden[sample, modality, step][None, None]
        partners = [j for j in partner_index[modality].tolist() if presence[sample, j]]
        if partners:
            attended, _ = expert.cross_attention(query, hidden[sample, partners].reshape(1, -1, config.d_model))
        else:
            attended = torch.zeros_like(query)
        states = expert.attention_norm(query + attended)
        reference = expert.output_norm(states + expert.feed_forward(states))[0, 0]
        assert torch.allclose(output, reference, atol=1e-5), (sample, modality, step, partners)


def test_synergy_attention_dropout_acts_on_the_synergy_experts_attention_alone():
    hidden, presence = torch.randn(2, 3, 5, 16), torch.ones(2, 3, dtype=torch.bool)
    token_index, partners = torch.arange(0, 30, 2), _all_other_modalities(3)

    def outputs(expert, seed):
        torch.manual_seed(seed)
        return expert(hidden, token_index, presence, partners)

    torch.manual_seed(0)
    with_dropout = MergeSynergyExpert(tiny_config(dropout=0.0, synergy_attention_dropout=0.5)).train()
    assert not torch.allclose(outputs(with_dropout, 1), outputs(with_dropout, 2)), "attention probabilities dropped"
    torch.manual_seed(0)
    without = MergeSynergyExpert(tiny_config(dropout=0.0, synergy_attention_dropout=0.0)).train()
    assert torch.equal(outputs(without, 1), outputs(without.eval(), 2))
    default = MergeModel(MergeConfig())
    rates = {name: module.dropout for name, module in default.named_modules() if hasattr(module, "q_proj")}
    synergy = {name: rate for name, rate in rates.items() if ".synergy_experts." in name}
    assert len(synergy) == default.config.num_synergy_experts * default.config.num_moe_blocks
    assert set(synergy.values()) == {0.0}
    assert {rate for name, rate in rates.items() if name not in synergy} == {default.config.dropout}


def test_with_top_partners_a_modality_only_sees_its_partners_through_the_synergy_experts():
    modalities = {f"m{index}": 1 for index in range(5)}
    settings = dict(modalities=modalities, patch_sizes={}, num_synergy_experts=2, num_feedforward_experts=1,
                    num_experts_per_token=3)
    strength = torch.zeros(5, 5, 3)
    for i, j in [(0, 1), (2, 3), (3, 4)]:
        strength[i, j] = strength[j, i] = 1.0 + i
    inputs = make_inputs(tiny_config(**settings), batch=2, tokens=4)
    changed = dict(inputs, m2=inputs["m2"] + 1.0)
    states = {}
    for top_partners in (None, 1):
        model = MergeModel(tiny_config(router_top_partners=top_partners, **settings)).eval()
        model.set_rus(strength, torch.zeros(5, 5, 3), strength)
        states[top_partners] = [model(modalities=batch).last_hidden_state for batch in (inputs, changed)]
    assert model.rus_partner_index.squeeze(1).tolist() == [1, 0, 3, 4, 3]
    reference, perturbed = states[1]
    others = [0, 1, 3, 4]
    assert torch.allclose(perturbed[:, others], reference[:, others], atol=1e-6), "m2 is nobody's top partner"
    reference, perturbed = states[None]
    assert not torch.allclose(perturbed[:, others], reference[:, others], atol=1e-4), "with all partners m2 is seen"


# (loss type, target mass) → synergy loss when the pair's synergy-expert mass p̄ is 0.5
SYNERGY_LOSS_AT_HALF_MASS = {
    ("one_minus_p", None): 0.5,
    ("neg_log_p", None): math.log(2.0),
    ("one_minus_p", 0.25): 0.0,
    ("neg_log_p", 0.25): 0.0,
    ("one_minus_p", 0.9): 0.9 - 0.5,
    ("neg_log_p", 0.9): math.log(0.9 / 0.5),
}


@pytest.mark.parametrize(("synergy_loss_type", "synergy_target_mass"), list(SYNERGY_LOSS_AT_HALF_MASS))
def test_auxiliary_losses_follow_their_definitions_on_hand_built_router_probabilities(synergy_loss_type,
                                                                                      synergy_target_mass):
    config = tiny_config(modalities={"a": 1, "b": 1}, patch_sizes={}, num_synergy_experts=1,
                         num_feedforward_experts=1, num_experts_per_token=1, synergy_loss_type=synergy_loss_type,
                         synergy_target_mass=synergy_target_mass, uniqueness_target_jsd=None,
                         uniqueness_excludes_redundant=False, threshold_mode="absolute",
                         redundancy_threshold=0.1, uniqueness_threshold=0.1, synergy_threshold=0.1)
    model = MergeModel(config)
    rus = torch.zeros(2, 2, 3)  # lag 0 redundant, unique (the paper's rule) and synergistic
    rus[0, 1, 0] = rus[1, 0, 0] = 1.0
    model.set_rus(rus, rus, rus)
    context = model.rus_context(3, torch.ones(1, 2, dtype=torch.bool))
    probs = torch.tensor([[[[1.0, 0.0]] * 3, [[0.0, 1.0]] * 3]])
    selected = probs.argmax(-1, keepdim=True)
    losses = merge_auxiliary_losses(probs, selected, torch.ones(1, 2, dtype=torch.bool), context, config)
    assert torch.allclose(losses["redundancy"], torch.tensor(math.log(2.0)))
    assert torch.allclose(losses["uniqueness"], torch.tensor(-math.log(2.0)))
    expected_synergy = SYNERGY_LOSS_AT_HALF_MASS[synergy_loss_type, synergy_target_mass]
    assert torch.allclose(losses["synergy"], torch.tensor(expected_synergy, dtype=torch.float32))
    assert torch.allclose(losses["load_balance"], torch.tensor(1.0))


def two_modality_context(redundancy=None, uniqueness=None, synergy=None, **settings):
    """MERGE over modalities a and b (one channel each, 3 lags, 1 synergy expert, top-1, absolute thresholds) with
    the given `[2, 2, 3]` RUS tables (zeros where not given) → (config, RUS context of 3 tokens, both present)."""
    config = tiny_config(modalities={"a": 1, "b": 1}, patch_sizes={}, num_synergy_experts=1, num_experts_per_token=1,
                         threshold_mode="absolute", **settings)
    model = MergeModel(config)
    model.set_rus(*(torch.zeros(2, 2, 3) if table is None else table for table in (redundancy, uniqueness, synergy)))
    return config, model.rus_context(3, torch.ones(1, 2, dtype=torch.bool))


def test_the_synergy_target_pulls_synergistic_cells_up_and_pushes_other_cells_down_to_the_fair_share():
    synergy = torch.zeros(2, 2, 3)
    synergy[0, 1, 0] = synergy[1, 0, 0] = 1.0  # only lag 0 (token 0 of 3) is synergistic
    config, context = two_modality_context(synergy=synergy, num_feedforward_experts=3, synergy_target_mass=0.6,
                                           synergy_threshold=0.1)

    def synergy_loss(mass_per_token):
        """Both modalities put `mass_per_token[t]` on the synergy expert (expert 0) at token t."""
        mass = torch.tensor(mass_per_token)[:, None]
        probs = torch.cat([mass, (1 - mass).expand(-1, 3) / 3], dim=-1).expand(1, 2, 3, 4)
        losses = merge_auxiliary_losses(probs, probs.argmax(-1, keepdim=True), torch.ones(1, 2, dtype=torch.bool),
                                        context, config)
        return losses["synergy"].item()

    assert synergy_loss([0.6, 0.25, 0.25]) == pytest.approx(0.0)  # at the target, others at the fair share 1/4
    assert synergy_loss([0.9, 0.1, 0.0]) == pytest.approx(0.0)  # beyond the target and below the fair share
    assert synergy_loss([0.2, 0.25, 0.25]) == pytest.approx(0.6 - 0.2)
    assert synergy_loss([0.6, 0.45, 0.65]) == pytest.approx(((0.45 - 0.25) + (0.65 - 0.25)) / 2)


def test_the_uniqueness_target_pushes_unique_pairs_apart_until_their_jsd_reaches_it_and_no_further():
    uniqueness = torch.zeros(2, 2, 3)
    uniqueness[0, 1] = uniqueness[1, 0] = 1.0  # both modalities unique at every lag
    settings = dict(uniqueness=uniqueness, num_feedforward_experts=1, uniqueness_threshold=0.1)
    config, context = two_modality_context(uniqueness_target_jsd=0.5, **settings)

    def uniqueness_loss(first_expert_mass_b):
        """Modality a puts all mass on expert 0; b puts `first_expert_mass_b` there, the rest on expert 1."""
        mass = torch.tensor(first_expert_mass_b, requires_grad=True)
        probs_b = torch.stack([mass, 1 - mass])
        probs = torch.stack([torch.tensor([1.0, 0.0]), probs_b])[None, :, None].expand(1, 2, 3, 2)
        loss = merge_auxiliary_losses(probs, probs.argmax(-1, keepdim=True), torch.ones(1, 2, dtype=torch.bool),
                                      context, config)["uniqueness"]
        loss.backward()
        return loss.item(), mass.grad.item()

    def divergence(mass):
        return jensen_shannon_divergence(torch.tensor([1.0, 0.0]), torch.tensor([mass, 1 - mass])).item()

    close, close_gradient = uniqueness_loss(0.9)
    assert close == pytest.approx(0.5 - divergence(0.9))
    assert close_gradient > 0  # moving b's mass off a's expert lowers the loss
    apart, apart_gradient = uniqueness_loss(0.0)  # disjoint: JSD = ln 2 > 0.5
    assert apart == 0.0 and apart_gradient == 0.0
    paper_config, paper_context = two_modality_context(uniqueness_target_jsd=None, **settings)
    probs = torch.tensor([[[[1.0, 0.0]] * 3, [[0.0, 1.0]] * 3]])
    losses = merge_auxiliary_losses(probs, probs.argmax(-1, keepdim=True), torch.ones(1, 2, dtype=torch.bool),
                                    paper_context, paper_config)
    assert losses["uniqueness"].item() == pytest.approx(-math.log(2.0))  # the paper's −JSD keeps rewarding


def test_a_redundant_cell_is_also_unique_under_the_paper_rule_and_not_when_excluded():
    redundancy, uniqueness = torch.zeros(2, 2, 3), torch.zeros(2, 2, 3)
    uniqueness[0, 1] = uniqueness[1, 0] = 1.0  # both modalities unique (against some partner) at every lag
    redundancy[0, 1, 2] = redundancy[1, 0, 2] = 1.0  # and sharing their information at lag 2
    settings = dict(redundancy=redundancy, uniqueness=uniqueness, num_feedforward_experts=1,
                    redundancy_threshold=0.1, uniqueness_threshold=0.1)
    # the pair routes apart at lags 0 and 1 (JSD ln 2, beyond the 0.5 target) and identically at lag 2
    probs = torch.tensor([[[[1.0, 0.0]] * 3, [[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]]])

    def losses(**rule):
        config, context = two_modality_context(**settings, **rule)
        return context.conditions, merge_auxiliary_losses(
            probs, probs.argmax(-1, keepdim=True), torch.ones(1, 2, dtype=torch.bool), context, config)

    paper_conditions, paper = losses()
    assert paper_conditions.redundant.tolist() == [[False, False, True]]
    assert paper_conditions.unique.tolist() == [[True, True, True]]
    assert paper["uniqueness"].item() == pytest.approx(0.5 / 3)  # lag 2 is pushed apart while pulled together
    conditions, excluded = losses(uniqueness_excludes_redundant=True)
    assert conditions.unique.tolist() == [[True, True, False]]
    assert excluded["redundancy"].item() == pytest.approx(0.0) and excluded["uniqueness"].item() == pytest.approx(0.0)


def test_routing_alignment_counts_separate_redundant_cells_that_the_paper_rule_also_calls_unique():
    redundancy, uniqueness = torch.zeros(2, 2, 3), torch.zeros(2, 2, 3)
    redundancy[0, 1, 1:] = redundancy[1, 0, 1:] = 1.0  # lags 1 and 2 redundant
    uniqueness[0, 1, ::2] = uniqueness[1, 0, ::2] = 1.0  # lags 0 and 2 unique: lag 2 is both
    _, context = two_modality_context(redundancy=redundancy, uniqueness=uniqueness, num_feedforward_experts=1,
                                      redundancy_threshold=0.1, uniqueness_threshold=0.1)
    # a routes to expert 0 everywhere; b half-way at lag 0, identically at lag 1, disjointly at lag 2
    probs = torch.tensor([[[[1.0, 0.0]] * 3, [[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]]]])
    counts = routing_alignment_counts(probs, probs.argmax(-1, keepdim=True), torch.ones(1, 2, dtype=torch.bool),
                                      context, num_synergy_experts=1)
    half_way = jensen_shannon_divergence(torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5])).item()
    assert counts["redundant_pairs"].item() == 2 and counts["redundant_jsd"].item() == pytest.approx(math.log(2.0))
    assert counts["redundant_not_unique_pairs"].item() == 1 and counts["redundant_not_unique_jsd"].item() == 0.0
    assert counts["non_redundant_jsd"].item() == pytest.approx(half_way)
    assert counts["unique_pairs"].item() == 2
    assert counts["unique_jsd"].item() == pytest.approx(half_way + math.log(2.0))


def test_selection_bias_picks_the_experts_but_the_weights_come_from_the_logits_alone():
    config = tiny_config(router_type="softmax", num_synergy_experts=0, num_feedforward_experts=4,
                         num_experts_per_token=2)
    layer = MergeMoeLayer(config).eval()
    hidden = torch.randn(2, 3, 5, 16)
    with torch.no_grad():
        layer.expert_selection_bias.copy_(torch.tensor([0.0, 0.0, 50.0, 50.0]))
        _, routed_logits, experts = layer(hidden, torch.ones(2, 3, dtype=torch.bool), None, _all_other_modalities(3))
        logits = layer.router(hidden)
    assert torch.equal(experts.sort(-1).values, torch.tensor([2, 3]).expand_as(experts))
    torch.testing.assert_close(routed_logits, logits)  # the bias never reaches the logits (or probabilities, losses)


def _bias_step_factor(rule: str, load: torch.Tensor) -> torch.Tensor:
    """The documented step factor of each expert from its slot count `(E,)`."""
    mean = load.mean()
    if rule == "log_ratio":  # ln(mean share / share); an unused expert (ratio inf) and any below 5 % of the mean: 3
        return torch.log(mean / load).clamp(-1, 3)
    if rule == "proportional":  # relative deficit: an expert at 1.5× the mean share moves half a step down
        return ((mean - load) / mean).clamp(-1, 1)
    return (mean - load).sign()


@pytest.mark.parametrize("rule", ["log_ratio", "proportional", "sign"])
def test_selection_bias_starts_from_the_fresh_routers_offsets_then_moves_toward_equal_slot_shares_in_training_only(rule):
    config = tiny_config(router_type="softmax", num_synergy_experts=0, num_feedforward_experts=4,
                         num_experts_per_token=1, router_bias_update_rate=0.01, router_bias_update_rate_final=None,
                         router_bias_update_rule=rule, router_bias_tracks_logit_offsets=False)
    layer = MergeMoeLayer(config)
    with torch.no_grad():
        layer.router.weight.weight.zero_()
        layer.router.weight.weight[0] = 1.0  # every token prefers expert 0 (inputs are positive)
    hidden, presence = torch.rand(2, 3, 5, 16) + 0.1, torch.ones(2, 3, dtype=torch.bool)

    def forward_and_update():
        _, logits, experts = layer(hidden, presence, None, _all_other_modalities(3))
        layer.update_selection_bias(logits, experts, presence)
        return experts

    layer.eval()
    forward_and_update()
    assert torch.equal(layer.expert_selection_bias, torch.zeros(4))
    layer.train()
    forward_and_update()  # a fresh (all-zero) bias first cancels each expert's mean logit, then takes a step
    logits = layer.router(hidden).detach()
    step = 0.01 * logits.std(-1).mean()  # the full step scales with the logits' spread over experts
    offsets = logits.reshape(-1, 4).mean(0)
    # all 30 tokens chose expert 0 (4× the mean share), none the others
    centred = offsets.mean() - offsets + step * _bias_step_factor(rule, torch.tensor([30.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(layer.expert_selection_bias, centred)
    experts = forward_and_update()  # from then on only the step, toward the experts below the mean share
    load = torch.bincount(experts.reshape(-1), minlength=4).float()
    assert ((load - load.mean()).abs() < load.mean()).any()  # an expert partly off balance: the rules differ here
    expected = centred + step * _bias_step_factor(rule, load)
    torch.testing.assert_close(layer.expert_selection_bias, expected)
    layer.router.requires_grad_(False)  # a frozen router (e.g. under a PEFT adapter) keeps its routing as loaded
    forward_and_update()
    torch.testing.assert_close(layer.expert_selection_bias, expected)

    from_zero = MergeMoeLayer(tiny_config(router_type="softmax", num_synergy_experts=0, num_feedforward_experts=4,
                                          num_experts_per_token=1, router_bias_update_rate=0.01,
                                          router_bias_update_rate_final=None, router_bias_update_rule=rule,
                                          router_bias_start="zero",
                                          router_bias_tracks_logit_offsets=False)).train()
    from_zero.load_state_dict(layer.state_dict() | {"expert_selection_bias": torch.zeros(4)})
    _, logits, experts = from_zero(hidden, presence, None, _all_other_modalities(3))
    from_zero.update_selection_bias(logits, experts, presence)  # the previous behaviour: only the step
    load = torch.bincount(experts.reshape(-1), minlength=4).float()
    torch.testing.assert_close(from_zero.expert_selection_bias, step * _bias_step_factor(rule, load))


def _tracking_layer(tracks: bool) -> MergeMoeLayer:
    """A training-mode layer with a step too small to matter, so what moves the bias is the offset tracking."""
    return MergeMoeLayer(tiny_config(router_type="softmax", num_synergy_experts=0, num_feedforward_experts=4,
                                     num_experts_per_token=1, router_bias_update_rate=1e-9,
                                     router_bias_update_rate_final=None,
                                     router_bias_tracks_logit_offsets=tracks)).train()


def _route_and_update(layer: MergeMoeLayer, logits: torch.Tensor, presence: torch.Tensor) -> None:
    experts = torch.topk(logits + layer.expert_selection_bias, 1, dim=-1).indices
    layer.update_selection_bias(logits, experts, presence)


@pytest.mark.parametrize("tracks", [True, False])
def test_a_drift_that_raises_one_experts_logits_for_every_token_is_cancelled_when_the_bias_tracks_offsets(tracks):
    layer = _tracking_layer(tracks)
    presence = torch.ones(4, 3, dtype=torch.bool)
    logits = torch.randn(4, 3, 10, 4)
    _route_and_update(layer, logits, presence)  # fresh: the bias cancels the offsets
    before = torch.topk(logits + layer.expert_selection_bias, 1, dim=-1).indices
    drifted = logits + torch.tensor([1.5, 0.0, 0.0, 0.0])  # e.g. a gradient step that favours expert 0 everywhere
    _route_and_update(layer, drifted, presence)
    after = torch.topk(drifted + layer.expert_selection_bias, 1, dim=-1).indices
    shift = layer.expert_selection_bias - layer.expert_selection_bias.mean()
    if tracks:
        assert torch.equal(after, before)  # the same tokens on the same experts
        torch.testing.assert_close(layer.expert_logit_offsets, drifted.reshape(-1, 4).mean(0) -
                                   drifted.mean())
    else:
        assert (after == 0).sum() > (before == 0).sum()  # expert 0 takes tokens from the others
        assert torch.equal(layer.expert_logit_offsets, torch.zeros(4))
    assert (shift[0] < shift[1:]).all() == tracks


def test_offsets_missing_from_an_older_checkpoint_are_recorded_before_the_bias_tracks_them():
    layer = _tracking_layer(True)
    loaded_bias = torch.tensor([0.3, -0.1, 0.0, -0.2])
    layer.load_state_dict(layer.state_dict() | {"expert_selection_bias": loaded_bias,
                                                "expert_logit_offsets": torch.zeros(4)})
    presence = torch.ones(2, 3, dtype=torch.bool)
    logits = torch.randn(2, 3, 5, 4) + torch.tensor([2.0, 0.0, 0.0, 0.0])
    _route_and_update(layer, logits, presence)  # no previous offsets: nothing to cancel yet, only the (tiny) step
    torch.testing.assert_close(layer.expert_selection_bias, loaded_bias)
    torch.testing.assert_close(layer.expert_logit_offsets, logits.reshape(-1, 4).mean(0) - logits.mean())
    _route_and_update(layer, logits + torch.tensor([0.0, 0.0, 0.0, 1.0]), presence)
    torch.testing.assert_close(layer.expert_selection_bias, loaded_bias - torch.tensor([-0.25, -0.25, -0.25, 0.75]))


def test_the_selection_bias_reads_only_present_tokens_and_stands_still_when_no_token_is_present():
    def bias_state(layer):
        return {"bias": layer.expert_selection_bias.clone(), "offsets": layer.expert_logit_offsets.clone()}

    def layer_after_two_updates(logits, experts, presence):  # the fresh (centring) update, then a tracked one
        layer = MergeMoeLayer(tiny_config(router_type="softmax", num_synergy_experts=0, num_feedforward_experts=4,
                                          num_experts_per_token=1, router_bias_update_rate=0.01)).train()
        for _ in range(2):
            layer.update_selection_bias(logits, experts, presence)
        return layer

    presence = torch.tensor([[True, True, False], [True, False, True]])
    logits = torch.randn(2, 3, 5, 4)
    experts = torch.topk(logits, 1, dim=-1).indices
    expected = bias_state(layer_after_two_updates(logits[presence][None], experts[presence][None],
                                                  torch.ones(1, 4, dtype=torch.bool)))
    absent_garbage, absent_expert_zero = logits.clone(), experts.clone()
    absent_garbage[~presence], absent_expert_zero[~presence] = float("nan"), 0
    for absent_logits, absent_experts in ((logits, experts), (absent_garbage, absent_expert_zero)):
        layer = layer_after_two_updates(absent_logits, absent_experts, presence)
        torch.testing.assert_close(bias_state(layer), expected)
        layer.update_selection_bias(absent_logits, absent_experts, torch.zeros(2, 3, dtype=torch.bool))
        torch.testing.assert_close(bias_state(layer), expected)  # no token anywhere: nothing measured, nothing moves


def test_a_decaying_bias_rate_follows_its_schedule_over_updates_and_is_saved_with_the_model(tmp_path):
    def layer(**overrides):
        return MergeMoeLayer(tiny_config(router_type="softmax", num_synergy_experts=0, num_feedforward_experts=4,
                                         num_experts_per_token=1, router_bias_update_rule="sign",
                                         router_bias_start="zero", router_bias_tracks_logit_offsets=False,
                                         router_bias_update_rate=0.05, **overrides)).train()

    logits = torch.randn(2, 3, 5, 4)
    experts, presence = torch.topk(logits, 1, dim=-1).indices, torch.ones(2, 3, dtype=torch.bool)
    spread = logits.reshape(-1, 4).std(-1).mean()
    decaying = layer(router_bias_decay_updates=2.0)  # the default schedule: 0.05 → 0.02, here over 2 updates
    constant = layer(router_bias_update_rate_final=None)
    assert "expert_bias_updates" not in constant.state_dict()  # a constant rate keeps no count
    for update in range(4):
        before = decaying.expert_bias_updates.item(), decaying.expert_selection_bias.clone()
        decaying.update_selection_bias(logits, experts, presence)
        expected_rate = 0.02 + 0.03 * math.exp(-update / 2.0)
        assert before[0] == update
        torch.testing.assert_close((decaying.expert_selection_bias - before[1]).abs().max(), expected_rate * spread)
    decaying.update_selection_bias(logits, experts, torch.zeros(2, 3, dtype=torch.bool))  # no token: no update
    assert decaying.expert_bias_updates.item() == 4
    model = tiny_model()
    next(block.feed_forward for block in model.merge.blocks if block.is_moe).expert_bias_updates.fill_(7)
    model.save_pretrained(tmp_path)
    reloaded = MergeForSequenceClassification.from_pretrained(tmp_path)
    assert next(block.feed_forward for block in reloaded.merge.blocks if block.is_moe).expert_bias_updates.item() == 7
    with pytest.raises(ValueError, match="router_bias_decay_updates"):
        tiny_config(router_bias_update_rate_final=0.02, router_bias_decay_updates=0)


def test_an_expert_that_gets_no_token_still_gets_a_zero_gradient_so_ddp_sees_every_parameter():
    model = tiny_model(router_bias_update_rate=0.0, num_feedforward_experts=3)
    moe = next(block.feed_forward for block in model.merge.blocks if block.is_moe)
    with torch.no_grad():
        moe.expert_selection_bias.copy_(torch.tensor([-1e4, -1e4, 1e4, 1e4, -1e4]))  # only 2 feed-forward experts
    inputs = make_inputs(model.config, batch=2, tokens=4)
    output = model(modalities=inputs, labels=torch.tensor([0, 1]), output_router_probs=True)
    assert set(output.selected_experts[0].unique().tolist()) == {2, 3}
    output.loss.backward()
    for expert in moe.synergy_experts:
        for name, parameter in expert.named_parameters():
            assert parameter.grad is not None and not parameter.grad.any(), name


@pytest.mark.slow
def test_training_the_default_model_with_several_threads_is_bit_reproducible():
    # tensor indexing that repeats indices (a modality in several pairs, an expert's bias for each of its tokens)
    # sums its CPU gradient in a thread-dependent order; the model gathers with index_select instead (the softmax
    # and FuseMoE routers share every such gather but the RUS losses')
    def trained_parameters() -> torch.Tensor:
        torch.manual_seed(0)
        model = MergeForSequenceClassification(MergeConfig(num_labels=4))
        model.set_rus(*random_rus(model.config.num_modalities, model.config.num_rus_lags))
        inputs = make_inputs(model.config, batch=4, tokens=20)
        train_steps(model, {"modalities": inputs, "labels": torch.arange(4)}, steps=3, lr=1e-3)
        return torch.cat([parameter.detach().reshape(-1) for parameter in model.parameters()])

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first, second = trained_parameters(), trained_parameters()
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first, second), (first - second).abs().max()


def _slot_shares(model, inputs) -> torch.Tensor:
    """(layers, E) share of the top-k slots per expert, eval mode."""
    model.eval()
    with torch.no_grad():
        selected = model(modalities=inputs, output_router_probs=True).selected_experts
    model.train()
    return torch.stack([torch.bincount(s.reshape(-1), minlength=model.config.num_experts) / s.numel() for s in selected])


def test_the_paper_routing_collapses_onto_the_synergy_experts_and_the_balanced_default_does_not():
    inputs = make_inputs(tiny_config(), batch=16, tokens=6, seed=3)
    labels = torch.arange(16) % 3
    shares = {}
    for name, overrides in (("paper", PAPER_ROUTING), ("default", {})):
        torch.manual_seed(0)
        model = tiny_model(num_moe_blocks=2, **overrides)
        train_steps(model, dict(modalities=inputs, labels=labels), steps=40, lr=1e-3)
        shares[name] = _slot_shares(model, inputs)
    synergy = model.config.num_synergy_experts
    assert (shares["paper"][:, :synergy].sum(-1) > 0.95).all(), shares["paper"]  # the failure this default fixes
    assert (shares["default"] > 0.05).all() and (shares["default"] < 0.5).all(), shares["default"]


def bad_input_cases():
    config = tiny_config()
    good = make_inputs(config, batch=2, tokens=4)
    with_nan = dict(good, eda=good["eda"].clone())
    with_nan["eda"][1, 2, 0] = float("nan")
    return [
        ("unknown name", dict(modalities=dict(good, gyro=good["acc"])), "gyro"),
        ("missing name", dict(modalities={k: v for k, v in good.items() if k != "bvp"}), "bvp"),
        ("wrong channels", dict(modalities=dict(good, acc=torch.randn(2, 4, 5))), "'acc' has 5 channels"),
        ("time not a multiple of patch", dict(modalities=dict(good, bvp=torch.randn(2, 7, 1))), "'bvp'.*patch"),
        ("grids disagree", dict(modalities=dict(good, bvp=torch.randn(2, 10, 1))), "token-grid"),
        ("not 3-d", dict(modalities=dict(good, eda=torch.randn(2, 4))), "'eda'"),
        ("NaN in a present modality", dict(modalities=with_nan), "'eda'.*NaN.*\\[1\\]"),
        ("mask shape", dict(modalities=good, modality_mask=torch.ones(2, 2, dtype=torch.bool)), "modality_mask"),
        ("all absent", dict(modalities=good, modality_mask=torch.zeros(2, 3, dtype=torch.bool)), "every modality"),
        ("label out of range", dict(modalities=good, labels=torch.tensor([0, 3])), "labels"),
        ("float labels", dict(modalities=good, labels=torch.tensor([0.0, 1.0])), "labels"),
        ("float labels as a list", dict(modalities=good, labels=[0.0, 1.0]), "labels"),
        ("labels as a list of strings", dict(modalities=good, labels=["walk", "run"]), "labels.*list of numbers"),
        ("mask as a list of the wrong shape", dict(modalities=good, modality_mask=[[True, False]] * 2),
         "modality_mask"),
        ("ragged mask list", dict(modalities=good, modality_mask=[[True], [True, False]]), "modality_mask"),
        ("empty batch", dict(modalities=make_inputs(config, batch=0, tokens=4)), "batch is empty"),
    ]


@pytest.mark.parametrize(("case", "kwargs", "message"), bad_input_cases(), ids=[c[0] for c in bad_input_cases()])
def test_bad_inputs_raise_errors_naming_the_problem(case, kwargs, message):
    model = tiny_model()
    with pytest.raises(ValueError, match=message):
        model(**kwargs)


def test_labels_and_modality_mask_may_be_python_lists():
    model = tiny_model().eval()
    inputs = make_inputs(model.config, batch=2, tokens=4)
    mask = [[True, False, True], [True, True, True]]
    as_tensors = model(modalities=inputs, modality_mask=torch.tensor(mask), labels=torch.tensor([0, 2]))
    as_lists = model(modalities=inputs, modality_mask=mask, labels=[0, 2])
    torch.testing.assert_close(as_lists.logits, as_tensors.logits)
    torch.testing.assert_close(as_lists.loss, as_tensors.loss)


def test_a_model_built_for_a_token_grid_refuses_windows_of_another_length():
    model = tiny_model(token_grid_length=4).eval()
    assert model(modalities=make_inputs(model.config, batch=2, tokens=4)).logits.shape == (2, 3)
    with pytest.raises(ValueError, match=r"token grid of 4 steps.*got 6"):
        model(modalities=make_inputs(model.config, batch=2, tokens=6))
    model.config.token_grid_length = None
    assert model(modalities=make_inputs(model.config, batch=2, tokens=6)).logits.shape == (2, 3)


def test_bad_rus_tables_raise_errors_naming_the_problem():
    model = tiny_model()
    redundancy, uniqueness, synergy = random_rus(3, 3)
    with pytest.raises(ValueError, match=r"redundancy has shape \(3, 3, 2\).*\[3, 3, 3\]"):
        model.set_rus(redundancy[..., :2], uniqueness, synergy)
    asymmetric = synergy.clone()
    asymmetric[0, 1, 0] += 0.5
    with pytest.raises(ValueError, match="synergy must be symmetric"):
        model.set_rus(redundancy, uniqueness, asymmetric)
    with pytest.raises(ValueError, match="uniqueness has negative"):
        model.set_rus(redundancy, -uniqueness, synergy)
    with pytest.raises(ValueError, match="redundancy contains NaN"):
        model.set_rus(redundancy.fill_(float("nan")), uniqueness, synergy)


def read_e4_csv(archive: zipfile.ZipFile, name: str) -> tuple[float, np.ndarray]:
    """Empatica E4 CSV: row 1 start time, row 2 sampling rate (Hz), then samples."""
    rows = np.loadtxt(io.StringIO(archive.read(name).decode()), delimiter=",", ndmin=2)
    return float(rows[1, 0]), rows[2:].astype(np.float32)


def test_real_wesad_wrist_window_runs_through_patched_encoders(shared_data):
    with zipfile.ZipFile(shared_data / "wesad_e4" / "WESAD" / "S2" / "S2_E4_Data.zip") as archive:
        signals = {name.lower(): read_e4_csv(archive, f"{name}.csv") for name in ("ACC", "BVP", "EDA", "TEMP")}
    seconds, grid_hz = 8, 4
    config = tiny_config(
        modalities={name: values.shape[1] for name, (_, values) in signals.items()},
        patch_sizes={name: int(rate) // grid_hz for name, (rate, _) in signals.items() if rate > grid_hz},
    )
    model = MergeForSequenceClassification(config).eval()
    model.set_rus(*random_rus(4, 3))
    window = {
        name: torch.from_numpy(values[600 * int(rate): (600 + seconds) * int(rate)])[None]
        for name, (rate, values) in signals.items()
    }
    window = {name: (values - values.mean(1, keepdim=True)) / (values.std(1, keepdim=True) + 1e-6)
              for name, values in window.items()}
    output = model(modalities=window, output_router_probs=True)
    assert output.router_probs[0].shape == (1, 4, seconds * grid_hz, 5)
    assert torch.isfinite(output.logits).all()
    assert copy.deepcopy(config.patch_sizes) == {"acc": 8, "bvp": 16}
