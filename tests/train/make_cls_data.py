#!/usr/bin/python3
"""make_cls_data.py OUTDIR N: a two-class classification data set from Debian's mricron-data, both classes made from
the Colin27 T1 with its skull (ch2.nii.gz): class 0 as it is (T1-like contrast), class 1 with the contrast inverted
inside the brain (ch2bet.nii.gz > 0: v -> 255 - v, a T2-like contrast; the skull and background kept), so every crop
of the brain shows its class.  Each class gets N subjects (s0_XX, s1_XX), each with the header kept, a random
monotone intensity curve (gamma 0.7..1.4, applied as a byte lookup table: both files are uint8) and a shift of 0..6
slices along z, so no two subjects have the same voxels.  Writes OUTDIR/img/<subject>.nii.gz, OUTDIR/lab/<subject>.nii.gz
(symbolic links to ch2bet.nii.gz, the brain mask that centres crops) and OUTDIR/labels.csv (`subject,label`).
Plain Python: no NIfTI library."""
import gzip
import os
import random
import struct
import sys

T = "/usr/share/mricron/templates"
out, n = sys.argv[1], int(sys.argv[2])
os.makedirs(out + "/img", exist_ok=True)
os.makedirs(out + "/lab", exist_ok=True)
rng = random.Random(7)
rows = ["subject,label"]
def read(name):
    raw = gzip.open(os.path.join(T, name)).read()
    if struct.unpack("<i", raw[0:4])[0] != 348 or struct.unpack("<h", raw[70:72])[0] != 2:
        sys.exit("make_cls_data: %s is not a little-endian uint8 NIfTI-1 file" % name)
    off = int(struct.unpack("<f", raw[108:112])[0])
    return struct.unpack("<8h", raw[40:56]), raw[:off], raw[off:]
dims, head, t1 = read("ch2.nii.gz")
mdims, _, mask = read("ch2bet.nii.gz")
if mdims[:4] != dims[:4]:
    sys.exit("make_cls_data: ch2 and ch2bet differ in shape")
inverted = bytes(255 - v if m else v for v, m in zip(t1, mask))
plane = dims[1] * dims[2]
for cls, vox in enumerate((t1, inverted)):
    for i in range(n):
        subj = "s%d_%02d" % (cls, i)
        g = rng.uniform(0.7, 1.4)
        lut = bytes(min(255, int(round(255.0 * (v / 255.0) ** g))) for v in range(256))
        dz = rng.randint(0, 6)
        v = vox.translate(lut)
        v = v[dz * plane:] + bytes(dz * plane)  # shift down by dz slices, zero-filled at the top
        with gzip.open("%s/img/%s.nii.gz" % (out, subj), "wb", compresslevel=1) as f:
            f.write(head + v)
        lab = "%s/lab/%s.nii.gz" % (out, subj)
        if os.path.lexists(lab):
            os.remove(lab)
        os.symlink(os.path.join(T, "ch2bet.nii.gz"), lab)
        rows.append("%s,%d" % (subj, cls))
with open(out + "/labels.csv", "w") as f:
    f.write("\n".join(rows) + "\n")
