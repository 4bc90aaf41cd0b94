"""Lagged samples, labels and class balance, and `estimate_temporal_rus` on the known-RUS planted_benchmark."""

import numpy as np
import pytest

from modeling_merge.rus import temporal
from modeling_merge.rus.batch import BatchConfig
from modeling_merge.rus.sidecar import fingerprint_arrays
from modeling_merge.rus.synthetic import make_temporal_rus_benchmark
from modeling_merge.rus.temporal import (
    arrays_from_dataset,
    balanced_subsample,
    estimate_temporal_rus,
    lagged_samples,
    pool_to_grid,
)


def _two_modalities(n=6, t=5, seed=0):
    rng = np.random.default_rng(seed)
    return {"a": rng.normal(size=(n, t, 2)).astype(np.float32), "b": rng.normal(size=(n, t, 1)).astype(np.float32)}


def test_pool_to_grid_means_each_patch_and_names_the_modality_on_a_bad_length():
    values = np.arange(12, dtype=np.float32).reshape(1, 6, 2)
    pooled = pool_to_grid(values, 3, "bvp")
    np.testing.assert_allclose(pooled[0], [[2, 3], [8, 9]])
    with pytest.raises(ValueError, match="bvp: length 6 is not a multiple of its patch size 4"):
        pool_to_grid(values, 4, "bvp")


def test_sequence_labels_count_lags_back_from_the_last_step():
    modalities = _two_modalities()
    labels = np.array([0, 1, 0, 1, 1, 0])
    samples = lagged_samples(modalities, labels, num_lags=3)
    a = modalities["a"]
    a_z = (a - a.mean((0, 1))) / a.std((0, 1))
    for lag in range(3):
        np.testing.assert_allclose(samples.features[lag][:, 0, :2], a_z[:, 4 - lag], rtol=1e-5, atol=1e-6)
        assert (samples.features[lag][:, 1, 1] == 0).all()  # b has one channel; the pad stays 0
        np.testing.assert_array_equal(samples.labels[lag], labels)
    assert samples.channels == [2, 1] and samples.num_classes == 2


def test_step_labels_pair_x_at_t_minus_lag_with_y_at_t_and_drop_unlabelled_steps():
    modalities = {"a": np.arange(10, dtype=np.float32).reshape(1, 10, 1).repeat(2, 0),
                  "b": np.zeros((2, 10, 1), dtype=np.float32)}
    labels = np.tile(np.arange(10) % 2, (2, 1))
    labels[0, 9] = -1
    samples = lagged_samples(modalities, labels, num_lags=3)
    std = modalities["a"].std()
    for lag in range(3):
        x = samples.features[lag][:, 0, 0] * std + 4.5  # undo the z-score
        y = samples.labels[lag]
        assert len(y) == 2 * (10 - lag) - 1
        np.testing.assert_array_equal((np.round(x) + lag) % 2, y)  # x_{t-lag} = t - lag and y_t = t mod 2


def test_absent_modalities_are_imputed_with_the_training_mean():
    modalities = _two_modalities()
    mask = np.ones((6, 2), dtype=bool)
    mask[2, 1] = False
    samples = lagged_samples(modalities, np.array([0, 1] * 3), 2, modality_mask=mask)
    assert (samples.features[0][2, 1] == 0).all()
    assert (samples.features[0][3, 1] != 0).any()


@pytest.mark.parametrize(
    "modalities, labels, message",
    [
        ({"a": np.zeros((4, 5, 1))}, np.array([0, 1, 0, 1]), "at least two modalities"),
        ({"a": np.zeros((4, 5, 1)), "b": np.full((4, 5, 1), np.nan)}, np.array([0, 1, 0, 1]), "'b' holds NaN"),
        ({"a": np.zeros((4, 5, 1)), "b": np.zeros((4, 6, 1))}, np.array([0, 1, 0, 1]), "'b' has .* pool"),
        ({"a": np.zeros((4, 5, 1)), "b": np.zeros((4, 5))}, np.array([0, 1, 0, 1]), r"'b': expected \(N, T, C\)"),
        ({"a": np.zeros((4, 5, 1)), "b": np.zeros((4, 5, 1))}, np.array([0, 1, 0]), "labels must be"),
        ({"a": np.zeros((0, 5, 1)), "b": np.zeros((0, 5, 1))}, np.zeros(0, dtype=int), "no sequences"),
        ({"a": np.zeros((4, 5, 1)), "b": np.zeros((4, 5, 1))}, np.array([1, 1, 1, 1]), "two classes"),
    ],
)
def test_bad_inputs_are_clear_errors(modalities, labels, message):
    with pytest.raises(ValueError, match=message):
        estimate_temporal_rus(modalities, labels, num_lags=2, estimator="quantized_exact", progress=False)


