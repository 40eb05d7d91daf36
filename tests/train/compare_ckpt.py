#!/usr/bin/python3
"""compare_ckpt.py A.h5 B.h5: every array of two checkpoints bitwise equal (same names, shapes and bytes)."""
import sys
import h5py
import numpy as np

a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
names = []
a.visit(lambda n: names.append(n) if isinstance(a[n], h5py.Dataset) else None)
other = []
b.visit(lambda n: other.append(n) if isinstance(b[n], h5py.Dataset) else None)
ok = sorted(names) == sorted(other)
if not ok:
    print("FAIL: different arrays:", sorted(set(names) ^ set(other)))
for n in names:
    if n not in b:
        continue
    x, y = a[n][()], b[n][()]
    same = x.shape == y.shape and x.dtype == y.dtype and x.tobytes() == y.tobytes()
    if not same:
        diff = np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))) if x.shape == y.shape else float("nan")
        print(f"FAIL: {n} differs (max abs difference {diff:.3e})")
        ok = False
print(f"compared {len(names)} arrays: {'bitwise identical' if ok else 'DIFFERENT'}")
sys.exit(0 if ok else 1)
