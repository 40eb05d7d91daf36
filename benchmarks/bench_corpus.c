/* bench_corpus: corpus throughput on P ranks (run it under mpirun -n 1 and -n 2):
 *   prep        mednet prep of a corpus definition: volumes/s and MB/s of NIfTI input read
 *   shard read  mn_corpus_open + mn_shard_load of every rank's shard (collective MPI-IO reads), MB/s of voxels
 *   raw read    the same corpus file read sequentially with read(2) by rank 0 in the same run: the reference
 *               speed of this file system for this file, into a reused 4 MiB buffer and into a fresh buffer of the
 *               file's size (the shard load allocates its volumes, so it pays the same first-touch page faults)
 * Validation before timing: the loaded shards cover every pre-training volume exactly once and each volume's
 * CRC-32 matches the one prep stored (mn_shard_load checks it), so the timed reads return the right bytes.
 * Each figure is the median of `reps` repetitions; the page cache is warm for all three (same file, same run).
 *
 *   mpirun -n P bench_corpus CONFIG OUTDIR [reps] [section.key=value ...]
 */
#include "mednet/corpus.h"
#include "mednet/mpicheck.h"
#include "mednet/threads.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static mn_err run(int argc, char **argv)
{
    int rank, size;
    MN_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    MN_MPI(MPI_Comm_size(MPI_COMM_WORLD, &size));
    MN_CHECK(argc >= 3, MN_ERR_ARG, "usage: bench_corpus CONFIG OUTDIR [reps] [section.key=value ...]");
    int reps = argc > 3 && !strchr(argv[3], '=') ? atoi(argv[3]) : 5;
    MN_CHECK(reps >= 1 && reps <= 100, MN_ERR_ARG, "reps must be in [1, 100]");
    int first_override = argc > 3 && !strchr(argv[3], '=') ? 4 : 3;
    char out[1100];
    snprintf(out, sizeof out, "%s/bench_corpus_np%d.h5", argv[2], size);

    mn_corpus_def *def = NULL;
    MN_CALL(mn_corpus_def_load(MPI_COMM_WORLD, argv[1], argv + first_override, argc - first_override, &def));
    MN_CALL(mn_corpus_def_expand(MPI_COMM_WORLD, def));
    mn_prep_options opt = {.output = out, .force = 1, .skip_bad = -1};
    mn_prep_summary sum;
    double *tp = malloc((size_t)reps * sizeof *tp), *ts = malloc((size_t)reps * sizeof *ts),
           *tr = malloc((size_t)reps * sizeof *tr), *tf = malloc((size_t)reps * sizeof *tf);
    MN_CHECK(tp && ts && tr && tf, MN_ERR_MEM, "out of memory");
    for (int r = 0; r < reps; r++) {
        MN_CALL(mn_corpus_prep(MPI_COMM_WORLD, def, &opt, &sum));
        tp[r] = sum.seconds;
    }
    mn_corpus_def_destroy(&def);

    /* Validate once: exact cover of the pre-training volumes, CRCs checked inside mn_shard_load. */
    mn_corpus_info *info = NULL;
    mn_shard_plan *plan = NULL;
    mn_shard *shard = NULL;
    MN_CALL(mn_corpus_open(MPI_COMM_WORLD, out, &info));
    MN_CALL(mn_shard_assign(info, size, 0, MN_ROLE_PRETRAIN, &plan));
    MN_CALL(mn_shard_load(MPI_COMM_WORLD, info, plan, &shard));
    int held = shard->num_volumes, total = 0, pre = 0;
    MN_MPI(MPI_Allreduce(&held, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD));
    for (int d = 0; d < info->num_datasets; d++) pre += info->datasets[d].role == MN_ROLE_PRETRAIN ? info->datasets[d].num_volumes : 0;
    MN_CHECK(total == (pre >= size ? pre : size), MN_ERR_INTERNAL, "shards hold %d volumes, expected %d", total,
             pre >= size ? pre : size);
    /* The share of the load spent on the CRC-32 check: the same CRC over the loaded voxels, timed alone. */
    double tc0 = MPI_Wtime();
    uint32_t sink = 0;
    for (int i = 0; i < shard->num_volumes; i++) {
        const mn_shard_volume *sv = &shard->volumes[i];
        const unsigned char *img = (const unsigned char *)sv->image;
        int64_t n = sv->shape[0] * sv->shape[1] * sv->shape[2];
        sink ^= (uint32_t)crc32(crc32(0L, img, (uInt)(n * 4)), sv->label, (uInt)n);
    }
    double tcrc = MPI_Wtime() - tc0, tcrc_max;
    MN_MPI(MPI_Allreduce(&tcrc, &tcrc_max, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
    if (sink == 0x12345678u) printf("(crc sink)\n"); /* keeps the loop from being optimised away */
    mn_shard_destroy(&shard);
    mn_shard_plan_destroy(&plan);
    mn_corpus_info_destroy(&info);

    /* Shard read: open + assign + load, as the training job does at start. */
    long long bytes = 0;
    for (int r = 0; r < reps; r++) {
        MN_MPI(MPI_Barrier(MPI_COMM_WORLD));
        double t0 = MPI_Wtime();
        MN_CALL(mn_corpus_open(MPI_COMM_WORLD, out, &info));
        MN_CALL(mn_shard_assign(info, size, 0, MN_ROLE_PRETRAIN, &plan));
        MN_CALL(mn_shard_load(MPI_COMM_WORLD, info, plan, &shard));
        double dt = MPI_Wtime() - t0, mx;
        MN_MPI(MPI_Allreduce(&dt, &mx, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
        ts[r] = mx;
        long long b = shard->bytes;
        MN_MPI(MPI_Allreduce(&b, &bytes, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD));
        mn_shard_destroy(&shard);
        mn_shard_plan_destroy(&plan);
        mn_corpus_info_destroy(&info);
    }

    /* Raw sequential read of the same file by rank 0. */
    long long fbytes = 0;
    if (rank == 0) {
        char *buf = malloc(1 << 22);
        MN_CHECK(buf, MN_ERR_MEM, "out of memory");
        for (int r = 0; r < reps; r++) {
            int fd = open(out, O_RDONLY);
            MN_CHECK(fd >= 0, MN_ERR_IO, "cannot open %s", out);
            double t0 = MPI_Wtime();
            long long n = 0;
            ssize_t got;
            while ((got = read(fd, buf, 1 << 22)) > 0) n += got;
            tr[r] = MPI_Wtime() - t0;
            close(fd);
            fbytes = n;
        }
        free(buf);
        /* The same read into fresh memory (as the shard load does): first-touch page faults included, which are
         * expensive on some machines (virtual machines especially). */
        for (int r = 0; r < reps; r++) {
            int fd = open(out, O_RDONLY);
            MN_CHECK(fd >= 0, MN_ERR_IO, "cannot open %s", out);
            double t0 = MPI_Wtime();
            char *big = malloc((size_t)fbytes);
            MN_CHECK(big, MN_ERR_MEM, "out of memory");
            long long n = 0;
            ssize_t got;
            while (n < fbytes && (got = read(fd, big + n, (size_t)(fbytes - n))) > 0) n += got;
            tf[r] = MPI_Wtime() - t0;
            free(big);
            close(fd);
        }
        double mp = median(tp, reps), ms = median(ts, reps), mr = median(tr, reps), mf = median(tf, reps);
        printf("bench_corpus: %d rank(s), corpus %s (%d volumes written, %.1f MB voxels, file %.1f MB), median of %d\n",
               size, out, sum.volumes_written, (double)sum.bytes_written / 1e6, (double)fbytes / 1e6, reps);
        printf("  prep        %8.3f s  %8.2f volumes/s  %8.1f MB/s NIfTI read  %8.1f MB/s voxels written\n", mp,
               sum.volumes_written / mp, (double)sum.bytes_read / 1e6 / mp, (double)sum.bytes_written / 1e6 / mp);
        printf("  shard read  %8.4f s  %8.1f MB/s voxels (all ranks, open + plan + collective load + CRC)\n", ms,
               (double)bytes / 1e6 / ms);
        printf("  of which    %8.4f s  CRC-32 verification of the loaded voxels (zlib crc32, slowest rank)\n", tcrc_max);
        printf("  raw read    %8.4f s  %8.1f MB/s (rank 0, read(2) of the whole file, same run)\n", mr,
               (double)fbytes / 1e6 / mr);
        printf("  raw read    %8.4f s  %8.1f MB/s (rank 0, read(2) into a fresh buffer: page faults included)\n", mf,
               (double)fbytes / 1e6 / mf);
        printf("  shard read / raw read = %.2f (reused buffer), %.2f (fresh buffer)\n",
               ((double)bytes / ms) / ((double)fbytes / mr), ((double)bytes / ms) / ((double)fbytes / mf));
    }
    free(tp), free(ts), free(tr), free(tf);
    return MN_OK;
}

int main(int argc, char **argv)
{
    if (mn_mpi_init(&argc, &argv, MPI_THREAD_FUNNELED) != MN_OK) return 1;
    mn_err e = mn_threads_init_comm(mn_threads_resolve(0), MPI_COMM_WORLD);
    if (!e) mn_log_info("BLIS kernels: %s (%s) (not used by this benchmark)", mn_blis_arch(), mn_blis_arch_reason());
    if (!e) e = run(argc, argv);
    if (e) mn_mpi_abort(MPI_COMM_WORLD, e);
    MPI_Finalize();
    return 0;
}
