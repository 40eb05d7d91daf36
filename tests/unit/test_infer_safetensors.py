"""test_infer_safetensors.py MEDNET WORKDIR MPIEXEC...: mednet infer from an exported safetensors file.

A short training on synthetic blobs (prep + 12 steps of a resnet10), `mednet export` of its checkpoint, then:
  - infer from the checkpoint and from the exported file: the label maps and the probabilities are bitwise equal
    (the export's __metadata__ carries depth, shortcut, head kind, classes, dataset, crop and the preprocessing);
  - the same file with its __metadata__ removed and no options: exit status 1 and one message naming the file
    and the options that supply what is missing;
  - that file with --config (the run config) and --corpus CORPUS --head DATASET: bitwise equal again, on 2 ranks;
  - an encoder-only export (no head): refused, naming the file;
  - a head of fewer classes than the dataset named by --head (a 3-class corpus): refused, naming the tensor and both
    shapes, and no output written;
  - fine-tuning from an encoder export with one tensor removed: exit status 1 naming the tensor, no checkpoint."""
import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nifti_py  # noqa: E402

RNG = np.random.default_rng(7)


def run(cmd, ok=True):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if ok and p.returncode != 0:
        sys.exit("FAIL: %s\nstatus %d\n%s\n%s" % (" ".join(cmd), p.returncode, p.stdout[-3000:], p.stderr[-3000:]))
    return p


def volume(shape, A):
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(np.float64)
    p = idx @ A[:3, :3].T + A[:3, 3]
    f = np.zeros(shape)
    for _ in range(5):
        c, s = RNG.uniform(-25, 25, 3), RNG.uniform(9, 13)
        f += np.exp(-((p - c) ** 2).sum(-1) / (2 * s * s))
    lab = (f > 0.5).astype(np.uint8)
    return (100 + 80 * lab + RNG.normal(0, 4, shape)).astype(np.float32), lab


def outputs(d, stem):
    seg, _, _ = nifti_py.read(os.path.join(d, stem + "_seg.nii.gz"))
    prob, _, _ = nifti_py.read(os.path.join(d, stem + "_prob.nii.gz"))
    return seg, prob


def same(a, b, what):
    for x, y, name in zip(a, b, ("labels", "probabilities")):
        if x.shape != y.shape or x.dtype != y.dtype or x.tobytes() != y.tobytes():
            sys.exit("FAIL: %s: %s differ (max |diff| %g)" % (what, name, np.abs(x.astype(float) - y).max()))
    print("%s: labels and probabilities bitwise equal (%d voxels, %d classes)" % (what, a[0].size, a[1].shape[-1]
                                                                                  if a[1].ndim == 4 else 1))


