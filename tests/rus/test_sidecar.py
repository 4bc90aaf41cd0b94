"""The RUS sidecar: file format, validation against data / models, and the Hub round trip."""

import json
import os

import numpy as np
import pytest
import torch
from huggingface_hub import DatasetCard, constants
from safetensors import safe_open

from hub_server import LocalHubServer
from modeling_merge.rus.sidecar import (
    CARD_KEY,
    FORMAT_VERSION,
    RusSidecar,
    RusSidecarMismatch,
    fingerprint_arrays,
)

NAMES = ["acc", "bvp", "eda"]


def make_sidecar(names=NAMES, lags=3, seed=0) -> RusSidecar:
    generator = torch.Generator().manual_seed(seed)
    m = len(names)
    sym = torch.rand(m, m, lags, generator=generator)
    sym = (sym + sym.transpose(0, 1)) / 2
    off_diagonal = (1 - torch.eye(m)).unsqueeze(-1)
    metadata = {"modality_names": list(names), "lags_steps": list(range(lags)), "lags_seconds": None,
                "units": "bits", "estimator": "multiscale_batch", "estimator_settings": {"seed": seed},
                "split": "train", "class_balanced": True, "fingerprint": "sha256:abc", "format_version": FORMAT_VERSION}
    return RusSidecar(sym * off_diagonal, torch.rand(m, m, lags, generator=generator) * off_diagonal,
                      sym.flip(-1) * off_diagonal, metadata)


def test_save_load_round_trip_keeps_tensors_and_metadata(tmp_path):
    sidecar = make_sidecar()
    path = sidecar.save(tmp_path)
    assert path == tmp_path / "rus.safetensors"
    assert sorted(os.listdir(tmp_path)) == ["rus.safetensors"]  # no temporary file left behind
    loaded = RusSidecar.load(tmp_path)
    for name in ("redundancy", "uniqueness", "synergy"):
        assert torch.equal(getattr(loaded, name), getattr(sidecar, name))
        assert getattr(loaded, name).dtype == torch.float32
    assert loaded.metadata == sidecar.metadata
    with safe_open(str(path), framework="pt") as handle:
        assert json.loads(handle.metadata()[CARD_KEY])["units"] == "bits"


def test_the_sidecar_and_the_partial_results_are_written_by_the_durable_atomic_writer(tmp_path, monkeypatch):
    """Both go through modeling_merge.files.atomic_write (fsync before the rename, then the folder; its own tests)."""
    from modeling_merge import files
    from modeling_merge.rus import progress, sidecar

    written = []

    def spy(path, content, **kwargs):
        written.append(path.name)
        return files.atomic_write(path, content, **kwargs)

    monkeypatch.setattr(sidecar, "atomic_write", spy)
    monkeypatch.setattr(progress, "atomic_write", spy)
    make_sidecar().save(tmp_path / "rus.safetensors")
    progress.PartialResults(tmp_path / "rus.safetensors.partial", "run").put("lag0", torch.zeros(1))
    assert written == ["rus.safetensors", "rus.safetensors.partial"]


def test_a_failed_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    make_sidecar(seed=0).save(tmp_path)
    import safetensors.torch

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        make_sidecar(seed=1).save(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["rus.safetensors"]
    assert torch.equal(RusSidecar.load(tmp_path).synergy, make_sidecar(seed=0).synergy)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.redundancy.__setitem__((0, 1, 0), 5.0), "symmetric"),
        (lambda s: s.uniqueness.__setitem__((1, 1, 0), 1.0), "zero diagonal"),
        (lambda s: s.synergy.__setitem__((0, 2, 1), float("nan")), "NaN"),
        (lambda s: s.metadata.__setitem__("modality_names", ["acc"]), "names 1 modalities"),
    ],
)
def test_invalid_tensors_or_metadata_are_rejected_with_the_reason(change, message):
    sidecar = make_sidecar()
    change(sidecar)
    with pytest.raises(ValueError, match=message):
        RusSidecar(sidecar.redundancy, sidecar.uniqueness, sidecar.synergy, sidecar.metadata)


