"""examples/push_to_hub.py refuses to publish a RUS sidecar that is not the one the run trained with."""

import json
import shutil
from pathlib import Path

import pytest
import push_to_hub
import train


def test_a_sidecar_rewritten_by_another_run_is_not_published(reference_run, tmp_path):
    root, results = reference_run
    assert push_to_hub.check_sidecar(root / "run", results) == Path(results["artifacts"]["rus_sidecar"])
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    rewritten = tmp_path / "rus.safetensors"  # same data, other values: what a second run estimating into it leaves
    train.RusSidecar.load(root / "rus.safetensors").ablated("noise", seed=0).save(rewritten)
    record = json.loads((run / "results.json").read_text())
    record["artifacts"]["rus_sidecar"] = str(rewritten)
    (run / "results.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=rf"{rewritten} is not the RUS sidecar the run in {run} trained with"):
        push_to_hub.main(["--run_dir", str(run), "--repo_id", "org/merge-tiny"])


def test_export_dir_writes_what_would_be_uploaded_without_the_network(reference_run, tmp_path, capsys):
    root, _ = reference_run
    folder = Path(push_to_hub.main(["--run_dir", str(root / "run"), "--repo_id", "org/merge-tiny",
                                    "--export_dir", str(tmp_path / "export")]))
    assert folder == tmp_path / "export" / "model"
    files = {path.name for path in folder.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "rus.safetensors", "preprocessor_config.json",
            "modeling_merge.py", "configuration_merge.py"} <= files
    assert json.loads((folder / "config.json").read_text())["auto_map"]["AutoModelForSequenceClassification"]
    assert "not uploaded" in capsys.readouterr().out


def test_a_run_without_a_rus_sidecar_exports_without_one(tmp_path):
    from tiny_train_job import tiny_arguments

    train.main(tiny_arguments(tmp_path / "run", tmp_path / "absent.safetensors", "--router_type", "dense",
                              "--num_epochs", "1"))
    folder = Path(push_to_hub.main(["--run_dir", str(tmp_path / "run"), "--repo_id", "org/merge-dense",
                                    "--export_dir", str(tmp_path / "export")]))
    files = {path.name for path in folder.iterdir()}
    assert "rus.safetensors" not in files and "temporal_rus.png" not in files and "README.md" in files
    assert not (tmp_path / "run" / "temporal_rus.png").exists()  # no RUS was set, so no RUS figure is drawn
    with pytest.raises(ValueError, match="has no RUS sidecar .*drop --dataset_repo_id"):
        push_to_hub.main(["--run_dir", str(tmp_path / "run"), "--repo_id", "org/merge-dense",
                          "--dataset_repo_id", "org/data", "--export_dir", str(tmp_path / "export2")])


def test_pushing_without_the_network_says_so_and_names_the_dry_run(reference_run):
    root, _ = reference_run  # the tests run with HF_HUB_OFFLINE=1
    with pytest.raises(SystemExit, match="could not reach the Hub .*--export_dir DIR"):
        push_to_hub.main(["--run_dir", str(root / "run"), "--repo_id", "org/merge-tiny"])
