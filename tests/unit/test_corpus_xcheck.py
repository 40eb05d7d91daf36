"""test_corpus_xcheck.py CORPUS DEFINITION: an independent check of mednet prep on the real mricron corpus.

Takes from the corpus under test only the voxels and statistics it checks; everything that decides them is
recomputed here from the corpus definition (DEFINITION, read with configparser) and the source NIfTI files (read
with gzip + struct + numpy, no libnifti):
- the label map, parsed from the definition's label_map text;
- the anti-aliasing sigmas: per source voxel axis, f = target spacing / source spacing along the world axis that
  voxel axis points along, sigma = (f - 1) / 2 source voxels when f > 1, else 0 (no filter);
- the stored grid and its affine: the world bounding box of the image's voxel centres sampled at the target
  spacing (origin at the box's low corner), the mask (source voxels > 0) and the mapped label resampled onto it with
  nearest, cropped to the box of voxels where either is set; the affine is that crop's diagonal spacing and corner.
Then every stored volume is recomputed on that grid -- nearest-neighbour labels through the label file's own sform
(HarvardOxford's flipped grid included); the image low-pass filtered with the recomputed sigmas, then trilinear
with the same edge rule as mednet (clamp inside half a voxel), z-scored inside the source's foreground mask --
and compared with what the corpus holds, as are the stored affine, sigmas, label map text, normalisation statistics
and foreground share.  Run with /usr/bin/python3 (numpy, h5py).
"""
import configparser
import gzip
import os
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


def read_definition(path):
    """{dataset: {image, label, label_map, spacing (x, y, z mm), antialias, crop}} from a corpus definition."""
    cp = configparser.ConfigParser(comment_prefixes=(";", "#"), inline_comment_prefixes=(";",))
    cp.optionxform = str
    cp.read(path)
    root = cp["corpus"].get("root", "")
    out = {}
    for sec in cp.sections():
        if sec == "corpus":
            continue
        d = cp[sec]
        sp = [float(v) for v in d.get("spacing", cp["corpus"].get("spacing")).replace(",", " ").split()]
        out[sec] = dict(image=os.path.join(root, d["image"]), label=os.path.join(root, d["label"]),
                        label_map=d["label_map"], spacing=np.array(sp * 3 if len(sp) == 1 else sp, np.float64),
                        antialias=d.get("antialias", "true").lower() in ("1", "true", "yes", "on"),
                        crop=d.get("crop", "true").lower() in ("1", "true", "yes", "on"))
    return out


def antialias_sigma(A_src, spacing):
    """Per source voxel axis a: the world axis its column points along most, f = target / source spacing there."""
    sig = np.zeros(3)
    for a in range(3):
        col = A_src[:3, a]
        f = spacing[int(np.argmax(np.abs(col)))] / np.linalg.norm(col)
        sig[a] = (f - 1) / 2 if f > 1 else 0.0
    return sig


def canonical_grid(shape_kji, A_src, spacing):
    """Axis-aligned grid over the world box of the voxel centres: (origin xyz, n xyz)."""
    K, J, I = shape_kji
    corners = np.array([[i, j, k, 1.0] for i in (0, I - 1) for j in (0, J - 1) for k in (0, K - 1)]).T
    w = (A_src @ corners)[:3]
    lo, hi = w.min(axis=1), w.max(axis=1)
    return lo, (np.floor((hi - lo) / spacing + 1e-6) + 1).astype(np.int64)


def grid_affine(origin, spacing):
    A = np.diag([spacing[0], spacing[1], spacing[2], 1.0])
    A[:3, 3] = origin
    return A


def main():
    f = h5py.File(sys.argv[1], "r")
    defn = read_definition(sys.argv[2])
    failures = 0
    for ds in [n.decode() for n in f.attrs["datasets"]]:
        d = defn[ds]
        map_ok = f[ds].attrs["label_map"].decode().replace(" ", "") == d["label_map"].replace(" ", "")
        for vname in [k for k in f[ds] if k.startswith("vol_")]:
            g = f[ds][vname]
            img_s, lab_s = g["image"][()], g["label"][()]
            src_ok = (g.attrs["source_image"].decode() == d["image"] and g.attrs["source_label"].decode() == d["label"])
            img, A_img = load_nifti(d["image"])
            lab, A_lab = load_nifti(d["label"])
            lab = np.rint(lab).astype(np.int64)
            lut = label_lut(d["label_map"], int(lab.max()))
            sp = d["spacing"]
            sigma = antialias_sigma(A_img, sp) if d["antialias"] else np.zeros(3)
            sigma_err = float(np.abs(sigma - g.attrs["antialias_sigma"]).max())
            # The full canonical grid, the mask and the mapped label on it, the crop box (k, j, i) and its affine.
            origin, n = canonical_grid(img.shape, A_img, sp)
            full = (int(n[2]), int(n[1]), int(n[0]))
            A_full = grid_affine(origin, sp)
            m_full, _ = nearest((img > 0).astype(np.float64), source_index(full, A_full, A_img))
            l_full, _ = nearest(lut[lab].astype(np.float64), source_index(full, A_full, A_lab))
            keep = (m_full.reshape(full) != 0) | (l_full.reshape(full) > 0)
            lo, hi = np.zeros(3, np.int64), np.array(full, np.int64)
            if d["crop"] and keep.any():
                idx = np.nonzero(keep)
                lo = np.array([a.min() for a in idx])
                hi = np.array([a.max() + 1 for a in idx])
            shape = tuple(int(v) for v in hi - lo)
            A_out = grid_affine(origin + lo[::-1] * sp, sp)
            aff_err = float(np.abs(A_out - g.attrs["affine"].reshape(4, 4)).max())
            if shape != img_s.shape:
                print(f"{ds}/{vname}: stored shape {img_s.shape}, recomputed {shape} FAIL")
                failures += 1
                continue
            l_ref, _ = nearest(lut[lab].astype(np.float64), source_index(shape, A_out, A_lab))
            l_bad = int((l_ref.reshape(shape) != lab_s).sum())
            C = source_index(shape, A_out, A_img)
            # the foreground mask (source voxels > 0) is taken before the low-pass and resampled with nearest
            fg, _ = nearest((img > 0).astype(np.float64), C)
            fg = fg.reshape(shape) > 0
            x_ref = trilinear(smooth(img, sigma), C, img.min()).reshape(shape)
            mean, std = x_ref[fg].mean(), x_ref[fg].std()
            x_norm = np.where(fg, (x_ref - mean) / std, 0)
            x_err = float(np.abs(x_norm - img_s).max())
            stat_err = max(abs(mean - g.attrs["norm_mean"]) / mean, abs(std - g.attrs["norm_std"]) / std)
            fg_err = abs((lab_s > 0).mean() - g.attrs["foreground_share"])
            ok = (l_bad == 0 and x_err < 1e-3 and stat_err < 1e-5 and fg_err < 1e-12 and aff_err < 1e-9 and
                  sigma_err < 1e-12 and map_ok and src_ok)
            failures += not ok
            print(f"{ds}/{vname} {img_s.shape}: affine error {aff_err:.1e}, sigma {np.round(sigma, 4).tolist()} "
                  f"error {sigma_err:.1e}, label map {'same' if map_ok else 'DIFFERS'}, sources "
                  f"{'same' if src_ok else 'DIFFER'}; labels {l_bad} mismatches, image max error {x_err:.2e}, "
                  f"stats rel error {stat_err:.1e}, fg share {(lab_s > 0).mean():.4f} {'ok' if ok else 'FAIL'}")
    print("test_corpus_xcheck:", "all checks passed" if not failures else f"{failures} volume(s) FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
