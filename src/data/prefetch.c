/* prefetch.c: the I/O thread (mednet/prefetch.h).
 *
 * One job slot, one worker: the caller never submits a job before the previous one finished (it waits for a
 * running look-ahead before anything else), so a mutex, one condition variable each way and a state are all the
 * machinery.  A look-ahead writes into the prefetcher's own batch buffers and is copied out when it is asked for; a
 * synchronous draw writes straight into the caller's buffers.  Rejected: two look-aheads (index + 1 and + 2), which
 * would double the buffers for nothing while a draw is much shorter than a step.
 */
#include "mednet/prefetch.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { IDLE, PENDING, RUNNING, DONE, QUIT };

typedef struct job {
    mn_sampler *s;
    int64_t index;
    int n;
    float *x;
    int32_t *labels;
    int *dataset;
    float *weight;
    mn_err err;
} job;

struct mn_prefetch {
    int threaded, max_n;
    size_t vox;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t to_worker, to_caller;
    int state;
    job cur;           /* the job in the slot */
    int cur_ahead;     /* cur is a look-ahead */
    job la;            /* the last look-ahead, valid when la_valid: its batch is in the buffers below */
    int la_valid;
    float *x, *weight; /* look-ahead buffers */
    int32_t *labels;
    int *dataset;
    double wait_s;
    int64_t hits, draws;
};

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static mn_err run_job(job *j)
{
    return mn_sampler_next_weighted(j->s, j->index, j->n, j->x, j->labels, j->dataset, j->weight);
}

static void *worker(void *arg)
{
    mn_prefetch *pf = arg;
    pthread_mutex_lock(&pf->mu);
    for (;;) {
        while (pf->state != PENDING && pf->state != QUIT) pthread_cond_wait(&pf->to_worker, &pf->mu);
        if (pf->state == QUIT) break;
        pf->state = RUNNING;
        job j = pf->cur;
        pthread_mutex_unlock(&pf->mu);
        j.err = run_job(&j);
        pthread_mutex_lock(&pf->mu);
        pf->cur.err = j.err;
        pf->state = DONE;
        pthread_cond_broadcast(&pf->to_caller);
    }
    pthread_mutex_unlock(&pf->mu);
    return NULL;
}

/* Caller, mutex held: wait until the slot holds no pending or running job. */
static void wait_done(mn_prefetch *pf)
{
    while (pf->state == PENDING || pf->state == RUNNING) pthread_cond_wait(&pf->to_caller, &pf->mu);
    if (pf->cur_ahead) pf->la.err = pf->cur.err, pf->cur_ahead = 0;
}

mn_err mn_prefetch_create(int threaded, int max_n, const int crop[3], mn_prefetch **out)
{
    *out = NULL;
    MN_CHECK(max_n > 0, MN_ERR_ARG, "prefetch: batch %d", max_n);
    mn_prefetch *pf = calloc(1, sizeof *pf);
    MN_CHECK(pf, MN_ERR_MEM, "out of memory");
    pf->threaded = threaded, pf->max_n = max_n;
    pf->vox = (size_t)crop[0] * (size_t)crop[1] * (size_t)crop[2];
    if (threaded) {
        size_t nv = pf->vox * (size_t)max_n;
        pf->x = malloc(nv * sizeof *pf->x);
        pf->labels = malloc(nv * sizeof *pf->labels);
        pf->dataset = malloc((size_t)max_n * sizeof *pf->dataset);
        pf->weight = malloc((size_t)max_n * sizeof *pf->weight);
        if (!pf->x || !pf->labels || !pf->dataset || !pf->weight) {
            pf->threaded = 0;
            mn_prefetch_destroy(&pf);
            MN_FAIL(MN_ERR_MEM, "out of memory for the look-ahead batch (%d crops)", max_n);
        }
        pthread_mutex_init(&pf->mu, NULL);
        pthread_cond_init(&pf->to_worker, NULL);
        pthread_cond_init(&pf->to_caller, NULL);
        pf->state = IDLE;
        int rc = pthread_create(&pf->thread, NULL, worker, pf);
        if (rc) {
            pthread_mutex_destroy(&pf->mu);
            pthread_cond_destroy(&pf->to_worker);
            pthread_cond_destroy(&pf->to_caller);
            pf->threaded = 0;
            mn_prefetch_destroy(&pf);
            MN_FAIL(MN_ERR_INTERNAL, "cannot start the I/O thread: %s", strerror(rc));
        }
    }
    *out = pf;
    return MN_OK;
}

