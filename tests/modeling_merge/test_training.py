"""Training helpers: the dict-of-modalities collator, run bookkeeping, and a few real `Trainer` steps."""

import json

import numpy as np
import pytest
import torch

from modeling_merge.training import (
    MetricsLog,
    MultimodalCollator,
    check_modalities_match,
    latest_checkpoint,
    prune_checkpoints,
    routing_summary,
)

from merge_tester import MergeModelTester

ACC_BVP = MergeModelTester(modalities={"acc": 3, "bvp": 1}, patch_sizes={"bvp": 2}, num_labels=2, num_rus_lags=2)


def _row(label=0, acc_steps=8, bvp_steps=16, **overrides):
    row = {"acc": np.ones((acc_steps, 3), np.float32) * label, "bvp": np.zeros((bvp_steps, 1), np.float32),
           "label": label, "subject": "S2"}
    row.update(overrides)
    return row


def test_collator_stacks_modalities_in_config_order_with_labels_and_mask():
    rows = [_row(0, modality_mask=[True, False]), _row(1, modality_mask=[True, True])]
    batch = MultimodalCollator(["acc", "bvp"])(rows)
    assert list(batch["modalities"]) == ["acc", "bvp"]
    assert batch["modalities"]["acc"].shape == (2, 8, 3) and batch["modalities"]["acc"].dtype == torch.float32
    assert batch["modalities"]["bvp"].shape == (2, 16, 1)
    assert batch["labels"].tolist() == [0, 1] and batch["labels"].dtype == torch.int64
    assert batch["modality_mask"].tolist() == [[True, False], [True, True]]
    assert "subject" not in batch
    assert MultimodalCollator(["acc", "bvp"])([_row()])["modality_mask"].tolist() == [[True, True]]


