"""RUS-aware gates for Hugging Face mixture-of-experts causal language models (METHOD.md §3).

`install_rus_router(model, rus)` replaces the gate of every MoE block of a transformers Mixtral, Qwen2-MoE,
Qwen3-MoE or OLMoE model with a subclass of the stock `<Model>TopKRouter` that keeps the stock `weight` and
adds a zero-initialised RUS correction to its logits, so at installation the routing is exactly the stock
routing. The subclass keeps transformers' router-logit capture (`output_router_logits=True`) and therefore
the load-balancing loss working.

Token modalities. Every token carries a modality id: 0 is text, 1..M are the RUS sidecar's modalities in
its order. Pass `modality_ids` (B, S) int64 beside `input_ids` to the model's forward, or wrap calls
(`generate` included) in `routing.tokens(modality_ids)`. Tokens without an id (missing ids, or tokens
generated past the given ids) are text.

RUS of text. The sidecar holds [M, M, L] tensors over the non-text modalities. Text is added as modality 0
with every R, U and S entry involving text set to `RusGateConfig.text_rus_bits` (default 0 bits: nothing
is known about how text shares information with the sensors, so no RUS loss involves text).

Lag of a token. A token of modality m that is the n-th of the N_m tokens of m in its sample uses lag
ℓ = min(⌊n·L/N_m⌋, L−1), the equal-segment rule of MergeModel's router (METHOD.md §2); text tokens use
lag 0 (the text rows do not depend on the lag). `rus_lag_ids` (B, S) overrides it.

Router (per token x): h = ReLU(W_h x); c = attention of h over the [R, S] features of the partner
modalities present at or before the token (MergeRusContextAttention); logits = W x + W_o ReLU(W_m
[h; c; U]) with W_o, b_o zero at installation. MergeModel's GRU over time is left out: a causal LM decodes
one token at a time from a KV cache that has no slot for a GRU state, and a per-token gate keeps cached
and uncached decoding identical.

Auxiliary losses (METHOD.md §2, computed by `rus_routing.py`, the code MergeModel uses: the same thresholds,
per-modality uniqueness U_m = max_j U[m, j], pair conditions and R/U/S losses, synergy target included) on the
gates' softmax probabilities, pooled per (sample, modality, lag):
p̄[b, m, ℓ] is the mean router distribution of the tokens of modality m at lag ℓ in sample b; pairs of
modalities present at the same lag play the role of MergeModel's same-step token pairs. Synergy promotion
needs designated experts (`RusGateConfig.synergy_experts`, e.g. experts that a fine-tuning run reserves
for cross-modal tokens); a pretrained LM has none, so the default leaves the synergy loss out. The sum is
added to `outputs.loss` and reported as `outputs.rus_aux_loss` / `outputs.rus_aux_losses`.

Saving and reloading. `save_pretrained` keeps the gate's extra parameters, the RUS tables
(`rus_routing.*` buffers) and `config.rus_router`. Reload with `rus_router_class(MixtralForCausalLM)
.from_pretrained(path)`: the subclass re-installs the gates from `config.rus_router` before the weights
are loaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.cache_utils import Cache
from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter
from transformers.models.olmoe.modeling_olmoe import OlmoeTopKRouter
from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeTopKRouter
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeTopKRouter
from transformers.utils.generic import ModelOutput

from .configuration_merge import RusRoutingConfig
from .rus_routing import (
    MergeRusContextAttention,
    PairConditions,
    lag_index,
    pair_conditions,
    per_modality_uniqueness,
    resolve_thresholds,
    rus_losses,
    validate_rus_tables,
)

TEXT_MODALITY = "text"
TEXT_MODALITY_ID = 0


@dataclasses.dataclass
class RusGateConfig(RusRoutingConfig):
    """Settings of the RUS-aware gates and their auxiliary losses: the fields shared with MergeConfig
    (`RusRoutingConfig`: router sizes, thresholds, loss weights and form, same names, meanings and checks) plus
    two LLM-only fields.

    Thresholds are percentiles (0–100) of the sensor tables' values (`threshold_mode="percentile"`, the paper's
    recommendation) or bits (`"absolute"`), resolved by `rus_routing.resolve_thresholds` like MergeModel's.
    `text_rus_bits` fills every R, U and S entry involving text. `synergy_experts` lists the experts the synergy
    loss promotes; empty (the default) leaves the synergy loss out.
    """

    text_rus_bits: float = 0.0
    synergy_experts: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.validate_rus_routing()
        if not (isinstance(self.text_rus_bits, (int, float)) and 0 <= self.text_rus_bits < float("inf")):
            raise ValueError(f"RusGateConfig.text_rus_bits must be a finite number >= 0 bits (got {self.text_rus_bits!r}).")
        self.synergy_experts = tuple(int(e) for e in self.synergy_experts)
        if len(set(self.synergy_experts)) != len(self.synergy_experts) or any(e < 0 for e in self.synergy_experts):
            raise ValueError(f"RusGateConfig.synergy_experts must be distinct expert ids >= 0 (got {self.synergy_experts}).")


@dataclasses.dataclass
class TokenRusFeatures:
    """RUS inputs of the N = B·S tokens of the current forward, shared by every gate."""

    pair_features: Tensor  # (N, M+1, 2) [R, S] of (own modality, partner) at the token's lag, bits
    pair_mask: Tensor  # (N, M+1) bool, True = partner present at or before the token
    uniqueness: Tensor  # (N, 1) U of the own modality at the token's lag (max over its pairs), bits
    modality_ids: Tensor  # (B, S) int64
    lag_ids: Tensor  # (B, S) int64


class RusTokenState:
    """Per-forward state the gates read their token features from and record their routing into."""

    def __init__(self, text_features: Callable[[int], TokenRusFeatures]) -> None:
        self.features: TokenRusFeatures | None = None  # of the forward in progress
        self.last_features: TokenRusFeatures | None = None  # of the latest forward, for its recorded routing
        self.router_probs: list[Tensor] = []  # per gate call, (N, E) float32
        self.router_indices: list[Tensor] = []  # per gate call, (N, k) int64
        self.text_features = text_features

    def features_for(self, num_tokens: int) -> TokenRusFeatures:
        """The features of the current forward, or all-text features outside a forward of the model."""
        if self.features is None:
            return self.text_features(num_tokens)
        if self.features.pair_mask.shape[0] != num_tokens:
            batch_size, seq_len = self.features.modality_ids.shape
            raise ValueError(
                f"the RUS gate received {num_tokens} tokens but the model's forward was given "
                f"{batch_size}×{seq_len} = {batch_size * seq_len}; modality_ids must describe the tokens of "
                "input_ids / inputs_embeds"
            )
        return self.features

    def record(self, router_probs: Tensor, router_indices: Tensor) -> None:
        self.router_probs.append(router_probs)
        self.router_indices.append(router_indices)


class RusRoutingPath(nn.Module):
    """Zero-initialised RUS correction to a gate's logits: (N, hidden) tokens → (N, E) logit offsets."""

    def __init__(self, hidden_size: int, num_experts: int, config: RusGateConfig):
        super().__init__()
        self.hidden = nn.Linear(hidden_size, config.router_hidden_dim)
        self.context = MergeRusContextAttention(config.router_hidden_dim, config.router_attention_dim)
        self.mixer = nn.Linear(config.router_hidden_dim + config.router_attention_dim + 1, config.router_hidden_dim)
        self.output = nn.Linear(config.router_hidden_dim, num_experts)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, hidden_states: Tensor, features: TokenRusFeatures) -> Tensor:
        dtype = self.hidden.weight.dtype
        h = F.relu(self.hidden(hidden_states.to(dtype)))
        context = self.context(h, features.pair_features.to(dtype), features.pair_mask)
        mixed = F.relu(self.mixer(torch.cat([h, context, features.uniqueness.to(dtype)], dim=-1)))
        return self.output(mixed)


