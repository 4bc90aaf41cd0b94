"""RUS-guided routing: the one place that turns a dataset's RUS tables into routing inputs, conditions and losses
(METHOD.md §2), used by `MergeModel` (modeling_merge.py) and by the LLM gates (llm.py).

Tables are `[M, M, L]` float32 in bits: `redundancy[i, j, ℓ]` and `synergy[i, j, ℓ]` symmetric in (i, j),
`uniqueness[i, j, ℓ]` = U_i within the pair (i, j). The rules kept here:

- lag of a position: ℓ = min(⌊n·L/N⌋, L−1) for the n-th of N positions (equal time segments);
- per-modality uniqueness (the paper's reference rule): U_m(ℓ) = max over partners j ≠ m of U[m, j, ℓ];
  a pair (m, n) is *unique* at ℓ when U_m(ℓ) > τ_U and U_n(ℓ) > τ_U (with `uniqueness_excludes_redundant`, only
  where it is not redundant: U_m is a modality's most unique information against any partner, R is this pair's,
  so two informative modalities that share what they know can pass both tests and get opposite losses);
- a pair is *redundant* when R[m, n, ℓ] > τ_R, *synergistic* when S[m, n, ℓ] > τ_S;
- thresholds are bits (`threshold_mode="absolute"`) or percentiles of R and S over the pairs i < j and all
  lags and of U_m over modalities and lags; a sample with no value (one modality: no pair) resolves to +inf,
  so no cell passes;
- the R/U/S losses on router probabilities (see `rus_losses`).

This file travels with checkpoints for `trust_remote_code`: it imports torch and `configuration_merge` only.
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .configuration_merge import RusRoutingConfig

RUS_TABLE_NAMES = ("redundancy", "uniqueness", "synergy")


def lag_index(position: Tensor, length: Tensor | int, num_lags: int) -> Tensor:
    """RUS lag ℓ = min(⌊position·L/length⌋, L−1) of a position among `length` (broadcasting, int64)."""
    return torch.clamp(torch.div(position * num_lags, length, rounding_mode="floor"), max=num_lags - 1)


def token_lags(num_tokens: int, num_lags: int, device: torch.device | None = None) -> Tensor:
    """Lag index ℓ(t) of every token t of a grid of T tokens, shape `(T,)` int64."""
    return lag_index(torch.arange(num_tokens, device=device), num_tokens, num_lags)


def per_modality_uniqueness(uniqueness: Tensor) -> Tensor:
    """U_m(ℓ) = max over partners j ≠ m of U[m, j, ℓ]: `[M, M, L]` → `(M, L)` (zeros when M = 1)."""
    num_modalities = uniqueness.shape[0]
    if num_modalities == 1:
        return uniqueness.new_zeros(1, uniqueness.shape[2])
    diagonal = torch.eye(num_modalities, dtype=torch.bool, device=uniqueness.device)[:, :, None]
    return uniqueness.masked_fill(diagonal, float("-inf")).amax(1)


def validate_rus_tables(redundancy, uniqueness, synergy, shape: tuple[int, int, int | None], names: str = ""
                        ) -> dict[str, Tensor]:
    """The three tables as float32 tensors of `shape` = (M, M, L) (L None: any, the same for all three), keyed by
    name; `ValueError` naming the table on a wrong shape, NaN / Inf, negative bits, or R / S not symmetric in
    (i, j). `names` describes the modality order in the shape error. Meta tensors (a model built without data)
    are checked for shape only."""
    tables = {}
    for name, values in zip(RUS_TABLE_NAMES, (redundancy, uniqueness, synergy)):
        values = torch.as_tensor(values, dtype=torch.float32)
        if shape[2] is None and values.dim() == 3:
            shape = (*shape[:2], values.shape[2])
        if tuple(values.shape) != tuple(shape):
            expected = "[M, M, L] = " + str([*shape[:2], "L" if shape[2] is None else shape[2]]).replace("'", "")
            raise ValueError(f"RUS {name} has shape {tuple(values.shape)}, expected {expected}"
                             f"{f' ({names})' if names else ''}.")
        if not values.is_meta:
            if not torch.isfinite(values).all():
                raise ValueError(f"RUS {name} contains NaN or Inf values.")
            if (values < 0).any():
                raise ValueError(f"RUS {name} has negative values (min {values.min().item():.4g} bits).")
        tables[name] = values
    for name in ("redundancy", "synergy"):
        if not tables[name].is_meta and not torch.allclose(tables[name], tables[name].transpose(0, 1), atol=1e-5):
            raise ValueError(f"RUS {name} must be symmetric in its first two axes ([i, j, τ] == [j, i, τ]).")
    return tables


def resolve_thresholds(redundancy: Tensor, uniqueness: Tensor, synergy: Tensor, config: RusRoutingConfig) -> Tensor:
    """[τ_R, τ_U, τ_S] in bits, float32 `(3,)`: the config's values (`absolute`), or their percentiles of R and S
    over pairs i < j and lags and of U_m over modalities and lags; +inf for a sample without values."""
    requested = torch.tensor([config.redundancy_threshold, config.uniqueness_threshold, config.synergy_threshold],
                             dtype=torch.float32)
    if config.threshold_mode == "absolute":
        return requested
    num_modalities = redundancy.shape[0]
    first, second = torch.triu_indices(num_modalities, num_modalities, offset=1, device=redundancy.device)
    samples = (redundancy[first, second], per_modality_uniqueness(uniqueness), synergy[first, second])
    return torch.stack([
        torch.quantile(values.reshape(-1), percentile / 100.0).cpu() if values.numel() else torch.tensor(math.inf)
        for values, percentile in zip(samples, requested.tolist())
    ])


@dataclass
class PairConditions:
    """Which (pair, lag) cells pass each RUS threshold; `(Q, K)` bool each, for Q pairs and K lag positions."""

    redundant: Tensor
    unique: Tensor
    synergistic: Tensor


def pair_conditions(
    redundancy: Tensor, uniqueness: Tensor, synergy: Tensor, pairs: Tensor, lags: Tensor, thresholds: Tensor,
    config: RusRoutingConfig,
) -> PairConditions:
    """Conditions of `pairs` `(Q, 2)` (modality m, n) at `lags` `(K,)`, from `[M, M, L]` tables and [τ_R, τ_U, τ_S];
    with `config.uniqueness_excludes_redundant`, a redundant cell is not unique."""
    first, second = pairs[:, 0], pairs[:, 1]
    tau_redundancy, tau_uniqueness, tau_synergy = thresholds.to(redundancy.device)
    modality_uniqueness = per_modality_uniqueness(uniqueness)[:, lags]
    redundant = redundancy[first, second][:, lags] > tau_redundancy
    unique = (modality_uniqueness[first] > tau_uniqueness) & (modality_uniqueness[second] > tau_uniqueness)
    return PairConditions(
        redundant=redundant,
        unique=unique & ~redundant if config.uniqueness_excludes_redundant else unique,
        synergistic=synergy[first, second][:, lags] > tau_synergy,
    )


def jensen_shannon_divergence(p: Tensor, q: Tensor) -> Tensor:
    """JSD(p‖q) in nats over the last dim of two probability tensors (no extra softmax); rounding below 0 is
    clipped. Logs are taken of probabilities floored at the dtype's smallest normal number, so a probability
    that underflowed to exactly 0 contributes 0 and a finite gradient (not NaN)."""
    tiny = torch.finfo(p.dtype).tiny
    log_mean = torch.log((0.5 * (p + q)).clamp_min(tiny))
    divergence = 0.5 * (p * (torch.log(p.clamp_min(tiny)) - log_mean)).sum(-1) + 0.5 * (
        q * (torch.log(q.clamp_min(tiny)) - log_mean)
    ).sum(-1)
    return divergence.clamp(min=0.0)


def rus_losses(
    probs_first: Tensor,
    probs_second: Tensor,
    pair_present: Tensor,
    conditions: PairConditions,
    synergy_experts: slice | Tensor,
    config: RusRoutingConfig,
) -> dict[str, Tensor]:
    """Unweighted R/U/S losses (METHOD.md §2) of router distributions `(..., Q, K, E)` of the two modalities of Q
    pairs at K cells (tokens or lags); `pair_present` (broadcast to `(..., Q, K)`) bool, both modalities present;
    `synergy_experts` selects the synergy experts on the last axis.

    Means run over the present cells that pass the pair's condition (0 when none does):
    redundancy = mean JSD over redundant cells; uniqueness = −mean JSD over unique cells
    (`uniqueness_target_jsd=None`, the paper) or, with a target JSD d*, mean max(0, d* − JSD); synergy, with
    p̄ = ½(p_m(syn) + p_n(syn)) and φ(p) = 1 − p (`one_minus_p`) or −log p (`neg_log_p`): mean φ(p̄) over
    synergistic cells (`synergy_target_mass=None`, the paper), or with a target mass p*: mean max(0, φ(p̄) − φ(p*))
    over synergistic cells + mean max(0, φ(E_syn/E) − φ(p̄)) over every other present cell.
    """
    num_experts = probs_first.shape[-1]
    divergence = jensen_shannon_divergence(probs_first, probs_second)

    def masked_mean(values: Tensor, condition: Tensor) -> Tensor:
        weights = (pair_present & condition).expand_as(values).to(values.dtype)
        return (values * weights).sum() / weights.sum().clamp(min=1)

    def scale(mass):
        if config.synergy_loss_type == "one_minus_p":
            return 1.0 - mass
        return -torch.log(torch.as_tensor(mass).clamp(min=1e-9))

    synergy_mass = 0.5 * (probs_first[..., synergy_experts].sum(-1) + probs_second[..., synergy_experts].sum(-1))
    penalty = scale(synergy_mass)
    # with a target, unique pairs stop pushing once apart: an unbounded −JSD grows the logits forever under Adam
    uniqueness_penalty = -divergence if config.uniqueness_target_jsd is None else (
        config.uniqueness_target_jsd - divergence).clamp(min=0.0)
    losses = {
        "redundancy": masked_mean(divergence, conditions.redundant),
        "uniqueness": masked_mean(uniqueness_penalty, conditions.unique),
    }
    if config.synergy_target_mass is None:
        losses["synergy"] = masked_mean(penalty, conditions.synergistic)
        return losses
    # synergistic cells pull up to the target mass; every other cell of a present pair pushes back down to the
    # synergy experts' fair share, so the loss has no direction shared by every token
    fair_share = torch.ones(num_experts)[synergy_experts].sum().item() / num_experts
    below_target = (penalty - scale(config.synergy_target_mass)).clamp(min=0.0)
    above_fair_share = (scale(fair_share) - penalty).clamp(min=0.0)
    losses["synergy"] = masked_mean(below_target, conditions.synergistic) + masked_mean(
        above_fair_share, ~conditions.synergistic
    )
    return losses


class MergeRusContextAttention(nn.Module):
    """Attention of a token over its partner modalities' RUS features (METHOD.md §2 router).

    q = W_q x, k = W_k f, v = W_v f with f = [R, S] of (own modality, partner) at the token's lag;
    c = Σ_j softmax_j(q·k_j / √A) v_j. Leading dims of the inputs broadcast against each other.
    Because f has only 2 features, q·k_j = (W_kᵀ q)·f_j and Σ_j α_j v_j = W_v (Σ_j α_j f_j): the cost per
    (token, partner) is O(1) instead of O(A), which keeps the router cheap for many modalities.
    """

    def __init__(self, input_dim: int, attention_dim: int):
        super().__init__()
        self.scale = 1.0 / math.sqrt(attention_dim)
        self.query = nn.Linear(input_dim, attention_dim)
        self.key = nn.Linear(2, attention_dim, bias=False)
        self.value = nn.Linear(2, attention_dim)

    def forward(self, query_input: Tensor, pair_features: Tensor, pair_mask: Tensor | None = None) -> Tensor:
        """query_input `(..., input_dim)`, pair_features `(..., P, 2)`, pair_mask `(..., P)` bool (False = not a
        partner) → context `(..., attention_dim)`, zeros where a token has no partner."""
        query_in_feature_space = self.query(query_input) @ self.key.weight
        scores = (query_in_feature_space.unsqueeze(-2) * pair_features).sum(-1) * self.scale
        if pair_mask is None:
            return self.value((scores.softmax(-1).unsqueeze(-1) * pair_features).sum(-2))
        has_partner = pair_mask.any(-1, keepdim=True)
        scores = scores.masked_fill(~pair_mask, float("-inf")).masked_fill(~has_partner, 0.0)
        weights = scores.softmax(-1) * has_partner
        return self.value((weights.unsqueeze(-1) * pair_features).sum(-2)) * has_partner


__all__ = [
    "MergeRusContextAttention",
    "PairConditions",
    "jensen_shannon_divergence",
    "lag_index",
    "pair_conditions",
    "per_modality_uniqueness",
    "resolve_thresholds",
    "rus_losses",
    "token_lags",
    "validate_rus_tables",
]
