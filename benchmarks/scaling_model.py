#!/usr/bin/python3
"""scaling_model.py: a projection of mednet's data-parallel step time and efficiency to many ranks.

    benchmarks/scaling_model.py [--results DIR] [--alpha-us A] [--beta-gbs B] [--algo ring|tree]
                                [--compute 10=T10,18=T18,50=T50] [--depths 10,18,50] [--out DIR]

The model (DESIGN.md, "Scaling study"), for P ranks with a fixed per-rank batch (weak scaling):

  step(P) = compute + data + exposed(P) + heads(P) + small(P)

  compute    the single-rank forward + backward + optimiser time at the run's per-rank batch (measured), scaled by
             max(1, ranks x threads / cores) when the ranks of a node outnumber its cores (local validation only);
  exposed    the encoder all-reduce in buckets (the model's gradient bucket plan: bucket_mb cut from the END of the
             encoder's parameters, as src/parallel/reducer.c does).  Without overlap: the sum of the buckets'
             all-reduce times.  With overlap: the backward pass is 2/3 of compute and produces the gradients at a
             uniform rate per byte from the last layer on, so bucket i is ready at t_f + t_b * (bytes up to and
             including i) / (encoder bytes); the reductions run one after the other (start = max(ready, previous
             end)); what outlasts the backward pass is exposed;
  heads      each head's gradient all-reduced over its dataset's holders (max(1, P / datasets) ranks), after
             backward, never overlapped;
  small      4 latency-bound all-reduces of 8 bytes over the world (weights, sample counts, the NaN agreement,
             batch-norm statistics);
  all-reduce of n bytes over p ranks, latency alpha and inverse bandwidth beta (s/byte):
      ring   2 (p - 1) alpha + 2 (p - 1) / p * n * beta        (bandwidth-optimal; latency grows with p)
      tree   2 ceil(log2 p) (alpha + n * beta)                  (binomial reduce + broadcast; latency-optimal)
  and 0 for p = 1.  efficiency(P) = step(1) / step(P) (weak scaling: the same work per rank).

Network parameters: measured on this machine (fitted to benchmarks/bench_allreduce's MPI_Allreduce times in a
results folder) for the validation, and, for the projection, an assumed cluster: 100 Gb/s InfiniBand HDR, alpha =
2 us, beta = 1 / 12.5 GB/s.  Compute per depth comes from single-rank runs (--compute, or the P = 1 run of
--results for its own depth).  A rank of the projection is as fast as one rank here: the projection says how the
communication of a step grows with P, not how fast a cluster's node is.
"""
import argparse
import json
import math
import os
import sys

# The assumed cluster network: 100 Gb/s InfiniBand HDR.
HDR_ALPHA = 2e-6           # s per message (MPI latency across a switch)
HDR_BETA = 1.0 / 12.5e9    # s per byte (100 Gb/s = 12.5 GB/s)
PROJECT_P = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]

# Encoder parameter counts (`mednet model --depth D`, MedicalNet's default shortcut) and one conv_seg head (2
# classes), used when a depth has no run in the results folder.
ENCODER_PARAMS = {10: 14355520, 18: 32986176, 34: 63295808, 50: 46155072, 101: 85201216, 152: 117359936,
                  200: 126559552}
HEAD_PARAMS = {10: 158944, 18: 158944, 34: 158944, 50: 552160, 101: 552160, 152: 552160, 200: 552160}


def allreduce_time(n_bytes, p, alpha, beta, algo="ring"):
    """Time of one all-reduce of n_bytes over p ranks (seconds)."""
    if p <= 1 or n_bytes <= 0:
        return 0.0
    if algo == "ring":
        return 2 * (p - 1) * alpha + 2.0 * (p - 1) / p * n_bytes * beta
    if algo == "tree":
        return 2 * math.ceil(math.log2(p)) * (alpha + n_bytes * beta)
    raise ValueError(f"unknown all-reduce algorithm {algo!r} (ring or tree)")


def bucket_plan(encoder_floats, bucket_mb=25.0):
    """Bucket sizes in floats, in reduction order: cut from the END of the encoder (src/parallel/reducer.c)."""
    bf = int(bucket_mb * 1048576) // 4
    if bf < 1:
        raise ValueError("bucket_mb too small")
    nb = (encoder_floats + bf - 1) // bf
    return [bf] * (nb - 1) + [encoder_floats - bf * (nb - 1)] if nb else []


def exposed_comm(compute, buckets_bytes, p, alpha, beta, algo, overlap):
    """Encoder all-reduce time not hidden behind backward (seconds); buckets in reduction order."""
    times = [allreduce_time(b, p, alpha, beta, algo) for b in buckets_bytes]
    if not overlap:
        return sum(times)
    t_f, t_b = compute / 3.0, 2.0 * compute / 3.0
    total = float(sum(buckets_bytes)) or 1.0
    end, done = 0.0, 0.0
    for b, t in zip(buckets_bytes, times):
        done += b
        ready = t_f + t_b * done / total
        end = max(ready, end) + t
    return max(0.0, end - compute)