def test_collator_names_the_modality_and_row_of_bad_input():
    collate = MultimodalCollator(["acc", "bvp"])
    with pytest.raises(KeyError, match="modality 'bvp'"):
        collate([{"acc": np.ones((8, 3)), "label": 0}])
    with pytest.raises(ValueError, match=r"modality 'acc' has shape \(7, 3\) in batch row 1"):
        collate([_row(), _row(acc_steps=7)])
    nan_row = _row(acc=np.full((8, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="modality 'acc' in batch row 1 holds 24 NaN"):
        collate([_row(), nan_row])
    with pytest.raises(ValueError, match="modality_mask"):
        collate([_row(modality_mask=[True])])


def test_collator_accepts_nan_in_a_modality_the_mask_marks_absent_as_the_model_does():
    nan_acc = np.full((8, 3), np.nan, np.float32)
    rows = [_row(0, acc=nan_acc, modality_mask=[False, True]), _row(1, modality_mask=[True, True])]
    batch = MultimodalCollator(["acc", "bvp"])(rows)
    assert batch["modality_mask"].tolist() == [[False, True], [True, True]]
    with pytest.raises(ValueError, match="modality 'acc' in batch row 0 holds 24 NaN.*modality_mask"):
        MultimodalCollator(["acc", "bvp"])([_row(0, acc=nan_acc, modality_mask=[True, True])])
    from modeling_merge import MergeForSequenceClassification

    config = ACC_BVP.config(num_blocks=1, num_moe_blocks=0, router_type="dense")
    assert torch.isfinite(MergeForSequenceClassification(config)(**batch).loss)


@pytest.mark.parametrize("label", [0.5, 1.7, float("nan"), float("inf")])
def test_collator_refuses_labels_that_are_not_whole_numbers_instead_of_truncating(label):
    with pytest.raises(ValueError, match=r"column 'label' holds \[.*\] in batch row\(s\) \[1\]"):
        MultimodalCollator(["acc", "bvp"])([_row(0), dict(_row(0), label=label)])


def test_collator_accepts_whole_float_labels_and_names_the_column_of_non_numeric_ones():
    assert MultimodalCollator(["acc", "bvp"])([dict(_row(), label=1.0), dict(_row(), label=0.0)])["labels"].tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"column 'label' must hold numbers \(one per row, or one list per row\)"):
        MultimodalCollator(["acc", "bvp"])([dict(_row(), label="walk")])


def test_collator_stacks_per_step_class_ids_and_float_targets_for_the_other_problem_types():
    steps = [dict(_row(), label=[0, 2, -100, 1]), dict(_row(), label=[1, 1, 0, 0])]
    per_step = MultimodalCollator(["acc", "bvp"])(steps)["labels"]
    assert per_step.dtype == torch.int64 and per_step.tolist() == [[0, 2, -100, 1], [1, 1, 0, 0]]
    regression = MultimodalCollator(["acc", "bvp"], problem_type="regression")([dict(_row(), label=0.25), dict(_row(), label=-1.5)])
    assert regression["labels"].dtype == torch.float32 and regression["labels"].tolist() == [0.25, -1.5]
    multi = MultimodalCollator(["acc", "bvp"], problem_type="multi_label_classification")(
        [dict(_row(), label=[1, 0, 1]), dict(_row(), label=[0, 0, 1])])["labels"]
    assert multi.dtype == torch.float32 and multi.tolist() == [[1, 0, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="rows of different lengths"):
        MultimodalCollator(["acc", "bvp"])([dict(_row(), label=[0, 1]), dict(_row(), label=[0, 1, 1])])
    with pytest.raises(ValueError, match="NaN or infinite regression targets"):
        MultimodalCollator(["acc", "bvp"], problem_type="regression")([dict(_row(), label=float("nan"))])
    with pytest.raises(ValueError, match="problem_type must be one of"):
        MultimodalCollator(["acc", "bvp"], problem_type="ordinal")


def test_task_metrics_follow_the_problem_type():
    from modeling_merge.training import task_metrics

    per_step_logits = np.zeros((2, 2, 3))
    per_step_logits[:, :, 1] = 1.0  # always class 1
    labels = np.array([[1, 1, -100, 2], [1, -100, 1, 1]])  # token t covers steps 2t and 2t+1
    per_step = task_metrics(per_step_logits, labels)
    assert per_step["accuracy"] == pytest.approx(5 / 6)  # 6 labelled steps, the one of class 2 missed
    predictions, targets = np.array([1.0, 2.0, 4.0]), np.array([1.0, 3.0, 3.0])
    regression = task_metrics(predictions[:, None], targets, "regression")
    assert regression["mae"] == pytest.approx(2 / 3) and regression["rmse"] == pytest.approx(np.sqrt(2 / 3))
    assert regression["r2"] == pytest.approx(1 - 2 / (8 / 3))
    multi = task_metrics(np.array([[2.0, -1.0], [-2.0, 1.0], [1.0, 3.0]]), np.array([[1, 0], [0, 1], [1, 0]]),
                         "multi_label_classification")
    assert multi["macro_auroc"] == pytest.approx(0.75)  # label 0 ranked perfectly (1.0), label 1 at 0.5
    assert multi["macro_f1"] == pytest.approx((1.0 + 2 / 3) / 2)


def test_check_modalities_match_explains_what_differs():
    check_modalities_match({"acc": 3, "bvp": 1}, {"acc": 3, "bvp": 1}, "checkpoint x")
    with pytest.raises(ValueError, match=r"checkpoint x .*lacks: \['eda'\]"):
        check_modalities_match({"acc": 3, "bvp": 1}, {"acc": 3, "bvp": 1, "eda": 1}, "checkpoint x")
    with pytest.raises(ValueError, match=r"channels differ .*acc \(3, 6\)"):
        check_modalities_match({"acc": 3}, {"acc": 6}, "checkpoint x")
    with pytest.raises(ValueError, match="order differs"):
        check_modalities_match({"bvp": 1, "acc": 3}, {"acc": 3, "bvp": 1}, "checkpoint x")


def test_latest_checkpoint_ignores_partial_folders_and_pruning_keeps_the_newest(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    for step in (5, 40, 12):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / ".checkpoint-60.partial").mkdir()
    assert latest_checkpoint(tmp_path).name == "checkpoint-40"
    prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".checkpoint-60.partial", "checkpoint-12", "checkpoint-40"]


def test_metrics_log_appends_one_json_object_per_line(tmp_path):
    log = MetricsLog(tmp_path / "run" / "metrics.jsonl")
    log.write(split="train", step=1, loss=np.float32(0.5))
    log.write(split="validation", step=1, accuracy=0.75)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["split"] for line in lines] == ["train", "validation"]
    assert log.read()[0]["loss"] == pytest.approx(0.5)


def _tiny_model():
    return ACC_BVP.model(num_feedforward_experts=2, num_synergy_experts=1)


def _separable_dataset(num_rows: int, seed: int):
    """Class 1 has a positive mean on `acc`, class 0 a negative one; bvp is noise."""
    import datasets

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, num_rows)
    acc = rng.normal(0, 0.3, (num_rows, 8, 3)).astype(np.float32) + (2 * labels[:, None, None] - 1)
    features = datasets.Features({"acc": datasets.Array2D((8, 3), "float32"), "bvp": datasets.Array2D((16, 1), "float32"),
                                  "label": datasets.ClassLabel(names=["low", "high"])})
    return datasets.Dataset.from_dict(
        {"acc": acc, "bvp": rng.normal(size=(num_rows, 16, 1)).astype(np.float32), "label": labels}, features=features)


