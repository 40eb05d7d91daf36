#!/usr/bin/python3
"""st_roundtrip.py: value checks of the safetensors round trips run by ctest (tests/cmake/model.cmake).

  st_roundtrip.py perturb IN OUT SEED     every float tensor of IN replaced by seeded random values (same names,
                                          shapes, dtypes, order and metadata; running_var kept positive), so that an
                                          import which loaded nothing cannot pass for one that loaded everything
  st_roundtrip.py drop IN OUT NAME        IN without the tensor NAME
  st_roundtrip.py compare A B             B holds exactly A's float tensors (names, shapes) with bitwise equal values
  st_roundtrip.py compare-pth P.pth B     the same for a PyTorch checkpoint P (a dict with 'state_dict' or a plain
                                          state dict; DataParallel's 'module.' prefix removed) against B

Integer tensors (num_batches_tracked) are not compared: mednet keeps no step count per layer.  Prints the number of
tensors and values compared and exits 1 naming the first difference.
"""
import json
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_ref import load_safetensors, save_safetensors  # noqa: E402


def floats(d):
    return {k: v for k, v in d.items() if v.dtype.kind == "f"}


def compare(a, b, what):
    a, b = floats(a), floats(b)
    missing = sorted(set(a) - set(b))
    extra = sorted(set(b) - set(a))
    if missing or extra:
        print("FAIL %s: %d tensors missing from the copy (%s), %d extra (%s)"
              % (what, len(missing), ", ".join(missing[:3]), len(extra), ", ".join(extra[:3])))
        return 1
    nval = 0
    for k in a:
        va, vb = np.asarray(a[k], dtype=np.float32), np.asarray(b[k])
        if va.shape != vb.shape:
            print("FAIL %s: %s has shape %s in the copy, %s in the original" % (what, k, vb.shape, va.shape))
            return 1
        if vb.dtype != np.float32 or not np.array_equal(va.view(np.uint32), vb.view(np.uint32)):
            diff = np.abs(va.astype(np.float64) - vb.astype(np.float64))
            i = int(np.argmax(diff))
            print("FAIL %s: %s differs (%s in the copy): max |diff| %.3g at flat index %d (%r vs %r)"
                  % (what, k, vb.dtype, diff.flat[i], i, float(vb.flat[i]), float(va.flat[i])))
            return 1
        nval += va.size
    print("%s: %d float tensors, %d values bitwise equal" % (what, len(a), nval))
    return 0


def perturb(src, dst, seed):
    rng = np.random.default_rng(seed)
    with open(src, "rb") as f:  # keep the metadata (mednet writes its model description there)
        (hlen,) = struct.unpack("<Q", f.read(8))
        meta = json.loads(f.read(hlen)).get("__metadata__")
    out = {}
    for k, v in load_safetensors(src).items():
        if v.dtype.kind == "f":
            r = rng.standard_normal(v.shape).astype(v.dtype)
            v = np.abs(r) + 0.5 if k.endswith("running_var") else r
        out[k] = v
    save_safetensors(dst, out, meta)
    print("perturbed %d tensors of %s into %s (seed %d)" % (len(out), src, dst, seed))
    return 0


def drop(src, dst, name):
    t = load_safetensors(src)
    if name not in t:
        print("FAIL: %s has no tensor %s" % (src, name))
        return 1
    del t[name]
    save_safetensors(dst, t)
    print("%s without %s: %s" % (src, name, dst))
    return 0


def load_pth(path):
    import torch
    ck = torch.load(path, map_location="cpu")
    sd = ck.get("state_dict", ck) if isinstance(ck, dict) else ck
    return {(k[len("module."):] if k.startswith("module.") else k): v.detach().numpy()
            for k, v in sd.items() if torch.is_tensor(v)}


def main(argv):
    if len(argv) == 5 and argv[1] == "perturb":
        return perturb(argv[2], argv[3], int(argv[4]))
    if len(argv) == 5 and argv[1] == "drop":
        return drop(argv[2], argv[3], argv[4])
    if len(argv) == 4 and argv[1] == "compare":
        return compare(load_safetensors(argv[2]), load_safetensors(argv[3]), "%s -> %s" % (argv[2], argv[3]))
    if len(argv) == 4 and argv[1] == "compare-pth":
        return compare(load_pth(argv[2]), load_safetensors(argv[3]), "%s -> %s" % (argv[2], argv[3]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