def step_time(p, compute, buckets_bytes, head_bytes, datasets, alpha, beta, algo="ring", overlap=True, data=0.0):
    """Predicted step time (seconds) on p ranks and its parts: (total, exposed encoder comm, heads + small)."""
    enc = exposed_comm(compute, buckets_bytes, p, alpha, beta, algo, overlap)
    holders = max(1, p // max(1, datasets))
    rest = sum(allreduce_time(h, holders, alpha, beta, algo) for h in head_bytes)
    rest += 4 * allreduce_time(8, p, alpha, beta, algo)
    return compute + data + enc + rest, enc, rest


def efficiency(p, **kw):
    return step_time(1, **kw)[0] / step_time(p, **kw)[0]


# ---- fitting alpha and beta to bench_allreduce --------------------------------------------------------------------

def parse_bench(path):
    """[(bytes, seconds)] of the blocking MPI_Allreduce lines of a bench_allreduce output (median over sizes)."""
    pts = {}
    with open(path) as f:
        for line in f:
            if "MPI_Allreduce" not in line or "MiB" not in line:
                continue
            try:
                mib = float(line.split("MiB")[0])
                ms = float(line.split("MPI_Allreduce")[1].split("ms")[0])
            except (ValueError, IndexError):
                continue
            pts.setdefault(mib, []).append(ms * 1e-3)
    return [(mib * 1048576, sorted(v)[len(v) // 2]) for mib, v in sorted(pts.items())]


def fit_alpha_beta(points, p, algo="ring"):
    """Least squares in relative error of T = a * A + b * n * B (A, B the algorithm's coefficients): (alpha, beta)."""
    if p < 2 or len(points) < 2:
        raise ValueError("need at least two message sizes and p >= 2")
    if algo == "ring":
        ca, cb = 2.0 * (p - 1), 2.0 * (p - 1) / p
    else:
        ca = cb = 2.0 * math.ceil(math.log2(p))
    # Normal equations of min sum ((ca a + cb n b - T) / T)^2.
    s11 = s12 = s22 = r1 = r2 = 0.0
    for n, t in points:
        x1, x2 = ca / t, cb * n / t
        s11 += x1 * x1
        s12 += x1 * x2
        s22 += x2 * x2
        r1 += x1
        r2 += x2
    det = s11 * s22 - s12 * s12
    a = (r1 * s22 - r2 * s12) / det
    b = (s11 * r2 - s12 * r1) / det
    return max(a, 0.0), max(b, 1e-15)


# ---- the projection table -----------------------------------------------------------------------------------------

def projection(depth_compute, alpha, beta, algo, bucket_mb=25.0, datasets=1, ps=PROJECT_P):
    """{depth: [(P, step_overlap, eff_overlap, step_plain, eff_plain)]} for a fixed per-rank batch."""
    out = {}
    for depth, compute in depth_compute.items():
        buckets = [4 * f for f in bucket_plan(ENCODER_PARAMS[depth], bucket_mb)]
        heads = [4 * HEAD_PARAMS[depth]]  # a rank holds about one head once P exceeds the dataset count
        rows = []
        for p in ps:
            kw = dict(compute=compute, buckets_bytes=buckets, head_bytes=heads, datasets=datasets, alpha=alpha,
                      beta=beta, algo=algo)
            so = step_time(p, overlap=True, **kw)[0]
            sp = step_time(p, overlap=False, **kw)[0]
            rows.append((p, so, compute / so, sp, compute / sp))
        out[depth] = rows
    return out


def format_projection(proj, alpha, beta, algo):
    lines = [f"projection ({algo} all-reduce, alpha {alpha * 1e6:.2f} us, beta 1/{1 / beta / 1e9:.2f} GB/s; "
             "fixed per-rank batch; step in s, efficiency = step(1) / step(P))"]
    depths = sorted(proj)
    head = f"{'P':>6}" + "".join(f" | r{d:<3} step  eff ovl  eff no-ovl" for d in depths)
    lines.append(head)
    lines.append("-" * len(head))
    for i, p in enumerate(r[0] for r in proj[depths[0]]):
        s = f"{p:>6}"
        for d in depths:
            _, so, eo, sp, ep = proj[d][i]
            s += f" | {so:9.3f} {100 * eo:6.1f}% {100 * ep:9.1f}%"
        lines.append(s)
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--alpha-us", type=float, default=HDR_ALPHA * 1e6, help="latency per message, us")
    ap.add_argument("--beta-gbs", type=float, default=1 / HDR_BETA / 1e9, help="bandwidth, GB/s (beta = 1/this)")
    ap.add_argument("--algo", default="ring", choices=["ring", "tree"])
    ap.add_argument("--compute", default="", help="single-rank step compute per depth, e.g. 10=0.5,18=0.9,50=2.1")
    ap.add_argument("--bucket-mb", type=float, default=25.0)
    ap.add_argument("--datasets", type=int, default=1)
    args = ap.parse_args()
    comp = {}
    for item in filter(None, args.compute.split(",")):
        d, t = item.split("=")
        if int(d) not in ENCODER_PARAMS:
            sys.exit(f"scaling_model.py: no depth {d} in mednet (10, 18, 34, 50, 101, 152, 200)")
        comp[int(d)] = float(t)
    if not comp:
        sys.exit("scaling_model.py: give --compute DEPTH=SECONDS,... (single-rank compute per step), or use "
                 "benchmarks/scaling_collect.py on a results folder")
    alpha, beta = args.alpha_us * 1e-6, 1.0 / (args.beta_gbs * 1e9)
    print(format_projection(projection(comp, alpha, beta, args.algo, args.bucket_mb, args.datasets), alpha, beta,
                            args.algo))


if __name__ == "__main__":
    main()
