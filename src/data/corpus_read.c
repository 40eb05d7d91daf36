/* corpus_read.c: reading a corpus: metadata (rank 0 reads, everyone receives), the deterministic shard
 * assignment, and the per-rank shard load with independent MPI-IO reads.
 *
 * Metadata is small and read by rank 0 alone with the serial driver, then broadcast as three flat arrays
 * (header, datasets, volumes: all plain structs), so opening a corpus on thousands of ranks costs one reader and
 * three broadcasts, and any inconsistency in the file is the same error on every rank.
 *
 * Errors are agreed (mn_agree) before every collective call: whatever can fail on one rank only (the file as this
 * node sees it, memory, the voxels this rank reads) is local work whose outcome every rank learns together, so a
 * bad path on one node or a corrupt volume ends the job cleanly instead of leaving ranks waiting.  Before any
 * collective open, every rank checks with plain POSIX calls that it can read the file (mn_corpus_check_readable).
 *
 * The voxels are read with the MPI-IO driver and INDEPENDENT transfers, collective metadata operations off: the
 * file is opened and closed collectively, and in between each rank opens and reads only its own volumes.  Rejected:
 * one collective H5Dread per volume held by any rank (holders select the volume, the others nothing).  That costs
 * O(volumes) collective calls on every rank, and a rank whose read or CRC check fails inside the loop either leaves
 * the others waiting in the next collective read or has to go on issuing empty collective reads until the end; a
 * whole chunked dataset read independently is one contiguous request per chunk anyway.
 */
#include "corpus_impl.h"
#include "mednet/limits.h"
#include "mednet/mpicheck.h"

#include <stdlib.h>
#include <string.h>

static const char *role_name(mn_role r)
{
    return r == MN_ROLE_TARGET ? "target" : r == MN_ROLE_EXCLUDED ? "excluded" : "pretrain";
}

