"""BATCH neural PID estimation for every modality pair at once, multi-scale (one network set for all lags)
and step-wise (one network set per lag).

Input per lag τ: ``features[τ]`` (N_τ, M, C) float (z-scored; modalities zero-padded to a common C) and
``labels[τ]`` (N_τ,) int64 class ids 0..K−1, each class present in some lag. All M(M−1)/2 pairs are
trained and read out together: each modality is encoded once per batch by grouped (per-modality) MLPs, and
the pair heads are grouped over a leading pair dimension — no Python loop over pairs (Sinkhorn runs over
chunks of pairs to bound memory).

Procedure (Liang et al., NeurIPS 2023, with the fixes in METHOD.md): (1) train discriminators p̂(y|x_m)
and p̂(y|x_i, x_j) with cross-entropy on class-balanced batches; (2) freeze them and train per-pair
alignment embeddings so that the Sinkhorn coupling q of a batch minimises I_q(Y; X_i, X_j); (3) read out
I(X_m;Y), I(Y;X_i,X_j) and I_q* on held-out class-balanced batches of the same split and decompose.
Multi-scale: a learned lag embedding e(τ) is concatenated to every encoder output and each step samples
τ uniformly. Units: bits.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .pid import PairwiseRus
from .progress import PartialResults
from .sinkhorn import coupling_information, sinkhorn_couplings

__all__ = ["BatchConfig", "multiscale_batch", "stepwise_batch", "balanced_batch_indices"]

_LOG2 = math.log(2.0)


@dataclass
class BatchConfig:
    """Settings of (multi-scale) BATCH. Steps count minibatches over all lags together."""

    hidden_dim: int = 32
    embed_dim: int = 10
    lag_embed_dim: int = 8
    batch_size: int = 256
    discriminator_steps: int = 600
    alignment_steps: int = 100
    learning_rate: float = 1e-3
    readout_batches: int = 4
    holdout_fraction: float = 0.2
    sinkhorn_tol: float = 1e-6
    sinkhorn_max_iter: int = 200
    sinkhorn_backprop_iterations: int = 5
    max_exponent: float = 10.0
    pair_chunk_elements: int = 1 << 22
    seed: int = 0
    device: str = "cpu"

    def to_dict(self) -> dict:
        return asdict(self)


def balanced_batch_indices(labels: torch.Tensor, num_classes: int, batch_size: int,
                           generator: torch.Generator) -> torch.Tensor:
    """Indices of a class-balanced batch: batch_size // K samples of every class, drawn with replacement.

    Raises ValueError on an empty input or when fewer than two classes are present.
    """
    if labels.numel() == 0:
        raise ValueError("cannot sample a batch from an empty set of samples")
    per_class = [torch.nonzero(labels == k).flatten() for k in range(num_classes)]
    present = [idx for idx in per_class if idx.numel() > 0]
    if len(present) < 2:
        raise ValueError(f"RUS estimation needs at least two classes; the samples hold only "
                         f"{[k for k, idx in enumerate(per_class) if idx.numel()]} of {num_classes}")
    share = max(1, batch_size // len(present))
    picks = [idx[torch.randint(idx.numel(), (share,), generator=generator)] for idx in present]
    return torch.cat(picks)


class GroupedLinear(nn.Module):
    """G independent linear maps applied to (B, G, in) → (B, G, out)."""

    def __init__(self, groups: int, in_features: int, out_features: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(groups, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(groups, out_features).uniform_(-bound, bound))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bgi,gio->bgo", inputs, self.weight) + self.bias


class GroupedMLP(nn.Sequential):
    """G independent MLPs with ReLU between layers; ``sizes`` = [in, hidden..., out]."""

    def __init__(self, groups: int, sizes: Sequence[int]):
        layers: list[nn.Module] = []
        for index, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            if index:
                layers.append(nn.ReLU())
            layers.append(GroupedLinear(groups, fan_in, fan_out))
        super().__init__(*layers)


class PairNetworks(nn.Module):
    """Discriminators and alignment embeddings for all pairs of M modalities, conditioned on the lag."""

    def __init__(self, num_modalities: int, channels: int, num_classes: int, num_lags: int, config: BatchConfig):
        super().__init__()
        hidden, lag_dim = config.hidden_dim, config.lag_embed_dim
        self.num_classes, self.embed_dim = num_classes, config.embed_dim
        self.register_buffer("pairs", torch.triu_indices(num_modalities, num_modalities, 1), persistent=False)
        num_pairs = self.pairs.shape[1]
        self.lag_embedding = nn.Embedding(num_lags, lag_dim)
        self.encoder = GroupedMLP(num_modalities, [channels, hidden, hidden])
        self.unimodal_head = GroupedMLP(num_modalities, [hidden + lag_dim, hidden, num_classes])
        self.pair_head = GroupedMLP(num_pairs, [2 * hidden + lag_dim, hidden, num_classes])
        self.align_encoder = GroupedMLP(num_modalities, [channels, hidden, hidden])
        self.align_head = GroupedLinear(2 * num_pairs, hidden + lag_dim, num_classes * config.embed_dim)

    def discriminator_parameters(self):
        return [*self.lag_embedding.parameters(), *self.encoder.parameters(),
                *self.unimodal_head.parameters(), *self.pair_head.parameters()]

    def alignment_parameters(self):
        return [*self.align_encoder.parameters(), *self.align_head.parameters()]

    @staticmethod
    def _with_lag(encoded: torch.Tensor, lag_vector: torch.Tensor) -> torch.Tensor:
        return torch.cat([encoded, lag_vector.expand(*encoded.shape[:2], -1)], dim=-1)

    def discriminate(self, x: torch.Tensor, lag: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, M, C) → unimodal logits (B, M, K), pair logits (B, P, K)."""
        lag_vector = self.lag_embedding.weight[lag]
        encoded = self.encoder(x)
        first, second = self.pairs
        pair_input = torch.cat([encoded[:, first], encoded[:, second]], dim=-1)
        return (self.unimodal_head(self._with_lag(encoded, lag_vector)),
                self.pair_head(self._with_lag(pair_input, lag_vector)))

    def align(self, x: torch.Tensor, lag: int) -> torch.Tensor:
        """x (B, M, C) → per-pair, per-side, per-class embeddings (2, P, K, B, d_e), standardised over d_e."""
        encoded = self.align_encoder(x)
        sides = self.pairs.T.reshape(-1)  # [i_0, j_0, i_1, j_1, ...]
        embedded = self.align_head(self._with_lag(encoded[:, sides], self.lag_embedding.weight[lag].detach()))
        batch = x.shape[0]
        embedded = embedded.view(batch, -1, 2, self.num_classes, self.embed_dim).permute(2, 1, 3, 0, 4)
        centred = embedded - embedded.mean(-1, keepdim=True)
        return centred / (centred.std(-1, keepdim=True) + 1e-5)


