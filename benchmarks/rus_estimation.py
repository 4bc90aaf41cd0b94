"""Measured claims of the RUS estimators (prints figures and writes JSON; not a test).

1. Accuracy against the exact solver on the discrete synthetic suite (XOR, AND, copy, unique, mixed): BATCH
   on the symbols embedded as noisy ±1 features vs the exact BROJA PID (CVXPY) of the class-balanced joint
   that BATCH's balanced sampling sees; absolute error per term in bits, and the time of each.
1b. (``accuracy``) Continuous sources with a discrete label and a known PID — the symbols of a joint table
   (the five cases, 2-bit parity = 2 bits of synergy, a shared 2-bit symbol = 2 bits of redundancy) embedded in
   2-32 dimensions — as dimension, synergy (parity of 1-3 bits) and sample size grow: BATCH at two
   discriminator budgets and the quantised exact estimator at 4 and 16 bins, each against the exact PID.
2. Multi-scale vs step-wise BATCH on the known-RUS temporal benchmark: wall-time ratio, timed A-B-A
   (multi-scale, step-wise, multi-scale again; the ratio uses the mean of the two multi-scale runs so that a
   load change during the run hits both sides), the relative R / U / S difference
   Σ|multi-scale − step-wise| / Σ|step-wise| per term (target ≤ 10 %), each one's mean absolute error
   against the benchmark's exact temporal RUS of the latent symbols, and planted-structure recovery.
2b. (``diagnosis``) Why they differ: each variant against step-wise seed 0 — step-wise with another seed (the
   noise floor), multi-scale with L× and 2× the steps and step-wise with 1/L of them (the per-lag budget),
   16 instead of 4 read-out batches; the difference on planted entries and elsewhere, and the error vs truth.
3. Sinkhorn iterations to a 1e-6 marginal error, with and without the class-mass rescaling.
4. (``pairs``) A whole multi-scale estimate of all pairs × 5 lags for M = 8 … 128 modalities (3 channels,
   20,000 samples per lag, the planted benchmark plus noise modalities): wall and CPU seconds, peak RSS, pairs
   that needed alignment, planted-structure recovery.

    python benchmarks/rus_estimation.py --threads 1                     # everything (long on a loaded machine)
    python benchmarks/rus_estimation.py --sections accuracy,diagnosis   # a subset
    python benchmarks/rus_estimation.py --sections pairs --sizes 128    # the M = 128 point alone
    python benchmarks/rus_estimation.py --quick                         # smaller budgets
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
        f"batch ({config.discriminator_steps} steps, cross-entropy)": lambda *a: _batch_pid(
            *a, config=replace(config, information_readout="cross_entropy")),
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
            print(f"    {axis:9s} {case.name:8s} d={x1.shape[1]:2d} N={num_samples:5d} {name:35s} truth "
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


def _pairwise_terms(pairwise) -> np.ndarray:
    """R, U_i, U_j, S of every pair and lag as one flat array (each pair's terms once, as in section 2)."""
    return np.concatenate([pairwise.redundancy, pairwise.unique_i, pairwise.unique_j, pairwise.synergy]).ravel()


def _comparison(estimate, reference, bench) -> dict:
    """Relative difference Σ|estimate − reference| / Σ|reference| over every pair's R, U_i, U_j, S at every lag
    (section 2's figure), over the planted (non-zero in truth) terms only, and the same against the exact
    temporal RUS, with the spurious mass (bits estimated where the truth is 0)."""
    first, second = estimate.pairs
    rus = bench.planted["rus"]
    truth = np.concatenate([rus["redundancy"][first, second].T, rus["uniqueness"][first, second].T,
                            rus["uniqueness"][second, first].T, rus["synergy"][first, second].T]).ravel()
    planted = truth > 0
    got, expected = _pairwise_terms(estimate), _pairwise_terms(reference)
    return {"relative_difference": _relative_difference(got, expected),
            "relative_difference_planted": _relative_difference(got[planted], expected[planted]),
            "relative_error_vs_truth": _relative_difference(got, truth),
            "relative_error_vs_truth_planted": _relative_difference(got[planted], truth[planted]),
            "spurious_bits": float(np.abs(got[~planted]).sum()), "truth_bits": float(truth.sum()),
            **_error_vs_planted(estimate, bench)}


def multiscale_diagnosis(config: BatchConfig, num_sequences: int, num_lags: int) -> list[dict]:
    """Section 2b: why multi-scale and step-wise differ. Each variant vs step-wise seed 0 with the same read-out:
    the noise floor (step-wise with another seed), the per-lag budget (multi-scale with L× the steps; step-wise
    with 1/L of them, i.e. multi-scale's per-lag budget without sharing), and the information read-out
    ("plugin" vs "cross_entropy"), each also against the exact temporal RUS."""
    bench = make_temporal_rus_benchmark(num_sequences=num_sequences, seq_len=max(8, num_lags), num_lags=num_lags)
    samples = lagged_samples(bench.modalities, bench.labels, num_lags)
    scaled = replace(config, discriminator_steps=config.discriminator_steps * num_lags,
                     alignment_steps=config.alignment_steps * num_lags)
    doubled = replace(config, discriminator_steps=config.discriminator_steps * 2,
                      alignment_steps=config.alignment_steps * 2)
    reduced = replace(config, discriminator_steps=config.discriminator_steps // num_lags,
                      alignment_steps=max(1, config.alignment_steps // num_lags))
    rows, references = [], {}
    for readout in ("plugin", "cross_entropy"):
        variants = [("step-wise, seed 0 (reference)", stepwise_batch, config),
                    ("step-wise, seed 1 (noise floor)", stepwise_batch, replace(config, seed=1)),
                    ("multi-scale, seed 0", multiscale_batch, config),
                    ("multi-scale, seed 1", multiscale_batch, replace(config, seed=1)),
                    ("multi-scale, 2x steps (L/2-fold faster than step-wise)", multiscale_batch, doubled)]
        if readout == "plugin":
            variants += [(f"multi-scale, {num_lags}x steps (step-wise's per-lag budget)", multiscale_batch, scaled),
                         (f"step-wise, 1/{num_lags} steps (multi-scale's per-lag budget)", stepwise_batch, reduced)]
        for name, run, variant in variants:
            variant = replace(variant, information_readout=readout)
            estimate, seconds, _ = _timed(lambda run=run, variant=variant: run(
                samples.features, samples.labels, samples.num_classes, variant, progress=False))
            reference = references.setdefault(readout, estimate)
            rows.append({"readout": readout, "variant": name, "seconds": seconds,
                         "discriminator_steps": variant.discriminator_steps, "alignment_steps": variant.alignment_steps,
                         "seed": variant.seed, "aligned_pairs": estimate.diagnostics["aligned_pairs"],
                         "planted_recovered": _planted_recovered(estimate, bench),
                         **_comparison(estimate, reference, bench)})
            row = rows[-1]
            print(f"    {readout:13s} {name:55s} {seconds:4.0f} s  diff {100 * row['relative_difference']:5.1f} % "
                  f"(planted {100 * row['relative_difference_planted']:4.1f} %)  vs truth "
                  f"{100 * row['relative_error_vs_truth']:5.1f} % (planted {100 * row['relative_error_vs_truth_planted']:4.1f} %)"
                  f"  spurious {row['spurious_bits']:.2f} of {row['truth_bits']:.1f} bits  recovered "
                  f"{row['planted_recovered']}", flush=True)
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
    parser.add_argument("--sections", default="exact,accuracy,multiscale,diagnosis,sinkhorn,pairs",
                        help="comma-separated subset")
    parser.add_argument("--output", default=RESULTS_DIR / "rus_estimation.json", help="JSON file ('-' = none)")
    parser.add_argument("--sizes", default="8,16,32,64", help="section 4: numbers of modalities M (>= 6)")
    parser.add_argument("--samples", type=int, default=20000, help="section 4: samples per lag")
    parser.add_argument("--lags", type=int, default=5, help="section 4: lags")
    parser.add_argument("--scale_steps", type=int, default=600, help="section 4: discriminator steps (alignment: 1/6)")
    parser.add_argument("--pair_block_size", type=int, default=None, help="section 4: pairs per block (None: one)")
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
        print("\n[2b] why multi-scale and step-wise differ (each vs step-wise seed 0, same read-out; M=7, L=4)",
              flush=True)
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
                                   alignment_steps=args.scale_steps // 6, pair_block_size=args.pair_block_size,
                                   device=args.device)
        print(f"\n[4] all pairs x {args.lags} lags vs M (multi-scale, batch 128, blocks of {args.pair_block_size} pairs, "
              f"{args.scale_steps} + {args.scale_steps // 6} steps, {args.samples} samples per lag)", flush=True)
        payload["all_pairs"] = {"batch_config": scale_config.to_dict(), "rows": pair_scaling(
            scale_config, sizes, args.samples, args.lags)}
    write_json(args.output, payload)
    return payload


if __name__ == "__main__":
    main()