def test_balanced_subsample_equalises_classes_and_refuses_one_class():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 5)
    picked = labels[balanced_subsample(labels)]
    assert np.bincount(picked).tolist() == [3, 3, 3]
    with pytest.raises(ValueError, match="only class 1"):
        balanced_subsample(np.ones(5, dtype=int))
    with pytest.raises(ValueError, match="empty"):
        balanced_subsample(np.array([], dtype=int))


@pytest.fixture(scope="module")
def planted_benchmark():
    return make_temporal_rus_benchmark(num_sequences=1200, seq_len=8, seed=0, noise=0.3)


def assert_planted_structure(sidecar, bench, min_bits=0.3):
    """Each planted kind is the largest of its kind at its pair and lag, and dominates that pair's terms."""
    names = sidecar.modality_names
    index = {name: i for i, name in enumerate(names)}
    for kind, tensor in (("redundant", sidecar.redundancy), ("synergistic", sidecar.synergy)):
        a, b = (index[n] for n in bench.planted[kind]["pair"])
        lag = bench.planted[kind]["lag"]
        value = tensor[a, b, lag].item()
        assert value > min_bits, (kind, value)
        assert value == tensor.max().item(), (kind, "is not the largest")
    uniqueness = sidecar.modality_uniqueness()  # [M, L]
    for name, lag in bench.planted["unique"].items():
        profile = uniqueness[index[name]]
        assert profile.argmax().item() == lag and profile[lag].item() > min_bits, (name, profile.tolist())
    for name in bench.planted["noise"]:
        assert uniqueness[index[name]].max().item() < 0.1


def test_quantized_exact_recovers_the_planted_structure_and_records_its_provenance(planted_benchmark):
    sidecar = estimate_temporal_rus(planted_benchmark.modalities, planted_benchmark.labels, num_lags=4, estimator="quantized_exact",
                                    num_bins=2, progress=False, split="train")
    assert sidecar.redundancy.shape == (7, 7, 4)
    assert_planted_structure(sidecar, planted_benchmark)
    meta = sidecar.metadata
    assert meta["fingerprint"] == fingerprint_arrays(planted_benchmark.modalities, planted_benchmark.labels)
    assert meta["split"] == "train" and meta["class_balanced"] is True and meta["units"] == "bits"
    assert meta["clipped_negative_mass_bits"] >= 0
    assert meta["modality_names"] == list(planted_benchmark.modalities)


