#!/usr/bin/python3
"""make_fixtures.py: PyTorch reference fixtures for the mednet layer core (tests/unit/test_torch_parity.c).

Usage: /usr/bin/python3 make_fixtures.py OUT.h5

Writes one HDF5 group per case at the root of OUT.h5.  Every group carries the attribute `layer` (which mednet
routine the C test runs) and the case's hyper-parameters as attributes (k, s, p, dil, op, eps, momentum, training,
ignore_index, ...); tensor shapes are the dataset shapes, so the C test reads everything from the file.  Named
cases cover the geometries the issue and MedicalNet need; a seeded random sweep (sweep()) adds awkward ones.

Datasets per case (float32 unless noted):
  x            input (int32 for label resizing)
  w, b         parameters (PyTorch layouts: conv (cout, cin, kd, kh, kw), transposed conv (cin, cout, ...))
  y            forward output
  r            the fixed random tensor of L = sum(r * y): the gradient dL/dy fed to backward
  dx, dw, db   gradients of L (of the loss itself for the losses)
Batch norm adds gamma/beta/running_mean/running_var (inputs) and dgamma/dbeta/running_mean_out/running_var_out;
max pooling adds `indices` (int32, flat index within each (n, c) slice, torch's return_indices); the losses store
logits/labels/weight/loss (float64 scalar)/dlogits, cross-entropy the count of non-ignored voxels `nvalid`, Dice the
per-class hard Dice `dice_hard` (float64).

Design choices.  Inputs are drawn in float32 (torch.manual_seed(0), one thread) and stored as float32.  Each case
is computed twice from those exact values: in float64, which is what is stored (rounded once), so the fixtures
carry no float32 accumulation error of their own and the C test measures mednet's error alone; and in float32,
PyTorch's own precision, which must already meet the C test's tolerance (|got - ref| <= 1e-5 + 1e-4 |ref|) with
margin: a case where PyTorch float32 uses more than half the tolerance is ill-conditioned for a float32 comparison
and the script fails instead of writing it.  The fraction PyTorch float32 used is stored as the attribute
`torch_f32_tol_used`, which the C test prints next to mednet's.  Weights are scaled by 1/sqrt(fan_in) so outputs
are O(1).  The fixtures are generated at test time by ctest (tests/cmake/parity.cmake), never committed.
"""
import random
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

F32 = torch.float32
F64 = torch.float64
RTOL, ATOL = 1e-4, 1e-5
MAX_TORCH_F32_TOL_USED = 0.5


class IllConditioned(Exception):
    """A case where PyTorch float32 itself uses more than MAX_TORCH_F32_TOL_USED of the tolerance."""


def rnd(*shape, scale=1.0):
    """Uniform [-scale, scale) float32 tensor from the global torch generator."""
    return (torch.rand(*shape, dtype=F32) * 2.0 - 1.0) * scale


def put(g, name, arr):
    if isinstance(arr, torch.Tensor):
        if arr.is_floating_point():
            arr = arr.detach().to(F32).contiguous().numpy()
        else:
            arr = arr.detach().to(torch.int32).contiguous().numpy()
    g.create_dataset(name, data=arr)


def new_case(h5, name, layer, **attrs):
    g = h5.create_group(name)
    g.attrs["layer"] = np.string_(layer)
    for k, v in attrs.items():
        if isinstance(v, float):
            g.attrs[k] = np.float64(v)
        else:
            g.attrs[k] = np.asarray(v, dtype=np.int32)
    return g


def triple(v):
    return list(v) if isinstance(v, (list, tuple)) else [v, v, v]


def tol_used(got, ref):
    """Largest |got - ref| / (ATOL + RTOL |ref|); NaN matches NaN only."""
    got, ref = got.detach().to(F64), ref.detach().to(F64)
    both_nan = torch.isnan(got) & torch.isnan(ref)
    d = torch.where(both_nan, torch.zeros_like(ref), (got - ref).abs())
    d = torch.nan_to_num(d, nan=float("inf"))
    return float((d / (ATOL + RTOL * ref.abs().nan_to_num(0.0))).max()) if d.numel() else 0.0


