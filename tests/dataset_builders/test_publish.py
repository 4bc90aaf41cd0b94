"""Publishing: parquet + dataset card + merge_metadata.json + RUS sidecar slot; round trips locally and through a
local server that speaks the Hub API (real huggingface_hub client)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from huggingface_hub import constants
from safetensors.numpy import save_file

from dataset_builders import build, metadata_of
from dataset_builders.publish import (
    METADATA_FILENAME,
    SIDECAR_FILENAME,
    export_for_hub,
    load_published,
    published_sidecar,
    push_to_hub,
)
from hub_server import LocalHubServer


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    rng = np.random.default_rng(0)
    arrays = {"acc": rng.normal(size=(18, 8, 3)).astype(np.float32), "bvp": rng.normal(size=(18, 16, 1))}
    mask = np.ones((18, 2), dtype=bool)
    mask[4, 0] = False
    return build(
        "generic", cache_dir=str(tmp_path_factory.mktemp("cache")), arrays=arrays, labels=np.arange(18) % 3,
        label_names=["calm", "stress", "fun"], subjects=[f"p{index // 3}" for index in range(18)], modality_mask=mask,
        dataset_name="tiny_wearable",
    )


def write_sidecar(path, modality_names, lags=3):
    count = len(modality_names)
    tensors = {name: np.zeros((count, count, lags), np.float32) for name in ("redundancy", "uniqueness", "synergy")}
    save_file(tensors, str(path), metadata={"modality_names": json.dumps(modality_names), "units": "bits"})
    return path


def assert_same_dataset(loaded, original):
    assert metadata_of(loaded) == metadata_of(original)
    for split in ("train", "validation", "test"):
        assert loaded[split].features == original[split].features
        for column in ("acc", "bvp", "label", "modality_mask"):
            np.testing.assert_array_equal(
                loaded[split].with_format("numpy")[:][column], original[split].with_format("numpy")[:][column]
            )


def test_export_writes_parquet_card_metadata_and_sidecar(small, tmp_path):
    sidecar = write_sidecar(tmp_path / "estimated.safetensors", ["acc", "bvp"])
    folder = export_for_hub(small, tmp_path / "export", sidecar=sidecar, pretty_name="Tiny wearable")
    assert sorted(path.name for path in (folder / "data").iterdir()) == [
        "test-00000-of-00001.parquet", "train-00000-of-00001.parquet", "validation-00000-of-00001.parquet"
    ]
    assert (folder / SIDECAR_FILENAME).read_bytes() == sidecar.read_bytes()
    assert json.loads((folder / METADATA_FILENAME).read_text())["modalities"] == {"acc": 3, "bvp": 1}
    readme = (folder / "README.md").read_text()
    front_matter = yaml.safe_load(readme.split("---")[1])
    assert front_matter["configs"][0]["data_files"][0] == {"split": "train", "path": "data/train-*.parquet"}
    features = {entry["name"]: entry for entry in front_matter["dataset_info"]["features"]}
    assert features["label"]["dtype"]["class_label"]["names"] == {"0": "calm", "1": "stress", "2": "fun"}
    assert set(features) == {"acc", "bvp", "label", "subject", "modality_mask"}
    assert metadata_of(small).protocol in readme and "| `bvp` | 1 |" in readme
    assert not list(folder.rglob("*.tmp"))


def test_export_then_load_published_round_trips_data_and_metadata(small, tmp_path):
    folder = export_for_hub(small, tmp_path / "export")
    loaded = load_published(folder, cache_dir=tmp_path / "cache")
    assert_same_dataset(loaded, small)
    assert published_sidecar(folder) is None
    assert "No RUS sidecar yet" in (folder / "README.md").read_text()


def test_export_refuses_a_sidecar_for_other_modalities(small, tmp_path):
    wrong_order = write_sidecar(tmp_path / "a.safetensors", ["bvp", "acc"])
    with pytest.raises(ValueError, match="computed for modalities \\['bvp', 'acc'\\], the dataset has \\['acc', 'bvp'\\]"):
        export_for_hub(small, tmp_path / "export", sidecar=wrong_order)
    three = write_sidecar(tmp_path / "b.safetensors", ["acc", "bvp", "eda"])
    with pytest.raises(ValueError, match="redundancy has shape \\(3, 3, 3\\), expected \\(2, 2, lags\\)"):
        export_for_hub(small, tmp_path / "export", sidecar=three)
    assert not (tmp_path / "export").exists()


def test_push_to_hub_and_load_back_through_the_hub_api(small, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    sidecar = write_sidecar(tmp_path / "rus.safetensors", ["acc", "bvp"])
    with LocalHubServer(lifetime_s=120) as server:
        commit = push_to_hub(small, "lab/tiny-wearable", sidecar=sidecar, token="hf_local", endpoint=server.url)
        assert commit.oid == server.hub.get("dataset", "lab/tiny-wearable").commits[-1].sha
        pushed = server.hub.get("dataset", "lab/tiny-wearable").commits[-1].files
        assert {"README.md", METADATA_FILENAME, SIDECAR_FILENAME} <= set(pushed)
        loaded = load_published("lab/tiny-wearable", cache_dir=tmp_path / "hub_cache", endpoint=server.url)
        downloaded_sidecar = published_sidecar("lab/tiny-wearable", cache_dir=tmp_path / "hub_cache", endpoint=server.url)
    assert_same_dataset(loaded, small)
    assert downloaded_sidecar.read_bytes() == sidecar.read_bytes()


def test_export_refuses_a_dataset_without_merge_metadata(tmp_path):
    import datasets

    plain = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"x": [1.0]})})
    with pytest.raises(ValueError, match="carries no MERGE metadata"):
        export_for_hub(plain, tmp_path / "export")


def test_a_real_rus_sidecar_travels_beside_the_published_data(small, tmp_path):
    import torch

    from modeling_merge.rus.sidecar import FORMAT_VERSION, RusSidecar, fingerprint_arrays

    metadata = metadata_of(small)
    train = small["train"].with_format("numpy")[:]
    fingerprint = fingerprint_arrays({name: train[name] for name in metadata.modality_names}, train["label"])
    off_diagonal = 1.0 - torch.eye(2).unsqueeze(-1).expand(2, 2, 3)
    sidecar = RusSidecar(
        0.2 * off_diagonal, 0.1 * off_diagonal, 0.3 * off_diagonal,
        metadata=dict(modality_names=metadata.modality_names, lags_steps=[0, 1, 2], units="bits",
                      estimator="quantized_exact", estimator_settings={}, split="train", class_balanced=True,
                      fingerprint=fingerprint, format_version=FORMAT_VERSION),
    )
    folder = export_for_hub(small, tmp_path / "export", sidecar=sidecar.save(tmp_path / "estimate"))
    loaded = load_published(folder, cache_dir=tmp_path / "cache")
    reloaded = RusSidecar.load(published_sidecar(folder))
    loaded_train = loaded["train"].with_format("numpy")[:]
    reloaded.validate(
        modality_names=metadata_of(loaded).modality_names, num_lags=3,
        fingerprint=fingerprint_arrays({name: loaded_train[name] for name in metadata.modality_names}, loaded_train["label"]),
    )
    swapped = RusSidecar(sidecar.redundancy, sidecar.uniqueness, sidecar.synergy,
                         metadata={**sidecar.metadata, "modality_names": ["bvp", "acc"]})
    with pytest.raises(ValueError, match="computed for modalities \\['bvp', 'acc'\\]"):
        export_for_hub(small, tmp_path / "other", sidecar=swapped.save(tmp_path / "swapped"))
