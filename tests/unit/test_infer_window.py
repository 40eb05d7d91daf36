"""test_infer_window.py WORKDIR: numpy re-implementation of mednet infer's sliding window (window starts, the
gaussian / linear / constant weight maps, softmax, weighted blending) for the position-dependent predictor of
test_infer_window.c, compared with the C engine's output files window_<blend>.bin."""
import math
import os
import sys

import numpy as np


def starts(length, win, overlap):
    if length <= win:
        return [0]
    step = max(win * (1 - overlap), 1)
    n = int(math.ceil((length - win) / step)) + 1
    return [int(np.floor(i * (length - win) / (n - 1) + 0.5)) for i in range(n)]


def weights(win, blend):
    axes = []
    for w in win:
        x = np.arange(w, dtype=np.float64)
        if blend == 0:
            s = w / 8.0
            v = np.exp(-((x - (w - 1) / 2.0) ** 2) / (2 * s * s))
        elif blend == 1:
            v = 1 - np.abs(2 * (x + 0.5) / w - 1)
        else:
            v = np.ones(w)
        axes.append(v / v.max())
    return axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]


def predictor(x, classes):
    z, y, xx = np.meshgrid(*[np.arange(n) for n in x.shape], indexing="ij")
    logits = np.stack([np.sin(0.37 * c * (z + 1) + 0.11 * y - 0.05 * xx) + c * x for c in range(classes)])
    e = np.exp(logits - logits.max(0))
    return e / e.sum(0)


def main():
    work = sys.argv[1]
    worst = 0.0
    for name in ("gaussian", "linear", "constant"):
        raw = open(os.path.join(work, "window_%s.bin" % name), "rb").read()
        hdr = np.frombuffer(raw, np.int32, 8)
        overlap = np.frombuffer(raw, np.float64, 1, 32)[0]
        D, H, W, w0, w1, w2, C, blend = (int(v) for v in hdr)
        n = D * H * W
        vol = np.frombuffer(raw, np.float32, n, 40).astype(np.float64).reshape(D, H, W)
        got = np.frombuffer(raw, np.float32, C * n, 40 + 4 * n).reshape(C, D, H, W)
        acc = np.zeros((C, D, H, W))
        wsum = np.zeros((D, H, W))
        wmap = weights((w0, w1, w2), blend)
        for z in starts(D, w0, overlap):
            for y in starts(H, w1, overlap):
                for x in starts(W, w2, overlap):
                    win = np.zeros((w0, w1, w2))
                    part = vol[z:z + w0, y:y + w1, x:x + w2]
                    win[:part.shape[0], :part.shape[1], :part.shape[2]] = part
                    p = predictor(win, C)
                    sl = (slice(z, z + w0), slice(y, y + w1), slice(x, x + w2))
                    d, h, w = part.shape
                    acc[(slice(None),) + sl] += (wmap * p)[:, :d, :h, :w]
                    wsum[sl] += wmap[:d, :h, :w]
        ref = acc / wsum
        err = np.abs(got - ref).max()
        print("%-8s blending, %dx%dx%d windows over %dx%dx%d, overlap %.2f: max |C - numpy| %.3g"
              % (name, w0, w1, w2, D, H, W, overlap, err))
        worst = max(worst, err)
    if worst > 1e-5:
        sys.exit("FAIL: the sliding window differs from numpy by %g" % worst)
    print("test_infer_window.py: all checks passed")


if __name__ == "__main__":
    main()
