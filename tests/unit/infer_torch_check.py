"""infer_torch_check.py MEDNET CKPT HEAD WORKDIR: mednet infer's probabilities against PyTorch on the checkpoint's
own weights.  A 24^3 volume at the training spacing (2 mm, axis-aligned) makes the canonical grid the input grid, and
a 24^3 window covers it, so mednet infer's probability map must be exactly
    softmax(interpolate(model(zscore(x)), 24^3, trilinear, align_corners=False))
with the model of tests/ref/model_ref.py in float64 (eval mode), its parameters and batch-norm statistics filled from
the checkpoint's flat arrays in state-dict order (encoder, then the head).  Prints the largest difference."""
import os
import subprocess
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
sys.path.insert(0, os.path.join(here, "..", "ref"))
import nifti_py  # noqa: E402
from model_ref import ResNet  # noqa: E402


def main():
    mednet, ckpt, head, work = sys.argv[1:5]
    torch.set_num_threads(1)
    rng = np.random.default_rng(11)
    A = np.diag([2.0, 2.0, 2.0, 1.0])
    A[:3, 3] = -24
    z, y, x = np.meshgrid(*[np.arange(24)] * 3, indexing="ij")
    img = (100 + 80 * (((x - 12) ** 2 + (y - 10) ** 2 + (z - 13) ** 2) < 36) + rng.normal(0, 4, (24,) * 3))
    img = img.astype(np.float32)  # indexed [i, j, k] by nifti_py: fine, any array will do
    path = os.path.join(work, "canonical.nii.gz")
    nifti_py.write(path, img, A)
    out = os.path.join(work, "out_torch")
    p = subprocess.run([mednet, "infer", ckpt, path, "-o", out, "--probs", "--window", "24", "--force"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit("FAIL: mednet infer: %s" % p.stderr)
    prob, _, _ = nifti_py.read(os.path.join(out, "canonical_prob.nii.gz"))  # [i, j, k, c]

    with h5py.File(ckpt, "r") as f:
        params = np.concatenate([f["encoder/params"][:], f["heads/%s/params" % head][:]]).astype(np.float64)
        bn = np.concatenate([f["encoder/bn"][:], f["heads/%s/bn" % head][:]]).astype(np.float64)
    classes = prob.shape[-1]
    model = ResNet(10, None, "seg", classes).double().eval()
    off = 0
    for _, t in model.named_parameters():
        t.data = torch.from_numpy(params[off:off + t.numel()].copy()).reshape(t.shape)
        off += t.numel()
    boff = 0
    for name, b in model.named_buffers():
        if name.endswith("running_mean") or name.endswith("running_var"):
            b.data = torch.from_numpy(bn[boff:boff + b.numel()].copy()).reshape(b.shape)
            boff += b.numel()
    if off != params.size or boff != bn.size:
        sys.exit("FAIL: layout: %d of %d parameters, %d of %d BN buffers placed" % (off, params.size, boff, bn.size))
    # Prep's z-score over the foreground mask (voxels > 0: all of them here), population std, in double.
    xv = img.astype(np.float64)
    m = xv > 0
    mean, std = xv[m].mean(), xv[m].std()
    xn = np.where(m, (xv - mean) / std, 0.0)
    xt = torch.from_numpy(np.ascontiguousarray(xn.transpose(2, 1, 0)))[None, None]  # (1, 1, D=k, H=j, W=i)
    with torch.no_grad():
        logits = model(xt)
        ref = torch.softmax(F.interpolate(logits, size=(24, 24, 24), mode="trilinear", align_corners=False), 1)
    ref = ref[0].numpy().transpose(3, 2, 1, 0)  # -> [i, j, k, c]
    err = np.abs(prob - ref).max()
    print("mednet infer vs PyTorch (float64) on the checkpoint's weights, one covering window: max |p - p_torch| = "
          "%.3g over %d probabilities (logits %s)" % (err, prob.size, tuple(logits.shape)))
    if err > 1e-4:
        sys.exit("FAIL: probabilities differ from PyTorch by %g" % err)


if __name__ == "__main__":
    main()
