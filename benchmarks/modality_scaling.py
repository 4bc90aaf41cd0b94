"""How MERGE's cost grows with the number of modalities M at a fixed number of tokens per modality.

For M = 4, 8, 16, 32, 64, 128 modalities (3 channels each, a fixed token grid per modality), reference widths
(D 128, 3 MoE blocks of 6, 8 experts, top-2), three variants side by side (interleaved rounds, median):
MERGE with every partner in the router's RUS context (`router_top_partners=None`: M−1 partners per modality,
M(M−1)/2 loss pairs), MERGE with the top-k partners (`router_top_partners=k`: k partners, at most M·k loss
pairs), and the dense Transformer as the backbone reference. Per variant and M:

- router: RUS context lookup + RUS router forward + backward of one MoE layer;
- RUS losses: the redundancy / uniqueness / synergy / load-balance losses of one layer, forward + backward;
- full training step (forward + backward + clip + AdamW); peak tensor memory of the router and of a step;
- the growth exponent: the least-squares slope of log(time) against log(M), over M ≥ 16 and over all M.

    python benchmarks/modality_scaling.py            # ~6-10 min on 2 CPU cores
    python benchmarks/modality_scaling.py --quick    # M up to 64, fewer rounds
    python benchmarks/modality_scaling.py --device cuda
"""

from __future__ import annotations

import argparse

import _models
from _models import Shape, build_model, make_batch
from _timing import (
    add_common_arguments,
    environment,
    format_table,
    interleaved_timings,
    loglog_slope,
    peak_memory_mib,
    resolve_dtype,
    write_json,
)

CHANNELS = 3
MEASURES = ("router_ms", "losses_ms", "train_step_ms")


def modalities_of(count: int) -> dict[str, int]:
    return {f"m{index:03d}": CHANNELS for index in range(count)}


def variants(top_partners: int) -> dict[str, dict]:
    """name → build_model keyword arguments."""
    return {"MERGE all partners": {"router_type": "rus"},
            f"MERGE top-{top_partners} partners": {"router_type": "rus", "router_top_partners": top_partners},
            "dense Transformer": {"router_type": "dense"}}


def routing_functions(model, shape: Shape) -> dict:
    """Forward + backward of the first MoE layer's router (with the RUS context lookup) and of its RUS losses,
    on fixed random hidden states; returns {"router": fn, "losses": fn} and the partner / loss-pair counts."""
    import torch

    from modeling_merge.modeling_merge import merge_auxiliary_losses

    merge = model.merge.train()
    config = merge.config
    moe = merge.blocks[config.moe_block_indices[0]].feed_forward
    hidden = torch.randn(shape.batch_size, config.num_modalities, shape.window, config.d_model)
    hidden = hidden.to(shape.device, merge.final_norm.weight.dtype).requires_grad_()
    presence = torch.ones(shape.batch_size, config.num_modalities, dtype=torch.bool, device=shape.device)
    rus = merge.rus_context(shape.window, presence)
    logits = moe.router(hidden, rus).detach().float()
    experts = torch.topk(logits, config.num_experts_per_token, dim=-1).indices

    def router():
        moe.router(hidden, merge.rus_context(shape.window, presence)).float().sum().backward()

    def losses():
        probs = logits.requires_grad_().softmax(-1)
        sum(merge_auxiliary_losses(probs, experts, presence, rus, config).values()).backward()

    counts = {"partners": int(rus.pair_features.shape[2]), "loss_pairs": int(rus.loss_pairs.shape[0])}
    return {"router": router, "losses": losses}, counts


