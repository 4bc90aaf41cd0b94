"""End-to-end demo: a RUS-aware router inside a tiny Mixtral language model that reads sensor streams.

Two sensor streams (acc: 3 channels, ecg: 1 channel) are projected into the LM's embedding space and put
before a short text prompt; the model must answer with the class token. The RUS tables come from a sidecar
(`--rus rus.safetensors`, read with `modeling_merge.rus.sidecar.RusSidecar`) or, by default, from built-in
tables that mark acc and ecg as redundant (both carry the label) at every lag. The script installs the RUS
gates, trains LoRA adapters on the gates' RUS path and the attention projections (plus the sensor
projections) for a few steps, and prints per-modality routing statistics before and after.

    python examples/llm_router.py --steps 40 [--rus path/to/rus.safetensors] [--plot routing.png]
"""

from __future__ import annotations

import argparse
import dataclasses
from types import SimpleNamespace

import torch
from peft import LoraConfig, get_peft_model
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import MixtralConfig, MixtralForCausalLM

from modeling_merge.llm import RusGateConfig, RusRouting, install_rus_router

SENSOR_CHANNELS = {"acc": 3, "ecg": 1}
NUM_LAGS = 4
PROMPT_TOKENS = [5, 6, 7]  # "what is the activity?"
FIRST_CLASS_TOKEN = 10
NUM_CLASSES = 2


@dataclasses.dataclass
class DemoBatch:
    inputs_embeds: Tensor  # (B, S, hidden)
    modality_ids: Tensor  # (B, S) 0 text, 1 acc, 2 ecg
    labels: Tensor  # (B, S) next-token targets, -100 except at the answer
    classes: Tensor  # (B,)


def builtin_rus() -> SimpleNamespace:
    """[2, 2, L] tables (bits): acc and ecg redundant (R 0.6), little unique or synergistic information."""
    off_diagonal = (1.0 - torch.eye(2))[:, :, None].expand(-1, -1, NUM_LAGS)
    return SimpleNamespace(
        redundancy=0.6 * off_diagonal, uniqueness=0.05 * off_diagonal, synergy=0.02 * off_diagonal,
        metadata={"modality_names": list(SENSOR_CHANNELS)},
    )


def load_rus(path: str | None):
    if path is None:
        return builtin_rus()
    from modeling_merge.rus.sidecar import RusSidecar

    sidecar = RusSidecar.load(path)
    sidecar.validate(modality_names=list(SENSOR_CHANNELS), num_lags=NUM_LAGS)
    return sidecar


def make_batch(model: MixtralForCausalLM, projections: nn.ModuleDict, batch_size: int, steps: int,
               generator: torch.Generator) -> DemoBatch:
    """Sensor windows whose class shifts the mean of both streams, then prompt + answer tokens."""
    classes = torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator)
    shift = (2.0 * classes - 1.0)[:, None, None]
    embeddings, modality_ids = [], []
    for modality_id, (name, channels) in enumerate(SENSOR_CHANNELS.items(), start=1):
        window = torch.randn(batch_size, steps, channels, generator=generator) + shift
        embeddings.append(projections[name](window))
        modality_ids.append(torch.full((batch_size, steps), modality_id))
    text = torch.tensor(PROMPT_TOKENS).expand(batch_size, -1)
    answer = (FIRST_CLASS_TOKEN + classes)[:, None]
    embeddings.append(model.get_input_embeddings()(torch.cat([text, answer], dim=1)))
    modality_ids.append(torch.zeros(batch_size, len(PROMPT_TOKENS) + 1, dtype=torch.long))
    inputs_embeds = torch.cat(embeddings, dim=1)
    labels = torch.full(inputs_embeds.shape[:2], -100)
    labels[:, -1] = answer[:, 0]  # the LM loss shifts labels: the last prompt token predicts the answer
    return DemoBatch(inputs_embeds, torch.cat(modality_ids, dim=1), labels, classes)


