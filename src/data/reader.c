/* reader.c: the shard reader (mednet/reader.h): boxes of a shard's volumes from the corpus file through an LRU
 * cache of chunks, or from a shard in memory.
 *
 * Layout: every shard volume has a slot per (chunk, part) (part 0 image, 1 label); a filled slot points at a cache
 * entry holding that chunk packed in raster order (edge chunks at their true, smaller extent).  Entries sit on one
 * LRU list; a miss evicts from its tail until the new entry fits the bound.  An unfiltered chunk is read raw with
 * H5Dread_chunk (one pread; measured 2.5x faster than a hyperslab, which HDF5 reads row by row for the partial edge
 * chunks when its chunk cache is off), a compressed one with a hyperslab selection equal to its extent.  The slots cost 16 bytes per chunk of the shard; everything else is bounded.
 *
 * Both backends expose a chunk as a strided view (pointer plus y and z strides): packed in a cache entry, or in
 * place in the in-memory volume.  The box copy, the foreground counting and the k-th-voxel search run on views
 * only, so the two backends share every line that decides what a sample contains.
 *
 * Volumes are opened (H5Dopen, shape and chunk checks) on first use and stay open; the file is opened on the first
 * read with the serial sec2 driver, file locking off unless HDF5_USE_FILE_LOCKING is set (corpus_h5.c), and the
 * chunk cache of each dataset set to zero bytes.
 */
#include "mednet/reader.h"

#include "corpus_impl.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct centry {
    struct centry *prev, *next;
    int vol, slot;            /* owner: rd->v[vol].slot[slot] */
    int64_t bytes;
    void *data;
} centry;

typedef struct rvol {
    int dataset, volume;      /* as in mn_shard_item */
    int cls;                  /* classification: the volume's class; -1 otherwise */
    int64_t shape[3], chunk[3], nch[3];
    int nchunks;
    int opened;               /* file backend: datasets open, chunk geometry known */
    int direct;               /* unfiltered chunked storage: chunks read raw with H5Dread_chunk (one read each) */
    hid_t dset[2];
    centry **slot;            /* [2 * nchunks] */
    mn_reader_fg *fg;
    const float *mimg;        /* memory backend */
    const uint8_t *mlab;
} rvol;

struct mn_reader {
    const mn_corpus_info *info;
    int file_backend;
    hid_t file;
    int nvol;
    rvol *v;
    int64_t cap, shard_bytes;
    centry lru;               /* sentinel: lru.next is the most recently used */
    void *raw;                /* one stored (padded) chunk for direct reads */
    size_t raw_bytes;
    mn_reader_stats st;
};

/* A chunk seen in place: element (z, y, x) of the chunk is p[z*sz + y*sy + x] (elements of the part's type). */
typedef struct view {
    const void *p;
    int64_t origin[3], ext[3], sy, sz;
} view;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void lru_unlink(centry *e) { e->prev->next = e->next, e->next->prev = e->prev; }

static void lru_push(mn_reader *rd, centry *e)
{
    e->next = rd->lru.next, e->prev = &rd->lru;
    rd->lru.next->prev = e, rd->lru.next = e;
}

static void entry_free(mn_reader *rd, centry *e)
{
    lru_unlink(e);
    rd->v[e->vol].slot[e->slot] = NULL;
    rd->st.cache_bytes -= e->bytes;
    free(e->data);
    free(e);
}

/* Geometry from the chunk extent: chunks per axis and in total. */
static void set_geometry(rvol *v)
{
    for (int a = 0; a < 3; a++) {
        if (v->chunk[a] <= 0 || v->chunk[a] > v->shape[a]) v->chunk[a] = v->shape[a];
        v->nch[a] = (v->shape[a] + v->chunk[a] - 1) / v->chunk[a];
    }
    v->nchunks = (int)(v->nch[0] * v->nch[1] * v->nch[2]);
}

static void chunk_box(const rvol *v, int j, int64_t origin[3], int64_t ext[3])
{
    int64_t c[3] = {j / (v->nch[1] * v->nch[2]), j / v->nch[2] % v->nch[1], j % v->nch[2]};
    for (int a = 0; a < 3; a++) {
        origin[a] = c[a] * v->chunk[a];
        ext[a] = v->shape[a] - origin[a] < v->chunk[a] ? v->shape[a] - origin[a] : v->chunk[a];
    }
}

