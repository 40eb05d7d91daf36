"""test_corpus_xcheck.py CORPUS: an independent check of mednet prep on the real mricron corpus.

Reads the source NIfTI files itself (gzip + struct + numpy, no libnifti), recomputes every stored volume from
the stored affine -- nearest-neighbour labels through the label file's own sform (HarvardOxford's flipped grid
included) and the label map; the image low-pass filtered with the stored anti-aliasing sigmas, then trilinear
with the same edge rule as mednet (clamp inside half a voxel), z-scored inside the source's foreground mask
(voxels > 0, resampled with nearest) -- and compares with what the corpus holds.  It also recomputes the normalisation
statistics and the foreground share.  Run with /usr/bin/python3 (numpy, h5py).
"""
import gzip
import struct
import sys

import h5py
import numpy as np


def load_nifti(path):
    """Voxels (k, j, i order) and the 4x4 affine (sform if its code is set, else the pixdim diagonal)."""
    raw = gzip.open(path).read() if path.endswith(".gz") else open(path, "rb").read()
    h = raw[:348]
    assert struct.unpack("<i", h[:4])[0] == 348, path
    dim = struct.unpack("<8h", h[40:56])
    dt = struct.unpack("<h", h[70:72])[0]
    pix = struct.unpack("<8f", h[76:108])
    off = int(struct.unpack("<f", h[108:112])[0])
    slope, inter = struct.unpack("<ff", h[112:120])
    sform_code = struct.unpack("<h", h[254:256])[0]
    types = {2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 64: np.float64}
    n = dim[1] * dim[2] * dim[3]
    a = np.frombuffer(raw[off:off + n * np.dtype(types[dt]).itemsize], types[dt]).astype(np.float64)
    if slope not in (0.0,) and np.isfinite(slope):
        a = a * slope + inter
    a = a.reshape(dim[3], dim[2], dim[1])
    if sform_code > 0:
        A = np.vstack([np.array(struct.unpack("<12f", h[280:328]), np.float64).reshape(3, 4), [0, 0, 0, 1]])
    else:
        A = np.diag([pix[1], pix[2], pix[3], 1.0])
    return a, A


def source_index(stored_shape, A_out, A_src):
    D, H, W = stored_shape
    kk, jj, ii = np.meshgrid(np.arange(D), np.arange(H), np.arange(W), indexing="ij")
    P = A_out @ np.stack([ii.ravel(), jj.ravel(), kk.ravel(), np.ones(ii.size)])
    return (np.linalg.inv(A_src) @ P)[:3]


def nearest(vol, C):
    n = np.array(vol.shape[::-1])[:, None]
    inside = np.all((C >= -0.5) & (C < n - 0.5), axis=0)
    idx = np.floor(C + 0.5).astype(np.int64)
    out = np.zeros(C.shape[1])
    out[inside] = vol[idx[2, inside], idx[1, inside], idx[0, inside]]
    return out, inside


def trilinear(vol, C, fill):
    n = np.array(vol.shape[::-1])[:, None]
    inside = np.all((C >= -0.5) & (C < n - 0.5), axis=0)
    c = np.clip(C, 0, n - 1)
    i0 = np.minimum(np.floor(c).astype(np.int64), n - 1)
    f = c - i0
    i1 = np.minimum(i0 + 1, n - 1)
    out = np.zeros(C.shape[1])
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                w = (f[0] if dx else 1 - f[0]) * (f[1] if dy else 1 - f[1]) * (f[2] if dz else 1 - f[2])
                z = i1[2] if dz else i0[2]
                y = i1[1] if dy else i0[1]
                x = i1[0] if dx else i0[0]
                out += w * vol[z, y, x]
    out[~inside] = fill
    return out


def smooth(vol, sigma):
    """Gaussian low-pass along x (i), then y (j), then z (k): sampled kernel, radius int(4 sigma + 0.5), clamped
    edges, float32 after each pass (scipy.ndimage.gaussian_filter(mode='nearest', truncate=4))."""
    out = vol.astype(np.float32)
    for a, s in enumerate(sigma):
        if s <= 0:
            continue
        r = int(4 * s + 0.5)
        d = np.arange(-r, r + 1)
        w = np.exp(-0.5 * d * d / (s * s))
        w /= w.sum()
        axis = 2 - a  # arrays are (k, j, i)
        n = out.shape[axis]
        acc = np.zeros(out.shape)
        for wi, di in zip(w, d):
            acc += wi * np.take(out, np.clip(np.arange(n) + di, 0, n - 1), axis=axis)
        out = acc.astype(np.float32)
    return out.astype(np.float64)


def label_lut(text, maxcode):
    lut = np.full(maxcode + 1, -1, np.int64)
    for e in text.split(","):
        k, v = e.strip().split(":")
        lo, hi = (int(k), int(k)) if "-" not in k else map(int, k.split("-"))
        lut[lo:min(hi, maxcode) + 1] = int(v)
    return lut


def main():
    f = h5py.File(sys.argv[1], "r")
    failures = 0
    for ds in [n.decode() for n in f.attrs["datasets"]]:
        for vname in [k for k in f[ds] if k.startswith("vol_")]:
            g = f[ds][vname]
            img_s, lab_s = g["image"][()], g["label"][()]
            A_out = g.attrs["affine"].reshape(4, 4)
            img, A_img = load_nifti(g.attrs["source_image"].decode())
            lab, A_lab = load_nifti(g.attrs["source_label"].decode())
            lab = np.rint(lab).astype(np.int64)
            lut = label_lut(f[ds].attrs["label_map"].decode(), int(lab.max()))
            l_ref, _ = nearest(lut[lab].astype(np.float64), source_index(lab_s.shape, A_out, A_lab))
            l_bad = int((l_ref.reshape(lab_s.shape) != lab_s).sum())
            C = source_index(img_s.shape, A_out, A_img)
            # the foreground mask (source voxels > 0) is taken before the low-pass and resampled with nearest
            fg, _ = nearest((img > 0).astype(np.float64), C)
            fg = fg.reshape(img_s.shape) > 0
            x_ref = trilinear(smooth(img, g.attrs["antialias_sigma"]), C, img.min()).reshape(img_s.shape)
            mean, std = x_ref[fg].mean(), x_ref[fg].std()
            x_norm = np.where(fg, (x_ref - mean) / std, 0)
            x_err = float(np.abs(x_norm - img_s).max())
            stat_err = max(abs(mean - g.attrs["norm_mean"]) / mean, abs(std - g.attrs["norm_std"]) / std)
            fg_err = abs((lab_s > 0).mean() - g.attrs["foreground_share"])
            ok = l_bad == 0 and x_err < 1e-3 and stat_err < 1e-5 and fg_err < 1e-12
            failures += not ok
            print(f"{ds}/{vname} {img_s.shape}: labels {l_bad} mismatches, image max error {x_err:.2e}, "
                  f"stats rel error {stat_err:.1e}, fg share {(lab_s > 0).mean():.4f} {'ok' if ok else 'FAIL'}")
    print("test_corpus_xcheck:", "all checks passed" if not failures else f"{failures} volume(s) FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