/* Rank 0: read the metadata of an open file into info (arrays allocated here). */
static mn_err read_meta(hid_t file, const char *path, mn_corpus_info *info)
{
    int64_t fmt = 0, nd = 0;
    MN_CALL(mn_h5_read_i64(file, "format_version", &fmt, 1, path));
    MN_CHECK(fmt == MN_CORPUS_FORMAT, MN_ERR_FORMAT, "corpus '%s' has format version %lld, this mednet reads "
             "version %d\n---> HINT: rebuild it with `mednet prep`", path, (long long)fmt, MN_CORPUS_FORMAT);
    info->format_version = (int)fmt;
    MN_CALL(mn_h5_read_str(file, "mednet_version", info->mednet_version, sizeof info->mednet_version, path));
    MN_CALL(mn_h5_read_str(file, "name", info->name, sizeof info->name, path));
    MN_CALL(mn_h5_read_u32(file, "checksum", &info->checksum, path));
    MN_CALL(mn_h5_read_i64(file, "num_datasets", &nd, 1, path));
    MN_CHECK(nd > 0 && nd <= MN_MAX_CORPUS_DATASETS, MN_ERR_FORMAT, "corpus '%s': num_datasets = %lld, expected 1 "
             "to %d (corrupt file?)", path, (long long)nd, MN_MAX_CORPUS_DATASETS);
    info->num_datasets = (int)nd;
    info->datasets = calloc((size_t)nd, sizeof *info->datasets);
    char *names = calloc((size_t)nd, MN_CORPUS_NAME_LEN);
    MN_CHECK(info->datasets && names, MN_ERR_MEM, "out of memory");
    mn_err e = mn_h5_read_strs(file, "datasets", names, (int)nd, MN_CORPUS_NAME_LEN, path);
    for (int d = 0; d < nd && !e; d++) {
        mn_corpus_dataset *ds = &info->datasets[d];
        snprintf(ds->name, sizeof ds->name, "%s", names + (size_t)d * MN_CORPUS_NAME_LEN);
        if (H5Lexists(file, ds->name, H5P_DEFAULT) <= 0)
            e = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__, "corpus '%s': dataset '%s' is listed "
                                "in the root attribute 'datasets' but its group is missing (truncated or edited "
                                "file?)", path, ds->name);
    }
    free(names);
    MN_CHECK(!e, e, "called from reading the dataset names");
    int cap = 64;
    info->volumes = calloc((size_t)cap, sizeof *info->volumes);
    MN_CHECK(info->volumes, MN_ERR_MEM, "out of memory");
    for (int d = 0; d < nd; d++) {
        mn_corpus_dataset *ds = &info->datasets[d];
        char what[1200];
        snprintf(what, sizeof what, "corpus '%s' dataset '%s'", path, ds->name);
        hid_t g;
        MN_H5(g = H5Gopen2(file, ds->name, H5P_DEFAULT));
        int64_t ncls = 0, nvol = 0;
        char role[16];
        MN_CALL(mn_h5_read_str(g, "modality", ds->modality, sizeof ds->modality, what));
        MN_CALL(mn_h5_read_str(g, "role", role, sizeof role, what));
        ds->role = strcmp(role, "target") ? MN_ROLE_PRETRAIN : MN_ROLE_TARGET;
        /* Files written before classification existed have no task: segmentation. */
        char task[32] = "segmentation";
        htri_t has_task = H5Aexists(g, "task");
        MN_CHECK(has_task >= 0, MN_ERR_HDF5, "%s: H5Aexists(task) failed", what);
        if (has_task) MN_CALL(mn_h5_read_str(g, "task", task, sizeof task, what));
        MN_CHECK(!strcmp(task, "segmentation") || !strcmp(task, "classification"), MN_ERR_FORMAT,
                 "%s: task = '%s' (expected segmentation or classification)", what, task);
        ds->task = strcmp(task, "classification") ? MN_TASK_SEG : MN_TASK_CLS;
        MN_CALL(mn_h5_read_i64(g, "num_classes", &ncls, 1, what));
        MN_CHECK(ncls >= 2 && ncls <= MN_CORPUS_MAX_CLASSES, MN_ERR_FORMAT, "%s: num_classes = %lld", what,
                 (long long)ncls);
        ds->num_classes = (int)ncls;
        MN_CALL(mn_h5_read_strs(g, "class_names", ds->class_names[0], ds->num_classes, MN_CORPUS_NAME_LEN, what));
        MN_CALL(mn_h5_read_f64(g, "spacing", ds->spacing, 3, what));
        char norm[16];
        int64_t aa = 0;
        MN_CALL(mn_h5_read_str(g, "normalisation", norm, sizeof norm, what));
        ds->normalisation = !strcmp(norm, "ct") ? MN_NORM_CT : !strcmp(norm, "window") ? MN_NORM_WINDOW
                          : !strcmp(norm, "none") ? MN_NORM_NONE : MN_NORM_ZSCORE;
        MN_CHECK(!strcmp(norm, "zscore") || ds->normalisation != MN_NORM_ZSCORE, MN_ERR_FORMAT,
                 "%s: normalisation = '%s' (expected zscore, ct, window or none)", what, norm);
        MN_CALL(mn_h5_read_f64(g, "norm_clip", ds->norm_clip, 2, what));
        MN_CALL(mn_h5_read_f64(g, "norm_mean", &ds->norm_mean, 1, what));
        MN_CALL(mn_h5_read_f64(g, "norm_std", &ds->norm_std, 1, what));
        MN_CALL(mn_h5_read_i64(g, "antialias", &aa, 1, what));
        ds->antialias = aa != 0;
        MN_CALL(mn_h5_read_i64(g, "num_volumes", &nvol, 1, what));
        MN_CHECK(nvol > 0 && nvol < 10000000, MN_ERR_FORMAT, "%s: num_volumes = %lld", what, (long long)nvol);
        ds->num_volumes = (int)nvol;
        ds->first_volume = info->num_volumes;
        for (int v = 0; v < nvol; v++) {
            if (info->num_volumes == cap) {
                mn_corpus_volume *nv = realloc(info->volumes, (size_t)(cap *= 2) * sizeof *nv);
                MN_CHECK(nv, MN_ERR_MEM, "out of memory");
                info->volumes = nv;
            }
            mn_corpus_volume *vol = &info->volumes[info->num_volumes++];
            memset(vol, 0, sizeof *vol);
            vol->dataset = d, vol->index = v;
            char name[32], vwhat[1300];
            snprintf(name, sizeof name, "vol_%04d", v);
            snprintf(vwhat, sizeof vwhat, "%s volume '%s'", what, name);
            MN_CHECK(H5Lexists(g, name, H5P_DEFAULT) > 0, MN_ERR_FORMAT, "%s is missing (num_volumes = %lld; "
                     "truncated or edited file?)", vwhat, (long long)nvol);
            hid_t vg;
            MN_H5(vg = H5Gopen2(g, name, H5P_DEFAULT));
            MN_CALL(mn_h5_read_f64(vg, "foreground_share", &vol->foreground_share, 1, vwhat));
            MN_CALL(mn_h5_read_u32(vg, "data_crc32", &vol->data_crc32, vwhat));
            vol->cls = -1;
            if (ds->task == MN_TASK_CLS) {
                int32_t k = -1;
                MN_CALL(mn_h5_read_i32(vg, "class", &k, vwhat));
                MN_CHECK(k >= 0 && k < ds->num_classes, MN_ERR_FORMAT, "%s: class = %d outside 0..%d", vwhat, (int)k,
                         ds->num_classes - 1);
                vol->cls = k;
            }
            for (int k = 0; k < 2; k++) {
                const char *dn = k ? "label" : "image";
                MN_CHECK(H5Lexists(vg, dn, H5P_DEFAULT) > 0, MN_ERR_FORMAT, "%s: dataset '%s' is missing", vwhat, dn);
                hid_t dset, sp;
                MN_H5(dset = H5Dopen2(vg, dn, H5P_DEFAULT));
                MN_H5(sp = H5Dget_space(dset));
                hsize_t dims[3] = {0, 0, 0};
                int rk = H5Sget_simple_extent_ndims(sp);
                MN_CHECK(rk == 3, MN_ERR_FORMAT, "%s: '%s' has rank %d, expected 3 (D, H, W)", vwhat, dn, rk);
                MN_H5(H5Sget_simple_extent_dims(sp, dims, NULL));
                MN_H5(H5Sclose(sp));
                MN_H5(H5Dclose(dset));
                for (int a = 0; a < 3; a++) {
                    if (k == 0) vol->shape[a] = (int64_t)dims[a];
                    MN_CHECK((int64_t)dims[a] == vol->shape[a] && dims[a] > 0, MN_ERR_FORMAT,
                             "%s: image and label shapes differ", vwhat);
                }
                /* The shard load allocates what the shape claims: bounded here, before anyone allocates. */
                MN_CHECK(dims[0] <= (hsize_t)MN_MAX_VOLUME_EXTENT && dims[1] <= (hsize_t)MN_MAX_VOLUME_EXTENT &&
                         dims[2] <= (hsize_t)MN_MAX_VOLUME_EXTENT &&
                         (int64_t)(dims[0] * dims[1] * dims[2]) <= MN_MAX_VOLUME_VOXELS, MN_ERR_FORMAT,
                         "%s: '%s' claims %llux%llux%llu voxels, more than mednet's limit of %lld per volume "
                         "(corrupt file?)", vwhat, dn, (unsigned long long)dims[0], (unsigned long long)dims[1],
                         (unsigned long long)dims[2], (long long)MN_MAX_VOLUME_VOXELS);
            }
            MN_H5(H5Gclose(vg));
        }
        MN_H5(H5Gclose(g));
    }
    return MN_OK;
}

