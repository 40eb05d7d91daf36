/* test_stream DIR (under mpiexec -n 1 and 2): the streaming shard reader against the in-memory shard, on the real
 * mricron corpus DIR/mricron_np1.h5 and the synthetic corpus DIR/np1.h5:
 * - a sampler over a file reader whose cache is at least 4x smaller than the shard, drawing through the I/O thread
 *   with look-ahead (and an evaluation sampler interleaved), gives bitwise the same crops, labels, dataset ids and
 *   weights as a sampler over the shard loaded into memory (mn_shard_load), for crops inside the volumes and crops
 *   larger than a volume (padding);
 * - the cache never holds more than its bound, and re-reads evicted chunks (more bytes read than the cache holds);
 *   with no bound, every chunk is read at most once (bytes read <= the shard);
 * - start-up (mn_corpus_open, the shard plan, the reader, the sampler, the first batch) issues the same number of
 *   collective calls for both corpora and for every P, and no MPI-IO open: counted through MPI's profiling
 *   interface (this file defines the MPI collectives it counts and forwards them to PMPI);
 * - a corpus that vanished after the open gives an error from the draw naming the file, not a crash.
 */
#include "mednet/corpus.h"
#include "mednet/mpicheck.h"
#include "mednet/prefetch.h"
#include "mednet/reader.h"
#include "mednet/sampler.h"
#include "test_util.h"

#include <string.h>

/* ---- collective counting through the profiling interface ---------------------------------------------------- */

static long n_coll, n_file_open;

int MPI_Bcast(void *b, int n, MPI_Datatype t, int root, MPI_Comm c)
{
    n_coll++;
    return PMPI_Bcast(b, n, t, root, c);
}
int MPI_Allreduce(const void *s, void *r, int n, MPI_Datatype t, MPI_Op op, MPI_Comm c)
{
    n_coll++;
    return PMPI_Allreduce(s, r, n, t, op, c);
}
int MPI_Reduce(const void *s, void *r, int n, MPI_Datatype t, MPI_Op op, int root, MPI_Comm c)
{
    n_coll++;
    return PMPI_Reduce(s, r, n, t, op, root, c);
}
int MPI_Gather(const void *s, int sn, MPI_Datatype st, void *r, int rn, MPI_Datatype rt, int root, MPI_Comm c)
{
    n_coll++;
    return PMPI_Gather(s, sn, st, r, rn, rt, root, c);
}
int MPI_Allgather(const void *s, int sn, MPI_Datatype st, void *r, int rn, MPI_Datatype rt, MPI_Comm c)
{
    n_coll++;
    return PMPI_Allgather(s, sn, st, r, rn, rt, c);
}
int MPI_Barrier(MPI_Comm c)
{
    n_coll++;
    return PMPI_Barrier(c);
}
int MPI_File_open(MPI_Comm c, const char *name, int amode, MPI_Info info, MPI_File *fh)
{
    n_file_open++;
    return PMPI_File_open(c, name, amode, info, fh);
}

/* ---- the comparison -------------------------------------------------------------------------------------------- */

static int rank, size;

typedef struct batch {
    float *x, *w;
    int32_t *l;
    int *d;
} batch;

static void batch_alloc(batch *b, int n, size_t vox)
{
    b->x = calloc((size_t)n * vox, sizeof *b->x);
    b->l = calloc((size_t)n * vox, sizeof *b->l);
    b->d = calloc((size_t)n, sizeof *b->d);
    b->w = calloc((size_t)n, sizeof *b->w);
}

static void batch_free(batch *b) { free(b->x), free(b->l), free(b->d), free(b->w); }

static int batch_same(const batch *a, const batch *b, int n, size_t vox)
{
    return !memcmp(a->x, b->x, (size_t)n * vox * sizeof *a->x) && !memcmp(a->l, b->l, (size_t)n * vox * sizeof *a->l) &&
           !memcmp(a->d, b->d, (size_t)n * sizeof *a->d) && !memcmp(a->w, b->w, (size_t)n * sizeof *a->w);
}

