"""The benchmark harness's WESAD-E4 subject folds (benchmarks/_harness.py)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import _harness  # noqa: E402
from _harness import DATASETS, Run, Variant, format_routing_table, summarize, wesad_subject_fold  # noqa: E402

from dataset_builders.wesad import SUBJECTS  # noqa: E402


def test_the_five_subject_folds_test_every_subject_once_with_the_papers_10_2_3_split_sizes():
    folds = [wesad_subject_fold(fold) for fold in range(5)]
    for fold in folds:
        assert (len(fold["train_subjects"]), len(fold["validation_subjects"]), len(fold["test_subjects"])) == (10, 2, 3)
        assert sorted(fold["train_subjects"] + fold["validation_subjects"] + fold["test_subjects"]) == sorted(SUBJECTS)
    assert sorted(subject for fold in folds for subject in fold["test_subjects"]) == sorted(SUBJECTS)
    for fold, following in zip(folds, folds[1:] + folds[:1]):  # validation: the next fold's first two test subjects
        assert fold["validation_subjects"] == following["test_subjects"][:2]
    with pytest.raises(ValueError, match="5 subject folds"):
        wesad_subject_fold(5)


def test_a_cross_validated_run_trains_seed_k_on_fold_k_with_its_own_cache_and_sidecar():
    runs = [Run("wesad_e4_three_class_folds", Variant("MERGE", {"router_type": "rus"}), seed) for seed in (0, 1)]
    options = [json.loads(run.arguments()["dataset_options"]) for run in runs]
    assert [option["test_subjects"] for option in options] == [SUBJECTS[0:3], SUBJECTS[3:6]]
    assert options[0]["task"] == "three_class" and options[0]["per_subject_normalize"] is True
    assert runs[0].cache_dir != runs[1].cache_dir
    assert runs[0].arguments()["rus_sidecar"] != runs[1].arguments()["rus_sidecar"]
    fixed = Run("wesad_e4_three_class", Variant("MERGE", {"router_type": "rus"}), 1)
    assert "test_subjects" not in json.loads(fixed.arguments()["dataset_options"]) and fixed.fold is None
    assert "subject_folds" in DATASETS["wesad_e4_binary_folds"]


def _write_run(run: Run, validation_least_used_shares: list[float]) -> None:
    """The files train.py leaves in a finished run folder, reduced to what the summary reads."""
    run.output_dir.mkdir(parents=True)
    test = {"accuracy": 0.9, "macro_f1": 0.8, "roc_auc": 0.95, "routing_expert_share_min": 0.05}
    (run.output_dir / "results.json").write_text(json.dumps(
        {"test": test, "validation": test, "best_epoch": 2, "steps": 10, "selection_metric": "macro_f1"}))
    (run.output_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"split": "validation", "epoch": epoch, "macro_f1": 0.8, "routing_expert_share_min": share}) + "\n"
        for epoch, share in enumerate(validation_least_used_shares, start=1)))


def test_the_routing_table_counts_every_validation_epoch_whose_least_used_expert_is_under_the_floor(tmp_path,
                                                                                                 monkeypatch):
    monkeypatch.setattr(_harness, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(_harness, "RUNS_ROOT", tmp_path / "runs")
    runs = [Run("synthetic", Variant("MERGE (rus)", {"router_type": "rus"}), seed) for seed in (0, 1)]
    _write_run(runs[0], [0.004, 0.03, 0.019])  # epoch 1 and epoch 3 under 2 %
    _write_run(runs[1], [0.05, 0.06])
    summary, _ = summarize(runs)
    entry = summary["synthetic"]["MERGE (rus)"]
    assert entry["validation_epochs_under_balance_floor"] == {"count": 2, "epochs": 5, "first_epoch": 1}
    assert "2 of 5 (1)" in format_routing_table(summary, "routing")