mn_err mn_reader_create_memory(const mn_shard *shard, mn_reader **out)
{
    *out = NULL;
    MN_CHECK(shard && shard->num_volumes > 0, MN_ERR_ARG, "reader: empty shard");
    mn_reader *rd = calloc(1, sizeof *rd);
    MN_CHECK(rd, MN_ERR_MEM, "out of memory");
    rd->lru.next = rd->lru.prev = &rd->lru;
    rd->file = -1;
    rd->nvol = shard->num_volumes;
    rd->v = calloc((size_t)rd->nvol, sizeof *rd->v);
    if (!rd->v) {
        free(rd);
        MN_FAIL(MN_ERR_MEM, "out of memory");
    }
    for (int k = 0; k < rd->nvol; k++) {
        const mn_shard_volume *sv = &shard->volumes[k];
        rvol *v = &rd->v[k];
        v->dataset = sv->dataset, v->volume = sv->volume, v->cls = sv->cls_tag - 1;
        memcpy(v->shape, sv->shape, sizeof v->shape);
        memcpy(v->chunk, sv->chunk, sizeof v->chunk);
        set_geometry(v);
        v->opened = 1;
        v->mimg = sv->image, v->mlab = sv->label;
        rd->shard_bytes += 5 * sv->shape[0] * sv->shape[1] * sv->shape[2];
    }
    rd->st.cache_bytes = rd->st.cache_peak = rd->shard_bytes;
    *out = rd;
    return MN_OK;
}

mn_err mn_reader_create_file(const mn_corpus_info *info, const mn_shard_plan *plan, int rank, int64_t cache_bytes,
                             mn_reader **out)
{
    *out = NULL;
    MN_CHECK(info && plan && rank >= 0 && rank < plan->nranks && cache_bytes >= 0, MN_ERR_ARG,
             "reader: bad arguments (rank %d)", rank);
    int n = plan->offset[rank + 1] - plan->offset[rank];
    MN_CHECK(n > 0, MN_ERR_ARG, "reader: rank %d holds no volume", rank);
    MN_CALL(mn_h5_init());
    mn_reader *rd = calloc(1, sizeof *rd);
    MN_CHECK(rd, MN_ERR_MEM, "out of memory");
    rd->lru.next = rd->lru.prev = &rd->lru;
    rd->info = info, rd->file_backend = 1, rd->file = -1, rd->cap = cache_bytes, rd->nvol = n;
    rd->v = calloc((size_t)n, sizeof *rd->v);
    if (!rd->v) {
        free(rd);
        MN_FAIL(MN_ERR_MEM, "out of memory");
    }
    for (int k = 0; k < n; k++) {
        const mn_shard_item *it = &plan->items[plan->offset[rank] + k];
        rvol *v = &rd->v[k];
        v->dataset = it->dataset, v->volume = it->volume, v->cls = info->volumes[it->volume].cls;
        memcpy(v->shape, info->volumes[it->volume].shape, sizeof v->shape);
        v->dset[0] = v->dset[1] = -1;
        rd->shard_bytes += 5 * v->shape[0] * v->shape[1] * v->shape[2];
    }
    *out = rd;
    return MN_OK;
}

void mn_reader_destroy(mn_reader **prd)
{
    if (!prd || !*prd) return;
    mn_reader *rd = *prd;
    while (rd->file_backend && rd->lru.next != &rd->lru) entry_free(rd, rd->lru.next);
    for (int k = 0; k < rd->nvol; k++) {
        rvol *v = &rd->v[k];
        for (int p = 0; p < 2; p++)
            if (v->dset[p] >= 0) H5Dclose(v->dset[p]);
        free(v->slot);
        if (v->fg) free(v->fg->count);
        free(v->fg);
    }
    if (rd->file >= 0) H5Fclose(rd->file);
    free(rd->raw);
    free(rd->v);
    free(rd);
    *prd = NULL;
}

int mn_reader_num_volumes(const mn_reader *rd) { return rd->nvol; }
const int64_t *mn_reader_shape(const mn_reader *rd, int k) { return rd->v[k].shape; }
int mn_reader_dataset(const mn_reader *rd, int k) { return rd->v[k].dataset; }
int mn_reader_class(const mn_reader *rd, int k) { return rd->v[k].cls; }
int64_t mn_reader_shard_bytes(const mn_reader *rd) { return rd->shard_bytes; }