def measure(count: int, shape: Shape, top_partners: int, rounds: int) -> list[dict]:
    """Every variant at M = count, timed side by side; then the peak memory of each."""
    modalities = modalities_of(count)
    inputs, labels = make_batch(modalities, shape)
    functions, counts, memory = {}, {}, {}
    for name, overrides in variants(top_partners).items():
        model = build_model(modalities, shape, **overrides)
        train_step = _models.train_step_function(model, inputs, labels)
        functions[f"{name}|train_step"] = train_step
        memory[name] = _models.train_step_memory(model, train_step, shape)
        if overrides["router_type"] == "rus":
            routing, counts[name] = routing_functions(model, shape)
            functions |= {f"{name}|{part}": function for part, function in routing.items()}
            memory[name]["router_peak_mib"] = peak_memory_mib(routing["router"], shape.device, model)
    timings = interleaved_timings(functions, rounds, shape.device)
    rows = []
    for name, overrides in variants(top_partners).items():
        row = {"M": count, "variant": name, **counts.get(name, {}),
               "tokens_per_step": shape.batch_size * count * shape.window}
        for part in ("router", "losses", "train_step"):
            timing = timings.get(f"{name}|{part}")
            row[f"{part}_ms"] = None if timing is None else 1000 * timing["median_s"]
        row |= memory[name]
        rows.append(row)
    return rows


def growth_exponents(rows: list[dict], smallest: int) -> list[dict]:
    """Per variant and measure, the log-log slope of time (and train-step memory) against M."""
    fits = []
    for name in dict.fromkeys(row["variant"] for row in rows):
        fit = {"variant": name, "fit_over": f"M >= {smallest}"}
        for measure in (*MEASURES, "router_peak_mib", "peak_memory_mib"):
            points = [(row["M"], row[measure]) for row in rows
                      if row["variant"] == name and row["M"] >= smallest and row.get(measure)]
            fit[measure] = loglog_slope(*zip(*points)) if len(points) >= 2 and all(v > 0 for _, v in points) else None
        fits.append(fit)
    return fits


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, "modality_scaling.json")
    parser.add_argument("--sizes", default=None, help="comma-separated M values (default 4,8,16,32,64,128)")
    parser.add_argument("--tokens", type=int, default=16, help="tokens per modality (window, patch size 1)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--top-partners", type=int, default=4, help="k of the top-k variant")
    args = parser.parse_args(argv)
    import torch

    resolve_dtype(args)
    torch.set_num_threads(args.threads)
    sizes = [int(size) for size in args.sizes.split(",")] if args.sizes else \
        [4, 8, 16, 32, 64] if args.quick else [4, 8, 16, 32, 64, 128]
    rounds = args.rounds or (3 if args.quick else 5)
    shape = Shape(device=args.device, dtype=args.dtype, threads=args.threads, batch_size=args.batch_size,
                  window=args.tokens)
    payload = {"environment": environment(args.device, args.dtype),
               "shape": vars(shape) | {"channels_per_modality": CHANNELS, "top_partners": args.top_partners},
               "rounds": rounds, "results": []}
    print(f"batch {shape.batch_size}, {shape.window} tokens per modality, {CHANNELS} channels each, device "
          f"{shape.device}, {shape.dtype}, {torch.get_num_threads()} threads, {rounds} interleaved rounds (median)",
          flush=True)
    for count in sizes:
        rows = measure(count, shape, args.top_partners, rounds)
        payload["results"] += rows
        print("  " + "; ".join(f"M={count} {row['variant']}: step {row['train_step_ms']:.0f} ms" for row in rows),
              flush=True)
    columns = [("M", "M", "d"), ("variant", "variant", "s"), ("partners", "partners", "d"),
               ("loss_pairs", "loss pairs", "d"), ("router_ms", "router ms", ".1f"), ("losses_ms", "losses ms", ".1f"),
               ("train_step_ms", "step ms", ".0f"), ("router_peak_mib", "router MiB", ".1f"),
               ("peak_memory_mib", "step MiB", ".0f")]
    print(format_table(payload["results"], columns))
    payload["growth_exponents"] = [*growth_exponents(payload["results"], 16),
                                   *growth_exponents(payload["results"], min(sizes))]
    print("\ngrowth exponent (slope of log cost vs log M; 1 = linear, 2 = quadratic)")
    print(format_table(payload["growth_exponents"], [
        ("variant", "variant", "s"), ("fit_over", "fit over", "s"), ("router_ms", "router", ".2f"),
        ("losses_ms", "losses", ".2f"), ("train_step_ms", "step", ".2f"), ("router_peak_mib", "router memory", ".2f"),
        ("peak_memory_mib", "step memory", ".2f")]))
    write_json(args.output, payload)
    return payload


if __name__ == "__main__":
    main()
