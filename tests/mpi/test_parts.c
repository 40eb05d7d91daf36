/* test_parts.c: the part table (mednet/parts.h) on 3 or more ranks, with two datasets where world rank r holds
 * dataset r % 2 (dataset 0 on ranks 0, 2, 4, ...; dataset 1 on ranks 1, 3, ...).
 *
 *   1. The table: rows, names, holders, roots, head indices, row_of.
 *   2. Batch-norm averaging weighted by samples, driven through the real gradient path (mn_parts_begin_step,
 *      mn_parts_start_reducer, mn_parts_start_step, mn_parts_reduce on a zero gradient buffer, which fill the rows'
 *      sample totals), then mn_parts_average_bn: every holder of a part ends with the samples-weighted mean of the
 *      holders' values, bitwise identical on every holder.  The lowest holder of each dataset (ranks 0 and 1) fed
 *      NO sample and holds a poison value (1000): if it counted at all the mean would be off by far more than the
 *      tolerance.  A part whose holders saw no sample keeps its values.
 *   3. Replica checks: identical buffers give MN_OK on every rank; one float of dataset 0's head perturbed on world
 *      rank 2 only (a holder, not the root), then one float of the encoder on the last rank: EVERY rank, holder or
 *      not, must return an error with mn_err_is_agreed() and code MN_ERR_INTERNAL, within a bounded time.
 *      A check agreed only among the head's holders would return MN_OK on the other ranks: such a rank prints a
 *      FAIL line and, like a run that believes the check passed, enters its next collective (a barrier on a
 *      duplicate of the world that the failing ranks never join), while the failing ranks end the test with a
 *      barrier on MPI_COMM_WORLD: the job hangs and ctest's TIMEOUT fails it.
 *
 * Registered on 3, 4 and 5 ranks (tests/cmake/parts.cmake) with TIMEOUT 60.
 */
#include "mednet/mpicheck.h"
#include "mednet/parts.h"
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define NENC 64  /* encoder parameters */
#define NHEAD 32 /* head parameters */
#define BENC 8   /* encoder BN floats */
#define BHEAD 4  /* head BN floats */
#define POISON 1000.0f

static int rank_, size_;

/* This rank's BN value j of a part: the lowest holder of a dataset (rank 0 or 1) has the poison. */
static float bn_value(int r, int j) { return r < 2 ? POISON + (float)j : 1.5f * (float)r + 0.125f * (float)j; }

/* Samples this rank fed through its head (and so through the encoder): 0 on ranks 0 and 1. */
static double samples_of(int r) { return r < 2 ? 0.0 : (double)r; }

/* The check replicas round: returns the (agreed) error of mn_parts_check_replicas and its time in seconds. */
static mn_err timed_check(mn_parts *p, const float *params, double *dt)
{
    double t0 = MPI_Wtime();
    mn_err e = mn_parts_check_replicas(p, params);
    *dt = MPI_Wtime() - t0;
    return e;
}

/* A rank that returned MN_OK from a failing check carries on like a run: its next collective never completes. */
static void continue_like_a_run(MPI_Comm next_step, const char *what)
{
    fprintf(stderr, "FAIL [rank %d]: replica check with %s returned MN_OK here although it failed elsewhere; "
                    "entering the next collective (a run would hang here)\n", rank_, what);
    fflush(stderr);
    MPI_Barrier(next_step);
}

