#!/usr/bin/python3
"""check_export.py: a `mednet export` file against the checkpoint it came from, through PyTorch.

  check_export.py CKPT.h5 OUT.safetensors HEAD|- DEPTH

1. The file loads with load_state_dict(strict=True) into the test-side MedicalNet ResNet (tests/ref/model_ref.py) of
   that depth with a conv_seg head of the class count found in the file (HEAD '-': no head, encoder only).
2. Every value matches the checkpoint, read independently with h5py: the model's parameters in state-dict order,
   concatenated, are the checkpoint's encoder/params (+ heads/HEAD/params), and the BN running statistics are its
   encoder/bn (+ heads/HEAD/bn) in the order mednet documents (per BN layer: running_mean, then running_var).
Exit 0 when all hold; a message and exit 1 otherwise.
"""
import os
import sys

import h5py
import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "ref"))
from model_ref import ResNet, load_safetensors  # noqa: E402


def fail(msg):
    print("check_export: FAIL: " + msg)
    sys.exit(1)


def main():
    ckpt, path, head, depth = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    tensors = load_safetensors(path)
    classes = tensors["conv_seg.6.weight"].shape[0] if head != "-" else 2
    model = ResNet(depth, None, "seg" if head != "-" else "none", classes)
    sd = {k: torch.from_numpy(v) for k, v in tensors.items()}
    missing, unexpected = model.load_state_dict(sd, strict=True), None
    del missing, unexpected  # strict=True raises on any difference

    with h5py.File(ckpt, "r") as f:
        want_p = [f["encoder/params"][()]]
        want_b = [f["encoder/bn"][()]]
        if head != "-":
            want_p.append(f["heads/%s/params" % head][()])
            want_b.append(f["heads/%s/bn" % head][()])
    want_p = np.concatenate(want_p)
    want_b = np.concatenate(want_b)
    got_p = np.concatenate([p.detach().numpy().ravel() for _, p in model.named_parameters()])
    bufs = []
    for name, b in model.named_buffers():
        if name.endswith("running_mean") or name.endswith("running_var"):
            bufs.append(b.numpy().ravel())
    got_b = np.concatenate(bufs)
    if got_p.shape != want_p.shape:
        fail("%d parameters in the file, %d in the checkpoint" % (got_p.size, want_p.size))
    if not np.array_equal(got_p, want_p):
        i = int(np.argmax(got_p != want_p))
        fail("parameter %d differs: file %r, checkpoint %r" % (i, got_p[i], want_p[i]))
    if got_b.shape != want_b.shape or not np.array_equal(got_b, want_b):
        fail("BN statistics differ (%d in the file, %d in the checkpoint)" % (got_b.size, want_b.size))
    if not np.any(want_p):
        fail("the checkpoint's parameters are all zero: nothing was compared")
    print("check_export: %s matches %s: %d parameters, %d BN statistics, strict load into resnet%d%s"
          % (path, ckpt, got_p.size, got_b.size, depth, " + conv_seg(%d)" % classes if head != "-" else ""))


if __name__ == "__main__":
    main()
