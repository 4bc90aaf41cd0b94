"""Measured claims of the RUS estimators (prints figures and writes JSON; not a test).

1. Accuracy against the exact solver on the discrete synthetic suite (XOR, AND, copy, unique, mixed): BATCH
   on the symbols embedded as noisy ±1 features vs the exact BROJA PID (CVXPY) of the class-balanced joint
   that BATCH's balanced sampling sees; absolute error per term in bits, and the time of each.
2. Multi-scale vs step-wise BATCH on the known-RUS temporal benchmark: wall-time ratio, timed A-B-A
   (multi-scale, step-wise, multi-scale again; the ratio uses the mean of the two multi-scale runs so that a
   load change during the run hits both sides), the relative R / U / S difference
   Σ|multi-scale − step-wise| / Σ|step-wise| per term (target ≤ 10 %), each one's mean absolute error
   against the benchmark's exact temporal RUS of the latent symbols, and planted-structure recovery.
3. Sinkhorn iterations to a 1e-6 marginal error, with and without the class-mass rescaling.
4. Time to estimate all M(M−1)/2 pairs for M = 4, 16, 64 modalities: seconds per discriminator step,
   per alignment step and per read-out batch, and the projected time of a default run (600 + 100 steps,
   L = 4 lags).

    python benchmarks/rus_estimation.py            # full figures (~5 min on one CPU core)
    python benchmarks/rus_estimation.py --quick    # smaller budgets (~2 min)
    python benchmarks/rus_estimation.py --device cuda
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from dataclasses import replace

import numpy as np
import torch
from _timing import RESULTS_DIR, environment, format_table, loglog_slope, write_json

from modeling_merge.rus.batch import BatchConfig, multiscale_batch, stepwise_batch
from modeling_merge.rus.pid import exact_pid, quantized_pid
from modeling_merge.rus.sinkhorn import sinkhorn_couplings
from modeling_merge.rus.synthetic import (
    continuous_pid_samples,
    discrete_pid_cases,
    make_temporal_rus_benchmark,
    mixed_case,
    parity_case,
    sample_from_joint,
    shared_symbol_case,
)
from modeling_merge.rus.temporal import balanced_subsample, lagged_samples

TERMS = ("redundancy", "unique_i", "unique_j", "synergy")


def _relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).sum() / max(np.abs(b).sum(), 1e-12))


def _timed(function):
    """(result, wall seconds, process CPU seconds) of one call."""
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - start_wall, time.process_time() - start_cpu


def _symbol_features(symbols: np.ndarray, bits: int, rng: np.random.Generator) -> np.ndarray:
    """Integer symbols → (N, bits) little-endian ±1 bits plus N(0, 0.1²) noise."""
    values = (symbols[:, None] >> np.arange(bits)[None, :]) & 1
    return 2.0 * values - 1 + 0.1 * rng.standard_normal(values.shape)


def exact_suite(config: BatchConfig, num_samples: int) -> list[dict]:
    """Section 1: BATCH (multi-scale, one lag) vs the exact PID on every discrete case."""
    rows = []
    for case in discrete_pid_cases():
        x1, x2, y = sample_from_joint(case.joint, num_samples, seed=0)
        rng = np.random.default_rng(0)
        bits = max(int(np.ceil(np.log2(size))) for size in case.joint.shape[:2])
        features = np.stack([_symbol_features(x, bits, rng) for x in (x1, x2)], 1).astype(np.float32)
        balanced = case.joint / case.joint.sum(axis=(0, 1), keepdims=True) / case.joint.shape[2]
        exact, exact_s, _ = _timed(lambda balanced=balanced: exact_pid(balanced))
        estimate, batch_s, _ = _timed(lambda features=features, y=y, case=case: multiscale_batch(
            [features], [y], num_classes=case.joint.shape[2], config=config, progress=False))
        got = [float(getattr(estimate, term)[0, 0]) for term in TERMS]
        expected = [exact.redundancy, exact.unique_1, exact.unique_2, exact.synergy]
        rows.append({"case": case.name, "alphabets": list(case.joint.shape),
                     **{f"exact_{term}": value for term, value in zip(TERMS, expected)},
                     **{f"batch_{term}": value for term, value in zip(TERMS, got)},
                     "max_abs_error_bits": max(abs(a - b) for a, b in zip(got, expected)),
                     "exact_s": exact_s, "batch_s": batch_s})
    return rows


def _batch_pid(x1, x2, y, num_classes: int, config: BatchConfig) -> list[float]:
    estimate = multiscale_batch([np.stack([x1, x2], 1)], [y], num_classes=num_classes, config=config, progress=False)
    return [float(getattr(estimate, term)[0, 0]) for term in TERMS]


def _quantized_pid(x1, x2, y, num_classes: int, num_bins: int = 4) -> list[float]:
    keep = balanced_subsample(y)
    result = quantized_pid(x1[keep], x2[keep], y[keep], num_bins)
    return [result.redundancy, result.unique_1, result.unique_2, result.synergy]


def accuracy_suite(config: BatchConfig, quick: bool) -> list[dict]:
    """Section 1b: each estimator vs the exact PID of continuous sources with a discrete label (symbols of a joint
    table embedded in ``dims`` dimensions, :func:`continuous_pid_samples`) as dimension, synergy and sample size
    grow. Truth: the exact PID of the class-balanced joint (the embeddings determine their symbols)."""
    estimators = {
        f"batch ({config.discriminator_steps} steps)": lambda *a: _batch_pid(*a, config=config),
        f"batch ({4 * config.discriminator_steps} steps)": lambda *a: _batch_pid(
            *a, config=replace(config, discriminator_steps=4 * config.discriminator_steps)),
        "quantized_exact (4 bins)": _quantized_pid,
        "quantized_exact (16 bins)": lambda *a: _quantized_pid(*a, num_bins=16),
    }
    all_dims, sizes = ([2, 32], [1000, 4000]) if quick else ([2, 8, 32], [1000, 4000, 16000])
    grid = [("dimension", case, dims, 4000) for case in (*discrete_pid_cases(), parity_case(2), shared_symbol_case(2))
            for dims in all_dims]
    grid += [("synergy", parity_case(bits), 8, 4000) for bits in (1, 2, 3)]
    grid += [("samples", mixed_case(), 8, n) for n in sizes]
    rows = []
    for axis, case, dims, num_samples in grid:
        x1, x2, y = continuous_pid_samples(case, max(dims, int(np.ceil(np.log2(max(case.joint.shape[:2]))))),
                                           num_samples)
        balanced = case.joint / case.joint.sum(axis=(0, 1), keepdims=True) / case.joint.shape[2]
        exact = exact_pid(balanced)
        truth = [exact.redundancy, exact.unique_1, exact.unique_2, exact.synergy]
        for name, estimate in estimators.items():
            got, seconds, _ = _timed(lambda estimate=estimate: estimate(x1, x2, y, case.joint.shape[2]))
            rows.append({"axis": axis, "case": case.name, "dims": x1.shape[1], "samples": num_samples,
                         "classes": case.joint.shape[2], "estimator": name, "seconds": seconds,
                         **{f"exact_{term}": value for term, value in zip(TERMS, truth)},
                         **{f"estimate_{term}": value for term, value in zip(TERMS, got)},
                         "max_abs_error_bits": max(abs(a - b) for a, b in zip(got, truth))})
            print(f"    {axis:9s} {case.name:8s} d={x1.shape[1]:2d} N={num_samples:5d} {name:26s} truth "
                  + " ".join(f"{v:.2f}" for v in truth) + " | got " + " ".join(f"{v:.2f}" for v in got)
                  + f" | max err {rows[-1]['max_abs_error_bits']:.3f} ({seconds:.1f} s)", flush=True)
    return rows


def _planted_recovered(pairwise, bench) -> bool:
    """Planted redundancy / synergy are the largest of their kind; unique modalities peak at their lag."""
    names = list(bench.modalities)
    redundancy, uniqueness, synergy = pairwise.to_matrices(len(names))
    checks = []
    for kind, tensor in (("redundant", redundancy), ("synergistic", synergy)):
        a, b = (names.index(n) for n in bench.planted[kind]["pair"])
        checks.append(np.unravel_index(tensor.argmax(), tensor.shape) in
                      {(a, b, bench.planted[kind]["lag"]), (b, a, bench.planted[kind]["lag"])})
    per_modality = uniqueness.max(axis=1)
    checks += [per_modality[names.index(n)].argmax() == lag for n, lag in bench.planted["unique"].items()]
    return bool(all(checks))


def _error_vs_planted(pairwise, bench) -> dict:
    """Mean and largest absolute error (bits) of R, U, S against the benchmark's exact RUS, over pairs i ≠ j and
    lags (most exact entries are 0: the largest error is the one that says whether planted values are met)."""
    estimate = pairwise.to_matrices(len(bench.modalities))
    off_diagonal = ~np.eye(len(bench.modalities), dtype=bool)
    errors = {}
    for name, got in zip(("redundancy", "uniqueness", "synergy"), estimate):
        difference = np.abs(got - bench.planted["rus"][name])[off_diagonal]
        errors |= {f"mae_{name}_bits": float(difference.mean()), f"max_{name}_bits": float(difference.max())}
    return errors


def multiscale_vs_stepwise(config: BatchConfig, num_sequences: int, num_lags: int) -> dict:
    """Section 2."""
    bench = make_temporal_rus_benchmark(num_sequences=num_sequences, seq_len=max(8, num_lags), num_lags=num_lags)
    samples = lagged_samples(bench.modalities, bench.labels, num_lags)
    args = (samples.features, samples.labels, samples.num_classes, config)
    multi, multi_s, multi_cpu = _timed(lambda: multiscale_batch(*args, progress=False))
    step, step_s, step_cpu = _timed(lambda: stepwise_batch(*args, progress=False))
    _, multi_again_s, multi_again_cpu = _timed(lambda: multiscale_batch(*args, progress=False))
    multi_mean_s, multi_mean_cpu = (multi_s + multi_again_s) / 2, (multi_cpu + multi_again_cpu) / 2
    both_u = (np.concatenate([multi.unique_i, multi.unique_j]), np.concatenate([step.unique_i, step.unique_j]))
    return {
        "modalities": len(samples.modality_names), "lags": num_lags, "sequences": num_sequences,
        "multiscale_s": [multi_s, multi_again_s], "stepwise_s": step_s,
        "time_ratio_stepwise_over_multiscale": step_s / multi_mean_s,
        "cpu_time_ratio_stepwise_over_multiscale": step_cpu / multi_mean_cpu,
        "relative_difference": {term: _relative_difference(getattr(multi, term), getattr(step, term))
                                for term in TERMS} | {"all": _relative_difference(
                                    np.concatenate([multi.redundancy, both_u[0], multi.synergy]),
                                    np.concatenate([step.redundancy, both_u[1], step.synergy]))},
        "error_vs_exact": {"multiscale": _error_vs_planted(multi, bench), "stepwise": _error_vs_planted(step, bench)},
        "planted_recovered": {"multiscale": _planted_recovered(multi, bench),
                              "stepwise": _planted_recovered(step, bench)},
        "clipped_negative_bits": {"multiscale": float(multi.clipped), "stepwise": float(step.clipped)},
    }


def _comparison(estimate, reference, bench) -> dict:
    """Relative difference of ``estimate`` to ``reference`` (all terms; planted entries only) and its errors
    against the exact temporal RUS."""
    def flat(pairwise, mask=None):
        values = np.stack(pairwise.to_matrices(len(bench.modalities)))
        return values if mask is None else values[mask]
    planted = np.stack([bench.planted["rus"][name] for name in ("redundancy", "uniqueness", "synergy")]) > 0
    return {"relative_difference": _relative_difference(flat(estimate), flat(reference)),
            "relative_difference_planted": _relative_difference(flat(estimate, planted), flat(reference, planted)),
            "relative_difference_unplanted": float(np.abs(flat(estimate, ~planted) - flat(reference, ~planted)).sum()
                                                   / max(np.abs(flat(reference)).sum(), 1e-12)),
            **_error_vs_planted(estimate, bench)}


def multiscale_diagnosis(config: BatchConfig, num_sequences: int, num_lags: int) -> list[dict]:
    """Section 2b: why multi-scale and step-wise differ. Each variant vs step-wise (seed 0): the noise floor
    (step-wise with another seed), the per-lag budget (multi-scale with L× / 2× the steps; step-wise with 1/L of
    them, i.e. multi-scale's per-lag budget without sharing) and the read-out noise (16 read-out batches)."""
    bench = make_temporal_rus_benchmark(num_sequences=num_sequences, seq_len=max(8, num_lags), num_lags=num_lags)
    samples = lagged_samples(bench.modalities, bench.labels, num_lags)

    def scaled(factor: float, **changes) -> BatchConfig:
        return replace(config, discriminator_steps=int(config.discriminator_steps * factor),
                       alignment_steps=max(1, int(config.alignment_steps * factor)), **changes)

    variants = [
        ("step-wise, seed 0 (reference)", stepwise_batch, config),
        ("step-wise, seed 1 (noise floor)", stepwise_batch, replace(config, seed=1)),
        ("multi-scale, seed 0", multiscale_batch, config),
        ("multi-scale, seed 1", multiscale_batch, replace(config, seed=1)),
        (f"multi-scale, {num_lags}x steps (step-wise's per-lag budget)", multiscale_batch, scaled(num_lags)),
        ("multi-scale, 2x steps", multiscale_batch, scaled(2)),
        (f"step-wise, 1/{num_lags} steps (multi-scale's per-lag budget)", stepwise_batch, scaled(1 / num_lags)),
        ("step-wise, seed 0, 16 read-out batches", stepwise_batch, replace(config, readout_batches=16)),
        ("step-wise, seed 1, 16 read-out batches", stepwise_batch, replace(config, seed=1, readout_batches=16)),
        ("multi-scale, seed 0, 16 read-out batches", multiscale_batch, replace(config, readout_batches=16)),
        ("multi-scale, 2x steps, 16 read-out batches", multiscale_batch, scaled(2, readout_batches=16)),
    ]
    rows, reference, reference16 = [], None, None
    for name, run, variant in variants:
        estimate, seconds, _ = _timed(lambda run=run, variant=variant: run(
            samples.features, samples.labels, samples.num_classes, variant, progress=False))
        if reference is None:
            reference = estimate
        if "16 read-out" in name and reference16 is None:
            reference16 = estimate
        against = reference16 if "16 read-out" in name else reference
        rows.append({"variant": name, "seconds": seconds, "discriminator_steps": variant.discriminator_steps,
                     "alignment_steps": variant.alignment_steps, "readout_batches": variant.readout_batches,
                     "seed": variant.seed, "planted_recovered": _planted_recovered(estimate, bench),
                     **_comparison(estimate, against, bench)})
        print(f"    {name}: {seconds:.0f} s, diff {100 * rows[-1]['relative_difference']:.1f} % (planted "
              f"{100 * rows[-1]['relative_difference_planted']:.1f} %), mae R/U/S "
              f"{rows[-1]['mae_redundancy_bits']:.3f}/{rows[-1]['mae_uniqueness_bits']:.3f}/"
              f"{rows[-1]['mae_synergy_bits']:.3f}", flush=True)
    return rows


def sinkhorn_iterations(device: str) -> list[dict]:
    """Section 3: P=21 pairs, K=2 classes, B=256, standardised d_e=10 embeddings."""
    generator = torch.Generator().manual_seed(0)
    pairs, classes, batch, dim = 21, 2, 256, 10
    rows = []
    for label, scale in (("random embeddings", 1.0), ("sharper kernel (x3)", 3.0)):
        embeddings = torch.randn(2, pairs, classes, batch, dim, generator=generator)
        embeddings = (embeddings - embeddings.mean(-1, keepdim=True)) / embeddings.std(-1, keepdim=True)
        log_kernel = scale * torch.einsum("pkad,pkbd->pkab", embeddings[0], embeddings[1]) / dim ** 0.5
        logits = 2.0 * torch.randn(2, pairs, batch, classes, generator=generator)
        rows_target, cols_target = (p.softmax(-1).permute(0, 2, 1).contiguous() / batch for p in logits)
        for rescale in (True, False):
            inputs = (log_kernel.to(device), rows_target.to(device), cols_target.to(device))
            result, elapsed, _ = _timed(lambda rescale=rescale, inputs=inputs: sinkhorn_couplings(
                *inputs, tol=1e-6, max_iter=500, rescale_columns=rescale))
            rows.append({"kernel": label, "rescaled": rescale, "iterations": result.iterations,
                         "marginal_error": float(result.marginal_error), "ms": 1000 * elapsed})
    return rows


def pair_scaling(config: BatchConfig, sizes: list[int], num_sequences: int, num_lags: int) -> list[dict]:
    """Section 4: a whole multi-scale estimate of all M(M−1)/2 pairs × ``num_lags`` lags on the known-RUS benchmark
    with M − 6 noise modalities (3 channels each, ``num_sequences`` samples per lag): wall / CPU seconds, the
    process's peak RSS (sizes run in ascending order, so the peak is the largest size's so far), the pairs that
    needed alignment, planted-structure recovery and the largest error against the exact temporal RUS."""
    rows = []
    for num_modalities in sizes:
        bench = make_temporal_rus_benchmark(num_sequences=num_sequences, seq_len=max(8, num_lags), num_lags=num_lags,
                                            num_noise_modalities=num_modalities - 6)
        samples = lagged_samples(bench.modalities, bench.labels, num_lags)
        estimate, seconds, cpu_seconds = _timed(lambda samples=samples: multiscale_batch(
            samples.features, samples.labels, samples.num_classes, config, progress=False))
        errors = _error_vs_planted(estimate, bench)
        rows.append({"M": num_modalities, "pairs": num_modalities * (num_modalities - 1) // 2, "lags": num_lags,
                     "samples_per_lag": num_sequences, "seconds": seconds, "cpu_seconds": cpu_seconds,
                     "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
                     "aligned_pairs": estimate.diagnostics["aligned_pairs"],
                     "planted_recovered": _planted_recovered(estimate, bench),
                     "max_error_bits": max(errors[f"max_{term}_bits"] for term in ("redundancy", "uniqueness", "synergy")),
                     "load_average_1min": os.getloadavg()[0]})
        print(f"    M={num_modalities}: {seconds:.0f} s (CPU {cpu_seconds:.0f} s), peak RSS {rows[-1]['peak_rss_gib']:.2f} GiB, "
              f"aligned {rows[-1]['aligned_pairs']} of {rows[-1]['pairs']} pairs, planted recovered "
              f"{rows[-1]['planted_recovered']}, load {rows[-1]['load_average_1min']:.1f}", flush=True)
    if len(rows) > 1:
        slope = loglog_slope([row["M"] for row in rows], [row["cpu_seconds"] for row in rows])
        for row in rows:
            row["cpu_seconds_growth_exponent"] = slope
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller budgets (a rough figure)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sections", default="exact,multiscale,sinkhorn,pairs", help="comma-separated subset")
    parser.add_argument("--output", default=RESULTS_DIR / "rus_estimation.json", help="JSON file ('-' = none)")
    parser.add_argument("--sizes", default="8,16,32,64", help="section 4: numbers of modalities M (>= 6)")
    parser.add_argument("--samples", type=int, default=20000, help="section 4: samples per lag")
    parser.add_argument("--lags", type=int, default=5, help="section 4: lags")
    parser.add_argument("--scale_steps", type=int, default=600, help="section 4: discriminator steps (alignment: 1/6)")
    parser.add_argument("--pair_head", default="factorized", choices=("full", "factorized"), help="section 4")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    quick, sections = args.quick, set(args.sections.split(","))
    config = BatchConfig(batch_size=128 if quick else 256, discriminator_steps=300 if quick else 600,
                         alignment_steps=30 if quick else 100, device=args.device)
    payload = {"environment": environment(args.device), "quick": quick,
               "batch_config": {key: getattr(config, key) for key in
                                ("batch_size", "discriminator_steps", "alignment_steps", "readout_batches")}}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}", flush=True)
    if "exact" in sections:
        suite_config = BatchConfig(batch_size=128, discriminator_steps=300, alignment_steps=50, readout_batches=4,
                                   device=args.device)
        rows = payload["exact_suite"] = exact_suite(suite_config, num_samples=2000 if quick else 4000)
        print("\n[1] BATCH vs the exact PID (class-balanced joint), bits: exact / BATCH")
        for row in rows:
            row["R"], row["U1"], row["U2"], row["S"] = (
                f"{row[f'exact_{term}']:.3f} / {row[f'batch_{term}']:.3f}" for term in TERMS)
        print(format_table(rows, [("case", "case", "s"), ("R", "R", "s"), ("U1", "U1", "s"), ("U2", "U2", "s"),
                                  ("S", "S", "s"), ("max_abs_error_bits", "max |err|", ".3f"),
                                  ("exact_s", "exact s", ".3f"), ("batch_s", "BATCH s", ".1f")]), flush=True)
        for row in rows:
            del row["R"], row["U1"], row["U2"], row["S"]
    if "accuracy" in sections:
        print("\n[1b] estimators vs the exact PID, continuous sources (R U1 U2 S, bits)", flush=True)
        payload["accuracy_suite"] = accuracy_suite(BatchConfig(batch_size=128, discriminator_steps=300,
                                                               alignment_steps=50, device=args.device), quick)
    if "multiscale" in sections:
        result = payload["multiscale_vs_stepwise"] = multiscale_vs_stepwise(
            config, num_sequences=1000 if quick else 2000, num_lags=4)
        print(f"\n[2] multi-scale vs step-wise BATCH: M={result['modalities']}, L={result['lags']}, "
              f"N={result['sequences']}")
        print(f"    wall time: multi-scale {result['multiscale_s'][0]:.1f} s and {result['multiscale_s'][1]:.1f} s, "
              f"step-wise {result['stepwise_s']:.1f} s: ratio {result['time_ratio_stepwise_over_multiscale']:.2f}x "
              f"(CPU time {result['cpu_time_ratio_stepwise_over_multiscale']:.2f}x; paper: ~L = 4x)")
        print("    relative difference: " + ", ".join(f"{term} {100 * value:.1f} %"
                                                       for term, value in result["relative_difference"].items()))
        for name, errors in result["error_vs_exact"].items():
            print(f"    {name} vs exact temporal RUS (mean / max abs error): " + ", ".join(
                f"{term} {errors[f'mae_{term}_bits']:.3f} / {errors[f'max_{term}_bits']:.3f} bits"
                for term in ("redundancy", "uniqueness", "synergy")))
        print(f"    planted structure recovered: {result['planted_recovered']}", flush=True)
    if "diagnosis" in sections:
        print("\n[2b] why multi-scale and step-wise differ (each vs step-wise seed 0; M=7, L=4)", flush=True)
        payload["multiscale_diagnosis"] = multiscale_diagnosis(config, num_sequences=1000 if quick else 2000,
                                                               num_lags=4)
    if "sinkhorn" in sections:
        rows = payload["sinkhorn"] = sinkhorn_iterations(args.device)
        print("\n[3] Sinkhorn iterations to a 1e-6 marginal error (P=21, K=2, B=256, d_e=10)")
        print(format_table(rows, [("kernel", "kernel", "s"), ("rescaled", "rescaled", ""),
                                  ("iterations", "iterations", "d"), ("marginal_error", "error", ".1e"),
                                  ("ms", "ms", ".0f")]), flush=True)
    if "pairs" in sections:
        sizes = [int(size) for size in args.sizes.split(",")]
        scale_config = BatchConfig(batch_size=128, discriminator_steps=args.scale_steps,
                                   alignment_steps=args.scale_steps // 6, pair_head=args.pair_head, device=args.device)
        print(f"\n[4] all pairs x {args.lags} lags vs M (multi-scale, {args.pair_head} pair head, batch 128, "
              f"{args.scale_steps} + {args.scale_steps // 6} steps, {args.samples} samples per lag)", flush=True)
        payload["all_pairs"] = {"batch_config": scale_config.to_dict(), "rows": pair_scaling(
            scale_config, sizes, args.samples, args.lags)}
    write_json(args.output, payload)
    return payload


if __name__ == "__main__":
    main()
