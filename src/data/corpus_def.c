/* corpus_def.c: the corpus definition: INI sections -> mn_corpus_def, plus the rank-0 glob expansion.
 *
 * Every key of the definition is read through the typed mn_config getters, so a misspelt key is an error
 * (mn_config_check_unused) instead of a silently ignored setting.  The text is read by rank 0 and broadcast; every
 * rank parses the same text and so reaches the same definition, or the same error.  File patterns are expanded
 * by rank 0 only (glob(3) on thousands of ranks would be a metadata storm on a parallel file system) and the
 * resulting lists are broadcast as one newline-separated blob.
 */
#include "mednet/corpus.h"
#include "corpus_impl.h"
#include "mednet/mpicheck.h"

#include <ctype.h>
#include <errno.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *const modality_names[] = {"MR", "CT", "other", NULL};
static const char *const role_names[] = {"pretrain", "target", NULL};
static const char *const norm_names[] = {"zscore", "ct", "window", "none", NULL};
static const char *const grid_names[] = {"same", "world", NULL};
static const char *const task_names[] = {"segmentation", "classification", NULL};

/* Trim spaces at both ends of s in place; returns s advanced past leading spaces. */
static char *trim(char *s)
{
    while (isspace((unsigned char)*s)) s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1])) s[--n] = 0;
    return s;
}

/* Parse "a:b, c-d:e, ..." into ranges. */
static mn_err parse_label_map(const char *origin, const char *section, const char *text, mn_dataset_def *d)
{
    char buf[2048];
    MN_CHECK(strlen(text) < sizeof buf, MN_ERR_CONFIG, "config %s: [%s] label_map is too long", origin, section);
    snprintf(buf, sizeof buf, "%s", text);
    snprintf(d->label_map_text, sizeof d->label_map_text, "%s", text);
    d->num_ranges = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *t = trim(tok);
        if (!*t) continue;
        long long lo, hi;
        int to, used = 0;
        int is_range = sscanf(t, "%lld-%lld:%d%n", &lo, &hi, &to, &used) == 3 && t[used] == 0;
        if (!is_range) {
            used = 0;
            MN_CHECK(sscanf(t, "%lld:%d%n", &lo, &to, &used) == 2 && t[used] == 0, MN_ERR_CONFIG,
                     "config %s: [%s] label_map entry '%s': expected `code:class` or `lo-hi:class`", origin, section, t);
            hi = lo;
        }
        MN_CHECK(lo <= hi, MN_ERR_CONFIG, "config %s: [%s] label_map entry '%s': empty range", origin, section, t);
        MN_CHECK(to >= 0 && to < d->num_classes, MN_ERR_CONFIG,
                 "config %s: [%s] label_map entry '%s': class %d outside [0, %d) (classes has %d names)", origin,
                 section, t, to, d->num_classes, d->num_classes);
        MN_CHECK(d->num_ranges < MN_CORPUS_MAX_RANGES, MN_ERR_CONFIG, "config %s: [%s] label_map has more than %d "
                 "entries", origin, section, MN_CORPUS_MAX_RANGES);
        for (int r = 0; r < d->num_ranges; r++)
            MN_CHECK(hi < d->ranges[r].lo || lo > d->ranges[r].hi, MN_ERR_CONFIG,
                     "config %s: [%s] label_map entry '%s' overlaps an earlier entry", origin, section, t);
        d->ranges[d->num_ranges++] = (mn_label_range){lo, hi, to};
    }
    MN_CHECK(d->num_ranges > 0, MN_ERR_CONFIG, "config %s: [%s] label_map is empty", origin, section);
    return MN_OK;
}

static mn_err parse_spacing(mn_config *cfg, const char *section, int *has, double sp[3])
{
    double v[3];
    int n = 0;
    MN_CALL(mn_config_doubles(cfg, section, "spacing", v, 3, &n));
    *has = n > 0;
    if (!n) return MN_OK;
    MN_CHECK(n == 1 || n == 3, MN_ERR_CONFIG, "config %s: [%s] spacing: expected 1 or 3 numbers (mm), got %d",
             mn_config_origin(cfg), section, n);
    for (int a = 0; a < 3; a++) {
        sp[a] = v[n == 1 ? 0 : a];
        MN_CHECK(sp[a] >= 0.05 && sp[a] <= 100, MN_ERR_CONFIG, "config %s: [%s] spacing %g mm out of [0.05, 100]",
                 mn_config_origin(cfg), section, sp[a]);
    }
    return MN_OK;
}

