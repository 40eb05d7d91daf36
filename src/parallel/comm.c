/* comm.c: communicators (world duplicate, one per dataset), broadcast, averaging, flag
 * agreement and replica-consistency checks.
 *
 * Per-dataset communicators come from MPI_Comm_split on the world duplicate, one split per dataset, with
 * color = d for holders and MPI_UNDEFINED for the others (who get MPI_COMM_NULL), key = world rank.  Chosen over
 * MPI_Comm_create_group because the split is collective over the world, so a holder table that differs between
 * ranks cannot leave some ranks waiting in a group-collective that others never enter; the table is also hashed
 * and compared before any split.  The cost, ndatasets collectives over the world, is paid once at start-up.
 *
 * Replica checks hash the bytes (XXH64, four 64-bit lanes, about memory bandwidth) and all-gather the 8-byte
 * hashes: one tiny collective instead of moving the parameters.
 */
#include "mednet/dist.h"
#include "mednet/mem.h"
#include "mednet/mpicheck.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* MPI counts are int: move large buffers in pieces of 2^30 elements. */
#define MN_DIST_CHUNK ((size_t)1 << 30)

static void free_partial(mn_dist *d)
{
    if (!d) return;
    if (d->dcomm) {
        for (int i = 0; i < d->ndatasets; i++)
            if (d->dcomm[i] != MPI_COMM_NULL) MPI_Comm_free(&d->dcomm[i]);
    }
    if (d->world != MPI_COMM_NULL) MPI_Comm_free(&d->world);
    mn_free(&d->dcomm);
    mn_free(&d->holds);
    mn_free(&d);
}

/* Body of mn_dist_create; on error the caller frees the partial object. */
static mn_err dist_setup(MPI_Comm parent, int ndatasets, const int *holders, mn_dist *d)
{
    MN_MPI(MPI_Comm_dup(parent, &d->world));
    MN_MPI(MPI_Comm_set_errhandler(d->world, MPI_ERRORS_RETURN));
    MN_MPI(MPI_Comm_rank(d->world, &d->rank));
    MN_MPI(MPI_Comm_size(d->world, &d->size));
    size_t cells = (size_t)ndatasets * (size_t)d->size;
    MN_CALL(mn_calloc(cells ? cells : 1, "dist holder table", (void **)&d->holds));
    MN_CALL(mn_malloc(sizeof(MPI_Comm) * (size_t)(ndatasets ? ndatasets : 1), "dist dataset comms",
                      (void **)&d->dcomm));
    for (int i = 0; i < ndatasets; i++) d->dcomm[i] = MPI_COMM_NULL;
    d->ndatasets = ndatasets;

    /* Normalise the table to 0/1 and check it locally; then agree on the outcome so every rank fails together. */
    mn_err local = MN_OK;
    int bad_ds = -1;
    for (int ds = 0; ds < ndatasets; ds++) {
        int n = 0;
        for (int r = 0; r < d->size; r++) {
            d->holds[(size_t)ds * d->size + r] = holders[(size_t)ds * d->size + r] != 0;
            n += holders[(size_t)ds * d->size + r] != 0;
        }
        if (n == 0 && bad_ds < 0) bad_ds = ds, local = MN_ERR_ARG;
    }
    mn_err agreed = mn_mpi_agree(d->world, local);
    MN_CHECK(bad_ds < 0, MN_ERR_ARG,
             "holder table: dataset %d is held by no rank (every dataset needs at least one holder)", bad_ds);
    MN_CHECK(agreed == MN_OK, agreed, "holder table rejected on another rank");
    MN_CALL(mn_dist_check_replicas(d->world, d->holds, cells, "holder table", NULL));

    for (int ds = 0; ds < ndatasets; ds++) {
        int color = d->holds[(size_t)ds * d->size + d->rank] ? ds : MPI_UNDEFINED;
        MN_MPI(MPI_Comm_split(d->world, color, d->rank, &d->dcomm[ds]));
        if (d->dcomm[ds] != MPI_COMM_NULL) MN_MPI(MPI_Comm_set_errhandler(d->dcomm[ds], MPI_ERRORS_RETURN));
    }
    return MN_OK;
}

mn_err mn_dist_create(MPI_Comm parent, int ndatasets, const int *holders, mn_dist **out)
{
    MN_CHECK(out != NULL, MN_ERR_ARG, "out is NULL");
    *out = NULL;
    MN_CHECK(ndatasets >= 0, MN_ERR_ARG, "ndatasets must be >= 0, got %d", ndatasets);
    MN_CHECK(ndatasets == 0 || holders != NULL, MN_ERR_ARG, "holder table is NULL for %d datasets", ndatasets);
    mn_dist *d = NULL;
    MN_CALL(mn_calloc(sizeof *d, "mn_dist", (void **)&d));
    d->world = MPI_COMM_NULL;
    mn_err e = dist_setup(parent, ndatasets, holders, d);
    if (e != MN_OK) {
        free_partial(d);
        MN_FAIL(e, "could not set up the communicators for %d dataset(s)", ndatasets);
    }
    *out = d;
    return MN_OK;
}

