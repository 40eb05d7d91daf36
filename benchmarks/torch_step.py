#!/usr/bin/python3
"""torch_step.py: the PyTorch side of benchmarks/bench_step.c: one MedicalNet training step (forward, CE loss on
nearest-downsampled labels, backward, plain SGD update) of the test-side model (tests/ref/model_ref.py) loaded with
mednet's exported weights; prints "RESULT median_step_s 0 peak_rss_mib first_step_loss median_step_cpu_s" (CPU
time of the process, all threads).

  torch_step.py --depth 10 --weights w.safetensors --inputs in.safetensors --threads 2 --steps 5
"""
import argparse
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "ref"))
from model_ref import ResNet, load_safetensors, seg_loss  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--depth", type=int, required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--classes", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    sd = {k: torch.from_numpy(v) for k, v in load_safetensors(a.weights).items()}
    inp = load_safetensors(a.inputs)
    x = torch.from_numpy(inp["x"])
    labels = torch.from_numpy(inp["labels"]).long()
    model = ResNet(a.depth, None, "seg", a.classes)
    model.load_state_dict(sd, strict=True)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    times, cpus, loss0 = [], [], None
    for k in range(a.steps + 1):
        t0 = time.perf_counter()
        c0 = time.process_time()
        opt.zero_grad()
        loss = seg_loss(model(x), labels, False, x.shape)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        if k == 0:
            loss0 = loss.item()
    t = sorted(times[1:])
    c = sorted(cpus[1:])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print("RESULT %.6f 0 %.1f %.8f %.6f" % (t[len(t) // 2], peak, loss0, c[len(c) // 2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