static mn_err parse_dataset(mn_config *cfg, const char *section, mn_dataset_def *d)
{
    const char *origin = mn_config_origin(cfg);
    size_t len = strlen(section);
    MN_CHECK(len > 0 && len < MN_CORPUS_NAME_LEN, MN_ERR_CONFIG, "config %s: dataset section name '%s' must have "
             "1..%d characters", origin, section, MN_CORPUS_NAME_LEN - 1);
    for (size_t i = 0; i < len; i++)
        MN_CHECK(isalnum((unsigned char)section[i]) || section[i] == '_' || section[i] == '-' ||
                     (section[i] == '.' && i > 0),
                 MN_ERR_CONFIG, "config %s: dataset name '%s' may only use letters, digits, '_', '-' and '.' (it "
                 "names an HDF5 group)", origin, section);
    snprintf(d->name, sizeof d->name, "%s", section);
    int v;
    MN_CALL(mn_config_choice(cfg, section, "modality", "MR", modality_names, &v));
    d->modality = (mn_modality)v;
    MN_CALL(mn_config_choice(cfg, section, "role", "pretrain", role_names, &v));
    d->role = (mn_role)v;
    MN_CALL(mn_config_choice(cfg, section, "normalisation", d->modality == MN_MOD_CT ? "ct" : "zscore", norm_names,
                             &v));
    d->normalisation = (mn_norm)v;
    MN_CALL(mn_config_choice(cfg, section, "label_grid", "same", grid_names, &v));
    d->label_grid = v;
    MN_CALL(mn_config_bool(cfg, section, "crop", 1, &d->crop));
    MN_CALL(mn_config_bool(cfg, section, "antialias", 1, &d->antialias));
    MN_CALL(parse_spacing(cfg, section, &d->has_spacing, d->spacing));
    int nw = 0;
    MN_CALL(mn_config_doubles(cfg, section, "window", d->window, 2, &nw));
    MN_CHECK(d->normalisation != MN_NORM_WINDOW || (nw == 2 && d->window[0] < d->window[1]), MN_ERR_CONFIG,
             "config %s: [%s] normalisation = window needs `window = lo, hi` with lo < hi", origin, section);
    MN_CHECK(nw == 0 || d->normalisation == MN_NORM_WINDOW, MN_ERR_CONFIG,
             "config %s: [%s] window is only used with normalisation = window", origin, section);

    const char *s;
    MN_CALL(mn_config_string(cfg, section, "image", NULL, &s));
    MN_CHECK(s && *s, MN_ERR_CONFIG, "config %s: [%s] needs `image = <file, list or glob>`", origin, section);
    MN_CHECK(strlen(s) < sizeof d->image_pattern, MN_ERR_CONFIG, "config %s: [%s] image is too long", origin, section);
    snprintf(d->image_pattern, sizeof d->image_pattern, "%s", s);
    MN_CALL(mn_config_string(cfg, section, "label", NULL, &s));
    MN_CHECK(s && *s, MN_ERR_CONFIG, "config %s: [%s] needs `label = <file, list or glob>`", origin, section);
    MN_CHECK(strlen(s) < sizeof d->label_pattern, MN_ERR_CONFIG, "config %s: [%s] label is too long", origin, section);
    snprintf(d->label_pattern, sizeof d->label_pattern, "%s", s);

    MN_CALL(mn_config_choice(cfg, section, "task", "segmentation", task_names, &v));
    d->task = (mn_task)v;
    MN_CALL(mn_config_string(cfg, section, "class_labels", NULL, &s));
    MN_CHECK(!s == (d->task == MN_TASK_SEG), MN_ERR_CONFIG, "config %s: [%s] %s", origin, section,
             s ? "class_labels is only used with task = classification"
               : "task = classification needs `class_labels = <file.csv>` (rows `subject,label`)");
    MN_CHECK(!s || (*s && strlen(s) < sizeof d->class_labels), MN_ERR_CONFIG, "config %s: [%s] class_labels is empty "
             "or too long", origin, section);
    if (s) snprintf(d->class_labels, sizeof d->class_labels, "%s", s);

    MN_CALL(mn_config_string(cfg, section, "classes", NULL, &s));
    MN_CHECK(s && *s, MN_ERR_CONFIG, "config %s: [%s] needs `classes = %s`", origin, section,
             d->task == MN_TASK_SEG ? "background, <class 1>, ..." : "<class 0>, <class 1>, ...");
    char buf[4096];
    MN_CHECK(strlen(s) < sizeof buf, MN_ERR_CONFIG, "config %s: [%s] classes is too long", origin, section);
    snprintf(buf, sizeof buf, "%s", s);
    d->num_classes = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *t = trim(tok);
        MN_CHECK(*t && strlen(t) < MN_CORPUS_NAME_LEN, MN_ERR_CONFIG, "config %s: [%s] classes: empty or too long "
                 "class name '%s'", origin, section, t);
        MN_CHECK(d->num_classes < MN_CORPUS_MAX_CLASSES, MN_ERR_CONFIG, "config %s: [%s] classes: more than %d "
                 "classes (merge them with label_map)", origin, section, MN_CORPUS_MAX_CLASSES);
        snprintf(d->class_names[d->num_classes++], MN_CORPUS_NAME_LEN, "%s", t);
    }
    MN_CHECK(d->num_classes >= 2, MN_ERR_CONFIG, "config %s: [%s] classes: need at least 2 (%s), got %d", origin,
             section, d->task == MN_TASK_SEG ? "background and one foreground class" : "a classifier's classes",
             d->num_classes);
    MN_CALL(mn_config_string(cfg, section, "label_map", NULL, &s));
    if (s) {
        MN_CALL(parse_label_map(origin, section, s, d));
    } else {
        d->num_ranges = 0;
        snprintf(d->label_map_text, sizeof d->label_map_text, "identity");
    }
    return MN_OK;
}

