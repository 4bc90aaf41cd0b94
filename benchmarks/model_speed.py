"""MERGE training / inference speed and peak memory on PAMAP2-shaped input against the dense Transformer of the
same width, the three MoE dispatch paths (eager / sorted / grouped_mm), and where MERGE's extra time goes.

Input: 4 modalities (3 IMUs × 13 channels + heart rate), 100-step windows, batch 32, reference PAMAP2
hyper-parameters (MergeConfig defaults: D 128, 6 blocks of which 3 MoE, 8 experts of which 2 synergy, top-2).

1. Full models, timed side by side (interleaved rounds, median) after `--warmup-steps` training steps of each:
   training step (forward + backward + grad clip + AdamW) and inference (eval, no autograd) for the dense
   Transformer (`router_type="dense"`), MERGE with each `expert_dispatch`, MERGE with the paper's routing
   (every token on the synergy experts) and FuseMoE (`laplace_per_modality`). Peak tensor memory of a training
   step per variant (parameters, gradients, AdamW state, activations).
2. Dispatch alone: the feed-forward experts' forward + backward on one MoE layer's routed slots, per dispatch
   path, in fp32 and bf16.
3. Components: forward + backward of one MoE layer's parts on the same hidden states, against the dense
   feed-forward layer it replaces — where MERGE's extra time goes.
4. Routing: share of the top-k slots that go to the synergy experts (the costly, cross-attention ones) per MoE
   layer and the least / most used expert, at initialisation and after 3 and 30 training steps: MERGE, MERGE
   with each balancing part off, the paper's routing (also with synergy weight 0.1 / load-balance weight 0.2),
   softmax top-k and FuseMoE.

    python benchmarks/model_speed.py                  # ~6-10 min on 2 CPU cores
    python benchmarks/model_speed.py --quick          # ~2-3 min, fewer rounds
    python benchmarks/model_speed.py --device cuda    # bf16 on the GPU
"""

from __future__ import annotations

import argparse

import _models
from _models import PAMAP2_MODALITIES, Shape, build_model, make_batch
from _timing import (
    add_common_arguments,
    environment,
    format_table,
    interleaved_timings,
    resolve_dtype,
    write_json,
)

from modeling_merge.configuration_merge import PAPER_ROUTING

FULL_MODELS = {  # name → (router_type, expert_dispatch, config overrides)
    "dense Transformer": ("dense", "grouped_mm", {}),
    "MERGE grouped_mm": ("rus", "grouped_mm", {}),
    "MERGE sorted": ("rus", "sorted", {}),
    "MERGE eager": ("rus", "eager", {}),
    "MERGE paper routing (collapsed)": ("rus", "grouped_mm", PAPER_ROUTING),
    "FuseMoE (laplace_per_modality)": ("laplace_per_modality", "grouped_mm", {}),
}
DISPATCHES = ("eager", "sorted", "grouped_mm")


def full_models(shape: Shape, rounds: int, log, warmup_steps: int) -> list[dict]:
    """Section 1: training and inference time of every full model, interleaved, after `warmup_steps` training
    steps of each (routing at initialisation is not the routing a run spends its time in); then peak memory."""
    inputs, labels = make_batch(PAMAP2_MODALITIES, shape)
    models = {name: build_model(PAMAP2_MODALITIES, shape, router_type, dispatch, **overrides)
              for name, (router_type, dispatch, overrides) in FULL_MODELS.items()}
    train_steps = {name: _models.train_step_function(model, inputs, labels) for name, model in models.items()}
    for train_step in train_steps.values():
        for _ in range(warmup_steps):
            train_step()
    functions = {f"train {name}": step for name, step in train_steps.items()}
    functions |= {f"infer {name}": _models.inference_function(model, inputs) for name, model in models.items()}
    timings = interleaved_timings(functions, rounds, shape.device, log=log)
    dense = timings["train dense Transformer"]["median_s"]
    dense_infer = timings["infer dense Transformer"]["median_s"]
    rows = []
    for name, (router_type, dispatch, _) in FULL_MODELS.items():
        memory = _models.train_step_memory(models[name], train_steps[name], shape)
        train, infer = timings[f"train {name}"], timings[f"infer {name}"]
        rows.append({
            "variant": name, "router_type": router_type, "expert_dispatch": dispatch,
            "train_step_s": train["median_s"], "train_step_min_s": train["min_s"],
            "train_step_cpu_s": train["cpu_median_s"], "train_samples_per_s": shape.batch_size / train["median_s"],
            "infer_step_s": infer["median_s"], "infer_samples_per_s": shape.batch_size / infer["median_s"],
            "train_step_vs_dense": train["median_s"] / dense, "infer_vs_dense": infer["median_s"] / dense_infer,
            **memory,
        })
    return rows


