/* corpus_read.c: reading a corpus: metadata (rank 0 reads, everyone receives), the deterministic shard
 * assignment, and the per-rank shard load with collective MPI-IO reads.
 *
 * Metadata is small and read by rank 0 alone with the serial driver, then broadcast as three flat arrays
 * (header, datasets, volumes: all plain structs), so opening a corpus on thousands of ranks costs one reader and
 * three broadcasts, and any inconsistency in the file is the same error on every rank.  The voxels are read with
 * the MPI-IO driver: for every volume that any rank holds, one collective H5Dread in which the holders select
 * the whole dataset and the others select nothing.  That is O(volumes) collective calls per rank, which is fine
 * for corpora of thousands of volumes; H5Dread_multi (HDF5 1.14) would batch them.
 */
#include "corpus_impl.h"
#include "mednet/mpicheck.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *role_name(mn_role r) { return r == MN_ROLE_TARGET ? "target" : "pretrain"; }

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
    MN_CHECK(nd > 0 && nd < 100000, MN_ERR_FORMAT, "corpus '%s': num_datasets = %lld", path, (long long)nd);
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
        MN_CALL(mn_h5_read_i64(g, "num_classes", &ncls, 1, what));
        MN_CHECK(ncls >= 2 && ncls <= MN_CORPUS_MAX_CLASSES, MN_ERR_FORMAT, "%s: num_classes = %lld", what,
                 (long long)ncls);
        ds->num_classes = (int)ncls;
        MN_CALL(mn_h5_read_strs(g, "class_names", ds->class_names[0], ds->num_classes, MN_CORPUS_NAME_LEN, what));
        MN_CALL(mn_h5_read_f64(g, "spacing", ds->spacing, 3, what));
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