mn_err mn_corpus_def_from_config(mn_config *cfg, mn_corpus_def **out)
{
    *out = NULL;
    const char *origin = mn_config_origin(cfg);
    mn_corpus_def *def = calloc(1, sizeof *def);
    MN_CHECK(def, MN_ERR_MEM, "out of memory for the corpus definition");
    mn_err err = MN_OK;
#define TRY(x)                                                                                                 \
    do {                                                                                                       \
        if ((err = (x)) != MN_OK) goto fail;                                                                   \
    } while (0)
    const char *s;
    TRY(mn_config_string(cfg, "corpus", "name", "corpus", &s));
    snprintf(def->name, sizeof def->name, "%s", s);
    TRY(mn_config_string(cfg, "corpus", "output", "corpus.h5", &s));
    snprintf(def->output, sizeof def->output, "%s", s);
    TRY(mn_config_string(cfg, "corpus", "root", "", &s));
    snprintf(def->root, sizeof def->root, "%s", s);
    TRY(parse_spacing(cfg, "corpus", &def->has_spacing, def->spacing));
    long l;
    TRY(mn_config_int(cfg, "corpus", "chunk", 32, 4, 256, &l));
    def->chunk = (int)l;
    TRY(mn_config_int(cfg, "corpus", "compress", 0, 0, 9, &l));
    def->compress = (int)l;
    TRY(mn_config_bool(cfg, "corpus", "skip_bad", 0, &def->skip_bad));
    TRY(mn_config_double(cfg, "corpus", "affine_tolerance", 1e-3, 0, 10, &def->affine_tolerance));
    TRY(mn_config_string(cfg, "corpus", "mpiio_hints", "", &s));
    snprintf(def->mpiio_hints, sizeof def->mpiio_hints, "%s", s);
    TRY(mn_mpiio_hints_parse(def->mpiio_hints, mn_config_origin(cfg), NULL));

    int nsec = mn_config_section_count(cfg);
    def->datasets = calloc((size_t)(nsec > 0 ? nsec : 1), sizeof *def->datasets);
    if (!def->datasets) {
        err = mn_error_report(MN_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory for datasets");
        goto fail;
    }
    for (int i = 0; i < nsec; i++) {
        const char *sec = mn_config_section_name(cfg, i);
        if (!strcmp(sec, "corpus") || !*sec) continue;
        for (int j = 0; j < def->num_datasets; j++)
            if (!strcmp(def->datasets[j].name, sec)) {
                err = mn_error_report(MN_ERR_CONFIG, __FILE__, __LINE__, __func__, "config %s: duplicate dataset "
                                      "[%s]", origin, sec);
                goto fail;
            }
        TRY(parse_dataset(cfg, sec, &def->datasets[def->num_datasets]));
        def->num_datasets++;
    }
    TRY(mn_config_check_unused(cfg));
    if (def->num_datasets == 0) {
        err = mn_error_report(MN_ERR_CONFIG, __FILE__, __LINE__, __func__, "config %s: no dataset sections (one "
                              "[<name>] section per dataset, besides [corpus])", origin);
        goto fail;
    }
#undef TRY
    *out = def;
    return MN_OK;
fail:
    mn_corpus_def_destroy(&def);
    /* "called from" keeps the inner message (the key and value at fault) as the last error. */
    return mn_error_report(err, __FILE__, __LINE__, __func__, "called from reading the corpus definition %s", origin);
}

mn_err mn_corpus_def_load(MPI_Comm comm, const char *path, char **overrides, int noverrides, mn_corpus_def **out)
{
    *out = NULL;
    int rank = 0;
    MN_MPI(MPI_Comm_rank(comm, &rank));
    char *text = NULL;
    long long len = -1;
    if (rank == 0) {
        size_t n = 0;
        mn_err e = mn_config_read_text(path, &text, &n);
        len = e ? -1 - (long long)e : (long long)n;
    }
    MN_MPI(MPI_Bcast(&len, 1, MPI_LONG_LONG, 0, comm));
    /* A read failure on rank 0 becomes the same error on every rank (rank 0 already printed why). */
    if (len < 0 && rank == 0) return mn_error_report((mn_err)(-1 - len), __FILE__, __LINE__, __func__, "called from "
                                                     "mn_config_read_text");
    MN_CHECK(len >= 0, (mn_err)(-1 - len), "cannot read corpus definition '%s' (rank 0 reported the cause)", path);
    if (rank != 0) {
        text = malloc((size_t)len + 1);
        MN_CHECK(text, MN_ERR_MEM, "out of memory for the corpus definition text");
    }
    int rc = MPI_Bcast(text, (int)len + 1, MPI_CHAR, 0, comm);
    if (rc != MPI_SUCCESS) {
        free(text);
        return mn_mpi_report(rc, "MPI_Bcast(config text)", __FILE__, __LINE__, __func__);
    }
    mn_config *cfg = NULL;
    mn_err e = mn_config_parse(text, path, &cfg);
    free(text);
    MN_CHECK(!e, e, "called from mn_config_parse");
    for (int i = 0; i < noverrides && !e; i++) e = mn_config_override(cfg, overrides[i]);
    if (!e) e = mn_corpus_def_from_config(cfg, out);
    mn_config_destroy(&cfg);
    MN_CHECK(!e, e, "called from mn_config_override / mn_corpus_def_from_config");
    return MN_OK;
}

/* Append s and a newline to a growing buffer. */
static int append(char **buf, size_t *len, size_t *cap, const char *s)
{
    size_t n = strlen(s);
    if (*len + n + 2 > *cap) {
        size_t nc = (*cap + n + 2) * 2;
        char *nb = realloc(*buf, nc);
        if (!nb) return 0;
        *buf = nb, *cap = nc;
    }
    memcpy(*buf + *len, s, n);
    (*buf)[*len + n] = '\n';
    *len += n + 1;
    (*buf)[*len] = 0;
    return 1;
}

/* Expand one comma-separated pattern list (rank 0): each entry relative to root, globbed if it has wildcards.
 * Appends the files and sets *count. */
static mn_err expand_list(const char *root, const char *pattern, const char *what, const char *dataset, char **buf,
                          size_t *len, size_t *cap, int *count)
{
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s", pattern);
    *count = 0;
    for (char *save = NULL, *tok = strtok_r(tmp, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *t = trim(tok);
        if (!*t) continue;
        char full[2048];
        if (t[0] != '/' && root[0])
            snprintf(full, sizeof full, "%s/%s", root, t);
        else
            snprintf(full, sizeof full, "%s", t);
        if (!strpbrk(full, "*?[")) {
            MN_CHECK(append(buf, len, cap, full), MN_ERR_MEM, "out of memory expanding file lists");
            (*count)++;
            continue;
        }
        glob_t g;
        int rc = glob(full, 0, NULL, &g); /* sorted by glob(3) */
        MN_CHECK(rc == 0 || rc == GLOB_NOMATCH, MN_ERR_IO, "dataset [%s]: glob of %s pattern '%s' failed", dataset,
                 what, full);
        if (rc == GLOB_NOMATCH) {
            globfree(&g);
            MN_FAIL(MN_ERR_IO, "dataset [%s]: %s pattern '%s' matches no file", dataset, what, full);
        }
        for (size_t i = 0; i < g.gl_pathc; i++) {
            if (!append(buf, len, cap, g.gl_pathv[i])) {
                globfree(&g);
                MN_FAIL(MN_ERR_MEM, "out of memory expanding file lists");
            }
            (*count)++;
        }
        globfree(&g);
    }
    MN_CHECK(*count > 0, MN_ERR_CONFIG, "dataset [%s]: %s list '%s' names no file", dataset, what, pattern);
    return MN_OK;
}

/* The subject of an image path: its file name without the directory and a .nii or .nii.gz ending. */
static void subject_of(const char *path, size_t len, char *out, size_t cap)
{
    const char *b = path;
    for (size_t i = 0; i < len; i++)
        if (path[i] == '/') b = path + i + 1;
    size_t n = len - (size_t)(b - path);
    if (n > 7 && !strncmp(b + n - 7, ".nii.gz", 7)) n -= 7;
    else if (n > 4 && !strncmp(b + n - 4, ".nii", 4)) n -= 4;
    snprintf(out, cap, "%.*s", (int)n, b);
}

typedef struct csv_row {
    char subject[256];
    long label;
    int row;
} csv_row;

/* Read a class_labels CSV (rank 0): rows `subject,label`, blank lines and '#' comments skipped, an optional first
 * row `subject,label` taken as a header.  Every label must be an integer in 0..classes-1 and every subject listed
 * once.  *rows is malloc'ed.  Errors name the file and the row. */
static mn_err read_csv(const char *path, const mn_dataset_def *ds, csv_row **rows, int *nrows)
{
    *rows = NULL, *nrows = 0;
    FILE *f = fopen(path, "r");
    MN_CHECK(f, MN_ERR_IO, "dataset [%s]: cannot open class_labels '%s': %s", ds->name, path, strerror(errno));
    int cap = 0, n = 0, row = 0, seen = 0;
    csv_row *r = NULL;
    char line[1024];
    mn_err e = MN_OK;
    while (!e && fgets(line, sizeof line, f)) {
        row++;
        if (!strchr(line, '\n') && !feof(f)) {
            e = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__, "class_labels %s row %d: line longer "
                                "than %d characters", path, row, (int)sizeof line - 2);
            break;
        }
        char *t = trim(line);
        if (!*t || *t == '#') continue;
        char *comma = strchr(t, ',');
        if (!comma) {
            e = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__, "class_labels %s row %d: '%s' is not "
                                "`subject,label`", path, row, t);
            break;
        }
        *comma = 0;
        char *subj = trim(t), *lab = trim(comma + 1), *end = NULL;
        if (!seen++ && !strcasecmp(subj, "subject") && !strcasecmp(lab, "label")) continue; /* the header */
        errno = 0;
        long v = strtol(lab, &end, 10);
        if (!*lab || *end || errno) {
            e = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__, "class_labels %s row %d: label '%s' of "
                                "subject '%s' is not an integer", path, row, lab, subj);
            break;
        }
        if (v < 0 || v >= ds->num_classes) {
            e = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__, "class_labels %s row %d: label %ld of "
                                "subject '%s' is outside 0..%d ([%s] classes has %d names)", path, row, v, subj,
                                ds->num_classes - 1, ds->name, ds->num_classes);
            break;
        }
        if (!*subj || strlen(subj) >= sizeof r->subject) {
            e = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__, "class_labels %s row %d: empty or too "
                                "long subject", path, row);
            break;
        }
        for (int k = 0; k < n && !e; k++)
            if (!strcmp(r[k].subject, subj))
                e = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__, "class_labels %s row %d: subject "
                                    "'%s' is listed again (first on row %d)", path, row, subj, r[k].row);
        if (e) break;
        if (n == cap) {
            csv_row *nr = realloc(r, sizeof *r * (size_t)(cap = cap ? 2 * cap : 64));
            if (!nr) {
                e = mn_error_report(MN_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory reading %s", path);
                break;
            }
            r = nr;
        }
        snprintf(r[n].subject, sizeof r->subject, "%s", subj);
        r[n].label = v, r[n].row = row;
        n++;
    }
    if (!e && ferror(f))
        e = mn_error_report(MN_ERR_IO, __FILE__, __LINE__, __func__, "class_labels %s: read error", path);
    fclose(f);
    if (e) {
        free(r);
        return e;
    }
    *rows = r, *nrows = n;
    return MN_OK;
}