def run_case(h5, name, layer, attrs, tensors, fn, loss=False, ints=None, r_positive=False):
    """Compute one case and write it.

    tensors: name -> float32 tensor, the inputs and parameters (stored under their names; gradients as d<name>).
    fn(vals, dtype): the forward pass on `vals` (name -> tensor of `dtype` recording gradients); returns
      (y, extra), extra a dict of further outputs (running statistics, indices) stored as they are.
    loss=False: L = sum(r * y) with a stored random r; loss=True: y is the scalar loss, stored in float64.
    ints: name -> integer tensor stored as int32 (labels).  Both precisions see the same r, uniform in [-1, 1)
    or, with r_positive, in [0, 1)."""
    r = None
    results = {}
    for dtype in (F64, F32):
        vals = {k: t.detach().to(dtype).requires_grad_(True) for k, t in tensors.items()}
        y, extra = fn(vals, dtype)
        if loss:
            y.backward()
        else:
            if r is None:
                r = rnd(*y.shape, scale=0.5) + 0.5 if r_positive else rnd(*y.shape)
            (y * r.to(dtype)).sum().backward()
        out = {"loss" if loss else "y": y.detach()}
        out.update({"d" + k: v.grad for k, v in vals.items() if v.grad is not None})
        out.update(extra)
        results[dtype] = out
    per = {k: tol_used(results[F32][k], v) for k, v in results[F64].items() if v.is_floating_point()}
    used = max(per.values())
    if not used <= MAX_TORCH_F32_TOL_USED:
        raise IllConditioned(f"case {name}: PyTorch float32 itself uses {used:.3f} of the tolerance (limit "
                             f"{MAX_TORCH_F32_TOL_USED}; per output: {per}): too ill-conditioned for a float32 "
                             f"parity test")
    g = new_case(h5, name, layer, torch_f32_tol_used=used, **attrs)
    for k, t in tensors.items():
        put(g, k, t)
    for k, t in (ints or {}).items():
        put(g, k, t)
    if r is not None:
        put(g, "r", r)
    for k, t in results[F64].items():
        if k == "loss":
            g.create_dataset("loss", data=np.float64(t.item()))
        else:
            put(g, k, t)
    return g


# ---- convolutions ------------------------------------------------------------------------------------------

def conv_case(h5, name, n, cin, cout, size, k, s=1, p=0, dil=1, bias=True, positive=False):
    """positive: x and r in [0, 1) (post-ReLU-like) for big volumes, where dw sums thousands of terms: with random
    signs some dw elements come out far smaller than their terms and PyTorch float32 itself misses 1e-4 there."""
    k, s, p, dil = triple(k), triple(s), triple(p), triple(dil)
    fan_in = cin * k[0] * k[1] * k[2]
    x = rnd(n, cin, *size, scale=0.5) + 0.5 if positive else rnd(n, cin, *size)
    t = {"x": x, "w": rnd(cout, cin, *k, scale=1.0 / fan_in ** 0.5)}
    if bias:
        t["b"] = rnd(cout, scale=0.5)
    run_case(h5, name, "conv3d", dict(k=k, s=s, p=p, dil=dil, bias=int(bias)), t,
             lambda v, dt: (F.conv3d(v["x"], v["w"], v.get("b"), stride=s, padding=p, dilation=dil), {}),
             r_positive=positive)


def convt_case(h5, name, n, cin, cout, size, k, s=1, p=0, dil=1, op=0, bias=True, positive=False):
    """positive: as for conv_case."""
    k, s, p, dil, op = triple(k), triple(s), triple(p), triple(dil), triple(op)
    fan_in = cin * k[0] * k[1] * k[2]
    x = rnd(n, cin, *size, scale=0.5) + 0.5 if positive else rnd(n, cin, *size)
    t = {"x": x, "w": rnd(cin, cout, *k, scale=1.0 / fan_in ** 0.5)}
    if bias:
        t["b"] = rnd(cout, scale=0.5)
    run_case(h5, name, "convt3d", dict(k=k, s=s, p=p, dil=dil, op=op, bias=int(bias)), t,
             lambda v, dt: (F.conv_transpose3d(v["x"], v["w"], v.get("b"), stride=s, padding=p, output_padding=op,
                                               dilation=dil), {}), r_positive=positive)


# ---- batch norm --------------------------------------------------------------------------------------------

