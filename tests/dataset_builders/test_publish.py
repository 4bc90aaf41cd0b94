"""Publishing: parquet + dataset card + merge_metadata.json + RUS sidecar slot; round trips locally and through a
local server that speaks the Hub API (real huggingface_hub client)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import constants

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
from modeling_merge.files import TEMPORARY_SUFFIX
from modeling_merge.rus.sidecar import FORMAT_VERSION, RusSidecar, RusSidecarMismatch, fingerprint_arrays
from modeling_merge.rus.temporal import arrays_from_dataset


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


def train_fingerprint(splits):
    """The fingerprint a RUS sidecar estimated on this training split records (token-grid arrays, labels)."""
    metadata = metadata_of(splits)
    modalities, labels, _ = arrays_from_dataset(splits["train"], metadata.modality_names, metadata.patch_sizes)
    return fingerprint_arrays(modalities, labels)


def write_sidecar(path, modality_names, fingerprint="sha256:unknown", lags=3):
    count = len(modality_names)
    off_diagonal = (1.0 - torch.eye(count)).unsqueeze(-1).expand(count, count, lags)
    metadata = dict(modality_names=list(modality_names), lags_steps=list(range(lags)), units="bits",
                    estimator="quantized_exact", estimator_settings={}, split="train", class_balanced=True,
                    fingerprint=fingerprint, format_version=FORMAT_VERSION)
    return RusSidecar(0.2 * off_diagonal, 0.1 * off_diagonal, 0.3 * off_diagonal, metadata).save(path)


def assert_same_dataset(loaded, original):
    assert metadata_of(loaded) == metadata_of(original)
    for split in ("train", "validation", "test"):
        assert loaded[split].features == original[split].features
        for column in ("acc", "bvp", "label", "modality_mask"):
            np.testing.assert_array_equal(
                loaded[split].with_format("numpy")[:][column], original[split].with_format("numpy")[:][column]
            )


def test_export_writes_parquet_card_metadata_and_sidecar(small, tmp_path):
    sidecar = write_sidecar(tmp_path / "estimated.safetensors", ["acc", "bvp"], train_fingerprint(small))
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
    assert not list(folder.rglob(f"*{TEMPORARY_SUFFIX}"))


def test_export_then_load_published_round_trips_data_and_metadata(small, tmp_path):
    folder = export_for_hub(small, tmp_path / "export")
    loaded = load_published(folder, cache_dir=tmp_path / "cache")
    assert_same_dataset(loaded, small)
    assert published_sidecar(folder) is None
    assert "No RUS sidecar yet" in (folder / "README.md").read_text()


def test_export_refuses_a_sidecar_for_other_modalities(small, tmp_path):
    fingerprint = train_fingerprint(small)
    wrong_order = write_sidecar(tmp_path / "a.safetensors", ["bvp", "acc"], fingerprint)
    with pytest.raises(RusSidecarMismatch, match=r"order differs: the sidecar \['bvp', 'acc'\], expected \['acc', 'bvp'\]"):
        export_for_hub(small, tmp_path / "export", sidecar=wrong_order)
    three = write_sidecar(tmp_path / "b.safetensors", ["acc", "bvp", "eda"], fingerprint)
    with pytest.raises(RusSidecarMismatch, match=r"only the sidecar has: \['eda'\]"):
        export_for_hub(small, tmp_path / "export", sidecar=three)
    other_split = write_sidecar(tmp_path / "c.safetensors", ["acc", "bvp"], "sha256:another-training-split")
    with pytest.raises(RusSidecarMismatch, match="data fingerprint differs"):
        export_for_hub(small, tmp_path / "export", sidecar=other_split)
    assert not (tmp_path / "export").exists()


def test_a_file_that_is_not_a_rus_sidecar_is_refused_naming_it(small, tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "weights.safetensors"
    save_file({"redundancy": np.zeros((2, 2, 3), np.float32)}, str(path))
    with pytest.raises(ValueError, match=f"{path} is not a RUS sidecar"):
        export_for_hub(small, tmp_path / "export", sidecar=path)


def test_push_to_hub_and_load_back_through_the_hub_api(small, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    sidecar = write_sidecar(tmp_path / "rus.safetensors", ["acc", "bvp"], train_fingerprint(small))
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
    sidecar = write_sidecar(tmp_path / "estimate" / "rus.safetensors", ["acc", "bvp"], train_fingerprint(small))
    folder = export_for_hub(small, tmp_path / "export", sidecar=sidecar)
    loaded = load_published(folder, cache_dir=tmp_path / "cache")
    reloaded = RusSidecar.load(published_sidecar(folder))
    reloaded.validate(modality_names=metadata_of(loaded).modality_names, num_lags=3,
                      fingerprint=train_fingerprint(loaded))  # the published training split is the estimated one


def test_the_card_describes_the_label_by_problem_type_and_granularity(small):
    from dataclasses import replace

    from dataset_builders.publish import dataset_card

    metadata = metadata_of(small)
    cases = {
        "sequence-classification": (metadata, "`label` is a ClassLabel, one class per example"),
        "token-classification": (replace(metadata, label_granularity="step"),
                                 f"one int64 class id per token-grid step ({metadata.window} per example"),
        "regression": (replace(metadata, problem_type="regression", label_names=["arousal"]),
                       "`label` is a float32 regression target (`arousal`)"),
    }
    for tag, (variant, description) in cases.items():
        card = dataset_card(small, variant, has_sidecar=False)
        assert description in card and tag in yaml.safe_load(card.split("---")[1])["tags"]
    assert "-100 where a step is unlabelled" in dataset_card(small, cases["token-classification"][0], False)
    assert "ClassLabel" not in dataset_card(small, cases["regression"][0], False).split("---", 2)[2]


def test_a_regression_datasets_sidecar_is_checked_on_the_binned_target_it_was_estimated_on(tmp_path):
    from test_mosi import write_mosi_pickle

    write_mosi_pickle(tmp_path / "mosi" / "mosi_raw.pkl")
    splits = build("mosi", data_dir=str(tmp_path / "mosi"), cache_dir=str(tmp_path / "cache"), normalize=False,
                   allow_pickle=True, task="regression")
    sidecar = RusSidecar.for_dataset(splits, metadata_of(splits), num_lags=2, estimator="quantized_exact",
                                     num_bins=2, progress=False, cache=tmp_path / "rus.safetensors", target_bins=2)
    folder = export_for_hub(splits, tmp_path / "export", sidecar=tmp_path / "rus.safetensors")
    assert RusSidecar.load(folder / SIDECAR_FILENAME).metadata["target_bins"] == sidecar.metadata["target_bins"]
    assert "`label` is a float32 regression target (`sentiment`)" in (folder / "README.md").read_text()
    shifted = type(splits)({**splits, "train": splits["train"].map(lambda row: {"label": row["label"] + 10.0})})
    with pytest.raises(RusSidecarMismatch, match="data fingerprint differs"):
        export_for_hub(shifted, tmp_path / "other", sidecar=tmp_path / "rus.safetensors")