/* Rank 0: append the class of each of the n images (newline-separated in `images`) of classification dataset ds,
 * one line each, to the blob.  An image whose subject has no row is an error naming the CSV and the subject. */
static mn_err expand_classes(const char *root, const mn_dataset_def *ds, const char *images, int n, char **buf,
                             size_t *len, size_t *cap)
{
    char path[2048];
    if (ds->class_labels[0] != '/' && root[0]) snprintf(path, sizeof path, "%s/%s", root, ds->class_labels);
    else snprintf(path, sizeof path, "%s", ds->class_labels);
    csv_row *rows = NULL;
    int nrows = 0;
    MN_CALL(read_csv(path, ds, &rows, &nrows));
    mn_err e = MN_OK;
    const char *p = images;
    for (int i = 0; i < n && !e; i++) {
        size_t l = strcspn(p, "\n");
        char subj[256];
        subject_of(p, l, subj, sizeof subj);
        int found = -1;
        for (int k = 0; k < nrows && found < 0; k++)
            if (!strcmp(rows[k].subject, subj)) found = k;
        char num[32];
        if (found < 0)
            e = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__, "class_labels %s: no row for subject "
                                "'%s' (image %.*s of dataset [%s])", path, subj, (int)l, p, ds->name);
        else if (snprintf(num, sizeof num, "%ld", rows[found].label), !append(buf, len, cap, num))
            e = mn_error_report(MN_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory expanding file lists");
        p += l + (p[l] ? 1 : 0);
    }
    free(rows);
    return e;
}