static mn_err read_rank0(const char *path, mn_corpus_info *info)
{
    MN_CHECK(access(path, R_OK) == 0, MN_ERR_IO, "corpus file '%s' does not exist or is not readable\n---> HINT: "
             "build it with `mednet prep CONFIG`", path);
    hid_t fapl, file;
    MN_CALL(mn_corpus_fapl(MPI_COMM_NULL, &fapl));
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

mn_err mn_corpus_open(MPI_Comm comm, const char *path, mn_corpus_info **out)
{
    *out = NULL;
    int rank = 0;
    MN_MPI(MPI_Comm_rank(comm, &rank));
    MN_CALL(mn_h5_init());
    mn_corpus_info *info = calloc(1, sizeof *info);
    MN_CHECK(info, MN_ERR_MEM, "out of memory");
    int status = 0;
    if (rank == 0) status = (int)read_rank0(path, info);
    int rc = MPI_Bcast(&status, 1, MPI_INT, 0, comm);
    if (rc != MPI_SUCCESS || status) {
        mn_corpus_info_destroy(&info);
        if (rc != MPI_SUCCESS) return mn_mpi_report(rc, "MPI_Bcast(status)", __FILE__, __LINE__, __func__);
        /* Rank 0 already said why (and keeps that as its last message); the others say where to look. */
        if (rank == 0) return mn_error_report((mn_err)status, __FILE__, __LINE__, __func__, "called from read_rank0");
        MN_FAIL((mn_err)status, "cannot open corpus '%s' (rank 0 reported the cause)", path);
    }
    /* Header (everything but the two arrays), then the arrays. */
    mn_corpus_dataset *ds = info->datasets;
    mn_corpus_volume *vs = info->volumes;
    MN_MPI(MPI_Bcast(info, (int)sizeof *info, MPI_BYTE, 0, comm));
    if (rank != 0) {
        ds = calloc((size_t)info->num_datasets, sizeof *ds);
        vs = calloc((size_t)info->num_volumes, sizeof *vs);
    }
    info->datasets = ds, info->volumes = vs;
    int okm = ds && vs, all = 0;
    MN_MPI(MPI_Allreduce(&okm, &all, 1, MPI_INT, MPI_MIN, comm));
    if (!all) {
        mn_corpus_info_destroy(&info);
        MN_FAIL(MN_ERR_MEM, "out of memory for the corpus metadata");
    }
    MN_MPI(MPI_Bcast(ds, (int)(info->num_datasets * sizeof *ds), MPI_BYTE, 0, comm));
    MN_MPI(MPI_Bcast(vs, (int)(info->num_volumes * sizeof *vs), MPI_BYTE, 0, comm));
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
        fprintf(f, "  %-24s %-8s %-5s %4d %-22s %-16s %7.2f  %d: %s\n", ds->name, role_name(ds->role), ds->modality,
                ds->num_volumes, shape, sp, 100 * fg / ds->num_volumes, ds->num_classes, cls);
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

void mn_shard_plan_print(const mn_shard_plan *plan, const mn_corpus_info *info, FILE *f)
{
    fprintf(f, "shard assignment: %d rank(s)\n  %-6s %-7s %s\n", plan->nranks, "rank", "volumes",
            "dataset:volume ...");
    for (int r = 0; r < plan->nranks; r++) {
        fprintf(f, "  %-6d %-7d", r, plan->offset[r + 1] - plan->offset[r]);
        for (int i = plan->offset[r]; i < plan->offset[r + 1]; i++) {
            const mn_shard_item *s = &plan->items[i];
            fprintf(f, " %s:%d", info->datasets[s->dataset].name, info->volumes[s->volume].index);
        }
        fputc('\n', f);
    }
    fprintf(f, "  %-24s %s\n", "dataset", "ranks");
    for (int d = 0; d < plan->num_datasets; d++) {
        if (plan->holders_offset[d + 1] == plan->holders_offset[d]) continue;
        fprintf(f, "  %-24s", info->datasets[d].name);
        for (int i = plan->holders_offset[d]; i < plan->holders_offset[d + 1]; i++) fprintf(f, " %d", plan->holders[i]);
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

/* One collective read of dataset `path` (under file): `buf` NULL selects nothing on this rank. */
static mn_err read_collective(hid_t file, const char *path, hid_t memtype, void *buf, hid_t dxpl)
{
    hid_t d, fs, ms;
    MN_H5(d = H5Dopen2(file, path, H5P_DEFAULT));
    MN_H5(fs = H5Dget_space(d));
    if (buf) {
        MN_H5(ms = H5Scopy(fs));
    } else {
        hsize_t one = 1;
        MN_H5(ms = H5Screate_simple(1, &one, NULL));
        MN_H5(H5Sselect_none(ms));
        MN_H5(H5Sselect_none(fs));
    }
    MN_H5(H5Dread(d, memtype, ms, fs, dxpl, buf));
    MN_H5(H5Sclose(ms));
    MN_H5(H5Sclose(fs));
    MN_H5(H5Dclose(d));
    return MN_OK;
}

mn_err mn_shard_load(MPI_Comm comm, const mn_corpus_info *info, const mn_shard_plan *plan, mn_shard **out)
{
    *out = NULL;
    int rank, size;
    MN_MPI(MPI_Comm_rank(comm, &rank));
    MN_MPI(MPI_Comm_size(comm, &size));
    MN_CHECK(size == plan->nranks, MN_ERR_ARG, "shard plan is for %d ranks, communicator has %d", plan->nranks, size);
    MN_CALL(mn_h5_init());
    mn_shard *s = calloc(1, sizeof *s);
    MN_CHECK(s, MN_ERR_MEM, "out of memory");
    *out = s;
    int mine = plan->offset[rank + 1] - plan->offset[rank];
    s->volumes = calloc((size_t)(mine ? mine : 1), sizeof *s->volumes);
    /* held[v]: slot of volume v in this shard (-1: not mine); any[v]: some rank holds it. */
    int *held = malloc((size_t)info->num_volumes * sizeof *held);
    char *any = calloc((size_t)info->num_volumes, 1);
    MN_CHECK(s->volumes && held && any, MN_ERR_MEM, "out of memory");
    for (int v = 0; v < info->num_volumes; v++) held[v] = -1;
    for (int i = 0; i < plan->offset[size]; i++) any[plan->items[i].volume] = 1;
    for (int i = 0; i < mine; i++) {
        const mn_shard_item *it = &plan->items[plan->offset[rank] + i];
        mn_shard_volume *sv = &s->volumes[i];
        const mn_corpus_volume *cv = &info->volumes[it->volume];
        sv->dataset = it->dataset, sv->volume = it->volume;
        memcpy(sv->shape, cv->shape, sizeof sv->shape);
        int64_t n = cv->shape[0] * cv->shape[1] * cv->shape[2];
        sv->image = malloc((size_t)n * sizeof(float));
        sv->label = malloc((size_t)n);
        MN_CHECK(sv->image && sv->label, MN_ERR_MEM, "out of memory for volume %d (%lld voxels)", it->volume,
                 (long long)n);
        s->bytes += n * 5;
        held[it->volume] = i;
        s->num_volumes++;
    }
    hid_t fapl, file, dxpl;
    MN_CALL(mn_corpus_fapl(comm, &fapl));
    file = H5Fopen(info->path, H5F_ACC_RDONLY, fapl);
    MN_H5(H5Pclose(fapl));
    MN_CHECK(file >= 0, MN_ERR_FORMAT, "cannot open corpus '%s' with the MPI-IO driver", info->path);
    MN_H5(dxpl = H5Pcreate(H5P_DATASET_XFER));
    MN_H5(H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE));
    mn_err bad = MN_OK;
    for (int v = 0; v < info->num_volumes; v++) {
        if (!any[v]) continue;
        const mn_corpus_volume *cv = &info->volumes[v];
        char path[160];
        mn_shard_volume *sv = held[v] >= 0 ? &s->volumes[held[v]] : NULL;
        snprintf(path, sizeof path, "/%s/vol_%04d/image", info->datasets[cv->dataset].name, cv->index);
        MN_CALL(read_collective(file, path, H5T_NATIVE_FLOAT, sv ? sv->image : NULL, dxpl));
        snprintf(path, sizeof path, "/%s/vol_%04d/label", info->datasets[cv->dataset].name, cv->index);
        MN_CALL(read_collective(file, path, H5T_NATIVE_UINT8, sv ? sv->label : NULL, dxpl));
        /* A CRC mismatch is recorded, not returned: the other ranks are still in the collective loop. */
        if (sv && !bad) {
            uint32_t crc = mn_corpus_data_crc(sv->image, sv->label, cv->shape[0] * cv->shape[1] * cv->shape[2]);
            if (crc != cv->data_crc32)
                bad = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__, "corpus '%s': volume /%s/vol_%04d "
                                      "has CRC-32 %08x, the file says %08x (corrupt or modified file)", info->path,
                                      info->datasets[cv->dataset].name, cv->index, (unsigned)crc,
                                      (unsigned)cv->data_crc32);
        }
    }
    MN_H5(H5Pclose(dxpl));
    MN_H5(H5Fclose(file));
    free(held), free(any);
    /* Every rank learns that some shard is corrupt and returns the same code. */
    MN_CALL(mn_mpi_agree(comm, bad));
    return MN_OK;
}
