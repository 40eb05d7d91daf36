#!/usr/bin/python3
"""model_ref.py: the test-side PyTorch model of mednet's MedicalNet 3-D ResNets, written from the topology in
include/mednet/model.h (not MedicalNet's code: its type-A shortcut detaches the identity part, which is a defect), plus a minimal
safetensors reader/writer (Debian ships no python3-safetensors).

Used by tests/unit/test_model_parity.c:
  model_ref.py --weights W.safetensors --inputs I.safetensors --out R.safetensors --depth 10 --shortcut B
               --head seg --classes 3 [--eval] [--full-size] [--steps 5 --lr 0.01] [--threads 1]
               [--dice-weight 0.5 --dice-first-class 1 --dice-smooth 1e-5]
reads mednet's exported weights (strict load_state_dict), the input x and labels, and writes: logits, loss (CE, plus
dice_weight times the soft Dice written out here from loss.h's formula, as mn_model_loss combines them), the
gradient of every parameter ("grad.<name>"), the BN buffers after the forward ("buf.<name>"), and the losses of
`steps` plain SGD steps ("sgd_losses").  With --double these are computed in float64, and torch's own float32
results are added under the prefix "f32." so that a test can tell float32 rounding (which training-mode batch norm
on tiny volumes amplifies) from a real difference.  Also importable (ResNet, load_safetensors, save_safetensors) by the
benchmark and the MedicalNet converter.
"""
import argparse
import json
import struct
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64, "I32": np.int32,
          "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


def load_safetensors(path):
    """name -> numpy array (copy), as safetensors.numpy.load_file."""
    with open(path, "rb") as f:
        buf = f.read()
    (hlen,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + hlen])
    base = 8 + hlen
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, en = e["data_offsets"]
        arr = np.frombuffer(buf[base + b:base + en], dtype=DTYPES[e["dtype"]]).reshape(e["shape"])
        out[name] = arr.copy()
    return out


def save_safetensors(path, tensors, metadata=None):
    """tensors: name -> numpy array or torch tensor; written in the given order."""
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, t in tensors.items():
        a = t.detach().cpu().numpy() if torch.is_tensor(t) else np.asarray(t)
        a = np.array(a, order="C", copy=True)  # (np.ascontiguousarray would turn a 0-d scalar into 1-d)
        raw = a.tobytes()
        header[name] = {"dtype": NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def conv3(cin, cout, stride=1, dilation=1):
    return nn.Conv3d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class DownsampleA(nn.Module):
    """Type-A shortcut: 1x1x1 average pool with the stride, zero channels padded on; gradient flows through."""

    def __init__(self, cout, stride):
        super().__init__()
        self.cout, self.stride = cout, stride

    def forward(self, x):
        out = F.avg_pool3d(x, kernel_size=1, stride=self.stride)
        pad = out.new_zeros(out.shape[0], self.cout - out.shape[1], *out.shape[2:])
        return torch.cat([out, pad], dim=1)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride=1, dilation=1, downsample=None):
        super().__init__()
        self.conv1 = conv3(cin, planes, stride, dilation)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = conv3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        res = x if self.downsample is None else self.downsample(x)
        return F.relu(out + res)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride=1, dilation=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = conv3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = x if self.downsample is None else self.downsample(x)
        return F.relu(out + res)


LAYERS = {10: (BasicBlock, [1, 1, 1, 1]), 18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]),
          50: (Bottleneck, [3, 4, 6, 3]), 101: (Bottleneck, [3, 4, 23, 3]), 152: (Bottleneck, [3, 8, 36, 3]),
          200: (Bottleneck, [3, 24, 36, 3])}


class ResNet(nn.Module):
    def __init__(self, depth, shortcut=None, head="seg", classes=2):
        super().__init__()
        block, layers = LAYERS[depth]
        shortcut = shortcut or ("A" if depth in (18, 34) else "B")
        self.head = head
        self.inplanes = 64
        self.conv1 = nn.Conv3d(1, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.maxpool = nn.MaxPool3d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], shortcut)
        self.layer2 = self._make_layer(block, 128, layers[1], shortcut, stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], shortcut, dilation=2)
        self.layer4 = self._make_layer(block, 512, layers[3], shortcut, dilation=4)
        c = 512 * block.expansion
        if head == "seg":
            self.conv_seg = nn.Sequential(
                nn.ConvTranspose3d(c, 32, 2, stride=2), nn.BatchNorm3d(32), nn.ReLU(inplace=True),
                nn.Conv3d(32, 32, 3, padding=1, bias=False), nn.BatchNorm3d(32), nn.ReLU(inplace=True),
                nn.Conv3d(32, classes, 1, bias=False))
        elif head == "branch":
            self.branch = nn.Conv3d(c, classes, 1, bias=False)
        elif head == "fc":
            self.fc = nn.Linear(c, classes)

    def _make_layer(self, block, planes, blocks, shortcut, stride=1, dilation=1):
        down = None
        cout = planes * block.expansion
        if stride != 1 or self.inplanes != cout:
            if shortcut == "A":
                down = DownsampleA(cout, stride)
            else:
                down = nn.Sequential(nn.Conv3d(self.inplanes, cout, 1, stride=stride, bias=False),
                                     nn.BatchNorm3d(cout))
        mods = [block(self.inplanes, planes, stride, dilation, down)]
        self.inplanes = cout
        for _ in range(1, blocks):
            mods.append(block(self.inplanes, planes, dilation=dilation))
        return nn.Sequential(*mods)

    def encoder(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x):
        f = self.encoder(x)
        if self.head == "seg":
            return self.conv_seg(f)
        if self.head == "branch":
            return F.interpolate(self.branch(f), size=x.shape[2:], mode="trilinear", align_corners=False)
        if self.head == "fc":
            return self.fc(f.mean(dim=(2, 3, 4)))
        return f


