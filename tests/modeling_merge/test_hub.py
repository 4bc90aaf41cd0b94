"""Publishing to the Hub, end to end against a local endpoint speaking the Hub API, with the real client."""

import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from huggingface_hub import constants

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hub_server import LocalHubServer  # noqa: E402

from modeling_merge.hub import download_dataset, export_dataset, push_folder  # noqa: E402


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A running local Hub; the client is online for the test (tests default to HF_HUB_OFFLINE=1)."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    with LocalHubServer(lifetime_s=120) as server:
        yield server


def _tiny_dataset_dict() -> datasets.DatasetDict:
    features = datasets.Features({"acc": datasets.Array2D((4, 3), "float32"), "label": datasets.ClassLabel(names=["calm", "stress"]),
                                  "subject": datasets.Value("string")})
    rng = np.random.default_rng(0)
    info = datasets.DatasetInfo(description="tiny: protocol text\n\nmerge_metadata_json: {}", features=features)

    def split(n):
        return datasets.Dataset.from_dict({"acc": rng.random((n, 4, 3), dtype=np.float32), "label": rng.integers(0, 2, n),
                                           "subject": [f"S{i}" for i in range(n)]}, features=features, info=info)

    return datasets.DatasetDict({"train": split(6), "validation": split(2), "test": split(3)})


def test_dataset_and_sidecar_round_trip_through_the_hub(hub, tmp_path):
    original = _tiny_dataset_dict()
    sidecar = tmp_path / "rus.safetensors"
    sidecar.write_bytes(b"sidecar bytes")
    export_dataset(original, tmp_path / "export", sidecar_path=sidecar, pretty_name="tiny")
    commit = push_folder(tmp_path / "export", "org/tiny-data", repo_type="dataset", token="hf_local", endpoint=hub.url)
    assert commit.oid == hub.hub.get("dataset", "org/tiny-data").commits[-1].sha

    loaded, sidecar_copy = download_dataset("org/tiny-data", cache_dir=tmp_path / "cache", endpoint=hub.url)
    assert sidecar_copy.read_bytes() == b"sidecar bytes"
    assert set(loaded) == {"train", "validation", "test"}
    assert loaded["train"].features == original["train"].features
    np.testing.assert_array_equal(np.asarray(loaded["test"]["acc"]), np.asarray(original["test"]["acc"]))
    assert loaded["train"].info.description == original["train"].info.description


def test_pushing_again_makes_a_new_commit_and_unknown_repos_fail_clearly(hub, tmp_path):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RepositoryNotFoundError

    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.txt").write_text("v1")
    first = push_folder(folder, "org/m", token="hf_local", endpoint=hub.url)
    (folder / "a.txt").write_text("v2")
    second = push_folder(folder, "org/m", token="hf_local", endpoint=hub.url)
    assert first.oid != second.oid
    latest = hf_hub_download("org/m", "a.txt", endpoint=hub.url, cache_dir=tmp_path / "c")
    pinned = hf_hub_download("org/m", "a.txt", revision=first.oid, endpoint=hub.url, cache_dir=tmp_path / "c")
    assert Path(latest).read_text() == "v2" and Path(pinned).read_text() == "v1"
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/absent", "a.txt", endpoint=hub.url, cache_dir=tmp_path / "c")
