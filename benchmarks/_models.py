"""Model, batch, training-step and peak-memory helpers shared by the model benchmarks (speed, modality scaling)."""

from __future__ import annotations

from dataclasses import dataclass

from _timing import peak_memory_mib

PAMAP2_MODALITIES = {"hand": 13, "chest": 13, "ankle": 13, "heart_rate": 1}
NUM_LABELS = 12


@dataclass
class Shape:
    """Where and what a model benchmark runs: device, dtype name, CPU threads, batch, window (time steps)."""

    device: str = "cpu"
    dtype: str = "fp32"
    threads: int = 2
    batch_size: int = 32
    window: int = 100


def random_rus(num_modalities: int, num_lags: int, seed: int = 0):
    """Random valid RUS tensors [M, M, L] in bits (R, S symmetric, all ≥ 0), varied enough that top-k partner
    selection and the percentile thresholds have something to choose."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    shared = torch.rand(num_modalities, num_modalities, num_lags, generator=generator)
    synergy = torch.rand(num_modalities, num_modalities, num_lags, generator=generator)
    return (shared + shared.transpose(0, 1), torch.rand(num_modalities, num_modalities, num_lags, generator=generator),
            synergy + synergy.transpose(0, 1))


def build_model(modalities: dict[str, int], shape: Shape, router_type: str = "rus", expert_dispatch: str = "grouped_mm",
                **overrides):
    """A MERGE classifier (reference PAMAP2 hyper-parameters unless overridden) with random RUS, on the device in
    the benchmark dtype (weights and activations both: grouped_mm needs bf16 operands on CUDA)."""
    import torch

    from modeling_merge import MergeConfig, MergeForSequenceClassification

    torch.manual_seed(0)
    config = MergeConfig(modalities=modalities, num_labels=NUM_LABELS, router_type=router_type,
                         expert_dispatch=expert_dispatch, **overrides)
    model = MergeForSequenceClassification(config)
    model.set_rus(*random_rus(config.num_modalities, config.num_rus_lags))
    dtype = torch.bfloat16 if shape.dtype == "bf16" else torch.float32
    return model.to(device=shape.device, dtype=dtype)


def make_batch(modalities: dict[str, int], shape: Shape):
    """Random inputs name → (B, window, C) and labels (B,) on the device."""
    import torch

    generator = torch.Generator().manual_seed(1)
    inputs = {name: torch.randn(shape.batch_size, shape.window, channels, generator=generator).to(shape.device)
              for name, channels in modalities.items()}
    labels = torch.randint(0, NUM_LABELS, (shape.batch_size,), generator=generator).to(shape.device)
    return inputs, labels


def train_step_function(model, inputs, labels):
    """One training step (forward, backward, grad-clip 1.0, AdamW lr 1e-3 / wd 1e-5), as a no-argument callable
    (its AdamW optimizer is the attribute `optimizer`)."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5)

    def train_step():
        model.train()
        loss = model(modalities=inputs, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    train_step.optimizer = optimizer
    return train_step


def inference_function(model, inputs):
    """One eval-mode forward without autograd, as a no-argument callable."""
    import torch

    def infer():
        model.eval()
        with torch.inference_mode():
            model(modalities=inputs)

    return infer


def train_step_memory(model, train_step, shape: Shape) -> dict:
    """Peak tensor memory (MiB) of one training step after a warm-up step (so the AdamW state exists and counts),
    and the parameter count."""
    train_step()
    return {"peak_memory_mib": peak_memory_mib(train_step, shape.device, model, train_step.optimizer),
            "parameters": sum(parameter.numel() for parameter in model.parameters())}
