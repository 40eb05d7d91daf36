#!/usr/bin/python3
"""shift_affine.py SRC.nii[.gz] DST.nii.gz DX DY DZ: copy a NIfTI-1 file with its sform (and qform offsets) moved by
(DX, DY, DZ) mm, the voxels untouched: a label map that no longer lies on its image's anatomy (the broken dataset of
the dataset-filtering test).  Plain struct on the 348-byte header; no NIfTI library needed."""
import gzip
import struct
import sys

src, dst = sys.argv[1], sys.argv[2]
d = [float(v) for v in sys.argv[3:6]]
raw = gzip.open(src).read() if src.endswith(".gz") else open(src, "rb").read()
b = bytearray(raw)
if struct.unpack("<i", b[0:4])[0] != 348:
    sys.exit("shift_affine: %s is not a little-endian NIfTI-1 file" % src)
for axis, off in enumerate((280, 296, 312)):  # srow_x, srow_y, srow_z: the 4th element is the offset
    v = struct.unpack("<f", b[off + 12:off + 16])[0]
    b[off + 12:off + 16] = struct.pack("<f", v + d[axis])
for axis, off in enumerate((268, 272, 276)):  # qoffset_x, _y, _z
    v = struct.unpack("<f", b[off:off + 4])[0]
    b[off:off + 4] = struct.pack("<f", v + d[axis])
with gzip.open(dst, "wb") as f:
    f.write(bytes(b))