def test_validate_names_what_differs():
    sidecar = make_sidecar()
    assert sidecar.validate(modality_names=NAMES, num_lags=3, fingerprint="sha256:abc") is sidecar
    with pytest.raises(RusSidecarMismatch, match=r"order differs: the sidecar \['acc', 'bvp', 'eda'\], expected \['bvp'"):
        sidecar.validate(modality_names=["bvp", "acc", "eda"])
    with pytest.raises(RusSidecarMismatch, match=r"the sidecar lacks: \['temp'\]; only the sidecar has: \['eda'\]"):
        sidecar.validate(modality_names=["acc", "bvp", "temp"])
    with pytest.raises(RusSidecarMismatch, match="lag count differs: sidecar has 3, expected 5"):
        sidecar.validate(num_lags=5)
    with pytest.raises(RusSidecarMismatch, match="fingerprint differs"):
        sidecar.validate(fingerprint="sha256:other")


def test_loading_something_else_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, str(tmp_path / "rus.safetensors"))
    with pytest.raises(ValueError, match="not a RUS sidecar"):
        RusSidecar.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no RUS sidecar"):
        RusSidecar.load(tmp_path / "missing")


def _truncated(path):
    path.write_bytes(path.read_bytes()[:-40])


def _metadata(text):
    def write(path):
        from safetensors.torch import save_file

        save_file({name: torch.zeros(3, 3, 3) for name in ("redundancy", "uniqueness", "synergy")}, str(path),
                  metadata={CARD_KEY: text})
    return write


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_truncated, "not a readable RUS sidecar .*delete it to re-estimate"),
        (lambda path: path.write_bytes(b""), "not a readable RUS sidecar .*delete it to re-estimate"),
        (lambda path: path.write_bytes(np.random.default_rng(0).bytes(256)), "not a readable RUS sidecar .*delete it to re-estimate"),
        (_metadata("{broken"), "metadata is not JSON"),
        (_metadata("[1, 2]"), "metadata is a list, not an object"),
    ],
    ids=["truncated", "empty", "random_bytes", "broken_json", "json_list"],
)
def test_a_damaged_file_is_an_error_naming_it(tmp_path, damage, message):
    path = make_sidecar().save(tmp_path / "rus.safetensors")
    damage(path)
    with pytest.raises(ValueError, match=message) as error:
        RusSidecar.load(path)
    assert str(path) in str(error.value)


def test_fingerprint_changes_with_values_order_and_labels():
    rng = np.random.default_rng(0)
    arrays = {"a": rng.normal(size=(4, 5, 2)).astype(np.float32), "b": rng.normal(size=(4, 5, 1)).astype(np.float32)}
    labels = np.array([0, 1, 0, 1])
    base = fingerprint_arrays(arrays, labels)
    assert base == fingerprint_arrays({k: v.copy() for k, v in arrays.items()}, labels.copy())
    assert base != fingerprint_arrays({"b": arrays["b"], "a": arrays["a"]}, labels)
    assert base != fingerprint_arrays(arrays, labels[::-1].copy())
    changed = {k: v.copy() for k, v in arrays.items()}
    changed["a"][0, 0, 0] += 1e-3
    assert base != fingerprint_arrays(changed, labels)


def test_apply_to_a_real_merge_model_stores_the_tensors_as_buffers():
    modeling = pytest.importorskip("modeling_merge.modeling_merge")
    configuration = pytest.importorskip("modeling_merge.configuration_merge")
    config = configuration.MergeConfig(modalities={"acc": 3, "bvp": 1, "eda": 1}, num_labels=2, num_rus_lags=3,
                                       d_model=16, ffn_dim=32, num_blocks=2, num_moe_blocks=1,
                                       expert_hidden_dim=16, num_encoder_layers=1)
    model = modeling.MergeForSequenceClassification(config)
    sidecar = make_sidecar()
    sidecar.apply_to(model)
    buffers = dict(model.named_buffers())
    stored = next(v for k, v in buffers.items() if k.endswith("rus_synergy"))
    assert torch.allclose(stored, sidecar.synergy)
    with pytest.raises(RusSidecarMismatch, match="order differs"):
        make_sidecar(names=["bvp", "acc", "eda"]).apply_to(model)