/* In-memory vs streamed with a cache of shard/5, for one crop shape. */
static void compare(const mn_corpus_info *info, const mn_shard_plan *plan, const mn_shard *shard, const int crop[3])
{
    enum { N = 3, STEPS = 30 };
    mn_sampler_config cfg = {.crop = {crop[0], crop[1], crop[2]}, .fg_share = 0.5, .flip = {1, 1, 1},
                             .jitter_scale = 0.1, .jitter_shift = 0.1, .seed = 11};
    mn_sampler_config ecfg = cfg;
    ecfg.seed = 99, ecfg.jitter_scale = ecfg.jitter_shift = 0;
    size_t vox = (size_t)crop[0] * crop[1] * crop[2];
    double *wt = calloc((size_t)shard->num_volumes, sizeof *wt);
    TEST_EXPECT(mn_sampler_weights(info, plan, rank, MN_MIXTURE_DATASETS, wt) == MN_OK, "weights");

    mn_sampler *mem = NULL, *memev = NULL, *st = NULL, *stev = NULL;
    mn_reader *rd = NULL, *rd_all = NULL;
    mn_prefetch *pf = NULL;
    int64_t shard_bytes = 0;
    for (int i = 0; i < shard->num_volumes; i++)
        shard_bytes += 5 * shard->volumes[i].shape[0] * shard->volumes[i].shape[1] * shard->volumes[i].shape[2];
    int64_t cap = shard_bytes / 5;
    TEST_EXPECT(mn_sampler_create(shard, &cfg, rank, &mem) == MN_OK && mn_sampler_set_weights(mem, wt) == MN_OK,
                "memory sampler");
    TEST_EXPECT(mn_sampler_create(shard, &ecfg, rank, &memev) == MN_OK, "memory eval sampler");
    TEST_EXPECT(mn_reader_create_file(info, plan, rank, cap, &rd) == MN_OK, "file reader");
    TEST_EXPECT(mn_reader_shard_bytes(rd) == shard_bytes && shard_bytes >= 4 * cap, "shard %lld B vs cache %lld B",
                (long long)shard_bytes, (long long)cap);
    TEST_EXPECT(mn_sampler_create_reader(rd, &cfg, rank, &st) == MN_OK && mn_sampler_set_weights(st, wt) == MN_OK,
                "streamed sampler");
    TEST_EXPECT(mn_sampler_create_reader(rd, &ecfg, rank, &stev) == MN_OK, "streamed eval sampler");
    TEST_EXPECT(mn_prefetch_create(1, N, crop, &pf) == MN_OK, "prefetcher");
    if (!mem || !memev || !st || !stev || !pf) return;
    batch a, b;
    batch_alloc(&a, N, vox);
    batch_alloc(&b, N, vox);
    int same = 1, padded = 0, fgc = 0;
    for (int step = 0; step < STEPS; step++) {
        mn_err e1 = mn_sampler_next_weighted(mem, step, N, a.x, a.l, a.d, a.w);
        mn_err e2 = mn_prefetch_next(pf, st, step, N, b.x, b.l, b.d, b.w, 1);
        TEST_EXPECT(!e1 && !e2, "step %d: draws", step);
        if (!batch_same(&a, &b, N, vox)) same = 0;
        for (size_t i = 0; i < N * vox; i++) padded += a.l[i] < 0, fgc += a.l[i] > 0;
        if (step % 7 == 3) { /* an evaluation in between: the training look-ahead must survive it */
            e1 = mn_sampler_next_weighted(memev, step, N, a.x, a.l, a.d, a.w);
            e2 = mn_prefetch_next(pf, stev, step, N, b.x, b.l, b.d, b.w, 0);
            TEST_EXPECT(!e1 && !e2, "eval draw");
            if (!batch_same(&a, &b, N, 1) || memcmp(a.x, b.x, N * vox * sizeof *a.x) ||
                memcmp(a.l, b.l, N * vox * sizeof *a.l))
                same = 0;
        }
    }
    mn_prefetch_quiesce(pf);
    double wait_s;
    int64_t hits, draws;
    mn_prefetch_stats(pf, &wait_s, &hits, &draws);
    mn_reader_stats rs;
    mn_reader_get_stats(rd, &rs);
    TEST_EXPECT(same, "crop %dx%dx%d: streamed batches differ from the in-memory ones", crop[0], crop[1], crop[2]);
    TEST_EXPECT(hits >= STEPS - 1, "look-ahead used %lld of %d times", (long long)hits, STEPS);
    TEST_EXPECT(rs.cache_peak <= cap, "cache peak %lld B above its bound %lld B", (long long)rs.cache_peak,
                (long long)cap);
    TEST_EXPECT(rs.bytes_read > cap, "only %lld B read with a %lld B cache: no eviction exercised",
                (long long)rs.bytes_read, (long long)cap);
    TEST_EXPECT(fgc > 0, "no foreground drawn");
    printf("[rank %d] crop %dx%dx%d: %d steps identical (padded voxels %d, foreground %d); shard %.2f MiB, cache "
           "%.2f MiB (peak %.2f), %lld chunk reads (%.2f MiB), %lld hits, look-ahead used %lld/%lld\n",
           rank, crop[0], crop[1], crop[2], STEPS, padded, fgc, shard_bytes / 1048576.0, cap / 1048576.0,
           rs.cache_peak / 1048576.0, (long long)rs.misses, rs.bytes_read / 1048576.0, (long long)rs.hits,
           (long long)hits, (long long)draws);
    /* No bound: every chunk read at most once. */
    mn_sampler *all = NULL;
    TEST_EXPECT(mn_reader_create_file(info, plan, rank, 0, &rd_all) == MN_OK &&
                    mn_sampler_create_reader(rd_all, &cfg, rank, &all) == MN_OK, "unbounded reader");
    for (int step = 0; all && step < STEPS; step++)
        TEST_EXPECT(mn_sampler_next(all, step, N, b.x, b.l, b.d) == MN_OK, "unbounded draw");
    mn_reader_get_stats(rd_all, &rs);
    TEST_EXPECT(rs.bytes_read <= shard_bytes && rs.bytes_read == rs.cache_bytes, "unbounded cache read %lld B of a "
                "%lld B shard", (long long)rs.bytes_read, (long long)shard_bytes);
    mn_prefetch_destroy(&pf);
    mn_sampler_destroy(&all), mn_sampler_destroy(&mem), mn_sampler_destroy(&memev);
    mn_sampler_destroy(&st), mn_sampler_destroy(&stev);
    mn_reader_destroy(&rd), mn_reader_destroy(&rd_all);
    batch_free(&a), batch_free(&b);
    free(wt);
}

