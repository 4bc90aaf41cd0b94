"""examples/evaluate_checkpoint.py on a finished tiny train.py run: it scores the checkpoint on data built like
its training data, and refuses data on another token grid instead of scoring it silently."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

import evaluate_checkpoint  # noqa: E402
from tiny_train_job import TINY_DATA  # noqa: E402


def test_a_run_checkpoint_is_scored_on_the_runs_own_data_and_reproduces_its_test_metrics(reference_run, tmp_path):
    root, results = reference_run
    evaluate_checkpoint.main(["--checkpoint", str(root / "run" / "best_model"), "--output_dir", str(tmp_path)])
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert report["dataset"] == "synthetic" and report["split"] == "test"
    assert report["metrics"] == pytest.approx(results["test"], abs=1e-6)
    for figure in report["figures"]:
        assert Path(figure).read_bytes()[:4] == b"\x89PNG"


def test_data_on_another_token_grid_is_refused_naming_both_lengths(reference_run, tmp_path):
    root, _ = reference_run
    longer = TINY_DATA.replace('"seq_len": 8', '"seq_len": 12')
    with pytest.raises(ValueError, match=r"token grid of 8 steps.*got 12"):
        evaluate_checkpoint.main(["--checkpoint", str(root / "run" / "best_model"), "--dataset_options", longer,
                                  "--output_dir", str(tmp_path)])
    assert not (tmp_path / "evaluation.json").exists()


def test_ablation_runs_that_would_share_a_label_are_told_apart_and_a_repeated_run_is_refused(reference_run, tmp_path,
                                                                                              monkeypatch):
    import shutil

    root, _ = reference_run
    for seed in ("seed0", "seed1"):  # two runs of the same variant: the same label
        shutil.copytree(root / "run", tmp_path / seed, ignore=shutil.ignore_patterns("checkpoints", "cache"))
    plotted = {}
    monkeypatch.setattr(evaluate_checkpoint, "plot_ablation", lambda runs, path: plotted.update(runs) or path)
    evaluate_checkpoint.main(["--ablation_runs", str(tmp_path / "seed0"), str(tmp_path / "seed1"),
                              "--output_dir", str(tmp_path / "figures")])
    assert sorted(plotted) == [f"rus (all losses) [{tmp_path / 'seed0'}]", f"rus (all losses) [{tmp_path / 'seed1'}]"]
    assert all(not name.startswith("routing_") and "macro_f1" in scores for scores in plotted.values()
               for name in scores)
    with pytest.raises(ValueError, match="names the same run more than once"):
        evaluate_checkpoint.main(["--ablation_runs", str(tmp_path / "seed0"), str(tmp_path / "seed0") + "/",
                                  "--output_dir", str(tmp_path / "figures")])