def soft_dice(logits, labels, first_class, smooth):
    """Soft Dice of one sample as include/mednet/loss.h defines it, written here from the formula: p = softmax over
    classes, per class c >= first_class dice_c = (2 sum p_c g_c + smooth) / (sum p_c + sum g_c + smooth), loss =
    1 - mean_c dice_c (no ignored voxels here).  logits (C, ...), labels (...)."""
    p = torch.softmax(logits, dim=0).reshape(logits.shape[0], -1)
    g = F.one_hot(labels.reshape(-1), logits.shape[0]).t().to(p.dtype)
    inter, psum, gsum = (p * g).sum(1), p.sum(1), g.sum(1)
    dice = (2.0 * inter + smooth) / (psum + gsum + smooth)
    return 1.0 - dice[first_class:].mean()


def seg_loss(logits, labels, full_size, x_shape, dice_weight=0.0, dice_first_class=1, dice_smooth=1e-5):
    """The model loss as mednet's mn_model_loss: per sample, CE (averaged over its voxels) plus dice_weight times its
    soft Dice, then the mean over samples.  Logits are up-sampled to the input size (full_size), or labels
    nearest-downsampled to the logits."""
    if logits.dim() == 2:
        return F.cross_entropy(logits, labels.reshape(-1))
    if full_size:
        logits = F.interpolate(logits, size=x_shape[2:], mode="trilinear", align_corners=False)
    elif tuple(labels.shape[1:]) != tuple(logits.shape[2:]):
        labels = F.interpolate(labels[:, None].float(), size=logits.shape[2:], mode="nearest")[:, 0].long()
    loss = F.cross_entropy(logits, labels)
    if dice_weight:
        dice = torch.stack([soft_dice(logits[j], labels[j], dice_first_class, dice_smooth)
                            for j in range(logits.shape[0])])
        loss = loss + dice_weight * dice.mean()
    return loss


def run(a, sd, inp, dtype):
    """Forward, loss, backward, and `steps` plain SGD steps in `dtype`; results as float32/float64 arrays."""
    model = ResNet(a.depth, a.shortcut, a.head, a.classes)
    model.load_state_dict(sd, strict=True)
    model.to(dtype)
    x = torch.from_numpy(inp["x"]).to(dtype)
    labels = torch.from_numpy(inp["labels"]).long()
    model.train(not a.eval)
    out = {}
    logits = model(x)
    loss = seg_loss(logits, labels, a.full_size, x.shape, a.dice_weight, a.dice_first_class, a.dice_smooth)
    model.zero_grad()
    loss.backward()
    out["logits"] = logits.detach().float().clone()
    out["loss"] = loss.detach().double().reshape(1)
    for n, p in model.named_parameters():
        out["grad." + n] = p.grad.detach().float().clone()
    for n, b in model.named_buffers():
        if not n.endswith("num_batches_tracked"):
            out["buf." + n] = b.detach().float().clone()
    # Plain SGD steps from the loaded weights (the first step's loss repeats the one above).
    if a.steps:
        model.load_state_dict(sd, strict=True)  # copies into the (possibly float64) tensors
        losses = []
        for _ in range(a.steps):
            model.zero_grad()
            l = seg_loss(model(x), labels, a.full_size, x.shape, a.dice_weight, a.dice_first_class,
                         a.dice_smooth)
            l.backward()
            losses.append(l.item())
            with torch.no_grad():
                for p in model.parameters():
                    p -= a.lr * p.grad
        out["sgd_losses"] = np.array(losses, dtype=np.float64)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--depth", type=int, default=10)
    ap.add_argument("--shortcut", default=None)
    ap.add_argument("--head", default="seg")
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--eval", action="store_true")
    ap.add_argument("--full-size", action="store_true")
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dice-weight", type=float, default=0.0, help="loss = CE + this * soft Dice (dice_weight)")
    ap.add_argument("--dice-first-class", type=int, default=1)
    ap.add_argument("--dice-smooth", type=float, default=1e-5)
    ap.add_argument("--double", action="store_true",
                    help="reference in float64; torch's own float32 results are added with the prefix f32.")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    sd = {k: torch.from_numpy(v) for k, v in load_safetensors(a.weights).items()}
    inp = load_safetensors(a.inputs)
    out = run(a, sd, inp, torch.float64 if a.double else torch.float32)
    if a.double:
        out.update({"f32." + k: v for k, v in run(a, sd, inp, torch.float32).items()})
    save_safetensors(a.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