def test_estimation_resumes_from_its_partial_results_file(tmp_path, monkeypatch):
    bench = make_temporal_rus_benchmark(num_sequences=300, seq_len=6, seed=1, num_noise_modalities=0)
    partial = tmp_path / "rus.partial.pt"
    real = temporal.quantized_pid
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 20:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(temporal, "quantized_pid", interrupted)
    kwargs = dict(num_lags=4, estimator="quantized_exact", num_bins=2, progress=False, partial_path=str(partial),
                  output=tmp_path / "rus.safetensors")
    with pytest.raises(KeyboardInterrupt):
        estimate_temporal_rus(bench.modalities, bench.labels, **kwargs)
    assert partial.exists()
    calls.clear()
    monkeypatch.setattr(temporal, "quantized_pid", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    resumed = estimate_temporal_rus(bench.modalities, bench.labels, **kwargs)
    total_units = 4 * 15
    assert len(calls) == total_units - 19
    assert not partial.exists() and (tmp_path / "rus.safetensors").exists()
    fresh = estimate_temporal_rus(bench.modalities, bench.labels, **{**kwargs, "partial_path": None, "output": None})
    assert np.allclose(resumed.synergy.numpy(), fresh.synergy.numpy())


def test_the_partial_file_outlives_a_failed_sidecar_write(tmp_path, monkeypatch):
    bench = make_temporal_rus_benchmark(num_sequences=200, seq_len=4, seed=1, num_noise_modalities=0)
    partial, output = tmp_path / "rus.partial.pt", tmp_path / "rus.safetensors"

    def disk_full(self, path):
        raise OSError("No space left on device")

    monkeypatch.setattr(temporal.RusSidecar, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        estimate_temporal_rus(bench.modalities, bench.labels, 2, estimator="quantized_exact", num_bins=2,
                              progress=False, partial_path=str(partial), output=output)
    assert partial.exists() and not output.exists()


def test_a_partial_file_from_other_data_is_not_reused(tmp_path):
    bench = make_temporal_rus_benchmark(num_sequences=200, seq_len=6, seed=1, num_noise_modalities=0)
    other = make_temporal_rus_benchmark(num_sequences=200, seq_len=6, seed=2, num_noise_modalities=0)
    partial = tmp_path / "p.pt"
    from modeling_merge.rus.progress import PartialResults

    PartialResults(partial, "another run").put("quantized/lag0/pair0-1", None)
    with pytest.warns(UserWarning, match="different run"):
        estimate_temporal_rus(other.modalities, other.labels, 4, estimator="quantized_exact", num_bins=2,
                              progress=False, partial_path=str(partial))
    del bench


@pytest.mark.parametrize("estimator", ["multiscale_batch", "stepwise_batch"])
def test_batch_estimators_recover_the_planted_structure(planted_benchmark, estimator):
    config = BatchConfig(batch_size=128, discriminator_steps=800 if estimator == "multiscale_batch" else 200,
                         alignment_steps=40 if estimator == "multiscale_batch" else 10, readout_batches=3)
    sidecar = estimate_temporal_rus(planted_benchmark.modalities, planted_benchmark.labels, num_lags=4, estimator=estimator,
                                    config=config, progress=False)
    assert_planted_structure(sidecar, planted_benchmark, min_bits=0.25)
    assert sidecar.metadata["diagnostics"]["sinkhorn_max_marginal_error"] < 1e-5


def test_arrays_from_a_datasets_split_with_patch_sizes_and_mask():
    import datasets

    features = datasets.Features({
        "acc": datasets.Array2D((4, 3), "float32"), "bvp": datasets.Array2D((8, 1), "float32"),
        "label": datasets.ClassLabel(names=["calm", "stress"]), "subject": datasets.Value("string"),
        "modality_mask": datasets.Sequence(datasets.Value("bool"), length=2)})
    rng = np.random.default_rng(0)
    rows = {"acc": rng.normal(size=(5, 4, 3)).astype(np.float32), "bvp": rng.normal(size=(5, 8, 1)).astype(np.float32),
            "label": [0, 1, 1, 0, 1], "subject": ["s1"] * 5, "modality_mask": [[True, True]] * 4 + [[True, False]]}
    split = datasets.Dataset.from_dict(rows, features=features)
    modalities, labels, mask = arrays_from_dataset(split, patch_sizes={"bvp": 2})
    assert list(modalities) == ["acc", "bvp"]
    np.testing.assert_allclose(modalities["bvp"], rows["bvp"].reshape(5, 4, 2, 1).mean(2), rtol=1e-6)
    np.testing.assert_array_equal(labels, [0, 1, 1, 0, 1])
    assert mask.shape == (5, 2) and not mask[4, 1]
    with pytest.raises(ValueError, match=r"lacks the columns \['eda'\]"):
        arrays_from_dataset(split, modality_names=["acc", "eda"])


def test_class_ids_need_not_be_contiguous():
    # Labels {0, 7} used to give an 8-class prior with six empty classes, and another (wrong) decomposition.
    bench = make_temporal_rus_benchmark(num_sequences=300, seq_len=6, seed=1, num_noise_modalities=0)
    modalities = {name: bench.modalities[name] for name in list(bench.modalities)[:3]}
    config = BatchConfig(batch_size=64, discriminator_steps=150, alignment_steps=5, readout_batches=2)
    kwargs = dict(num_lags=2, config=config, progress=False)
    contiguous = estimate_temporal_rus(modalities, bench.labels, **kwargs)
    renamed = estimate_temporal_rus(modalities, np.where(bench.labels == 1, 7, 0), **kwargs)
    for name in ("redundancy", "uniqueness", "synergy"):
        assert np.array_equal(getattr(renamed, name).numpy(), getattr(contiguous, name).numpy()), name
    assert renamed.metadata["classes"] == [0, 7] and renamed.metadata["num_classes"] == 2


def test_batch_refuses_class_ids_with_an_empty_class():
    features = np.zeros((20, 2, 1), dtype=np.float32)
    with pytest.raises(ValueError, match=r"contiguous class ids 0\.\.7, got \[0, 7\]"):
        temporal.multiscale_batch([features], [np.array([0, 7] * 10)], num_classes=8, progress=False)


@pytest.mark.parametrize("bad_value", [0.9, np.nan])
def test_an_estimate_above_the_label_entropy_is_an_error_naming_pair_and_lag(monkeypatch, bad_value):
    from modeling_merge.rus.pid import PairwiseRus

    def out_of_bounds(features, labels, num_classes, *args, **kwargs):
        pairs = np.stack(np.triu_indices(3, 1))
        terms = np.full((4, len(features), pairs.shape[1]), 0.1)
        terms[0, 1, 2] = bad_value  # R of the pair (b, c) at lag 1: the sum 1.2 > H(Y) = 1 bit + tolerance
        return PairwiseRus(pairs, *terms)

    monkeypatch.setattr(temporal, "multiscale_batch", out_of_bounds)
    modalities = {name: np.random.default_rng(0).normal(size=(8, 4, 1)) for name in "abc"}
    with pytest.raises(ValueError, match=r"out of bounds for the pair \('b', 'c'\) at lag 1: .*H\(Y\) = 1\.000"):
        estimate_temporal_rus(modalities, np.array([3, 5] * 4), num_lags=2, progress=False)


SHARDED = BatchConfig(batch_size=32, discriminator_steps=20, alignment_steps=3, readout_batches=1, pair_block_size=4,
                      pin_tolerance_bits=None)


def _estimate_in_process(rank: int, init_file: str, folder: str, forbid_training: bool, results) -> None:
    import torch
    import torch.distributed as dist

    from modeling_merge.rus import batch

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        if forbid_training:  # a resumed run must take every unit from its partial results file
            def refuse(*args, **kwargs):
                raise AssertionError("a finished unit was estimated again")
            batch._PairBatchEstimator.estimate = refuse
        bench = make_temporal_rus_benchmark(num_sequences=200, seq_len=8, seed=0)
        sidecar = estimate_temporal_rus(bench.modalities, bench.labels, num_lags=4, config=SHARDED, progress=False,
                                        distributed=True, partial_path=f"{folder}/rus.partial.pt",
                                        output=f"{folder}/rus.safetensors" if forbid_training else None)
        results[rank] = {"tensors": [sidecar.redundancy, sidecar.uniqueness, sidecar.synergy],
                         "diagnostics": sidecar.metadata["diagnostics"]}
        if not forbid_training:
            quantized = estimate_temporal_rus(bench.modalities, bench.labels, num_lags=4, estimator="quantized_exact",
                                              num_bins=2, progress=False, distributed=True)
            results[rank] |= {"quantized": [quantized.redundancy, quantized.uniqueness, quantized.synergy]}
            if rank == 0:  # without distributed=True one process estimates alone (train.py's main process does)
                alone = estimate_temporal_rus(bench.modalities, bench.labels, num_lags=4, estimator="quantized_exact",
                                              num_bins=2, progress=False)
                results[rank] |= {"alone": alone.metadata["diagnostics"]["processes"]}
            dist.barrier()
    finally:
        dist.destroy_process_group()


def _two_processes(tmp_path, run: int, forbid_training: bool) -> list[dict]:
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_estimate_in_process, args=(str(tmp_path / f"init{run}"), str(tmp_path), forbid_training, results),
             nprocs=2, join=True)
    return [results[0], results[1]]


def test_two_gloo_processes_share_the_units_and_both_return_the_single_process_sidecar(tmp_path):
    import torch

    torch.set_num_threads(1)
    bench = make_temporal_rus_benchmark(num_sequences=200, seq_len=8, seed=0)
    single = estimate_temporal_rus(bench.modalities, bench.labels, num_lags=4, config=SHARDED, progress=False)
    first_run = _two_processes(tmp_path, 0, forbid_training=False)
    assert sorted(path.name for path in tmp_path.glob("rus.partial.pt*")) == [
        "rus.partial.pt.rank0-of-2", "rus.partial.pt.rank1-of-2"]  # one resumable file per process
    resumed = _two_processes(tmp_path, 1, forbid_training=True)  # every unit comes from the partial files
    for result in [*first_run, *resumed]:
        for got, expected in zip(result["tensors"], [single.redundancy, single.uniqueness, single.synergy]):
            torch.testing.assert_close(got, expected, rtol=0, atol=0)
        assert result["diagnostics"]["processes"] == 2 and result["diagnostics"]["pair_blocks"] == 6
    assert (tmp_path / "rus.safetensors").exists() and not list(tmp_path.glob("rus.partial.pt*"))
    quantized = estimate_temporal_rus(bench.modalities, bench.labels, num_lags=4, estimator="quantized_exact",
                                      num_bins=2, progress=False)
    assert first_run[0]["alone"] == 1
    for result in first_run:  # the (lag, pair) units of the quantised estimator are shared the same way
        for got, expected in zip(result["quantized"], [quantized.redundancy, quantized.uniqueness, quantized.synergy]):
            torch.testing.assert_close(got, expected, rtol=0, atol=0)
