"""Interpretability figures: routing shares per modality × expert per MoE layer, and temporal RUS curves."""

import numpy as np
import pytest

from modeling_merge.plotting import lag_axis, plot_ablation, plot_routing_distribution, plot_temporal_rus, routing_shares

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_routing_shares_count_each_modalitys_slots_per_expert():
    # 1 sample, 2 modalities, 2 steps, top-2: modality 0 uses experts {0,1},{0,2}; modality 1 always {3,3}.
    layer = np.array([[[[0, 1], [0, 2]], [[3, 3], [3, 3]]]])
    shares = routing_shares([layer, layer], num_experts=4)
    assert shares.shape == (2, 2, 4)
    np.testing.assert_allclose(shares[0, 0], [0.5, 0.25, 0.25, 0.0])
    np.testing.assert_allclose(shares[0, 1], [0.0, 0.0, 0.0, 1.0])


def test_routing_shares_skip_absent_modalities():
    experts = np.array([[[[0]], [[1]]], [[[2]], [[3]]]])  # 2 samples, 2 modalities, 1 step, top-1
    mask = np.array([[True, True], [True, False]])
    shares = routing_shares([experts], num_experts=4, modality_mask=mask)
    np.testing.assert_allclose(shares[0, 0], [0.5, 0.0, 0.5, 0.0])
    np.testing.assert_allclose(shares[0, 1], [0.0, 1.0, 0.0, 0.0])  # sample 2's expert 3 is not counted


def test_routing_shares_reject_bad_shapes_and_ids():
    with pytest.raises(ValueError, match="layer 0.*expected \\(B, M, T, k\\)"):
        routing_shares([np.zeros((2, 3))], num_experts=4)
    with pytest.raises(ValueError, match="outside \\[0, 4\\)"):
        routing_shares([np.full((1, 1, 1, 1), 4)], num_experts=4)


def test_figures_are_written_as_png(tmp_path):
    shares = routing_shares([np.random.default_rng(0).integers(0, 4, (3, 2, 5, 2))] * 2, num_experts=4)
    routing = plot_routing_distribution(shares, ["acc", "bvp"], tmp_path / "figs" / "routing.png")
    values = np.random.default_rng(0).random((3, 3, 4))
    curves = plot_temporal_rus(values, values, values, ["a", "b", "c"], tmp_path / "rus.png", lags_seconds=[0, 1, 2, 3])
    ablation = plot_ablation({"rus": {"accuracy": 0.9}, "rus − synergy": {"accuracy": 0.8, "macro_f1": 0.7}}, tmp_path / "ab.png")
    for path in (routing, curves, ablation):
        assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ab.png", "figs", "rus.png"]  # no temporary files left
    with pytest.raises(ValueError, match="3 modality names"):
        plot_routing_distribution(shares, ["a", "b", "c"], tmp_path / "bad.png")


def test_lag_axis_has_one_tick_per_lag_in_seconds_where_known_else_steps():
    positions, labels, axis_label = lag_axis(4)
    assert positions.tolist() == [0, 1, 2, 3] and labels == ["0", "1", "2", "3"] and axis_label == "lag τ (steps)"
    positions, labels, axis_label = lag_axis(4, [0.0, 0.25, 0.5, 0.75])
    assert positions.tolist() == [0.0, 0.25, 0.5, 0.75] and labels == ["0", "0.25", "0.5", "0.75"]
    assert axis_label == "lag τ (s)"
    with pytest.raises(ValueError, match="3 lag times for 4 lags"):
        lag_axis(4, [0.0, 1.0, 2.0])