void mn_reader_get_stats(const mn_reader *rd, mn_reader_stats *st)
{
    *st = rd->st;
    if (!rd->file_backend) st->cache_bytes = st->cache_peak = rd->shard_bytes;
}

/* "/<dataset>/vol_NNNN" of shard volume k. */
static void vol_name(const mn_reader *rd, const rvol *v, char *buf, size_t n)
{
    snprintf(buf, n, "/%s/vol_%04d", rd->info->datasets[v->dataset].name, rd->info->volumes[v->volume].index);
}

/* File backend: the integrity check of volume k, once, when it is first opened: its image and label are read whole
 * into a temporary buffer (freed at once; it does not count against the cache) and their CRC-32 compared with the
 * corpus's data_crc32, as the in-memory loader does.  Flipped bytes inside a chunk are thus caught before any crop of
 * the volume is used.  Local work. */
static mn_err verify_volume(mn_reader *rd, int k)
{
    rvol *v = &rd->v[k];
    int64_t n = v->shape[0] * v->shape[1] * v->shape[2];
    float *img = malloc((size_t)n * sizeof *img);
    uint8_t *lab = malloc((size_t)n);
    if (!img || !lab) {
        free(img), free(lab);
        MN_FAIL(MN_ERR_MEM, "out of memory to verify shard volume %d (%lld voxels)", k, (long long)n);
    }
    herr_t a = H5Dread(v->dset[0], H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, img);
    herr_t b = a < 0 ? -1 : H5Dread(v->dset[1], H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, lab);
    if (a < 0 || b < 0) mn_h5_report("H5Dread", __FILE__, __LINE__, __func__);
    uint32_t crc = a < 0 || b < 0 ? 0 : mn_corpus_data_crc(img, lab, n);
    free(img), free(lab);
    char base[200];
    vol_name(rd, v, base, sizeof base);
    MN_CHECK(a >= 0 && b >= 0, MN_ERR_FORMAT, "corpus '%s': cannot read volume %s (truncated or corrupt file?)",
             rd->info->path, base);
    uint32_t want = rd->info->volumes[v->volume].data_crc32;
    MN_CHECK(crc == want, MN_ERR_FORMAT, "corpus '%s': volume %s (image + label) has CRC-32 %08x, the file records "
             "%08x: the corpus is damaged; rebuild it with `mednet prep`", rd->info->path, base, (unsigned)crc,
             (unsigned)want);
    return MN_OK;
}

/* File backend: open the file (first call) and volume k's two datasets; check their shapes against the metadata
 * and take the chunk geometry.  Local work. */
