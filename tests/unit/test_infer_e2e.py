"""test_infer_e2e.py MEDNET WORKDIR MPIEXEC...: mednet infer end to end on synthetic volumes.

A structure defined in world coordinates (the union of a few Gaussian bumps above a threshold; bright in the image,
class 1 in the label) is sampled on training grids, prepared (`mednet prep`), learnt by a small model (`mednet
pretrain`), then predicted on a test volume LARGER than the training crop whose grid is oblique, flipped and
anisotropic.  Checks:
  - the output has exactly the input's grid: dims, pixdim, sform and qform (codes and values) byte for byte;
  - Dice >= 0.9 against the known label (`mednet eval`), with and without flip TTA;
  - the probability maps sum to 1, and their argmax is the label map; on a volume that is its own canonical grid,
    with one covering window, they equal PyTorch's softmax of the checkpoint's model (infer_torch_check.py);
  - 2 ranks give the same outputs as 1 rank, byte for byte; a volume smaller than the crop is padded and predicted;
  - bad input (NaN voxels, a missing file, a checkpoint whose arrays are not its config's depth, an existing output
    without --force, not a checkpoint, a checkpoint without a preprocessing record and no corpus): a non-zero exit
    status, one message naming the file and cause, and no output (nor temporary) file left for the failed volume.
Prints the Dice, the timings and every message checked."""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nifti_py  # noqa: E402

RNG = np.random.default_rng(5)


def structure(centres, p):
    """Field at world points p (..., 3): sum of Gaussian bumps; the structure is field > 0.5."""
    f = np.zeros(p.shape[:-1])
    for c, s in centres:
        f += np.exp(-((p - c) ** 2).sum(-1) / (2 * s * s))
    return f


def sample(shape, A, centres, noise=4.0):
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(np.float64)
    p = idx @ A[:3, :3].T + A[:3, 3]
    label = (structure(centres, p) > 0.5).astype(np.uint8)
    image = 100 + 80 * label + RNG.normal(0, noise, shape)
    return image.astype(np.float32), label


def bumps(n, lo, hi):
    return [(RNG.uniform(lo, hi, 3), RNG.uniform(9, 14)) for _ in range(n)]


