"""Synthetic benchmarks whose redundancy / uniqueness / synergy are known exactly (numpy only).

Two families:

* **Discrete joint tables** ``p(x1, x2, y)`` (XOR, AND, copy, unique source, mixed) with their closed-form
  PID values, the ground truth for the exact solver (``pid.py``) and for BATCH on low-dimensional data.
* **A temporal multimodal benchmark** (:func:`make_temporal_rus_benchmark`): continuous sequences in which
  each modality carries information about the label at one known lag, with a planted uniquely informative
  modality per lag, an XOR-style synergistic pair, a duplicated redundant pair and pure-noise modalities.
  Its exact temporal RUS on the latent symbols is returned with it.

Units: bits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "DiscretePidCase",
    "TemporalRusBenchmark",
    "discrete_pid_cases",
    "xor_case",
    "and_case",
    "copy_case",
    "unique_case",
    "mixed_case",
    "sample_from_joint",
    "parity_case",
    "shared_symbol_case",
    "embed_symbols",
    "continuous_pid_samples",
    "symbol_label_information",
    "make_temporal_rus_benchmark",
]


# ----------------------------------------------------------------------------------------------------------
# Discrete joint tables with closed-form PID
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiscretePidCase:
    """A joint table ``joint[x1, x2, y]`` (sums to 1) and its exact PID in bits."""

    name: str
    joint: np.ndarray
    redundancy: float
    unique_1: float
    unique_2: float
    synergy: float

    @property
    def total(self) -> float:
        """I(Y; X1, X2) in bits (= R + U1 + U2 + S)."""
        return self.redundancy + self.unique_1 + self.unique_2 + self.synergy


def _table_from_function(sizes: tuple[int, int, int], outcome, weights=None) -> np.ndarray:
    """Joint table of (x1, x2, y) where (x1, x2, y) = outcome(*latent) and the latents are uniform bits.

    ``outcome`` maps a tuple of independent fair bits to (x1, x2, y) integer symbols.
    """
    import itertools

    joint = np.zeros(sizes, dtype=np.float64)
    num_bits = outcome.__code__.co_argcount
    for bits in itertools.product((0, 1), repeat=num_bits):
        joint[outcome(*bits)] += 1.0
    return joint / joint.sum()


def xor_case() -> DiscretePidCase:
    """y = x1 XOR x2 with uniform independent bits: pure synergy, S = 1 bit."""
    return DiscretePidCase("xor", _table_from_function((2, 2, 2), lambda a, b: (a, b, a ^ b)), 0.0, 0.0, 0.0, 1.0)


def and_case() -> DiscretePidCase:
    """y = x1 AND x2 with uniform independent bits: R = h(¼) − ½ ≈ 0.311, S = 0.5, U = 0."""
    joint = _table_from_function((2, 2, 2), lambda a, b: (a, b, a & b))
    h_y = -(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25))
    redundancy = float(h_y - 0.5)  # I(X1;Y) = H(Y) - H(Y|X1) = h(1/4) - ½·h(½)
    return DiscretePidCase("and", joint, redundancy, 0.0, 0.0, 0.5)


def copy_case() -> DiscretePidCase:
    """y = x1 = x2, one uniform bit: pure redundancy, R = 1 bit."""
    return DiscretePidCase("copy", _table_from_function((2, 2, 2), lambda a: (a, a, a)), 1.0, 0.0, 0.0, 0.0)


def unique_case() -> DiscretePidCase:
    """y = x1, x2 an independent uniform bit: U1 = 1 bit."""
    return DiscretePidCase("unique", _table_from_function((2, 2, 2), lambda a, b: (a, b, a)), 0.0, 1.0, 0.0, 0.0)


def mixed_case() -> DiscretePidCase:
    """x1 = (r, u, a), x2 = (r, b), y = (r, u, a XOR b) over uniform bits: R = U1 = S = 1 bit, U2 = 0.

    Symbols are packed little-endian: x1 = r + 2u + 4a (8 values), x2 = r + 2b (4), y = r + 2u + 4(a^b) (8).
    """
    joint = _table_from_function(
        (8, 4, 8), lambda r, u, a, b: (r + 2 * u + 4 * a, r + 2 * b, r + 2 * u + 4 * (a ^ b))
    )
    return DiscretePidCase("mixed", joint, 1.0, 1.0, 0.0, 1.0)


def discrete_pid_cases() -> list[DiscretePidCase]:
    """All discrete cases with closed-form answers."""
    return [xor_case(), and_case(), copy_case(), unique_case(), mixed_case()]


def parity_case(bits: int) -> DiscretePidCase:
    """x1, x2 uniform ``bits``-bit symbols, y = x1 XOR x2 bitwise (2^bits classes): pure synergy, S = bits."""
    size = 2 ** bits
    x1, x2 = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    joint = np.zeros((size, size, size))
    joint[x1, x2, x1 ^ x2] = 1.0 / size ** 2
    return DiscretePidCase(f"parity{bits}", joint, 0.0, 0.0, 0.0, float(bits))


def shared_symbol_case(bits: int) -> DiscretePidCase:
    """y = x1 = x2, one uniform ``bits``-bit symbol (2^bits classes): pure redundancy, R = bits."""
    size = 2 ** bits
    joint = np.zeros((size, size, size))
    joint[np.arange(size), np.arange(size), np.arange(size)] = 1.0 / size
    return DiscretePidCase(f"shared{bits}", joint, float(bits), 0.0, 0.0, 0.0)


def embed_symbols(symbols: np.ndarray, bits: int, dims: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Integer symbols (N,) < 2^bits → (N, dims) float32: their ±1 bits (little-endian) mapped by a random
    orthonormal (bits → dims) map, plus N(0, noise²) in every dimension.

    Symbols stay 2 apart and the noise along the signal subspace is ``noise`` per bit, so with noise ≤ 0.2 a
    symbol is recoverable from its embedding up to an error below 1e-6 and the PID of the embeddings is that of
    the symbols; the other dims − bits dimensions are pure noise (what makes a high dimension hard).
    """
    if dims < bits:
        raise ValueError(f"cannot embed {bits}-bit symbols in {dims} < {bits} dimensions")
    values = 2.0 * ((np.asarray(symbols)[:, None] >> np.arange(bits)[None, :]) & 1) - 1.0
    basis, _ = np.linalg.qr(rng.standard_normal((dims, bits)))
    return (values @ basis.T + noise * rng.standard_normal((len(values), dims))).astype(np.float32)