def _routed_slots(shape: Shape, dtype):
    """Tokens and expert ids of one MoE layer's feed-forward slots: B·M·T·k slots, 6 of 8 experts feed-forward."""
    import torch

    from modeling_merge import MergeConfig

    config = MergeConfig()
    generator = torch.Generator().manual_seed(0)
    num_slots = shape.batch_size * len(PAMAP2_MODALITIES) * shape.window * config.num_experts_per_token
    num_slots = num_slots * config.num_feedforward_experts // config.num_experts
    tokens = torch.randn(num_slots, config.d_model, generator=generator).to(shape.device, dtype)
    expert_ids = torch.randint(0, config.num_feedforward_experts, (num_slots,), generator=generator).to(shape.device)
    return config, tokens.requires_grad_(), expert_ids


def dispatch_paths(shape: Shape, rounds: int, log) -> list[dict]:
    """Section 2: MergeFeedForwardExperts forward + backward per dispatch path and dtype (same weights)."""
    import torch

    from modeling_merge.modeling_merge import (
        MergeFeedForwardExperts,
        _grouped_mm_supported,
    )

    rows = []
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        config, tokens, expert_ids = _routed_slots(shape, dtype)
        torch.manual_seed(0)
        reference = MergeFeedForwardExperts(config)
        functions = {}
        for dispatch in DISPATCHES:
            experts = MergeFeedForwardExperts(config)
            experts.load_state_dict(reference.state_dict())
            experts.dispatch = dispatch
            experts.to(shape.device, dtype).train()

            def forward_backward(experts=experts, tokens=tokens, expert_ids=expert_ids):
                experts(tokens, expert_ids).float().sum().backward()

            functions[dispatch] = forward_backward
        timings = interleaved_timings(functions, rounds, shape.device, log=log)
        supported = _grouped_mm_supported(tokens, reference.w_in.to(shape.device, dtype))
        for dispatch in DISPATCHES:
            rows.append({"dtype": dtype_name, "expert_dispatch": dispatch, "slots": tokens.shape[0],
                         "grouped_mm_runs": supported if dispatch == "grouped_mm" else None,
                         "forward_backward_ms": 1000 * timings[dispatch]["median_s"],
                         "vs_eager": timings[dispatch]["median_s"] / timings["eager"]["median_s"]})
    return rows