static mn_err open_volume(mn_reader *rd, int k)
{
    rvol *v = &rd->v[k];
    const char *path = rd->info->path;
    if (rd->file < 0) {
        hid_t fapl;
        MN_CALL(mn_corpus_fapl(MPI_COMM_NULL, 0, NULL, &fapl));
        hid_t f = H5Fopen(path, H5F_ACC_RDONLY, fapl);
        H5Pclose(fapl);
        if (f < 0) mn_h5_report("H5Fopen", __FILE__, __LINE__, __func__);
        MN_CHECK(f >= 0, MN_ERR_FORMAT, "cannot open corpus '%s' for reading (moved, truncated or corrupt since it "
                 "was opened?)", path);
        rd->file = f;
    }
    char base[200], name[220];
    vol_name(rd, v, base, sizeof base);
    int64_t chunk[2][3] = {{0, 0, 0}, {0, 0, 0}};
    int direct = 1;
    for (int p = 0; p < 2; p++) {
        snprintf(name, sizeof name, "%s/%s", base, p ? "label" : "image");
        hid_t dapl;
        MN_H5(dapl = H5Pcreate(H5P_DATASET_ACCESS));
        /* No HDF5 chunk cache: our cache holds each chunk once. */
        MN_H5(H5Pset_chunk_cache(dapl, 0, 0, 1.0));
        hid_t d = H5Dopen2(rd->file, name, dapl);
        H5Pclose(dapl);
        if (d < 0) mn_h5_report("H5Dopen2", __FILE__, __LINE__, __func__);
        MN_CHECK(d >= 0, MN_ERR_FORMAT, "corpus '%s': cannot open dataset %s (corrupt file?)", path, name);
        v->dset[p] = d;
        hid_t sp, dcpl;
        hsize_t dims[3] = {0, 0, 0}, cd[3] = {0, 0, 0};
        MN_H5(sp = H5Dget_space(d));
        int ok = H5Sget_simple_extent_ndims(sp) == 3 && H5Sget_simple_extent_dims(sp, dims, NULL) == 3;
        H5Sclose(sp);
        for (int a = 0; a < 3; a++) ok = ok && (int64_t)dims[a] == v->shape[a];
        MN_CHECK(ok, MN_ERR_FORMAT, "corpus '%s': dataset %s is %llux%llux%llu, the metadata says %lldx%lldx%lld (the "
                 "file changed since it was opened?)", path, name, (unsigned long long)dims[0],
                 (unsigned long long)dims[1], (unsigned long long)dims[2], (long long)v->shape[0],
                 (long long)v->shape[1], (long long)v->shape[2]);
        MN_H5(dcpl = H5Dget_create_plist(d));
        if (H5Pget_layout(dcpl) == H5D_CHUNKED && H5Pget_chunk(dcpl, 3, cd) == 3)
            for (int a = 0; a < 3; a++) chunk[p][a] = (int64_t)cd[a];
        else
            direct = 0;
        if (H5Pget_nfilters(dcpl) != 0 || H5Tequal(H5T_NATIVE_FLOAT, H5T_IEEE_F32LE) <= 0) direct = 0;
        H5Pclose(dcpl);
    }
    MN_CHECK(!memcmp(chunk[0], chunk[1], sizeof chunk[0]), MN_ERR_FORMAT, "corpus '%s': %s has different chunk shapes "
             "for image and label", path, base);
    mn_corpus_chunk_rule(v->shape, chunk[0], v->chunk);
    set_geometry(v);
    /* Why direct reads: a hyperslab that covers only part of a stored chunk (the edge chunks) is read by HDF5 row by
     * row when its chunk cache is off, one pread per row; the raw chunk is one pread. */
    v->direct = direct;
    size_t need = (size_t)(v->chunk[0] * v->chunk[1] * v->chunk[2]) * sizeof(float);
    if (direct && need > rd->raw_bytes) {
        void *nr = realloc(rd->raw, need);
        MN_CHECK(nr, MN_ERR_MEM, "out of memory for a chunk buffer");
        rd->raw = nr, rd->raw_bytes = need;
    }
    v->slot = calloc((size_t)v->nchunks * 2, sizeof *v->slot);
    MN_CHECK(v->slot, MN_ERR_MEM, "out of memory for the chunk table of %s", base);
    MN_CALL(verify_volume(rd, k));
    v->opened = 1;
    return MN_OK;
}

