"""Checkpoints saved before the RUS-routing core moved to `rus_routing.py` still load and give the same outputs.

The fixture `tests/fixtures/merge_seqcls_5bc048e` was saved by the code at commit 5bc048e (a tiny RUS-routed
classifier trained three steps, with its inputs and outputs on one thread); the current code must reproduce
them exactly.
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from modeling_merge import MergeForSequenceClassification

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "merge_seqcls_5bc048e"


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_checkpoint_of_5bc048e_reproduces_its_outputs(one_thread):
    expected = load_file(FIXTURE / "expected_outputs.safetensors")
    model = AutoModelForSequenceClassification.from_pretrained(FIXTURE).eval()
    assert isinstance(model, MergeForSequenceClassification)
    inputs = {name.removeprefix("input."): value for name, value in expected.items() if name.startswith("input.")}
    with torch.no_grad():
        output = model(modalities=inputs, modality_mask=expected["modality_mask"], labels=expected["labels"],
                       output_router_probs=True)
    assert torch.equal(model.merge.rus_thresholds, expected["rus_thresholds"])
    assert torch.equal(output.logits, expected["logits"])
    assert torch.equal(output.router_probs[0], expected["router_probs"])
    assert torch.equal(output.selected_experts[0], expected["selected_experts"])
    assert torch.equal(output.aux_loss, expected["aux_loss"])
    for name, value in output.aux_losses.items():
        assert torch.equal(value, expected[f"aux_losses.{name}"]), name
    assert torch.equal(output.loss, expected["loss"])


def test_checkpoint_saved_before_the_logit_offset_and_bias_count_buffers_loads_with_nothing_reported_missing():
    model, info = MergeForSequenceClassification.from_pretrained(FIXTURE, output_loading_info=True)
    assert not any(info.values()), info
    offsets = [module.expert_logit_offsets for module in model.modules() if hasattr(module, "expert_logit_offsets")]
    assert offsets and all(not buffer.any() for buffer in offsets)  # recorded at the next training forward
    counts = [module.expert_bias_updates for module in model.modules() if hasattr(module, "expert_bias_updates")]
    assert len(counts) == len(offsets) and all(count.item() == 0 for count in counts)  # the schedule starts afresh