/* Rank 0: the blob "<n>\n" followed by n image and n label paths, one per line, and for a classification dataset
 * n classes, one per line, for every dataset. */
static mn_err expand_all(const mn_corpus_def *def, char **blob, size_t *blen)
{
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    MN_CHECK(buf, MN_ERR_MEM, "out of memory expanding file lists");
    buf[0] = 0;
    for (int d = 0; d < def->num_datasets; d++) {
        const mn_dataset_def *ds = &def->datasets[d];
        char *ib = NULL, *lb = NULL;
        size_t il = 0, ic = 0, ll = 0, lc = 0;
        int ni = 0, nl = 0;
        mn_err e = expand_list(def->root, ds->image_pattern, "image", ds->name, &ib, &il, &ic, &ni);
        if (!e) e = expand_list(def->root, ds->label_pattern, "label", ds->name, &lb, &ll, &lc, &nl);
        if (!e && ni != nl)
            e = mn_error_report(MN_ERR_CONFIG, __FILE__, __LINE__, __func__, "dataset [%s]: %d image file(s) but %d "
                                "label file(s); images and labels are paired in sorted order", ds->name, ni, nl);
        char head[32];
        snprintf(head, sizeof head, "%d", ni);
        if (!e && !append(&buf, &len, &cap, head)) e = MN_ERR_MEM;
        if (!e && len + il + ll + 1 > cap) {
            char *nb = realloc(buf, (len + il + ll + 1) * 2);
            if (!nb) e = MN_ERR_MEM;
            else buf = nb, cap = (len + il + ll + 1) * 2;
        }
        if (!e) {
            memcpy(buf + len, ib, il), len += il;
            memcpy(buf + len, lb, ll), len += ll;
            buf[len] = 0;
        }
        if (!e && ds->task == MN_TASK_CLS) e = expand_classes(def->root, ds, ib, ni, &buf, &len, &cap);
        free(ib), free(lb);
        if (e) {
            free(buf);
            MN_CHECK(!e, e, "called from expand_list / expand_classes");
        }
    }
    *blob = buf;
    *blen = len;
    return MN_OK;
}

