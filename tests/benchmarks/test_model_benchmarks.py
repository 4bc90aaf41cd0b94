"""The model benchmark scripts run end to end against the current model API on a tiny budget and report every
section they promise (their figures themselves live in benchmarks/results/, not in tests)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import modality_scaling  # noqa: E402
import model_speed  # noqa: E402


def test_model_speed_reports_dispatch_paths_and_components(tmp_path):
    output = tmp_path / "speed.json"
    payload = model_speed.main(["--threads", "1", "--rounds", "1", "--batch-size", "1",
                                "--sections", "dispatch,components", "--output", str(output)])
    assert {row["expert_dispatch"] for row in payload["dispatch"]} == {"eager", "sorted", "grouped_mm"}
    assert all(row["forward_backward_ms"] > 0 for row in payload["components"])
    assert output.is_file()


def test_modality_scaling_reports_every_variant_and_growth_exponents(tmp_path):
    payload = modality_scaling.main(["--threads", "1", "--rounds", "1", "--sizes", "4,8", "--tokens", "2",
                                     "--batch-size", "1", "--top-partners", "2", "--output", str(tmp_path / "s.json")])
    assert {row["variant"] for row in payload["results"]} == {"MERGE all partners", "MERGE top-2 partners",
                                                               "dense Transformer"}
    assert all(row["train_step_ms"] > 0 for row in payload["results"])
    top = [row for row in payload["results"] if row["variant"] == "MERGE top-2 partners"]
    assert [row["partners"] for row in top] == [2, 2]
    assert len(payload["growth_exponents"]) == 6