class RusGateMixin:
    """Turns a stock `<Model>TopKRouter` into a RUS-aware gate with the same (logits, scores, indices)."""

    scores_in_logit_dtype: bool = True

    def __init__(self, config: Any, gate_config: RusGateConfig, token_state: RusTokenState):
        super().__init__(config)
        self.rus_path = RusRoutingPath(self.hidden_dim, self.num_experts, gate_config)
        self.token_state = token_state

    def forward(self, hidden_states: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(N, hidden) → router_logits (N, E), router_scores (N, k), router_indices (N, k) int64."""
        hidden_states = hidden_states.reshape(-1, self.hidden_dim)
        features = self.token_state.features_for(hidden_states.shape[0])
        rus_offset = self.rus_path(hidden_states, features)
        router_logits = F.linear(hidden_states, self.weight) + rus_offset.to(hidden_states.dtype)
        router_probs = F.softmax(router_logits, dim=-1, dtype=torch.float)
        router_scores, router_indices = torch.topk(router_probs, self.top_k, dim=-1)
        if getattr(self, "norm_topk_prob", True):
            router_scores = router_scores / router_scores.sum(dim=-1, keepdim=True)
        if self.scores_in_logit_dtype:
            router_scores = router_scores.to(router_logits.dtype)
        self.token_state.record(router_probs, router_indices)
        return router_logits, router_scores, router_indices


class RusMixtralTopKRouter(RusGateMixin, MixtralTopKRouter):
    """Mixtral gate with the RUS path (Mixtral always renormalises the top-k and keeps float32 scores)."""

    scores_in_logit_dtype = False


class RusQwen2MoeTopKRouter(RusGateMixin, Qwen2MoeTopKRouter):
    """Qwen2-MoE gate with the RUS path (the shared-expert sigmoid gate is left as it is)."""


class RusQwen3MoeTopKRouter(RusGateMixin, Qwen3MoeTopKRouter):
    """Qwen3-MoE gate with the RUS path."""


class RusOlmoeTopKRouter(RusGateMixin, OlmoeTopKRouter):
    """OLMoE gate with the RUS path."""


RUS_GATE_FOR_STOCK_GATE: dict[type[nn.Module], type[nn.Module]] = {
    MixtralTopKRouter: RusMixtralTopKRouter,
    Qwen2MoeTopKRouter: RusQwen2MoeTopKRouter,
    Qwen3MoeTopKRouter: RusQwen3MoeTopKRouter,
    OlmoeTopKRouter: RusOlmoeTopKRouter,
}
SUPPORTED_MODEL_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")


class RusRouting(nn.Module):
    """The RUS tables (text included) and the per-forward token state shared by a model's RUS gates."""

    def __init__(
        self,
        redundancy: Tensor,
        uniqueness: Tensor,
        synergy: Tensor,
        modality_names: list[str],
        gate_config: RusGateConfig,
    ):
        super().__init__()
        redundancy, uniqueness, synergy = self._with_text_row(
            (redundancy, uniqueness, synergy), modality_names, gate_config.text_rus_bits
        )
        self.register_buffer("redundancy", redundancy)  # (M+1, M+1, L) bits, index 0 = text
        self.register_buffer("uniqueness", uniqueness)  # [i, j, ℓ] = U_i within the pair (i, j)
        self.register_buffer("synergy", synergy)
        self.modality_names = [TEXT_MODALITY, *modality_names]
        self.gate_config = gate_config
        self.token_state = RusTokenState(self._text_features)
        self.pending_ids: tuple[Tensor, Tensor | None] | None = None

    @property
    def num_lags(self) -> int:
        return self.redundancy.shape[-1]

    @staticmethod
    def _with_text_row(tables: tuple[Tensor, Tensor, Tensor], modality_names: list[str], text_bits: float
                       ) -> list[Tensor]:
        """The sensor tables ([M, M, L], validated by `rus_routing.validate_rus_tables`) padded with the text row
        and column (`text_bits`, 0 on the text diagonal) → [M+1, M+1, L] each."""
        num_modalities = len(modality_names)
        validated = validate_rus_tables(*tables, (num_modalities, num_modalities, None), f"M = {num_modalities}: "
                                        f"{modality_names}")
        num_lags = validated["redundancy"].shape[2]
        padded_tables = []
        for table in validated.values():
            padded = torch.full((num_modalities + 1, num_modalities + 1, num_lags), float(text_bits))
            padded[1:, 1:] = table
            padded[TEXT_MODALITY_ID, TEXT_MODALITY_ID] = 0.0
            padded_tables.append(padded)
        return padded_tables

    def _text_features(self, num_tokens: int) -> TokenRusFeatures:
        ids = torch.zeros(1, num_tokens, dtype=torch.long, device=self.redundancy.device)
        return self.token_features(ids, None, batch_size=1, offset=0, seq_len=num_tokens)

    def set_rus(self, redundancy: Tensor, uniqueness: Tensor, synergy: Tensor) -> None:
        """Replace the tables ([M, M, L] over the non-text modalities, same names and lags)."""
        padded = self._with_text_row((redundancy, uniqueness, synergy), self.modality_names[1:],
                                     self.gate_config.text_rus_bits)
        if padded[0].shape != self.redundancy.shape:
            raise ValueError(f"RUS tables must have {self.num_lags} lags, got {padded[0].shape[-1]}")
        for name, table in zip(("redundancy", "uniqueness", "synergy"), padded):
            getattr(self, name).copy_(table)

    @contextlib.contextmanager
    def tokens(self, modality_ids: Tensor, lag_ids: Tensor | None = None) -> Iterator[None]:
        """Route every forward inside the block (generation included) with these (B, S) modality ids."""
        self.pending_ids = (modality_ids, lag_ids)
        try:
            yield
        finally:
            self.pending_ids = None

    def _check_ids(self, ids: Tensor, name: str, batch_size: int, upper: int, names: str) -> Tensor:
        ids = torch.as_tensor(ids, device=self.redundancy.device)
        if ids.dim() != 2 or ids.shape[0] != batch_size:
            raise ValueError(f"{name} must be (batch={batch_size}, seq_len) like input_ids, got {tuple(ids.shape)}")
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise ValueError(f"{name} must hold integers, got {ids.dtype}")
        if ids.numel() and (ids.min() < 0 or ids.max() >= upper):
            raise ValueError(f"{name} must lie in [0, {upper}) ({names}), got values in [{ids.min()}, {ids.max()}]")
        return ids.long()

    def _default_lags(self, given_ids: Tensor) -> Tensor:
        """ℓ = min(⌊n·L/N_m⌋, L−1) for the n-th of the N_m tokens of modality m in a sample; 0 for text."""
        one_hot = F.one_hot(given_ids, len(self.modality_names))  # (B, S, M+1)
        index_in_stream = (one_hot.cumsum(dim=1) - 1).gather(2, given_ids.unsqueeze(-1)).squeeze(-1)
        stream_length = one_hot.sum(dim=1).gather(1, given_ids)
        lags = lag_index(index_in_stream, stream_length, self.num_lags)
        return torch.where(given_ids == TEXT_MODALITY_ID, torch.zeros_like(lags), lags)

    def token_features(
        self, modality_ids: Tensor, lag_ids: Tensor | None, batch_size: int, offset: int, seq_len: int
    ) -> TokenRusFeatures:
        """Features of the tokens at columns [offset, offset + seq_len) of (B, ·) modality ids."""
        names = ", ".join(f"{i}={n}" for i, n in enumerate(self.modality_names))
        given_ids = self._check_ids(modality_ids, "modality_ids", batch_size, len(self.modality_names), names)
        given_lags = (
            self._default_lags(given_ids)
            if lag_ids is None
            else self._check_ids(lag_ids, "rus_lag_ids", batch_size, self.num_lags, f"{self.num_lags} lags")
        )
        if given_lags.shape != given_ids.shape:
            raise ValueError(f"rus_lag_ids {tuple(given_lags.shape)} must match modality_ids {tuple(given_ids.shape)}")
        total = offset + seq_len
        pad = max(total - given_ids.shape[1], 0)
        known_ids = F.pad(given_ids, (0, pad), value=TEXT_MODALITY_ID)[:, :total]
        known_lags = F.pad(given_lags, (0, pad), value=0)[:, :total]
        one_hot = F.one_hot(known_ids, len(self.modality_names)).bool()  # (B, total, M+1)
        present = one_hot.cummax(dim=1).values[:, offset:]
        own, lag = known_ids[:, offset:], known_lags[:, offset:]
        pair_features = torch.stack([self.redundancy[own, :, lag], self.synergy[own, :, lag]], dim=-1)
        uniqueness = per_modality_uniqueness(self.uniqueness)[own, lag].unsqueeze(-1)
        num_tokens = batch_size * seq_len
        return TokenRusFeatures(
            pair_features=pair_features.reshape(num_tokens, -1, 2),
            pair_mask=(present & ~one_hot[:, offset:]).reshape(num_tokens, -1),
            uniqueness=uniqueness.reshape(num_tokens, 1),
            modality_ids=own,
            lag_ids=lag,
        )

    def begin_forward(self, batch_size: int, seq_len: int, offset: int, modality_ids: Tensor | None,
                      lag_ids: Tensor | None) -> None:
        if modality_ids is None and self.pending_ids is not None:
            modality_ids, lag_ids = self.pending_ids
        if modality_ids is None:
            modality_ids = torch.zeros(batch_size, 0, dtype=torch.long, device=self.redundancy.device)
        self.token_state.features = self.token_features(modality_ids, lag_ids, batch_size, offset, seq_len)
        self.token_state.router_probs, self.token_state.router_indices = [], []

    def end_forward(self) -> None:
        self.token_state.last_features, self.token_state.features = self.token_state.features, None

    def _recorded_features(self) -> TokenRusFeatures:
        features = self.token_state.features or self.token_state.last_features
        if features is None or not self.token_state.router_probs:
            raise ValueError("no routing recorded yet: run a forward of the routed model first")
        return features

    def begin_forward_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Forward pre-hook of the routed model: takes `modality_ids` / `rus_lag_ids` out of its kwargs."""
        modality_ids = kwargs.pop("modality_ids", None)
        lag_ids = kwargs.pop("rus_lag_ids", None)
        batch_size, seq_len = _token_shape(args, kwargs)
        self.begin_forward(batch_size, seq_len, _decoding_offset(args, kwargs), modality_ids, lag_ids)
        return args, kwargs

    def end_forward_hook(self, module: nn.Module, args: tuple, output: Any) -> Any:
        """Forward hook of the routed model: adds the RUS losses to `output.loss` (ModelOutput only)."""
        try:
            if isinstance(output, ModelOutput) and self.token_state.router_probs:
                losses = self.auxiliary_losses()
                output["rus_aux_loss"] = losses["total"]
                output["rus_aux_losses"] = losses
                if output.get("loss") is not None:
                    output["loss"] = output["loss"] + losses["total"].to(output["loss"].device)
        finally:
            self.end_forward()
        return output

    def _pooled_probs(self) -> tuple[Tensor, Tensor]:
        """Mean router distribution per (layer, sample, modality, lag) (G, B, M+1, L, E) and presence (B, M+1, L).

        The pooled (sample, modality, lag) cells play the role of MergeModel's same-step token pairs in
        `rus_routing.rus_losses`.
        """
        features = self._recorded_features()
        batch_size, seq_len = features.modality_ids.shape
        probs = torch.stack(self.token_state.router_probs).reshape(-1, batch_size, seq_len, self.num_experts)
        group = features.modality_ids * self.num_lags + features.lag_ids  # (B, S)
        membership = F.one_hot(group, len(self.modality_names) * self.num_lags).to(probs.dtype)  # (B, S, K)
        counts = membership.sum(dim=1)  # (B, K)
        pooled = torch.einsum("bsk,gbse->gbke", membership, probs) / counts.clamp(min=1.0)[None, :, :, None]
        # absent groups get a uniform distribution: masked out of every loss, and finite JSD gradients
        pooled = torch.where(counts[None, :, :, None] > 0, pooled, torch.full_like(pooled, 1.0 / pooled.shape[-1]))
        shape = (batch_size, len(self.modality_names), self.num_lags)
        return pooled.reshape(probs.shape[0], *shape, -1), (counts > 0).reshape(shape)

    @property
    def num_experts(self) -> int:
        return self.token_state.router_probs[0].shape[-1]

    def thresholds(self) -> Tensor:
        """[τ_R, τ_U, τ_S] in bits `(3,)`, resolved over the sensor tables (text left out) by the rule MergeModel
        uses (`rus_routing.resolve_thresholds`)."""
        return resolve_thresholds(self.redundancy[1:, 1:], self.uniqueness[1:, 1:], self.synergy[1:, 1:],
                                  self.gate_config)

    def pair_conditions(self, pairs: Tensor) -> PairConditions:
        """Redundant / unique / synergistic masks `(Q, L)` of modality pairs `(Q, 2)` (ids, 0 = text) at every lag."""
        lags = torch.arange(self.num_lags, device=self.redundancy.device)
        return pair_conditions(self.redundancy, self.uniqueness, self.synergy, pairs.to(lags.device), lags,
                               self.thresholds(), self.gate_config)

    def rus_losses(self, pooled: Tensor, present: Tensor) -> dict[str, Tensor]:
        """Unweighted redundancy / uniqueness / synergy losses (`rus_routing.rus_losses`) of pooled router
        distributions `(G, B, M+1, L, E)` with presence `(B, M+1, L)`; every modality pair is a pair, every lag
        a cell, U_m is the per-modality uniqueness over the padded tables (text column included)."""
        num_modalities = len(self.modality_names)
        pairs = torch.triu_indices(num_modalities, num_modalities, offset=1, device=pooled.device).T
        first, second = pairs[:, 0], pairs[:, 1]
        conditions = self.pair_conditions(pairs)
        synergy_experts = torch.tensor(self.gate_config.synergy_experts, dtype=torch.long, device=pooled.device)
        # index_select: its CPU backward adds a modality's repeats in a fixed order (modeling_merge.py's docstring)
        return rus_losses(pooled.index_select(2, first), pooled.index_select(2, second),
                          present[:, first] & present[:, second], conditions, synergy_experts, self.gate_config)

    def auxiliary_losses(self) -> dict[str, Tensor]:
        """RUS losses of the current forward, weighted, averaged over MoE layers: redundancy, uniqueness, synergy
        (only with `synergy_experts`), total."""
        cfg = self.gate_config
        losses = self.rus_losses(*self._pooled_probs())
        if not cfg.synergy_experts:
            del losses["synergy"]
        losses = {name: getattr(cfg, f"{name}_loss_weight") * value for name, value in losses.items()}
        losses["total"] = sum(losses.values())
        return losses

    def expert_usage_by_modality(self) -> Tensor:
        """(M+1, E) share of each modality's top-k slots given to each expert in the last forward, all layers."""
        features = self._recorded_features()
        indices = torch.stack(self.token_state.router_indices)  # (G, N, k)
        slots = F.one_hot(indices, self.num_experts).sum(dim=2).float()  # (G, N, E)
        membership = F.one_hot(features.modality_ids.reshape(-1), len(self.modality_names)).float()  # (N, M+1)
        usage = torch.einsum("nm,gne->me", membership, slots)
        return usage / usage.sum(dim=-1, keepdim=True).clamp(min=1.0)


def _token_shape(args: tuple, kwargs: dict) -> tuple[int, int]:
    inputs = kwargs.get("input_ids", args[0] if args else None)
    if inputs is None:
        inputs = kwargs.get("inputs_embeds")
    if inputs is None:
        raise ValueError("the RUS-routed model needs input_ids or inputs_embeds")
    return inputs.shape[0], inputs.shape[1]


def _decoding_offset(args: tuple, kwargs: dict) -> int:
    """Number of tokens before this forward's first token, from the KV cache the host model was given.

    The cache is found by type, whatever keyword or position the host passes it under (transformers renamed
    `past_key_values` to `cache`); `cache_position` is used where a host passes one but no cache object. A
    forward without a cache starts at 0. A cache-like argument that is not a `transformers` `Cache` is an
    error: guessing 0 would take every decoded token's RUS features from the prompt's first positions.
    """
    caches = [value for value in (*args, *kwargs.values()) if isinstance(value, Cache)]
    if len(caches) > 1:
        raise ValueError(f"the RUS-routed model was given {len(caches)} KV caches; expected at most one")
    if caches:
        return int(caches[0].get_seq_length())
    cache_position = kwargs.get("cache_position")
    if cache_position is not None:
        positions = torch.as_tensor(cache_position).reshape(-1)
        return int(positions[0]) if positions.numel() else 0
    unknown = [name for name, value in kwargs.items()
               if value is not None and ("cache" in name or "past_key" in name) and not isinstance(value, bool)]
    if unknown:
        raise ValueError(
            f"the RUS-routed model was given {unknown} of type {[type(kwargs[n]).__name__ for n in unknown]}: "
            "the RUS gates need a transformers Cache (or cache_position) to place decoded tokens in their sequence"
        )
    return 0


def _replace_gate(parent: nn.Module, name: str, stock: nn.Module, lm_config: Any, routing: RusRouting) -> None:
    gate = RUS_GATE_FOR_STOCK_GATE[type(stock)](lm_config, routing.gate_config, routing.token_state)
    gate.weight = stock.weight
    gate.rus_path.to(device=stock.weight.device, dtype=stock.weight.dtype)
    for hooks in ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                  "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs"):
        getattr(gate, hooks).update(getattr(stock, hooks))
    gate.train(stock.training)
    setattr(parent, name, gate)