mn_err mn_corpus_def_expand(MPI_Comm comm, mn_corpus_def *def)
{
    int rank = 0;
    MN_MPI(MPI_Comm_rank(comm, &rank));
    char *blob = NULL;
    size_t blen = 0;
    long long len = 0;
    if (rank == 0) {
        mn_err e = expand_all(def, &blob, &blen);
        len = e ? -1 - (long long)e : (long long)blen;
    }
    MN_MPI(MPI_Bcast(&len, 1, MPI_LONG_LONG, 0, comm));
    if (len < 0 && rank == 0) return mn_error_report((mn_err)(-1 - len), __FILE__, __LINE__, __func__, "called from "
                                                     "expand_all");
    MN_CHECK(len >= 0, (mn_err)(-1 - len), "cannot expand the file lists of the corpus definition (rank 0 reported "
             "the cause)");
    if (rank != 0) {
        blob = malloc((size_t)len + 1);
        MN_CHECK(blob, MN_ERR_MEM, "out of memory for the file lists");
    }
    int rc = MPI_Bcast(blob, (int)len + 1, MPI_CHAR, 0, comm);
    if (rc != MPI_SUCCESS) {
        free(blob);
        return mn_mpi_report(rc, "MPI_Bcast(file lists)", __FILE__, __LINE__, __func__);
    }
    /* Parse "<n>\n" + n images + n labels per dataset. */
    char *p = blob;
    mn_err e = MN_OK;
    for (int d = 0; d < def->num_datasets && !e; d++) {
        mn_dataset_def *ds = &def->datasets[d];
        int n = (int)strtol(p, &p, 10);
        p++;
        ds->num_pairs = n;
        ds->images = calloc((size_t)n, sizeof(char *));
        ds->labels = calloc((size_t)n, sizeof(char *));
        if (ds->task == MN_TASK_CLS) ds->pair_class = calloc((size_t)n, sizeof(int));
        if (!ds->images || !ds->labels || (ds->task == MN_TASK_CLS && !ds->pair_class)) {
            e = MN_ERR_MEM;
            break;
        }
        for (int k = 0; k < 2 * n && !e; k++) {
            char *nl = strchr(p, '\n');
            size_t l = nl ? (size_t)(nl - p) : strlen(p);
            char *s = malloc(l + 1);
            if (!s) {
                e = MN_ERR_MEM;
                break;
            }
            memcpy(s, p, l), s[l] = 0;
            if (k < n) ds->images[k] = s;
            else ds->labels[k - n] = s;
            p += l + (nl ? 1 : 0);
        }
        for (int k = 0; k < n && ds->task == MN_TASK_CLS; k++) ds->pair_class[k] = (int)strtol(p, &p, 10), p++;
    }
    free(blob);
    MN_CHECK(!e, e, "out of memory for the file lists");
    return MN_OK;
}

void mn_corpus_def_destroy(mn_corpus_def **pdef)
{
    if (!pdef || !*pdef) return;
    mn_corpus_def *def = *pdef;
    for (int d = 0; d < def->num_datasets; d++) {
        mn_dataset_def *ds = &def->datasets[d];
        for (int i = 0; i < ds->num_pairs; i++) {
            if (ds->images) free(ds->images[i]);
            if (ds->labels) free(ds->labels[i]);
        }
        free(ds->images), free(ds->labels), free(ds->pair_class);
    }
    free(def->datasets);
    free(def);
    *pdef = NULL;
}