mn_err mn_dist_destroy(mn_dist **pd)
{
    if (!pd || !*pd) return MN_OK;
    mn_dist *d = *pd;
    *pd = NULL;
    mn_err err = MN_OK;
    for (int i = 0; i < d->ndatasets; i++) {
        if (d->dcomm[i] == MPI_COMM_NULL) continue;
        int rc = MPI_Comm_free(&d->dcomm[i]);
        if (rc != MPI_SUCCESS) err = mn_mpi_report(rc, "MPI_Comm_free(dataset comm)", __FILE__, __LINE__, __func__);
    }
    int rc = MPI_Comm_free(&d->world);
    if (rc != MPI_SUCCESS) err = mn_mpi_report(rc, "MPI_Comm_free(world dup)", __FILE__, __LINE__, __func__);
    mn_free(&d->dcomm);
    mn_free(&d->holds);
    mn_free(&d);
    return err;
}

int mn_dist_holds(const mn_dist *d, int ds)
{
    if (!d || ds < 0 || ds >= d->ndatasets) return 0;
    return d->holds[(size_t)ds * d->size + d->rank];
}

int mn_dist_nholders(const mn_dist *d, int ds)
{
    if (!d || ds < 0 || ds >= d->ndatasets) return 0;
    int n = 0;
    for (int r = 0; r < d->size; r++) n += d->holds[(size_t)ds * d->size + r];
    return n;
}

int mn_dist_root(const mn_dist *d, int ds)
{
    if (!d || ds < 0 || ds >= d->ndatasets) return -1;
    for (int r = 0; r < d->size; r++)
        if (d->holds[(size_t)ds * d->size + r]) return r;
    return -1;
}

mn_err mn_dist_bcast_floats(MPI_Comm comm, float *buf, size_t n, int root)
{
    for (size_t off = 0; off < n; off += MN_DIST_CHUNK) {
        size_t len = n - off < MN_DIST_CHUNK ? n - off : MN_DIST_CHUNK;
        MN_MPI(MPI_Bcast(buf + off, (int)len, MPI_FLOAT, root, comm));
    }
    return MN_OK;
}

mn_err mn_dist_agree_flag(MPI_Comm comm, int local, int *global)
{
    MN_CHECK(global != NULL, MN_ERR_ARG, "global is NULL");
    MN_MPI(MPI_Allreduce(&local, global, 1, MPI_INT, MPI_MAX, comm));
    return MN_OK;
}

mn_err mn_dist_node_count(MPI_Comm comm, int *nodes, int *max_per_node)
{
    MN_CHECK(nodes != NULL, MN_ERR_ARG, "nodes is NULL");
    MPI_Comm local = MPI_COMM_NULL;
    int rank = 0, lrank = 0, lsize = 0;
    MN_MPI(MPI_Comm_rank(comm, &rank));
    MN_MPI(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &local));
    mn_err e = mn_mpi_report_if(MPI_Comm_rank(local, &lrank));
    if (!e) e = mn_mpi_report_if(MPI_Comm_size(local, &lsize));
    mn_err ef = mn_mpi_report_if(MPI_Comm_free(&local));
    if (!e) e = ef;
    MN_CALL(e);
    int leader = lrank == 0, count = 0, most = 0;
    MN_MPI(MPI_Allreduce(&leader, &count, 1, MPI_INT, MPI_SUM, comm));
    MN_MPI(MPI_Allreduce(&lsize, &most, 1, MPI_INT, MPI_MAX, comm));
    *nodes = count;
    if (max_per_node) *max_per_node = most;
    return MN_OK;
}

/* ---- XXH64 ---- */

static const uint64_t P1 = 0x9E3779B185EBCA87ULL, P2 = 0xC2B2AE3D27D4EB4FULL, P3 = 0x165667B19E3779F9ULL,
                      P4 = 0x85EBCA77C2B2AE63ULL, P5 = 0x27D4EB2F165667C5ULL;

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static inline uint64_t rd64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8); /* little-endian hosts only: x86-64 and aarch64 */
    return v;
}
static inline uint32_t rd32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static inline uint64_t xxround(uint64_t acc, uint64_t in) { return rotl64(acc + in * P2, 31) * P1; }
static inline uint64_t xxmerge(uint64_t acc, uint64_t v) { return (acc ^ xxround(0, v)) * P1 + P4; }