def bn_case(h5, name, n, c, size, training, eps=1e-5, momentum=0.1, offset=0.0):
    """offset: a mean common to all channels, far from 0 (un-normalised intensities)."""
    x = rnd(n, c, *size, scale=2.0) + rnd(1, c, 1, 1, 1, scale=1.5) + offset  # per-channel means to remove
    t = {"x": x, "gamma": 1.0 + rnd(c, scale=0.5), "beta": rnd(c, scale=0.5)}
    rm0, rv0 = rnd(c, scale=0.5), 1.0 + rnd(c, scale=0.5)

    def fn(v, dt):
        rm, rv = rm0.to(dt).clone(), rv0.to(dt).clone()
        y = F.batch_norm(v["x"], rm, rv, v["gamma"], v["beta"], training=training, momentum=momentum, eps=eps)
        return y, {"running_mean_out": rm, "running_var_out": rv}

    g = run_case(h5, name, "bn3d", dict(training=int(training), eps=float(eps), momentum=float(momentum)), t, fn)
    put(g, "running_mean", rm0)
    put(g, "running_var", rv0)


# ---- pooling, activation, linear ---------------------------------------------------------------------------

def maxpool_case(h5, name, n, c, size, k, s, p, ties=False, nans=0):
    """ties: a ReLU-like input quantised to steps of 0.25 (mostly zeros), so windows hold several equal maxima and
    the tie-break decides indices and gradients; PyTorch takes the first maximum in (d, h, w) scan order.
    nans: that many NaN inputs; PyTorch's CPU kernel lets a NaN win its windows (and takes the gradient there)."""
    k, s, p = triple(k), triple(s), triple(p)
    x = rnd(n, c, *size)
    if ties:
        x = torch.clamp(torch.round((x - 0.6) * 4.0) / 4.0, min=0.0)
    if nans:
        x.view(-1)[torch.randperm(x.numel())[:nans]] = float("nan")

    def fn(v, dt):
        y, idx = F.max_pool3d(v["x"], k, s, p, return_indices=True)
        return y, {"indices": idx}

    run_case(h5, name, "maxpool3d", dict(k=k, s=s, p=p), {"x": x}, fn)


def avgpool_case(h5, name, n, c, size, k, s, p):
    k, s, p = triple(k), triple(s), triple(p)
    run_case(h5, name, "avgpool3d", dict(k=k, s=s, p=p), {"x": rnd(n, c, *size)},
             lambda v, dt: (F.avg_pool3d(v["x"], k, s, p, count_include_pad=True), {}))


def gap_case(h5, name, n, c, size):
    run_case(h5, name, "gap3d", {}, {"x": rnd(n, c, *size)},
             lambda v, dt: (F.adaptive_avg_pool3d(v["x"], 1).reshape(n, c), {}))


def relu_case(h5, name, shape):
    run_case(h5, name, "relu", {}, {"x": rnd(*shape)}, lambda v, dt: (F.relu(v["x"]), {}))


def linear_case(h5, name, n, fin, fout, bias=True):
    t = {"x": rnd(n, fin), "w": rnd(fout, fin, scale=1.0 / fin ** 0.5)}
    if bias:
        t["b"] = rnd(fout, scale=0.5)
    run_case(h5, name, "linear", dict(bias=int(bias)), t, lambda v, dt: (F.linear(v["x"], v["w"], v.get("b")), {}))


# ---- resizing ----------------------------------------------------------------------------------------------

def trilinear_case(h5, name, n, c, size, out_size):
    run_case(h5, name, "upsample3d", {}, {"x": rnd(n, c, *size)},
             lambda v, dt: (F.interpolate(v["x"], size=tuple(out_size), mode="trilinear", align_corners=False), {}))


def labels_case(h5, name, n, size, out_size, nclass, ignore=255):
    lab = torch.randint(0, nclass, (n, *size), dtype=torch.int64)
    lab[torch.rand(lab.shape) < 0.1] = ignore  # the ignore label travels like any other value
    # Nearest resizing as torch does it on a float tensor; small integers are exact in float32.
    y = F.interpolate(lab[:, None].to(F32), size=tuple(out_size), mode="nearest")[:, 0].round().to(torch.int64)
    g = new_case(h5, name, "labels_nearest")
    put(g, "x", lab)
    put(g, "y", y)


