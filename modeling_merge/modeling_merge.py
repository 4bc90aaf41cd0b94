"""MERGE: a mixture-of-experts model for massively multimodal time series with an RUS-guided router.

METHOD.md §2. Shapes use B = batch, M = modalities, T = token-grid length, D = d_model, E = experts,
k = experts per token, L = RUS lags, P = router partners per modality. RUS values are in bits.

Rows that carry gradients are gathered with ``index_select``, not tensor indexing: the backward of ``x[index]``
is an accumulating ``index_put_``, which on CPU adds repeated indices in a thread-dependent order, so a seeded
run would not repeat itself; ``index_select``'s backward (``index_add_``) adds them in order.

This file, ``rus_routing.py`` (the RUS-routing rules, shared with ``llm.py``) and ``configuration_merge.py`` are
the flat set that a checkpoint carries for ``trust_remote_code``: they import each other only with same-folder
relative imports.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_merge import MergeConfig
from .rus_routing import (
    MergeRusContextAttention,
    PairConditions,
    jensen_shannon_divergence,
    pair_conditions,
    per_modality_uniqueness,
    resolve_thresholds,
    rus_losses,
    token_lags,
    validate_rus_tables,
)

RUS_BUFFERS = ("rus_redundancy", "rus_uniqueness", "rus_synergy")


@dataclass
class MergeModelOutput(ModelOutput):
    """
    Args:
        last_hidden_state (`(B, M, T, D)`): token states after the last block (absent modalities included).
        pooler_output (`(B, D)`): LayerNorm, then mean over time and over present modalities.
        token_pooler_output (`(B, T, D)`): LayerNorm, then mean over present modalities at each token step.
        aux_loss (`()`): weighted sum of the auxiliary losses, averaged over MoE layers.
        aux_losses (`dict[str, Tensor]`): unweighted terms `redundancy`, `uniqueness` (already negative: it
            pushes apart), `synergy`, `load_balance`, each averaged over MoE layers;
            `aux_loss = Σ weight_name · aux_losses[name]`.
        router_probs (`tuple[(B, M, T, E)]`): router probabilities per MoE layer (`output_router_probs=True`).
        selected_experts (`tuple[(B, M, T, k)]`): chosen expert ids per MoE layer (`output_router_probs=True`).
        hidden_states (`tuple[(B, M, T, D)]`): the encoders' output, then the output of every block
            (`output_hidden_states=True`; num_blocks + 1 entries).
        attentions (`tuple[(B, M, H, T, T)]`): self-attention weights of every block (`output_attentions=True`,
            eager attention only).
        router_logits (`tuple[(B, M, T, E)]`): router logits per MoE layer, float32 (`output_router_logits=True`).
    """

    last_hidden_state: Tensor | None = None
    pooler_output: Tensor | None = None
    token_pooler_output: Tensor | None = None
    aux_loss: Tensor | None = None
    aux_losses: dict[str, Tensor] | None = None
    router_probs: tuple[Tensor, ...] | None = None
    selected_experts: tuple[Tensor, ...] | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None
    router_logits: tuple[Tensor, ...] | None = None


@dataclass
class MergeSequenceClassifierOutput(ModelOutput):
    """
    Args:
        loss (`()`): the head's loss for `config.problem_type` + `aux_loss` (when `labels` are given).
        logits (`(B, num_labels)`): class logits, or regression outputs for `problem_type="regression"`.
        aux_loss, aux_losses, router_probs, selected_experts, hidden_states, attentions, router_logits: as in
            [`MergeModelOutput`].
    """

    loss: Tensor | None = None
    logits: Tensor | None = None
    aux_loss: Tensor | None = None
    aux_losses: dict[str, Tensor] | None = None
    router_probs: tuple[Tensor, ...] | None = None
    selected_experts: tuple[Tensor, ...] | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None
    router_logits: tuple[Tensor, ...] | None = None


@dataclass
class MergeTokenClassifierOutput(MergeSequenceClassifierOutput):
    """
    Args:
        loss (`()`): cross-entropy over the labelled steps (−100 ignored) + `aux_loss` (when `labels` are given).
        logits (`(B, T, num_labels)`): class logits of every step of the token grid.
        Others: as in [`MergeSequenceClassifierOutput`].
    """


@dataclass
class MergeRusContext:
    """RUS lookups for one forward pass (token grid of length T), shared by all MoE layers.

    Attributes:
        pair_features: `(M, T, P, 2)` [R, S] of (modality m, its p-th partner) at each token's lag.
        pair_mask: `(B, M, 1, P)` bool, partner present in the sample.
        token_uniqueness: `(M, T)` U_m at each token's lag (max over partners).
        loss_pairs: `(Q, 2)` modality pairs m < n that the RUS losses look at.
        conditions: `(Q, T)` redundant / unique / synergistic masks of the loss pairs at each token's lag.
    """

    pair_features: Tensor
    pair_mask: Tensor
    token_uniqueness: Tensor
    loss_pairs: Tensor
    conditions: PairConditions


def sinusoidal_positions(num_tokens: int, dim: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Sinusoidal position table `(T, dim)` (sin on even, cos on odd channels)."""
    position = torch.arange(num_tokens, device=device, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(num_tokens, dim, device=device)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table.to(dtype)


class MergeAttention(nn.Module):
    """Multi-head attention of `query_states (N, Tq, D)` over `key_value_states (N, Tk, D)`; `attention_mask`
    `(N, Tq, Tk)` bool, True = may attend. `config._attn_implementation` chooses the kernel at each call through
    transformers' attention interface: `"sdpa"` (the default; no weights returned) or `"eager"`
    (`eager_attention_forward`, which also returns the attention weights `(N, H, Tq, Tk)`). `dropout`: the rate on
    the attention probabilities in training."""

    def __init__(self, config: MergeConfig, dropout: float):
        super().__init__()
        self.config = config
        self.is_causal = False
        self.num_heads = config.num_attention_heads
        self.head_dim = config.d_model // config.num_attention_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(config.d_model, config.d_model)
        self.k_proj = nn.Linear(config.d_model, config.d_model)
        self.v_proj = nn.Linear(config.d_model, config.d_model)
        self.o_proj = nn.Linear(config.d_model, config.d_model)

    def _heads(self, states: Tensor) -> Tensor:
        return states.view(*states.shape[:2], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, query_states: Tensor, key_value_states: Tensor, attention_mask: Tensor | None = None
                ) -> tuple[Tensor, Tensor | None]:
        """→ (outputs `(N, Tq, D)`, attention weights `(N, H, Tq, Tk)` with `"eager"`, else None)."""
        return self.attend(query_states, self.k_proj(key_value_states), self.v_proj(key_value_states), attention_mask)

    def attend(self, query_states: Tensor, keys: Tensor, values: Tensor, attention_mask: Tensor | None = None
               ) -> tuple[Tensor, Tensor | None]:
        """As `forward`, with keys and values already projected (`k_proj`, `v_proj`), `(N, Tk, D)` each; the mask
        may broadcast over queries (`(N, 1, Tk)`)."""
        query, key, value = self._heads(self.q_proj(query_states)), self._heads(keys), self._heads(values)
        mask = None if attention_mask is None else attention_mask[:, None]
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation or "sdpa",
                                                                    eager_attention_forward)
        attended, weights = attention_interface(self, query, key, value, mask, dropout=self.dropout if self.training
                                                else 0.0, scaling=None, is_causal=False)
        return self.o_proj(attended.reshape(query_states.shape)), weights