uint64_t mn_hash64(const void *data, size_t bytes)
{
    const unsigned char *p = data, *end = p + bytes;
    uint64_t h;
    if (bytes >= 32) {
        uint64_t v1 = P1 + P2, v2 = P2, v3 = 0, v4 = 0 - P1;
        for (; p + 32 <= end; p += 32) {
            v1 = xxround(v1, rd64(p));
            v2 = xxround(v2, rd64(p + 8));
            v3 = xxround(v3, rd64(p + 16));
            v4 = xxround(v4, rd64(p + 24));
        }
        h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
        h = xxmerge(h, v1);
        h = xxmerge(h, v2);
        h = xxmerge(h, v3);
        h = xxmerge(h, v4);
    } else {
        h = P5;
    }
    h += (uint64_t)bytes;
    for (; p + 8 <= end; p += 8) h = rotl64(h ^ xxround(0, rd64(p)), 27) * P1 + P4;
    if (p + 4 <= end) {
        h = rotl64(h ^ (uint64_t)rd32(p) * P1, 23) * P2 + P3;
        p += 4;
    }
    for (; p < end; p++) h = rotl64(h ^ (uint64_t)*p * P5, 11) * P1;
    h ^= h >> 33;
    h *= P2;
    h ^= h >> 29;
    h *= P3;
    h ^= h >> 32;
    return h;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Occurrences of v in the sorted array s[0..n): upper bound minus lower bound. */
static int count_sorted(const uint64_t *s, int n, uint64_t v)
{
    int lo = 0, hi = n;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (s[mid] < v) lo = mid + 1;
        else hi = mid;
    }
    int first = lo;
    hi = n;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (s[mid] <= v) lo = mid + 1;
        else hi = mid;
    }
    return lo - first;
}

mn_err mn_dist_check_replicas(MPI_Comm comm, const void *buf, size_t bytes, const char *what, int *nbad)
{
    if (nbad) *nbad = 0;
    if (comm == MPI_COMM_NULL) return MN_OK;
    int size = 0;
    MN_MPI(MPI_Comm_size(comm, &size));
    uint64_t mine = mn_hash64(buf, bytes);
    uint64_t *all = NULL;
    MN_CALL(mn_malloc(sizeof(uint64_t) * (size_t)size, "replica hashes", (void **)&all));
    int rc = MPI_Allgather(&mine, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, comm);
    if (rc != MPI_SUCCESS) {
        mn_free(&all);
        return mn_mpi_report(rc, "MPI_Allgather(replica hashes)", __FILE__, __LINE__, __func__);
    }
    /* The common case, every hash equal, costs one pass.  Otherwise the reference is the most frequent hash, ties
     * broken towards the lowest rank: count each rank's hash in a sorted copy (O(P log P), fine for 10^5 ranks). */
    int best = 0, best_n = size;
    for (int i = 1; i < size; i++)
        if (all[i] != all[0]) {
            best_n = 0;
            break;
        }
    if (best_n == 0) {
        uint64_t *sorted = NULL;
        mn_err e = mn_malloc(sizeof(uint64_t) * (size_t)size, "sorted replica hashes", (void **)&sorted);
        if (e != MN_OK) {
            mn_free(&all);
            return e;
        }
        memcpy(sorted, all, sizeof(uint64_t) * (size_t)size);
        qsort(sorted, (size_t)size, sizeof *sorted, cmp_u64);
        for (int i = 0; i < size; i++) {
            int n = count_sorted(sorted, size, all[i]);
            if (n > best_n) best = i, best_n = n;
        }
        mn_free(&sorted);
    }
    int bad = size - best_n;
    if (nbad) *nbad = bad;
    if (bad == 0) {
        mn_free(&all);
        return MN_OK;
    }
    /* Name the ranks by their MPI_COMM_WORLD rank, which is what the "[rank r]" prefixes of the logs show. */
    int *world_ranks = NULL, *local = NULL;
    MPI_Group g = MPI_GROUP_NULL, gw = MPI_GROUP_NULL;
    if (mn_malloc(sizeof(int) * 2 * (size_t)size, "rank translation", (void **)&local) == MN_OK) {
        world_ranks = local + size;
        for (int i = 0; i < size; i++) local[i] = i;
        if (MPI_Comm_group(comm, &g) != MPI_SUCCESS || MPI_Comm_group(MPI_COMM_WORLD, &gw) != MPI_SUCCESS ||
            MPI_Group_translate_ranks(g, size, local, gw, world_ranks) != MPI_SUCCESS)
            world_ranks = local;
    }
    if (g != MPI_GROUP_NULL) MPI_Group_free(&g);
    if (gw != MPI_GROUP_NULL) MPI_Group_free(&gw);
    char list[512] = "";
    size_t used = 0;
    int listed = 0;
    for (int i = 0; i < size && used < sizeof list - 32; i++) {
        if (all[i] == all[best]) continue;
        used += (size_t)snprintf(list + used, sizeof list - used, "%s%d", listed ? ", " : "",
                                 world_ranks ? world_ranks[i] : i);
        listed++;
    }
    mn_free(&local);
    if (listed < bad) snprintf(list + used, sizeof list - used, ", ...");
    uint64_t ref = all[best];
    mn_free(&all);
    MN_FAIL(MN_ERR_INTERNAL,
            "replica mismatch in %s (%zu bytes): world rank(s) %s (of %d in the communicator) differ from the "
            "majority hash %016llx held by %d rank(s)",
            what ? what : "buffer", bytes, list, size, (unsigned long long)ref, best_n);
}
