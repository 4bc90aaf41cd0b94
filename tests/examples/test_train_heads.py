"""examples/train.py on per-step labels (PAMAP2 fixture, MergeForTokenClassification) and a regression target
(MOSI fixture, the regression head): the loss, metrics, baseline and checkpoint each problem type needs."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO_ROOT / "examples"), str(REPO_ROOT / "tests" / "dataset_builders")]

import train  # noqa: E402
from builder_fixtures import write_pamap2_subject  # noqa: E402
from test_mosi import mosi_dir  # noqa: E402, F401  (the MOSI fixture pickle, a pytest fixture)
from tiny_train_job import TINY_MODEL  # noqa: E402

import modeling_merge  # noqa: E402, F401  (registers the Auto classes)
from dataset_builders import build  # noqa: E402
from modeling_merge.modeling_merge import MergeForSequenceClassification, MergeForTokenClassification  # noqa: E402

PAMAP2_STEPS = {"window": 20, "stride": 10, "label_granularity": "step", "train_subjects": ["101", "102"],
                "validation_subjects": ["107"], "test_subjects": ["108"]}
MOSI_REGRESSION = {"task": "regression", "allow_pickle": True}


def tiny_job(dataset: str, data_dir: Path, options: dict, output_dir: Path, *extra: str) -> list[str]:
    return ["--dataset", dataset, "--data_dir", str(data_dir), "--dataset_options", json.dumps(options),
            "--output_dir", str(output_dir), "--model_options", TINY_MODEL, "--batch_size", "8", "--num_epochs", "2",
            "--rus_estimator", "quantized_exact", "--num_rus_lags", "2", "--report_to", "none", "--cpu", *extra]


@pytest.fixture(scope="module")
def pamap2_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pamap2")
    protocol = root / "PAMAP2_Dataset" / "Protocol"  # 0 = transient (-100 per step); 1 lying, 4 walking
    write_pamap2_subject(protocol, "101", [(0, 25), (1, 60), (0, 20), (4, 55)], seed=1)
    write_pamap2_subject(protocol, "102", [(4, 40), (1, 40)], seed=2)
    write_pamap2_subject(protocol, "107", [(1, 40), (4, 30)], seed=3)
    write_pamap2_subject(protocol, "108", [(4, 30), (0, 10), (1, 30)], seed=4)
    return root


@pytest.fixture(scope="module")
def per_step_run(pamap2_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("per_step") / "run"
    return output_dir, train.main(tiny_job("pamap2", pamap2_dir, PAMAP2_STEPS, output_dir))


@pytest.fixture(scope="module")
def regression_run(mosi_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("regression") / "run"
    return output_dir, train.main(tiny_job("mosi", mosi_dir, MOSI_REGRESSION, output_dir))


def built_splits(output_dir: Path, dataset: str, data_dir: Path, options: dict):
    """The run's data, from its own cache (what train.py trained and tested on)."""
    return build(dataset, data_dir=str(data_dir), cache_dir=str(output_dir / "cache"), **options)


def test_per_step_labels_train_a_token_head_scored_over_the_labelled_steps(per_step_run, pamap2_dir):
    output_dir, results = per_step_run
    assert (results["head"], results["problem_type"], results["label_granularity"]) == (
        "MergeForTokenClassification", "single_label_classification", "step")
    assert {"accuracy", "macro_f1"} <= set(results["test"]) and results["selection_metric"] == "macro_f1"
    assert json.loads((output_dir / "results.json").read_text())["test"] == results["test"]
    splits = built_splits(output_dir, "pamap2", pamap2_dir, PAMAP2_STEPS)
    train_steps, test_steps = (np.asarray(splits[split]["label"]) for split in ("train", "test"))
    assert (test_steps == -100).any()  # the transient steps of subject 108 are left out of the scores
    majority = np.bincount(train_steps[train_steps != -100]).argmax()
    labelled = test_steps[test_steps != -100]
    assert results["baseline"]["name"] == "majority class"
    assert results["baseline"]["test"]["accuracy"] == pytest.approx(np.mean(labelled == majority))
    assert results["rus_metadata"]["label_kind"] == "step"
    assert results["rus_metadata"]["samples_per_lag"] == [int((train_steps[:, lag:] != -100).sum()) for lag in range(2)]

    model = AutoModelForTokenClassification.from_pretrained(output_dir / "best_model")
    assert isinstance(model, MergeForTokenClassification)
    batch = train.MultimodalCollator(list(model.config.modalities))([splits["test"].with_format("numpy")[0]])
    outputs = model(**batch)
    assert outputs.logits.shape == (1, PAMAP2_STEPS["window"], model.config.num_labels)
    assert torch.isfinite(outputs.loss)


