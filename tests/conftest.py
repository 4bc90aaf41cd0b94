"""Shared test fixtures: offline Hugging Face clients, deterministic seeds, the real data in ../shared/data."""

import os
from pathlib import Path

import pytest

# No network in tests: every Hub id must resolve from a local cache or a local endpoint.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same torch / numpy random state."""
    import numpy as np
    import torch

    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` (real WESAD-E4 and PhysioNet 2012 files). Required in CI; skipped elsewhere if absent."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI must have the real data at {SHARED_DATA}")
        pytest.skip(f"real data folder {SHARED_DATA} is not present")
    return SHARED_DATA
