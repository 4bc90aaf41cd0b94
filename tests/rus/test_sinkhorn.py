"""Sinkhorn with class-mass rescaling, batched over pairs and classes."""

import math

import pytest
import torch

from modeling_merge.rus.sinkhorn import coupling_information, sinkhorn_couplings


def _problem(pairs=3, classes=2, batch=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    log_kernel = torch.randn(pairs, classes, batch, batch, generator=generator)
    row_probs = torch.rand(pairs, batch, classes, generator=generator).softmax(-1)
    col_probs = (3 * torch.rand(pairs, batch, classes, generator=generator)).softmax(-1)
    return log_kernel, row_probs.permute(0, 2, 1) / batch, col_probs.permute(0, 2, 1) / batch


def test_marginals_are_met_within_tolerance_in_few_iterations_despite_unequal_class_masses():
    log_kernel, rows, cols = _problem()
    assert not torch.allclose(rows.sum(-1), cols.sum(-1), atol=1e-3)  # the case balanced scaling cannot solve
    result = sinkhorn_couplings(log_kernel, rows, cols, tol=1e-6, max_iter=200)
    assert result.marginal_error < 1e-6
    assert result.iterations <= 50
    torch.testing.assert_close(result.coupling.sum(-1), rows, atol=1e-7, rtol=1e-4)
    rescaled_cols = cols * rows.sum(-1, keepdim=True) / cols.sum(-1, keepdim=True)
    torch.testing.assert_close(result.coupling.sum(-2), rescaled_cols, atol=1e-6, rtol=1e-3)
    torch.testing.assert_close(result.log_coupling.exp(), result.coupling, atol=1e-9, rtol=1e-4)


def test_without_class_mass_rescaling_unequal_masses_do_not_converge():
    log_kernel, rows, cols = _problem()
    result = sinkhorn_couplings(log_kernel, rows, cols, tol=1e-6, max_iter=100, rescale_columns=False)
    assert result.iterations == 100 and result.marginal_error > 1e-5


def test_iterations_are_bounded_and_the_remaining_error_is_reported():
    log_kernel, rows, cols = _problem()
    result = sinkhorn_couplings(10 * log_kernel, rows, cols, tol=1e-12, max_iter=7, check_every=3)
    assert result.iterations == 7
    assert result.marginal_error > 1e-12


def test_gradients_flow_through_the_unrolled_iterations():
    log_kernel, rows, cols = _problem(pairs=2, batch=16)
    log_kernel.requires_grad_(True)
    result = sinkhorn_couplings(log_kernel, rows, cols, max_iter=5, check_every=5, tol=0.0)
    coupling_information(result.coupling, result.log_coupling).sum().backward()
    assert log_kernel.grad is not None and torch.isfinite(log_kernel.grad).all()
    assert log_kernel.grad.abs().sum() > 0


def test_coupling_information_matches_a_direct_computation():
    coupling = torch.rand(2, 3, 5, 5, dtype=torch.float64)
    q = coupling / coupling.flatten(1).sum(-1).view(-1, 1, 1, 1)
    expected = []
    for pair in q:
        joint = pair.permute(1, 2, 0).reshape(-1, 3)  # (x_i x_j, y)
        product = joint.sum(1, keepdim=True) * joint.sum(0, keepdim=True)
        expected.append(float((joint * (joint / product).log()).sum() / math.log(2)))
    got = coupling_information(coupling, coupling.log())
    assert got.tolist() == pytest.approx(expected, rel=1e-9)


def test_label_independent_coupling_has_zero_information():
    outer = torch.rand(1, 1, 6, 6)
    coupling = outer * torch.tensor([0.3, 0.7]).view(1, 2, 1, 1)
    assert coupling_information(coupling, coupling.log()).item() == pytest.approx(0.0, abs=1e-6)


def test_shape_mistakes_are_reported():
    log_kernel, rows, cols = _problem()
    with pytest.raises(ValueError, match="targets must be"):
        sinkhorn_couplings(log_kernel, rows[:, :, :10], cols)
    with pytest.raises(ValueError, match=r"\(pairs, classes, B, B\)"):
        sinkhorn_couplings(log_kernel[0], rows, cols)
