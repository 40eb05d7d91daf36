"""test_eval_xcheck.py MEDNET WORKDIR [MPIEXEC...]: `mednet eval` against an independent computation with scipy
(distance_transform_edt with sampling=, binary_erosion with border_value=0) and, on the smaller cases, a brute force
over every pair of surface voxels, on random smooth shapes with anisotropic, flipped and permuted affines; plus the
command's error cases (grids that differ, a non-integer label, a missing file); with MPIEXEC, 2 ranks (pairs dealt
round-robin) must write the same JSON as 1 rank.  Prints the worst differences."""
import json
import os
import subprocess
import sys

import numpy as np
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nifti_py  # noqa: E402


def reference(pred, label, spacing, c, brute):
    a, b = pred == c, label == c
    if not a.any() and not b.any():
        return dict(dice=1.0, hd95=0.0, assd=0.0, hd=0.0)
    dice = 2.0 * (a & b).sum() / (a.sum() + b.sum())
    if not a.any() or not b.any():
        return dict(dice=dice, hd95=None, assd=None, hd=None)
    st = ndimage.generate_binary_structure(3, 1)
    sa = a & ~ndimage.binary_erosion(a, structure=st, border_value=0)
    sb = b & ~ndimage.binary_erosion(b, structure=st, border_value=0)
    da = ndimage.distance_transform_edt(~sb, sampling=spacing)[sa]
    db = ndimage.distance_transform_edt(~sa, sampling=spacing)[sb]
    d = np.concatenate([da, db])
    if brute:
        pa = np.argwhere(sa) * spacing
        pb = np.argwhere(sb) * spacing
        dd = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
        d2 = np.concatenate([dd.min(1), dd.min(0)])
        assert np.allclose(np.sort(d), np.sort(d2), rtol=0, atol=1e-9), "scipy vs brute force"
    return dict(dice=dice, hd95=np.percentile(d, 95), assd=d.mean(), hd=d.max())


def shapes(rng, shape, nclasses):
    """A label map of smooth random blobs (Gaussian-filtered noise, thresholded per class)."""
    out = np.zeros(shape, np.uint8)
    for c in range(1, nclasses):
        f = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
        out[f > np.quantile(f, 0.8)] = c
    return out


def run(mednet, args, expect_ok=True):
    p = subprocess.run([mednet, "eval"] + args, capture_output=True, text=True)
    if expect_ok and p.returncode != 0:
        sys.exit("mednet eval failed: %s\n%s" % (p.stdout, p.stderr))
    return p


def main():
    mednet, work, mpi = sys.argv[1], sys.argv[2], sys.argv[3:]
    os.makedirs(work, exist_ok=True)
    rng = np.random.default_rng(2024)
    affines = [np.diag([0.8, 1.0, 2.5, 1.0]),
               np.array([[-1.2, 0, 0, 50], [0, 0, 0.7, -20], [0, 3.0, 0, 5], [0, 0, 0, 1]]),
               np.array([[0, 0.9, 0, 0], [1.7, 0, 0, 0], [0, 0, -0.6, 30], [0, 0, 0, 1]])]
    worst = dict(dice=0, hd95=0, assd=0, hd=0)
    ncmp = 0
    files = []
    cases = []
    for i, A in enumerate(affines * 2):
        shape = (14, 12, 10) if i < 3 else (40, 36, 30)
        nclasses = 3
        pred, label = shapes(rng, shape, nclasses), shapes(rng, shape, nclasses)
        if i == 1:
            pred[pred == 2] = 0  # one empty side
        if i == 2:
            pred[pred == 2] = 0
            label[label == 2] = 0  # both empty
        pp, lp = os.path.join(work, "pred%d.nii.gz" % i), os.path.join(work, "label%d.nii" % i)
        nifti_py.write(pp, pred, A, np.uint8)
        nifti_py.write(lp, label, A, np.int16)
        files += [pp, lp]
        cases.append((pred, label, np.sqrt((A[:3, :3].astype(np.float32).astype(np.float64) ** 2).sum(0)), i < 3))
    out = os.path.join(work, "eval.json")
    csv = os.path.join(work, "eval.csv")
    p = run(mednet, files + ["--classes", "3", "--json", out, "--csv", csv])
    print(p.stdout)
    got = json.load(open(out))
    assert len(got["cases"]) == len(cases)
    for (pred, label, sp, brute), g in zip(cases, got["cases"]):
        assert np.allclose(g["spacing_mm"], sp, rtol=1e-6), (g["spacing_mm"], sp)
        for gc in g["classes"]:
            ref = reference(pred, label, np.array(g["spacing_mm"]), gc["class"], brute)
            for k in worst:
                gk = gc[k if k == "dice" else k + "_mm"]
                rk = ref[k]
                if rk is None or gk is None:
                    assert rk is None and gk is None, (k, gk, rk)
                    continue
                worst[k] = max(worst[k], abs(gk - rk))
                ncmp += 1
    if mpi:
        out2 = os.path.join(work, "eval_np2.json")
        p2 = subprocess.run(mpi + ["-n", "2", mednet, "eval"] + files + ["--classes", "3", "--json", out2],
                            capture_output=True, text=True)
        if p2.returncode != 0 or open(out2).read() != open(out).read():
            sys.exit("FAIL: 2 ranks: status %d, JSON equal to 1 rank's: %s\n%s" % (
                p2.returncode, p2.returncode == 0 and open(out2).read() == open(out).read(), p2.stderr))
        print("2 ranks: the same JSON as 1 rank")
    rows = open(csv).read().strip().splitlines()
    assert rows[0].startswith("pred,label,class,dice") and len(rows) == 1 + 2 * len(cases), rows[:2]
    assert any(",inf," in r for r in rows), "one-empty case must show inf in the CSV"
    print("%d values compared with scipy (and brute force on the small cases): worst |diff| dice %.3g, hd95 %.3g mm, "
          "assd %.3g mm, hd %.3g mm" % (ncmp, worst["dice"], worst["hd95"], worst["assd"], worst["hd"]))
    bad = [k for k, v in worst.items() if v > 1e-9]
    if bad:
        sys.exit("FAIL: differences above 1e-9 in %s" % bad)

    # Error cases: each a non-zero exit with one clear message naming the files, and no output file.
    other = os.path.join(work, "other_grid.nii")
    nifti_py.write(other, cases[0][1], affines[1], np.int16)
    frac = os.path.join(work, "fraction.nii")
    nifti_py.write(frac, cases[0][1] * 0.5, affines[0], np.float32)
    checks = [([files[0], other], ["not on one grid", files[0], other]),
              ([files[0], frac], ["fraction.nii", "class index"]),
              ([files[0], os.path.join(work, "missing.nii")], ["missing.nii"]),
              ([files[0]], ["pairs"])]
    for args, needles in checks:
        j = os.path.join(work, "bad.json")
        if os.path.exists(j):
            os.remove(j)
        p = run(mednet, args + ["--json", j], expect_ok=False)
        msg = p.stderr
        if p.returncode == 0 or not all(n in msg for n in needles) or os.path.exists(j):
            sys.exit("FAIL: eval %s: status %d, expected %s in:\n%s" % (args, p.returncode, needles, msg))
        print("bad input %s -> status %d: %s" % ([os.path.basename(a) for a in args], p.returncode,
                                                 msg.strip().splitlines()[0][:150]))
    print("test_eval_xcheck: all checks passed")


if __name__ == "__main__":
    main()
