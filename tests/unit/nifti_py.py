"""nifti_py.py: minimal NIfTI-1 reading and writing with struct + numpy (no libnifti), for the tests of
`mednet eval` and `mednet infer`: independent of the C code under test.

Arrays are indexed [i, j, k] (NIfTI order, i fastest on disk).  Affines are 4x4, written as the sform (code 2) and,
when qform=True, also as a qform (code 1) derived from the affine (rotation + qfac + pixdim)."""
import gzip
import struct

import numpy as np

DT = {np.uint8: (2, 8), np.int16: (4, 16), np.int32: (8, 32), np.float32: (16, 32), np.float64: (64, 64)}


def _quatern(A):
    """(b, c, d, qfac, pixdim[3]) of the rotation part of A (nifti_mat44_to_quatern for an orthogonal A)."""
    M = np.array(A[:3, :3], np.float64)
    pix = np.sqrt((M ** 2).sum(axis=0))
    R = M / pix
    qfac = 1.0
    if np.linalg.det(R) < 0:
        qfac = -1.0
        R[:, 2] = -R[:, 2]
    a = 1.0 + R[0, 0] + R[1, 1] + R[2, 2]
    if a > 0.5:
        a = 0.5 * np.sqrt(a)
        b = 0.25 * (R[2, 1] - R[1, 2]) / a
        c = 0.25 * (R[0, 2] - R[2, 0]) / a
        d = 0.25 * (R[1, 0] - R[0, 1]) / a
    else:
        xd = 1.0 + R[0, 0] - (R[1, 1] + R[2, 2])
        yd = 1.0 + R[1, 1] - (R[0, 0] + R[2, 2])
        zd = 1.0 + R[2, 2] - (R[0, 0] + R[1, 1])
        if xd > 1.0:
            b = 0.5 * np.sqrt(xd); c = 0.25 * (R[0, 1] + R[1, 0]) / b
            d = 0.25 * (R[0, 2] + R[2, 0]) / b; a = 0.25 * (R[2, 1] - R[1, 2]) / b
        elif yd > 1.0:
            c = 0.5 * np.sqrt(yd); b = 0.25 * (R[0, 1] + R[1, 0]) / c
            d = 0.25 * (R[1, 2] + R[2, 1]) / c; a = 0.25 * (R[0, 2] - R[2, 0]) / c
        else:
            d = 0.5 * np.sqrt(zd); b = 0.25 * (R[0, 2] + R[2, 0]) / d
            c = 0.25 * (R[1, 2] + R[2, 1]) / d; a = 0.25 * (R[1, 0] - R[0, 1]) / d
        if a < 0:
            b, c, d = -b, -c, -d
    return b, c, d, qfac, pix


def write(path, arr, affine, dtype=np.float32, qform=False):
    arr = np.asarray(arr)
    dims = arr.shape
    code, bitpix = DT[dtype]
    A = np.asarray(affine, np.float64)
    h = bytearray(348)
    struct.pack_into("<i", h, 0, 348)
    struct.pack_into("<8h", h, 40, len(dims), *dims, *([1] * (7 - len(dims))))
    struct.pack_into("<hh", h, 70, code, bitpix)
    pix = np.sqrt((A[:3, :3] ** 2).sum(axis=0))
    qb = qc = qd = 0.0
    qfac = 1.0
    if qform:
        qb, qc, qd, qfac, pix = _quatern(A)
    struct.pack_into("<8f", h, 76, qfac, *pix, 1, 1, 1, 1)
    struct.pack_into("<f", h, 108, 352.0)
    struct.pack_into("<ff", h, 112, 1.0, 0.0)
    h[123] = 2  # mm
    struct.pack_into("<hh", h, 252, 1 if qform else 0, 2)
    struct.pack_into("<6f", h, 256, qb, qc, qd, A[0, 3], A[1, 3], A[2, 3])
    struct.pack_into("<12f", h, 280, *A[:3, :4].reshape(-1))
    h[344:348] = b"n+1\0"
    data = bytes(h) + b"\0\0\0\0" + np.asarray(arr, dtype).tobytes(order="F")
    (gzip.open if path.endswith(".gz") else open)(path, "wb").write(data)


def read(path):
    """(array [i, j, k] or [i, j, k, t], sform affine 4x4, header dict)."""
    raw = (gzip.open if path.endswith(".gz") else open)(path, "rb").read()
    assert struct.unpack("<i", raw[:4])[0] == 348, path
    dim = struct.unpack("<8h", raw[40:56])
    code = struct.unpack("<h", raw[70:72])[0]
    off = int(struct.unpack("<f", raw[108:112])[0])
    slope, inter = struct.unpack("<ff", raw[112:120])
    qcode, scode = struct.unpack("<hh", raw[252:256])
    dt = {2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 64: np.float64}[code]
    shape = dim[1:1 + dim[0]]
    a = np.frombuffer(raw, dt, count=int(np.prod(shape)), offset=off).reshape(shape, order="F")
    if slope not in (0.0, 1.0) or inter != 0.0:
        a = a * slope + inter
    A = np.eye(4)
    A[:3, :4] = np.array(struct.unpack("<12f", raw[280:328]), np.float64).reshape(3, 4)
    hdr = {"dim": dim, "datatype": code, "qform_code": qcode, "sform_code": scode,
           "quatern": struct.unpack("<6f", raw[256:280]), "pixdim": struct.unpack("<8f", raw[76:108]),
           "intent_code": struct.unpack("<h", raw[68:70])[0]}
    return a, A, hdr
