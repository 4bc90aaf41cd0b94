"""examples/train.py's training recipe: decay only on weight matrices, balanced class weights, early stopping."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "examples"))

import train  # noqa: E402
from tiny_train_job import TINY_MODEL, tiny_arguments  # noqa: E402

from modeling_merge.configuration_merge import MergeConfig  # noqa: E402
from modeling_merge.modeling_merge import MergeForSequenceClassification  # noqa: E402


def test_weight_decay_reaches_every_weight_matrix_and_no_bias_or_norm():
    model = MergeForSequenceClassification(MergeConfig(modalities={"a": 2, "b": 3}, num_labels=3,
                                                       **json.loads(TINY_MODEL)))
    model.classifier.bias.requires_grad_(False)
    decayed, undecayed = train.parameter_groups(model, weight_decay=0.1)
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    decayed_names = {names[id(p)] for p in decayed["params"]}
    undecayed_names = {names[id(p)] for p in undecayed["params"]}
    assert (decayed["weight_decay"], undecayed["weight_decay"]) == (0.1, 0.0)
    assert not decayed_names & undecayed_names
    assert decayed_names | undecayed_names == {n for n, p in model.named_parameters() if p.requires_grad}
    assert "classifier.weight" in decayed_names and "classifier.bias" not in decayed_names | undecayed_names
    assert all(not name.endswith("bias") for name in decayed_names)
    norms = [name for name, module in model.named_modules() if isinstance(module, torch.nn.LayerNorm)]
    assert norms and all(f"{norm}.weight" in undecayed_names for norm in norms)


def test_balanced_class_weights_give_every_class_the_same_total_weight():
    labels = [0] * 60 + [1] * 30 + [2] * 10
    arguments = train.TrainArguments(class_weighting="balanced")
    weights = train.class_weights(arguments, Dataset.from_dict({"label": labels}), num_labels=3)
    totals = weights.numpy() * np.bincount(labels)
    np.testing.assert_allclose(totals, np.full(3, len(labels) / 3), rtol=1e-6)
    assert train.class_weights(train.TrainArguments(), Dataset.from_dict({"label": labels}), num_labels=3) is None


def test_balanced_class_weights_refuse_a_class_missing_from_the_training_split():
    arguments = train.TrainArguments(class_weighting="balanced")
    with pytest.raises(ValueError, match=r"class id\(s\) \[1\] never occur"):
        train.class_weights(arguments, Dataset.from_dict({"label": [0, 2, 2]}), num_labels=3)


def test_the_weighted_loss_replaces_the_cross_entropy_and_keeps_the_routing_losses():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.0], [-1.0, 1.5]])
    labels = torch.tensor([0, 1, 1])
    weights = torch.tensor([3.0, 0.5])
    outputs = type("Outputs", (), {"logits": logits, "aux_loss": torch.tensor(0.25), "loss": None})()
    expected = (torch.nn.functional.cross_entropy(logits, labels, reduction="none") * weights[labels]).sum() \
        / weights[labels].sum() + 0.25
    assert torch.allclose(train.training_loss(outputs, labels, weights), expected)


def test_unknown_recipe_options_fail_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.main(tiny_arguments(tmp_path / "run", tmp_path / "rus.safetensors", "--class_weighting", "inverse"))
    assert "argument --class_weighting" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--early_stopping_patience must be ≥ 0, got -1"):
        train.main(tiny_arguments(tmp_path / "run", tmp_path / "rus.safetensors", "--early_stopping_patience", "-1"))
    assert not (tmp_path / "rus.safetensors").exists()


def test_training_stops_once_validation_has_not_improved_for_the_patience(reference_run, tmp_path):
    root, _ = reference_run  # no learning (rate 0, no selection-bias updates): validation stays at its first value
    frozen = json.dumps({**json.loads(TINY_MODEL), "router_bias_update_rate": 0.0})
    results = train.main(tiny_arguments(tmp_path / "run", root / "rus.safetensors", "--num_epochs", "5",
                                        "--learning_rate", "0", "--early_stopping_patience", "2",
                                        "--class_weighting", "balanced", "--model_options", frozen))
    assert (results["best_epoch"], results["epochs_trained"], results["stopped_early"]) == (1, 3, True)
    assert results["recipe"]["early_stopping_patience"] == 2 and results["recipe"]["class_weighting"] == "balanced"
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in log if entry["split"] == "validation"] == [1, 2, 3]


def test_balanced_class_weights_count_the_labelled_steps_of_per_step_labels():
    steps = [[0, 0, -100, 1], [0, -100, -100, 2], [1, 1, 0, 0]]
    weights = train.class_weights(train.TrainArguments(class_weighting="balanced"), Dataset.from_dict({"label": steps}),
                                  num_labels=3)
    counts = np.array([5, 3, 1])  # -100 never counts
    np.testing.assert_allclose(weights.numpy(), counts.sum() / (3 * counts), rtol=1e-6)


def test_the_weighted_per_step_loss_with_equal_weights_is_the_token_heads_own_loss():
    from modeling_merge.modeling_merge import MergeForTokenClassification

    model = MergeForTokenClassification(MergeConfig(modalities={"a": 2}, num_labels=3, token_grid_length=4,
                                                    router_type="softmax", **json.loads(TINY_MODEL)))
    labels = torch.tensor([[0, 2, -100, 1, 1, 0, -100, -100], [2, 2, 1, 0, -100, 1, 0, 0]])  # 2 steps per token
    outputs = model(modalities={"a": torch.randn(2, 4, 2)}, labels=labels)
    assert torch.allclose(train.training_loss(outputs, labels, torch.ones(3)), outputs.loss, atol=1e-6)
    unlabelled = torch.full_like(labels, -100)
    no_steps = model(modalities={"a": torch.randn(2, 4, 2)}, labels=unlabelled)
    assert torch.allclose(train.training_loss(no_steps, unlabelled, torch.ones(3)), no_steps.aux_loss)
