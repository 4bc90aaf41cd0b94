"""MERGE model configuration (METHOD.md §2).

Every architectural choice of the MERGE model is a typed field here and is validated on construction; an
invalid value raises a ``ValueError`` that names the field. The defaults are the reference PAMAP2
hyper-parameters (4 modalities: three 13-channel IMUs and one heart-rate channel).
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from transformers import PreTrainedConfig

ROUTER_INITS = ("fan_in", "initializer_range")
ROUTER_BIAS_STARTS = ("centered", "zero")
ROUTER_BIAS_UPDATE_RULES = ("log_ratio", "proportional", "sign")
ROUTER_TYPES = ("rus", "softmax", "laplace", "laplace_per_modality", "dense")
EXPERT_DISPATCHES = ("grouped_mm", "sorted", "eager")
SYNERGY_LOSS_TYPES = ("one_minus_p", "neg_log_p")
THRESHOLD_MODES = ("percentile", "absolute")
PROBLEM_TYPES = (None, "single_label_classification", "multi_label_classification", "regression")
# MergeConfig overrides that give the RUS router as published, for comparison: the paper's synergy and uniqueness
# losses and unique-pair rule, no selection bias, every layer initialised at initializer_range (it collapses onto
# the synergy experts).
PAPER_ROUTING = {"synergy_target_mass": None, "uniqueness_target_jsd": None, "uniqueness_excludes_redundant": False,
                 "router_bias_update_rate": 0.0, "router_init": "initializer_range"}


AUTO_MAP = {
    "AutoConfig": "configuration_merge.MergeConfig",
    "AutoModel": "modeling_merge.MergeModel",
    "AutoModelForSequenceClassification": "modeling_merge.MergeForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_merge.MergeForTokenClassification",
}


@dataclass(kw_only=True, repr=False, eq=False)
class RusRoutingConfig:
    """The RUS-routing settings shared by [`MergeConfig`] and the LLM gates' `RusGateConfig` (`llm.py`): the
    router's hidden and attention sizes, the thresholds and the weights and form of the R/U/S losses. Their
    meaning is documented in [`MergeConfig`]; `rus_routing.py` is the one place that applies them."""

    router_hidden_dim: int = 64
    router_attention_dim: int = 32
    redundancy_loss_weight: float = 1.0
    uniqueness_loss_weight: float = 1.0
    synergy_loss_weight: float = 1.0
    synergy_loss_type: str = "one_minus_p"
    synergy_target_mass: float | None = 0.35
    uniqueness_target_jsd: float | None = 0.5
    uniqueness_excludes_redundant: bool = False
    threshold_mode: str = "percentile"
    redundancy_threshold: float = 75.0
    uniqueness_threshold: float = 75.0
    synergy_threshold: float = 75.0

    def validate_rus_routing(self) -> None:
        """Raise a `ValueError` naming the first shared field that is invalid."""
        owner = type(self).__name__
        for field in ("router_hidden_dim", "router_attention_dim"):
            _check(_is_int(getattr(self, field)) and getattr(self, field) > 0, field, "must be an int > 0",
                   getattr(self, field), owner)
        for field in ("redundancy_loss_weight", "uniqueness_loss_weight", "synergy_loss_weight"):
            value = getattr(self, field)
            _check(_is_number(value) and 0 <= value < math.inf, field, "must be a finite number >= 0 (0 = off)",
                   value, owner)
        _check(self.synergy_loss_type in SYNERGY_LOSS_TYPES, "synergy_loss_type",
               f"must be one of {SYNERGY_LOSS_TYPES}", self.synergy_loss_type, owner)
        if self.synergy_target_mass is not None:
            _check(_is_number(self.synergy_target_mass) and 0 < self.synergy_target_mass <= 1,
                   "synergy_target_mass", "must be None or in (0, 1]", self.synergy_target_mass, owner)
        if self.uniqueness_target_jsd is not None:
            _check(_is_number(self.uniqueness_target_jsd) and 0 < self.uniqueness_target_jsd <= math.log(2),
                   "uniqueness_target_jsd", "must be None or in (0, ln 2] nats", self.uniqueness_target_jsd, owner)
        _check(isinstance(self.uniqueness_excludes_redundant, bool), "uniqueness_excludes_redundant",
               "must be a bool", self.uniqueness_excludes_redundant, owner)
        _check(self.threshold_mode in THRESHOLD_MODES, "threshold_mode", f"must be one of {THRESHOLD_MODES}",
               self.threshold_mode, owner)
        upper = 100.0 if self.threshold_mode == "percentile" else float("inf")
        for field in ("redundancy_threshold", "uniqueness_threshold", "synergy_threshold"):
            value = getattr(self, field)
            _check(_is_number(value) and 0 <= value <= upper, field,
                   f"must be in [0, {upper}] for threshold_mode={self.threshold_mode!r}", value, owner)

# Arguments that transformers' `PreTrainedConfig` takes besides its fields (and that `config.json` files, the Auto
# classes, pipelines and PEFT pass); MergeConfig refuses every other argument that is not one of its fields.
TRANSFORMERS_KWARGS = frozenset({
    "num_labels", "torch_dtype", "name_or_path", "output_attentions", "attn_implementation", "experts_implementation",
    "per_layer_config", "auto_map", "model_type", "custom_pipelines", "tie_word_embeddings", "use_cache",
    "pad_token_id", "bos_token_id", "eos_token_id", "task_specific_params", "finetuning_task", "base_model_tp_plan",
})


def _pamap2_modalities() -> dict[str, int]:
    return {"hand": 13, "chest": 13, "ankle": 13, "heart_rate": 1}


class MergeConfig(RusRoutingConfig, PreTrainedConfig):
    r"""
    Configuration of [`MergeModel`] / [`MergeForSequenceClassification`].

    Args:
        modalities (`dict[str, int]`):
            Ordered mapping modality name → input channels (a list of `[name, channels]` pairs is accepted too,
            and is how `config.json` stores it). The order is the modality index of RUS tensors (`[M, M, L]`)
            and of the `(batch, M)` presence mask.
        patch_sizes (`dict[str, int]`):
            Stride (in input steps) of modalities sampled faster than the token grid; absent names use 1. An
            input of `time_m` steps gives `time_m / patch_m` tokens, and all modalities must agree on that
            token-grid length T.
        token_grid_length (`int | None`): the token-grid length T of the data the model is built for (set by
            `DatasetMetadata.merge_config_kwargs` from the dataset's window). The RUS lag of token t is
            ℓ(t) = ⌊t·L/T⌋, so inputs on another grid are refused with an error naming both lengths. `None` =
            any length.
        num_labels (`int`): number of classes (inherited; also set by `id2label`).
        d_model (`int`): width D of every token.
        num_attention_heads (`int`): heads of every self- and cross-attention.
        ffn_dim (`int`): hidden size of the dense feed-forward layers (encoders, non-MoE blocks, `dense` router).
        num_encoder_layers (`int`): Transformer layers in each per-modality encoder.
        use_encoder_conv (`bool`): add two residual Conv1d(k=3)+BatchNorm+ReLU layers to each encoder.
        num_blocks (`int`): fusion blocks after the encoders.
        num_moe_blocks (`int`): how many of them are MoE blocks, at evenly spaced indices (`moe_block_indices`).
        num_feedforward_experts (`int`): feed-forward experts per MoE layer.
        num_synergy_experts (`int`): cross-modal attention (synergy) experts per MoE layer; they come first in
            the expert index.
        num_experts_per_token (`int`): top-k.
        expert_hidden_dim (`int`): hidden size of a feed-forward expert and of a synergy expert's FFN.
        expert_dispatch (`str`): how tokens reach the feed-forward experts: `"grouped_mm"` (one
            `torch.nn.functional.grouped_mm` over tokens sorted by expert; falls back to `"sorted"` where the
            dtype or alignment is unsupported), `"sorted"` (argsort by expert, one matmul per expert on its
            slice) or `"eager"` (reference loop over experts with boolean masks). All three are sparse.
        router_type (`str`): `"rus"` (MERGE), `"softmax"` (logits = W x), `"laplace"` (FuseMoE,
            logits_e = −‖x − w_e‖, noisy top-k in training), `"laplace_per_modality"` (one Laplace gate per
            modality over shared experts) or `"dense"` (no MoE: one feed-forward layer in MoE blocks).
        router_hidden_dim (`int`): h = ReLU(W_h x) and the router MLP's hidden layer.
        router_gru_dim (`int`): GRU hidden size of the RUS router.
        router_attention_dim (`int`): query/key/value size of the RUS context attention.
        router_top_partners (`int | None`): RUS router only. If set, each modality's router context, the RUS
            loss pairs and its tokens' synergy-expert attention only cover its `router_top_partners` partners
            with the largest R+S (chosen when RUS is set), which keeps the whole MoE layer linear in M.
            `None` = all M−1 partners.
        redundancy_loss_weight / uniqueness_loss_weight / synergy_loss_weight / load_balance_loss_weight
            (`float`): λ of each auxiliary loss; 0 switches that loss off (the ablation switch).
        synergy_loss_type (`str`): `"one_minus_p"` (1 − p̄, reference) or `"neg_log_p"` (−log p̄).
        synergy_target_mass (`float | None`): the synergy loss as a target instead of "more is always better".
            Tokens of a synergistic pair are pulled until the pair puts this much router probability p̄ on the
            synergy experts, penalty max(0, φ(p̄) − φ(target)), and tokens of every other present pair are pushed
            back down to the synergy experts' fair share E_syn / E, penalty max(0, φ(fair) − φ(p̄)), with φ(p) =
            1 − p (`one_minus_p`) or −log p (`neg_log_p`). The loss then has no direction shared by every token,
            so it separates synergistic from other cells instead of moving all tokens. The default 0.35 (0.5
            before) sits above the fair share (2 / 8 by default) but low enough that a synergistic token's top-2
            usually keeps one feed-forward expert: at 0.5 both of its slots went to the synergy experts, and since
            most cells are synergistic at the percentile thresholds the synergy experts took ~58 % of a layer's
            slots in the first WESAD-E4 epoch and starved feed-forward experts. `None` = the paper's loss,
            mean φ(p̄) over synergistic pairs only, which sends every token to the synergy experts within a few
            steps (see the routing benchmark).
        uniqueness_target_jsd (`float | None`): the uniqueness loss as a target, in nats (JSD is at most ln 2 ≈
            0.693, reached when two distributions share no expert). Unique pairs are pushed apart until their
            routing JSD reaches this value, penalty max(0, target − JSD), and no further. `None` = the paper's
            loss, −JSD, which keeps pushing after the pair is apart: under Adam the router's logits then grow
            without bound (the JSD saturates at ln 2 within a few epochs), every (modality, lag) cell routes
            almost deterministically, and the selection bias can no longer keep the experts in use (on WESAD-E4
            the least used expert fell under 2 % of the slots; see benchmarks/README "Routing").
        uniqueness_excludes_redundant (`bool`): `True`: a (pair, lag) cell that passes the redundancy threshold is
            not a uniqueness cell. The paper calls a pair unique when both modalities' U_m (each one's most unique
            information against any partner) pass τ_U, so two informative modalities that carry the same information
            pass both tests, and the redundancy loss pulls them together while the uniqueness loss pushes them apart.
            At the default percentile thresholds every unique cell of the synthetic benchmark, WESAD-E4 and
            PhysioNet 2012 is also redundant. Excluding them gives the clearest redundancy structure (redundant
            pairs route almost identically, balance kept) but measured lower accuracy on every benchmark (with the
            other defaults: −0.007 to −0.043 macro-F1, PhysioNet AUROC −0.017), so the default `False` keeps the
            paper's rule (benchmarks/README "Routing").
        router_init (`str`): how the RUS router's layers start. `"fan_in"`: weights from N(0, 1/fan_in), so the
            router's logits differ between tokens from the first step (token std ≈ 0.1–1). `"initializer_range"`:
            N(0, initializer_range) like every other layer (the previous behaviour); through the router's three
            stacked layers its logits then start nearly equal for every token (std ≈ 1e-4), so the first shared
            update of the auxiliary losses moves every token's top-k at once.
        router_bias_update_rate (`float`): auxiliary-loss-free load balancing (DeepSeek-V3). Each MoE layer keeps a
            per-expert selection bias (a buffer) that is added to the router logits only to choose the top-k experts,
            never to weight them or in the auxiliary losses; every training forward moves it by this fraction of the
            logits' spread (mean over tokens of their std over experts) times the rule's factor, up for experts below
            the mean slot share and down for those above (counts and spread summed over processes under DDP), while
            the router's own weights are trained (not under a PEFT adapter or a frozen router). Scaling by the spread
            keeps up with routers whose logits sharpen during training (a fixed step left an expert unused on
            WESAD-E4).
            0 = off: balance only through the load-balance loss (the paper's routing). The default 0.05 (0.1
            before): when whole (modality, lag) cells route alike, a larger step moves a cell's tokens in and out of
            an expert at once and the expert's share swings between ~0 and twice the mean (WESAD-E4 paper labels:
            an expert under 2 % of the slots in 84 % of training steps after the 60th at 0.1, in none at 0.05).
        router_bias_update_rule (`str`): the size of each expert's step, from its slot share s against the mean s̄.
            `"log_ratio"` (default): rate × spread × ln(s̄ / s), clipped to [-1, 3], so an unused or nearly unused
            expert (under 5 % of the mean share) gets three full steps, an expert near balance the same small step as
            `"proportional"`, and an over-used one at most one step down. `"proportional"`: rate × spread ×
            (s̄ − s) / s̄ clipped to [-1, 1] (the default before; in the first WESAD-E4 epoch it let an expert fall
            under 2 % of the validation slots in 6 of 10 subject folds). `"sign"`: the full step ±rate × spread for
            every expert (with rate 0.02, the first rule); at rates large enough to follow the logits' sharpening in
            the first hundred steps it chatters around balance and leaves experts under 1 % of a batch.
        router_bias_tracks_logit_offsets (`bool`): `True`: every training forward also subtracts from each expert's
            bias how far that expert's logit offset (its mean logit over the batch's present tokens minus the mean
            over experts) moved since the previous training forward, so a gradient step that raises or lowers one
            expert's logits for every token changes no token's expert; the step of the update rule then only
            corrects what the offsets do not explain. In the first WESAD-E4 epoch such drifts starve an expert within
            ten steps under the learning-rate warm-up, faster than any step size that stays stable later. `False`:
            the bias moves by the rule's step alone (the behaviour before). The offsets are kept in the buffer
            `expert_logit_offsets`; one that is all zero (a fresh model, an older checkpoint) is first recorded.
        router_bias_start (`str`): where the selection bias starts. `"centered"`: the first training forward of a
            fresh model (bias all zero) sets it to cancel each expert's mean logit over the batch, so the random
            initialisation's per-expert offsets leave no expert unused (on the synthetic job the least-used expert
            otherwise gets 0 % of the slots for the first 10–30 steps). `"zero"`: from zero (the previous
            behaviour). Only acts while `router_bias_update_rate` > 0.
        router_bias_update_rate_final (`float | None`): the rate of the n-th update of a layer's bias is final +
            (rate − final)·exp(−n / `router_bias_decay_updates`), so a large step catches the drift of the first
            epoch and a small one keeps the trained router from swinging. The default 0.02 (from 0.05 over 50
            updates; runs v9): all 25 benchmark MERGE models keep every expert at ≥ 2.7 % of the test slots, where a
            constant 0.05 left one (WESAD-E4 paper labels, seed 4) at 1.7 %, caught in a late swing of its bias, and
            a constant 0.02 left 4 of 10 first-epoch WESAD-E4 folds under 2 % (benchmarks/README "Routing", "Runs
            v9"). `None`: a constant `router_bias_update_rate` (the behaviour before). A rate set under 0.02 rises
            toward the final rate, so set both, or `None`. The update count is the buffer `expert_bias_updates`, saved
            with the model so a resumed run continues the schedule; an older checkpoint without it starts at 0.
        router_bias_decay_updates (`float`): the decay length of that schedule, in bias updates (training steps).
        threshold_mode (`str`): `"percentile"` (thresholds are percentiles 0–100 of the stored RUS values,
            resolved in `set_rus`) or `"absolute"` (thresholds in bits).
        redundancy_threshold / uniqueness_threshold / synergy_threshold (`float`): τ_R, τ_U, τ_S.
        num_rus_lags (`int`): L, the number of RUS lags.
        dropout (`float`): dropout everywhere (attention, FFN, experts), except on the synergy experts' attention
            probabilities.
        synergy_attention_dropout (`float`): dropout on the synergy experts' cross-attention probabilities. The
            default 0.0 lets a training step use the fused attention kernel, as inference does: on PAMAP2-shaped
            input the step then costs ~1.4× the dense Transformer's instead of 1.55–1.7×, since the probabilities
            of the ~25 % of tokens the synergy experts get, each over the (M−1)·T keys of the other modalities of
            its sample, take more random numbers than a block's self-attention (benchmarks/README "Speed";
            accuracy in "Runs v10"). Their residual and feed-forward dropout (`dropout`) stay. `dropout`'s value
            (0.1) restores the behaviour before.
        layer_norm_eps (`float`), initializer_range (`float`).
    """

    model_type: ClassVar[str] = "merge"

    modalities: dict[str, int] | None = None
    patch_sizes: dict[str, int] | None = None
    token_grid_length: int | None = None
    d_model: int = 128
    num_attention_heads: int = 4
    ffn_dim: int = 256
    num_encoder_layers: int = 2
    use_encoder_conv: bool = False
    num_blocks: int = 6
    num_moe_blocks: int = 3
    num_feedforward_experts: int = 6
    num_synergy_experts: int = 2
    num_experts_per_token: int = 2
    expert_hidden_dim: int = 128
    expert_dispatch: str = "grouped_mm"
    router_type: str = "rus"
    router_gru_dim: int = 64
    router_top_partners: int | None = None
    load_balance_loss_weight: float = 0.02
    router_init: str = "fan_in"
    router_bias_update_rate: float = 0.05
    router_bias_update_rule: str = "log_ratio"
    router_bias_start: str = "centered"
    router_bias_tracks_logit_offsets: bool = True
    router_bias_update_rate_final: float | None = 0.02
    router_bias_decay_updates: float = 50.0
    num_rus_lags: int = 5
    dropout: float = 0.1
    synergy_attention_dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.modalities is None:
            self.modalities = _pamap2_modalities()
        pairs = list(self.modalities.items()) if isinstance(self.modalities, Mapping) else self.modalities
        _check(isinstance(pairs, (list, tuple)) and all(isinstance(pair, (list, tuple)) and len(pair) == 2
                                                       for pair in pairs), "modalities",
               "must be a mapping name → channels or a list of [name, channels] pairs", self.modalities)
        names = [str(name) for name, _ in pairs]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        _check(not duplicates, "modalities", f"names {duplicates} more than once (names are compared as strings); "
               "give each modality a distinct name", [list(pair) for pair in pairs])
        self.modalities = {name: channels for name, (_, channels) in zip(names, pairs)}
        _check(self.patch_sizes is None or isinstance(self.patch_sizes, Mapping), "patch_sizes",
               "must be a mapping name → patch size", self.patch_sizes)
        self.patch_sizes = {str(name): size for name, size in dict(self.patch_sizes or {}).items()}
        unknown = sorted(name for name in kwargs if name not in TRANSFORMERS_KWARGS and not name.startswith("_"))
        if unknown:
            raise ValueError(f"MergeConfig got unknown argument(s) {unknown}: not MergeConfig fields and not "
                             "transformers config arguments (check the spelling against the MergeConfig docstring).")
        kwargs.setdefault("num_labels", 12 if self.id2label is None else len(self.id2label))
        kwargs.setdefault("auto_map", dict(AUTO_MAP))
        super().__post_init__(**kwargs)
        self._validate()

    def to_dict(self) -> dict:
        """As the base class, with `modalities` as a list of `[name, channels]` pairs: JSON configs are written
        with sorted keys, and the modality order is the RUS / mask index."""
        output = super().to_dict()
        output["modalities"] = [[name, channels] for name, channels in self.modalities.items()]
        return output

    def to_diff_dict(self) -> dict:
        """As the base class, but always with the label maps: the base class drops them when they equal its own
        2-label default, and this class's default is 12 labels, so a binary model would reload with 12."""
        output = super().to_diff_dict()
        output.update({key: value for key, value in self.to_dict().items() if key in ("id2label", "label2id")})
        return output

    @property
    def modality_names(self) -> list[str]:
        """Modality names in index order."""
        return list(self.modalities)

    @property
    def num_modalities(self) -> int:
        return len(self.modalities)

    @property
    def num_experts(self) -> int:
        """E = synergy + feed-forward experts (synergy experts first)."""
        return self.num_synergy_experts + self.num_feedforward_experts

    @property
    def moe_block_indices(self) -> list[int]:
        """Indices of the MoE blocks, evenly spaced and ending at the last block (6 blocks, 3 MoE → 1, 3, 5)."""
        if self.num_moe_blocks == 0:
            return []
        return [(i + 1) * self.num_blocks // self.num_moe_blocks - 1 for i in range(self.num_moe_blocks)]

    def patch_size(self, name: str) -> int:
        return self.patch_sizes.get(name, 1)

    def _validate(self) -> None:
        _check(len(self.modalities) > 0, "modalities", "must name at least one modality", self.modalities)
        for name, channels in self.modalities.items():
            _check(_is_int(channels) and channels > 0, "modalities", f"channels of {name!r} must be an int > 0",
                   channels)
        for name, size in self.patch_sizes.items():
            _check(name in self.modalities, "patch_sizes", f"names unknown modality {name!r}; known: "
                   f"{self.modality_names}", name)
            _check(_is_int(size) and size > 0, "patch_sizes", f"patch of {name!r} must be an int > 0", size)
        self.validate_rus_routing()
        positive_ints = ("d_model", "num_attention_heads", "ffn_dim", "num_blocks", "expert_hidden_dim",
                         "router_gru_dim", "num_rus_lags")
        for field in positive_ints:
            _check(_is_int(getattr(self, field)) and getattr(self, field) > 0, field, "must be an int > 0",
                   getattr(self, field))
        for field in ("num_encoder_layers", "num_moe_blocks", "num_feedforward_experts", "num_synergy_experts"):
            _check(_is_int(getattr(self, field)) and getattr(self, field) >= 0, field, "must be an int >= 0",
                   getattr(self, field))
        _check(self.d_model % self.num_attention_heads == 0, "d_model",
               f"must be divisible by num_attention_heads={self.num_attention_heads}", self.d_model)
        _check(self.num_moe_blocks <= self.num_blocks, "num_moe_blocks",
               f"cannot exceed num_blocks={self.num_blocks}", self.num_moe_blocks)
        _check(self.router_type in ROUTER_TYPES, "router_type", f"must be one of {ROUTER_TYPES}", self.router_type)
        _check(self.expert_dispatch in EXPERT_DISPATCHES, "expert_dispatch", f"must be one of {EXPERT_DISPATCHES}",
               self.expert_dispatch)
        if self.router_type != "dense":
            _check(self.num_experts > 0, "num_feedforward_experts",
                   "an MoE router needs at least one expert (num_feedforward_experts + num_synergy_experts)",
                   self.num_experts)
            _check(_is_int(self.num_experts_per_token) and 0 < self.num_experts_per_token <= self.num_experts,
                   "num_experts_per_token", f"must be in [1, num_experts={self.num_experts}]",
                   self.num_experts_per_token)
        _check(self.num_labels is not None and self.num_labels >= 1, "num_labels", "must be >= 1", self.num_labels)
        _check(self.problem_type in PROBLEM_TYPES, "problem_type", f"must be one of {PROBLEM_TYPES}", self.problem_type)
        _check(isinstance(self.use_encoder_conv, bool), "use_encoder_conv", "must be a bool", self.use_encoder_conv)
        if self.token_grid_length is not None:
            _check(_is_int(self.token_grid_length) and self.token_grid_length > 0, "token_grid_length",
                   "must be None or an int > 0", self.token_grid_length)
        if self.router_top_partners is not None:
            _check(_is_int(self.router_top_partners) and self.router_top_partners > 0, "router_top_partners",
                   "must be None or an int > 0", self.router_top_partners)
            _check(self.router_type == "rus", "router_top_partners",
                   f"needs router_type='rus' (partners are chosen from the RUS), got {self.router_type!r}",
                   self.router_top_partners)
        _check(_is_number(self.load_balance_loss_weight) and 0 <= self.load_balance_loss_weight < math.inf,
               "load_balance_loss_weight", "must be a finite number >= 0 (0 = off)", self.load_balance_loss_weight)
        _check(self.router_init in ROUTER_INITS, "router_init", f"must be one of {ROUTER_INITS}", self.router_init)
        _check(self.router_bias_update_rule in ROUTER_BIAS_UPDATE_RULES, "router_bias_update_rule",
               f"must be one of {ROUTER_BIAS_UPDATE_RULES}", self.router_bias_update_rule)
        _check(self.router_bias_start in ROUTER_BIAS_STARTS, "router_bias_start", f"must be one of {ROUTER_BIAS_STARTS}",
               self.router_bias_start)
        _check(isinstance(self.router_bias_tracks_logit_offsets, bool), "router_bias_tracks_logit_offsets",
               "must be a bool", self.router_bias_tracks_logit_offsets)
        _check(isinstance(self.router_bias_update_rate, (int, float)) and 0 <= self.router_bias_update_rate < math.inf,
               "router_bias_update_rate", "must be a finite number >= 0 (0 = off)", self.router_bias_update_rate)
        _check(self.router_bias_update_rate_final is None or (
            _is_number(self.router_bias_update_rate_final) and 0 <= self.router_bias_update_rate_final < math.inf),
            "router_bias_update_rate_final", "must be None (a constant rate) or a finite number >= 0",
            self.router_bias_update_rate_final)
        _check(_is_number(self.router_bias_decay_updates) and 0 < self.router_bias_decay_updates < math.inf,
               "router_bias_decay_updates", "must be a finite number > 0 (updates)", self.router_bias_decay_updates)
        _check(isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1, "dropout", "must be in [0, 1)",
               self.dropout)
        _check(_is_number(self.synergy_attention_dropout) and 0 <= self.synergy_attention_dropout < 1,
               "synergy_attention_dropout", "must be in [0, 1)", self.synergy_attention_dropout)
        _check(isinstance(self.layer_norm_eps, (int, float)) and 0 < self.layer_norm_eps < math.inf,
               "layer_norm_eps", "must be a finite number > 0 (e.g. 1e-5)", self.layer_norm_eps)
        _check(isinstance(self.initializer_range, (int, float)) and 0 <= self.initializer_range < math.inf,
               "initializer_range", "must be a finite number >= 0 (e.g. 0.02)", self.initializer_range)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(condition: bool, field: str, requirement: str, value, owner: str = "MergeConfig") -> None:
    if not condition:
        raise ValueError(f"{owner}.{field} {requirement} (got {value!r}).")


__all__ = ["PAPER_ROUTING", "MergeConfig", "RusRoutingConfig"]