def eager_attention_forward(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                            dropout: float = 0.0, scaling: float | None = None, **kwargs) -> tuple[Tensor, Tensor]:
    """softmax(Q Kᵀ · scaling) V in plain torch, `(N, H, T, d)` heads, bool mask True = may attend; scaling defaults to
    1/√d like SDPA → (outputs `(N, Tq, H, d)`, weights `(N, H, Tq, Tk)`)."""
    scores = query @ key.transpose(-1, -2) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    weights = F.dropout(scores.softmax(-1), p=dropout, training=module.training)
    return (weights @ value).transpose(1, 2), weights


class MergeFeedForward(nn.Module):
    """Linear(D → hidden) – ReLU – Dropout – Linear(hidden → D), per token."""

    def __init__(self, config: MergeConfig, hidden_dim: int):
        super().__init__()
        self.fc_in = nn.Linear(config.d_model, hidden_dim)
        self.fc_out = nn.Linear(hidden_dim, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.fc_out(self.dropout(F.relu(self.fc_in(hidden_states))))


class MergeSelfAttentionSublayer(nn.Module):
    """Post-LN self-attention sublayer over the time axis of `(N, T, D)`: LN(x + Dropout(Attn(x))); returns the
    attention weights too (`(N, H, T, T)` with eager attention, else None)."""

    def __init__(self, config: MergeConfig):
        super().__init__()
        self.attention = MergeAttention(config, config.dropout)
        self.dropout = nn.Dropout(config.dropout)
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)

    def forward(self, hidden_states: Tensor) -> tuple[Tensor, Tensor | None]:
        attended, weights = self.attention(hidden_states, hidden_states)
        return self.norm(hidden_states + self.dropout(attended)), weights


class MergeEncoderLayer(GradientCheckpointingLayer):
    """Post-LN Transformer encoder layer on `(N, T, D)` (checkpointed under gradient checkpointing)."""

    def __init__(self, config: MergeConfig):
        super().__init__()
        self.self_attention = MergeSelfAttentionSublayer(config)
        self.feed_forward = MergeFeedForward(config, config.ffn_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)

    def forward(self, hidden_states: Tensor) -> Tensor:
        hidden_states, _ = self.self_attention(hidden_states)
        return self.norm(hidden_states + self.dropout(self.feed_forward(hidden_states)))


class MergeConvResidual(nn.Module):
    """Two Conv1d(k=3) + BatchNorm + ReLU layers with a residual connection, on `(N, T, D)`."""

    def __init__(self, config: MergeConfig):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv1d(config.d_model, config.d_model, kernel_size=3, padding=1),
            nn.BatchNorm1d(config.d_model),
            nn.ReLU(),
            nn.Conv1d(config.d_model, config.d_model, kernel_size=3, padding=1),
            nn.BatchNorm1d(config.d_model),
            nn.ReLU(),
        )

    def forward(self, hidden_states: Tensor) -> Tensor:
        return hidden_states + self.layers(hidden_states.transpose(1, 2)).transpose(1, 2)


class MergeModalityEncoder(nn.Module):
    """One modality `(B, T·patch, C)` → tokens `(B, T, D)`: strided Conv1d patch embedding · √D, optional conv
    residual, sinusoidal positions, Transformer layers, LayerNorm."""

    def __init__(self, config: MergeConfig, channels: int, patch_size: int):
        super().__init__()
        self.scale = math.sqrt(config.d_model)
        self.patch_embedding = nn.Conv1d(channels, config.d_model, kernel_size=patch_size, stride=patch_size)
        self.conv = MergeConvResidual(config) if config.use_encoder_conv else None
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(MergeEncoderLayer(config) for _ in range(config.num_encoder_layers))
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)

    def forward(self, values: Tensor) -> Tensor:
        hidden_states = self.patch_embedding(values.transpose(1, 2)).transpose(1, 2) * self.scale
        if self.conv is not None:
            hidden_states = self.conv(hidden_states)
        positions = sinusoidal_positions(hidden_states.shape[1], hidden_states.shape[2], values.device, values.dtype)
        hidden_states = self.dropout(hidden_states + positions)
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return self.norm(hidden_states)


class MergeRusRouter(nn.Module):
    """MERGE router: h = ReLU(W_h x); c = RUS context attention; r = GRU over t of [U_m(ℓ(t)); c];
    logits = MLP([h; r]). Vectorised over (B, M, T): `(B, M, T, D)` → logits `(B, M, T, E)`."""

    def __init__(self, config: MergeConfig):
        super().__init__()
        self.hidden = nn.Linear(config.d_model, config.router_hidden_dim)
        self.context_attention = MergeRusContextAttention(config.router_hidden_dim, config.router_attention_dim)
        self.gru = nn.GRU(1 + config.router_attention_dim, config.router_gru_dim, batch_first=True)
        self.mlp = nn.Sequential(
            nn.Linear(config.router_hidden_dim + config.router_gru_dim, config.router_hidden_dim),
            nn.ReLU(),
            nn.Linear(config.router_hidden_dim, config.num_experts),
        )

    def forward(self, hidden_states: Tensor, rus: MergeRusContext) -> Tensor:
        batch, num_modalities, num_tokens, _ = hidden_states.shape
        hidden = F.relu(self.hidden(hidden_states))
        context = self.context_attention(hidden, rus.pair_features.to(hidden.dtype), rus.pair_mask)
        uniqueness = rus.token_uniqueness.to(hidden.dtype)[None, :, :, None].expand(batch, -1, -1, 1)
        gru_input = torch.cat([uniqueness, context], dim=-1).reshape(batch * num_modalities, num_tokens, -1)
        recurrent, _ = self.gru(gru_input)
        recurrent = recurrent.reshape(batch, num_modalities, num_tokens, -1)
        return self.mlp(torch.cat([hidden, recurrent], dim=-1))


class MergeSoftmaxRouter(nn.Module):
    """Standard top-k gate: logits = W x, `(B, M, T, D)` → `(B, M, T, E)`."""

    def __init__(self, config: MergeConfig):
        super().__init__()
        self.weight = nn.Linear(config.d_model, config.num_experts, bias=False)

    def forward(self, hidden_states: Tensor, rus: MergeRusContext | None = None) -> Tensor:
        return self.weight(hidden_states)


class MergeLaplaceRouter(nn.Module):
    """FuseMoE Laplace gate: logits_e = −‖x − w_e‖₂ (w zero-initialised) with noisy top-k in training
    (noise std = softplus(x W_noise) + 0.01). One gate per modality when `per_modality`."""

    def __init__(self, config: MergeConfig, per_modality: bool):
        super().__init__()
        num_gates = config.num_modalities if per_modality else 1
        self.weight = nn.Parameter(torch.zeros(num_gates, config.num_experts, config.d_model))
        self.noise_weight = nn.Parameter(torch.zeros(num_gates, config.d_model, config.num_experts))

    def forward(self, hidden_states: Tensor, rus: MergeRusContext | None = None) -> Tensor:
        batch, num_modalities, num_tokens, dim = hidden_states.shape
        grouped = hidden_states.transpose(0, 1).reshape(num_modalities, batch * num_tokens, dim)
        if self.weight.shape[0] == 1:
            grouped = grouped.reshape(1, -1, dim)
        logits = -torch.cdist(grouped, self.weight.to(grouped.dtype))
        if self.training:
            noise_std = F.softplus(torch.bmm(grouped, self.noise_weight.to(grouped.dtype))) + 0.01
            logits = logits + torch.randn_like(logits) * noise_std
        return logits.reshape(num_modalities, batch, num_tokens, -1).transpose(0, 1)


