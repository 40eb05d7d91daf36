/* bench_stream: the streaming shard reader's throughput on one rank, next to what a training step consumes and to
 * raw read(2) of the same number of bytes from the same file, measured in the same run:
 *   cold      a fresh file reader with a cache of cache_mb MiB: `batches` batches of `batch` crops of `crop` voxels
 *             (foreground share 0.5), samples/s and MiB/s of chunk bytes read
 *   warm      the same draws again through a reader whose cache holds the shard (second pass): the in-memory rate
 *   raw       read(2) of the bytes the cold pass read, sequentially from the corpus file in 4 MiB blocks
 *   step      a training step consumes batch / step_seconds samples/s (step_seconds from the progress line or
 *             bench_step, given on the command line); the reader's margin is cold samples/s / that
 * Validation before timing: the cold and warm passes give bitwise the same batches.  The page cache is warm for the
 * file (same run): this measures the reader, not the disk.
 *
 *   mpirun -n 1 bench_stream CORPUS [crop=32] [batch=2] [cache_mb=64] [batches=50] [step_seconds=1.0]
 */
#include "mednet/corpus.h"
#include "mednet/mpicheck.h"
#include "mednet/reader.h"
#include "mednet/sampler.h"
#include "mednet/threads.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static double arg(int argc, char **argv, int i, double def) { return argc > i ? atof(argv[i]) : def; }

static void cpu_name(char *buf, size_t n)
{
    snprintf(buf, n, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
            snprintf(buf, n, "%s", strchr(line, ':') + 2);
            buf[strcspn(buf, "\n")] = 0;
            break;
        }
    if (f) fclose(f);
}

/* Draw `nb` batches through a new reader of cache `cap` bytes; keep every batch in out (nb * n * vox floats). */
static mn_err pass(const mn_corpus_info *info, const mn_shard_plan *plan, const mn_sampler_config *cfg, int64_t cap,
                   int nb, int n, float *out, int32_t *lab, double *secs, mn_reader_stats *st)
{
    mn_reader *rd = NULL;
    mn_sampler *s = NULL;
    size_t vox = (size_t)cfg->crop[0] * cfg->crop[1] * cfg->crop[2];
    MN_CALL(mn_reader_create_file(info, plan, 0, cap, &rd));
    mn_err e = mn_sampler_create_reader(rd, cfg, 0, &s);
    double t0 = MPI_Wtime();
    for (int b = 0; b < nb && !e; b++) e = mn_sampler_next(s, b, n, out + (size_t)b * n * vox, lab, NULL);
    *secs = MPI_Wtime() - t0;
    mn_reader_get_stats(rd, st);
    mn_sampler_destroy(&s);
    mn_reader_destroy(&rd);
    MN_CALL(e);
    return MN_OK;
}