# ---- losses ------------------------------------------------------------------------------------------------

def ce_case(h5, name, n, c, size, ignore_index, weighted, ignore_frac=0.2, scale=3.0):
    logits = rnd(n, c, *size, scale=scale)
    labels = torch.randint(0, c, (n, *size), dtype=torch.int64)
    labels[torch.rand(labels.shape) < ignore_frac] = ignore_index
    weight = (0.25 + torch.rand(c, dtype=F32) * 2.0) if weighted else None

    def fn(v, dt):
        w = weight.to(dt) if weighted else None
        return F.cross_entropy(v["logits"], labels, weight=w, ignore_index=ignore_index, reduction="mean"), {}

    g = run_case(h5, name, "cross_entropy", dict(ignore_index=ignore_index, weighted=int(weighted),
                                                 nvalid=int((labels != ignore_index).sum())),
                 {"logits": logits}, fn, loss=True, ints={"labels": labels})
    if weighted:
        put(g, "weight", weight)


def dice_case(h5, name, n, c, size, ignore_index, first_class, smooth, ignore_frac=0.2, absent_last=False):
    """Soft Dice as documented in include/mednet/loss.h (PyTorch has no Dice loss: written here with autograd).
    absent_last: the last class is in no label and never the argmax (its hard Dice is NaN)."""
    logits = rnd(n, c, *size, scale=3.0)
    labels = torch.randint(0, c - 1 if absent_last else c, (n, *size), dtype=torch.int64)
    if absent_last:
        logits[:, c - 1] -= 8.0
    labels[torch.rand(labels.shape) < ignore_frac] = ignore_index
    valid = labels != ignore_index

    def fn(v, dt):
        mask = valid[:, None].to(dt)
        prob = torch.softmax(v["logits"], dim=1) * mask
        onehot = F.one_hot(torch.where(valid, labels, torch.zeros_like(labels)), c).movedim(-1, 1).to(dt) * mask
        dims = (0, 2, 3, 4)
        inter, psum, gsum = (prob * onehot).sum(dims), prob.sum(dims), onehot.sum(dims)
        dice = (2.0 * inter + smooth) / (psum + gsum + smooth)
        return 1.0 - dice[first_class:].mean(), {}

    g = run_case(h5, name, "dice", dict(ignore_index=ignore_index, first_class=first_class, smooth=float(smooth)),
                 {"logits": logits}, fn, loss=True, ints={"labels": labels})
    # Hard Dice of argmax(logits) per class over non-ignored voxels; NaN where the class is absent from both.
    pred = logits.argmax(dim=1)
    hard = []
    for k in range(c):
        a, b = (pred == k) & valid, (labels == k) & valid
        den = int(a.sum()) + int(b.sum())
        hard.append(float("nan") if den == 0 else 2.0 * int((a & b).sum()) / den)
    g.create_dataset("dice_hard", data=np.asarray(hard, dtype=np.float64))