def continuous_pid_samples(case: DiscretePidCase, dims: int, num_samples: int, noise: float = 0.2,
                           seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Continuous sources with a discrete label and a known PID: (x1 (N, dims), x2 (N, dims), y (N,)) drawn
    from ``case.joint`` with both symbols embedded by :func:`embed_symbols` (each source its own map).

    The truth is the exact PID of the joint (for class-balanced estimators, of its class-balanced version).
    """
    x1, x2, y = sample_from_joint(case.joint, num_samples, seed)
    rng = np.random.default_rng(seed + 1)
    bits = [max(1, int(np.ceil(np.log2(size)))) for size in case.joint.shape[:2]]
    return (embed_symbols(x1, bits[0], dims, noise, rng), embed_symbols(x2, bits[1], dims, noise, rng), y)


def sample_from_joint(joint: np.ndarray, num_samples: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Draw ``num_samples`` i.i.d. triples from ``joint[x1, x2, y]``; returns (x1, x2, y), each (N,) int64."""
    if joint.ndim != 3 or np.any(joint < 0) or not np.isclose(joint.sum(), 1.0):
        raise ValueError(f"joint must be a non-negative 3-d table summing to 1, got shape {joint.shape}")
    flat = np.random.default_rng(seed).choice(joint.size, size=num_samples, p=joint.ravel() / joint.sum())
    return tuple(axis.astype(np.int64) for axis in np.unravel_index(flat, joint.shape))


# ----------------------------------------------------------------------------------------------------------
# Temporal benchmark
# ----------------------------------------------------------------------------------------------------------
def symbol_label_information(num_classes: int, symbol_noise: float) -> float:
    """I(S; Y) in bits when Y is uniform on K classes and S = Y w.p. 1 − ε, else a fresh uniform symbol."""
    k = num_classes
    p_match = 1.0 - symbol_noise + symbol_noise / k
    p_other = symbol_noise / k
    entropy = -p_match * np.log2(p_match) if p_match > 0 else 0.0
    if p_other > 0:
        entropy -= (k - 1) * p_other * np.log2(p_other)
    return float(np.log2(k) - entropy)


@dataclass
class TemporalRusBenchmark:
    """Continuous multimodal sequences with planted temporal RUS.

    ``modalities``: name → (N, T, C_m) float32. ``labels``: (N,) int64 sequence labels (lag τ is the step
    T − 1 − τ) or (N, T) per-step labels (lag τ links x_{t−τ} to y_t). ``planted`` describes the known
    structure (see :func:`make_temporal_rus_benchmark`).
    """

    modalities: dict[str, np.ndarray]
    labels: np.ndarray
    label_names: list[str]
    planted: dict = field(default_factory=dict)

    @property
    def modality_names(self) -> list[str]:
        return list(self.modalities)


def _prototypes(rng: np.random.Generator, num_classes: int, channels: int) -> np.ndarray:
    """(K, C) class prototypes, zero-mean over classes, pairwise distance ≈ 2 (for K = 2: ±unit vector)."""
    protos = rng.standard_normal((num_classes, channels))
    protos -= protos.mean(axis=0, keepdims=True)
    if num_classes == 2:
        return protos / np.linalg.norm(protos[0])
    distances = np.linalg.norm(protos[:, None] - protos[None], axis=-1)
    return protos * (2.0 / distances[~np.eye(num_classes, dtype=bool)].mean())


def _corrupt(targets: np.ndarray, symbol_noise: float, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Replace each target symbol by a fresh uniform one with probability ``symbol_noise``."""
    replace = rng.random(targets.shape) < symbol_noise
    return np.where(replace, rng.integers(0, num_classes, size=targets.shape), targets)


def make_temporal_rus_benchmark(
    num_sequences: int = 2000,
    seq_len: int = 32,
    num_lags: int = 4,
    seed: int = 0,
    noise: float = 0.5,
    symbol_noise: float = 0.1,
    num_classes: int = 2,
    channels: int = 3,
    unique_lags: tuple[int, int] = (1, 2),
    synergy_lag: int = 0,
    redundancy_lag: int = 3,
    num_noise_modalities: int = 1,
    per_step_labels: bool = False,
) -> TemporalRusBenchmark:
    """Build the known-RUS temporal benchmark.

    Every modality m at every step t holds a latent symbol s_{m,t} ∈ {0..K−1}, observed as
    ``x_{m,t} = prototype_m[s_{m,t}] + noise · N(0, I)`` (C channels). Symbols are uniform and independent
    except the planted ones, which are tied to the label y (uniform over K classes) at a known lag τ:

    * ``unique_lag{τ1}`` and ``unique_lag{τ2}``: s = ỹ at lags ``unique_lags`` — uniquely informative;
    * ``synergy_a``, ``synergy_b`` at ``synergy_lag``: s_a uniform, s_b = (s_a + ỹ) mod K — each alone carries
      nothing, together ỹ (XOR for K = 2);
    * ``redundant_a``, ``redundant_b`` at ``redundancy_lag``: the same symbol ỹ in both (independent
      continuous noise) — redundant;
    * ``noise_{i}``: never informative.

    ỹ is y with probability 1 − ``symbol_noise`` and a fresh uniform symbol otherwise, drawn independently
    for each planted site. With sequence labels, lag τ is step T − 1 − τ; with ``per_step_labels`` every step
    has its own label y_t and the planted symbols sit at t − τ.

    ``planted`` holds ``unique`` (name → lag), ``synergistic`` / ``redundant`` ({"pair": [a, b], "lag": τ}),
    ``noise`` (names), ``information_bits`` (I(ỹ; y) per planted site) and ``rus``: the exact temporal PID
    of the latent symbols as float32 arrays ``redundancy`` / ``uniqueness`` / ``synergy`` of shape [M, M, L]
    (uniqueness[i, j, τ] = U_i within pair (i, j)) — the values an estimator approaches as noise → 0.
    """
    planted_lags = [*unique_lags, synergy_lag, redundancy_lag]
    if num_sequences < 2 or num_classes < 2 or channels < 1:
        raise ValueError(
            f"need num_sequences >= 2, num_classes >= 2 and channels >= 1, got {num_sequences}, "
            f"{num_classes}, {channels}"
        )
    if len(set(planted_lags)) != len(planted_lags) or min(planted_lags) < 0:
        raise ValueError(f"planted lags must be distinct and non-negative, got unique={unique_lags}, "
                         f"synergy={synergy_lag}, redundancy={redundancy_lag}")
    if max(planted_lags) >= num_lags:
        raise ValueError(f"num_lags={num_lags} does not cover the largest planted lag {max(planted_lags)}")
    if seq_len < num_lags:
        raise ValueError(f"seq_len={seq_len} must be at least num_lags={num_lags}")
    if not 0.0 <= symbol_noise <= 1.0 or noise < 0:
        raise ValueError(f"symbol_noise must be in [0, 1] and noise >= 0, got {symbol_noise}, {noise}")

    rng = np.random.default_rng(seed)
    k, n, t_len = num_classes, num_sequences, seq_len
    unique_names = [f"unique_lag{lag}" for lag in unique_lags]
    noise_names = [f"noise_{i}" for i in range(num_noise_modalities)]
    names = [*unique_names, "synergy_a", "synergy_b", "redundant_a", "redundant_b", *noise_names]
    symbols = {name: rng.integers(0, k, size=(n, t_len)) for name in names}

    label_shape = (n, t_len) if per_step_labels else (n,)
    labels = rng.integers(0, k, size=label_shape)

    def slot(lag: int):
        """Where the symbols tied to the labels at ``lag`` sit (sequence: step T−1−lag; per step: t−lag)."""
        return (slice(None), slice(0, t_len - lag)) if per_step_labels else (slice(None), t_len - 1 - lag)

    def corrupted_labels(lag: int) -> np.ndarray:
        """ỹ aligned with :func:`slot`, independently corrupted for each planted site."""
        aligned = labels[:, lag:] if per_step_labels else labels
        return _corrupt(aligned, symbol_noise, k, rng)

    for name, lag in zip(unique_names, unique_lags):
        symbols[name][slot(lag)] = corrupted_labels(lag)
    shared_symbol = corrupted_labels(redundancy_lag)
    symbols["redundant_a"][slot(redundancy_lag)] = shared_symbol
    symbols["redundant_b"][slot(redundancy_lag)] = shared_symbol
    symbols["synergy_b"][slot(synergy_lag)] = (
        symbols["synergy_a"][slot(synergy_lag)] + corrupted_labels(synergy_lag)
    ) % k

    modalities = {}
    for name in names:
        protos = _prototypes(rng, k, channels)
        values = protos[symbols[name]] + noise * rng.standard_normal((n, t_len, channels))
        modalities[name] = values.astype(np.float32)

    info = symbol_label_information(k, symbol_noise)
    index = {name: i for i, name in enumerate(names)}
    num_modalities = len(names)
    redundancy = np.zeros((num_modalities, num_modalities, num_lags), dtype=np.float32)
    uniqueness = np.zeros_like(redundancy)
    synergy = np.zeros_like(redundancy)
    singly_informative = {**dict(zip(unique_names, unique_lags)),
                          "redundant_a": redundancy_lag, "redundant_b": redundancy_lag}
    for name, lag in singly_informative.items():
        uniqueness[index[name], :, lag] = info
    a, b = index["redundant_a"], index["redundant_b"]
    redundancy[a, b, redundancy_lag] = redundancy[b, a, redundancy_lag] = info
    uniqueness[a, b, redundancy_lag] = uniqueness[b, a, redundancy_lag] = 0.0
    a, b = index["synergy_a"], index["synergy_b"]
    synergy[a, b, synergy_lag] = synergy[b, a, synergy_lag] = info
    diagonal = np.arange(num_modalities)
    uniqueness[diagonal, diagonal] = 0.0

    planted = {
        "unique": dict(zip(unique_names, unique_lags)),
        "synergistic": {"pair": ["synergy_a", "synergy_b"], "lag": synergy_lag},
        "redundant": {"pair": ["redundant_a", "redundant_b"], "lag": redundancy_lag},
        "noise": noise_names,
        "information_bits": info,
        "num_lags": num_lags,
        "label_kind": "step" if per_step_labels else "sequence",
        "rus": {"redundancy": redundancy, "uniqueness": uniqueness, "synergy": synergy},
    }
    return TemporalRusBenchmark(
        modalities=modalities,
        labels=labels.astype(np.int64),
        label_names=[f"class_{c}" for c in range(k)],
        planted=planted,
    )