def components(shape: Shape, rounds: int, log, warmup_steps: int) -> list[dict]:
    """Section 3: forward + backward of one MoE layer and its parts vs the dense feed-forward layer, on the hidden
    states that enter MERGE's first MoE block after `warmup_steps` training steps on the benchmark batch, with the
    routing the layer has then (training mode, dropout on)."""
    import torch

    from modeling_merge.modeling_merge import merge_auxiliary_losses

    inputs, labels = make_batch(PAMAP2_MODALITIES, shape)
    model = build_model(PAMAP2_MODALITIES, shape, "rus")
    train_step = _models.train_step_function(model, inputs, labels)
    for _ in range(warmup_steps):
        train_step()
    merge = model.merge.train()
    dense = build_model(PAMAP2_MODALITIES, shape, "dense").merge.train()
    index = merge.config.moe_block_indices[0]
    moe, feed_forward = merge.blocks[index].feed_forward, dense.blocks[index].feed_forward
    captured = []
    handle = moe.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach()))
    with torch.no_grad():
        model(modalities=inputs)
    handle.remove()
    hidden = captured[0].requires_grad_()
    batch, num_modalities, tokens, _ = hidden.shape
    presence = torch.ones(batch, num_modalities, dtype=torch.bool, device=shape.device)
    rus = merge.rus_context(tokens, presence)
    partners = merge.rus_partner_index
    experts = moe(hidden, presence, rus, partners)[2]
    gru_input = torch.randn(batch * num_modalities, tokens, moe.router.gru.input_size).to(hidden)
    # the layer's own routing: each synergy expert's tokens, and the feed-forward experts' slots
    top_k, num_synergy = merge.config.num_experts_per_token, merge.config.num_synergy_experts
    token_experts = experts.reshape(-1, top_k)
    synergy_tokens = [torch.nonzero((token_experts == expert).any(-1)).squeeze(1) for expert in range(num_synergy)]
    slot_experts = token_experts.reshape(-1)
    feedforward_slots = slot_experts >= num_synergy
    feedforward_tokens = torch.arange(token_experts.shape[0], device=shape.device).repeat_interleave(top_k)[feedforward_slots]
    feedforward_ids = slot_experts[feedforward_slots] - num_synergy
    synergy_share = 1 - feedforward_slots.float().mean().item()
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])

    def backward(output):
        output.float().sum().backward()

    def aux_losses():
        logits = moe.router(hidden, rus).float()
        losses = merge_auxiliary_losses(logits.softmax(-1), experts, presence, rus, merge.config)
        backward(sum(losses.values()))

    functions = {
        "dense feed-forward layer (what the dense model runs)": lambda: backward(feed_forward(hidden)),
        "MoE layer (router + all experts)": lambda: backward(moe(hidden, presence, rus, partners)[0]),
        "RUS router (context attention + GRU + MLP)": lambda: backward(moe.router(hidden, rus)),
        "router GRU alone": lambda: backward(moe.router.gru(gru_input.requires_grad_())[0]),
        f"the {num_synergy} synergy experts (cross-attention; {synergy_share:.0%} of the slots)": lambda: backward(sum(
            expert(hidden, token_index, presence, partners).sum()
            for expert, token_index in zip(moe.synergy_experts, synergy_tokens))),
        f"the {merge.config.num_feedforward_experts} feed-forward experts ({1 - synergy_share:.0%} of the slots)":
            lambda: backward(moe.feedforward_experts(flat_hidden[feedforward_tokens], feedforward_ids)),
        "self-attention sublayer (in every block of both models)": lambda: backward(
            merge.blocks[index].self_attention(hidden.flatten(0, 1))[0]),
        "router + auxiliary losses": aux_losses,
    }
    timings = interleaved_timings(functions, rounds, shape.device, log=log)
    base = timings[next(iter(functions))]["median_s"]
    return [{"component": name, "forward_backward_ms": 1000 * timing["median_s"],
             "vs_dense_layer": timing["median_s"] / base} for name, timing in timings.items()]


ROUTING_VARIANTS = {
    "MERGE": ("rus", {}),
    "MERGE paper routing": ("rus", PAPER_ROUTING),
    "MERGE paper routing, synergy loss weight 0.1": ("rus", {**PAPER_ROUTING, "synergy_loss_weight": 0.1}),
    "MERGE paper routing, load-balance weight 0.2": ("rus", {**PAPER_ROUTING, "load_balance_loss_weight": 0.2}),
    "MERGE, no selection bias": ("rus", {"router_bias_update_rate": 0.0}),
    "MERGE, no synergy target": ("rus", {"synergy_target_mass": None}),
    "MERGE, initializer_range router init": ("rus", {"router_init": "initializer_range"}),
    "softmax top-k": ("softmax", {}),
    "FuseMoE (laplace_per_modality)": ("laplace_per_modality", {}),
}