void mn_prefetch_destroy(mn_prefetch **ppf)
{
    if (!ppf || !*ppf) return;
    mn_prefetch *pf = *ppf;
    if (pf->threaded) {
        pthread_mutex_lock(&pf->mu);
        wait_done(pf);
        pf->state = QUIT;
        pthread_cond_broadcast(&pf->to_worker);
        pthread_mutex_unlock(&pf->mu);
        pthread_join(pf->thread, NULL);
        pthread_mutex_destroy(&pf->mu);
        pthread_cond_destroy(&pf->to_worker);
        pthread_cond_destroy(&pf->to_caller);
    }
    free(pf->x), free(pf->labels), free(pf->dataset), free(pf->weight);
    free(pf);
    *ppf = NULL;
}

void mn_prefetch_quiesce(mn_prefetch *pf)
{
    if (!pf || !pf->threaded) return;
    double t0 = now_s();
    pthread_mutex_lock(&pf->mu);
    wait_done(pf);
    pthread_mutex_unlock(&pf->mu);
    pf->wait_s += now_s() - t0;
}

mn_err mn_prefetch_next(mn_prefetch *pf, mn_sampler *s, int64_t index, int n, float *x, int32_t *labels, int *dataset,
                        float *weight, int ahead)
{
    MN_CHECK(pf && s && n > 0 && n <= pf->max_n, MN_ERR_ARG, "prefetch: batch of %d crops (at most %d)", n,
             pf ? pf->max_n : 0);
    pf->draws++;
    if (!pf->threaded) {
        MN_CALL(mn_sampler_next_weighted(s, index, n, x, labels, dataset, weight));
        return MN_OK;
    }
    double t0 = now_s();
    pthread_mutex_lock(&pf->mu);
    wait_done(pf);
    mn_err e;
    if (pf->la_valid && pf->la.s == s && pf->la.index == index && pf->la.n == n) {
        /* The look-ahead is this batch. */
        pf->la_valid = 0;
        e = pf->la.err;
        if (!e) {
            memcpy(x, pf->x, (size_t)n * pf->vox * sizeof *x);
            memcpy(labels, pf->labels, (size_t)n * pf->vox * sizeof *labels);
            if (dataset) memcpy(dataset, pf->dataset, (size_t)n * sizeof *dataset);
            if (weight) memcpy(weight, pf->weight, (size_t)n * sizeof *weight);
        }
        pf->hits++;
    } else {
        /* Draw it now, on the I/O thread (into the caller's buffers: a look-ahead of another sampler, such as the
         * training stream during an evaluation, stays valid). */
        pf->cur = (job){s, index, n, x, labels, dataset, weight, MN_OK};
        pf->state = PENDING;
        pthread_cond_signal(&pf->to_worker);
        wait_done(pf);
        e = pf->cur.err;
    }
    if (!e && ahead) {
        pf->cur = pf->la = (job){s, index + 1, n, pf->x, pf->labels, pf->dataset, pf->weight, MN_OK};
        pf->la_valid = pf->cur_ahead = 1;
        pf->state = PENDING;
        pthread_cond_signal(&pf->to_worker);
    }
    pthread_mutex_unlock(&pf->mu);
    pf->wait_s += now_s() - t0;
    MN_CHECK(!e, e, "called from drawing batch %lld", (long long)index);
    return MN_OK;
}

void mn_prefetch_stats(const mn_prefetch *pf, double *wait_s, int64_t *ahead_hits, int64_t *draws)
{
    *wait_s = pf->wait_s, *ahead_hits = pf->hits, *draws = pf->draws;
}