/* Collectives of start-up: open, plan, reader, sampler, first batch (through the I/O thread). */
static long startup_collectives(const char *path, long *file_opens)
{
    long c0 = n_coll, f0 = n_file_open;
    mn_corpus_info *info = NULL;
    mn_shard_plan *plan = NULL;
    mn_reader *rd = NULL;
    mn_sampler *s = NULL;
    mn_prefetch *pf = NULL;
    mn_sampler_config cfg = {.crop = {16, 16, 16}, .fg_share = 0.5, .flip = {1, 1, 1}, .seed = 3};
    TEST_EXPECT(mn_corpus_open(MPI_COMM_WORLD, path, &info) == MN_OK, "open %s", path);
    if (!info) return -1;
    TEST_EXPECT(mn_agree(MPI_COMM_WORLD, mn_shard_assign(info, size, 0, MN_ROLE_PRETRAIN, &plan)) == MN_OK, "plan");
    mn_err e = mn_reader_create_file(info, plan, rank, 1 << 20, &rd);
    if (!e) e = mn_sampler_create_reader(rd, &cfg, rank, &s);
    if (!e) e = mn_prefetch_create(1, 2, cfg.crop, &pf);
    TEST_EXPECT(mn_agree(MPI_COMM_WORLD, e) == MN_OK, "reader");
    float x[2 * 16 * 16 * 16];
    int32_t l[2 * 16 * 16 * 16];
    TEST_EXPECT(mn_agree(MPI_COMM_WORLD, mn_prefetch_next(pf, s, 0, 2, x, l, NULL, NULL, 1)) == MN_OK, "first batch");
    long n = n_coll - c0;
    *file_opens = n_file_open - f0;
    printf("[rank %d] start-up on %s (%d volumes, P = %d): %ld collective calls, %ld MPI-IO opens\n", rank, path,
           info->num_volumes, size, n, *file_opens);
    mn_prefetch_destroy(&pf);
    mn_sampler_destroy(&s);
    mn_reader_destroy(&rd);
    mn_shard_plan_destroy(&plan);
    mn_corpus_info_destroy(&info);
    return n;
}

