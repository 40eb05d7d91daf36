/* fuzz_h5.h: building damaged HDF5 files for the structure-aware harnesses (fuzz_corpus.c, fuzz_ckpt.c).
 *
 * Each attribute or dataset the file should hold is written through one of the functions below, which first draw
 * a damage decision from the input (fz_reader: past the end of the input every decision is 0 = intact):
 *   attribute:  0 intact | 1 missing | 2 another type class (string <-> number) | 3 another element count (0..15,
 *               or 1 for a string array) | 4 another value (bytes of the input) | 5 a variable-length string |
 *               anything else intact;
 *   dataset:    0 intact | 1 missing | 2 another rank | 3 other extents (small, or up to 2^24 per axis in a chunked
 *               dataset whose chunks are never written) | 4 another element type | 5 never written (fill value) |
 *               6 gzip-filtered chunks | 7 contiguous layout | anything else intact.
 * After the file is closed, fz_h5_damage_file may truncate it or flip bytes inside the raw data of the datasets
 * whose offsets were recorded (contiguous layout), which is where a bad disk or a partial copy does its damage.
 * Raw metadata bytes are not mutated: libhdf5 1.10 itself is not hardened against crafted metadata, and a crash
 * there would say nothing about mednet (README.md, "Trust and limits").
 */
#ifndef MN_FUZZ_H5_H
#define MN_FUZZ_H5_H

#include <hdf5.h>
#include <sys/stat.h>
#include "fuzz_util.h"

#define FZ_MAX_RAW 64

typedef struct fz_h5 {
    fz_reader *r;
    haddr_t raw_off[FZ_MAX_RAW];
    hsize_t raw_len[FZ_MAX_RAW];
    int nraw;
} fz_h5;

static inline void fz_h5_close_quiet(hid_t id, herr_t (*close)(hid_t))
{
    if (id >= 0) close(id);
}

/* Write an attribute of `n` elements of type `type` (a string type for strings) holding `buf`. */
static inline void fz_attr_raw(hid_t loc, const char *name, hid_t type, hsize_t n, int scalar, const void *buf)
{
    hid_t sp = scalar ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, &n, NULL);
    hid_t a = sp >= 0 ? H5Acreate2(loc, name, type, sp, H5P_DEFAULT, H5P_DEFAULT) : -1;
    if (a >= 0) H5Awrite(a, type, buf);
    fz_h5_close_quiet(a, H5Aclose);
    fz_h5_close_quiet(sp, H5Sclose);
}

static inline void fz_attr_strtype(hid_t loc, const char *name, const char *s, size_t stride, hsize_t n, int scalar)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, stride);
    H5Tset_strpad(t, H5T_STR_NULLTERM);
    fz_attr_raw(loc, name, t, n, scalar, s);
    H5Tclose(t);
}

/* A numeric attribute: n elements of mem type `type` (elem bytes each) from v; scalar when n == 1. */
static inline void fz_attr_num(fz_h5 *h, hid_t loc, const char *name, hid_t type, size_t elem, const void *v, int n)
{
    uint8_t d = fz_u8(h->r);
    unsigned char buf[16 * 8];
    memcpy(buf, v, elem * (size_t)n);
    switch (d) {
    case 1: return;
    case 2: fz_attr_strtype(loc, name, "12", 3, 1, 1); return;
    case 3: {
        int m = fz_u8(h->r) % 16;
        unsigned char big[16 * 8];
        for (size_t i = 0; i < sizeof big; i++) big[i] = fz_u8(h->r);
        hsize_t dims = (hsize_t)m;
        if (m == 0) {
            hid_t sp = H5Screate(H5S_NULL);
            hid_t a = H5Acreate2(loc, name, type, sp, H5P_DEFAULT, H5P_DEFAULT);
            fz_h5_close_quiet(a, H5Aclose);
            H5Sclose(sp);
            return;
        }
        fz_attr_raw(loc, name, type, dims, 0, big);
        return;
    }
    case 4:
        for (size_t i = 0; i < elem * (size_t)n; i++) buf[i] = fz_u8(h->r);
        break;
    default: break;
    }
    hsize_t dims = (hsize_t)n;
    fz_attr_raw(loc, name, type, dims, n == 1, buf);
}

static inline void fz_attr_i64(fz_h5 *h, hid_t loc, const char *name, int64_t v)
{
    fz_attr_num(h, loc, name, H5T_NATIVE_INT64, 8, &v, 1);
}

static inline void fz_attr_u32(fz_h5 *h, hid_t loc, const char *name, uint32_t v)
{
    fz_attr_num(h, loc, name, H5T_NATIVE_UINT32, 4, &v, 1);
}

