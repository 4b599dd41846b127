"""Benchmark the per-image baseline: fit cost against a bare IsolationForest, and batched scoring.

Targets (issue 4): fitting an ImageBaseline on 10,000 windows costs at most 1.2x a bare
IsolationForest fitted on the same matrix in the same run; batched scoring runs at >= 200,000
windows/s. Both are measured here, on one synthetic matrix shaped like real windows (counts, shares,
entropy, bytes, age), after a warm-up. Prints the figures and exits 1 when a target is missed (so
`make bench` shows it).

The fit target is graded on the median of per-pair ratios over at least 15 alternating pairs
(bare, ImageBaseline, bare, ImageBaseline, ...): each pair sees about the same load from other
processes, and the median ignores the pairs a burst of load hit on one side only. The minimum of 7
each (the earlier grade) compared two different moments and failed once in two runs under load.

    .venv/bin/python bench/bench_model.py [--windows 10000] [--score-windows 500000] [--pairs 15]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
from sklearn.ensemble import IsolationForest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from model.baseline import ImageBaseline  # noqa: E402
from model.features import FEATURE_INDEX, FEATURE_NAMES  # noqa: E402


def synthetic_windows(n: int, seed: int = 0) -> np.ndarray:
    """Windows of a busy web image: poisson counts, a few shares, entropy, bytes, age."""
    rng = np.random.default_rng(seed)
    X = np.zeros((n, len(FEATURE_NAMES)))
    for name, lam in (("processes_started", 33), ("network_tool_processes", 18), ("outbound_conns", 21),
                      ("dns_queries", 6), ("http_requests", 18)):
        X[:, FEATURE_INDEX[name]] = rng.poisson(lam, n)
    X[:, FEATURE_INDEX["distinct_executables"]] = rng.integers(2, 5, n)
    X[:, FEATURE_INDEX["distinct_remote_addrs"]] = rng.integers(1, 4, n)
    X[:, FEATURE_INDEX["distinct_remote_ports"]] = rng.integers(1, 4, n)
    X[:, FEATURE_INDEX["distinct_domains"]] = rng.integers(0, 2, n)
    X[:, FEATURE_INDEX["dns_label_entropy_mean"]] = rng.normal(1.6, 0.1, n)
    X[:, FEATURE_INDEX["bytes_out"]] = rng.normal(1750, 90, n)
    X[:, FEATURE_INDEX["bytes_in"]] = rng.normal(3960, 200, n)
    X[:, FEATURE_INDEX["public_conn_share"]] = rng.uniform(0.1, 0.2, n)
    X[:, FEATURE_INDEX["container_age_s"]] = rng.uniform(0, 86400, n)
    X[:, FEATURE_INDEX["failed_conns"]] = rng.binomial(1, 0.01, n)
    return X


def timed(fn, repeats: int) -> list[float]:
    fn()                                    # warm-up (imports, allocator)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def paired(fn_a, fn_b, repeats: int) -> tuple[list[float], list[float]]:
    """Time a and b alternately, so load from other processes hits both alike."""
    fn_a(), fn_b()
    ta, tb = [], []
    for _ in range(repeats):
        for fn, out in ((fn_a, ta), (fn_b, tb)):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return ta, tb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=10_000)
    ap.add_argument("--score-windows", type=int, default=500_000)
    ap.add_argument("--batch", type=int, default=100_000, help="rows per scoring call")
    ap.add_argument("--pairs", type=int, default=15, help="alternating fit pairs (at least 15)")
    ap.add_argument("--repeats", type=int, default=5, help="scoring repeats (best of)")
    ap.add_argument("--n-estimators", type=int, default=100)
    args = ap.parse_args(argv)
    if args.pairs < 15:
        ap.error(f"--pairs {args.pairs}: the fit grade needs at least 15 alternating pairs")

    X = synthetic_windows(args.windows)
    tb, tm = paired(lambda: IsolationForest(n_estimators=args.n_estimators, random_state=0).fit(X),
                    lambda: ImageBaseline(n_estimators=args.n_estimators, random_state=0).fit(X), args.pairs)
    ratios = sorted(m / b for m, b in zip(tm, tb))
    pair_ratio = statistics.median(ratios)
    print(f"fit on {args.windows} windows x {X.shape[1]} features ({args.n_estimators} trees, "
          f"{args.pairs} alternating pairs, os.cpu_count()={os.cpu_count()}):")
    print(f"  bare IsolationForest   median {statistics.median(tb) * 1000:7.1f} ms  min {min(tb) * 1000:7.1f} ms")
    print(f"  ImageBaseline          median {statistics.median(tm) * 1000:7.1f} ms  min {min(tm) * 1000:7.1f} ms")
    print(f"  pair ratios: median {pair_ratio:.2f}x (graded, target <= 1.2x), "
          f"range {ratios[0]:.2f} to {ratios[-1]:.2f}, min/min {min(tm) / min(tb):.2f}x (informational)")

    model = ImageBaseline(n_estimators=args.n_estimators, random_state=0).fit(X)
    bare = IsolationForest(n_estimators=args.n_estimators, random_state=0).fit(X)
    single = ImageBaseline(n_estimators=args.n_estimators, random_state=0, score_threads=1).fit(X)
    S = synthetic_windows(args.score_windows, seed=1)

    def score_all(fn):
        for i in range(0, S.shape[0], args.batch):
            fn(S[i:i + args.batch])

    reps = max(3, args.repeats)
    t_score = min(timed(lambda: score_all(model.anomaly_score), reps))
    t_one = min(timed(lambda: score_all(ImageBaseline.anomaly_score.__get__(single)), reps))
    t_bare_score = min(timed(lambda: score_all(bare.score_samples), reps))
    rate = S.shape[0] / t_score
    c = time.process_time()
    score_all(model.anomaly_score)
    cpu_rate = S.shape[0] / max(time.process_time() - c, 1e-9)   # less load-dependent than wall
    print(f"scoring {args.score_windows} windows in batches of {args.batch} (best of {reps}):")
    print(f"  bare IsolationForest.score_samples  {S.shape[0] / t_bare_score:12,.0f} windows/s")
    print(f"  ImageBaseline, 1 thread             {S.shape[0] / t_one:12,.0f} windows/s")
    print(f"  ImageBaseline, default threads      {rate:12,.0f} windows/s (target >= 200,000/s); "
          f"{rate * t_bare_score / S.shape[0]:.2f}x the bare score_samples rate in this run")
    print(f"  ImageBaseline, default threads      {cpu_rate:12,.0f} windows per CPU-second (one more pass)")
    # end to end, as the scheduler calls it: per-image routing + one ScoreResult per window
    from model.baseline import EnvironmentBaselines
    from model.features import FeatureWindows
    n = min(100_000, S.shape[0])
    fw = FeatureWindows(X=S[:n], container_id=[f"c{i % 50}" for i in range(n)],
                        image=[f"shop/app{i % 5}:1" for i in range(n)], host=["h"] * n,
                        window_start=np.arange(n) * 300.0, window_end=np.arange(n) * 300.0 + 300)
    eb = EnvironmentBaselines("bench").fit(FeatureWindows(
        X=X, container_id=["c"] * len(X), image=[f"shop/app{i % 5}:1" for i in range(len(X))], host=["h"] * len(X),
        window_start=np.zeros(len(X)), window_end=np.zeros(len(X)) + 300))
    t_env = min(timed(lambda: eb.score(fw), reps))
    print(f"  EnvironmentBaselines.score (5 images, ScoreResult objects) {n / t_env:,.0f} windows/s (informational)")
    # the scorer the daemon and the replay use: the same model as numpy arrays, no scikit-learn
    from model.compiled import compile_baselines, compile_model
    compiled = compile_model(model)
    t_comp = min(timed(lambda: score_all(compiled.anomaly_score), reps))
    cb = compile_baselines(eb)
    t_cenv = min(timed(lambda: cb.score(fw), reps))
    print(f"  compiled (model.compiled, the daemon's and replay's scorer) "
          f"{S.shape[0] / t_comp:12,.0f} windows/s (informational: "
          f"{t_score / t_comp:.2f}x ImageBaseline's rate)")
    print(f"  CompiledBaselines.score (5 images, ScoreResult objects) {n / t_cenv:,.0f} windows/s "
          f"(informational)")
    ok = pair_ratio <= 1.2 and rate >= 200_000
    print("targets met" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