int main(int argc, char **argv)
{
    if (mn_mpi_init(&argc, &argv, MPI_THREAD_FUNNELED) != MN_OK) return 1;
    mn_test_expect_size();
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    if (size_ < 3) {
        if (rank_ == 0) fprintf(stderr, "test_parts needs at least 3 ranks, got %d\n", size_);
        MPI_Finalize();
        return 1;
    }
    MPI_Comm next_step = MPI_COMM_NULL;
    MPI_Comm_dup(MPI_COMM_WORLD, &next_step);
    const int mine = rank_ % 2;

    /* ---- 1. the table ---- */
    int *holders = calloc((size_t)2 * size_, sizeof(int));
    if (!holders) return 2;
    for (int d = 0; d < 2; d++)
        for (int r = 0; r < size_; r++) holders[d * size_ + r] = r % 2 == d;
    const int corpus_index[2] = {0, 1};
    const char *const names[2] = {"alpha", "beta"};
    mn_parts *p = NULL;
    mn_err e = mn_parts_create(MPI_COMM_WORLD, 2, corpus_index, names, 2, holders, &p);
    free(holders);
    if (e) {
        fprintf(stderr, "FAIL [rank %d]: mn_parts_create: %s\n", rank_, mn_err_name(e));
        mn_mpi_exit_error(MPI_COMM_WORLD, e);
    }
    TEST_EXPECT(p->nrows == 3, "nrows %d, expected 3", p->nrows);
    TEST_EXPECT(!strcmp(p->row[0].name, "encoder") && p->row[0].held && p->row[0].nholders == size_,
                "encoder row: name '%s' held %d nholders %d", p->row[0].name, p->row[0].held, p->row[0].nholders);
    for (int d = 0; d < 2; d++) {
        const mn_part *r = &p->row[1 + d];
        int nh = (size_ - d + 1) / 2;
        TEST_EXPECT(!strcmp(r->name, names[d]) && r->dataset == d, "row %d: name '%s' dataset %d", 1 + d, r->name,
                    r->dataset);
        TEST_EXPECT(r->held == (mine == d), "row %d held %d on rank %d", 1 + d, r->held, rank_);
        TEST_EXPECT(r->root == d && r->nholders == nh, "row %d: root %d nholders %d, expected %d and %d", 1 + d,
                    r->root, r->nholders, d, nh);
        TEST_EXPECT(r->head == (mine == d ? 0 : -1), "row %d head %d on rank %d", 1 + d, r->head, rank_);
        TEST_EXPECT((r->comm != MPI_COMM_NULL) == (mine == d), "row %d communicator on rank %d", 1 + d, rank_);
        TEST_EXPECT(mn_parts_row_of(p, d) == 1 + d, "row_of(%d) = %d", d, mn_parts_row_of(p, d));
    }
    TEST_EXPECT(mn_parts_nheads(p) == 1, "nheads %d", mn_parts_nheads(p));

    /* This rank's model: encoder, then its one head; BN likewise. */
    const int hrow = 1 + mine;
    mn_parts_set_ranges(p, 0, (mn_range){0, NENC}, (mn_range){0, BENC});
    mn_parts_set_ranges(p, hrow, (mn_range){NENC, NHEAD}, (mn_range){BENC, BHEAD});
    float params[NENC + NHEAD], grads[NENC + NHEAD], bn[BENC + BHEAD], bn0[BENC + BHEAD];
    for (int i = 0; i < NENC; i++) params[i] = sinf(0.1f * (float)i);
    for (int i = 0; i < NHEAD; i++) params[NENC + i] = cosf(0.3f * (float)i + (float)(10 * mine));
    memset(grads, 0, sizeof grads);
    for (int j = 0; j < BENC + BHEAD; j++) bn[j] = bn0[j] = bn_value(rank_, j);

    /* ---- 2. BN averaging weighted by samples, through the gradient path ---- */
    e = mn_parts_start_reducer(p, grads, 64, NULL); /* 16-float buckets: several per step */
    int skip = -1;
    if (!e) {
        mn_parts_begin_step(p);
        double s = samples_of(rank_);
        p->row[0].samples = s, p->row[0].weight = 0.5 * s + 1; /* every rank contributes weight to the encoder */
        p->row[hrow].samples = s, p->row[hrow].weight = 0.5 * s;
        e = mn_parts_start_step(p, 0);
    }
    if (!e) e = mn_reducer_ready(p->reducer, 0, NENC);
    if (!e) e = mn_parts_reduce(p, grads, NENC + NHEAD, 0, &skip, NULL);
    if (!e) e = mn_parts_average_bn(p, bn);
    if (e) {
        fprintf(stderr, "FAIL [rank %d]: gradient path / BN averaging: %s\n", rank_, mn_err_name(e));
        mn_mpi_exit_error(MPI_COMM_WORLD, e);
    }
    TEST_EXPECT(skip == 0, "skip = %d on a finite step", skip);
    /* Expected totals and means, in double, from the same rules on every rank. */
    double enc_tot = 0, head_tot = 0;
    for (int r = 0; r < size_; r++) {
        enc_tot += samples_of(r);
        if (r % 2 == mine) head_tot += samples_of(r);
    }
    TEST_EXPECT(p->row[0].total_samples == enc_tot, "encoder total_samples %g, expected %g", p->row[0].total_samples,
                enc_tot);
    TEST_EXPECT(p->row[hrow].total_samples == head_tot, "head %s total_samples %g, expected %g", p->row[hrow].name,
                p->row[hrow].total_samples, head_tot);
    double worst = 0;
    for (int j = 0; j < BENC + BHEAD; j++) {
        int head = j >= BENC;
        double num = 0, den = 0;
        for (int r = 0; r < size_; r++) {
            if (head && r % 2 != mine) continue;
            num += samples_of(r) * bn_value(r, j), den += samples_of(r);
        }
        double want = den > 0 ? num / den : bn0[j]; /* no sample anywhere: unchanged */
        double err = mn_test_relerr(bn[j], want, 1e-6);
        if (err > worst) worst = err;
        TEST_EXPECT(err <= 1e-5, "rank %d BN[%d] (%s) = %.7g, expected the samples-weighted mean %.7g%s", rank_, j,
                    head ? p->row[hrow].name : "encoder", bn[j], want,
                    bn[j] > 100 ? " (the 0-sample holder's value counted)" : "");
        if (den == 0)
            TEST_EXPECT(memcmp(&bn[j], &bn0[j], sizeof(float)) == 0, "rank %d BN[%d] changed without samples", rank_,
                        j);
    }
    /* Bitwise identical on every holder: gather every rank's BN buffer and compare with the part's root. */
    float *all = mn_test_alloc((size_t)size_ * (BENC + BHEAD));
    MPI_Allgather(bn, BENC + BHEAD, MPI_FLOAT, all, BENC + BHEAD, MPI_FLOAT, MPI_COMM_WORLD);
    int differ = 0;
    for (int r = 0; r < size_; r++) {
        if (memcmp(all + (size_t)r * (BENC + BHEAD), all, sizeof(float) * BENC) != 0) differ++;
        if (r % 2 == mine && memcmp(all + (size_t)r * (BENC + BHEAD) + BENC, all + (size_t)mine * (BENC + BHEAD) + BENC,
                                    sizeof(float) * BHEAD) != 0)
            differ++;
    }
    free(all);
    TEST_EXPECT(differ == 0, "rank %d: %d BN replica(s) not bitwise identical to the part's root", rank_, differ);
    if (rank_ == 0)
        printf("BN averaging: encoder over %d ranks (total %g samples, ranks 0 and 1 none), heads over their holders;"
               " worst relative error %.2e, replicas bitwise identical\n", size_, enc_tot, worst);

    /* ---- 3. replica checks, agreed over the world ---- */
    double dt = 0, dt_head = 0, dt_enc = 0;
    e = timed_check(p, params, &dt);
    TEST_EXPECT(e == MN_OK, "rank %d: identical replicas gave %s", rank_, mn_err_name(e));

    /* One float of dataset 0's head on world rank 2 (holder, not root). */
    float saved = params[NENC];
    if (rank_ == 2) params[NENC] += 1.0f;
    int ok_everywhere = 1;
    e = timed_check(p, params, &dt_head);
    if (e == MN_OK) continue_like_a_run(next_step, "a head perturbed on rank 2");
    TEST_EXPECT(mn_err_is_agreed(e) && mn_err_code(e) == MN_ERR_INTERNAL,
                "rank %d (%s dataset 0): head mismatch gave 0x%x, expected an agreed MN_ERR_INTERNAL", rank_,
                mine == 0 ? "holds" : "does not hold", (unsigned)e);
    ok_everywhere &= e != MN_OK;
    params[NENC] = saved;

    /* One float of the encoder on the last rank. */
    saved = params[3];
    if (rank_ == size_ - 1) params[3] = nextafterf(params[3], 10.0f);
    e = timed_check(p, params, &dt_enc);
    if (e == MN_OK) continue_like_a_run(next_step, "the encoder perturbed on the last rank");
    TEST_EXPECT(mn_err_is_agreed(e) && mn_err_code(e) == MN_ERR_INTERNAL,
                "rank %d: encoder mismatch gave 0x%x, expected an agreed MN_ERR_INTERNAL", rank_, (unsigned)e);
    params[3] = saved;
    e = timed_check(p, params, &dt);
    TEST_EXPECT(e == MN_OK, "rank %d: restored replicas gave %s", rank_, mn_err_name(e));

    /* The next world collective after the checks: only reached by every rank if every rank got the verdict. */
    double t[2] = {dt_head, dt_enc}, tmax[2] = {0, 0};
    MPI_Barrier(MPI_COMM_WORLD);
    MPI_Allreduce(t, tmax, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (rank_ == 0)
        printf("replica checks on %d ranks: head mismatch on rank 2 agreed by every rank in %.4f s, encoder mismatch "
               "on rank %d in %.4f s (slowest rank)%s\n", size_, tmax[0], size_ - 1, tmax[1],
               ok_everywhere ? "" : " -- NOT on every rank");
    TEST_EXPECT(tmax[0] < 10 && tmax[1] < 10, "a replica check took %.2f / %.2f s", tmax[0], tmax[1]);

    mn_parts_destroy(&p);
    MPI_Comm_free(&next_step);
    int failed = mn_test_failures, any = 0;
    MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Finalize();
    if (rank_ == 0 && any) fprintf(stderr, "test_parts: %d check(s) FAILED over all ranks\n", any);
    if (any) return 1;
    return rank_ == 0 ? mn_test_finish("test_parts") : 0;
}