def install_rus_router(
    model: nn.Module,
    rus: Any,
    modality_names: list[str] | None = None,
    gate_config: RusGateConfig | None = None,
) -> RusRouting:
    """Replace every MoE gate of `model` with its RUS-aware subclass and return the shared `RusRouting`.

    `rus`: an object with `redundancy`, `uniqueness`, `synergy` tensors [M, M, L] in bits (a `RusSidecar`);
    `modality_names`: the M non-text modality names in table order (default `rus.metadata["modality_names"]`).
    The routing module is attached as `model.rus_routing`; `model.config.rus_router` records what a reload needs.
    """
    if modality_names is None:
        metadata = getattr(rus, "metadata", None)
        modality_names = metadata.get("modality_names") if isinstance(metadata, dict) else None
        modality_names = modality_names or getattr(metadata, "modality_names", None)
    if not modality_names:
        raise ValueError("install_rus_router needs modality_names (none given and none in rus.metadata)")
    modality_names = list(modality_names)
    if TEXT_MODALITY in modality_names:
        raise ValueError(f"{TEXT_MODALITY!r} is the built-in text modality (id 0); rename the sidecar's modality")
    gate_config = gate_config or RusGateConfig()
    gates = [(name, module) for name, module in model.named_modules() if type(module) in RUS_GATE_FOR_STOCK_GATE]
    if not gates:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        if any(isinstance(module, RusGateMixin) for module in model.modules()):
            raise ValueError("the RUS router is already installed; use model.rus_routing.set_rus(...) to change RUS")
        raise ValueError(
            f"no supported MoE gate in {model_type!r}; install_rus_router supports {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    device = gates[0][1].weight.device
    routing = RusRouting(rus.redundancy, rus.uniqueness, rus.synergy, modality_names, gate_config).to(device)
    if gate_config.synergy_experts and max(gate_config.synergy_experts) >= gates[0][1].num_experts:
        raise ValueError(f"synergy_experts {gate_config.synergy_experts} exceed the {gates[0][1].num_experts} experts")
    for name, stock in gates:
        parent_name, _, attribute = name.rpartition(".")
        _replace_gate(model.get_submodule(parent_name), attribute, stock, model.config, routing)
    model.rus_routing = routing
    model.register_forward_pre_hook(routing.begin_forward_hook, with_kwargs=True)  # bound: deepcopy rebinds them
    model.register_forward_hook(routing.end_forward_hook)
    model.config.rus_router = {
        "modality_names": modality_names,
        "num_lags": routing.num_lags,
        **dataclasses.asdict(gate_config),
    }
    return routing


@dataclasses.dataclass
class _ZeroRus:
    """Placeholder tables of the right shape; the checkpoint's `rus_routing.*` buffers replace them."""

    redundancy: Tensor
    uniqueness: Tensor
    synergy: Tensor


@functools.cache
def rus_router_class(model_class: type[nn.Module]) -> type[nn.Module]:
    """A subclass of `model_class` whose `__init__` re-installs the RUS gates recorded in `config.rus_router`.

    `rus_router_class(MixtralForCausalLM).from_pretrained(path)` reloads a saved RUS-routed model.
    """

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        model_class.__init__(self, config, *args, **kwargs)
        settings = dict(getattr(config, "rus_router", None) or {})
        if not settings:
            raise ValueError(f"{type(self).__name__} needs config.rus_router (saved by install_rus_router)")
        names = list(settings.pop("modality_names"))
        shape = (len(names), len(names), settings.pop("num_lags"))
        zeros = _ZeroRus(torch.zeros(shape), torch.zeros(shape), torch.zeros(shape))
        install_rus_router(self, zeros, names, RusGateConfig(**settings))

    return type(f"Rus{model_class.__name__}", (model_class,), {"__init__": __init__, "__module__": __name__})