def run(cmd, ok=True, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if ok and p.returncode != 0:
        sys.exit("FAIL: %s\nstatus %d\n%s\n%s" % (" ".join(cmd), p.returncode, p.stdout[-3000:], p.stderr[-3000:]))
    return p


def dice_of(mednet, pred, label):
    j = pred + ".eval.json"
    run([mednet, "eval", pred, label, "--classes", "2", "--json", j])
    return json.load(open(j))["cases"][0]["classes"][0]["dice"]


def leftovers(d):
    return [f for f in os.listdir(d) if f.startswith(".tmp")]


def main():
    mednet, work, mpi = sys.argv[1], sys.argv[2], sys.argv[3:]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    t_start = time.time()
    # ---- training data: 3 volumes of 40^3 at 2 mm, RAS, structures of 9-14 mm bumps
    A_train = np.diag([2.0, 2.0, 2.0, 1.0])
    A_train[:3, 3] = -40
    for i in range(3):
        img, lab = sample((40, 40, 40), A_train, bumps(6, -30, 30))
        nifti_py.write(os.path.join(work, "train%d.nii.gz" % i), img, A_train)
        nifti_py.write(os.path.join(work, "train%d_seg.nii.gz" % i), lab, A_train, np.uint8)
    open(os.path.join(work, "corpus.ini"), "w").write(
        "[corpus]\nname = synth_infer\noutput = %s/corpus.h5\n\n[blobs]\nimage = %s/train?.nii.gz\n"
        "label = %s/train?_seg.nii.gz\nmodality = MR\nclasses = background, blob\nspacing = 2\n" % (work, work, work))
    run([mednet, "prep", os.path.join(work, "corpus.ini"), "--force"])
    steps = 240
    cfg = ["corpus.path=%s/corpus.h5" % work, "train.out_dir=%s/run" % work, "train.steps=%d" % steps,
           "train.batch=2", "train.checkpoint_every=0", "train.log_every=40", "train.consistency_every=0",
           "train.threads=1", "model.depth=10", "model.loss_full_size=true", "model.dice_weight=1",
           "sampler.crop=24", "sampler.fg_share=0.5", "sampler.jitter_scale=0", "sampler.jitter_shift=0",
           "optim.kind=adam", "optim.lr=0.002", "optim.schedule=constant", "optim.weight_decay=0"]
    t0 = time.time()
    p = run([mednet, "pretrain", os.path.join(os.path.dirname(__file__), "../../configs/pretrain_mricron.ini")] + cfg)
    t_train = time.time() - t0
    print("trained %d steps in %.1f s; last log lines:\n%s" % (steps, t_train, "\n".join(p.stdout.splitlines()[-4:])))
    ckpt = "%s/run/ckpt-%d.h5" % (work, steps)

    # ---- the test volume: oblique (20 degrees about z, 10 about x), x flipped, anisotropic, larger than the crop
    a, b = np.radians(20), np.radians(10)
    Rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    Rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    A_test = np.eye(4)
    A_test[:3, :3] = Rz @ Rx @ np.diag([-1.6, 2.2, 1.3])
    shape = (48, 36, 60)
    A_test[:3, 3] = -(A_test[:3, :3] @ (np.array(shape) / 2.0))
    A_test = A_test.astype(np.float32).astype(np.float64)
    img, lab = sample(shape, A_test, bumps(8, -30, 30))
    test_in, test_lab = os.path.join(work, "test_oblique.nii.gz"), os.path.join(work, "test_oblique_label.nii.gz")
    nifti_py.write(test_in, img, A_test, qform=True)
    nifti_py.write(test_lab, lab, A_test, np.uint8, qform=True)
    small_in = os.path.join(work, "small.nii")  # 10x12x8 voxels of 2 mm: smaller than the 24^3 crop
    simg, _ = sample((10, 12, 8), A_train, bumps(2, -10, 10))
    nifti_py.write(small_in, simg, A_train)
    third = os.path.join(work, "third.nii.gz")
    timg, _ = sample((30, 44, 34), A_train, bumps(5, -30, 30))
    nifti_py.write(third, timg, A_train)

    out1 = os.path.join(work, "out1")
    t0 = time.time()
    p = run([mednet, "infer", ckpt, test_in, small_in, third, "-o", out1, "--probs", "--overlap", "0.5"])
    t_infer = time.time() - t0
    print(p.stdout.strip())
    seg = os.path.join(out1, "test_oblique_seg.nii.gz")
    s_arr, s_A, s_h = nifti_py.read(seg)
    i_arr, i_A, i_h = nifti_py.read(test_in)
    same = (s_arr.shape == i_arr.shape and np.array_equal(s_A, i_A) and s_h["sform_code"] == i_h["sform_code"]
            and s_h["qform_code"] == i_h["qform_code"] and s_h["quatern"] == i_h["quatern"]
            and s_h["pixdim"][:4] == i_h["pixdim"][:4] and s_h["datatype"] == 2 and s_h["intent_code"] == 1002)
    if not same:
        sys.exit("FAIL: output grid differs from the input's: %s %s vs %s %s" % (s_arr.shape, s_h, i_arr.shape, i_h))
    print("output grid = input grid: dims %s, sform/qform codes %d/%d, quaternion and pixdim identical, uint8 labels"
          % (s_arr.shape, s_h["sform_code"], s_h["qform_code"]))
    d = dice_of(mednet, seg, test_lab)
    print("Dice on the oblique, flipped, anisotropic %s test volume: %.4f" % ("x".join(map(str, shape)), d))
    if d < 0.9:
        sys.exit("FAIL: Dice %.4f < 0.9" % d)
    prob, _, ph = nifti_py.read(os.path.join(out1, "test_oblique_prob.nii.gz"))
    if prob.shape != shape + (2,) or np.abs(prob.sum(-1) - 1).max() > 1e-5 or \
            not np.array_equal(np.argmax(prob, -1), s_arr):
        sys.exit("FAIL: probabilities: shape %s, sum error %g, argmax == labels %s" % (
            prob.shape, np.abs(prob.sum(-1) - 1).max(), np.array_equal(np.argmax(prob, -1), s_arr)))
    print("probabilities: 4-D %s float32, sum to 1 within %.2g, argmax = the label map" %
          (prob.shape, np.abs(prob.sum(-1) - 1).max()))
    sm, _, _ = nifti_py.read(os.path.join(out1, "small_seg.nii"[:-4] + ".nii.gz"))
    print("volume smaller than the crop (10x12x8 < 24^3): padded and predicted, %d voxels of class 1" % int(sm.sum()))

    # ---- the probabilities against PyTorch on the checkpoint's weights
    p = run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "infer_torch_check.py"),
             mednet, ckpt, "blobs", work])
    print(p.stdout.strip())

    # ---- TTA and 2 ranks
    out_tta = os.path.join(work, "out_tta")
    run([mednet, "infer", ckpt, test_in, "-o", out_tta, "--tta", "--blend", "linear", "--batch", "2"])
    d_tta = dice_of(mednet, os.path.join(out_tta, "test_oblique_seg.nii.gz"), test_lab)
    print("Dice with flip TTA and linear blending: %.4f" % d_tta)
    if d_tta < 0.9:
        sys.exit("FAIL: TTA Dice %.4f < 0.9" % d_tta)
    out2 = os.path.join(work, "out2")
    t0 = time.time()
    p = run(mpi + ["-n", "2", mednet, "infer", ckpt, test_in, small_in, third, "-o", out2, "--probs"])
    t_infer2 = time.time() - t0
    for f in sorted(os.listdir(out1)):
        if f.endswith(".json"):
            continue
        if open(os.path.join(out1, f), "rb").read() != open(os.path.join(out2, f), "rb").read():
            sys.exit("FAIL: %s differs between 1 and 2 ranks" % f)
    print("2 ranks (3 volumes dealt round-robin): outputs identical to 1 rank, byte for byte")

    # ---- bad input
    nan_in = os.path.join(work, "with_nan.nii.gz")
    img_nan = img.copy()
    img_nan[3, 4, 5] = np.nan
    nifti_py.write(nan_in, img_nan, A_test)
    bad_ckpt = os.path.join(work, "depth18.h5")
    shutil.copy(ckpt, bad_ckpt)
    old_ckpt = os.path.join(work, "no_record.h5")
    shutil.copy(ckpt, old_ckpt)
    import h5py
    with h5py.File(bad_ckpt, "r+") as f:
        text = f.attrs["config"]
        text = text.decode() if isinstance(text, bytes) else text
        del f.attrs["config"]
        f.attrs.create("config", np.bytes_(text.replace("depth = 10", "depth = 18")))
    with h5py.File(old_ckpt, "r+") as f:
        del f.attrs["preprocessing"]
        f.attrs["corpus_path"] = np.bytes_(os.path.join(work, "moved_corpus.h5"))
    outb = os.path.join(work, "outb")
    cases = [
        ("NaN voxels (2 ranks)", mpi + ["-n", "2", mednet, "infer", ckpt, test_in, nan_in, "-o", outb, "--force"],
         ["with_nan.nii.gz", "NaN"], "with_nan_seg.nii.gz"),
        ("missing input", [mednet, "infer", ckpt, test_in, os.path.join(work, "nope.nii.gz"), "-o", outb, "--force"],
         ["nope.nii.gz"], "nope_seg.nii.gz"),
        ("checkpoint of another depth", [mednet, "infer", bad_ckpt, test_in, "-o", outb, "--force"],
         ["depth18.h5", "resnet18"], "test_oblique_seg.nii.gz"),
        ("existing output without --force", [mednet, "infer", ckpt, test_in, "-o", out1],
         ["exists", "--force"], None),
        ("not a checkpoint", [mednet, "infer", test_in, small_in, "-o", outb, "--force"],
         ["test_oblique.nii.gz"], "small_seg.nii.gz"),
        ("no preprocessing record, corpus gone", [mednet, "infer", old_ckpt, test_in, "-o", outb, "--force"],
         ["no_record.h5", "--corpus"], "test_oblique_seg.nii.gz"),
        ("overlap out of range", [mednet, "infer", ckpt, test_in, "-o", outb, "--overlap", "1.5"],
         ["--overlap", "1.5"], "test_oblique_seg.nii.gz"),
        ("unknown head", [mednet, "infer", ckpt, test_in, "-o", outb, "--head", "lungs", "--force"],
         ["lungs", "blobs"], "test_oblique_seg.nii.gz"),
    ]
    for name, cmd, needles, must_not in cases:
        if os.path.isdir(outb):
            shutil.rmtree(outb)
        p = run(cmd, ok=False)
        msg = p.stderr + p.stdout
        if p.returncode == 0 or not all(n in msg for n in needles):
            sys.exit("FAIL: %s: status %d, expected %s in:\n%s" % (name, p.returncode, needles, msg[-3000:]))
        if must_not and os.path.exists(os.path.join(outb, must_not)):
            sys.exit("FAIL: %s left %s behind" % (name, must_not))
        if os.path.isdir(outb) and leftovers(outb):
            sys.exit("FAIL: %s left temporary files %s" % (name, leftovers(outb)))
        line = [ln for ln in msg.splitlines() if any(n in ln for n in needles)][0]
        print("bad input: %-38s -> status %d: %s" % (name, p.returncode, line.strip()[:160]))
    # The old checkpoint with its corpus given: inference works and gives the same labels.
    outc = os.path.join(work, "outc")
    run([mednet, "infer", old_ckpt, test_in, "-o", outc, "--corpus", os.path.join(work, "corpus.h5"), "--probs"])
    if open(os.path.join(outc, "test_oblique_seg.nii.gz"), "rb").read() != open(seg, "rb").read():
        sys.exit("FAIL: a checkpoint without a preprocessing record, read with --corpus, gives other labels")
    print("checkpoint without a preprocessing record + --corpus: same labels as with the record")
    print("timings: training %.1f s, inference of 3 volumes %.1f s (1 rank), %.1f s (2 ranks), whole test %.1f s"
          % (t_train, t_infer, t_infer2, time.time() - t_start))
    print("test_infer_e2e: all checks passed")
    if not os.environ.get("MN_KEEP_TEST_OUTPUT"):  # passed: its checkpoints are not needed
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
