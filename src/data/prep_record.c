/* prep_record.c: the preprocessing record (mednet/corpus.h): what inference repeats of prep for a dataset, from the
 * corpus metadata into checkpoint text and back. */
#include "mednet/corpus.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const norm_names[] = {"zscore", "ct", "window", "none", NULL};

void mn_prep_record_of(const mn_corpus_info *info, int d, mn_prep_record *out)
{
    const mn_corpus_dataset *ds = &info->datasets[d];
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", ds->name);
    out->num_classes = ds->num_classes;
    memcpy(out->class_names, ds->class_names, sizeof out->class_names);
    snprintf(out->modality, sizeof out->modality, "%s", ds->modality);
    memcpy(out->spacing, ds->spacing, sizeof out->spacing);
    out->normalisation = ds->normalisation;
    memcpy(out->norm_clip, ds->norm_clip, sizeof out->norm_clip);
    out->norm_mean = ds->norm_mean, out->norm_std = ds->norm_std;
    out->antialias = ds->antialias;
}

mn_err mn_prep_record_append(const mn_prep_record *r, char **text)
{
    char names[MN_CORPUS_MAX_CLASSES * (MN_CORPUS_NAME_LEN + 2)] = "";
    size_t k = 0;
    for (int c = 0; c < r->num_classes; c++)
        k += (size_t)snprintf(names + k, sizeof names - k, "%s%s", c ? ", " : "", r->class_names[c]);
    char sec[sizeof names + 1024];
    int n = snprintf(sec, sizeof sec,
                     "[%s]\nclasses = %s\nmodality = %s\nspacing = %.17g, %.17g, %.17g\nnormalisation = %s\n"
                     "norm_clip = %.17g, %.17g\nnorm_mean = %.17g\nnorm_std = %.17g\nantialias = %s\n\n",
                     r->name, names, r->modality, r->spacing[0], r->spacing[1], r->spacing[2],
                     norm_names[r->normalisation], r->norm_clip[0], r->norm_clip[1], r->norm_mean, r->norm_std,
                     r->antialias ? "true" : "false");
    MN_CHECK(n > 0 && (size_t)n < sizeof sec, MN_ERR_INTERNAL, "preprocessing record of '%s' too long", r->name);
    size_t old = *text ? strlen(*text) : 0;
    char *t = realloc(*text, old + (size_t)n + 1);
    MN_CHECK(t, MN_ERR_MEM, "out of memory for the preprocessing record");
    memcpy(t + old, sec, (size_t)n + 1);
    *text = t;
    return MN_OK;
}

mn_err mn_prep_record_read(mn_config *cfg, const char *name, mn_prep_record *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", name);
    const char *classes = NULL, *mod = NULL;
    int n = 0, norm = 0;
    MN_CALL(mn_config_string(cfg, name, "classes", NULL, &classes));
    MN_CHECK(classes && *classes, MN_ERR_CONFIG, "%s: preprocessing record [%s] has no classes", mn_config_origin(cfg),
             name);
    for (const char *p = classes; *p && out->num_classes < MN_CORPUS_MAX_CLASSES;) {
        while (*p == ' ') p++;
        size_t len = strcspn(p, ",");
        size_t end = len;
        while (end > 0 && p[end - 1] == ' ') end--;
        snprintf(out->class_names[out->num_classes++], MN_CORPUS_NAME_LEN, "%.*s", (int)end, p);
        p += len + (p[len] == ',');
    }
    MN_CHECK(out->num_classes >= 2, MN_ERR_CONFIG, "%s: preprocessing record [%s] lists %d class(es)",
             mn_config_origin(cfg), name, out->num_classes);
    MN_CALL(mn_config_string(cfg, name, "modality", "other", &mod));
    snprintf(out->modality, sizeof out->modality, "%s", mod);
    MN_CALL(mn_config_doubles(cfg, name, "spacing", out->spacing, 3, &n));
    MN_CHECK(n == 3 && out->spacing[0] > 0 && out->spacing[1] > 0 && out->spacing[2] > 0, MN_ERR_CONFIG,
             "%s: preprocessing record [%s]: spacing needs 3 numbers > 0", mn_config_origin(cfg), name);
    MN_CALL(mn_config_choice(cfg, name, "normalisation", NULL, norm_names, &norm));
    out->normalisation = (mn_norm)norm;
    MN_CALL(mn_config_doubles(cfg, name, "norm_clip", out->norm_clip, 2, &n));
    MN_CHECK(n == 2, MN_ERR_CONFIG, "%s: preprocessing record [%s]: norm_clip needs 2 numbers", mn_config_origin(cfg),
             name);
    MN_CALL(mn_config_double(cfg, name, "norm_mean", 0, -1e300, 1e300, &out->norm_mean));
    MN_CALL(mn_config_double(cfg, name, "norm_std", 0, 0, 1e300, &out->norm_std));
    MN_CALL(mn_config_bool(cfg, name, "antialias", 1, &out->antialias));
    return MN_OK;
}
