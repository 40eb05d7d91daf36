#!/usr/bin/env python3
"""make_seeds.py: writes the seed corpora of the fuzz harnesses into tests/fuzz/seeds/<harness>/ (committed; run
again after changing this script).  Standard library only.

  nifti        NIfTI-1 (.nii, both byte orders) and NIfTI-2 files of a few voxels in every voxel type mednet reads,
               gzipped copies, a 4-D file, one with scaling and an sform; the truncated and oversized cases are the
               fuzzer's to find.
  config       the repository's configs/*.ini and small texts with overrides (after a NUL byte, one per line).
  safetensors  small valid files: tensors of several dtypes, metadata, escapes in names, an empty file.
  corpus, ckpt structure-aware decision strings (fuzz_h5.h): the empty input (an intact file) and one input per
               kind of damage.
"""
import gzip
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(HERE, "seeds")


def put(harness, name, data):
    d = os.path.join(OUT, harness)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- NIfTI ----
DT = {"uint8": (2, "B", 1), "int16": (4, "h", 2), "int32": (8, "i", 4), "float32": (16, "f", 4),
      "float64": (64, "d", 8), "int8": (256, "b", 1), "uint16": (512, "H", 2), "uint32": (768, "I", 4)}


def nifti1(dims, dtype, endian="<", slope=0.0, inter=0.0, sform=False):
    code, fmt, size = DT[dtype]
    dim = [len(dims)] + list(dims) + [1] * (7 - len(dims))
    pixdim = [1.0, 1.0, 1.5, 2.0, 1.0, 1.0, 1.0, 1.0]
    h = struct.pack(endian + "i", 348) + b"\0" * 36
    h += struct.pack(endian + "8h", *dim)
    h += struct.pack(endian + "3f", 0, 0, 0)
    h += struct.pack(endian + "hhhh", 0, code, size * 8, 0)
    h += struct.pack(endian + "8f", *pixdim)
    h += struct.pack(endian + "f", 352.0)              # vox_offset
    h += struct.pack(endian + "ff", slope, inter)
    h += struct.pack(endian + "hbb", 0, 0, 0)
    h += struct.pack(endian + "ff", 0, 0) + struct.pack(endian + "ff", 0, 0)   # cal_max/min, slice_duration, toffset
    h += struct.pack(endian + "ii", 0, 0)                                        # glmax, glmin
    h += b"\0" * 80 + b"\0" * 24
    h += struct.pack(endian + "hh", 0, 1 if sform else 0)
    h += struct.pack(endian + "6f", 0, 0, 0, 0, 0, 0)
    srow = [[-1, 0, 0, 90], [0, 1, 0, -126], [0, 0, 2, -72]] if sform else [[0] * 4] * 3
    for row in srow:
        h += struct.pack(endian + "4f", *row)
    h += b"\0" * 16 + b"n+1\0"
    assert len(h) == 348, len(h)
    n = 1
    for x in dims:
        n *= x
    data = struct.pack(endian + fmt * n, *[(i * 7) % 100 for i in range(n)])
    return h + b"\0" * 4 + data


def nifti2(dims, dtype):
    code, fmt, size = DT[dtype]
    dim = [len(dims)] + list(dims) + [1] * (7 - len(dims))
    h = struct.pack("<i", 540) + b"n+2\0\r\n\032\n"
    h += struct.pack("<hh", code, size * 8)
    h += struct.pack("<8q", *dim)
    h += struct.pack("<3d", 0, 0, 0)
    h += struct.pack("<8d", 1, 1, 1, 1, 1, 1, 1, 1)
    h += struct.pack("<q", 544)
    h += struct.pack("<dd", 0, 0) + struct.pack("<dd", 0, 0) + struct.pack("<dd", 0, 0)
    h += struct.pack("<qq", 0, 0)                     # slice_start, slice_end
    h += b"\0" * 80 + b"\0" * 24
    h += struct.pack("<ii", 0, 0)
    h += struct.pack("<6d", 0, 0, 0, 0, 0, 0)
    h += struct.pack("<12d", 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0)
    h += struct.pack("<iii", 0, 0, 0)
    h += b"\0" * 16 + b"\0" * 15 + b"\0"
    assert len(h) == 540, len(h)
    n = 1
    for x in dims:
        n *= x
    return h + b"\0" * 4 + struct.pack("<" + fmt * n, *[i % 50 for i in range(n)])


