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

Pairs whose I_q* the discriminators already pin (see ``BatchConfig.pin_tolerance_bits``) skip (2), which is
most of the cost when many modalities are uninformative at a lag. Pairs are estimated in blocks; with
``distributed=True``, called by every process of a ``torch.distributed`` group (``accelerate launch``), the
blocks (and, step-wise, the lags) are shared round-robin among the processes and the results all-reduced, so
every process returns the single-process result for the same seed (exactly, for the same device and thread
count). Without it a process estimates everything alone, group or not (e.g. the main process only).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .pid import PairwiseRus
from .progress import PartialResults
from .sinkhorn import coupling_information, sinkhorn_couplings

__all__ = ["BatchConfig", "multiscale_batch", "stepwise_batch", "balanced_batch_indices", "process_group",
           "all_reduce_sum"]

_LOG2 = math.log(2.0)


@dataclass
class BatchConfig:
    """Settings of (multi-scale) BATCH. Steps count minibatches over all lags together.

    ``pin_tolerance_bits``: a pair whose I_q* is pinned by its bounds max(I_i, I_j) ≤ I_q* ≤ min(I_ij, I_i + I_j)
    to an interval at most this wide at every lag gets the interval's midpoint and no alignment / Sinkhorn (a
    pair with an uninformative side, e.g.); None aligns every pair. ``pair_block_size``: pairs are estimated in
    independent blocks of this many (triu order; block b seeded ``seed + b``), the units that processes share
    under ``torch.distributed``; None is one block. ``information_readout``: how I(X;Y) and I(Y;X_i,X_j) are
    read from a discriminator on held-out batches — "plugin", E_x Σ_y p̂(y|x) log2 p̂(y|x)/p(y) (the paper's; an
    overfit discriminator gives noise positive information), or "cross_entropy", H(Y) − held-out cross-entropy
    clipped at 0 (a lower bound that overfitting cannot inflate).
    """

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
    pin_tolerance_bits: float | None = 0.02
    information_readout: str = "plugin"
    pair_block_size: int | None = None
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

    def forward(self, inputs: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """``groups`` (G',) applies only those maps to inputs (B, G', in)."""
        if groups is None:
            return torch.einsum("bgi,gio->bgo", inputs, self.weight) + self.bias
        weight, bias = self.weight.index_select(0, groups), self.bias.index_select(0, groups)
        return torch.einsum("bgi,gio->bgo", inputs, weight) + bias


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
    """Discriminators and alignment embeddings for the pairs ``pairs`` (2, P) of M modalities, lag-conditioned.

    Modalities and maps are gathered with ``index_select``: tensor indexing's CPU backward adds repeated indices
    (a modality in several pairs) in a thread-dependent order, so a seeded estimate would change from run to run.
    """

    def __init__(self, num_modalities: int, channels: int, num_classes: int, num_lags: int, config: BatchConfig,
                 pairs: torch.Tensor):
        super().__init__()
        hidden, lag_dim = config.hidden_dim, config.lag_embed_dim
        self.num_classes, self.embed_dim = num_classes, config.embed_dim
        self.register_buffer("pairs", pairs, persistent=False)
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
        pair_input = torch.cat([encoded.index_select(1, first), encoded.index_select(1, second)], dim=-1)
        return (self.unimodal_head(self._with_lag(encoded, lag_vector)),
                self.pair_head(self._with_lag(pair_input, lag_vector)))

    def align(self, x: torch.Tensor, lag: int, positions: torch.Tensor) -> torch.Tensor:
        """x (B, M, C) → embeddings (2, A, K, B, d_e) of the pairs at ``positions`` (A,), standardised over d_e."""
        encoded = self.align_encoder(x)
        sides = self.pairs[:, positions].T.reshape(-1)  # [i_0, j_0, i_1, j_1, ...]
        groups = torch.stack([2 * positions, 2 * positions + 1], 1).reshape(-1)
        lag_vector = self.lag_embedding.weight[lag].detach()
        embedded = self.align_head(self._with_lag(encoded.index_select(1, sides), lag_vector), groups)
        batch = x.shape[0]
        embedded = embedded.view(batch, -1, 2, self.num_classes, self.embed_dim).permute(2, 1, 3, 0, 4)
        centred = embedded - embedded.mean(-1, keepdim=True)
        return centred / (centred.std(-1, keepdim=True) + 1e-5)


def _mutual_information_bits(logits: torch.Tensor, labels: torch.Tensor, readout: str) -> torch.Tensor:
    """I(X;Y) in bits per group from held-out logits (B, G, K) and labels (B,) → (G,): "plugin"
    E_x Σ_y p̂(y|x) log2 p̂(y|x)/p(y), or "cross_entropy" H(Y) − cross-entropy (may be < 0; clip the mean)."""
    prior = torch.bincount(labels, minlength=logits.shape[-1]).float() / len(labels)
    log_prior = prior.clamp_min(1e-12).log()
    log_probs = logits.log_softmax(-1)
    if readout == "plugin":
        return (log_probs.exp() * (log_probs - log_prior)).sum(-1).mean(0) / _LOG2
    if readout == "cross_entropy":
        chosen = log_probs.gather(-1, labels.view(-1, 1, 1).expand(-1, logits.shape[1], 1)).squeeze(-1)
        return (chosen - log_prior[labels].unsqueeze(-1)).mean(0) / _LOG2
    raise ValueError(f"information_readout must be 'plugin' or 'cross_entropy', got {readout!r}")


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
    """Trains one PairNetworks for the pairs ``pairs`` (2, P) on a set of lags and reads out, per lag,
    I(X_i;Y), I(X_j;Y), I(Y;X_i,X_j) and I_q*(Y;X_i,X_j) of every pair (bits)."""

    def __init__(self, features, labels, num_classes: int, config: BatchConfig, lags: Sequence[int],
                 pairs: torch.Tensor | None = None, seed: int | None = None):
        self.config, self.lags = config, list(lags)
        seed = config.seed if seed is None else seed
        self.generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.sampler = _LaggedSampler(features, labels, num_classes, config, self.generator)
        num_modalities, channels = self.sampler.fit[0][0].shape[1:]
        pairs = torch.triu_indices(num_modalities, num_modalities, 1) if pairs is None else pairs
        self.nets = PairNetworks(num_modalities, channels, num_classes, len(self.lags), config,
                                 pairs.to(config.device)).to(config.device)
        self.sinkhorn_iterations: list[int] = []
        self.sinkhorn_errors: list[float] = []
        self.readout_batches: list[list[tuple[torch.Tensor, torch.Tensor]]] = []

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

    def _pair_chunks(self, num_pairs: int, batch: int):
        per_pair = self.nets.num_classes * batch * batch
        size = max(1, self.config.pair_chunk_elements // per_pair)
        return [slice(start, min(start + size, num_pairs)) for start in range(0, num_pairs, size)]

    def _coupling_information(self, embeddings: torch.Tensor, unimodal_probs: torch.Tensor, pairs: torch.Tensor,
                              chunk: slice, differentiable: bool) -> torch.Tensor:
        """I_q*(Y; X_i, X_j) in bits for ``pairs[:, chunk]`` (embeddings aligned with ``pairs``) → (P_chunk,)."""
        config, batch = self.config, unimodal_probs.shape[0]
        first, second = pairs[:, chunk]
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

    @torch.no_grad()
    def read_out_discriminators(self, lag_position: int) -> torch.Tensor:
        """Draw this lag's held-out read-out batches and return their mean (3, P): I(X_i;Y), I(X_j;Y), I(Y;X_i,X_j)
        (≥ 0)."""
        batches = [self.sampler.batch(lag_position, holdout=True) for _ in range(self.config.readout_batches)]
        self.readout_batches.append(batches)
        total, readout = 0, self.config.information_readout
        first, second = self.nets.pairs
        for x, y in batches:
            unimodal, pair = self.nets.discriminate(x, lag_position)
            unimodal_bits = _mutual_information_bits(unimodal, y, readout)
            total = total + torch.stack([unimodal_bits[first], unimodal_bits[second],
                                         _mutual_information_bits(pair, y, readout)])
        return (total / len(batches)).clamp_min(0)

    def train_alignment(self, positions: torch.Tensor, progress: tqdm | None = None) -> None:
        """Train the alignment embeddings of the pairs at ``positions`` (A,) only."""
        self.nets.requires_grad_(False)
        self.nets.align_encoder.requires_grad_(True)
        self.nets.align_head.requires_grad_(True)
        optimizer = torch.optim.Adam(self.nets.alignment_parameters(), lr=self.config.learning_rate)
        pairs = self.nets.pairs[:, positions]
        for _ in range(self.config.alignment_steps):
            lag = self._random_lag()
            x, _ = self.sampler.batch(lag)
            with torch.no_grad():
                unimodal_probs = self.nets.discriminate(x, lag)[0].softmax(-1)
            optimizer.zero_grad(set_to_none=True)
            embeddings = self.nets.align(x, lag, positions)
            chunks = self._pair_chunks(len(positions), x.shape[0])
            for index, chunk in enumerate(chunks):
                information = self._coupling_information(embeddings, unimodal_probs, pairs, chunk, True)
                (information.sum() / len(positions)).backward(retain_graph=index < len(chunks) - 1)
            optimizer.step()
            if progress is not None:
                progress.update(1)
        self.nets.requires_grad_(True)

    @torch.no_grad()
    def read_out_coupling(self, lag_position: int, positions: torch.Tensor) -> torch.Tensor:
        """Mean I_q* (A,) in bits of the pairs at ``positions`` over this lag's read-out batches."""
        pairs, total = self.nets.pairs[:, positions], 0
        for x, _ in self.readout_batches[lag_position]:
            unimodal_probs = self.nets.discriminate(x, lag_position)[0].softmax(-1)
            embeddings = self.nets.align(x, lag_position, positions)
            total = total + torch.cat([self._coupling_information(embeddings, unimodal_probs, pairs, chunk, False)
                                       for chunk in self._pair_chunks(len(positions), x.shape[0])])
        return total / len(self.readout_batches[lag_position])

    def estimate(self, progress: bool = False, desc: str = "BATCH") -> tuple[torch.Tensor, torch.Tensor]:
        """Train and read out → informations (4, L, P) float64 (I_i, I_j, I_ij, I_q*) and diagnostics (4,):
        mean and max Sinkhorn iterations, max marginal error, number of aligned (unpinned) pairs."""
        config = self.config
        with tqdm(total=config.discriminator_steps + config.alignment_steps, desc=desc, disable=not progress,
                  leave=False) as bar:
            self.train_discriminators(bar)
            informations = torch.stack([self.read_out_discriminators(lag) for lag in range(len(self.lags))], 1)
            lower = informations[:2].max(0).values
            upper = torch.minimum(informations[2], informations[0] + informations[1]).clamp_min(lower)
            pinned = ((upper - lower <= config.pin_tolerance_bits) if config.pin_tolerance_bits is not None
                      else torch.zeros_like(lower, dtype=torch.bool))
            coupling = (lower + upper) / 2
            positions = torch.nonzero(~pinned.all(0)).flatten()
            if not len(positions):  # every pair pinned by its bounds: no alignment phase, so the ETA drops it
                bar.total = config.discriminator_steps
                bar.refresh()
            if len(positions):
                self.train_alignment(positions, bar)
                for lag in range(len(self.lags)):  # a Sinkhorn estimate outside the bounds is clamped to them
                    aligned = coupling[lag].clone()
                    aligned[positions] = self.read_out_coupling(lag, positions)
                    coupling[lag] = torch.where(pinned[lag], coupling[lag],
                                                torch.minimum(torch.maximum(aligned, lower[lag]), upper[lag]))
        iterations = self.sinkhorn_iterations or [0]
        diagnostics = torch.tensor([float(np.mean(iterations)), float(max(iterations)),
                                    float(max(self.sinkhorn_errors, default=0.0)), float(len(positions))])
        return torch.cat([informations, coupling[None]]).double().cpu(), diagnostics.double()


def process_group(device: str = "cpu") -> tuple[int, int]:
    """(rank, world size) of the ``torch.distributed`` process group, (0, 1) without one. Under
    ``accelerate launch`` (WORLD_SIZE > 1 in the environment) an uninitialised group is started through
    Accelerate's ``PartialState`` (gloo on CPU)."""
    import torch.distributed as dist

    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState(cpu=device == "cpu")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(*tensors: torch.Tensor) -> None:
    """Sum CPU tensors in place over the initialised ``torch.distributed`` group (on CUDA for nccl)."""
    import torch.distributed as dist

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    for tensor in tensors:
        summed = tensor.to(device)
        dist.all_reduce(summed)
        tensor.copy_(summed.cpu())


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


def _run(features, labels, num_classes: int, config: BatchConfig, store: PartialResults | None, progress: bool,
         stepwise: bool, distributed: bool) -> PairwiseRus:
    """Estimate every (lag set, pair block) unit this process owns (all of them unless ``distributed``; or load
    it from ``store``), all-reduce the units over the process group and read out the decomposition."""
    _check_inputs(features, labels, num_classes)
    if config.pair_block_size is not None and config.pair_block_size < 1:
        raise ValueError(f"pair_block_size must be >= 1 or None, got {config.pair_block_size}")
    store = store or PartialResults(None, "")
    num_modalities, num_lags = features[0].shape[1], len(features)
    pairs = torch.triu_indices(num_modalities, num_modalities, 1)
    block = config.pair_block_size or pairs.shape[1]
    blocks = [slice(start, min(start + block, pairs.shape[1])) for start in range(0, pairs.shape[1], block)]
    lag_sets = [[lag] for lag in range(num_lags)] if stepwise else [list(range(num_lags))]
    units = [(lags, index) for lags in lag_sets for index in range(len(blocks))]
    rank, world = process_group(config.device) if distributed else (0, 1)
    informations = torch.zeros(4, num_lags, pairs.shape[1], dtype=torch.float64)
    diagnostics = torch.zeros(len(units), 4, dtype=torch.float64)
    mine = range(rank, len(units), world)
    for position in tqdm(mine, desc="BATCH units (lags, pair block)", disable=not progress or len(units) == 1):
        lags, index = units[position]
        key = f"{'lag' + str(lags[0]) if stepwise else 'multiscale'}/block{index}"
        if f"{key}/informations" not in store:
            estimator = _PairBatchEstimator([features[lag] for lag in lags], [labels[lag] for lag in lags],
                                            num_classes, config, range(len(lags)), pairs[:, blocks[index]],
                                            seed=config.seed + index)
            unit_informations, unit_diagnostics = estimator.estimate(progress, f"BATCH {key}")
            store.put(f"{key}/informations", unit_informations)
            store.put(f"{key}/diagnostics", unit_diagnostics)
        informations[:, lags, blocks[index]] = store[f"{key}/informations"]
        diagnostics[position] = store[f"{key}/diagnostics"]
    if world > 1:
        all_reduce_sum(informations, diagnostics)
    aligned = diagnostics[:, 3] > 0
    summary = {
        "sinkhorn_mean_iterations": float(diagnostics[aligned, 0].mean()) if aligned.any() else 0.0,
        "sinkhorn_max_iterations": int(diagnostics[:, 1].max()),
        "sinkhorn_max_marginal_error": float(diagnostics[:, 2].max()),
        "aligned_pairs": int(diagnostics[:, 3].sum()),
        "pair_blocks": len(blocks),
        "processes": world,
    }
    return PairwiseRus.from_informations(pairs.numpy(), *informations.numpy(), diagnostics=summary)


def multiscale_batch(features: Sequence, labels: Sequence, num_classes: int, config: BatchConfig | None = None,
                     store: PartialResults | None = None, progress: bool = True, distributed: bool = False
                     ) -> PairwiseRus:
    """Multi-scale BATCH: one lag-conditioned network set (per pair block) for all lags; arrays (L, P).
    ``distributed``: every process of the ``torch.distributed`` group calls this and they share the blocks."""
    return _run(features, labels, num_classes, config or BatchConfig(), store, progress, False, distributed)


def stepwise_batch(features: Sequence, labels: Sequence, num_classes: int, config: BatchConfig | None = None,
                   store: PartialResults | None = None, progress: bool = True, distributed: bool = False
                   ) -> PairwiseRus:
    """Step-wise BATCH: an independent network set per lag (and pair block), each with the full step budget;
    arrays (L, P). ``distributed``: as in :func:`multiscale_batch` (lags and blocks are shared)."""
    return _run(features, labels, num_classes, config or BatchConfig(), store, progress, True, distributed)
