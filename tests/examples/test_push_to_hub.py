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
