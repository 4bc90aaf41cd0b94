"""PEFT LoRA on RUS-routed MoE language models and on MergeForSequenceClassification."""

import copy

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from test_llm import mixed_batch, sensor_rus, tiny_lm

from modeling_merge.llm import install_rus_router
from modeling_merge.modeling_merge import MergeForSequenceClassification, MergeForTokenClassification

from merge_tester import TESTER, MergeModelTester, train_steps

LLM_LORA = dict(
    r=4,
    lora_alpha=8,
    target_modules=r".*(rus_path\.(hidden|mixer|output|context\.(query|key|value))|self_attn\.(q_proj|v_proj))",
)
EXPERT_PARAMETERS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def split_state(peft_model) -> tuple[dict, dict]:
    """(base weights, adapter weights) of a PeftModel, detached copies."""
    state = {name: tensor.detach().clone() for name, tensor in peft_model.state_dict().items()}
    adapter = {name: tensor for name, tensor in state.items() if "lora_" in name}
    base = {name: tensor for name, tensor in state.items() if "lora_" not in name}
    return base, adapter


def assert_only_adapters_changed(before: tuple[dict, dict], after: tuple[dict, dict]) -> None:
    (base_before, adapter_before), (base_after, adapter_after) = before, after
    assert base_before.keys() == base_after.keys()
    for name in base_before:
        assert torch.equal(base_before[name], base_after[name]), f"base weight {name} changed"
    assert any(not torch.equal(adapter_before[n], adapter_after[n]) for n in adapter_before)


@pytest.fixture(params=["mixtral", "qwen2_moe", "olmoe"])
def routed_lm(request):
    model = tiny_lm(request.param)
    install_rus_router(model, sensor_rus())
    return model


def test_lora_on_rus_gates_attention_and_experts_trains_only_the_adapters(routed_lm):
    base_copy = copy.deepcopy(routed_lm)
    peft_model = get_peft_model(routed_lm, LoraConfig(**LLM_LORA, target_parameters=EXPERT_PARAMETERS))
    wrapped = {name for name, _ in peft_model.named_modules() if name.endswith("lora_A")}
    assert any(".mlp.gate.rus_path.output" in name for name in wrapped)
    assert any(".self_attn.q_proj" in name for name in wrapped)
    assert any(".mlp.experts" in name for name in wrapped)
    input_ids, modality_ids = mixed_batch()
    batch = dict(input_ids=input_ids, modality_ids=modality_ids, labels=input_ids, output_router_logits=True)
    before = split_state(peft_model)
    losses = train_steps(peft_model.train(), batch, steps=3)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert_only_adapters_changed(before, split_state(peft_model))
    peft_model.eval()
    with torch.no_grad():
        tuned = peft_model(input_ids=input_ids, modality_ids=modality_ids).logits
        original = base_copy(input_ids, modality_ids=modality_ids).logits
    assert not torch.allclose(tuned, original)


def test_saved_adapter_reloads_onto_a_fresh_routed_model_and_merging_keeps_outputs(routed_lm, tmp_path):
    base_copy = copy.deepcopy(routed_lm)
    peft_model = get_peft_model(routed_lm, LoraConfig(**LLM_LORA, init_lora_weights=False)).eval()
    input_ids, modality_ids = mixed_batch()
    with torch.no_grad():
        expected = peft_model(input_ids=input_ids, modality_ids=modality_ids).logits
    peft_model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").is_file()
    reloaded = PeftModel.from_pretrained(base_copy, tmp_path).eval()
    merged = peft_model.merge_and_unload()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=input_ids, modality_ids=modality_ids).logits, expected, atol=1e-6)
        merged_logits = merged(input_ids, modality_ids=modality_ids).logits
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    assert torch.allclose(merged_logits, expected, atol=1e-5)


MERGE_LORA = dict(
    r=4,
    lora_alpha=8,
    target_modules=r".*(router\.(hidden|mlp\.[02]|context_attention\.(query|key|value))|q_proj|v_proj|fc_in|fc_out)",
)


def tiny_pretrained_merge() -> MergeForSequenceClassification:
    """A tiny MERGE classifier (acc 3 ch, ecg 1 ch, 2 classes) with RUS set, standing in for a pretrained one."""
    tester = MergeModelTester(modalities={"acc": 3, "ecg": 1}, patch_sizes={}, num_labels=2, num_rus_lags=2)
    model = MergeForSequenceClassification(tester.config(num_feedforward_experts=2, num_synergy_experts=1))
    rus = sensor_rus()
    model.set_rus(rus.redundancy[:, :, :2], rus.uniqueness[:, :, :2], rus.synergy[:, :, :2])
    return model.eval()


def new_subject_batch() -> dict:
    """8 windows of a 'new subject' whose label is the sign of the mean acceleration."""
    acc = torch.randn(8, 6, 3)
    labels = (acc.mean(dim=(1, 2)) > 0).long()
    return dict(modalities={"acc": acc, "ecg": torch.randn(8, 6, 1)}, labels=labels)


def test_lora_fine_tunes_a_pretrained_merge_classifier_on_a_new_subject(tmp_path):
    pretrained = tiny_pretrained_merge()
    base_copy = copy.deepcopy(pretrained)
    peft_model = get_peft_model(pretrained, LoraConfig(**MERGE_LORA))
    wrapped = {name for name, module in peft_model.named_modules() if name.endswith("lora_A")}
    for part in ("router.hidden", "router.mlp.2", "router.context_attention.query", "q_proj", "fc_in"):
        assert any(part in name for name in wrapped), part
    batch = new_subject_batch()
    before = split_state(peft_model)
    losses = train_steps(peft_model.train(), batch, steps=10)
    assert losses[-1] < losses[0]
    assert_only_adapters_changed(before, split_state(peft_model))

    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(**batch).logits
    peft_model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(base_copy, tmp_path).eval()
    merged = peft_model.merge_and_unload()
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, expected, atol=1e-6)
        assert torch.allclose(merged(**batch).logits, expected, atol=1e-5)
    assert isinstance(merged, MergeForSequenceClassification)


@pytest.mark.parametrize(("task_type", "model_class", "per_step"), [
    ("SEQ_CLS", MergeForSequenceClassification, False),
    ("TOKEN_CLS", MergeForTokenClassification, True),
])
def test_lora_with_the_standard_task_type_wraps_and_trains_a_merge_head(task_type, model_class, per_step, tmp_path):
    model = TESTER.model(model_class).eval()
    base_copy = copy.deepcopy(model)
    peft_model = get_peft_model(model, LoraConfig(task_type=task_type, **MERGE_LORA))
    batch = dict(modalities=TESTER.inputs(model.config, batch=6), labels=TESTER.labels(model.config, batch=6,
                                                                                        per_step=per_step))
    assert any(name.endswith("classifier.modules_to_save.default.weight") for name, _ in peft_model.named_parameters())
    losses = train_steps(peft_model.train(), batch, steps=6)
    assert losses[-1] < losses[0], losses
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(**batch).logits
    peft_model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(base_copy, tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, expected)
