#!/usr/bin/python3
"""Reference trajectories of torch.optim.SGD and torch.optim.Adam for tests/unit/test_optim.c.

Writes one raw little-endian float32 file: for each case (SGD momentum, SGD nesterov, Adam) the initial params
(n), then for each of 5 steps the gradient (n) and the params after the step (n).  n = 1000, lr per step as the
exponential schedule would give it is NOT used here: the learning rate is fixed per case, the schedule is tested
analytically in C.
"""
import sys
import numpy as np
import torch

torch.manual_seed(1234)
torch.set_num_threads(1)
n, steps = 1000, 5
cases = [
    ("sgd", dict(lr=0.05, momentum=0.9, weight_decay=1e-3)),
    ("sgd", dict(lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True)),
    ("adam", dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-3)),
]
out = []
for kind, kw in cases:
    p = torch.nn.Parameter(torch.randn(n))
    opt = torch.optim.SGD([p], **kw) if kind == "sgd" else torch.optim.Adam([p], **kw)
    out.append(p.detach().clone())
    for _ in range(steps):
        g = torch.randn(n)
        p.grad = g.clone()
        opt.step()
        out.append(g)
        out.append(p.detach().clone())
np.concatenate([t.numpy().astype("<f4") for t in out]).tofile(sys.argv[1])