/* A fixed-length string attribute (n strings of `stride` bytes when n > 0, else one scalar string). */
static inline void fz_attr_str(fz_h5 *h, hid_t loc, const char *name, const char *s, size_t stride, int n)
{
    uint8_t d = fz_u8(h->r);
    switch (d) {
    case 1: return;
    case 2: {
        int64_t v = 7;
        fz_attr_raw(loc, name, H5T_NATIVE_INT64, 1, 1, &v);
        return;
    }
    case 3: {
        char tmp[4 * 64] = "a\0";
        fz_attr_strtype(loc, name, tmp, 64, (hsize_t)(n > 0 ? 1 + fz_u8(h->r) % 4 : 2 + fz_u8(h->r) % 2), 0);
        return;
    }
    case 4: {
        char tmp[4096];
        fz_text(h->r, tmp, sizeof tmp);
        fz_attr_strtype(loc, name, tmp, strlen(tmp) + 1 + fz_u8(h->r) % 4, 1, 1);
        return;
    }
    case 5: {
        hid_t t = H5Tcopy(H5T_C_S1);
        H5Tset_size(t, H5T_VARIABLE);
        const char *p = s;
        fz_attr_raw(loc, name, t, 1, 1, &p);
        H5Tclose(t);
        return;
    }
    default: break;
    }
    if (n > 0)
        fz_attr_strtype(loc, name, s, stride, (hsize_t)n, 0);
    else
        fz_attr_strtype(loc, name, s, strlen(s) + 1, 1, 1);
}

/* A dataset of rank `rank` and extents dims, element type `type`, holding buf (mem type `type`). */
static inline void fz_dataset(fz_h5 *h, hid_t loc, const char *name, hid_t type, int rank, const hsize_t *dims,
                              const void *buf, const hsize_t *chunk)
{
    uint8_t d = fz_u8(h->r);
    hsize_t dd[4] = {0};
    for (int i = 0; i < rank; i++) dd[i] = dims[i];
    int rk = rank, write = 1, gzip = 0, contiguous = 0, chunked = chunk != NULL;
    hid_t ftype = type;
    switch (d) {
    case 1: return;
    case 2: rk = rank == 1 ? 2 : (fz_u8(h->r) & 1 ? rank - 1 : rank + 1), dd[rk - 1] = rk > rank ? 1 : dd[rk - 1];
        write = 0;
        break;
    case 3: {
        uint8_t how = fz_u8(h->r);
        for (int i = 0; i < rank; i++) dd[i] = how & 1 ? (hsize_t)1 + (fz_u32(h->r) % (1u << 24)) : fz_u8(h->r) % 9;
        write = 0, chunked = 1;
        break;
    }
    case 4: {
        static const hid_t *const types[] = {&H5T_NATIVE_INT16_g, &H5T_NATIVE_DOUBLE_g, &H5T_NATIVE_UINT8_g,
                                             &H5T_NATIVE_FLOAT_g, &H5T_NATIVE_INT64_g, &H5T_NATIVE_UINT64_g};
        ftype = *types[fz_u8(h->r) % 6];
        write = 0;
        break;
    }
    case 5: write = 0; break;
    case 6: gzip = 1, chunked = 1; break;
    case 7: contiguous = 1, chunked = 0; break;
    default: break;
    }
    hid_t sp = H5Screate_simple(rk, dd, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    int zero = 0;
    for (int i = 0; i < rk; i++) zero |= dd[i] == 0;
    if (chunked && !zero) {
        hsize_t c[4];
        for (int i = 0; i < rk; i++) c[i] = chunk && i < rank && rk == rank ? chunk[i] : 1;
        for (int i = 0; i < rk; i++) c[i] = c[i] > dd[i] ? dd[i] : c[i] ? c[i] : 1;
        H5Pset_chunk(dcpl, rk, c);
        if (gzip) H5Pset_deflate(dcpl, 1);
    }
    hid_t ds = H5Dcreate2(loc, name, ftype, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (ds >= 0 && write) H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
    if (ds >= 0 && contiguous && write && h->nraw < FZ_MAX_RAW) {
        haddr_t off = H5Dget_offset(ds);
        if (off != HADDR_UNDEF) {
            h->raw_off[h->nraw] = off;
            h->raw_len[h->nraw] = H5Dget_storage_size(ds);
            h->nraw++;
        }
    }
    fz_h5_close_quiet(ds, H5Dclose);
    H5Pclose(dcpl);
    H5Sclose(sp);
}

/* After the file is closed: up to 4 flips of bytes inside recorded raw data, then possibly a truncation. */
static inline void fz_h5_damage_file(fz_h5 *h, const char *path)
{
    int flips = fz_u8(h->r) % 5;
    FILE *f = flips && h->nraw ? fopen(path, "r+b") : NULL;
    for (int i = 0; f && i < flips; i++) {
        int k = fz_u8(h->r) % h->nraw;
        if (!h->raw_len[k]) continue;
        long at = (long)(h->raw_off[k] + fz_u32(h->r) % h->raw_len[k]);
        unsigned char x = fz_u8(h->r) | 1;
        int c;
        if (fseek(f, at, SEEK_SET) == 0 && (c = fgetc(f)) != EOF && fseek(f, at, SEEK_SET) == 0)
            fputc(c ^ x, f);
    }
    if (f) fclose(f);
    if (fz_u8(h->r) == 1) {
        struct stat st;
        if (stat(path, &st) == 0 && st.st_size > 0 && truncate(path, (off_t)(fz_u32(h->r) % (uint32_t)st.st_size)))
            abort();
    }
}

/* A new file at path (latest format off: what mednet writes); aborts if HDF5 cannot create it. */
static inline hid_t fz_h5_create(const char *path)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) abort();
    return f;
}

#endif