void mn_corpus_info_destroy(mn_corpus_info **pinfo)
{
    if (!pinfo || !*pinfo) return;
    free((*pinfo)->datasets);
    free((*pinfo)->volumes);
    free(*pinfo);
    *pinfo = NULL;
}

/* Rank 0, local work: open the file with the serial driver and read its metadata. */
static mn_err read_rank0(const char *path, mn_corpus_info *info)
{
    hid_t fapl, file;
    MN_CALL(mn_corpus_fapl(MPI_COMM_NULL, 0, NULL, &fapl));
    /* Strong close: H5Fclose also closes any object an error path left open. */
    MN_H5(H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG));
    file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    H5Pclose(fapl);
    MN_CHECK(file >= 0, MN_ERR_FORMAT, "cannot open corpus '%s' as HDF5: the file is truncated, corrupt or not an "
             "HDF5 file", path);
    mn_err e = read_meta(file, path, info);
    MN_H5(H5Fclose(file));
    MN_CHECK(!e, e, "called from read_meta");
    return MN_OK;
}

/* Every rank but 0, local work: room for the broadcast arrays. */
static mn_err alloc_meta(mn_corpus_info *info)
{
    info->datasets = calloc((size_t)info->num_datasets, sizeof *info->datasets);
    info->volumes = calloc((size_t)info->num_volumes, sizeof *info->volumes);
    MN_CHECK(info->datasets && info->volumes, MN_ERR_MEM, "out of memory for the corpus metadata (%d datasets, %d "
             "volumes)", info->num_datasets, info->num_volumes);
    return MN_OK;
}

