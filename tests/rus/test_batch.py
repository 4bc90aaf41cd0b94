"""BATCH on low-dimensional cases against the exact solver, and its class-balanced sampling."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from modeling_merge.rus.batch import BatchConfig, PairNetworks, balanced_batch_indices, multiscale_batch, stepwise_batch
from modeling_merge.rus.pid import exact_pid
from modeling_merge.rus.synthetic import continuous_pid_samples, discrete_pid_cases, parity_case, sample_from_joint

TOLERANCE_BITS = 0.1
FAST = BatchConfig(batch_size=128, discriminator_steps=300, alignment_steps=50, readout_batches=4)


def _class_balanced(joint: np.ndarray) -> np.ndarray:
    """The joint that class-balanced sampling sees: p(x1, x2 | y) with a uniform p(y)."""
    return joint / joint.sum(axis=(0, 1), keepdims=True) / joint.shape[2]


@pytest.mark.parametrize("case", [c for c in discrete_pid_cases() if c.name != "mixed"], ids=lambda c: c.name)
def test_batch_is_within_tolerance_of_the_exact_pid_on_low_dimensional_cases(case):
    pytest.importorskip("cvxpy")
    x1, x2, y = sample_from_joint(case.joint, 2000, seed=0)
    rng = np.random.default_rng(0)
    features = (2.0 * np.stack([x1, x2], 1)[:, :, None] - 1 + 0.1 * rng.standard_normal((2000, 2, 1))).astype(np.float32)
    estimate = multiscale_batch([features], [y], num_classes=2, config=FAST, progress=False)
    exact = exact_pid(_class_balanced(case.joint))
    got = [float(v[0, 0]) for v in (estimate.redundancy, estimate.unique_i, estimate.unique_j, estimate.synergy)]
    expected = [exact.redundancy, exact.unique_1, exact.unique_2, exact.synergy]
    assert got == pytest.approx(expected, abs=TOLERANCE_BITS)
    assert estimate.diagnostics["sinkhorn_max_marginal_error"] < 1e-5


def test_batch_measures_two_bits_of_synergy_between_eight_dimensional_sources():
    x1, x2, y = continuous_pid_samples(parity_case(2), dims=8, num_samples=4000)
    estimate = multiscale_batch([np.stack([x1, x2], 1)], [y], num_classes=4, config=FAST, progress=False)
    got = [float(v[0, 0]) for v in (estimate.redundancy, estimate.unique_i, estimate.unique_j, estimate.synergy)]
    assert got == pytest.approx([0.0, 0.0, 0.0, 2.0], abs=TOLERANCE_BITS)


def test_balanced_batches_hold_every_class_equally():
    labels = torch.tensor([0] * 90 + [1] * 10)
    index = balanced_batch_indices(labels, 2, 64, torch.Generator().manual_seed(0))
    assert torch.bincount(labels[index]).tolist() == [32, 32]


def test_single_class_or_empty_samples_are_refused():
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"only \[1\] of 2"):
        balanced_batch_indices(torch.ones(10, dtype=torch.long), 2, 8, generator)
    with pytest.raises(ValueError, match="empty"):
        balanced_batch_indices(torch.zeros(0, dtype=torch.long), 2, 8, generator)
    features = np.zeros((20, 2, 1), dtype=np.float32)
    with pytest.raises(ValueError, match="two classes"):
        multiscale_batch([features], [np.zeros(20, dtype=np.int64)], num_classes=2, config=FAST, progress=False)


def test_all_pairs_are_estimated_and_step_wise_runs_one_network_set_per_lag():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    informative = (2.0 * labels - 1)[:, None, None] + 0.3 * rng.standard_normal((400, 1, 1))
    lag0 = np.concatenate([informative, rng.standard_normal((400, 3, 1))], 1).astype(np.float32)
    lag1 = rng.standard_normal((400, 4, 1)).astype(np.float32)
    config = BatchConfig(batch_size=64, discriminator_steps=150, alignment_steps=5, readout_batches=2)
    estimate = stepwise_batch([lag0, lag1], [labels, labels], 2, config, progress=False)
    assert estimate.pairs.shape == (2, 6) and estimate.redundancy.shape == (2, 6)
    first_is_informative = estimate.pairs[0] == 0
    assert (estimate.unique_i[0, first_is_informative] > 0.4).all()
    assert (estimate.unique_i[1] < 0.15).all() and (estimate.unique_i[0, ~first_is_informative] < 0.15).all()


def test_only_pairs_whose_coupling_information_is_not_pinned_by_its_bounds_are_aligned():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 2000)
    sign = (2.0 * labels - 1)[:, None]
    features = np.concatenate([sign + rng.standard_normal((2000, 2)),  # 0, 1: two weak independent views of y
                               sign + 0.1 * rng.standard_normal((2000, 1)),  # 2: y itself
                               rng.standard_normal((2000, 1))], 1)[:, :, None].astype(np.float32)  # 3: noise
    estimate = multiscale_batch([features], [labels], 2, FAST, progress=False)
    # I_q* is pinned unless both sides inform and neither side holds all of the pair's information: only (0, 1)
    assert estimate.diagnostics["aligned_pairs"] == 1
    pair = {tuple(p): index for index, p in enumerate(estimate.pairs.T.tolist())}
    assert estimate.unique_i[0, pair[2, 3]] == pytest.approx(1.0, abs=TOLERANCE_BITS)
    assert estimate.redundancy[0, pair[0, 2]] == pytest.approx(estimate.unique_i[0, pair[0, 3]], abs=0.05)
    aligned_all = multiscale_batch([features], [labels], 2, replace(FAST, pin_tolerance_bits=None), progress=False)
    assert aligned_all.diagnostics["aligned_pairs"] == 6


def test_pair_blocks_estimate_every_pair_as_one_block_does():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 1000)
    features = np.concatenate([(2.0 * labels - 1)[:, None] + 0.1 * rng.standard_normal((1000, 1)),
                               rng.standard_normal((1000, 4))], 1)[:, :, None].astype(np.float32)
    blocked = stepwise_batch([features, features], [labels, labels], 2, replace(FAST, pair_block_size=3),
                             progress=False)
    assert blocked.diagnostics["pair_blocks"] == 4 and blocked.redundancy.shape == (2, 10)
    informative = blocked.pairs[0] == 0
    assert (blocked.unique_i[:, informative] > 0.9).all() and (blocked.unique_i[:, ~informative] < 0.1).all()
    with pytest.raises(ValueError, match="pair_block_size must be >= 1"):
        multiscale_batch([features], [labels], 2, replace(FAST, pair_block_size=0), progress=False)


def test_the_cross_entropy_read_out_gives_an_overfit_discriminator_of_noise_no_information():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 300)  # few samples, many steps: the discriminators memorise the noise
    features = np.concatenate([(2.0 * labels - 1)[:, None] + 0.1 * rng.standard_normal((300, 1)),
                               rng.standard_normal((300, 2))], 1)[:, :, None].astype(np.float32)
    config = replace(FAST, batch_size=64, discriminator_steps=600, alignment_steps=5)
    estimates = {readout: multiscale_batch([features], [labels], 2, replace(config, information_readout=readout),
                                           progress=False) for readout in ("plugin", "cross_entropy")}
    noise_pair = (estimates["plugin"].pairs[0] == 1) & (estimates["plugin"].pairs[1] == 2)
    total = {name: sum(float(getattr(e, term)[0, noise_pair][0]) for term in ("redundancy", "unique_i", "unique_j",
                                                                               "synergy"))
             for name, e in estimates.items()}
    assert total["plugin"] > 0.05 and total["cross_entropy"] < total["plugin"] / 2, total
    for estimate in estimates.values():  # the informative modality keeps its bit either way
        assert (estimate.unique_i[0, estimate.pairs[0] == 0] > 0.85).all()
    with pytest.raises(ValueError, match="information_readout must be 'plugin' or 'cross_entropy', got 'ksg'"):
        multiscale_batch([features], [labels], 2, replace(config, information_readout="ksg"), progress=False)


def _autograd_nodes(tensor: torch.Tensor) -> set[str]:
    seen, names, stack = set(), set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


def test_no_network_gathers_with_tensor_indexing_whose_cpu_backward_accumulates_in_a_thread_dependent_order():
    # x[:, index] differentiates through index_put_(accumulate=True), which torch documents as nondeterministic on
    # CPU; index_select's backward (index_add_) is not
    pairs = torch.triu_indices(4, 4, offset=1)
    networks = PairNetworks(4, 2, 3, 2, BatchConfig(), pairs)
    inputs = torch.randn(16, 4, 2)
    unimodal, pair = networks.discriminate(inputs, 1)
    aligned = networks.align(inputs, 1, torch.tensor([0, 2, 5]))
    nodes = _autograd_nodes(unimodal.sum() + pair.sum() + aligned.sum())
    assert "IndexSelectBackward0" in nodes and not {name for name in nodes if name.startswith("Index") and
                                                    name != "IndexSelectBackward0"}, nodes


@pytest.mark.slow
def test_the_same_seed_gives_a_bit_identical_estimate_with_several_threads():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 1500)
    features = [np.repeat(np.concatenate([(labels[:, None] - 1.0) + rng.standard_normal((1500, 2)),
                                          rng.standard_normal((1500, 5))], 1)[:, :, None], 4, 2).astype(np.float32)
                for _ in range(2)]
    config = replace(FAST, batch_size=256, discriminator_steps=15, alignment_steps=2, readout_batches=2,
                     pin_tolerance_bits=None)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first, second = (multiscale_batch(features, [labels, labels], 3, config, progress=False) for _ in range(2))
    finally:
        torch.set_num_threads(threads)
    for term in ("redundancy", "unique_i", "unique_j", "synergy"):
        np.testing.assert_array_equal(np.asarray(getattr(first, term)), np.asarray(getattr(second, term)), term)
