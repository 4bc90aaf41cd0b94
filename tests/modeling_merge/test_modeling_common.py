"""The checks transformers runs on every model, for every MERGE head: save / load through the Auto classes,
hidden-state / attention / router-logit outputs, gradient checkpointing, attention implementations, and each
problem type training a few steps."""

import copy

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification

from modeling_merge import MergeForSequenceClassification, MergeForTokenClassification, MergeModel

from merge_tester import TESTER, train_steps

AUTO_CLASS = {
    MergeModel: AutoModel,
    MergeForSequenceClassification: AutoModelForSequenceClassification,
    MergeForTokenClassification: AutoModelForTokenClassification,
}
HEADS = list(AUTO_CLASS)
# (head, problem_type, per-step labels)
PROBLEMS = [
    (MergeForSequenceClassification, "single_label_classification", False),
    (MergeForSequenceClassification, "multi_label_classification", False),
    (MergeForSequenceClassification, "regression", False),
    (MergeForTokenClassification, "single_label_classification", True),
]


def main_output(output) -> torch.Tensor:
    return output.last_hidden_state if "last_hidden_state" in output else output.logits


@pytest.mark.parametrize("model_class", HEADS, ids=lambda c: c.__name__)
def test_save_and_reload_through_the_auto_class_gives_identical_outputs(model_class, tmp_path):
    model = TESTER.model(model_class).eval()
    inputs = TESTER.inputs(model.config)
    model.save_pretrained(tmp_path)
    reloaded = AUTO_CLASS[model_class].from_pretrained(tmp_path).eval()
    assert type(reloaded) is model_class
    with torch.no_grad():
        assert torch.equal(main_output(reloaded(modalities=inputs)), main_output(model(modalities=inputs)))


@pytest.mark.parametrize("model_class", HEADS, ids=lambda c: c.__name__)
def test_hidden_states_are_the_encoder_output_then_every_block(model_class):
    model = TESTER.model(model_class, num_blocks=3, num_moe_blocks=1).eval()
    inputs = TESTER.inputs(model.config)
    output = model(modalities=inputs, output_hidden_states=True)
    shape = (TESTER.batch_size, 3, TESTER.num_tokens, model.config.d_model)
    assert [tuple(state.shape) for state in output.hidden_states] == [shape] * 4
    base = model if model_class is MergeModel else model.merge
    assert torch.equal(output.hidden_states[-1], base(modalities=inputs).last_hidden_state)
    assert model(modalities=inputs).hidden_states is None
    model.config.output_hidden_states = True  # the config's default, as transformers models read it
    assert len(model(modalities=inputs).hidden_states) == 4
    assert model(modalities=inputs, output_hidden_states=False).hidden_states is None
    model.config.output_hidden_states = False
    as_tuple = model(modalities=inputs, output_hidden_states=True, return_dict=False)
    assert isinstance(as_tuple, tuple) and any(item is output.hidden_states or (
        isinstance(item, tuple) and len(item) == 4) for item in as_tuple)


@pytest.mark.parametrize("model_class", HEADS, ids=lambda c: c.__name__)
def test_router_logits_are_recorded_per_moe_layer_and_give_the_router_probabilities(model_class):
    model = TESTER.model(model_class, num_blocks=3, num_moe_blocks=2).eval()
    output = model(modalities=TESTER.inputs(model.config), output_router_logits=True, output_router_probs=True)
    assert len(output.router_logits) == 2
    for logits, probs in zip(output.router_logits, output.router_probs):
        assert torch.equal(logits.softmax(-1), probs)


