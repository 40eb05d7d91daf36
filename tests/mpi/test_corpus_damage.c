/* test_corpus_damage DIR (under mpiexec -n 2): a damaged corpus ends mn_corpus_open or mn_shard_load with one agreed
 * error on every rank (mn_err_is_agreed: the job can end cleanly with exit status 1), never a local error (which
 * ends in MPI_Abort) and never a hang (the ctest TIMEOUT).  Copies of DIR/np1.h5 (written by test_corpus_np1) are
 * damaged by rank 0:
 *   - byte flips in the voxel data: one in a chunk of the last pre-training volume (held by the last rank only),
 *     one in the first volume (rank 0's), and four at seeded positions among the stored chunks of every pre-training image and label (chunk addresses
 *     from H5Dget_chunk_info; only bytes of voxels, not the padding of edge chunks); the metadata is intact, so the open succeeds and the shard load must fail with
 *     MN_ERR_FORMAT on every rank; the rank that read the damaged volume names the file and the volume, the
 *     others carry MN_ERR_REMOTE;
 *   - truncation to half the file, to all but the last byte, and inside the last chunk: the open fails, agreed;
 *   - truncation after a successful open (the file changed before the shard load): the load fails, agreed.
 */
#include "mednet/corpus.h"
#include "mednet/mpicheck.h"
#include "test_util.h"

#include <hdf5.h>
#include <string.h>
#include <unistd.h>

static int rank, size;

typedef struct chunk_ref {
    int volume;         /* index into info->volumes */
    haddr_t addr;       /* file offset of the stored chunk */
    hsize_t bytes;      /* its stored size */
    hsize_t cdim[3];    /* chunk dimensions */
    hsize_t inside[3];  /* the part of the chunk inside the dataset (edge chunks are padded) */
    size_t esize;       /* bytes per voxel */
} chunk_ref;

/* A seeded byte of the chunk that belongs to a voxel of the dataset (not to an edge chunk's padding). */
static long voxel_byte(const chunk_ref *c, mn_test_rng *rng)
{
    hsize_t z = mn_test_rng_u64(rng) % c->inside[0], y = mn_test_rng_u64(rng) % c->inside[1],
            x = mn_test_rng_u64(rng) % c->inside[2];
    return (long)c->addr + (long)(((z * c->cdim[1] + y) * c->cdim[2] + x) * c->esize + mn_test_rng_u64(rng) % c->esize);
}

/* Rank 0: the stored chunks of every pre-training volume's image and label. */
static int list_chunks(const char *path, const mn_corpus_info *info, chunk_ref *out, int cap)
{
    int n = 0;
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    TEST_EXPECT(f >= 0, "open %s", path);
    for (int v = 0; v < info->num_volumes && f >= 0; v++) {
        const mn_corpus_volume *cv = &info->volumes[v];
        if (info->datasets[cv->dataset].role != MN_ROLE_PRETRAIN) continue;
        for (int k = 0; k < 2; k++) {
            char name[160];
            snprintf(name, sizeof name, "/%s/vol_%04d/%s", info->datasets[cv->dataset].name, cv->index,
                     k ? "label" : "image");
            hid_t d = H5Dopen2(f, name, H5P_DEFAULT), fs = d >= 0 ? H5Dget_space(d) : -1;
            hid_t dcpl = d >= 0 ? H5Dget_create_plist(d) : -1;
            hsize_t nchunks = 0, dims[3] = {0, 0, 0}, cdim[3] = {0, 0, 0};
            TEST_EXPECT(fs >= 0 && H5Dget_num_chunks(d, fs, &nchunks) >= 0 && nchunks > 0 &&
                            H5Sget_simple_extent_dims(fs, dims, NULL) == 3 && dcpl >= 0 &&
                            H5Pget_chunk(dcpl, 3, cdim) == 3&& H5Pget_nfilters(dcpl) == 0, "chunks of %s", name);
            for (hsize_t i = 0; i < nchunks && n < cap; i++) {
                hsize_t off[3];
                unsigned mask = 0;
                haddr_t addr = 0;
                hsize_t bytes = 0;
                if (H5Dget_chunk_info(d, fs, i, off, &mask, &addr, &bytes) < 0 || !bytes) continue;
                chunk_ref *c = &out[n++];
                *c = (chunk_ref){.volume = v, .addr = addr, .bytes = bytes, .esize = k ? 1 : 4};
                for (int a = 0; a < 3; a++) {
                    c->cdim[a] = cdim[a];
                    c->inside[a] = dims[a] - off[a] < cdim[a] ? dims[a] - off[a] : cdim[a];
                }
            }
            if (dcpl >= 0) H5Pclose(dcpl);
            if (fs >= 0) H5Sclose(fs);
            if (d >= 0) H5Dclose(d);
        }
    }
    if (f >= 0) H5Fclose(f);
    return n;
}