mn_err mn_corpus_open(MPI_Comm comm, const char *path, mn_corpus_info **out)
{
    *out = NULL;
    int rank = 0;
    MN_MPI(MPI_Comm_rank(comm, &rank));
    /* Step 1: every rank can read the file (a rank that cannot must not leave the others waiting below). */
    mn_err e = mn_h5_init();
    mn_corpus_info *info = calloc(1, sizeof *info);
    if (!e && !info) e = mn_error_report(MN_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory");
    e = mn_agree(comm, e);
    if (!e) e = mn_corpus_check_readable(comm, path);
    /* Step 2: rank 0 reads the metadata (local work), the outcome is agreed. */
    if (!e) e = mn_agree(comm, rank == 0 ? read_rank0(path, info) : MN_OK);
    if (e) {
        mn_corpus_info_destroy(&info);
        MN_CHECK(!e, e, "called from opening corpus '%s'", path);
    }
    /* Step 3: header (everything but the two arrays), room for the arrays (agreed), the arrays. */
    mn_corpus_dataset *ds = info->datasets;
    mn_corpus_volume *vs = info->volumes;
    MN_MPI(MPI_Bcast(info, (int)sizeof *info, MPI_BYTE, 0, comm));
    info->datasets = ds, info->volumes = vs;
    e = mn_agree(comm, rank != 0 ? alloc_meta(info) : MN_OK);
    if (e) {
        mn_corpus_info_destroy(&info);
        MN_CHECK(!e, e, "called from opening corpus '%s'", path);
    }
    MN_MPI(MPI_Bcast(info->datasets, (int)(info->num_datasets * sizeof *info->datasets), MPI_BYTE, 0, comm));
    MN_MPI(MPI_Bcast(info->volumes, (int)(info->num_volumes * sizeof *info->volumes), MPI_BYTE, 0, comm));
    snprintf(info->path, sizeof info->path, "%s", path);
    *out = info;
    return MN_OK;
}

void mn_corpus_print_summary(const mn_corpus_info *info, FILE *f)
{
    fprintf(f, "corpus '%s' (%s): %d dataset(s), %d volume(s), checksum %08x, format %d, written by mednet %s\n",
            info->name, info->path, info->num_datasets, info->num_volumes, (unsigned)info->checksum,
            info->format_version, info->mednet_version);
    fprintf(f, "  %-24s %-8s %-5s %4s %-22s %-16s %7s  %s\n", "dataset", "role", "mod", "vols", "shape (DxHxW)",
            "spacing (mm)", "fg %", "classes");
    for (int d = 0; d < info->num_datasets; d++) {
        const mn_corpus_dataset *ds = &info->datasets[d];
        double fg = 0;
        int64_t mn[3], mx[3];
        for (int a = 0; a < 3; a++) mn[a] = INT64_MAX, mx[a] = 0;
        for (int v = 0; v < ds->num_volumes; v++) {
            const mn_corpus_volume *vol = &info->volumes[ds->first_volume + v];
            fg += vol->foreground_share;
            for (int a = 0; a < 3; a++) {
                if (vol->shape[a] < mn[a]) mn[a] = vol->shape[a];
                if (vol->shape[a] > mx[a]) mx[a] = vol->shape[a];
            }
        }
        char shape[64], sp[64], cls[512] = "";
        if (ds->num_volumes > 1 && (mn[0] != mx[0] || mn[1] != mx[1] || mn[2] != mx[2]))
            snprintf(shape, sizeof shape, "%lldx%lldx%lld..%lldx%lldx%lld", (long long)mn[0], (long long)mn[1],
                     (long long)mn[2], (long long)mx[0], (long long)mx[1], (long long)mx[2]);
        else
            snprintf(shape, sizeof shape, "%lldx%lldx%lld", (long long)mn[0], (long long)mn[1], (long long)mn[2]);
        snprintf(sp, sizeof sp, "%.3gx%.3gx%.3g", ds->spacing[0], ds->spacing[1], ds->spacing[2]);
        for (int k = 0; k < ds->num_classes; k++) {
            strncat(cls, ds->class_names[k], sizeof cls - strlen(cls) - 1);
            if (k + 1 < ds->num_classes) strncat(cls, ",", sizeof cls - strlen(cls) - 1);
        }
        fprintf(f, "  %-24s %-8s %-5s %4d %-22s %-16s %7.2f  %d: %s%s\n", ds->name, role_name(ds->role), ds->modality,
                ds->num_volumes, shape, sp, 100 * fg / ds->num_volumes, ds->num_classes, cls,
                ds->task == MN_TASK_CLS ? " (classification: one class per volume)" : "");
    }
    fflush(f);
}

/* ---- shard assignment ---------------------------------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

void mn_shard_plan_destroy(mn_shard_plan **pplan)
{
    if (!pplan || !*pplan) return;
    mn_shard_plan *p = *pplan;
    free(p->offset), free(p->items), free(p->holders_offset), free(p->holders);
    free(p);
    *pplan = NULL;
}

mn_err mn_shard_assign(const mn_corpus_info *info, int nranks, uint64_t seed, mn_role role, mn_shard_plan **out)
{
    *out = NULL;
    MN_CHECK(nranks > 0, MN_ERR_ARG, "shard assignment needs nranks > 0, got %d", nranks);
    int nd = info->num_datasets;
    int *order = malloc((size_t)nd * sizeof *order);
    MN_CHECK(order, MN_ERR_MEM, "out of memory");
    int n = 0;
    for (int d = 0; d < nd; d++)
        if (info->datasets[d].role == role) order[n++] = d;
    if (!n) {
        free(order);
        MN_FAIL(MN_ERR_ARG, "corpus '%s' has no dataset with role %s", info->path, role_name(role));
    }
    /* Seeded Fisher-Yates over the selected datasets (seed 0 keeps the corpus order). */
    if (seed) {
        uint64_t s = seed;
        for (int i = n - 1; i > 0; i--) {
            int j = (int)(splitmix64(&s) % (uint64_t)(i + 1));
            int t = order[i];
            order[i] = order[j], order[j] = t;
        }
    }
    /* The concatenated volume list. */
    int64_t V = 0;
    for (int i = 0; i < n; i++) V += info->datasets[order[i]].num_volumes;
    int *list = malloc((size_t)V * sizeof *list);
    mn_shard_plan *p = calloc(1, sizeof *p);
    if (!list || !p) {
        free(order), free(list), free(p);
        MN_FAIL(MN_ERR_MEM, "out of memory");
    }
    int64_t k = 0;
    for (int i = 0; i < n; i++)
        for (int v = 0; v < info->datasets[order[i]].num_volumes; v++) list[k++] = info->datasets[order[i]].first_volume + v;
    free(order);
    p->nranks = nranks;
    p->num_datasets = nd;
    int64_t nitems = V >= nranks ? V : nranks;
    p->offset = calloc((size_t)nranks + 1, sizeof *p->offset);
    p->items = calloc((size_t)nitems, sizeof *p->items);
    p->holders_offset = calloc((size_t)nd + 1, sizeof *p->holders_offset);
    if (!p->offset || !p->items || !p->holders_offset) {
        free(list);
        mn_shard_plan_destroy(&p);
        MN_FAIL(MN_ERR_MEM, "out of memory");
    }
    int64_t it = 0;
    for (int r = 0; r < nranks; r++) {
        p->offset[r] = (int)it;
        int64_t lo, hi;
        if (V >= nranks) {
            lo = (int64_t)r * V / nranks, hi = (int64_t)(r + 1) * V / nranks;
        } else {
            lo = (int64_t)r * V / nranks, hi = lo + 1; /* replication: see corpus.h */
        }
        for (int64_t q = lo; q < hi; q++) {
            p->items[it].volume = list[q];
            p->items[it].dataset = info->volumes[list[q]].dataset;
            it++;
        }
    }
    p->offset[nranks] = (int)it;
    free(list);
    /* Holders per dataset: ascending ranks, each once. */
    int *count = calloc((size_t)nd, sizeof *count);
    MN_CHECK(count, MN_ERR_MEM, "out of memory");
    for (int r = 0; r < nranks; r++)
        for (int d = 0; d < nd; d++) count[d] += mn_shard_plan_holds(p, r, d);
    for (int d = 0; d < nd; d++) p->holders_offset[d + 1] = p->holders_offset[d] + count[d];
    p->holders = malloc((size_t)(p->holders_offset[nd] ? p->holders_offset[nd] : 1) * sizeof *p->holders);
    if (!p->holders) {
        free(count);
        mn_shard_plan_destroy(&p);
        MN_FAIL(MN_ERR_MEM, "out of memory");
    }
    memset(count, 0, (size_t)nd * sizeof *count);
    for (int r = 0; r < nranks; r++)
        for (int d = 0; d < nd; d++)
            if (mn_shard_plan_holds(p, r, d)) p->holders[p->holders_offset[d] + count[d]++] = r;
    free(count);
    *out = p;
    return MN_OK;
}