def test_hub_round_trip_through_a_local_hub_api_server(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    from huggingface_hub import HfApi

    sidecar = make_sidecar()
    with LocalHubServer(lifetime_s=120) as server:
        api = HfApi(endpoint=server.url, token="hf_local")
        api.create_repo("lab/wearable", repo_type="dataset")
        api.upload_file(path_or_fileobj=b"---\nlicense: cc-by-4.0\n---\n# Wearable\n", path_in_repo="README.md",
                        repo_id="lab/wearable", repo_type="dataset")
        sidecar.push_to_hub("lab/wearable", filename="rus/train.safetensors", token="hf_local", endpoint=server.url)
        files = server.hub.get("dataset", "lab/wearable").commits[-1].files
        assert {"README.md", "rus/train.safetensors"} <= set(files)
        card = DatasetCard(files["README.md"].decode())
        assert card.data.license == "cc-by-4.0"  # the existing card is kept, the key is added
        assert card.data.to_dict()[CARD_KEY]["file"] == "rus/train.safetensors"
        downloaded = RusSidecar.from_hub("lab/wearable", cache_dir=tmp_path / "cache", endpoint=server.url)
    assert torch.equal(downloaded.uniqueness, sidecar.uniqueness)
    assert downloaded.metadata == sidecar.metadata
    # Offline afterwards, the same call resolves from the Hub cache.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    again = RusSidecar.from_hub("lab/wearable", filename="rus/train.safetensors", cache_dir=tmp_path / "cache")
    assert torch.equal(again.redundancy, sidecar.redundancy)


def test_check_modalities_match_names_every_difference():
    from modeling_merge.rus.sidecar import check_modalities_match

    check_modalities_match({"acc": 3, "bvp": 1}, {"acc": 3, "bvp": 1}, "checkpoint x")
    with pytest.raises(RusSidecarMismatch, match=r"checkpoint x does not match the dataset: .*it lacks: \['eda'\]"):
        check_modalities_match({"acc": 3, "bvp": 1}, {"acc": 3, "bvp": 1, "eda": 1}, "checkpoint x")
    with pytest.raises(ValueError, match=r"channels differ \(it, the data\): acc \(3, 6\)"):
        check_modalities_match({"acc": 3}, {"acc": 6}, "checkpoint x")
    with pytest.raises(ValueError, match=r"order differs: it \['bvp', 'acc'\], the data \['acc', 'bvp'\]"):
        check_modalities_match({"bvp": 1, "acc": 3}, {"acc": 3, "bvp": 1}, "checkpoint x")


@pytest.fixture(scope="module")
def synthetic_splits(tmp_path_factory):
    from dataset_builders import build, metadata_of

    splits = build("synthetic", cache_dir=str(tmp_path_factory.mktemp("cache")), num_sequences=240, seq_len=8)
    return splits, metadata_of(splits)


def test_for_dataset_estimates_once_into_the_cache_then_loads_and_checks_it(synthetic_splits, tmp_path, monkeypatch):
    from modeling_merge.rus import temporal

    splits, metadata = synthetic_splits
    options = dict(num_lags=2, estimator="quantized_exact", num_bins=2, progress=False)
    killed_save = tmp_path / ".rus.safetensors.k1ll3d.merge-tmp"  # a save of this file killed mid-way
    killed_save.write_bytes(b"half")
    estimated = RusSidecar.for_dataset(splits, metadata, cache=tmp_path, **options)
    assert not killed_save.exists()
    assert (tmp_path / "rus.safetensors").is_file() and not (tmp_path / "rus.safetensors.partial").exists()
    assert estimated.modality_names == metadata.modality_names and estimated.num_lags == 2
    monkeypatch.setattr(temporal, "estimate_temporal_rus", lambda *a, **k: pytest.fail("estimated twice"))
    assert RusSidecar.for_dataset(splits, metadata, cache=tmp_path, **options).content_hash() == estimated.content_hash()
    with pytest.raises(RusSidecarMismatch, match="lag count differs: sidecar has 2, expected 3"):
        RusSidecar.for_dataset(splits, metadata, cache=tmp_path, **{**options, "num_lags": 3})
    other = type(splits)({**splits, "train": splits["train"].select(range(100))})
    with pytest.raises(RusSidecarMismatch, match="data fingerprint differs.*delete the file to estimate it again") as error:
        RusSidecar.for_dataset(other, metadata, cache=tmp_path, **options)
    assert str(tmp_path / "rus.safetensors") in str(error.value)


def test_for_dataset_refuses_a_cache_another_process_is_estimating(synthetic_splits, tmp_path):
    from modeling_merge.files import exclusive_lock

    splits, metadata = synthetic_splits
    with exclusive_lock(tmp_path / "rus.safetensors.lock", "a test"):
        with pytest.raises(RuntimeError, match=r"RUS sidecar .*rus.safetensors \(being estimated\) is in use"):
            RusSidecar.for_dataset(splits, metadata, num_lags=2, estimator="quantized_exact", cache=tmp_path,
                                   num_bins=2, progress=False)


def test_push_to_a_dataset_repo_that_does_not_exist_creates_it(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    sidecar = make_sidecar()
    with LocalHubServer(lifetime_s=120) as server:
        sidecar.push_to_hub("lab/new-dataset", token="hf_local", endpoint=server.url)
        files = server.hub.get("dataset", "lab/new-dataset").commits[-1].files
    assert {"README.md", "rus.safetensors"} <= set(files)
    assert DatasetCard(files["README.md"].decode()).data.to_dict()[CARD_KEY]["file"] == "rus.safetensors"


def regression_variant(splits, metadata, targets):
    """The synthetic splits with a float regression target (``targets`` for the training split) in place of the
    class ids, and their metadata saying so."""
    from dataclasses import replace

    import datasets

    relabelled = {}
    for split, data in splits.items():
        values = targets if split == "train" else np.linspace(-1.0, 1.0, data.num_rows)
        relabelled[split] = data.remove_columns("label").add_column(
            "label", np.asarray(values, dtype=np.float32).tolist(), feature=datasets.Value("float32"))
    return type(splits)(relabelled), replace(metadata, problem_type="regression", label_names=["score"])


def test_a_regression_target_is_estimated_on_training_quantile_bins_recorded_in_the_metadata(synthetic_splits, tmp_path):
    from modeling_merge.rus.sidecar import estimator_inputs

    splits, metadata = synthetic_splits
    targets = np.random.default_rng(1).normal(size=splits["train"].num_rows).astype(np.float32)
    splits, metadata = regression_variant(splits, metadata, targets)
    sidecar = RusSidecar.for_dataset(splits, metadata, num_lags=2, estimator="quantized_exact", num_bins=2,
                                     progress=False, cache=tmp_path, target_bins=3)
    bins = sidecar.metadata["target_bins"]
    np.testing.assert_allclose(bins["edges"], np.quantile(targets.astype(np.float64), [1 / 3, 2 / 3]))
    assert (bins["requested"], bins["num_bins"], sidecar.metadata["problem_type"]) == (3, 3, "regression")
    inputs = estimator_inputs(splits["train"], metadata, target_bins=3)
    np.testing.assert_array_equal(inputs.labels, np.digitize(targets, bins["edges"]))
    assert sidecar.metadata["fingerprint"] == fingerprint_arrays(inputs.modalities, targets)  # the raw targets
    assert sidecar.metadata["classes"] == [0, 1, 2]
    assert RusSidecar.load(tmp_path).metadata["target_bins"] == bins  # what the cache holds
    with pytest.raises(RusSidecarMismatch, match="target bins differ: sidecar 3, expected 4"):
        RusSidecar.for_dataset(splits, metadata, num_lags=2, estimator="quantized_exact", num_bins=2,
                               progress=False, cache=tmp_path, target_bins=4)
    reused = RusSidecar.for_dataset(splits, metadata, num_lags=2, cache=tmp_path)  # no count given: the cache's
    assert reused.content_hash() == sidecar.content_hash()


def test_tied_regression_targets_still_give_two_bins_and_a_constant_one_is_refused(synthetic_splits):
    from modeling_merge.rus.sidecar import estimator_inputs

    splits, metadata = synthetic_splits
    count = splits["train"].num_rows
    tied = np.where(np.arange(count) < count - 3, 0.0, 2.0)  # every quantile lands on 0
    tied_splits, tied_metadata = regression_variant(splits, metadata, tied)
    inputs = estimator_inputs(tied_splits["train"], tied_metadata)
    np.testing.assert_array_equal(inputs.labels, (tied > 0).astype(np.int64))
    assert inputs.binning["num_bins"] == 2
    constant = regression_variant(splits, metadata, np.full(count, 1.5))
    with pytest.raises(ValueError, match=r"regression target \['score'\] takes the single value 1.5"):
        estimator_inputs(constant[0]["train"], constant[1])


def test_per_step_labels_reach_the_estimator_step_by_step_without_the_unlabelled_ones(synthetic_splits):
    from dataclasses import replace

    import datasets

    splits, metadata = synthetic_splits
    rng = np.random.default_rng(0)
    relabelled = {}
    for split, data in splits.items():
        steps = rng.integers(0, 2, size=(data.num_rows, metadata.window))
        steps[rng.random(steps.shape) < 0.3] = -100
        relabelled[split] = data.remove_columns("label").add_column(
            "label", steps.tolist(), feature=datasets.List(datasets.Value("int64"), length=metadata.window))
    splits, metadata = type(splits)(relabelled), replace(metadata, label_granularity="step")
    sidecar = RusSidecar.for_dataset(splits, metadata, num_lags=2, estimator="quantized_exact", num_bins=2,
                                     progress=False)
    train_labels = np.asarray(splits["train"]["label"])
    assert sidecar.metadata["label_kind"] == "step" and sidecar.metadata["label_granularity"] == "step"
    assert sidecar.metadata["samples_per_lag"] == [int((train_labels[:, lag:] != -100).sum()) for lag in range(2)]
    assert "target_bins" not in sidecar.metadata


def _for_dataset_in_process(rank: int, init_file: str, folder: str, results) -> None:
    import torch.distributed as dist
    from dataset_builders import build, metadata_of

    torch.set_num_threads(1)
    splits = build("synthetic", cache_dir=f"{folder}/cache{rank}", num_sequences=240, seq_len=8)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        sidecar = RusSidecar.for_dataset(splits, metadata_of(splits), num_lags=2, estimator="quantized_exact",
                                         cache=f"{folder}/out", num_bins=2, progress=False, distributed=True)
        results[rank] = sidecar.content_hash()
    except RuntimeError as error:  # every process stops, none waits in a collective for the others
        results[rank] = str(error)
    finally:
        dist.destroy_process_group()


def test_distributed_for_dataset_locks_and_writes_in_process_0_and_every_process_gets_the_sidecar(
        synthetic_splits, tmp_path):
    import torch.multiprocessing as mp

    from modeling_merge.files import exclusive_lock

    splits, metadata = synthetic_splits
    results = mp.Manager().dict()
    with exclusive_lock(tmp_path / "out" / "rus.safetensors.lock", "a test"):  # another run is estimating
        mp.spawn(_for_dataset_in_process, args=(str(tmp_path / "init0"), str(tmp_path), results), nprocs=2, join=True)
    assert "is in use by another run" in results[0] and "process 0 could not take its lock" in results[1]
    mp.spawn(_for_dataset_in_process, args=(str(tmp_path / "init1"), str(tmp_path), results), nprocs=2, join=True)
    single = RusSidecar.for_dataset(splits, metadata, num_lags=2, estimator="quantized_exact", num_bins=2,
                                    progress=False)
    sharded = RusSidecar.load(tmp_path / "out")
    assert results[0] == results[1] == sharded.content_hash()  # every process returns the file process 0 wrote
    for kind in ("redundancy", "uniqueness", "synergy"):  # the tables of a single process (diagnostics differ)
        torch.testing.assert_close(getattr(sharded, kind), getattr(single, kind), rtol=0, atol=0)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["rus.safetensors"]  # no lock, no partial files