def sweep(h5, count, seed=1234):
    """Seeded random geometries (anisotropic kernels 1-4, strides 1-3, padding, dilation 1-3, odd sizes 1-9, batch
    1-3, channels 1-5) for conv3d, convt3d (with output_padding), max/avg pooling and both resizings: `count` cases
    of each kind.  The draw is deterministic; a geometry PyTorch rejects is redrawn, and a draw that is
    ill-conditioned in float32 (IllConditioned) is skipped with a note rather than failing the script."""
    rng = random.Random(seed)

    def tri(lo, hi):
        return [rng.randint(lo, hi) for _ in range(3)]

    def attempt(name, make):
        try:
            make()
            return True
        except IllConditioned as e:
            print(f"make_fixtures.py: sweep: skipped {e}")
        except RuntimeError:  # a geometry PyTorch refuses
            pass
        if name in h5:
            del h5[name]
        return False

    kinds = ("conv3d", "convt3d", "pool3d", "resize")
    for kind in kinds:
        made = 0
        while made < count:
            k, s, d, size = tri(1, 4), tri(1, 3), tri(1, 3), tri(1, 9)
            n, cin, cout, bias = rng.randint(1, 3), rng.randint(1, 5), rng.randint(1, 5), rng.random() < 0.5
            name = f"sweep_{kind}_{made:02d}"
            if kind == "conv3d":
                p = tri(0, 3)
                if any(size[i] + 2 * p[i] - d[i] * (k[i] - 1) - 1 < 0 for i in range(3)):
                    continue
                ok = attempt(name, lambda: conv_case(h5, name, n, cin, cout, tuple(size), k, s=s, p=p, dil=d,
                                                     bias=bias))
            elif kind == "convt3d":
                p = tri(0, 3)
                op = [rng.randint(0, max(s[i], d[i]) - 1) for i in range(3)]
                if any((size[i] - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + op[i] + 1 <= 0 for i in range(3)):
                    continue
                ok = attempt(name, lambda: convt_case(h5, name, n, cin, cout, tuple(size), k, s=s, p=p, dil=d,
                                                      op=op, bias=bias))
            elif kind == "pool3d":
                p = [rng.randint(0, k[i] // 2) for i in range(3)]
                if any(size[i] < k[i] for i in range(3)):
                    continue
                if made % 2 == 0:
                    ties = rng.random() < 0.3
                    ok = attempt(name, lambda: maxpool_case(h5, name, n, cin, tuple(size), k, s, p, ties=ties))
                else:
                    ok = attempt(name, lambda: avgpool_case(h5, name, n, cin, tuple(size), k, s, p))
            else:
                out = tri(1, 12)
                if made % 2 == 0:
                    ok = attempt(name, lambda: trilinear_case(h5, name, n, cin, tuple(size), tuple(out)))
                else:
                    ok = attempt(name, lambda: labels_case(h5, name, n, tuple(size), tuple(out), 7))
            made += ok


def main():
    if len(sys.argv) != 2:
        sys.stderr.write("usage: make_fixtures.py OUT.h5\n")
        return 2
    torch.manual_seed(0)
    torch.set_num_threads(1)
    with h5py.File(sys.argv[1], "w") as h5:
        h5.attrs["torch_version"] = np.string_(torch.__version__)
        # conv3d: stride 2 + padding; dilation 2 and 4; 1x1x1 (plain and strided, the type-B shortcut);
        # channels not multiples of 8; batch 2; anisotropic geometry; with and without bias.
        conv_case(h5, "conv3d_k3_s2_p1_bias", 1, 3, 5, (7, 8, 9), 3, s=2, p=1)
        conv_case(h5, "conv3d_k3_p2_dil2", 1, 4, 6, (9, 8, 7), 3, p=2, dil=2, bias=False)
        conv_case(h5, "conv3d_k3_p4_dil4_bias", 1, 2, 3, (11, 10, 9), 3, p=4, dil=4)
        conv_case(h5, "conv3d_k1_bias_n2", 2, 12, 10, (5, 6, 7), 1)
        conv_case(h5, "conv3d_k1_s2_n2", 2, 6, 9, (5, 6, 7), 1, s=2, bias=False)
        conv_case(h5, "conv3d_k323_s121_p102_c5to7_n2", 2, 5, 7, (6, 7, 5), (3, 2, 3), s=(1, 2, 1),
                  p=(1, 0, 2))
        conv_case(h5, "conv3d_k7_s2_p3_stem", 1, 1, 4, (10, 9, 11), 7, s=2, p=3)
        conv_case(h5, "conv3d_k3_s2_p2_dil2_c9to11_n2", 2, 9, 11, (8, 7, 9), 3, s=2, p=2, dil=2)
        # Volumes big enough that mednet's batch grouping (about 8192 GEMM columns) packs 3 samples and leaves a
        # single-sample remainder, and one where every sample is its own GEMM.
        conv_case(h5, "conv3d_k3_p1_n4_groups", 4, 2, 3, (10, 15, 20), 3, p=1, positive=True)
        conv_case(h5, "conv3d_k3_p1_big_n2", 2, 1, 2, (20, 21, 20), 3, p=1, positive=True)
        # transposed conv: the decoder's k2 s2 with bias, and a generic k3 s2 p1 output_padding 1 geometry.
        convt_case(h5, "convt3d_k2_s2_bias_n2", 2, 6, 4, (3, 4, 5), 2, s=2)
        convt_case(h5, "convt3d_k3_s2_p1_op1", 1, 5, 3, (4, 3, 5), 3, s=2, p=1, op=1, bias=False)
        convt_case(h5, "convt3d_k3_s1_p1_dil2_bias", 1, 3, 2, (4, 5, 3), 3, s=1, p=1, dil=2)
        convt_case(h5, "convt3d_k2_s2_n4_groups", 4, 3, 2, (10, 15, 20), 2, s=2, positive=True)
        # batch norm: training (batch statistics, running-stat update) and eval.
        bn_case(h5, "bn3d_train_n2_c5", 2, 5, (4, 5, 3), training=True)
        bn_case(h5, "bn3d_train_n1_c3_mom03", 1, 3, (3, 4, 5), training=True, eps=1e-3, momentum=0.3)
        bn_case(h5, "bn3d_eval_n2_c5", 2, 5, (4, 5, 3), training=False)
        bn_case(h5, "bn3d_train_offset20", 2, 3, (5, 4, 6), training=True, offset=20.0)
        # pooling
        maxpool_case(h5, "maxpool3d_k3_s2_p1_n2", 2, 3, (7, 8, 9), 3, 2, 1)
        maxpool_case(h5, "maxpool3d_k2_s2_p0", 1, 2, (6, 5, 4), 2, 2, 0)
        maxpool_case(h5, "maxpool3d_k3_s2_p1_ties", 2, 3, (7, 6, 8), 3, 2, 1, ties=True)
        maxpool_case(h5, "maxpool3d_k3_s2_p1_nan", 1, 2, (6, 7, 5), 3, 2, 1, nans=3)
        avgpool_case(h5, "avgpool3d_k1_s2_n2", 2, 4, (5, 6, 7), 1, 2, 0)
        avgpool_case(h5, "avgpool3d_k3_s2_p1", 1, 3, (6, 7, 5), 3, 2, 1)
        gap_case(h5, "gap3d_n2_c7", 2, 7, (3, 4, 5))
        # element-wise and dense
        relu_case(h5, "relu_n2_c3", (2, 3, 4, 5, 6))
        linear_case(h5, "linear_n3_10to7_bias", 3, 10, 7)
        linear_case(h5, "linear_n2_9to4", 2, 9, 4, bias=False)
        # trilinear resizing, align_corners=False: up (integer and fractional factors) and down.
        trilinear_case(h5, "upsample3d_up2_n2", 2, 3, (3, 4, 5), (6, 8, 10))
        trilinear_case(h5, "upsample3d_up_frac", 1, 2, (3, 4, 5), (7, 9, 11))
        trilinear_case(h5, "upsample3d_down", 1, 2, (9, 8, 7), (4, 5, 3))
        trilinear_case(h5, "upsample3d_mixed", 1, 2, (4, 6, 5), (4, 3, 11))
        # nearest label resizing: down and up.
        labels_case(h5, "labels_nearest_down_n2", 2, (9, 8, 7), (4, 5, 3), 6)
        labels_case(h5, "labels_nearest_up", 1, (3, 4, 5), (7, 9, 11), 6)
        labels_case(h5, "labels_nearest_half", 1, (8, 6, 10), (4, 3, 5), 6)
        # cross-entropy, reduction mean, with an ignore label, with and without class weights.
        ce_case(h5, "cross_entropy_w_ignore255_n2", 2, 4, (3, 4, 5), 255, True)
        ce_case(h5, "cross_entropy_ignore_m1", 1, 3, (4, 3, 5), -1, False)
        ce_case(h5, "cross_entropy_w_c5_n2", 2, 5, (3, 3, 3), 255, True, ignore_frac=0.0)
        ce_case(h5, "cross_entropy_large_logits", 1, 6, (3, 4, 3), 255, False, scale=60.0)
        # soft Dice (mednet's documented formula) and hard Dice; in the first case class 4 of 5 is absent (NaN).
        dice_case(h5, "dice_fg_smooth1_n2", 2, 5, (3, 4, 5), 255, 1, 1.0, absent_last=True)
        dice_case(h5, "dice_all_smooth1e-5", 1, 3, (4, 3, 5), -1, 0, 1e-5, ignore_frac=0.0)
        # seeded random geometries on top of the named cases
        sweep(h5, 12)
        h5.attrs["ncases"] = np.int32(len(h5.keys()))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except IllConditioned as e:
        sys.exit(f"make_fixtures.py: {e}")