int mn_shard_plan_holds(const mn_shard_plan *plan, int rank, int dataset)
{
    for (int i = plan->offset[rank]; i < plan->offset[rank + 1]; i++)
        if (plan->items[i].dataset == dataset) return 1;
    return 0;
}

/* One line of the rank table: rank r's volume count and its items (at most 12, then how many more). */
static void print_rank_line(const mn_shard_plan *plan, const mn_corpus_info *info, int r, FILE *f)
{
    int n = plan->offset[r + 1] - plan->offset[r];
    fprintf(f, "  %-6d %-7d", r, n);
    for (int i = plan->offset[r]; i < plan->offset[r + 1] && i < plan->offset[r] + 12; i++) {
        const mn_shard_item *s = &plan->items[i];
        fprintf(f, " %s:%d", info->datasets[s->dataset].name, info->volumes[s->volume].index);
    }
    if (n > 12) fprintf(f, " ... (%d more)", n - 12);
    fputc('\n', f);
}

void mn_shard_plan_print(const mn_shard_plan *plan, const mn_corpus_info *info, FILE *f)
{
    /* Up to 16 ranks: one line each.  More: the first and last 4 and a summary, so the print stays a screen long
     * whatever P is (datasets sit on consecutive ranks, so a dataset's holders print as a range). */
    const int full = plan->nranks <= 16;
    int vmin = INT32_MAX, vmax = 0, dmax = 0;
    for (int r = 0; r < plan->nranks; r++) {
        int n = plan->offset[r + 1] - plan->offset[r], nd = 0;
        vmin = n < vmin ? n : vmin, vmax = n > vmax ? n : vmax;
        for (int i = plan->offset[r]; i < plan->offset[r + 1]; i++)
            nd += i == plan->offset[r] || plan->items[i].dataset != plan->items[i - 1].dataset;
        dmax = nd > dmax ? nd : dmax;
    }
    fprintf(f, "shard assignment: %d rank(s), %d..%d volume(s) per rank, at most %d dataset(s) per rank\n  %-6s %-7s "
            "%s\n", plan->nranks, vmin, vmax, dmax, "rank", "volumes", "dataset:volume ...");
    for (int r = 0; r < plan->nranks; r++) {
        if (!full && r == 4) fprintf(f, "  ...    (ranks 4..%d)\n", plan->nranks - 5);
        if (full || r < 4 || r >= plan->nranks - 4) print_rank_line(plan, info, r, f);
    }
    fprintf(f, "  %-24s %s\n", "dataset", "ranks");
    for (int d = 0; d < plan->num_datasets; d++) {
        int lo = plan->holders_offset[d], hi = plan->holders_offset[d + 1];
        if (hi == lo) continue;
        fprintf(f, "  %-24s", info->datasets[d].name);
        if (hi - lo > 8 && plan->holders[hi - 1] - plan->holders[lo] == hi - lo - 1)
            fprintf(f, " %d..%d (%d ranks)", plan->holders[lo], plan->holders[hi - 1], hi - lo);
        else
            for (int i = lo; i < hi; i++) fprintf(f, " %d", plan->holders[i]);
        fputc('\n', f);
    }
    fflush(f);
}