def _grouped_mm_supported(tokens: Tensor, weight: Tensor) -> bool:
    """Whether `torch.nn.functional.grouped_mm` can run on these operands (dtype, 16-byte row alignment)."""
    if not hasattr(F, "grouped_mm") or tokens.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    if tokens.device.type == "cuda" and tokens.dtype != torch.bfloat16:
        return False
    row_bytes = tokens.element_size()
    return all(size * row_bytes % 16 == 0 for size in weight.shape[1:])


class MergeFeedForwardExperts(nn.Module):
    """E_f feed-forward experts with stacked weights `w_in (E_f, D, H)`, `w_out (E_f, H, D)`.

    `forward(tokens (S, D), expert_ids (S,))` → `(S, D)`: each slot goes only through its own expert.
    """

    def __init__(self, config: MergeConfig):
        super().__init__()
        num_experts, dim, hidden = config.num_feedforward_experts, config.d_model, config.expert_hidden_dim
        self.num_experts = num_experts
        self.dispatch = config.expert_dispatch
        self.w_in = nn.Parameter(torch.empty(num_experts, dim, hidden))
        self.b_in = nn.Parameter(torch.zeros(num_experts, hidden))
        self.w_out = nn.Parameter(torch.empty(num_experts, hidden, dim))
        self.b_out = nn.Parameter(torch.zeros(num_experts, dim))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, tokens: Tensor, expert_ids: Tensor) -> Tensor:
        if self.dispatch == "eager":
            return self._eager(tokens, expert_ids)
        order = torch.argsort(expert_ids, stable=True)
        sorted_ids = expert_ids[order]
        counts = torch.bincount(sorted_ids, minlength=self.num_experts)
        sorted_tokens = tokens.index_select(0, order)
        if self.dispatch == "grouped_mm" and _grouped_mm_supported(tokens, self.w_in):
            outputs = self._grouped(sorted_tokens, sorted_ids, counts)
        else:
            outputs = self._sorted(sorted_tokens, counts)
        return torch.zeros_like(outputs).index_copy(0, order, outputs)

    def _expert(self, tokens: Tensor, expert: int) -> Tensor:
        hidden = self.dropout(F.relu(tokens @ self.w_in[expert] + self.b_in[expert]))
        return hidden @ self.w_out[expert] + self.b_out[expert]

    def _eager(self, tokens: Tensor, expert_ids: Tensor) -> Tensor:
        """Reference path: a boolean mask per expert."""
        outputs = tokens.new_zeros(tokens.shape)
        for expert in range(self.num_experts):
            slots = torch.nonzero(expert_ids == expert).squeeze(1)
            if slots.numel():
                outputs = outputs.index_copy(0, slots, self._expert(tokens[slots], expert))
        return outputs

    def _sorted(self, sorted_tokens: Tensor, counts: Tensor) -> Tensor:
        """Tokens sorted by expert, one matmul pair per non-empty expert slice."""
        chunks = sorted_tokens.split(counts.tolist())
        return torch.cat([self._expert(chunk, expert) for expert, chunk in enumerate(chunks) if chunk.shape[0]])

    def _grouped(self, sorted_tokens: Tensor, sorted_ids: Tensor, counts: Tensor) -> Tensor:
        """Tokens sorted by expert, one `grouped_mm` per projection over all experts."""
        offsets = torch.cumsum(counts, 0).to(torch.int32)
        hidden = F.grouped_mm(sorted_tokens, self.w_in.to(sorted_tokens.dtype), offs=offsets)
        hidden = self.dropout(F.relu(hidden + self.b_in.index_select(0, sorted_ids)))
        return F.grouped_mm(hidden, self.w_out.to(hidden.dtype), offs=offsets) + self.b_out.index_select(0, sorted_ids)