def test_a_regression_target_trains_the_regression_head_selected_on_rmse(regression_run, mosi_dir):
    output_dir, results = regression_run
    assert (results["head"], results["problem_type"]) == ("MergeForSequenceClassification", "regression")
    assert set(results["test"]) & {"mae", "rmse", "r2", "accuracy", "macro_f1", "roc_auc"} == {"mae", "rmse", "r2"}
    assert (results["selection_metric"], results["selection_higher_is_better"]) == ("rmse", False)
    splits = built_splits(output_dir, "mosi", mosi_dir, MOSI_REGRESSION)
    train_targets = np.asarray(splits["train"]["label"], dtype=np.float64)
    test_targets = np.asarray(splits["test"]["label"], dtype=np.float64)
    assert results["baseline"]["name"] == "training mean"
    assert results["baseline"]["test"]["rmse"] == pytest.approx(
        np.sqrt(np.mean((test_targets - train_targets.mean()) ** 2)))
    bins = results["rus_metadata"]["target_bins"]
    np.testing.assert_allclose(bins["edges"], np.quantile(train_targets, [0.25, 0.5, 0.75]), rtol=1e-6)

    model = AutoModelForSequenceClassification.from_pretrained(output_dir / "best_model")
    assert isinstance(model, MergeForSequenceClassification)
    assert (model.config.problem_type, model.config.num_labels) == ("regression", 1)
    collator = train.MultimodalCollator(list(model.config.modalities), problem_type="regression")
    with torch.no_grad():
        predictions = model(**collator(list(splits["test"].with_format("numpy")))).logits[:, 0].double().numpy()
    assert np.sqrt(np.mean((predictions - test_targets) ** 2)) == pytest.approx(results["test"]["rmse"], rel=1e-4)


@pytest.mark.parametrize("extra, message", [
    (["--selection_metric", "macro_f1"], r"--selection_metric macro_f1 does not apply to mosi \(regression\); "
                                         r"choose one of \('rmse', 'mae', 'r2'\)"),
    (["--class_weighting", "balanced"], "mosi has a regression target: use --class_weighting none"),
])
def test_options_a_regression_target_lacks_are_refused_before_the_rus_is_estimated(mosi_dir, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        train.main(tiny_job("mosi", mosi_dir, MOSI_REGRESSION, tmp_path / "run", *extra))
    assert not (tmp_path / "run" / "rus.safetensors").exists()


def test_a_classification_metric_the_task_lacks_is_refused(pamap2_dir, tmp_path):
    with pytest.raises(ValueError, match=r"--selection_metric rmse does not apply to pamap2 \(step classification\)"):
        train.main(tiny_job("pamap2", pamap2_dir, PAMAP2_STEPS, tmp_path / "run", "--selection_metric", "rmse"))
    with pytest.raises(ValueError, match="average_precision needs a binary task; pamap2 has 12 classes"):
        train.main(tiny_job("pamap2", pamap2_dir, PAMAP2_STEPS, tmp_path / "run2", "--selection_metric",
                            "average_precision"))


def exported_card(output_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    import push_to_hub

    folder = Path(push_to_hub.main(["--run_dir", str(output_dir), "--repo_id", "org/merge-tiny",
                                    "--export_dir", str(tmp_path / "export")]))
    return folder, (folder / "README.md").read_text()


def test_the_model_card_of_a_per_step_run_names_token_classification_and_its_auto_class(per_step_run, tmp_path):
    output_dir, results = per_step_run
    _, card = exported_card(output_dir, tmp_path)
    assert "12-class per-step classification (token classification)" in card
    assert "AutoModelForTokenClassification.from_pretrained(" in card and "AutoModelForSequenceClassification" not in card
    assert "one class score per step" in card and 'pipeline("time-series-classification"' not in card


def test_the_model_card_of_a_regression_run_names_the_target_and_the_lower_is_better_selection(regression_run, tmp_path):
    output_dir, _ = regression_run
    folder, card = exported_card(output_dir, tmp_path)
    assert "regression of sentiment" in card and "Target: sentiment (regression" in card
    assert "best validation rmse (lower is better)" in card and "Classes (" not in card
    assert json.loads((folder / "config.json").read_text())["problem_type"] == "regression"


def test_an_exported_token_head_maps_only_its_own_auto_class_to_itself(per_step_run, tmp_path):
    folder, _ = exported_card(per_step_run[0], tmp_path)
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForTokenClassification"] == "modeling_merge.MergeForTokenClassification"
    assert auto_map["AutoModelForSequenceClassification"] == "modeling_merge.MergeForSequenceClassification"


@pytest.mark.parametrize("run", ["per_step_run", "regression_run"])
def test_evaluate_checkpoint_reproduces_the_test_metrics_of_each_head(run, request, tmp_path):
    import evaluate_checkpoint

    output_dir, results = request.getfixturevalue(run)
    report = evaluate_checkpoint.evaluate_checkpoint(evaluate_checkpoint.EvaluateArguments(
        checkpoint=str(output_dir / "best_model"), output_dir=str(tmp_path)))
    assert report["metrics"] == pytest.approx(results["test"], abs=1e-6)


def test_auto_selection_is_recorded_as_its_metric_so_runs_that_named_it_still_resume():
    one_process = type("Accelerator", (), {"num_processes": 1})()
    rmse = train.Selection("rmse", higher_is_better=False)
    auto = train.run_settings(train.TrainArguments(), one_process, rmse)
    named = train.run_settings(train.TrainArguments(selection_metric="rmse"), one_process, rmse)
    assert auto == named and auto["selection_metric"] == "rmse"
    assert rmse.score({"rmse": 0.5}) > rmse.score({"rmse": 0.7})  # lower is better, so it scores higher