/* ---- shard load ---------------------------------------------------------------------------------------------- */

void mn_shard_destroy(mn_shard **pshard)
{
    if (!pshard || !*pshard) return;
    mn_shard *s = *pshard;
    for (int i = 0; i < s->num_volumes; i++) free(s->volumes[i].image), free(s->volumes[i].label);
    free(s->volumes);
    free(s);
    *pshard = NULL;
}

/* Local work: read the whole dataset `name` of the open file into buf (n voxels of memtype) with an independent
 * H5Dread, after checking that its shape is the one the metadata promised (buf was sized by it). */
static mn_err read_volume_part(hid_t file, const char *path, const char *name, const int64_t shape[3], hid_t memtype,
                               void *buf, int64_t chunk[3])
{
    hid_t d, fs;
    if ((d = H5Dopen2(file, name, H5P_DEFAULT)) < 0) {
        mn_h5_report("H5Dopen2", __FILE__, __LINE__, __func__);
        MN_FAIL(MN_ERR_FORMAT, "corpus '%s': cannot open dataset %s (corrupt file?)", path, name);
    }
    hsize_t dims[3] = {0, 0, 0};
    int ok = (fs = H5Dget_space(d)) >= 0 && H5Sget_simple_extent_ndims(fs) == 3 &&
             H5Sget_simple_extent_dims(fs, dims, NULL) == 3;
    if (fs >= 0) H5Sclose(fs);
    for (int a = 0; a < 3; a++) ok = ok && (int64_t)dims[a] == shape[a];
    if (!ok) {
        H5Dclose(d);
        MN_FAIL(MN_ERR_FORMAT, "corpus '%s': dataset %s is %llux%llux%llu, the metadata says %lldx%lldx%lld (the file "
                "changed since it was opened?)", path, name, (unsigned long long)dims[0], (unsigned long long)dims[1],
                (unsigned long long)dims[2], (long long)shape[0], (long long)shape[1], (long long)shape[2]);
    }
    /* The chunk geometry, which fixes the order a sampler counts foreground voxels in (mednet/reader.h). */
    hid_t dcpl = H5Dget_create_plist(d);
    hsize_t cd[3] = {0, 0, 0};
    int64_t stored[3] = {0, 0, 0};
    if (dcpl >= 0 && H5Pget_layout(dcpl) == H5D_CHUNKED && H5Pget_chunk(dcpl, 3, cd) == 3)
        for (int a = 0; a < 3; a++) stored[a] = (int64_t)cd[a];
    if (dcpl >= 0) H5Pclose(dcpl);
    mn_corpus_chunk_rule(shape, stored, chunk);
    herr_t r = H5Dread(d, memtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
    if (r < 0) mn_h5_report("H5Dread", __FILE__, __LINE__, __func__);
    herr_t c = H5Dclose(d);
    MN_CHECK(r >= 0, MN_ERR_FORMAT, "corpus '%s': cannot read dataset %s (corrupt or truncated file?)", path, name);
    MN_CHECK(c >= 0, MN_ERR_HDF5, "corpus '%s': H5Dclose failed for %s", path, name);
    return MN_OK;
}

/* Local work: allocate the shard's volumes for this rank's items of the plan. */
static mn_err alloc_shard(const mn_corpus_info *info, const mn_shard_plan *plan, int rank, mn_shard *s)
{
    int mine = plan->offset[rank + 1] - plan->offset[rank];
    s->volumes = calloc((size_t)(mine ? mine : 1), sizeof *s->volumes);
    MN_CHECK(s->volumes, MN_ERR_MEM, "out of memory");
    for (int i = 0; i < mine; i++) {
        const mn_shard_item *it = &plan->items[plan->offset[rank] + i];
        mn_shard_volume *sv = &s->volumes[i];
        const mn_corpus_volume *cv = &info->volumes[it->volume];
        sv->dataset = it->dataset, sv->volume = it->volume;
        sv->cls_tag = cv->cls + 1;
        memcpy(sv->shape, cv->shape, sizeof sv->shape);
        int64_t n = cv->shape[0] * cv->shape[1] * cv->shape[2];
        sv->image = malloc((size_t)n * sizeof(float));
        sv->label = malloc((size_t)n);
        s->num_volumes++;
        MN_CHECK(sv->image && sv->label, MN_ERR_MEM, "out of memory for volume %d (%lld voxels)", it->volume,
                 (long long)n);
        s->bytes += n * 5;
    }
    return MN_OK;
}

/* Local work: read and CRC-check this rank's volumes from the open file; stops at the first bad volume. */
static mn_err read_shard(hid_t file, const mn_corpus_info *info, mn_shard *s)
{
    for (int i = 0; i < s->num_volumes; i++) {
        mn_shard_volume *sv = &s->volumes[i];
        const mn_corpus_volume *cv = &info->volumes[sv->volume];
        const char *dname = info->datasets[cv->dataset].name;
        char name[160];
        snprintf(name, sizeof name, "/%s/vol_%04d/image", dname, cv->index);
        MN_CALL(read_volume_part(file, info->path, name, cv->shape, H5T_NATIVE_FLOAT, sv->image, sv->chunk));
        snprintf(name, sizeof name, "/%s/vol_%04d/label", dname, cv->index);
        int64_t lchunk[3];
        MN_CALL(read_volume_part(file, info->path, name, cv->shape, H5T_NATIVE_UINT8, sv->label, lchunk));
        MN_CHECK(!memcmp(lchunk, sv->chunk, sizeof lchunk), MN_ERR_FORMAT, "corpus '%s': %s has another chunk shape "
                 "than its image", info->path, name);
        uint32_t crc = mn_corpus_data_crc(sv->image, sv->label, cv->shape[0] * cv->shape[1] * cv->shape[2]);
        MN_CHECK(crc == cv->data_crc32, MN_ERR_FORMAT, "corpus '%s': volume /%s/vol_%04d (image + label) has CRC-32 "
                 "%08x, the file says %08x (corrupt or modified file)\n---> HINT: rebuild it with `mednet prep`",
                 info->path, dname, cv->index, (unsigned)crc, (unsigned)cv->data_crc32);
    }
    return MN_OK;
}

mn_err mn_shard_load(MPI_Comm comm, const mn_corpus_info *info, const mn_shard_plan *plan, mn_shard **out)
{
    *out = NULL;
    int rank, size;
    MN_MPI(MPI_Comm_rank(comm, &rank));
    MN_MPI(MPI_Comm_size(comm, &size));
    /* Step 1 (local, agreed): arguments and memory. */
    mn_err e = mn_h5_init();
    if (!e && size != plan->nranks)
        e = mn_error_report(MN_ERR_ARG, __FILE__, __LINE__, __func__, "shard plan is for %d ranks, communicator has "
                            "%d", plan->nranks, size);
    mn_shard *s = e ? NULL : calloc(1, sizeof *s);
    if (!e && !s) e = mn_error_report(MN_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory");
    if (!e) {
        *out = s;
        e = alloc_shard(info, plan, rank, s);
    }
    MN_CALL(mn_agree(comm, e));
    /* Step 2: every rank can read the file before anyone opens it collectively. */
    MN_CALL(mn_corpus_check_readable(comm, info->path));
    /* Step 3: the collective open.  Its outcome is the same on every rank (MPI_File_open is collective, and after
     * step 2 every rank reads the same superblock bytes), but it is agreed all the same. */
    hid_t fapl, file;
    e = mn_corpus_fapl(comm, 0, getenv("MEDNET_MPIIO_HINTS"), &fapl);
    file = e ? -1 : H5Fopen(info->path, H5F_ACC_RDONLY, fapl);
    if (!e && H5Pclose(fapl) < 0) e = mn_h5_report("H5Pclose", __FILE__, __LINE__, __func__);
    if (!e && file < 0) {
        mn_h5_report("H5Fopen", __FILE__, __LINE__, __func__);
        e = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__, "cannot open corpus '%s' with the MPI-IO "
                            "driver: truncated or corrupt file?", info->path);
    }
    e = mn_agree(comm, e);
    if (e) {
        if (file >= 0) H5Fclose(file);
        MN_CHECK(!e, e, "called from opening '%s' for the shard load", info->path);
    }
    /* Step 4 (local): independent reads of this rank's volumes, CRC-checked.  Collective metadata operations are
     * off for this file, so nothing in here waits for another rank and every rank reaches the close below. */
    e = read_shard(file, info, s);
    /* Step 5: the collective close, then one agreement on everything since the open. */
    if (H5Fclose(file) < 0 && !e) e = mn_h5_report("H5Fclose", __FILE__, __LINE__, __func__);
    MN_CALL(mn_agree(comm, e));
    return MN_OK;
}