def rewrite(src, dst, drop=("__metadata__",)):
    """Copy safetensors file src to dst without the entries named in drop (data repacked, offsets renumbered)."""
    raw = open(src, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    head, data, out = json.loads(raw[8:8 + n]), raw[8 + n:], b""
    kept = {}
    for name, t in head.items():
        if name in drop:
            continue
        if name != "__metadata__":
            begin, end = t["data_offsets"]
            t = dict(t, data_offsets=[len(out), len(out) + end - begin])
            out += data[begin:end]
        kept[name] = t
    text = json.dumps(kept).encode()
    text += b" " * (-len(text) % 8)
    open(dst, "wb").write(struct.pack("<Q", len(text)) + text + out)


def main():
    mednet, work, mpi = sys.argv[1], sys.argv[2], sys.argv[3:]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    A = np.diag([2.0, 2.0, 2.0, 1.0])
    A[:3, 3] = -40
    for i in range(2):
        img, lab = volume((40, 40, 40), A)
        nifti_py.write(os.path.join(work, "train%d.nii.gz" % i), img, A)
        nifti_py.write(os.path.join(work, "train%d_seg.nii.gz" % i), lab, A, np.uint8)
    corpus = os.path.join(work, "corpus.h5")
    open(os.path.join(work, "corpus.ini"), "w").write(
        "[corpus]\nname = synth_st\noutput = %s\n\n[blobs]\nimage = %s/train?.nii.gz\nlabel = %s/train?_seg.nii.gz\n"
        "modality = MR\nclasses = background, blob\nspacing = 2\n" % (corpus, work, work))
    run([mednet, "prep", os.path.join(work, "corpus.ini"), "--force"])
    steps = 12
    cfg = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../configs/pretrain_mricron.ini")
    run([mednet, "pretrain", cfg, "corpus.path=" + corpus, "train.out_dir=%s/run" % work, "train.steps=%d" % steps,
         "train.checkpoint_every=0", "train.consistency_every=0", "train.eval_batches=0", "train.threads=1",
         "model.depth=10", "sampler.crop=20"])
    ckpt = "%s/run/ckpt-%d.h5" % (work, steps)
    st = os.path.join(work, "model.safetensors")
    run([mednet, "export", ckpt, st])
    test = os.path.join(work, "test.nii.gz")
    B = np.diag([-1.7, 2.1, 1.4, 1.0])
    B[:3, 3] = [30, -35, -28]
    img, _ = volume((36, 34, 42), B)
    nifti_py.write(test, img, B, qform=True)

    run([mednet, "infer", ckpt, test, "-o", work + "/from_ckpt", "--probs"])
    ref = outputs(work + "/from_ckpt", "test")
    p = run([mednet, "infer", st, test, "-o", work + "/from_st", "--probs"])
    print(p.stdout.strip().splitlines()[0])
    same(ref, outputs(work + "/from_st", "test"), "checkpoint vs its exported safetensors")

    bare = os.path.join(work, "bare.safetensors")
    rewrite(st, bare)
    p = run([mednet, "infer", bare, test, "-o", work + "/bare"], ok=False)
    err = p.stderr + p.stdout
    if p.returncode != 1 or "bare.safetensors" not in err or "--config" not in err or "--corpus" not in err:
        sys.exit("FAIL: a safetensors without metadata: status %d, message:\n%s" % (p.returncode, err))
    if os.path.exists(work + "/bare/test_seg.nii.gz"):
        sys.exit("FAIL: an output was written for the refused file")
    print("no metadata, no options: status 1, message: %s" % [l for l in err.splitlines() if "bare" in l][0].strip())
    run(mpi + ["-n", "2", mednet, "infer", bare, test, "-o", work + "/bare_opts", "--probs", "--config", cfg,
               "--corpus", corpus, "--head", "blobs", "--window", "20"])
    same(ref, outputs(work + "/bare_opts", "test"), "no metadata + --config --corpus --head --window, 2 ranks")

    enc = os.path.join(work, "enc.safetensors")
    run([mednet, "export", ckpt, enc, "--encoder"])
    p = run([mednet, "infer", enc, test, "-o", work + "/enc"], ok=False)
    err = p.stderr + p.stdout
    if p.returncode != 1 or "enc.safetensors" not in err:
        sys.exit("FAIL: an encoder-only file: status %d, message:\n%s" % (p.returncode, err))
    print("encoder-only file: status 1, message: %s" % [l for l in err.splitlines() if "enc.safet" in l][0].strip())

    # A head of 2 classes applied to a dataset of 3: the same volumes prepared as a 3-class dataset (a fine-tuning
    # target, for the case after this one).
    corpus3 = os.path.join(work, "corpus3.h5")
    open(os.path.join(work, "corpus3.ini"), "w").write(
        "[corpus]\nname = synth_st3\noutput = %s\n\n[blobs3]\nimage = %s/train?.nii.gz\nlabel = %s/train?_seg.nii.gz\n"
        "modality = MR\nrole = target\nclasses = background, blob, rim\nspacing = 2\n" % (corpus3, work, work))
    run([mednet, "prep", os.path.join(work, "corpus3.ini"), "--force"])
    p = run([mednet, "infer", bare, test, "-o", work + "/more", "--config", cfg, "--corpus", corpus3, "--head",
             "blobs3", "--window", "20"], ok=False)
    err = p.stderr + p.stdout
    if p.returncode != 1 or not all(n in err for n in ("bare.safetensors", "conv_seg.6.weight", "file 2x", "model 3x")):
        sys.exit("FAIL: a 2-class head for a 3-class dataset: status %d, message:\n%s" % (p.returncode, err))
    if os.path.exists(work + "/more/test_seg.nii.gz"):
        sys.exit("FAIL: an output was written for a head of too few classes")
    print("2-class head, 3-class dataset: status 1, message: %s" %
          [l for l in err.splitlines() if "mis-shaped" in l][0].split(": ", 1)[1].strip())

    # Fine-tuning from an encoder export that lacks one tensor.
    holed = os.path.join(work, "enc_missing.safetensors")
    rewrite(enc, holed, drop=("layer3.0.bn2.running_var",))
    p = run([mednet, "finetune", cfg, "corpus.path=" + corpus3, "train.out_dir=%s/ft" % work, "train.steps=2",
             "train.eval_batches=0", "train.threads=1", "model.depth=10", "sampler.crop=20",
             "train.init_encoder=" + holed], ok=False)
    err = p.stderr + p.stdout
    if p.returncode != 1 or "enc_missing.safetensors" not in err or "layer3.0.bn2.running_var" not in err:
        sys.exit("FAIL: fine-tuning from an encoder missing a tensor: status %d, message:\n%s" % (p.returncode, err))
    if [f for f in os.listdir(work + "/ft") if f.startswith("ckpt-")] if os.path.isdir(work + "/ft") else []:
        sys.exit("FAIL: fine-tuning from an incomplete encoder left a checkpoint")
    print("fine-tuning from an encoder missing a tensor: status 1, names layer3.0.bn2.running_var")
    print("PASS")
    if not os.environ.get("MN_KEEP_TEST_OUTPUT"):  # passed: its checkpoints are not needed
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
