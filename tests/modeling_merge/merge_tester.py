"""The tiny MERGE model the tests share (transformers' `ModelTester` style): config, inputs, labels for every
problem type, and a valid RUS (symmetric R and S, bits ≥ 0)."""

from dataclasses import dataclass, field

import torch

from modeling_merge import MergeConfig, MergeForSequenceClassification


@dataclass
class MergeModelTester:
    """Sizes of the tiny model: 3 modalities (one patched), d_model 16, 2 blocks of which 1 MoE, 5 experts."""

    modalities: dict[str, int] = field(default_factory=lambda: {"acc": 3, "bvp": 1, "eda": 2})
    patch_sizes: dict[str, int] = field(default_factory=lambda: {"bvp": 2})
    num_labels: int = 3
    num_rus_lags: int = 3
    batch_size: int = 3
    num_tokens: int = 4

    def config(self, **overrides) -> MergeConfig:
        settings = dict(
            modalities=self.modalities, patch_sizes=self.patch_sizes, num_labels=self.num_labels, d_model=16,
            num_attention_heads=2, ffn_dim=32, num_encoder_layers=1, num_blocks=2, num_moe_blocks=1,
            num_feedforward_experts=3, num_synergy_experts=2, expert_hidden_dim=16, router_hidden_dim=8,
            router_gru_dim=8, router_attention_dim=8, num_rus_lags=self.num_rus_lags, dropout=0.0,
        )
        settings.update(overrides)
        return MergeConfig(**settings)

    @staticmethod
    def rus(num_modalities: int, num_lags: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Random valid (redundancy, uniqueness, synergy) `[M, M, L]` in bits."""
        generator = torch.Generator().manual_seed(seed)
        redundancy, synergy = (torch.rand(num_modalities, num_modalities, num_lags, generator=generator) for _ in "RS")
        uniqueness = torch.rand(num_modalities, num_modalities, num_lags, generator=generator)
        return (redundancy + redundancy.transpose(0, 1)) / 2, uniqueness, (synergy + synergy.transpose(0, 1)) / 2

    def model(self, model_class=MergeForSequenceClassification, **overrides):
        """A model of `model_class` on `config(**overrides)` with a random valid RUS set."""
        model = model_class(self.config(**overrides))
        model.set_rus(*self.rus(model.config.num_modalities, model.config.num_rus_lags))
        return model

    def inputs(self, config: MergeConfig, batch: int | None = None, tokens: int | None = None,
               seed: int = 0) -> dict[str, torch.Tensor]:
        """Random modality inputs, name → `(batch, tokens · patch, channels)`."""
        generator = torch.Generator().manual_seed(seed)
        batch = self.batch_size if batch is None else batch
        tokens = self.num_tokens if tokens is None else tokens
        return {
            name: torch.randn(batch, tokens * config.patch_size(name), channels, generator=generator)
            for name, channels in config.modalities.items()
        }

    def labels(self, config: MergeConfig, batch: int | None = None, tokens: int | None = None, per_step: bool = False,
               seed: int = 0) -> torch.Tensor:
        """Labels for `config.problem_type`: class ids `(B,)`, multi-hot floats `(B, num_labels)`, regression
        targets `(B, num_labels)`, or class ids per step `(B, T)` (`per_step`, with one step ignored: -100)."""
        generator = torch.Generator().manual_seed(seed)
        batch = self.batch_size if batch is None else batch
        tokens = self.num_tokens if tokens is None else tokens
        if per_step:
            labels = torch.randint(0, config.num_labels, (batch, tokens), generator=generator)
            labels[0, -1] = -100
            return labels
        if config.problem_type == "multi_label_classification":
            return torch.randint(0, 2, (batch, config.num_labels), generator=generator).float()
        if config.problem_type == "regression":
            return torch.randn(batch, config.num_labels, generator=generator)
        return torch.randint(0, config.num_labels, (batch,), generator=generator)


def train_steps(model, batch: dict, steps: int, lr: float = 1e-2) -> list[float]:
    """`steps` AdamW steps of `model(**batch).loss` on the trainable parameters; returns the task losses (the
    loss without the auxiliary routing losses, which need not fall while the model learns)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        output = model(**batch)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        aux_loss = getattr(output, "aux_loss", None)
        losses.append(output.loss.item() - (0.0 if aux_loss is None else aux_loss.item()))
    return losses


TESTER = MergeModelTester()
tiny_config = TESTER.config
tiny_model = TESTER.model
make_inputs = TESTER.inputs
random_rus = MergeModelTester.rus
