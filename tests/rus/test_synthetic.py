"""The known-answer generators: discrete joint tables and the temporal multimodal benchmark."""

import numpy as np
import pytest

from modeling_merge.rus.synthetic import (
    continuous_pid_samples,
    discrete_pid_cases,
    embed_symbols,
    mixed_case,
    parity_case,
    shared_symbol_case,
    make_temporal_rus_benchmark,
    sample_from_joint,
    symbol_label_information,
)


def _mutual_information_bits(joint_xy: np.ndarray) -> float:
    joint_xy = joint_xy / joint_xy.sum()
    px = joint_xy.sum(1, keepdims=True)
    py = joint_xy.sum(0, keepdims=True)
    mask = joint_xy > 0
    return float((joint_xy[mask] * np.log2(joint_xy[mask] / (px * py)[mask])).sum())


@pytest.mark.parametrize("case", [*discrete_pid_cases(), parity_case(1), parity_case(3), shared_symbol_case(2)],
                         ids=lambda c: c.name)
def test_discrete_case_closed_form_is_consistent_with_its_joint_table(case):
    joint = case.joint
    assert np.isclose(joint.sum(), 1.0) and (joint >= 0).all()
    i_total = _mutual_information_bits(joint.reshape(-1, joint.shape[2]))
    i_1 = _mutual_information_bits(joint.sum(1))
    i_2 = _mutual_information_bits(joint.sum(0))
    assert case.total == pytest.approx(i_total, abs=1e-9)
    assert case.redundancy + case.unique_1 == pytest.approx(i_1, abs=1e-9)
    assert case.redundancy + case.unique_2 == pytest.approx(i_2, abs=1e-9)


def test_sampling_from_a_joint_table_follows_it():
    case = discrete_pid_cases()[0]
    x1, x2, y = sample_from_joint(case.joint, 4000, seed=1)
    assert (y == (x1 ^ x2)).all()
    assert 0.45 < x1.mean() < 0.55
    with pytest.raises(ValueError, match="summing to 1"):
        sample_from_joint(case.joint * 2, 10)


def test_temporal_benchmark_shapes_dtypes_and_determinism():
    bench = make_temporal_rus_benchmark(num_sequences=64, seq_len=16, seed=3)
    again = make_temporal_rus_benchmark(num_sequences=64, seq_len=16, seed=3)
    other = make_temporal_rus_benchmark(num_sequences=64, seq_len=16, seed=4)
    assert bench.labels.shape == (64,) and bench.labels.dtype == np.int64
    for name, values in bench.modalities.items():
        assert values.shape == (64, 16, 3) and values.dtype == np.float32
        np.testing.assert_array_equal(values, again.modalities[name])
        assert not np.allclose(values, other.modalities[name])
    m, lags = len(bench.modalities), bench.planted["num_lags"]
    for kind in ("redundancy", "uniqueness", "synergy"):
        tensor = bench.planted["rus"][kind]
        assert tensor.shape == (m, m, lags)
        assert (np.diagonal(tensor, axis1=0, axis2=1) == 0).all()
    for kind in ("redundancy", "synergy"):
        np.testing.assert_array_equal(bench.planted["rus"][kind], bench.planted["rus"][kind].transpose(1, 0, 2))


def _nearest_prototype_accuracy(values: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of predicting the label from (N, C) features by class means (fit on the same data)."""
    means = np.stack([values[labels == c].mean(0) for c in np.unique(labels)])
    predicted = np.argmin(((values[:, None] - means[None]) ** 2).sum(-1), axis=1)
    return float((predicted == labels).mean())


def _binary_symbol(values: np.ndarray) -> np.ndarray:
    """The latent bit of (N, C) two-prototype features, up to relabelling: side of the top principal axis."""
    centred = values - values.mean(0)
    return centred @ np.linalg.svd(centred, full_matrices=False)[2][0] > 0


@pytest.mark.parametrize("per_step", [False, True])
def test_planted_modalities_carry_the_label_only_at_their_lag(per_step):
    bench = make_temporal_rus_benchmark(num_sequences=3000, seq_len=8, seed=0, per_step_labels=per_step)
    t_last = 7

    def features_and_labels(name: str, lag: int):
        if per_step:  # y_t against x_{t-lag}, at t = last step
            return bench.modalities[name][:, t_last - lag], bench.labels[:, t_last]
        return bench.modalities[name][:, t_last - lag], bench.labels

    for name, lag in bench.planted["unique"].items():
        for probe in range(4):
            accuracy = _nearest_prototype_accuracy(*features_and_labels(name, probe))
            assert (accuracy > 0.8) if probe == lag else (accuracy < 0.56), (name, probe, accuracy)
    a, b = bench.planted["synergistic"]["pair"]
    lag = bench.planted["synergistic"]["lag"]
    xa, y = features_and_labels(a, lag)
    xb, _ = features_and_labels(b, lag)
    assert _nearest_prototype_accuracy(xa, y) < 0.56 and _nearest_prototype_accuracy(xb, y) < 0.56
    sign_a, sign_b = _binary_symbol(xa), _binary_symbol(xb)
    xor_accuracy = max(((sign_a ^ sign_b) == y).mean(), ((sign_a ^ sign_b) != y).mean())
    assert xor_accuracy > 0.8


def test_symbol_information_limits():
    assert symbol_label_information(2, 0.0) == pytest.approx(1.0)
    assert symbol_label_information(4, 0.0) == pytest.approx(2.0)
    assert symbol_label_information(2, 1.0) == pytest.approx(0.0, abs=1e-12)


def test_temporal_benchmark_rejects_lags_it_cannot_hold():
    with pytest.raises(ValueError, match="num_lags=3"):
        make_temporal_rus_benchmark(num_lags=3)
    with pytest.raises(ValueError, match="distinct"):
        make_temporal_rus_benchmark(unique_lags=(1, 1))


@pytest.mark.parametrize("dims", [3, 32])
def test_embedded_symbols_are_recoverable_by_their_nearest_prototype_in_any_dimension(dims):
    rng = np.random.default_rng(0)
    symbols = rng.integers(0, 8, 3000)
    values = embed_symbols(symbols, bits=3, dims=dims, noise=0.2, rng=rng)
    assert values.shape == (3000, dims) and values.dtype == np.float32
    assert _nearest_prototype_accuracy(values, symbols) == 1.0
    with pytest.raises(ValueError, match="3-bit symbols in 2"):
        embed_symbols(symbols, bits=3, dims=2, noise=0.2, rng=rng)


def test_continuous_samples_embed_the_symbols_drawn_from_the_joint():
    x1, x2, y = continuous_pid_samples(mixed_case(), dims=8, num_samples=4000, seed=2)
    s1, s2, labels = sample_from_joint(mixed_case().joint, 4000, seed=2)
    assert x1.shape == x2.shape == (4000, 8)
    np.testing.assert_array_equal(y, labels)
    assert _nearest_prototype_accuracy(x1, s1) == 1.0 and _nearest_prototype_accuracy(x2, s2) == 1.0