static void write_copy(const char *path, const char *buf, long len)
{
    FILE *o = fopen(path, "wb");
    TEST_EXPECT(o && fwrite(buf, 1, (size_t)len, o) == (size_t)len && fclose(o) == 0, "write %s", path);
}

/* Every rank: the same code `want`, agreed. */
static int agreed_everywhere(const char *what, mn_err e, mn_err want)
{
    int code = (int)mn_err_code(e), mx = 0, mnv = 0;
    MPI_Allreduce(&code, &mx, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Allreduce(&code, &mnv, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    int ok = mn_err_code(e) == want && mn_err_is_agreed(e) && mx == mnv;
    TEST_EXPECT(ok, "%s: rank %d returned %s (agreed %d), want %s agreed on every rank", what, rank, mn_err_name(e),
                mn_err_is_agreed(e), mn_err_name(want));
    return ok;
}

int main(int argc, char **argv)
{
    if (mn_mpi_init(&argc, &argv, MPI_THREAD_FUNNELED) != MN_OK) return 1;
    mn_test_expect_size();
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (argc < 2) {
        fprintf(stderr, "usage: test_corpus_damage DIR\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    const char *dir = argv[1];
    char good[1100];
    snprintf(good, sizeof good, "%s/np1.h5", dir);
    mn_corpus_info *info = NULL;
    mn_shard_plan *plan = NULL;
    if (mn_corpus_open(MPI_COMM_WORLD, good, &info) != MN_OK ||
        mn_shard_assign(info, size, 0, MN_ROLE_PRETRAIN, &plan) != MN_OK) {
        fprintf(stderr, "cannot open %s (run test_corpus_np1 first)\n", good);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    /* The rank holding each volume (-1: none; volumes are not replicated while size <= 6). */
    int holder[64];
    for (int v = 0; v < 64; v++) holder[v] = -1;
    for (int r = 0; r < size; r++)
        for (int i = plan->offset[r]; i < plan->offset[r + 1]; i++) holder[plan->items[i].volume] = r;
    long len = 0;
    char *buf = NULL;
    chunk_ref chunks[4096];
    int nchunks = 0;
    if (rank == 0) {
        FILE *in = fopen(good, "rb");
        fseek(in, 0, SEEK_END);
        len = ftell(in);
        fseek(in, 0, SEEK_SET);
        buf = malloc((size_t)len);
        TEST_EXPECT(buf && fread(buf, 1, (size_t)len, in) == (size_t)len, "read %s", good);
        fclose(in);
        nchunks = list_chunks(good, info, chunks, 4096);
        printf("%s: %ld bytes, %d stored chunks of pre-training voxels\n", good, len, nchunks);
    }

    /* Byte flips in the voxel data. */
    mn_test_rng rng = {0x5eed};
    for (int c = 0; c < 6; c++) {
        char path[1100];
        snprintf(path, sizeof path, "%s/damage_np%d_flip%d.h5", dir, size, c);
        int vol = -1;
        long pos = 0;
        if (rank == 0 && nchunks) {
            int k = 0;
            if (c == 0) { /* the last chunk of the last pre-training volume in plan order: the last rank's */
                int last = plan->items[plan->offset[size] - 1].volume;
                for (int i = 0; i < nchunks; i++)
                    if (chunks[i].volume == last) k = i;
            } else if (c == 1) { /* the first chunk of the first volume in plan order: rank 0's */
                int first = plan->items[0].volume;
                for (k = 0; k < nchunks - 1 && chunks[k].volume != first; k++) continue;
            } else {
                k = (int)(mn_test_rng_u64(&rng) % (uint64_t)nchunks);
            }
            vol = chunks[k].volume;
            pos = voxel_byte(&chunks[k], &rng);
            char saved = buf[pos];
            buf[pos] ^= (char)(1 + mn_test_rng_u64(&rng) % 255);
            write_copy(path, buf, len);
            buf[pos] = saved;
        }
        MPI_Bcast(&vol, 1, MPI_INT, 0, MPI_COMM_WORLD);
        MPI_Bcast(&pos, 1, MPI_LONG, 0, MPI_COMM_WORLD);
        if (vol < 0) continue;
        const mn_corpus_volume *cv = &info->volumes[vol];
        char what[1300], vname[160];
        snprintf(vname, sizeof vname, "/%s/vol_%04d", info->datasets[cv->dataset].name, cv->index);
        snprintf(what, sizeof what, "byte %ld flipped (volume %s, rank %d's)", pos, vname, holder[vol]);
        mn_corpus_info *dinfo = NULL;
        mn_shard *shard = NULL;
        mn_err e = mn_corpus_open(MPI_COMM_WORLD, path, &dinfo);
        TEST_EXPECT(e == MN_OK, "%s: the metadata is intact, open: %s", what, mn_err_name(e));
        if (dinfo) {
            double t0 = MPI_Wtime();
            e = mn_shard_load(MPI_COMM_WORLD, dinfo, plan, &shard);
            double dt = MPI_Wtime() - t0;
            agreed_everywhere(what, e, MN_ERR_FORMAT);
            int remote = ((int)e & MN_ERR_REMOTE) != 0;
            TEST_EXPECT(remote == (rank != holder[vol]), "%s: rank %d has MN_ERR_REMOTE = %d", what, rank, remote);
            if (rank == holder[vol])
                TEST_EXPECT(strstr(mn_error_last(), path) && strstr(mn_error_last(), vname),
                            "%s: the message does not name the file and the volume: %s", what, mn_error_last());
            if (rank == holder[vol])
                printf("%-60s -> %s on every rank, agreed, %.3f s: %s\n", what, mn_err_name(mn_err_code(e)), dt,
                       mn_error_last());
            fflush(stdout);
        }
        mn_shard_destroy(&shard);
        mn_corpus_info_destroy(&dinfo);
        MPI_Barrier(MPI_COMM_WORLD);
    }

    /* Truncated files: the open fails. */
    long last_chunk_end = 0;
    if (rank == 0)
        for (int i = 0; i < nchunks; i++)
            if ((long)(chunks[i].addr + chunks[i].bytes) > last_chunk_end)
                last_chunk_end = (long)(chunks[i].addr + chunks[i].bytes);
    for (int c = 0; c < 3; c++) {
        char path[1100], what[160];
        snprintf(path, sizeof path, "%s/damage_np%d_trunc%d.h5", dir, size, c);
        long keep = 0;
        if (rank == 0) {
            keep = c == 0 ? len / 2 : c == 1 ? len - 1 : last_chunk_end - 100;
            write_copy(path, buf, keep);
        }
        MPI_Bcast(&keep, 1, MPI_LONG, 0, MPI_COMM_WORLD);
        snprintf(what, sizeof what, "truncated to %ld bytes", keep);
        mn_corpus_info *dinfo = NULL;
        mn_err e = mn_corpus_open(MPI_COMM_WORLD, path, &dinfo);
        if (agreed_everywhere(what, e, MN_ERR_FORMAT) && rank == 0)
            printf("%-60s -> %s on every rank, agreed: %s\n", what, mn_err_name(mn_err_code(e)), mn_error_last());
        TEST_EXPECT(!dinfo, "%s: info returned on error", what);
        mn_corpus_info_destroy(&dinfo);
        MPI_Barrier(MPI_COMM_WORLD);
    }

    /* Truncated after the open: the shard load fails. */
    {
        char path[1100];
        snprintf(path, sizeof path, "%s/damage_np%d_late.h5", dir, size);
        if (rank == 0) write_copy(path, buf, len);
        MPI_Barrier(MPI_COMM_WORLD);
        mn_corpus_info *dinfo = NULL;
        mn_shard *shard = NULL;
        mn_err e = mn_corpus_open(MPI_COMM_WORLD, path, &dinfo);
        TEST_EXPECT(e == MN_OK, "intact copy opens: %s", mn_err_name(e));
        if (rank == 0) TEST_EXPECT(truncate(path, len - 1) == 0, "truncate %s", path);
        MPI_Barrier(MPI_COMM_WORLD);
        if (dinfo) {
            e = mn_shard_load(MPI_COMM_WORLD, dinfo, plan, &shard);
            if (agreed_everywhere("truncated between open and shard load", e, MN_ERR_FORMAT) && rank == 0)
                printf("%-60s -> %s on every rank, agreed: %s\n", "truncated between open and shard load",
                       mn_err_name(mn_err_code(e)), mn_error_last());
        }
        mn_shard_destroy(&shard);
        mn_corpus_info_destroy(&dinfo);
    }

    free(buf);
    mn_shard_plan_destroy(&plan);
    mn_corpus_info_destroy(&info);
    int local = mn_test_failures, total = 0;
    MPI_Allreduce(&local, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Finalize();
    if (rank != 0) return total ? 1 : 0;
    mn_test_failures = total;
    return mn_test_finish("test_corpus_damage");
}