@pytest.mark.parametrize("model_class", HEADS, ids=lambda c: c.__name__)
def test_eager_and_sdpa_attention_agree_and_only_eager_returns_weights(model_class):
    model = TESTER.model(model_class).eval()
    inputs = TESTER.inputs(model.config)
    mask = torch.tensor([[True, True, True], [True, False, True], [False, True, True]])
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        sdpa = main_output(model(modalities=inputs, modality_mask=mask))
        with pytest.raises(ValueError, match="output_attentions=True needs eager attention"):
            model(modalities=inputs, output_attentions=True)
        model.set_attn_implementation("eager")
        output = model(modalities=inputs, modality_mask=mask, output_attentions=True)
    torch.testing.assert_close(main_output(output), sdpa, rtol=1e-5, atol=1e-5)
    heads, tokens = model.config.num_attention_heads, TESTER.num_tokens
    assert [tuple(a.shape) for a in output.attentions] == [(TESTER.batch_size, 3, heads, tokens, tokens)] * 2
    torch.testing.assert_close(output.attentions[0].sum(-1), torch.ones(TESTER.batch_size, 3, heads, tokens))


def test_an_unsupported_attention_implementation_is_a_clear_error(tmp_path):
    TESTER.model().save_pretrained(tmp_path)
    for implementation, message in (("flash_attention_2", "does not support Flash Attention"),
                                    ("flex_attention", "does not support an attention implementation through torch's "
                                                       "flex_attention"), ("nonsense", "nonsense")):
        with pytest.raises(ValueError, match=message):
            AutoModelForSequenceClassification.from_pretrained(tmp_path, attn_implementation=implementation)


@pytest.mark.parametrize(("model_class", "problem_type", "per_step"), PROBLEMS,
                         ids=[f"{c.__name__}-{p}" for c, p, _ in PROBLEMS])
def test_gradient_checkpointing_gives_the_same_loss_gradients_and_routing_updates(model_class, problem_type, per_step):
    model = TESTER.model(model_class, problem_type=problem_type, dropout=0.1).train()
    checkpointed = copy.deepcopy(model)
    checkpointed.activation_checkpointing_enable()
    assert checkpointed.is_activation_checkpointing and not model.is_activation_checkpointing
    assert all(block.gradient_checkpointing for block in checkpointed.merge.blocks)
    assert all(layer.gradient_checkpointing for encoder in checkpointed.merge.encoders.values()
               for layer in encoder.layers)
    inputs, labels = TESTER.inputs(model.config), TESTER.labels(model.config, per_step=per_step)
    losses = []
    for candidate in (model, checkpointed):
        torch.manual_seed(0)  # the same dropout masks; the replay restores the RNG state itself
        loss = candidate(modalities=inputs, labels=labels).loss
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[1], losses[0])
    for (name, parameter), (_, twin) in zip(model.named_parameters(), checkpointed.named_parameters()):
        assert (parameter.grad is None) == (twin.grad is None), name
        if parameter.grad is not None:
            torch.testing.assert_close(twin.grad, parameter.grad, rtol=1e-5, atol=1e-6, msg=name)
    for (name, buffer), (_, twin) in zip(model.named_buffers(), checkpointed.named_buffers()):
        torch.testing.assert_close(twin, buffer, msg=name)  # selection bias moved once, not once more in the replay


@pytest.mark.parametrize(("model_class", "problem_type", "per_step"), PROBLEMS,
                         ids=[f"{c.__name__}-{p}" for c, p, _ in PROBLEMS])
def test_each_problem_type_trains_and_round_trips_through_its_auto_class(model_class, problem_type, per_step,
                                                                        tmp_path):
    model = TESTER.model(model_class, problem_type=problem_type)
    inputs = TESTER.inputs(model.config, batch=8, seed=1)
    labels = TESTER.labels(model.config, batch=8, per_step=per_step, seed=1)
    losses = train_steps(model, dict(modalities=inputs, labels=labels), steps=8)
    assert losses[-1] < losses[0], losses
    model.eval().save_pretrained(tmp_path)
    reloaded = AUTO_CLASS[model_class].from_pretrained(tmp_path).eval()
    assert reloaded.config.problem_type == problem_type
    with torch.no_grad():
        assert torch.equal(reloaded(modalities=inputs).logits, model(modalities=inputs).logits)


def test_the_deprecated_gradient_checkpointing_enable_still_turns_checkpointing_on():
    model = TESTER.model()
    with pytest.warns(FutureWarning, match="activation_checkpointing_enable"):
        model.gradient_checkpointing_enable()
    assert all(block.gradient_checkpointing for block in model.merge.blocks)