/* Chunk j, part p (0 image, 1 label) of volume k as a view; reads it on a miss.  Local work. */
static mn_err get_view(mn_reader *rd, int k, int j, int p, view *out)
{
    rvol *v = &rd->v[k];
    if (!v->opened) MN_CALL(open_volume(rd, k));
    chunk_box(v, j, out->origin, out->ext);
    if (!rd->file_backend) {
        int64_t o = out->origin[2] + v->shape[2] * (out->origin[1] + v->shape[1] * out->origin[0]);
        out->p = p ? (const void *)(v->mlab + o) : (const void *)(v->mimg + o);
        out->sy = v->shape[2], out->sz = v->shape[1] * v->shape[2];
        return MN_OK;
    }
    out->sy = out->ext[2], out->sz = out->ext[1] * out->ext[2];
    centry *e = v->slot[2 * j + p];
    if (e) {
        rd->st.hits++;
        lru_unlink(e);
        lru_push(rd, e);
        out->p = e->data;
        return MN_OK;
    }
    int64_t bytes = out->ext[0] * out->ext[1] * out->ext[2] * (p ? 1 : (int64_t)sizeof(float));
    while (rd->cap > 0 && rd->lru.prev != &rd->lru && rd->st.cache_bytes + bytes > rd->cap) entry_free(rd, rd->lru.prev);
    e = calloc(1, sizeof *e);
    void *data = malloc((size_t)bytes);
    if (!e || !data) {
        free(e), free(data);
        MN_FAIL(MN_ERR_MEM, "out of memory for a %lld-byte chunk", (long long)bytes);
    }
    hsize_t start[3], count[3];
    for (int a = 0; a < 3; a++) start[a] = (hsize_t)out->origin[a], count[a] = (hsize_t)out->ext[a];
    double t0 = now_s();
    herr_t r;
    if (v->direct) {
        /* The stored chunk (little-endian float32 or uint8, padded to the full chunk extent), then its rows. */
        uint32_t filters = 0;
        r = H5Dread_chunk(v->dset[p], H5P_DEFAULT, start, &filters, rd->raw);
        size_t es = p ? 1 : sizeof(float), row = (size_t)out->ext[2] * es;
        for (int64_t z = 0; r >= 0 && z < out->ext[0]; z++)
            for (int64_t y = 0; y < out->ext[1]; y++)
                memcpy((char *)data + ((size_t)(z * out->ext[1] + y)) * row,
                       (const char *)rd->raw + ((size_t)((z * v->chunk[1] + y) * v->chunk[2])) * es, row);
        if (r < 0) mn_h5_report("H5Dread_chunk", __FILE__, __LINE__, __func__);
    } else {
        hid_t fs = H5Dget_space(v->dset[p]);
        hid_t ms = H5Screate_simple(3, count, NULL);
        r = fs >= 0 && ms >= 0 ? H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) : -1;
        if (r >= 0) r = H5Dread(v->dset[p], p ? H5T_NATIVE_UINT8 : H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, data);
        if (r < 0) mn_h5_report("H5Dread", __FILE__, __LINE__, __func__);
        if (fs >= 0) H5Sclose(fs);
        if (ms >= 0) H5Sclose(ms);
    }
    rd->st.read_seconds += now_s() - t0;
    if (r < 0) {
        free(e), free(data);
        char base[200];
        vol_name(rd, v, base, sizeof base);
        MN_FAIL(MN_ERR_FORMAT, "corpus '%s': cannot read chunk %d of %s/%s (corrupt or truncated file?)",
                rd->info->path, j, base, p ? "label" : "image");
    }
    e->vol = k, e->slot = 2 * j + p, e->bytes = bytes, e->data = data;
    v->slot[2 * j + p] = e;
    lru_push(rd, e);
    rd->st.misses++;
    rd->st.bytes_read += bytes;
    rd->st.cache_bytes += bytes;
    if (rd->st.cache_bytes > rd->st.cache_peak) rd->st.cache_peak = rd->st.cache_bytes;
    out->p = data;
    return MN_OK;
}

mn_err mn_reader_box(mn_reader *rd, int k, const int64_t lo[3], const int64_t hi[3], float *img, uint8_t *lab)
{
    MN_CHECK(k >= 0 && k < rd->nvol, MN_ERR_ARG, "reader: volume %d of %d", k, rd->nvol);
    rvol *v = &rd->v[k];
    for (int a = 0; a < 3; a++)
        MN_CHECK(lo[a] >= 0 && lo[a] < hi[a] && hi[a] <= v->shape[a], MN_ERR_ARG, "reader: box [%lld, %lld) outside "
                 "axis %d of extent %lld", (long long)lo[a], (long long)hi[a], a, (long long)v->shape[a]);
    if (!v->opened) MN_CALL(open_volume(rd, k));
    const int64_t bw = hi[2] - lo[2], bhw = (hi[1] - lo[1]) * bw;
    int64_t c0[3], c1[3];
    for (int a = 0; a < 3; a++) c0[a] = lo[a] / v->chunk[a], c1[a] = (hi[a] - 1) / v->chunk[a];
    for (int64_t cz = c0[0]; cz <= c1[0]; cz++)
        for (int64_t cy = c0[1]; cy <= c1[1]; cy++)
            for (int64_t cx = c0[2]; cx <= c1[2]; cx++) {
                int j = (int)(cx + v->nch[2] * (cy + v->nch[1] * cz));
                for (int p = 0; p < 2; p++) {
                    if (p ? !lab : !img) continue;
                    view w;
                    MN_CALL(get_view(rd, k, j, p, &w));
                    /* The intersection of the box and the chunk, in volume coordinates. */
                    int64_t a0[3], a1[3];
                    for (int a = 0; a < 3; a++) {
                        a0[a] = lo[a] > w.origin[a] ? lo[a] : w.origin[a];
                        a1[a] = hi[a] < w.origin[a] + w.ext[a] ? hi[a] : w.origin[a] + w.ext[a];
                    }
                    size_t es = p ? 1 : sizeof(float), row = (size_t)(a1[2] - a0[2]) * es;
                    for (int64_t z = a0[0]; z < a1[0]; z++)
                        for (int64_t y = a0[1]; y < a1[1]; y++) {
                            int64_t src = (z - w.origin[0]) * w.sz + (y - w.origin[1]) * w.sy + (a0[2] - w.origin[2]);
                            int64_t dst = (z - lo[0]) * bhw + (y - lo[1]) * bw + (a0[2] - lo[2]);
                            if (p)
                                memcpy(lab + dst, (const uint8_t *)w.p + src, row);
                            else
                                memcpy(img + dst, (const float *)w.p + src, row);
                        }
                }
            }
    return MN_OK;
}