def test_trainer_trains_and_evaluates_with_the_collator_and_compute_metrics(tmp_path):
    from transformers import Trainer

    from modeling_merge.training import compute_metrics, merge_training_arguments

    model = _tiny_model()
    args = merge_training_arguments(tmp_path, num_train_epochs=1, max_steps=6, per_device_train_batch_size=8,
                                    per_device_eval_batch_size=16, eval_strategy="no", save_strategy="no",
                                    load_best_model_at_end=False, use_cpu=True, logging_steps=2, seed=0)
    assert args.remove_unused_columns is False and args.label_names == ["labels"]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = Trainer(model=model, args=args, train_dataset=_separable_dataset(48, 0), eval_dataset=_separable_dataset(32, 1),
                      data_collator=MultimodalCollator(["acc", "bvp"]), compute_metrics=compute_metrics)
    trainer.train()
    assert trainer.state.global_step == 6
    assert any(not torch.equal(before[name], p) for name, p in model.named_parameters())
    metrics = trainer.evaluate()
    assert {"eval_accuracy", "eval_macro_f1", "eval_roc_auc", "eval_loss"} <= set(metrics)
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and np.isfinite(metrics["eval_loss"])


@pytest.mark.parametrize(("head", "problem_type", "per_step", "expected"), [
    ("MergeForSequenceClassification", "regression", False, {"mae", "rmse", "r2"}),
    ("MergeForSequenceClassification", "multi_label_classification", False, {"macro_f1", "macro_auroc"}),
    ("MergeForTokenClassification", None, True, {"accuracy", "macro_f1"}),
])
def test_evaluate_model_reports_the_metrics_of_the_heads_problem_type(head, problem_type, per_step, expected):
    import modeling_merge
    from modeling_merge.training import evaluate_model

    from merge_tester import TESTER

    model = TESTER.model(getattr(modeling_merge, head), problem_type=problem_type)
    batches = [dict(modalities=TESTER.inputs(model.config, batch=4, seed=seed), modality_mask=torch.ones(4, 3, dtype=bool),
                    labels=TESTER.labels(model.config, batch=4, per_step=per_step, seed=seed)) for seed in (0, 1)]
    metrics, _, _ = evaluate_model(model, batches)
    assert expected <= set(metrics) and all(np.isfinite(metrics[name]) for name in expected)
    assert "routing_expert_share_min" in metrics


def test_parameter_groups_decay_weight_matrices_only_and_cover_every_trainable_parameter():
    from modeling_merge.training import parameter_groups

    model = ACC_BVP.model(use_encoder_conv=True)
    model.merge.encoders["acc"].requires_grad_(False)
    decay, no_decay = parameter_groups(model, weight_decay=0.1)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert decayed | kept == trainable and not decayed & kept and not any("encoders.acc" in n for n in trainable)
    assert "classifier.weight" in decayed and "classifier.bias" in kept
    moe = "merge.blocks.1.feed_forward"
    assert {f"{moe}.feedforward_experts.w_in", f"{moe}.router.gru.weight_ih_l0"} <= decayed
    assert {f"{moe}.feedforward_experts.b_in", f"{moe}.router.gru.bias_hh_l0", "merge.final_norm.weight",
            "merge.encoders.bvp.conv.layers.1.weight"} <= kept


def test_the_routing_summary_reports_unique_pairs_only_where_the_rus_has_some():
    metrics = {"routing_expert_share_min": 0.11, "routing_expert_share_max": 0.14,
               "routing_synergy_share_synergistic": 0.4, "routing_synergy_share_other": 0.01,
               "routing_redundant_pair_jsd": 0.009, "routing_non_redundant_pair_jsd": 0.047,
               "routing_non_unique_pair_jsd": 0.037}
    summary = routing_summary(metrics)
    assert "11.0%–14.0% of the slots" in summary and "redundant pairs 0.009 vs 0.047" in summary
    assert summary.endswith("nats; no unique pairs")
    with_unique = routing_summary(metrics | {"routing_unique_pair_jsd": 0.5,
                                             "routing_redundant_not_unique_pair_jsd": 0.009})
    assert with_unique.endswith("redundant pairs 0.009 vs 0.047, unique pairs 0.500 vs 0.037 nats")
    # where redundant cells are also unique (pushed apart), the summary also gives the redundant cells that are not
    with_conflict = routing_summary(metrics | {"routing_unique_pair_jsd": 0.5,
                                               "routing_redundant_not_unique_pair_jsd": 0.004})
    assert "redundant pairs 0.009 (0.004 without those also unique) vs 0.047" in with_conflict
    assert routing_summary({"accuracy": 0.9}) is None
