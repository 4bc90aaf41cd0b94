"""examples/llm_router.py end to end: RUS read from a sidecar file, LoRA steps, routing report and plot."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from modeling_merge.rus.sidecar import FORMAT_VERSION, RusSidecar

REPO_ROOT = Path(__file__).resolve().parents[2]


def write_sidecar(path: Path, modality_names: list[str], num_lags: int = 4) -> Path:
    off_diagonal = (1.0 - torch.eye(len(modality_names)))[:, :, None].expand(-1, -1, num_lags).contiguous()
    metadata = {"modality_names": modality_names, "lags_steps": list(range(num_lags)), "units": "bits",
                "estimator": "hand-built", "estimator_settings": {}, "split": "train", "class_balanced": True,
                "fingerprint": "sha256:none", "format_version": FORMAT_VERSION}
    return RusSidecar(0.6 * off_diagonal, 0.05 * off_diagonal, 0.02 * off_diagonal, metadata).save(path)


def run_demo(*arguments: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, str(REPO_ROOT / "examples" / "llm_router.py"), *arguments], cwd=REPO_ROOT,
                          env=environment, capture_output=True, text=True, timeout=300)


def test_demo_reads_rus_from_a_sidecar_trains_and_reports_routing_before_and_after(tmp_path):
    sidecar = write_sidecar(tmp_path / "rus.safetensors", ["acc", "ecg"])
    result = run_demo("--rus", str(sidecar), "--steps", "3", "--batch_size", "4", "--plot", str(tmp_path / "usage.png"))
    assert result.returncode == 0, result.stderr[-3000:]
    for title in ("before", "after"):
        assert f"== {title}: loss" in result.stdout
    assert result.stdout.count("acc/ecg routing overlap") == 2
    assert (tmp_path / "usage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_refuses_a_sidecar_over_other_modalities_and_names_them(tmp_path):
    sidecar = write_sidecar(tmp_path / "rus.safetensors", ["acc", "eda"])
    result = run_demo("--rus", str(sidecar), "--steps", "1")
    assert result.returncode != 0
    assert "RusSidecarMismatch" in result.stderr and "eda" in result.stderr
