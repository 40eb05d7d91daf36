#!/usr/bin/python3
"""torch_conv3d.py: PyTorch (oneDNN) timings of the conv shapes measured by bench_conv3d, for comparison.

Usage: torch_conv3d.py THREADS REPS SPEC...   with SPEC = kind,n,cin,cout,d,h,w,k,s,p,dil,op,bias
(kind: conv or convt).  Prints one line per spec: "shape <i> <fwd> <bwd_data> <bwd_weights>" as median seconds over
REPS timed calls after two warm-up calls, followed by the three minimum times.  The backward passes are timed separately through
aten::convolution_backward with an output mask, the same split bench_conv3d times.  Run it with jemalloc preloaded
(bench_conv3d does) or PyTorch spends much of its time in page faults on this machine.
"""
import statistics
import sys
import time

import torch


def times(fn, reps):
    """(median, min) seconds of reps timed calls after two warm-up calls."""
    fn()
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), min(ts)


def main():
    threads, reps = int(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__} threads {torch.get_num_threads()} mkldnn {torch.backends.mkldnn.is_available()}",
          flush=True)
    for i, spec in enumerate(sys.argv[3:]):
        f = spec.split(",")
        kind = f[0]
        n, cin, cout, d, h, w, k, s, p, dil, op, bias = (int(v) for v in f[1:])
        transposed = kind == "convt"
        x = torch.randn(n, cin, d, h, w)
        if transposed:
            wt = torch.randn(cin, cout, k, k, k) * 0.05
        else:
            wt = torch.randn(cout, cin, k, k, k) * 0.05
        b = torch.randn(cout) if bias else None
        with torch.no_grad():
            if transposed:
                y = torch.nn.functional.conv_transpose3d(x, wt, b, s, p, op, 1, dil)
                fwd = lambda: torch.nn.functional.conv_transpose3d(x, wt, b, s, p, op, 1, dil)
            else:
                y = torch.nn.functional.conv3d(x, wt, b, s, p, dil)
                fwd = lambda: torch.nn.functional.conv3d(x, wt, b, s, p, dil)
            dy = torch.randn_like(y)
            bsz = [cout] if bias else None

            def bwd(mask):
                return torch.ops.aten.convolution_backward(dy, x, wt, bsz, [s] * 3, [p] * 3, [dil] * 3, transposed,
                                                           [op] * 3, 1, mask)

            t_f = times(fwd, reps)
            t_d = times(lambda: bwd([True, False, False]), reps)
            t_w = times(lambda: bwd([False, True, bool(bias)]), reps)
        print(f"shape {i} {t_f[0]:.6e} {t_d[0]:.6e} {t_w[0]:.6e} {t_f[1]:.6e} {t_d[1]:.6e} {t_w[1]:.6e}", flush=True)


if __name__ == "__main__":
    main()
