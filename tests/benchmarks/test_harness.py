"""The benchmark harness's WESAD-E4 subject folds (benchmarks/_harness.py)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

import _harness  # noqa: E402
from _harness import (DATASETS, Run, Variant, format_routing_table, format_structure_table,  # noqa: E402
                      structure_against_controls, summarize, wesad_subject_fold)

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


def test_a_variant_changes_model_fields_on_top_of_the_default_model_and_names_them_in_its_folder():
    import train

    rule = Variant("MERGE, redundant not unique", {"router_type": "rus"}, {"uniqueness_excludes_redundant": True})
    run = Run("synthetic", rule, 0)
    default_model = json.loads(train.TrainArguments.model_options)
    assert json.loads(run.arguments()["model_options"]) == {**default_model, "uniqueness_excludes_redundant": True}
    assert run.arguments()["router_type"] == "rus"
    assert rule.folder == "model.uniqueness_excludes_redundant=True__router_type=rus"
    plain = Run("synthetic", Variant("MERGE", {"router_type": "rus"}), 0)
    assert "model_options" not in plain.arguments() and plain.output_dir != run.output_dir
    smoke = Run("synthetic", rule, 0, smoke=True)  # the smoke model's options, not the default's, under the change
    assert json.loads(smoke.arguments()["model_options"]) == {**json.loads(_harness.SMOKE["model_options"]),
                                                             "uniqueness_excludes_redundant": True}


def _write_run(run: Run, validation_least_used_shares: list[float], routing: dict | None = None) -> None:
    """The files train.py leaves in a finished run folder, reduced to what the summary reads."""
    run.output_dir.mkdir(parents=True)
    test = {"accuracy": 0.9, "macro_f1": 0.8, "roc_auc": 0.95, "routing_expert_share_min": 0.05, **(routing or {})}
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


def _routing(redundant: float, non_redundant: float, synergistic: float, other: float) -> dict:
    return {"routing_redundant_pair_jsd": redundant, "routing_non_redundant_pair_jsd": non_redundant,
            "routing_synergy_share_synergistic": synergistic, "routing_synergy_share_other": other}


def test_the_rus_structure_of_merge_is_compared_with_each_control_seed_by_seed(tmp_path, monkeypatch):
    monkeypatch.setattr(_harness, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(_harness, "RUNS_ROOT", tmp_path / "runs")
    merge = Variant("MERGE (rus)", {"router_type": "rus"})
    softmax = Variant("softmax top-k", {"router_type": "softmax"})
    dense = Variant("dense", {"router_type": "dense"})
    # seed 0: MERGE's redundant pairs 0.2 closer, the control's 0.05; seed 1: MERGE's 0.1, the control's 0.3
    _write_run(Run("synthetic", merge, 0), [0.1], _routing(0.1, 0.3, 0.4, 0.1))
    _write_run(Run("synthetic", merge, 1), [0.1], _routing(0.2, 0.3, 0.5, 0.1))
    _write_run(Run("synthetic", softmax, 0), [0.1], _routing(0.25, 0.3, 0.2, 0.3))
    _write_run(Run("synthetic", softmax, 1), [0.1], _routing(0.0, 0.3, 0.25, 0.25))
    _write_run(Run("synthetic", softmax, 2), [0.1], _routing(0.0, 0.3, 0.25, 0.25))  # no MERGE seed 2: unpaired
    dense_run = Run("synthetic", dense, 0)
    dense_run.output_dir.mkdir(parents=True)  # a dense model has no routing metrics: not a control
    (dense_run.output_dir / "results.json").write_text(json.dumps(
        {"test": {"macro_f1": 0.7}, "validation": {"macro_f1": 0.7}, "best_epoch": 1, "steps": 5,
         "selection_metric": "macro_f1"}))
    (dense_run.output_dir / "metrics.jsonl").write_text(
        json.dumps({"split": "validation", "epoch": 1, "macro_f1": 0.7}))
    runs = [Run("synthetic", variant, seed) for variant in (merge, softmax, dense) for seed in range(3)]
    _, records = summarize(runs)
    structure = structure_against_controls(records)["synthetic"]
    assert list(structure) == ["softmax top-k"]
    closer = structure["softmax top-k"]["redundant pairs closer"]
    assert closer["seeds"] == [0, 1] and closer["reference_stronger"] == 1
    assert closer["reference"] == pytest.approx(0.15) and closer["control"] == pytest.approx(0.175)
    synergy = structure["softmax top-k"]["synergistic cells on synergy experts"]
    assert synergy["reference_stronger"] == 2 and synergy["control"] == pytest.approx(-0.05)
    assert "unique pairs apart" not in structure["softmax top-k"]  # no run measured unique pairs
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in format_structure_table(structure_against_controls(records), "structure").splitlines()[3:]]
    assert ["synthetic", "softmax top-k", "redundant pairs closer", "+0.150", "+0.175", "1 of 2"] in rows


def test_the_structure_reference_is_chosen_on_the_command_line_and_must_be_a_variant(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(_harness, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(_harness, "RUNS_ROOT", tmp_path / "runs")
    merge = Variant("MERGE (rus)", {"router_type": "rus"})
    rule = Variant("MERGE, redundant not unique", {"router_type": "rus"}, {"uniqueness_excludes_redundant": True})
    softmax = Variant("softmax top-k", {"router_type": "softmax"})
    _write_run(Run("synthetic", merge, 0), [0.1], _routing(0.3, 0.2, 0.4, 0.1))
    _write_run(Run("synthetic", rule, 0), [0.1], _routing(0.0, 0.2, 0.4, 0.1))
    _write_run(Run("synthetic", softmax, 0), [0.1], _routing(0.1, 0.1, 0.2, 0.2))

    def build_runs(datasets, seeds, smoke):
        return [Run(dataset, variant, seed, smoke) for dataset in datasets for seed in range(seeds)
                for variant in (merge, rule, softmax)]

    def report(*options):
        return _harness.run_script("structure", "test", build_runs, ["synthetic"], 1,
                                   argv=["--report_only", "--output", str(tmp_path / "report.json"), *options])

    closer = report()["structure_against_controls"]["synthetic"]["softmax top-k"]["redundant pairs closer"]
    assert closer["reference"] == pytest.approx(-0.1)  # MERGE (rus), the script's reference
    chosen = report("--structure_reference", rule.name)
    assert chosen["structure_reference"] == rule.name
    closer = chosen["structure_against_controls"]["synthetic"]["softmax top-k"]["redundant pairs closer"]
    assert closer["reference"] == pytest.approx(0.2) and closer["reference_stronger"] == 1
    with pytest.raises(SystemExit):
        report("--structure_reference", "MERGE (typo)")
    assert "unknown --structure_reference 'MERGE (typo)'" in capsys.readouterr().err