class MergeSynergyExpert(nn.Module):
    """Cross-modal expert: a token attends to the tokens of its modality's partner modalities (all other
    modalities, or the RUS router's top partners) present in its OWN sample, residual + LN, then a feed-forward
    sublayer, residual + LN. Only the routed tokens are computed.

    Keys and values are projected once per token. With every other modality as partner, the queries of a sample
    share its M·T keys; with P < M−1 partners they are grouped by (sample, modality) and each group gathers its
    P·T partner keys, so the cost is O(routed tokens · P · T): linear in M for a fixed P.
    """

    def __init__(self, config: MergeConfig):
        super().__init__()
        self.cross_attention = MergeAttention(config, config.synergy_attention_dropout)
        self.attention_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.feed_forward = MergeFeedForward(config, config.expert_hidden_dim)
        self.output_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden_states: Tensor, token_index: Tensor, presence: Tensor, partner_index: Tensor) -> Tensor:
        """hidden_states `(B, M, T, D)`; token_index `(n,)` ascending flat indices into B·M·T; presence `(B, M)`
        bool; partner_index `(M, P)` int64, the modalities each modality attends to → `(n, D)`."""
        batch, num_modalities, num_tokens, dim = hidden_states.shape
        device = token_index.device
        per_sample = partner_index.shape[1] == num_modalities - 1
        flat_group = token_index // (num_modalities * num_tokens if per_sample else num_tokens)
        groups, counts = torch.unique_consecutive(flat_group, return_counts=True)
        group = torch.repeat_interleave(torch.arange(groups.shape[0], device=device), counts)
        position = torch.arange(token_index.shape[0], device=device) - (torch.cumsum(counts, 0) - counts)[group]
        queries = hidden_states.new_zeros(groups.shape[0], int(counts.max()), dim)
        queries = queries.index_put((group, position), hidden_states.reshape(-1, dim).index_select(0, token_index))
        query_modality = torch.full(queries.shape[:2], -1, device=device)
        query_modality = query_modality.index_put((group, position), token_index // num_tokens % num_modalities)
        if per_sample:
            sample = groups
            key_modality = torch.arange(num_modalities, device=device).expand(groups.shape[0], -1)
        else:
            sample, key_modality = groups // num_modalities, partner_index[groups % num_modalities]
        key_allowed = presence[sample[:, None], key_modality][:, None, :] & (
            key_modality[:, None, :] != query_modality[:, :, None]
        )
        key_allowed = key_allowed.repeat_interleave(num_tokens, dim=2)
        has_partner = key_allowed.any(-1, keepdim=True)
        key_sequences = (sample[:, None] * num_modalities + key_modality).reshape(-1)  # (G·P,) into B·M

        def gathered(projection: nn.Linear) -> Tensor:  # (G, P·T, D)
            sequences = projection(hidden_states).reshape(batch * num_modalities, num_tokens, dim)
            return sequences.index_select(0, key_sequences).reshape(groups.shape[0], -1, dim)

        attended, _ = self.cross_attention.attend(
            queries, gathered(self.cross_attention.k_proj), gathered(self.cross_attention.v_proj),
            key_allowed | ~has_partner,
        )
        attended = attended * has_partner
        states = self.attention_norm(queries + self.dropout(attended))
        states = self.output_norm(states + self.dropout(self.feed_forward(states)))
        return states.reshape(-1, dim).index_select(0, group * states.shape[1] + position)


class MergeMoeLayer(nn.Module):
    """Router + experts over all (modality, time) tokens of `(B, M, T, D)`; synergy experts come first.

    The top-k experts are chosen by logits + `expert_selection_bias` `(E,)` and weighted by the softmax over their
    logits alone, so the probabilities (and the auxiliary losses) never see the bias. After every training forward
    `MergeModel` moves the bias (`update_selection_bias`): it cancels any change of each expert's mean logit offset
    since the previous training forward, and steps by a multiple of `router_bias_update_rate` × the logits' spread
    toward equal slot shares (auxiliary-loss-free balancing), as long as the router's own weights are trained: with a
    frozen router (a PEFT adapter, a trained head only) the routing and so the bias stay as loaded, and an adapter
    checkpoint describes the whole change. The forward routes with a snapshot of the bias (`selection_bias`), so a
    gradient-checkpointing replay during backward routes exactly as the first pass did.
    """

    def __init__(self, config: MergeConfig):
        super().__init__()
        self.top_k = config.num_experts_per_token
        self.num_synergy_experts = config.num_synergy_experts
        self.bias_update_rate = config.router_bias_update_rate
        self.center_fresh_bias = config.router_bias_start == "centered"
        self.bias_update_rule = config.router_bias_update_rule
        self.bias_tracks_logit_offsets = config.router_bias_tracks_logit_offsets
        self.register_buffer("expert_selection_bias", torch.zeros(config.num_experts), persistent=True)
        # each expert's mean logit minus the mean over experts at the last training forward (zero: none seen yet)
        self.register_buffer("expert_logit_offsets", torch.zeros(config.num_experts), persistent=True)
        self.bias_rate_final = config.router_bias_update_rate_final
        self.bias_decay_updates = config.router_bias_decay_updates
        if self.bias_rate_final is not None:  # bias updates so far, for the decaying rate
            self.register_buffer("expert_bias_updates", torch.zeros(()), persistent=True)
        routers = {
            "rus": lambda: MergeRusRouter(config),
            "softmax": lambda: MergeSoftmaxRouter(config),
            "laplace": lambda: MergeLaplaceRouter(config, per_modality=False),
            "laplace_per_modality": lambda: MergeLaplaceRouter(config, per_modality=True),
        }
        self.router = routers[config.router_type]()
        self.synergy_experts = nn.ModuleList(MergeSynergyExpert(config) for _ in range(config.num_synergy_experts))
        self.feedforward_experts = MergeFeedForwardExperts(config)

    def forward(
        self, hidden_states: Tensor, presence: Tensor, rus: MergeRusContext | None, partner_index: Tensor,
        selection_bias: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """partner_index `(M, P)`: the modalities each modality's synergy-expert tokens attend to; selection_bias
        `(E,)`: the bias to choose experts with (default `expert_selection_bias`) → (outputs `(B, M, T, D)`, zero for
        absent modalities; router logits `(B, M, T, E)` float32; top-k ids `(B, M, T, k)`)."""
        batch, num_modalities, num_tokens, dim = hidden_states.shape
        logits = self.router(hidden_states, rus).float()
        present_tokens = torch.nonzero(presence[:, :, None].expand(-1, -1, num_tokens).reshape(-1)).squeeze(1)
        selection_bias = self.expert_selection_bias if selection_bias is None else selection_bias
        top_experts = torch.topk(logits + selection_bias, self.top_k, dim=-1).indices
        top_weights = logits.gather(-1, top_experts).softmax(-1).to(hidden_states.dtype)
        slot_token = present_tokens.repeat_interleave(self.top_k)
        slot_expert = top_experts.reshape(-1, self.top_k)[present_tokens].reshape(-1)
        slot_weight = top_weights.reshape(-1, self.top_k).index_select(0, present_tokens).reshape(-1, 1)
        flat_states = hidden_states.reshape(-1, dim)
        slot_outputs = flat_states.new_zeros(slot_token.shape[0], dim)
        idle_experts = []
        for expert, synergy_expert in enumerate(self.synergy_experts):
            slots = torch.nonzero(slot_expert == expert).squeeze(1)
            if slots.numel():
                slot_outputs = slot_outputs.index_copy(
                    0, slots, synergy_expert(hidden_states, slot_token[slots], presence, partner_index)
                )
            else:
                idle_experts.append(synergy_expert)
        feedforward_slots = torch.nonzero(slot_expert >= self.num_synergy_experts).squeeze(1)
        if feedforward_slots.numel():
            slot_outputs = slot_outputs.index_copy(
                0,
                feedforward_slots,
                self.feedforward_experts(
                    flat_states.index_select(0, slot_token[feedforward_slots]),
                    slot_expert[feedforward_slots] - self.num_synergy_experts,
                ),
            )
        else:
            idle_experts.append(self.feedforward_experts)
        outputs = flat_states.new_zeros(flat_states.shape).index_add(0, slot_token, slot_outputs * slot_weight)
        if self.training and idle_experts:
            # experts that got no token still take part in backward (with zero gradient), so DDP's gradient
            # reduction sees every parameter in every step
            outputs = outputs + sum(p.sum() for expert in idle_experts for p in expert.parameters()) * 0.0
        return outputs.reshape(batch, num_modalities, num_tokens, dim), logits, top_experts

    @torch.no_grad()
    def update_selection_bias(self, logits: Tensor, top_experts: Tensor, presence: Tensor) -> None:
        """After a training forward (router logits `(B, M, T, E)`, its top-k ids `(B, M, T, k)`, presence `(B, M)`),
        over the present tokens:
        1. each expert's logit offset is its mean logit minus the mean over experts. A fresh bias (all zero) with
           `router_bias_start="centered"` is set to cancel the offsets; later, with `router_bias_tracks_logit_offsets`,
           the bias cancels how far each offset moved since the previous training forward, so a drift that raises or
           lowers an expert's logits for every token does not change the slot shares;
        2. each expert's bias moves by rate (decaying with the update count if `router_bias_update_rate_final` is
           set) × the logits' spread (mean over tokens of the std over experts) × a step
           factor from its slot share s against the mean share s̄: ln(s̄ / s) clipped to [-1, 3] (`"log_ratio"`),
           (s̄ − s) / s̄ clipped to [-1, 1] (`"proportional"`) or sign(s̄ − s) (`"sign"`): up below the mean share,
           down above it.
        Loads, offsets and spread are summed over processes under torch.distributed. A no-op outside training, at
        rate 0, or while the router's weights are frozen."""
        if not (self.training and self.bias_update_rate > 0 and next(self.router.parameters()).requires_grad):
            return
        num_experts = self.expert_selection_bias.shape[0]
        token_present = presence[:, :, None].expand(-1, -1, logits.shape[2]).reshape(-1)  # (B·M·T,)
        slot_present = token_present[:, None].expand(-1, self.top_k).reshape(-1).float()
        token_logits = logits.reshape(-1, num_experts).float()
        totals = torch.cat([
            logits.new_zeros(num_experts).index_add_(0, top_experts.reshape(-1), slot_present),
            torch.where(token_present[:, None], token_logits, 0.0).sum(0),
            torch.where(token_present, token_logits.std(-1), 0.0).sum()[None], token_present.sum()[None].float()])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(totals)
        load, num_tokens = totals[:num_experts], totals[-1]
        per_token = totals[num_experts:-1] / num_tokens.clamp(min=1)  # mean logit per expert, then the spread
        mean_logits, spread = per_token[:-1], per_token[-1]
        offsets = mean_logits - mean_logits.mean()
        # conditions as tensors, not Python branches: no host-device synchronisation on the training hot path
        bias, recorded_offsets = self.expert_selection_bias, self.expert_logit_offsets
        centered = ~bias.any() & self.center_fresh_bias
        tracked = recorded_offsets.any() & self.bias_tracks_logit_offsets
        mean_load = load.mean()
        if self.bias_update_rule == "log_ratio":
            step = torch.log(mean_load / load).clamp(-1.0, 3.0)  # an unused expert: ln(s̄ / 0) = inf → 3
        elif self.bias_update_rule == "proportional":
            step = ((mean_load - load) / mean_load).clamp(-1.0, 1.0)
        else:
            step = torch.sign(mean_load - load)
        moved = torch.where(centered, -offsets, torch.where(tracked, bias - (offsets - recorded_offsets), bias))
        has_tokens = num_tokens > 0  # no present token in any process: nothing measured, nothing moves
        rate = self.bias_update_rate
        if self.bias_rate_final is not None:
            decay = torch.exp(-self.expert_bias_updates / self.bias_decay_updates)
            rate = self.bias_rate_final + (self.bias_update_rate - self.bias_rate_final) * decay
            self.expert_bias_updates.add_(has_tokens.float())
        bias.copy_(torch.where(has_tokens, moved + rate * spread * step, bias))
        if self.bias_tracks_logit_offsets:
            recorded_offsets.copy_(torch.where(has_tokens, offsets, recorded_offsets))


class MergeBlock(GradientCheckpointingLayer):
    """Self-attention within each modality, then a feed-forward layer (dense) or an MoE layer over all
    tokens, each followed by residual + LayerNorm; checkpointed under gradient checkpointing.

    `(B, M, T, D)` → (hidden states `(B, M, T, D)`, router logits `(B, M, T, E)` float32 and top-k expert ids
    `(B, M, T, k)` of an MoE block (None in a dense block), self-attention weights `(B, M, H, T, T)` with eager
    attention (else None)).
    """

    def __init__(self, config: MergeConfig, is_moe: bool):
        super().__init__()
        self.self_attention = MergeSelfAttentionSublayer(config)
        self.is_moe = is_moe and config.router_type != "dense"
        self.feed_forward = MergeMoeLayer(config) if self.is_moe else MergeFeedForward(config, config.ffn_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)

    def forward(
        self, hidden_states: Tensor, presence: Tensor, rus: MergeRusContext | None, partner_index: Tensor,
        selection_bias: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
        batch, num_modalities, num_tokens, dim = hidden_states.shape
        hidden_states, weights = self.self_attention(hidden_states.reshape(-1, num_tokens, dim))
        hidden_states = hidden_states.reshape(batch, num_modalities, num_tokens, dim)
        if weights is not None:
            weights = weights.reshape(batch, num_modalities, *weights.shape[1:])
        if not self.is_moe:
            return self.norm(hidden_states + self.dropout(self.feed_forward(hidden_states))), None, None, weights
        update, logits, experts = self.feed_forward(hidden_states, presence, rus, partner_index, selection_bias)
        return self.norm(hidden_states + self.dropout(update)), logits, experts, weights


def merge_auxiliary_losses(
    probs: Tensor, selected_experts: Tensor, presence: Tensor, rus: MergeRusContext | None, config: MergeConfig
) -> dict[str, Tensor]:
    """Unweighted auxiliary losses of one MoE layer (METHOD.md §2), on router probs `(B, M, T, E)`.

    Means run over (b, t, pair) entries where both modalities are present and the pair passes its threshold;
    with no such entry a loss is 0. Load balance (Switch): E · Σ_e f_e P_e over present tokens.
    """
    num_experts = probs.shape[-1]
    token_present = presence[:, :, None].expand(-1, -1, probs.shape[2])
    present_probs = probs[token_present]
    slot_share = torch.bincount(selected_experts[token_present].reshape(-1), minlength=num_experts).to(probs.dtype)
    slot_share = slot_share / slot_share.sum().clamp(min=1)
    losses = {"load_balance": num_experts * (slot_share * present_probs.mean(0)).sum()}
    if rus is None:
        return losses
    first, second = rus.loss_pairs[:, 0], rus.loss_pairs[:, 1]
    pair_present = (presence[:, first] & presence[:, second])[:, :, None]
    losses.update(rus_losses(probs.index_select(1, first), probs.index_select(1, second), pair_present, rus.conditions,
                             slice(0, config.num_synergy_experts), config))
    return losses


def routing_alignment_counts(
    probs: Tensor, selected_experts: Tensor, presence: Tensor, rus: MergeRusContext, num_synergy_experts: int
) -> dict[str, Tensor]:
    """Sums and counts of one MoE layer's routing-alignment statistics over a batch (add them over a split).

    probs `(B, M, T, E)`, selected_experts `(B, M, T, k)`, presence `(B, M)`. Per present token pair at the same
    step, JSD (nats) of the two router distributions, summed separately over redundant / non-redundant and
    unique / non-unique loss pairs; top-k slots of present tokens per expert; slots on the synergy experts of
    tokens in a synergistic cell (their modality is in a synergistic pair at their lag with a present partner)
    and of the other tokens. Keys: `expert_slots` `(E,)`, `<name>_jsd` / `<name>_pairs` for redundant,
    non_redundant, unique, non_unique and redundant_not_unique (redundant cells whose uniqueness loss does not
    push the other way), and `<cell>_synergy_slots` / `<cell>_slots` for synergistic, other.
    """
    first, second = rus.loss_pairs[:, 0], rus.loss_pairs[:, 1]
    pair_present = (presence[:, first] & presence[:, second])[:, :, None]  # (B, Q, 1)
    divergence = jensen_shannon_divergence(probs[:, first], probs[:, second])  # (B, Q, T)
    redundant, unique = rus.conditions.redundant, rus.conditions.unique
    counts = {}
    for label, mask in (("redundant", redundant), ("non_redundant", ~redundant), ("unique", unique),
                        ("non_unique", ~unique), ("redundant_not_unique", redundant & ~unique)):
        weights = (pair_present & mask[None]).to(divergence.dtype)
        counts[f"{label}_jsd"] = (divergence * weights).sum()
        counts[f"{label}_pairs"] = weights.sum()
    synergistic_pair = (pair_present & rus.conditions.synergistic[None]).to(probs.dtype)  # (B, Q, T)
    partner_count = probs.new_zeros(probs.shape[:3]).index_add(1, first, synergistic_pair)
    in_synergy_cell = partner_count.index_add(1, second, synergistic_pair) > 0  # (B, M, T)
    on_synergy = (selected_experts < num_synergy_experts).sum(-1).to(probs.dtype)  # (B, M, T)
    token_present = presence[:, :, None].expand_as(on_synergy)
    top_k = selected_experts.shape[-1]
    for label, cell in (("synergistic", in_synergy_cell & token_present), ("other", ~in_synergy_cell & token_present)):
        counts[f"{label}_synergy_slots"] = (on_synergy * cell).sum()
        counts[f"{label}_slots"] = cell.sum().to(probs.dtype) * top_k
    counts["expert_slots"] = torch.bincount(
        selected_experts[token_present].reshape(-1), minlength=probs.shape[-1]
    ).to(probs.dtype)
    return counts


class MergePreTrainedModel(PreTrainedModel):
    config_class = MergeConfig
    base_model_prefix = "merge"
    main_input_name = "modality_mask"
    accepts_loss_kwargs = False
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["MergeBlock", "MergeModalityEncoder"]
    # checkpoints from before the selection bias tracked logit offsets (the zero buffer is recorded at the next
    # training forward, MergeMoeLayer.update_selection_bias) or counted its updates (the bias-rate schedule starts at
    # 0): nothing the user has to train
    _keys_to_ignore_on_load_missing = [r"expert_logit_offsets", r"expert_bias_updates"]
    _can_record_outputs = {
        "hidden_states": OutputRecorder(MergeBlock, index=0, num_hidden_layers_key="num_blocks"),
        "attentions": OutputRecorder(MergeBlock, index=3),
        "router_logits": OutputRecorder(MergeBlock, index=1),
    }

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, MergeFeedForwardExperts):
            init.normal_(module.w_in, mean=0.0, std=std)
            init.normal_(module.w_out, mean=0.0, std=std)
            init.zeros_(module.b_in)
            init.zeros_(module.b_out)
        elif isinstance(module, MergeMoeLayer):
            # after its children (transformers skips modules without parameters or buffers of their own, the router)
            init.zeros_(module.expert_selection_bias)
            init.zeros_(module.expert_logit_offsets)
            if module.bias_rate_final is not None:
                init.zeros_(module.expert_bias_updates)
            if isinstance(module.router, MergeRusRouter) and self.config.router_init == "fan_in":
                for layer in module.router.modules():
                    if isinstance(layer, nn.Linear):
                        init.normal_(layer.weight, mean=0.0, std=layer.in_features**-0.5)
                for name, parameter in module.router.gru.named_parameters():
                    if name.startswith("weight"):
                        init.normal_(parameter, mean=0.0, std=parameter.shape[1] ** -0.5)
        elif isinstance(module, MergeLaplaceRouter):
            init.zeros_(module.weight)
            init.zeros_(module.noise_weight)
        elif isinstance(module, nn.GRU):
            for name, parameter in module.named_parameters():
                if name.startswith("weight"):
                    init.normal_(parameter, mean=0.0, std=std)
                else:
                    init.zeros_(parameter)
        elif isinstance(module, MergeModel):
            for name in RUS_BUFFERS + ("rus_thresholds", "rus_is_set"):
                init.zeros_(getattr(module, name))
            init.copy_(module.rus_partner_index, _all_other_modalities(module.config.num_modalities)[
                :, : module.rus_partner_index.shape[1]])


def _all_other_modalities(num_modalities: int) -> Tensor:
    """`(M, M−1)` int64: row m lists every modality except m, in index order."""
    columns = torch.arange(num_modalities - 1)[None, :]
    return columns + (columns >= torch.arange(num_modalities)[:, None]).long()


class MergeModel(MergePreTrainedModel):
    """Per-modality encoders and MERGE blocks; holds the dataset's RUS as persistent buffers."""

    def __init__(self, config: MergeConfig):
        super().__init__(config)
        self.encoders = nn.ModuleDict(
            {name: MergeModalityEncoder(config, channels, config.patch_size(name))
             for name, channels in config.modalities.items()}
        )
        moe_indices = set(config.moe_block_indices)
        self.blocks = nn.ModuleList(MergeBlock(config, index in moe_indices) for index in range(config.num_blocks))
        self.final_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        num_modalities, num_lags = config.num_modalities, config.num_rus_lags
        for name in RUS_BUFFERS:
            self.register_buffer(name, torch.zeros(num_modalities, num_modalities, num_lags), persistent=True)
        self.register_buffer("rus_thresholds", torch.zeros(3), persistent=True)
        self.register_buffer("rus_is_set", torch.zeros((), dtype=torch.bool), persistent=True)
        num_partners = min(config.router_top_partners or num_modalities, num_modalities - 1)
        self.register_buffer(
            "rus_partner_index", _all_other_modalities(num_modalities)[:, :num_partners].clone(), persistent=True
        )
        self.post_init()

    @torch.no_grad()
    def set_rus(self, redundancy, uniqueness, synergy) -> None:
        """Store the dataset's RUS (`[M, M, L]` each, bits, config modality order; `uniqueness[i, j, τ]` = U_i in
        the pair (i, j)); resolve percentile thresholds and the top partners. Raises `ValueError` on a wrong
        shape, non-finite or negative values, or asymmetric R / S."""
        expected = (self.config.num_modalities, self.config.num_modalities, self.config.num_rus_lags)
        tables = validate_rus_tables(redundancy, uniqueness, synergy, expected,
                                     f"modalities {self.config.modality_names}, num_rus_lags={self.config.num_rus_lags}")
        for name, values in tables.items():
            getattr(self, f"rus_{name}").copy_(values)
        self.rus_thresholds.copy_(resolve_thresholds(tables["redundancy"], tables["uniqueness"], tables["synergy"], self.config))
        if self.config.router_top_partners is not None and self.config.num_modalities > 1:
            score = (tables["redundancy"] + tables["synergy"]).sum(-1)
            score.fill_diagonal_(float("-inf"))
            top = torch.topk(score, self.rus_partner_index.shape[1], dim=1, sorted=False).indices
            self.rus_partner_index.copy_(torch.sort(top, dim=1).values)
        self.rus_is_set.fill_(True)

    def rus_context(self, num_tokens: int, presence: Tensor) -> MergeRusContext:
        """RUS lookups at each token's lag, partner features and loss pairs (vectorised over M and pairs)."""
        if not bool(self.rus_is_set):
            raise ValueError(
                "router_type='rus' needs the dataset's RUS: call model.set_rus(redundancy, uniqueness, synergy) "
                "(e.g. RusSidecar.load(path).apply_to(model)) before the forward pass."
            )
        lags = token_lags(num_tokens, self.config.num_rus_lags, presence.device)
        num_modalities = self.config.num_modalities
        partners = self.rus_partner_index
        rows = torch.arange(num_modalities, device=presence.device)[:, None]
        redundancy = self.rus_redundancy[:, :, lags]
        synergy = self.rus_synergy[:, :, lags]
        pair_features = torch.stack([redundancy[rows, partners], synergy[rows, partners]], dim=-1)
        is_partner = torch.zeros(num_modalities, num_modalities, dtype=torch.bool, device=presence.device)
        is_partner[rows.expand_as(partners), partners] = True
        loss_pairs = torch.nonzero(torch.triu(is_partner | is_partner.T, diagonal=1))
        return MergeRusContext(
            pair_features=pair_features.transpose(1, 2),
            pair_mask=presence[:, partners][:, :, None, :],
            token_uniqueness=per_modality_uniqueness(self.rus_uniqueness)[:, lags],
            loss_pairs=loss_pairs,
            conditions=pair_conditions(self.rus_redundancy, self.rus_uniqueness, self.rus_synergy, loss_pairs, lags,
                                       self.rus_thresholds, self.config),
        )

    def _validated_inputs(
        self, modalities: dict[str, Tensor] | None, modality_mask: Tensor | None
    ) -> tuple[list[Tensor], Tensor]:
        """Check names, shapes, token grids and finiteness → (inputs in config order, presence `(B, M)` bool)."""
        config = self.config
        if not isinstance(modalities, Mapping):
            raise ValueError(f"Pass the inputs as `modalities={{name: (batch, time, channels) tensor}}` for "
                             f"{config.modality_names}, got {type(modalities).__name__}.")
        given = dict(modalities)
        unknown = sorted(set(given) - set(config.modalities))
        if unknown:
            raise ValueError(f"Unknown modality name(s) {unknown}; the model's modalities are {config.modality_names}.")
        missing = [name for name in config.modalities if name not in given]
        if missing:
            raise ValueError(
                f"Missing modality input(s) {missing}: pass every configured modality ({config.modality_names}); "
                "mark absent ones False in `modality_mask`."
            )
        values = [given[name] for name in config.modalities]
        for name, tensor in zip(config.modalities, values):
            if not torch.is_tensor(tensor) or tensor.dim() != 3:
                shape = tuple(tensor.shape) if torch.is_tensor(tensor) else type(tensor).__name__
                raise ValueError(f"Modality {name!r} must be a (batch, time, {config.modalities[name]}) tensor, "
                                 f"got {shape}.")
        batch = values[0].shape[0]
        if batch == 0:
            raise ValueError(f"The batch is empty (modality {config.modality_names[0]!r} has shape "
                             f"{tuple(values[0].shape)}): pass at least one sample, and skip empty batches.")
        grid = {}
        for name, tensor in zip(config.modalities, values):
            channels, patch = config.modalities[name], config.patch_size(name)
            if tensor.shape[0] != batch:
                raise ValueError(f"Modality {name!r} has batch size {tensor.shape[0]}, modality "
                                 f"{config.modality_names[0]!r} has {batch}.")
            if tensor.shape[2] != channels:
                raise ValueError(f"Modality {name!r} has {tensor.shape[2]} channels, the config expects {channels} "
                                 f"(input shape {tuple(tensor.shape)}).")
            if tensor.shape[1] % patch:
                raise ValueError(f"Modality {name!r} has {tensor.shape[1]} time steps, not a multiple of its patch "
                                 f"size {patch}.")
            grid[name] = tensor.shape[1] // patch
        if len(set(grid.values())) != 1 or 0 in grid.values():
            raise ValueError(f"Modalities disagree on the token-grid length (time / patch size): {grid}.")
        num_tokens = next(iter(grid.values()))
        if config.token_grid_length is not None and num_tokens != config.token_grid_length:
            raise ValueError(
                f"The model was built for a token grid of {config.token_grid_length} steps per modality "
                f"(config.token_grid_length: the RUS lags are laid on it), got {num_tokens} (time / patch size: "
                f"{grid}). Use windows of the training data's length, or set config.token_grid_length = None."
            )
        if modality_mask is None:
            presence = torch.ones(batch, config.num_modalities, dtype=torch.bool, device=values[0].device)
        else:
            modality_mask = _as_tensor(modality_mask, "modality_mask")
            if tuple(modality_mask.shape) != (batch, config.num_modalities):
                raise ValueError(f"modality_mask has shape {tuple(modality_mask.shape)}, expected (batch, M) = "
                                 f"({batch}, {config.num_modalities}) for modalities {config.modality_names}.")
            presence = modality_mask.to(device=values[0].device, dtype=torch.bool)
        if not presence.any(1).all():
            empty = torch.nonzero(~presence.any(1)).squeeze(1).tolist()
            raise ValueError(f"modality_mask marks every modality absent for sample(s) {empty}.")
        for index, (name, tensor) in enumerate(zip(config.modalities, values)):
            bad = ~torch.isfinite(tensor).flatten(1).all(1) & presence[:, index]
            if bad.any():
                raise ValueError(f"Modality {name!r} has NaN or Inf values in present sample(s) "
                                 f"{torch.nonzero(bad).squeeze(1).tolist()}.")
        dtype = self.final_norm.weight.dtype
        values = [torch.where(presence[:, index, None, None], tensor, 0.0).to(dtype)
                  for index, tensor in enumerate(values)]
        return values, presence

    @capture_outputs
    def forward(
        self,
        modalities: dict[str, Tensor] | None = None,
        modality_mask: Tensor | None = None,
        output_router_probs: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        output_router_logits: bool | None = None,
    ) -> MergeModelOutput:
        """modalities: name → `(B, time_m, channels_m)` float, every configured modality; modality_mask `(B, M)`
        bool, False = absent. `output_hidden_states` / `output_attentions` / `output_router_logits` are recorded
        by transformers' output capturing (`_can_record_outputs`); `return_dict=False` gives a tuple."""
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        if output_attentions and (self.config._attn_implementation or "sdpa") != "eager":
            raise ValueError(
                "output_attentions=True needs eager attention (SDPA does not return weights): load the model with "
                "attn_implementation='eager' or call model.set_attn_implementation('eager')."
            )
        values, presence = self._validated_inputs(modalities, modality_mask)
        hidden_states = torch.stack(
            [encoder(tensor) for encoder, tensor in zip(self.encoders.values(), values)], dim=1
        )
        rus = self.rus_context(hidden_states.shape[2], presence) if self.config.router_type == "rus" else None
        layer_losses, all_probs, all_experts = [], [], []
        for block in self.blocks:
            bias = block.feed_forward.expert_selection_bias.clone() if block.is_moe else None
            hidden_states, logits, experts, _ = block(hidden_states, presence, rus, self.rus_partner_index, bias)
            if logits is not None:
                block.feed_forward.update_selection_bias(logits, experts, presence)
                probs = logits.softmax(-1)
                layer_losses.append(merge_auxiliary_losses(probs, experts, presence, rus, self.config))
                all_probs.append(probs)
                all_experts.append(experts)
        aux_losses = {name: torch.stack([losses[name] for losses in layer_losses]).mean() for name in layer_losses[0]} \
            if layer_losses else {}
        aux_loss = sum(
            (getattr(self.config, f"{name}_loss_weight") * value for name, value in aux_losses.items()),
            hidden_states.new_zeros((), dtype=torch.float32),
        )
        normed = self.final_norm(hidden_states)
        weights = presence.to(normed.dtype)[:, :, None]
        pooled = (normed.mean(2) * weights).sum(1) / weights.sum(1)
        per_step = (normed * weights[..., None]).sum(1) / weights.sum(1)[..., None]
        return MergeModelOutput(
            last_hidden_state=hidden_states,
            pooler_output=pooled,
            token_pooler_output=per_step,
            aux_loss=aux_loss,
            aux_losses=aux_losses,
            router_probs=tuple(all_probs) if output_router_probs else None,
            selected_experts=tuple(all_experts) if output_router_probs else None,
        )


def _as_tensor(value, argument: str) -> Tensor:
    """`value` as a tensor: tensors pass unchanged, lists and arrays are converted; anything else names `argument`."""
    if torch.is_tensor(value):
        return value
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{argument} must be a tensor or a (nested) list of numbers, got {type(value).__name__} "
                         f"that torch cannot convert: {error}") from error


def _refuse_text_inputs(input_ids, attention_mask, inputs_embeds) -> None:
    """The text-model arguments that PEFT's task wrappers always pass (as None) are accepted but must stay None."""
    given = [name for name, value in (("input_ids", input_ids), ("attention_mask", attention_mask),
                                      ("inputs_embeds", inputs_embeds)) if value is not None]
    if given:
        raise ValueError(f"MERGE takes `modalities={{name: tensor}}` and `modality_mask`, not {given}.")


def _routing_fields(outputs: MergeModelOutput) -> dict:
    """The fields a head output copies from the base model's output."""
    names = ("aux_loss", "aux_losses", "router_probs", "selected_experts", "hidden_states", "attentions",
             "router_logits")
    return {name: getattr(outputs, name) for name in names}


class MergeHeadModel(MergePreTrainedModel):
    """A task head: `MergeModel` (`self.merge`) and a linear `classifier` on its `pooled_output_name` output.
    Subclasses set the pooled output, the output class and `_loss(logits, labels)`."""

    pooled_output_name = "pooler_output"
    output_class = MergeSequenceClassifierOutput

    def __init__(self, config: MergeConfig):
        super().__init__(config)
        self.merge = MergeModel(config)
        self.classifier = nn.Linear(config.d_model, config.num_labels)
        self.post_init()

    def set_rus(self, redundancy, uniqueness, synergy) -> None:
        """See [`MergeModel.set_rus`]."""
        self.merge.set_rus(redundancy, uniqueness, synergy)

    @can_return_tuple
    def forward(
        self,
        modalities: dict[str, Tensor] | None = None,
        modality_mask: Tensor | None = None,
        labels: Tensor | None = None,
        output_router_probs: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        output_router_logits: bool | None = None,
        input_ids: None = None,
        attention_mask: None = None,
        inputs_embeds: None = None,
    ) -> MergeSequenceClassifierOutput:
        """As [`MergeModel.forward`], plus `labels` (see the head's class) → loss = the head's loss + `aux_loss`.
        `input_ids` / `attention_mask` / `inputs_embeds` exist for PEFT's task wrappers and must be None."""
        _refuse_text_inputs(input_ids, attention_mask, inputs_embeds)
        # unset switches are left out, so that the base model's output capturing falls back to the config's
        switches = {name: value for name, value in (("output_hidden_states", output_hidden_states),
                                                    ("output_attentions", output_attentions),
                                                    ("output_router_logits", output_router_logits)) if value is not None}
        outputs = self.merge(modalities, modality_mask, output_router_probs=output_router_probs, return_dict=True,
                             **switches)
        logits = self.classifier(getattr(outputs, self.pooled_output_name))
        loss = None if labels is None else self._loss(logits, _as_tensor(labels, "labels")) + outputs.aux_loss
        return self.output_class(loss=loss, logits=logits, **_routing_fields(outputs))


class MergeForSequenceClassification(MergeHeadModel):
    """MERGE with a linear head on the pooled output: classification (single- or multi-label) or regression, as
    `config.problem_type` says (inferred from the labels on the first call when unset, like transformers).

    Labels: `single_label_classification` int64 `(B,)` in [0, num_labels) → cross-entropy;
    `multi_label_classification` float `(B, num_labels)` in [0, 1] → binary cross-entropy with logits;
    `regression` float `(B, num_labels)` (or `(B,)` with one output) → mean squared error.
    """

    def _loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        config = self.config
        batch, num_labels = logits.shape
        if config.problem_type is None:
            if num_labels == 1:
                config.problem_type = "regression"
            elif labels.dtype.is_floating_point and labels.shape == logits.shape:
                config.problem_type = "multi_label_classification"
            else:
                config.problem_type = "single_label_classification"
        labels = labels.to(logits.device)
        if config.problem_type == "single_label_classification":
            _check_class_ids(labels, (batch,), num_labels, "labels")
            return F.cross_entropy(logits.float(), labels)
        if config.problem_type == "multi_label_classification":
            if labels.shape != logits.shape or labels.dtype == torch.bool or not (
                    ((labels >= 0) & (labels <= 1)).all()):
                raise ValueError(f"labels for multi_label_classification must be (batch, num_labels) = "
                                 f"{tuple(logits.shape)} numbers in [0, 1], got {labels.dtype} {tuple(labels.shape)}.")
            return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        expected = (batch,) if num_labels == 1 else (batch, num_labels)
        if tuple(labels.shape) not in {expected, (batch, num_labels)} or not torch.isfinite(labels.float()).all():
            raise ValueError(f"labels for regression must be finite numbers of shape {expected}, got {labels.dtype} "
                             f"{tuple(labels.shape)}.")
        return F.mse_loss(logits.float(), labels.float().reshape(logits.shape))


class MergeForTokenClassification(MergeHeadModel):
    """MERGE with a linear head on every step of the token grid (`token_pooler_output`): per-step classification.

    Labels `(B, L)` int64, one class id per step of the dataset's common grid, −100 = unlabelled. The dataset
    builders' per-step labels (`label_granularity="step"`) have one label per token-grid step, the grid every
    modality is on before patching (patches only bring faster modalities down to it): L = T. A finer label grid
    works when L is a multiple of T: step s takes the logits of token ⌊s·T/L⌋, the token whose patch holds it.
    The loss is the mean cross-entropy over the labelled steps; `logits` stay on the token grid `(B, T, C)`.
    """

    pooled_output_name = "token_pooler_output"
    output_class = MergeTokenClassifierOutput

    def _loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        if self.config.problem_type not in (None, "single_label_classification"):
            raise ValueError(f"MergeForTokenClassification classifies each step (single_label_classification), "
                             f"config.problem_type is {self.config.problem_type!r}.")
        batch, num_tokens, num_labels = logits.shape
        if labels.dim() != 2 or labels.shape[0] != batch or labels.shape[1] % num_tokens:
            raise ValueError(f"labels must be (batch, steps) = ({batch}, a multiple of the token grid {num_tokens}), "
                             f"got {tuple(labels.shape)}.")
        labels = labels.to(logits.device)
        labelled = labels != -100
        _check_class_ids(labels[labelled], (int(labelled.sum()),), num_labels, "labels (other than -100)")
        return labelled_cross_entropy(logits, labels)


def labelled_cross_entropy(logits: Tensor, labels: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean cross-entropy over the labelled examples or steps (−100 ignored; 0 when none): logits `(B, C)` with
    labels `(B,)`, or per-step logits `(B, T, C)` with labels `(B, L)`, L a multiple of T, where step s takes the
    logits of token ⌊s·T/L⌋. With class weights `weight` `(C,)` the mean is weighted by each label's class weight."""
    logits = logits.float()
    if logits.dim() == 3:
        logits = logits.repeat_interleave(labels.shape[1] // logits.shape[1], dim=1)
    logits, labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    total = F.cross_entropy(logits, labels, weight=weight, ignore_index=-100, reduction="sum")
    labelled = labels != -100
    if weight is None:
        return total / labelled.sum().clamp(min=1)
    return total / weight[labels[labelled]].sum().clamp(min=torch.finfo(torch.float32).tiny)


def _check_class_ids(labels: Tensor, shape: tuple, num_labels: int, name: str) -> None:
    """Raise a `ValueError` unless `labels` are integers of `shape` in [0, num_labels)."""
    if tuple(labels.shape) != tuple(shape) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor of shape {tuple(shape)}, got {labels.dtype} "
                         f"{tuple(labels.shape)}.")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_labels):
        raise ValueError(f"{name} must lie in [0, {num_labels}), got values in [{labels.min().item()}, "
                         f"{labels.max().item()}].")


__all__ = [
    "labelled_cross_entropy",
    "MergeForSequenceClassification",
    "MergeForTokenClassification",
    "MergeModel",
    "MergeModelOutput",
    "MergePreTrainedModel",
    "MergeRusContextAttention",
    "MergeSequenceClassifierOutput",
    "MergeTokenClassifierOutput",
]
