#!/usr/bin/python3
"""convert_medicalnet.py: convert one of MedicalNet's released PyTorch checkpoints (resnet_10.pth, resnet_18.pth,
resnet_50.pth, ...; a dict with 'state_dict' whose keys carry DataParallel's 'module.' prefix) to safetensors with
the plain state-dict names that mednet and MedicalNet's / MONAI's ResNet classes use.

  /usr/bin/python3 tests/ref/convert_medicalnet.py resnet_50.pth resnet_50.safetensors [--keep-prefix]

Tensors are written as contiguous float32 (num_batches_tracked stays int64).  The depth and shortcut type are
inferred from the keys and stored in the metadata (with a conv_seg head also its kind and class count, which
`mednet infer` reads); the script then loads the converted file into the test-side PyTorch model
(tests/ref/model_ref.py) and reports missing/unexpected keys, so a file that mednet will reject is caught here.  Import into mednet with `mednet model --depth 50 --import resnet_50.safetensors` (the pre-trained
files hold only the encoder: add --strict only for files with a head).  Also `--selftest DIR`: builds a fake
MedicalNet checkpoint from a seeded model_ref ResNet-10 (with the 'module.' prefix, every float tensor random) and
converts it, for ctest, which imports the result into mednet, exports it again and compares every value with the
.pth (tests/ref/st_roundtrip.py).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_ref import LAYERS, ResNet, load_safetensors, save_safetensors  # noqa: E402


def infer_depth(keys):
    """Depth from the number of blocks per stage and the block type (conv3 present = bottleneck)."""
    counts = []
    for s in range(1, 5):
        idx = {int(k.split(".")[1]) for k in keys if k.startswith("layer%d." % s)}
        counts.append(len(idx))
    bottleneck = any(".conv3." in k for k in keys)
    for depth, (block, layers) in LAYERS.items():
        if layers == counts and (block.expansion == 4) == bottleneck:
            return depth
    raise SystemExit("cannot infer the depth: blocks per stage %s, bottleneck %s" % (counts, bottleneck))


def convert(src, dst, keep_prefix=False):
    ckpt = torch.load(src, map_location="cpu")
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    out = {}
    for k, v in sd.items():
        name = k if keep_prefix or not k.startswith("module.") else k[len("module."):]
        if not torch.is_tensor(v):
            continue
        v = v.detach().contiguous()
        out[name] = v if v.dtype == torch.int64 else v.float()
    plain = [k[len("module."):] if k.startswith("module.") else k for k in out]
    depth = infer_depth(plain)
    shortcut = "B" if any(".downsample.0.weight" in k for k in plain) else "A"
    head = "seg" if any(k.startswith("conv_seg.") for k in plain) else None
    classes = out[[k for k in out if k.endswith("conv_seg.6.weight")][0]].shape[0] if head else 2
    meta = {"format": "pt", "source": os.path.basename(src), "depth": str(depth), "shortcut_type": shortcut}
    if head:  # what `mednet infer` reads; the dataset and preprocessing come from its --corpus and --head
        meta.update(head="conv_seg", classes=str(classes))
    save_safetensors(dst, out, meta)
    # Verify against the test-side model (strict for the encoder, the head is optional).
    model = ResNet(depth, shortcut, head or "none", classes)
    back = {k[len("module."):] if k.startswith("module.") else k: torch.from_numpy(v)
            for k, v in load_safetensors(dst).items()}
    res = model.load_state_dict(back, strict=False)
    missing = [k for k in res.missing_keys if not k.endswith("num_batches_tracked")]
    print("%s -> %s: %d tensors, resnet%d shortcut %s%s; missing %d, unexpected %d"
          % (src, dst, len(out), depth, shortcut, " + conv_seg(%d classes)" % classes if head else "",
             len(missing), len(res.unexpected_keys)))
    for k in missing + list(res.unexpected_keys):
        print("  ", k)
    return 0 if not missing and not res.unexpected_keys else 1


def selftest(d):
    torch.manual_seed(0)
    m = ResNet(10, "B", "seg", 2)
    # Every float tensor random (BN weights, biases and statistics included, whose defaults 1 and 0 an import that
    # loaded nothing would also have), so that the value comparison after the import means something.
    g = torch.Generator().manual_seed(1)
    sd = {}
    for k, v in m.state_dict().items():
        if v.is_floating_point():
            v = torch.randn(v.shape, generator=g)
            v = v.abs() + 0.5 if k.endswith("running_var") else v
        sd["module." + k] = v
    src = os.path.join(d, "resnet_10.pth")
    torch.save({"state_dict": sd, "epoch": 1}, src)
    return convert(src, os.path.join(d, "resnet_10.safetensors"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src", nargs="?")
    ap.add_argument("dst", nargs="?")
    ap.add_argument("--keep-prefix", action="store_true", help="keep DataParallel's 'module.' prefix")
    ap.add_argument("--selftest", metavar="DIR")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.selftest:
        return selftest(a.selftest)
    if not a.src or not a.dst:
        ap.error("need SRC.pth and DST.safetensors")
    return convert(a.src, a.dst, a.keep_prefix)


if __name__ == "__main__":
    sys.exit(main())