int main(int argc, char **argv)
{
    if (mn_mpi_init(&argc, &argv, MPI_THREAD_FUNNELED) != MN_OK) return 1;
    mn_test_expect_size();
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    const char *dir = argc > 1 ? argv[1] : ".";
    char real[1024], synth[1024];
    snprintf(real, sizeof real, "%s/mricron_np1.h5", dir);
    snprintf(synth, sizeof synth, "%s/np1.h5", dir);

    /* Start-up first, before anything else is cached or opened. */
    long fo1 = 0, fo2 = 0;
    long c1 = startup_collectives(real, &fo1), c2 = startup_collectives(synth, &fo2);
    TEST_EXPECT(c1 == c2 && c1 > 0 && c1 <= 12, "start-up collectives differ between corpora or are too many: %ld, %ld",
                c1, c2);
    TEST_EXPECT(fo1 == 0 && fo2 == 0, "start-up opened the corpus with MPI-IO (%ld, %ld)", fo1, fo2);

    /* Bitwise: in-memory shard vs streamed. */
    mn_corpus_info *info = NULL;
    mn_shard_plan *plan = NULL;
    mn_shard *shard = NULL;
    TEST_EXPECT(mn_corpus_open(MPI_COMM_WORLD, real, &info) == MN_OK, "open");
    TEST_EXPECT(mn_shard_assign(info, size, 0, MN_ROLE_PRETRAIN, &plan) == MN_OK, "plan");
    TEST_EXPECT(mn_shard_load(MPI_COMM_WORLD, info, plan, &shard) == MN_OK, "load");
    if (shard) {
        compare(info, plan, shard, (int[3]){24, 24, 24});
        compare(info, plan, shard, (int[3]){48, 20, 52}); /* larger than the volume on two axes: padding */
    }

    /* The plan print stays short at large P (the synthetic corpus has 7 volumes: P = 64 replicates them). */
    mn_corpus_info *sinfo = NULL;
    mn_shard_plan *big = NULL;
    TEST_EXPECT(mn_corpus_open(MPI_COMM_WORLD, synth, &sinfo) == MN_OK, "open synthetic");
    if (sinfo && rank == 0 && mn_shard_assign(sinfo, 64, 0, MN_ROLE_PRETRAIN, &big) == MN_OK) {
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);
        mn_shard_plan_print(big, sinfo, f);
        fclose(f);
        int lines = 0;
        for (size_t i = 0; i < len; i++) lines += text[i] == '\n';
        TEST_EXPECT(lines <= 13 + sinfo->num_datasets && strstr(text, "(ranks 4..59)") && strstr(text, "0..31 (32 ranks)"),
                    "plan print at P = 64: %d lines:\n%s", lines, text);
        printf("plan print at P = 64: %d lines\n%s", lines, text);
        free(text);
    }
    mn_shard_plan_destroy(&big);
    mn_corpus_info_destroy(&sinfo);

    /* A corpus that is gone by the first draw: an error naming it from the draw. */
    mn_corpus_info moved = *info;
    snprintf(moved.path, sizeof moved.path, "%s/no-such-corpus.h5", dir);
    mn_reader *rd = NULL;
    mn_sampler *s = NULL;
    mn_sampler_config cfg = {.crop = {8, 8, 8}, .fg_share = 0.5, .seed = 1};
    float x[8 * 8 * 8];
    int32_t l[8 * 8 * 8];
    TEST_EXPECT(mn_reader_create_file(&moved, plan, rank, 0, &rd) == MN_OK &&
                    mn_sampler_create_reader(rd, &cfg, rank, &s) == MN_OK, "reader over a missing file");
    mn_err e = s ? mn_sampler_next(s, 0, 1, x, l, NULL) : MN_OK;
    TEST_EXPECT(mn_err_code(e) == MN_ERR_FORMAT && strstr(mn_error_last(), "no-such-corpus.h5"),
                "missing corpus: got %d, '%s'", (int)e, mn_error_last());
    mn_sampler_destroy(&s);
    mn_reader_destroy(&rd);
    mn_shard_destroy(&shard);
    mn_shard_plan_destroy(&plan);
    mn_corpus_info_destroy(&info);
    int fails = mn_test_failures, all = 0;
    PMPI_Allreduce(&fails, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    mn_test_failures = rank == 0 ? all : fails;
    int rc = mn_test_finish("test_stream");
    MPI_Finalize();
    return rc;
}