def _mutual_information_bits(probs: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """E_x Σ_y p̂(y|x) log2 p̂(y|x)/p(y) for probs (B, G, K), prior (K,) → (G,)."""
    log_ratio = probs.clamp_min(1e-12).log() - prior.clamp_min(1e-12).log()
    return (probs * log_ratio).sum(-1).mean(0) / _LOG2


class _LaggedSampler:
    """Class-balanced batches from per-lag (features, labels), split into a fitting and a held-out part."""

    def __init__(self, features, labels, num_classes: int, config: BatchConfig, generator: torch.Generator):
        self.num_classes, self.config, self.generator = num_classes, config, generator
        self.fit, self.holdout = [], []
        for lag, (x, y) in enumerate(zip(features, labels)):
            x = torch.as_tensor(x, dtype=torch.float32, device=config.device)
            y = torch.as_tensor(y, dtype=torch.long, device=config.device)
            if x.shape[0] != y.shape[0] or x.dim() != 3:
                raise ValueError(f"lag {lag}: features must be (N, M, C) with N = len(labels), got "
                                 f"{tuple(x.shape)} and {tuple(y.shape)}")
            order = torch.randperm(len(y), generator=generator, device="cpu").to(config.device)
            num_holdout = int(round(config.holdout_fraction * len(y)))
            held, kept = order[:num_holdout], order[num_holdout:]
            balanced_batch_indices(y[kept], num_classes, 2, generator)  # fail early on one class
            self.fit.append((x[kept], y[kept]))
            self.holdout.append((x[held], y[held]) if num_holdout else (x[kept], y[kept]))

    def batch(self, lag: int, holdout: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = (self.holdout if holdout else self.fit)[lag]
        index = balanced_batch_indices(y, self.num_classes, self.config.batch_size, self.generator)
        return x[index], y[index]


class _PairBatchEstimator:
    """Trains one PairNetworks on a set of lags and reads out the information terms per lag."""

    def __init__(self, features, labels, num_classes: int, config: BatchConfig, lags: Sequence[int]):
        self.config, self.lags = config, list(lags)
        self.generator = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed)
        self.sampler = _LaggedSampler(features, labels, num_classes, config, self.generator)
        num_modalities, channels = self.sampler.fit[0][0].shape[1:]
        self.nets = PairNetworks(num_modalities, channels, num_classes, len(self.lags), config).to(config.device)
        self.sinkhorn_iterations: list[int] = []
        self.sinkhorn_errors: list[float] = []

    def _random_lag(self) -> int:
        return int(torch.randint(len(self.lags), (1,), generator=self.generator))

    def train_discriminators(self, progress: tqdm | None = None) -> None:
        optimizer = torch.optim.Adam(self.nets.discriminator_parameters(), lr=self.config.learning_rate)
        loss_fn = nn.CrossEntropyLoss()
        for _ in range(self.config.discriminator_steps):
            lag = self._random_lag()
            x, y = self.sampler.batch(lag)
            unimodal, pair = self.nets.discriminate(x, lag)
            num_classes = unimodal.shape[-1]
            loss = (loss_fn(unimodal.reshape(-1, num_classes), y.repeat_interleave(unimodal.shape[1]))
                    + loss_fn(pair.reshape(-1, num_classes), y.repeat_interleave(pair.shape[1])))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if progress is not None:
                progress.update(1)

    def _pair_chunks(self, batch: int):
        num_pairs = self.nets.pairs.shape[1]
        per_pair = self.nets.num_classes * batch * batch
        size = max(1, self.config.pair_chunk_elements // per_pair)
        return [slice(start, min(start + size, num_pairs)) for start in range(0, num_pairs, size)]

    def _coupling_information(self, embeddings: torch.Tensor, unimodal_probs: torch.Tensor, chunk: slice,
                              differentiable: bool) -> torch.Tensor:
        """I_q*(Y; X_i, X_j) in bits for the pairs in ``chunk`` of one batch → (P_chunk,)."""
        config, batch = self.config, unimodal_probs.shape[0]
        first, second = self.nets.pairs[:, chunk]
        log_kernel = torch.einsum("pkad,pkbd->pkab", embeddings[0, chunk], embeddings[1, chunk])
        log_kernel = log_kernel / math.sqrt(self.nets.embed_dim)
        row_target = unimodal_probs[:, first].permute(1, 2, 0).contiguous() / batch
        col_target = unimodal_probs[:, second].permute(1, 2, 0).contiguous() / batch
        with torch.no_grad():
            result = sinkhorn_couplings(log_kernel.detach(), row_target, col_target, config.sinkhorn_tol,
                                        config.sinkhorn_max_iter, max_exponent=config.max_exponent)
        self.sinkhorn_iterations.append(result.iterations)
        self.sinkhorn_errors.append(result.marginal_error)
        if differentiable:
            unroll = config.sinkhorn_backprop_iterations
            result = sinkhorn_couplings(log_kernel, row_target, col_target, tol=0.0, max_iter=unroll,
                                        check_every=unroll, max_exponent=config.max_exponent,
                                        init_col_scaling=result.col_scaling)
        return coupling_information(result.coupling, result.log_coupling)

    def train_alignment(self, progress: tqdm | None = None) -> None:
        self.nets.requires_grad_(False)
        self.nets.align_encoder.requires_grad_(True)
        self.nets.align_head.requires_grad_(True)
        optimizer = torch.optim.Adam(self.nets.alignment_parameters(), lr=self.config.learning_rate)
        num_pairs = self.nets.pairs.shape[1]
        for _ in range(self.config.alignment_steps):
            lag = self._random_lag()
            x, _ = self.sampler.batch(lag)
            with torch.no_grad():
                unimodal_probs = self.nets.discriminate(x, lag)[0].softmax(-1)
            optimizer.zero_grad(set_to_none=True)
            embeddings = self.nets.align(x, lag)
            chunks = self._pair_chunks(x.shape[0])
            for index, chunk in enumerate(chunks):
                information = self._coupling_information(embeddings, unimodal_probs, chunk, differentiable=True)
                (information.sum() / num_pairs).backward(retain_graph=index < len(chunks) - 1)
            optimizer.step()
            if progress is not None:
                progress.update(1)
        self.nets.requires_grad_(True)

    @torch.no_grad()
    def read_out(self, lag_position: int) -> dict[str, np.ndarray]:
        """Mean over held-out balanced batches of I(X_m;Y) (M,), I(Y;X_i,X_j) (P,) and I_q* (P,) in bits."""
        totals: dict[str, torch.Tensor] = {}
        for _ in range(self.config.readout_batches):
            x, y = self.sampler.batch(lag_position, holdout=True)
            unimodal, pair = self.nets.discriminate(x, lag_position)
            prior = torch.bincount(y, minlength=unimodal.shape[-1]).float() / len(y)
            unimodal_probs = unimodal.softmax(-1)
            embeddings = self.nets.align(x, lag_position)
            terms = {
                "unimodal": _mutual_information_bits(unimodal_probs, prior),
                "joint": _mutual_information_bits(pair.softmax(-1), prior),
                "coupling": torch.cat([self._coupling_information(embeddings, unimodal_probs, chunk, False)
                                       for chunk in self._pair_chunks(x.shape[0])]),
            }
            for name, value in terms.items():
                totals[name] = totals.get(name, 0) + value / self.config.readout_batches
        return {name: value.cpu().numpy().astype(np.float64) for name, value in totals.items()}


def _check_inputs(features, labels, num_classes: int) -> None:
    if len(features) == 0 or len(features) != len(labels):
        raise ValueError(f"need one (features, labels) set per lag, got {len(features)} and {len(labels)}")
    present = np.unique(np.concatenate([np.asarray(y).ravel() for y in labels]))
    if num_classes < 2 or len(present) < 2:
        raise ValueError(f"RUS estimation needs at least two classes, got num_classes={num_classes} and the "
                         f"labels {present.tolist()}")
    if not np.array_equal(present, np.arange(num_classes)):
        raise ValueError(f"labels must be the contiguous class ids 0..{num_classes - 1}, got {present.tolist()} "
                         "(a class without samples makes the prior 0 and the bits unbounded); "
                         "estimate_temporal_rus remaps any labels")
    num_modalities = features[0].shape[1]
    if num_modalities < 2:
        raise ValueError(f"RUS needs at least two modalities, got {num_modalities}")


def _pairwise_from_readouts(readouts: list[dict[str, np.ndarray]], pairs: np.ndarray,
                            diagnostics: dict) -> PairwiseRus:
    unimodal = np.stack([r["unimodal"] for r in readouts])
    return PairwiseRus.from_informations(
        pairs, unimodal[:, pairs[0]], unimodal[:, pairs[1]],
        np.stack([r["joint"] for r in readouts]), np.stack([r["coupling"] for r in readouts]), diagnostics)


def _estimate(features, labels, num_classes: int, config: BatchConfig, store: PartialResults, unit: str,
              progress: bool) -> list[dict[str, np.ndarray]]:
    """Train one network set on all given lags (or load it from ``store``) and read every lag out."""
    if f"{unit}/readout" in store:
        return [{k: v.numpy() for k, v in r.items()} for r in store[f"{unit}/readout"]]
    estimator = _PairBatchEstimator(features, labels, num_classes, config, range(len(features)))
    total = config.discriminator_steps + config.alignment_steps
    with tqdm(total=total, desc=f"BATCH {unit}", disable=not progress, leave=False) as bar:
        estimator.train_discriminators(bar)
        estimator.train_alignment(bar)
    readouts = [estimator.read_out(position) for position in range(len(features))]
    iterations = estimator.sinkhorn_iterations
    store.put(f"{unit}/readout", [{k: torch.from_numpy(v) for k, v in r.items()} for r in readouts])
    store.put(f"{unit}/sinkhorn", torch.tensor([float(np.mean(iterations)), float(np.max(iterations)),
                                                float(np.max(estimator.sinkhorn_errors))]))
    return readouts


def _sinkhorn_diagnostics(store: PartialResults, units: list[str]) -> dict:
    stats = torch.stack([store[f"{unit}/sinkhorn"] for unit in units])
    return {"sinkhorn_mean_iterations": float(stats[:, 0].mean()), "sinkhorn_max_iterations": int(stats[:, 1].max()),
            "sinkhorn_max_marginal_error": float(stats[:, 2].max())}


def multiscale_batch(features: Sequence, labels: Sequence, num_classes: int, config: BatchConfig | None = None,
                     store: PartialResults | None = None, progress: bool = True) -> PairwiseRus:
    """Multi-scale BATCH: one lag-conditioned network set for all lags; arrays (L, P)."""
    config = config or BatchConfig()
    _check_inputs(features, labels, num_classes)
    store = store or PartialResults(None, "")
    readouts = _estimate(features, labels, num_classes, config, store, "multiscale", progress)
    pairs = torch.triu_indices(features[0].shape[1], features[0].shape[1], 1).numpy()
    return _pairwise_from_readouts(readouts, pairs, _sinkhorn_diagnostics(store, ["multiscale"]))


def stepwise_batch(features: Sequence, labels: Sequence, num_classes: int, config: BatchConfig | None = None,
                   store: PartialResults | None = None, progress: bool = True) -> PairwiseRus:
    """Step-wise BATCH: an independent network set per lag (each with the full step budget); arrays (L, P)."""
    config = config or BatchConfig()
    _check_inputs(features, labels, num_classes)
    store = store or PartialResults(None, "")
    units = [f"lag{lag}" for lag in range(len(features))]
    readouts = []
    for lag in tqdm(range(len(features)), desc="step-wise BATCH lags", disable=not progress):
        readouts += _estimate([features[lag]], [labels[lag]], num_classes, config, store, units[lag], progress)
    pairs = torch.triu_indices(features[0].shape[1], features[0].shape[1], 1).numpy()
    return _pairwise_from_readouts(readouts, pairs, _sinkhorn_diagnostics(store, units))
