"""Exact partial information decomposition (BROJA) of small discrete joint tables, and a quantised estimator.

For a joint table p(x1, x2, y) the BROJA decomposition solves
``q* = argmin_{q ∈ Δ_p} I_q(Y; X1, X2)`` over couplings keeping p(x1, y) and p(x2, y), equivalently
``argmax H_q(Y | X1, X2)`` — a convex program (exponential cone) solved with CVXPY (CLARABEL, SCS as
fallback; install the ``pid`` extra). Then R = I(X1;Y) + I(X2;Y) − I_q*, U1 = I_q* − I(X2;Y),
U2 = I_q* − I(X1;Y), S = I(Y;X1,X2) − I_q*. Units: bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PidResult", "PairwiseRus", "decompose", "exact_pid", "mutual_information", "joint_table", "quantize", "quantized_pid"]

_SOLVERS = ("CLARABEL", "SCS")


@dataclass(frozen=True)
class PidResult:
    """One pair's decomposition in bits; ``clipped`` is the negative mass set to 0 (sum over the four terms)."""

    redundancy: float
    unique_1: float
    unique_2: float
    synergy: float
    clipped: float = 0.0

    @property
    def total(self) -> float:
        return self.redundancy + self.unique_1 + self.unique_2 + self.synergy


def mutual_information(joint_xy: np.ndarray) -> float:
    """I(X; Y) in bits of a 2-d joint table p(x, y) (normalised here)."""
    joint_xy = np.asarray(joint_xy, dtype=np.float64)
    joint_xy = joint_xy / joint_xy.sum()
    product = joint_xy.sum(1, keepdims=True) * joint_xy.sum(0, keepdims=True)
    support = joint_xy > 0
    return float(np.sum(joint_xy[support] * np.log2(joint_xy[support] / product[support])))


def _check_joint(joint: np.ndarray) -> np.ndarray:
    joint = np.asarray(joint, dtype=np.float64)
    if joint.ndim != 3 or joint.size == 0:
        raise ValueError(f"joint table must have shape (|X1|, |X2|, |Y|), got {joint.shape}")
    if not np.all(np.isfinite(joint)) or np.any(joint < 0) or joint.sum() <= 0:
        raise ValueError("joint table must be finite, non-negative and have positive mass")
    return joint / joint.sum()


def _minimum_synergy_coupling(joint: np.ndarray) -> np.ndarray:
    """q* = argmax_{q ∈ Δ_p} H_q(Y | X1, X2) as a (|X1|, |X2|, |Y|) table."""
    try:
        import cvxpy as cp
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        raise ImportError("the exact PID needs cvxpy: pip install 'modeling-merge[pid]'") from error

    n1, n2, ny = joint.shape
    p_x1y, p_x2y = joint.sum(1), joint.sum(0)
    q = cp.Variable((n1 * n2, ny), nonneg=True)
    q_x1x2 = cp.sum(q, axis=1, keepdims=True) @ np.ones((1, ny))
    # rows of q are (x1, x2) in C order: x1 marginal sums blocks of n2 rows, x2 marginal strides by n2.
    sum_over_x2 = np.kron(np.eye(n1), np.ones((1, n2)))
    sum_over_x1 = np.kron(np.ones((1, n1)), np.eye(n2))
    constraints = [sum_over_x2 @ q == p_x1y, sum_over_x1 @ q == p_x2y]
    # Only couplings on the support allowed by both pairwise marginals.
    forbidden = ((p_x1y[:, None, :] <= 0) | (p_x2y[None, :, :] <= 0)).reshape(n1 * n2, ny)
    if forbidden.any():
        constraints.append(q[forbidden] == 0)
    problem = cp.Problem(cp.Minimize(cp.sum(cp.rel_entr(q, q_x1x2))), constraints)
    errors = []
    for solver in _SOLVERS:
        try:
            problem.solve(solver=solver)
        except cp.error.SolverError as error:
            errors.append(f"{solver}: {error}")
            continue
        if problem.status in ("optimal", "optimal_inaccurate") and q.value is not None:
            solution = np.clip(q.value, 0.0, None).reshape(n1, n2, ny)
            return solution / solution.sum()
        errors.append(f"{solver}: status {problem.status}")
    raise RuntimeError(f"exact PID solve failed for a {joint.shape} table: {'; '.join(errors)}")


def decompose(i_1, i_2, i_joint, i_q) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """BROJA read-out (R, U1, U2, S), elementwise over arrays of informations in bits; negatives clipped to 0.

    Returns the four clipped arrays and the total clipped (negative) mass.
    """
    i_1, i_2, i_joint, i_q = (np.asarray(v, dtype=np.float64) for v in (i_1, i_2, i_joint, i_q))
    raw = np.stack([i_1 + i_2 - i_q, i_q - i_2, i_q - i_1, i_joint - i_q])
    clipped = float(np.clip(-raw, 0.0, None).sum())
    redundancy, unique_1, unique_2, synergy = np.clip(raw, 0.0, None)
    return redundancy, unique_1, unique_2, synergy, clipped


