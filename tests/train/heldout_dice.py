#!/usr/bin/python3
"""heldout_dice.py CKPT CORPUS HEAD=MIN...: foreground Dice of a pre-training checkpoint on a held-out corpus.
   heldout_dice.py --definition MRICRON.ini OUT.ini: write the held-out corpus definition (below) from the mricron one.

The e2e test of `mednet pretrain` (tests/train/run_pretrain_test.sh) trains on the mricron corpus, whose Colin27
datasets all use the image ch2.nii.gz, and evaluates here on a corpus built by `mednet prep` from ch2better.nii.gz,
another MRI average of the same subject (0.5 mm, different contrast and noise) that training never saw, with the
same atlases and label maps.  The network is rebuilt independently of mednet (tests/ref/model_ref.py, PyTorch):
the checkpoint's flat arrays are cut in PyTorch state-dict order (encoder/params and heads/<d>/params: parameters;
encoder/bn and heads/<d>/bn: running mean and variance of each batch norm), their lengths must match exactly, and
every volume is evaluated in crops of the training crop size on a fixed grid that covers it (predict_tiled; batch
norm in eval mode, logits up-sampled to the crop with trilinear interpolation, argmax).  (Whole volumes are not
used: after a short run the network has only seen crops of that size, and a larger input changes what its
zero-padded borders tell it.)  Per head: the mean over the foreground classes present in the labels
of 2 |P & G| / (|P| + |G|).  Exit 1 if a named head is below its MIN or missing.
"""
import configparser
import os
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "ref"))
from model_ref import ResNet  # noqa: E402


def load_part(model, params, bn, head):
    """Copy one part (the encoder, or the conv_seg head) from its flat arrays into the model."""
    ps = [(n, p) for n, p in model.named_parameters() if n.startswith("conv_seg.") == head]
    bs = [(n, b) for n, b in model.named_buffers()
          if n.startswith("conv_seg.") == head and not n.endswith("num_batches_tracked")]
    for what, items, flat in (("params", ps, params), ("bn", bs, bn)):
        need = sum(t.numel() for _, t in items)
        if need != flat.size:
            raise SystemExit(f"{'head' if head else 'encoder'} {what}: checkpoint holds {flat.size} floats, the "
                             f"model needs {need}")
        off = 0
        with torch.no_grad():
            for _, t in items:
                t.copy_(torch.from_numpy(flat[off:off + t.numel()].reshape(t.shape)))
                off += t.numel()


def starts(n, c):
    """Tile corners along an axis of n voxels: every c voxels, the last one flush with the end."""
    return sorted(set(list(range(0, max(n - c, 0) + 1, c)) + [max(n - c, 0)]))


def predict_tiled(model, img, crop):
    """argmax labels of a volume, predicted crop by crop: tiles of the training crop size on a fixed grid (the last
    tile of each axis flush with the volume's end, zero padding where the volume is smaller), each tile's logits
    up-sampled to it with trilinear interpolation; a voxel takes the prediction of the last tile covering it."""
    pad = [(0, max(c - s, 0)) for s, c in zip(img.shape, crop)]
    vol = np.pad(img, pad)
    pred = np.zeros(vol.shape, np.int64)
    for z in starts(vol.shape[0], crop[0]):
        for y in starts(vol.shape[1], crop[1]):
            for x in starts(vol.shape[2], crop[2]):
                t = torch.from_numpy(vol[z:z + crop[0], y:y + crop[1], x:x + crop[2]].copy())[None, None]
                with torch.no_grad():
                    lg = F.interpolate(model(t), size=tuple(crop), mode="trilinear", align_corners=False)
                pred[z:z + crop[0], y:y + crop[1], x:x + crop[2]] = lg[0].argmax(0).numpy()
    return pred[:img.shape[0], :img.shape[1], :img.shape[2]]


def write_definition(src, dst):
    """The mricron definition with every dataset of ch2.nii.gz moved to ch2better.nii.gz (labels through world
    coordinates: the atlases are on ch2's 1 mm grid), the others dropped."""
    cp = configparser.ConfigParser(comment_prefixes=(";", "#"), inline_comment_prefixes=(";",))
    cp.optionxform = str
    cp.read(src)
    cp["corpus"]["name"] = "mricron_heldout"
    for s in cp.sections():
        if s != "corpus" and cp[s]["image"] != "ch2.nii.gz":
            cp.remove_section(s)
        elif s != "corpus":
            cp[s]["image"] = "ch2better.nii.gz"
            cp[s]["label_grid"] = "world"
    with open(dst, "w") as f:
        cp.write(f)
    return 0


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--definition":
        return write_definition(sys.argv[2], sys.argv[3])
    ck, co = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
    mins = dict(a.split("=") for a in sys.argv[3:])
    torch.set_num_threads(1)
    cfg = configparser.ConfigParser(comment_prefixes=(";", "#"), inline_comment_prefixes=(";",))
    cfg.read_string(ck.attrs["config"].decode() if isinstance(ck.attrs["config"], bytes) else ck.attrs["config"])
    depth = int(cfg["model"]["depth"])
    sc = cfg["model"].get("shortcut", "default")
    crop = [int(v) for v in cfg["sampler"].get("crop", "32").replace(",", " ").split()]
    crop = crop * 3 if len(crop) == 1 else crop
    ok = True
    for ds in sorted(mins):
        if ds not in ck["heads"] or ds not in co:
            print(f"FAIL: head {ds} is not in both the checkpoint and the held-out corpus")
            ok = False
            continue
        classes = int(co[ds].attrs["num_classes"])
        model = ResNet(depth, None if sc == "default" else sc, "seg", classes)
        load_part(model, ck["encoder/params"][()], ck["encoder/bn"][()], False)
        load_part(model, ck[f"heads/{ds}/params"][()], ck[f"heads/{ds}/bn"][()], True)
        model.eval()
        dices, trivial = [], []
        for v in sorted(k for k in co[ds] if k.startswith("vol_")):
            img, lab = co[ds][v]["image"][()], co[ds][v]["label"][()].astype(np.int64)
            pred = predict_tiled(model, img, crop)
            per = [2.0 * np.sum((pred == c) & (lab == c)) / (np.sum(pred == c) + np.sum(lab == c))
                   for c in range(1, classes) if np.any(lab == c)]
            dices.append(float(np.mean(per)))
            trivial.append(2.0 * np.sum(lab == 1) / (lab.size + np.sum(lab == 1)))
        d, t = float(np.mean(dices)), float(np.mean(trivial))
        good = d >= float(mins[ds])
        ok &= good
        print(f"held-out {ds}: mean foreground Dice {d:.4f} over {len(dices)} volume(s) (predicting class 1 "
              f"everywhere: {t:.4f}), threshold {mins[ds]} {'ok' if good else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