def nifti_seeds():
    for t in DT:
        put("nifti", f"n1_{t}.nii", nifti1((2, 3, 2), t))
    put("nifti", "n1_be_int16.nii", nifti1((3, 2, 2), "int16", endian=">"))
    put("nifti", "n1_scaled_sform.nii", nifti1((2, 2, 2), "int16", slope=2.0, inter=-1.0, sform=True))
    put("nifti", "n1_4d.nii", nifti1((2, 2, 2, 2), "uint8"))
    put("nifti", "n1_uint8.nii.gz", gzip.compress(nifti1((3, 3, 3), "uint8"), mtime=0))
    put("nifti", "n1_float32.nii.gz", gzip.compress(nifti1((2, 3, 4), "float32"), mtime=0))
    put("nifti", "n2_float32.nii", nifti2((2, 2, 3), "float32"))
    put("nifti", "n2_int16.nii.gz", gzip.compress(nifti2((2, 2, 2), "int16"), mtime=0))


# ---- config ----
def config_seeds():
    cdir = os.path.join(ROOT, "configs")
    for name in sorted(os.listdir(cdir)):
        if name.endswith(".ini"):
            with open(os.path.join(cdir, name), "rb") as f:
                put("config", name, f.read())
    put("config", "overrides.ini", b"[corpus]\npath = c.h5\n[model]\ndepth = 18\n\0train.steps=5\nmodel.depth=10\n"
        b"optim.lr=0.1\nsampler.crop=32,32,32\n")
    put("config", "corpus_def.ini", b"[corpus]\nname = x\noutput = x.h5\n[ds]\nimage = a.nii\nlabel = b.nii\n"
        b"classes = bg, fg\nlabel_map = 0:bg, 1-3:fg\nmodality = CT\nwindow = -100, 200\n\0ds.spacing=1,1,2\n")
    put("config", "syntax.ini", b"[a\nkey\n=value\n[b]\nk = v ; comment\n")


# ---- safetensors ----
def safetensors(tensors, meta=None, pad=True):
    header, blob = {}, b""
    if meta is not None:
        header["__metadata__"] = meta
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    h = json.dumps(header).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + blob


def safetensors_seeds():
    f32 = struct.pack("<6f", 1, 2, 3, 4, 5, 6)
    put("safetensors", "one_f32.safetensors", safetensors([("w", "F32", [2, 3], f32)]))
    put("safetensors", "dtypes.safetensors", safetensors([
        ("a", "F64", [2], struct.pack("<2d", 1, 2)), ("b", "I64", [1], struct.pack("<q", 3)),
        ("c", "F16", [2], b"\0<\0@"), ("d", "BF16", [1], b"\x80?"), ("e", "U8", [3], b"abc"),
        ("f", "BOOL", [0], b""), ("g", "I32", [], struct.pack("<i", 5))], meta={"format": "pt"}))
    put("safetensors", "model_names.safetensors", safetensors([
        ("conv1.weight", "F32", [1, 1, 1, 1, 1], struct.pack("<f", 1)),
        ("module.bn1.running_mean", "F32", [1], struct.pack("<f", 0)),
        ("bn1.num_batches_tracked", "I64", [], struct.pack("<q", 0)),
        ("conv_seg.0.weight", "F32", [1], struct.pack("<f", 2))], meta={"mednet": "0.1.0"}))
    put("safetensors", "escapes.safetensors", safetensors([("n\u00e9\\u0041\"x", "U8", [1], b"z")], pad=False))
    put("safetensors", "empty_header.safetensors", struct.pack("<Q", 2) + b"{}")


# ---- structure-aware decision strings ----
def decision_seeds():
    put("corpus", "intact", b"")
    put("corpus", "two_datasets", b"\x01")
    # format_version missing; num_datasets with another value; datasets attribute with another count
    put("corpus", "attr_missing", b"\x00\x01")
    put("corpus", "attr_value", b"\x00\x00\x00\x00\x04\xff\xff\xff\xff\xff\xff\xff\x7f")
    put("corpus", "attr_count", b"\x00\x00\x00\x00\x00\x03\x05")
    put("corpus", "truncated", b"\x00" * 40 + b"\x01\x00\x10\x00\x00")
    put("ckpt", "intact", b"")
    put("ckpt", "step_array", b"\x03\x04")
    put("ckpt", "format_vlen", b"\x00\x05")
    put("ckpt", "config_text", b"\x00\x00\x00\x04[model]\ndepth = 18\n\x00\x00")
    put("ckpt", "array_dtype", b"\x00" * 7 + b"\x04\x01")
    put("ckpt", "latest_text", b"\x00" * 12 + b"\x01ckpt-99.h5\n\x00")


if __name__ == "__main__":
    nifti_seeds()
    config_seeds()
    safetensors_seeds()
    decision_seeds()
    print("seeds written to", OUT, file=sys.stderr)