def synergy_routing(shape: Shape, checkpoints: tuple[int, ...] = (0, 3, 30)) -> list[dict]:
    """Section 4: per MoE layer, the share of top-k slots routed to synergy experts (eval-mode forward), and the
    least / most used expert's share over all layers, at initialisation and after each number of training steps
    in `checkpoints`, on the benchmark batch: MERGE as configured by default, each of its balancing parts
    switched off, the paper's routing (with changed loss weights), and the softmax / FuseMoE controls."""
    import torch

    inputs, labels = make_batch(PAMAP2_MODALITIES, shape)
    rows = []
    for name, (router_type, overrides) in ROUTING_VARIANTS.items():
        model = build_model(PAMAP2_MODALITIES, shape, router_type, **overrides)
        train_step = _models.train_step_function(model, inputs, labels)
        trained_steps = 0
        for target in checkpoints:
            for _ in range(target - trained_steps):
                train_step()
            trained_steps = target
            model.eval()
            with torch.no_grad():
                selected = model(modalities=inputs, output_router_probs=True).selected_experts
            shares = [float((experts < model.config.num_synergy_experts).float().mean()) for experts in selected]
            loads = torch.stack([torch.bincount(experts.reshape(-1), minlength=model.config.num_experts) / experts.numel()
                                 for experts in selected])
            rows.append({"variant": name, "training_steps": trained_steps,
                         "synergy_slot_share_per_layer": " / ".join(f"{share:.2f}" for share in shares),
                         "expert_share_min": float(loads.min()), "expert_share_max": float(loads.max())})
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, "model_speed.json")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup-steps", type=int, default=30, help="training steps of each model before timing")
    parser.add_argument("--sections", default="full,dispatch,components,routing", help="comma-separated subset to run")
    args = parser.parse_args(argv)
    import torch

    resolve_dtype(args)
    torch.set_num_threads(args.threads)
    shape = Shape(device=args.device, dtype=args.dtype, threads=args.threads, batch_size=args.batch_size)
    rounds = args.rounds or (3 if args.quick else 5)
    sections = set(args.sections.split(","))
    payload = {"environment": environment(args.device, args.dtype), "shape": vars(shape) | {"modalities": PAMAP2_MODALITIES},
               "rounds": rounds}
    print(f"PAMAP2-shaped batch {shape.batch_size}×{shape.window} steps, 4 modalities, device {shape.device}, "
          f"{shape.dtype}, {torch.get_num_threads()} threads of {payload['environment']['os_cpu_count']} cores, "
          f"{rounds} interleaved rounds (median)", flush=True)
    if "full" in sections:
        rows = full_models(shape, rounds, log=lambda line: print(line, flush=True), warmup_steps=args.warmup_steps)
        payload["full_models"] = rows
        print("\n[1] full models: training step (fwd + bwd + clip + AdamW) and inference")
        print(format_table(rows, [
            ("variant", "variant", "s"), ("train_step_s", "train s/step", ".3f"),
            ("train_samples_per_s", "train samples/s", ".1f"), ("infer_step_s", "infer s/step", ".3f"),
            ("infer_samples_per_s", "infer samples/s", ".1f"), ("train_step_vs_dense", "train / dense", ".2f"),
            ("infer_vs_dense", "infer / dense", ".2f"), ("peak_memory_mib", "peak MiB", ".0f")]), flush=True)
    if "dispatch" in sections:
        rows = dispatch_paths(shape, rounds, log=None)
        payload["dispatch"] = rows
        print("\n[2] feed-forward experts alone, forward + backward of one MoE layer's routed slots")
        print(format_table(rows, [("dtype", "dtype", "s"), ("expert_dispatch", "dispatch", "s"),
                                  ("slots", "slots", "d"), ("forward_backward_ms", "fwd+bwd ms", ".1f"),
                                  ("vs_eager", "vs eager", ".2f")]), flush=True)
    if "components" in sections:
        rows = components(shape, rounds, log=None, warmup_steps=args.warmup_steps)
        payload["components"] = rows
        print("\n[3] one MoE layer's parts, forward + backward, vs the dense feed-forward layer it replaces")
        print(format_table(rows, [("component", "component", "s"), ("forward_backward_ms", "fwd+bwd ms", ".1f"),
                                  ("vs_dense_layer", "vs dense layer", ".2f")]), flush=True)
    if "routing" in sections:
        rows = synergy_routing(shape)
        payload["routing"] = rows
        print("\n[4] share of top-k slots routed to the synergy experts, per MoE layer (uniform: 0.25)")
        print(format_table(rows, [("variant", "variant", "s"), ("training_steps", "training steps", "d"),
                                  ("synergy_slot_share_per_layer", "synergy share per layer", "s"),
                                  ("expert_share_min", "least-used expert", ".3f"),
                                  ("expert_share_max", "most-used expert", ".3f")]), flush=True)
    write_json(args.output, payload)
    return payload


if __name__ == "__main__":
    main()