static mn_err run(int argc, char **argv)
{
    MN_CHECK(argc >= 2, MN_ERR_ARG, "usage: bench_stream CORPUS [crop] [batch] [cache_mb] [batches] [step_seconds]");
    int crop = (int)arg(argc, argv, 2, 32), n = (int)arg(argc, argv, 3, 2), nb = (int)arg(argc, argv, 5, 50);
    double cache_mb = arg(argc, argv, 4, 64), step_s = arg(argc, argv, 6, 1.0);
    MN_CHECK(crop > 0 && n > 0 && nb > 0 && cache_mb > 0 && step_s > 0, MN_ERR_ARG, "bad arguments");
    mn_corpus_info *info = NULL;
    mn_shard_plan *plan = NULL;
    MN_CALL(mn_corpus_open(MPI_COMM_WORLD, argv[1], &info));
    MN_CALL(mn_shard_assign(info, 1, 0, MN_ROLE_PRETRAIN, &plan));
    mn_sampler_config cfg = {.crop = {crop, crop, crop}, .fg_share = 0.5, .flip = {1, 1, 1}, .jitter_scale = 0.1,
                             .jitter_shift = 0.1, .seed = 5};
    size_t vox = (size_t)crop * crop * crop;
    float *a = malloc((size_t)nb * n * vox * sizeof *a), *b = malloc((size_t)nb * n * vox * sizeof *b);
    int32_t *lab = malloc((size_t)n * vox * sizeof *lab);
    MN_CHECK(a && b && lab, MN_ERR_MEM, "out of memory for %d batches", nb);
    double t_cold = 0, t_warm;
    mn_reader_stats cold, warm;
    MN_CALL(pass(info, plan, &cfg, (int64_t)(cache_mb * 1048576), nb, n, a, lab, &t_cold, &cold));
    /* Warm: a reader with no bound, first pass to fill, second pass timed. */
    mn_reader *rd = NULL;
    mn_sampler *s = NULL;
    MN_CALL(mn_reader_create_file(info, plan, 0, 0, &rd));
    MN_CALL(mn_sampler_create_reader(rd, &cfg, 0, &s));
    for (int k = 0; k < nb; k++) MN_CALL(mn_sampler_next(s, k, n, b + (size_t)k * n * vox, lab, NULL));
    double t0 = MPI_Wtime();
    for (int k = 0; k < nb; k++) MN_CALL(mn_sampler_next(s, k, n, b + (size_t)k * n * vox, lab, NULL));
    t_warm = MPI_Wtime() - t0;
    mn_reader_get_stats(rd, &warm);
    mn_sampler_destroy(&s);
    mn_reader_destroy(&rd);
    MN_CHECK(!memcmp(a, b, (size_t)nb * n * vox * sizeof *a), MN_ERR_INTERNAL, "cold and warm batches differ");
    /* Raw read(2) of as many bytes as the cold pass read. */
    int fd = open(argv[1], O_RDONLY);
    MN_CHECK(fd >= 0, MN_ERR_IO, "cannot open %s", argv[1]);
    char *buf = malloc(4 << 20);
    MN_CHECK(buf, MN_ERR_MEM, "out of memory");
    int64_t left = cold.bytes_read, got = 0;
    t0 = MPI_Wtime();
    while (left > 0) {
        ssize_t r = read(fd, buf, (size_t)(left < (4 << 20) ? left : (4 << 20)));
        if (r == 0) {
            lseek(fd, 0, SEEK_SET);
            continue;
        }
        MN_CHECK(r > 0, MN_ERR_IO, "read failed");
        left -= r, got += r;
    }
    double t_raw = MPI_Wtime() - t0;
    close(fd);
    free(buf);
    char cpu[256];
    cpu_name(cpu, sizeof cpu);
    double ns = (double)nb * n;
    printf("bench_stream: %s, %d volumes, crop %d^3, batch %d, %d batches; CPU %s; BLIS kernels %s (not used)\n",
           argv[1], info->num_volumes, crop, n, nb, cpu, mn_blis_arch());
    printf("  cold (cache %.0f MiB): %8.1f samples/s  %8.1f MiB/s of chunks (%.1f MiB read, %lld reads, %lld hits, "
           "cache peak %.1f MiB)\n", cache_mb, ns / t_cold, cold.bytes_read / 1048576.0 / t_cold,
           cold.bytes_read / 1048576.0, (long long)cold.misses, (long long)cold.hits, cold.cache_peak / 1048576.0);
    printf("  warm (shard held):     %8.1f samples/s\n", ns / t_warm);
    printf("  raw read(2), same bytes: %6.1f MiB/s (%.1f MiB in %.3f s): cold reader at %.2fx of raw\n",
           got / 1048576.0 / t_raw, got / 1048576.0, t_raw, (cold.bytes_read / t_cold) / (got / t_raw));
    printf("  a step of %.3f s consumes %.2f samples/s: cold reader %.1fx, warm %.1fx faster than consumed\n", step_s,
           n / step_s, (ns / t_cold) / (n / step_s), (ns / t_warm) / (n / step_s));
    free(a), free(b), free(lab);
    mn_shard_plan_destroy(&plan);
    mn_corpus_info_destroy(&info);
    return MN_OK;
}

int main(int argc, char **argv)
{
    if (mn_mpi_init(&argc, &argv, MPI_THREAD_FUNNELED) != MN_OK) return 1;
    mn_threads_init(1);
    mn_err e = run(argc, argv);
    if (e) fprintf(stderr, "bench_stream failed\n");
    MPI_Finalize();
    return e ? 1 : 0;
}
