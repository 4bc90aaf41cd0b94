"""Fixtures of the example-script tests: one tiny train.py run shared by every test that needs a trained run."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

import train  # noqa: E402
from tiny_train_job import tiny_arguments  # noqa: E402


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """One uninterrupted single-process run; its RUS sidecar is reused by the other runs (same data)."""
    root = tmp_path_factory.mktemp("reference")
    results = train.main(tiny_arguments(root / "run", root / "rus.safetensors"))
    return root, results