def routing_report(model: nn.Module, routing: RusRouting, batch: DemoBatch, title: str) -> Tensor:
    """Print expert usage per modality, the acc/ecg routing overlap, p(answer) and the RUS losses."""
    with torch.no_grad():
        out = model(inputs_embeds=batch.inputs_embeds, modality_ids=batch.modality_ids, labels=batch.labels,
                    output_router_logits=True)
        usage = routing.expert_usage_by_modality()
    answer_probs = out.logits[:, -2].float().softmax(-1).gather(1, (FIRST_CLASS_TOKEN + batch.classes)[:, None])
    print(f"\n== {title}: loss {out.loss.item():.3f}, mean p(correct answer token) {answer_probs.mean().item():.3f}, "
          + ", ".join(f"{k} {v.item():+.4f}" for k, v in out.rus_aux_losses.items()))
    print("share of top-k slots per expert (all MoE layers)")
    print("modality " + " ".join(f"  e{e}" for e in range(usage.shape[1])))
    for name, row in zip(routing.modality_names, usage):
        print(f"{name:<8} " + " ".join(f"{share:.2f}" for share in row.tolist()))
    overlap = torch.minimum(usage[1], usage[2]).sum().item()
    print(f"acc/ecg routing overlap Σ_e min(share_acc, share_ecg) = {overlap:.3f}")
    return usage


def plot_usage(before: Tensor, after: Tensor, names: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 3), sharey=True)
    for axis, usage, title in zip(axes, (before, after), ("before LoRA", "after LoRA")):
        image = axis.imshow(usage.numpy(), vmin=0, vmax=max(before.max(), after.max()).item(), cmap="viridis")
        axis.set(title=title, xlabel="expert", yticks=range(len(names)), yticklabels=names)
    figure.colorbar(image, ax=axes, label="share of top-k slots")
    figure.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> None:
    class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        """The docstring as written, every option's default shown."""

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--rus", help="RUS sidecar (rus.safetensors or its folder) over acc, ecg (None: the built-in tables, acc and ecg redundant)")
    parser.add_argument("--steps", type=int, default=40, help="LoRA training steps")
    parser.add_argument("--batch_size", "--batch-size", type=int, default=16, help="sequences per step")
    parser.add_argument("--sensor_steps", "--sensor-steps", type=int, default=8, help="tokens per sensor stream")
    parser.add_argument("--learning_rate", "--lr", type=float, default=3e-3, help="AdamW learning rate of the adapters")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model, data and training")
    parser.add_argument("--redundancy_weight", "--redundancy-weight", type=float, default=1.0,
                        help="λ_R (0 = ablate the RUS loss)")
    parser.add_argument("--plot", help="write a PNG of expert usage per modality before/after")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    config = MixtralConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=8,
                           num_experts_per_tok=2, router_aux_loss_coef=0.02)
    model = MixtralForCausalLM(config)  # stands in for a pretrained MoE LM
    projections = nn.ModuleDict({name: nn.Linear(c, config.hidden_size) for name, c in SENSOR_CHANNELS.items()})
    gate_config = RusGateConfig(threshold_mode="absolute", redundancy_threshold=0.1, uniqueness_threshold=0.5,
                                synergy_threshold=0.1, redundancy_loss_weight=args.redundancy_weight)
    routing = install_rus_router(model, load_rus(args.rus), list(SENSOR_CHANNELS), gate_config)
    lora = LoraConfig(r=8, lora_alpha=16,
                      target_modules=r".*(rus_path\.(hidden|mixer|output|context\.(query|key|value))|q_proj|v_proj)")
    peft_model = get_peft_model(model, lora)
    peft_model.print_trainable_parameters()

    generator = torch.Generator().manual_seed(args.seed + 1)
    evaluation = make_batch(model, projections, 64, args.sensor_steps, generator)
    evaluation.inputs_embeds = evaluation.inputs_embeds.detach()
    before = routing_report(peft_model.eval(), routing, evaluation, "before")

    trainable = [p for p in peft_model.parameters() if p.requires_grad] + list(projections.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate)
    peft_model.train()
    progress = tqdm(range(args.steps), desc="LoRA steps")
    for _ in progress:
        batch = make_batch(model, projections, args.batch_size, args.sensor_steps, generator)
        out = peft_model(inputs_embeds=batch.inputs_embeds, modality_ids=batch.modality_ids, labels=batch.labels,
                         output_router_logits=True)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        progress.set_postfix(loss=f"{out.loss.item():.3f}", rus=f"{out.rus_aux_loss.item():+.4f}")

    evaluation = make_batch(model, projections, 64, args.sensor_steps, torch.Generator().manual_seed(args.seed + 2))
    after = routing_report(peft_model.eval(), routing, evaluation, "after")
    if args.plot:
        plot_usage(before, after, routing.modality_names, args.plot)


if __name__ == "__main__":
    main()