mn_err mn_reader_foreground(mn_reader *rd, int k, const mn_reader_fg **out)
{
    MN_CHECK(k >= 0 && k < rd->nvol, MN_ERR_ARG, "reader: volume %d of %d", k, rd->nvol);
    rvol *v = &rd->v[k];
    if (v->fg) {
        *out = v->fg;
        return MN_OK;
    }
    if (!v->opened) MN_CALL(open_volume(rd, k));
    /* Count every label per chunk, then keep the foreground classes present. */
    int32_t *all = calloc((size_t)v->nchunks * 256, sizeof *all);
    mn_reader_fg *fg = calloc(1, sizeof *fg);
    if (!all || !fg) {
        free(all), free(fg);
        MN_FAIL(MN_ERR_MEM, "out of memory for the foreground index of shard volume %d", k);
    }
    mn_err e = MN_OK;
    for (int j = 0; j < v->nchunks && !e; j++) {
        view w;
        e = get_view(rd, k, j, 1, &w);
        if (e) break;
        int32_t *c = all + (size_t)j * 256;
        for (int64_t z = 0; z < w.ext[0]; z++)
            for (int64_t y = 0; y < w.ext[1]; y++) {
                const uint8_t *row = (const uint8_t *)w.p + z * w.sz + y * w.sy;
                for (int64_t x = 0; x < w.ext[2]; x++) c[row[x]]++;
            }
    }
    for (int cl = 1; cl < 256 && !e; cl++) {
        int64_t t = 0;
        for (int j = 0; j < v->nchunks; j++) t += all[(size_t)j * 256 + cl];
        if (t) fg->classes[fg->nclasses] = cl, fg->total[fg->nclasses++] = t, fg->n += t;
    }
    fg->nchunks = v->nchunks;
    if (!e) {
        fg->count = malloc((size_t)v->nchunks * (size_t)(fg->nclasses ? fg->nclasses : 1) * sizeof *fg->count);
        if (!fg->count) e = mn_error_report(MN_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory");
    }
    for (int j = 0; j < v->nchunks && !e; j++)
        for (int c = 0; c < fg->nclasses; c++)
            fg->count[(size_t)j * fg->nclasses + c] = all[(size_t)j * 256 + fg->classes[c]];
    free(all);
    if (e) {
        free(fg->count), free(fg);
        MN_CALL(e);
    }
    rd->st.index_bytes += (int64_t)sizeof *fg + (int64_t)v->nchunks * fg->nclasses * 4;
    v->fg = fg;
    *out = fg;
    return MN_OK;
}

mn_err mn_reader_fg_voxel(mn_reader *rd, int k, int c, int64_t idx, int64_t pos[3])
{
    const mn_reader_fg *fg;
    MN_CALL(mn_reader_foreground(rd, k, &fg));
    MN_CHECK(c >= 0 && c < fg->nclasses && idx >= 0 && idx < fg->total[c], MN_ERR_ARG, "reader: foreground voxel %lld "
             "of class number %d", (long long)idx, c);
    int j = 0;
    while (idx >= fg->count[(size_t)j * fg->nclasses + c]) idx -= fg->count[(size_t)j++ * fg->nclasses + c];
    view w;
    MN_CALL(get_view(rd, k, j, 1, &w));
    const int cls = fg->classes[c];
    for (int64_t z = 0; z < w.ext[0]; z++)
        for (int64_t y = 0; y < w.ext[1]; y++) {
            const uint8_t *row = (const uint8_t *)w.p + z * w.sz + y * w.sy;
            for (int64_t x = 0; x < w.ext[2]; x++)
                if (row[x] == cls && idx-- == 0) {
                    pos[0] = w.origin[0] + z, pos[1] = w.origin[1] + y, pos[2] = w.origin[2] + x;
                    return MN_OK;
                }
        }
    MN_FAIL(MN_ERR_INTERNAL, "reader: foreground index of shard volume %d does not match its labels", k);
}
