"""Exact discrete PID (BROJA via CVXPY) and the quantised estimator."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modeling_merge.rus.pid import PairwiseRus, exact_pid, mutual_information, quantized_pid
from modeling_merge.rus.synthetic import continuous_pid_samples, discrete_pid_cases, mixed_case, sample_from_joint

pytest.importorskip("cvxpy")


@pytest.mark.parametrize("case", discrete_pid_cases(), ids=lambda c: c.name)
def test_exact_solver_reproduces_the_closed_form_values(case):
    result = exact_pid(case.joint)
    expected = (case.redundancy, case.unique_1, case.unique_2, case.synergy)
    assert (result.redundancy, result.unique_1, result.unique_2, result.synergy) == pytest.approx(expected, abs=1e-4)


def _random_joint(data) -> np.ndarray:
    sizes = data.draw(st.tuples(*(st.integers(2, 4) for _ in range(3))))
    weights = data.draw(st.lists(st.floats(0.0, 1.0), min_size=int(np.prod(sizes)), max_size=int(np.prod(sizes))))
    joint = np.asarray(weights).reshape(sizes) + 1e-3
    return joint / joint.sum()


@settings(max_examples=12, deadline=None)
@given(st.data())
def test_terms_are_non_negative_and_sum_to_the_joint_information(data):
    joint = _random_joint(data)
    result = exact_pid(joint)
    n1, n2, ny = joint.shape
    assert min(result.redundancy, result.unique_1, result.unique_2, result.synergy) >= 0
    assert result.total == pytest.approx(mutual_information(joint.reshape(n1 * n2, ny)), abs=1e-4)
    assert result.redundancy + result.unique_1 == pytest.approx(mutual_information(joint.sum(1)), abs=1e-4)
    assert result.redundancy + result.unique_2 == pytest.approx(mutual_information(joint.sum(0)), abs=1e-4)


@settings(max_examples=8, deadline=None)
@given(st.data())
def test_relabelling_symbols_changes_nothing_and_swapping_sources_swaps_uniqueness(data):
    joint = _random_joint(data)
    base = exact_pid(joint)
    permuted = joint[np.random.default_rng(1).permutation(joint.shape[0])][:, ::-1][..., ::-1]
    relabelled = exact_pid(permuted)
    assert (relabelled.redundancy, relabelled.unique_1, relabelled.unique_2, relabelled.synergy) == pytest.approx(
        (base.redundancy, base.unique_1, base.unique_2, base.synergy), abs=1e-4)
    swapped = exact_pid(joint.transpose(1, 0, 2))
    assert (swapped.unique_1, swapped.unique_2) == pytest.approx((base.unique_2, base.unique_1), abs=1e-4)
    assert swapped.synergy == pytest.approx(base.synergy, abs=1e-4)


def test_bad_tables_are_rejected():
    with pytest.raises(ValueError, match=r"shape \(\|X1\|, \|X2\|, \|Y\|\)"):
        exact_pid(np.ones((2, 2)))
    with pytest.raises(ValueError, match="non-negative"):
        exact_pid(-np.ones((2, 2, 2)))


@pytest.mark.parametrize("name, kind", [("xor", "synergy"), ("copy", "redundancy"), ("unique", "unique_1")])
def test_quantized_estimator_finds_the_dominant_term_of_noisy_continuous_embeddings(name, kind):
    case = next(c for c in discrete_pid_cases() if c.name == name)
    x1, x2, y = sample_from_joint(case.joint, 3000, seed=0)
    rng = np.random.default_rng(0)
    continuous_1 = np.stack([x1, -x1], 1) + 0.2 * rng.standard_normal((3000, 2))
    continuous_2 = x2[:, None] + 0.2 * rng.standard_normal((3000, 1))
    result = quantized_pid(continuous_1, continuous_2, y, num_bins=2)
    assert getattr(result, kind) > 0.8
    others = {"redundancy", "unique_1", "unique_2", "synergy"} - {kind}
    assert all(getattr(result, other) < 0.1 for other in others)


def test_pairwise_results_become_symmetric_matrices_with_directional_uniqueness():
    pairs = np.array([[0, 0, 1], [1, 2, 2]])
    ones = np.ones((2, 3))
    pairwise = PairwiseRus.from_informations(pairs, i_first=ones * 0.5, i_second=ones * 0.2,
                                             i_joint=ones * 1.0, i_q=ones * 0.6)
    redundancy, uniqueness, synergy = pairwise.to_matrices(3)
    assert redundancy.shape == (3, 3, 2)
    np.testing.assert_allclose(redundancy[0, 1], 0.1)
    np.testing.assert_allclose(redundancy[1, 0], 0.1)
    np.testing.assert_allclose(uniqueness[0, 1], 0.4)  # U of modality 0 within (0, 1)
    np.testing.assert_allclose(uniqueness[1, 0], 0.1)  # U of modality 1 within (0, 1)
    np.testing.assert_allclose(synergy[2, 1], 0.4)
    assert (np.diagonal(uniqueness, axis1=0, axis2=1) == 0).all()
    assert pairwise.clipped == 0.0
    clipped = PairwiseRus.from_informations(pairs, ones * 0.5, ones * 0.5, ones * 0.4, ones * 0.45)
    assert clipped.clipped == pytest.approx(0.05 * 6 * 3)  # U_i, U_j and S per entry negative


def test_quantized_estimator_with_an_alphabet_as_large_as_the_sources_recovers_the_mixed_case_in_32_dimensions():
    case = mixed_case()  # x1 has 8 symbols, x2 4: four bins cannot hold x1, sixteen can
    x1, x2, y = continuous_pid_samples(case, dims=32, num_samples=4000)
    result = quantized_pid(x1, x2, y, num_bins=16)
    got = [result.redundancy, result.unique_1, result.unique_2, result.synergy]
    assert got == pytest.approx([case.redundancy, case.unique_1, case.unique_2, case.synergy], abs=0.05)