@dataclass
class PairwiseRus:
    """Temporal PID of every modality pair: arrays (L, P) in bits for the pairs ``pairs`` (2, P), i < j.

    ``unique_i`` is U of the pair's first modality, ``unique_j`` of its second. ``clipped`` is the total
    negative mass set to 0; ``diagnostics`` holds estimator-specific figures (JSON-serialisable).
    """

    pairs: np.ndarray
    redundancy: np.ndarray
    unique_i: np.ndarray
    unique_j: np.ndarray
    synergy: np.ndarray
    clipped: float = 0.0
    diagnostics: dict | None = None

    @classmethod
    def from_informations(cls, pairs, i_first, i_second, i_joint, i_q, diagnostics=None) -> "PairwiseRus":
        """Build from (L, P) arrays I(X_i;Y), I(X_j;Y), I(Y;X_i,X_j), I_q*(Y;X_i,X_j)."""
        redundancy, unique_i, unique_j, synergy, clipped = decompose(i_first, i_second, i_joint, i_q)
        return cls(np.asarray(pairs), redundancy, unique_i, unique_j, synergy, clipped, diagnostics)

    def to_matrices(self, num_modalities: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(R, U, S) float32 arrays [M, M, L]: R, S symmetric; U[i, j, τ] = U_i within (i, j); zero diagonals."""
        num_lags = self.redundancy.shape[0]
        shape = (num_modalities, num_modalities, num_lags)
        redundancy, uniqueness, synergy = (np.zeros(shape, dtype=np.float32) for _ in range(3))
        first, second = self.pairs
        for matrix, forward, backward in (
            (redundancy, self.redundancy, self.redundancy),
            (synergy, self.synergy, self.synergy),
            (uniqueness, self.unique_i, self.unique_j),
        ):
            matrix[first, second] = forward.T
            matrix[second, first] = backward.T
        return redundancy, uniqueness, synergy


def exact_pid(joint: np.ndarray) -> PidResult:
    """BROJA PID of ``joint[x1, x2, y]`` in bits (convex solve; ~10–60 ms for alphabets 2–6)."""
    joint = _check_joint(joint)
    n1, n2, ny = joint.shape
    i_1 = mutual_information(joint.sum(1))
    i_2 = mutual_information(joint.sum(0))
    i_joint = mutual_information(joint.reshape(n1 * n2, ny))
    q_star = _minimum_synergy_coupling(joint)
    i_q = min(mutual_information(q_star.reshape(n1 * n2, ny)), i_joint)
    redundancy, unique_1, unique_2, synergy, clipped = decompose(i_1, i_2, i_joint, i_q)
    return PidResult(float(redundancy), float(unique_1), float(unique_2), float(synergy), clipped)


def joint_table(x1: np.ndarray, x2: np.ndarray, y: np.ndarray, sizes: tuple[int, int, int] | None = None) -> np.ndarray:
    """Empirical p(x1, x2, y) from (N,) integer symbol arrays."""
    x1, x2, y = (np.asarray(v, dtype=np.int64).ravel() for v in (x1, x2, y))
    if not len(x1) == len(x2) == len(y) or len(y) == 0:
        raise ValueError(f"x1, x2, y must be non-empty and equally long, got {len(x1)}, {len(x2)}, {len(y)}")
    sizes = sizes or (int(x1.max()) + 1, int(x2.max()) + 1, int(y.max()) + 1)
    counts = np.zeros(sizes, dtype=np.float64)
    np.add.at(counts, (x1, x2, y), 1.0)
    return counts / counts.sum()


def quantize(values: np.ndarray, num_bins: int, seed: int = 0) -> np.ndarray:
    """Symbols in [0, num_bins) for (N,) or (N, C) continuous values.

    One channel: quantile bins; several: k-means (scipy, shipped with cvxpy) on z-scored values.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values.reshape(len(values), -1)
    if not np.all(np.isfinite(values)):
        raise ValueError("cannot quantise non-finite values (NaN or inf)")
    if values.shape[1] == 1:
        edges = np.quantile(values[:, 0], np.linspace(0, 1, num_bins + 1)[1:-1])
        return np.searchsorted(edges, values[:, 0], side="right").astype(np.int64)
    from scipy.cluster.vq import kmeans2

    scaled = (values - values.mean(0)) / (values.std(0) + 1e-8)
    _, assignment = kmeans2(scaled, num_bins, minit="++", seed=seed)
    return assignment.astype(np.int64)


def quantized_pid(x1: np.ndarray, x2: np.ndarray, y: np.ndarray, num_bins: int = 4, seed: int = 0) -> PidResult:
    """Cheap PID for low-dimensional continuous x1 (N, C1), x2 (N, C2) and labels y (N,): quantise, then solve."""
    return exact_pid(joint_table(quantize(x1, num_bins, seed), quantize(x2, num_bins, seed), y,
                                 (num_bins, num_bins, int(np.max(y)) + 1)))
