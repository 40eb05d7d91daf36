/* model_io.c: safetensors export and import of a model with MedicalNet's PyTorch state-dict names.
 *
 * Export writes the tensor table in state-dict order (parameters and BN running statistics interleaved per module,
 * as torch's state_dict() lists them) and, after each BN's running_var, its num_batches_tracked as an I64 scalar, so
 * that load_state_dict(strict=True) of MedicalNet's and MONAI's ResNet classes finds every key.  Import maps names
 * back (a leading "module." from DataParallel checkpoints is stripped), checks dtype and shape per tensor, and either
 * fails on any difference (strict) or loads what matches and reports the rest.  In strict mode every check runs
 * before anything is copied, so a failed import leaves the model unchanged.
 */
#include "mednet/model.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mednet/safetensors.h"
#include "model/model_impl.h"

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

static long bn_batches_of(const mn_model *m, int part)
{
    return part < 0 ? m->enc_bn_batches : m->heads[part].bn_batches;
}

mn_err mn_model_save_safetensors(const mn_model *m, const char *path, int part)
{
    return mn_model_save_safetensors_meta(m, path, part, NULL, NULL, 0);
}

mn_err mn_model_save_safetensors_meta(const mn_model *m, const char *path, int part, const char *const *keys,
                                      const char *const *values, int nextra)
{
    enum { NBASE = 5, MAXEXTRA = 32 };
    MN_CHECK(nextra >= 0 && nextra <= MAXEXTRA, MN_ERR_ARG, "export: %d extra metadata entries (at most %d)", nextra,
             MAXEXTRA);
    MN_CHECK(m && path, MN_ERR_ARG, "NULL model or path");
    MN_CHECK(part >= -2 && part < m->nheads, MN_ERR_ARG, "export: part %d not in [-2, %d)", part, m->nheads);
    int cap = 2 * m->ntensors;
    mn_st_entry *e = calloc((size_t)cap, sizeof *e);
    int64_t *nbt = calloc((size_t)cap, sizeof *nbt);
    char (*names)[96] = calloc((size_t)cap, sizeof *names);
    if (!e || !nbt || !names) {
        free(e);
        free(nbt);
        free(names);
        MN_FAIL(MN_ERR_MEM, "export table of %d tensors", cap);
    }
    int n = 0;
    for (int i = 0; i < m->ntensors; i++) {
        const mn_tensor_info *t = &m->tensors[i];
        if (part != -2 && t->part != -1 && t->part != part) continue;
        mn_st_entry *x = &e[n++];
        x->name = t->name;
        x->dtype = MN_ST_F32;
        x->ndim = t->ndim;
        for (int d = 0; d < t->ndim; d++) x->shape[d] = t->shape[d];
        x->data = (t->kind == MN_TENSOR_PARAM ? m->params : m->bufs) + t->offset;
        if (ends_with(t->name, ".running_var")) {
            /* name minus "running_var" plus "num_batches_tracked" */
            size_t stem = strlen(t->name) - strlen("running_var");
            snprintf(names[n], sizeof names[n], "%.*snum_batches_tracked", (int)stem, t->name);
            nbt[n] = bn_batches_of(m, t->part);
            mn_st_entry *y = &e[n];
            y->name = names[n];
            y->dtype = MN_ST_I64;
            y->ndim = 0;
            y->data = &nbt[n];
            n++;
        }
    }
    char depth[16], shortcut[4], kind[16];
    snprintf(depth, sizeof depth, "%d", m->cfg.depth);
    snprintf(shortcut, sizeof shortcut, "%s", m->shortcut == SC_A ? "A" : "B");
    snprintf(kind, sizeof kind, "%s",
             m->cfg.head_kind == MN_HEAD_SEG ? "conv_seg" : m->cfg.head_kind == MN_HEAD_BRANCH ? "branch" : "fc");
    const char *mk[NBASE + MAXEXTRA] = {"format", "producer", "depth", "shortcut_type", "head"};
    const char *mv[NBASE + MAXEXTRA] = {"pt", "mednet " MN_VERSION, depth, shortcut, kind};
    for (int i = 0; i < nextra; i++) mk[NBASE + i] = keys[i], mv[NBASE + i] = values[i];
    mn_err err = mn_st_write(path, e, n, mk, mv, NBASE + nextra);
    free(e);
    free(nbt);
    free(names);
    MN_CHECK(err == MN_OK, err, "export of the model to %s failed", path);
    return MN_OK;
}

/* Append to the report's detail text (truncating quietly). */
static void detail(mn_import_report *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void detail(mn_import_report *r, const char *fmt, ...)
{
    size_t len = strlen(r->detail);
    if (len + 1 >= sizeof r->detail) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->detail + len, sizeof r->detail - len, fmt, ap);
    va_end(ap);
}

static void shape_str(char *buf, size_t n, int ndim, const int64_t *s)
{
    size_t k = 0;
    buf[0] = '\0';
    if (ndim == 0) snprintf(buf, n, "scalar");
    for (int d = 0; d < ndim && k + 1 < n; d++) k += (size_t)snprintf(buf + k, n - k, d ? "x%lld" : "%lld", (long long)s[d]);
}

/* Does the file tensor match model tensor t? 1 yes, 0 mis-shaped. */
static int same_shape(const mn_st_tensor *f, const mn_tensor_info *t)
{
    if (f->ndim != t->ndim) return 0;
    for (int d = 0; d < t->ndim; d++)
        if (f->shape[d] != t->shape[d]) return 0;
    return 1;
}

/* enc_only: the encoder's tensors are required (strictly) and every other file tensor is skipped, whatever its
 * name or shape (a MedicalNet file's conv_seg, or a head of another class count, is not this model's head). */
static mn_err load(mn_model *m, const mn_safetensors *st, const char *path, int strict, int enc_only,
                   mn_import_report *r)
{
    int nt = m->ntensors, nf = mn_st_count(st);
    unsigned char *seen = calloc((size_t)nt + 1, 1);
    int *match = calloc((size_t)nf + 1, sizeof *match);
    if (!seen || !match) {
        free(seen);
        free(match);
        MN_FAIL(MN_ERR_MEM, "import tables");
    }
    mn_err err = MN_OK;
    /* Classify every file tensor. */
    for (int i = 0; i < nf && !err; i++) {
        const mn_st_tensor *f = mn_st_get(st, i);
        const char *name = strncmp(f->name, "module.", 7) ? f->name : f->name + 7;
        match[i] = -1;
        if (ends_with(name, "num_batches_tracked")) {
            /* A scalar; some writers store it with shape [1]. */
            if (f->dtype != MN_ST_I64 || f->end - f->begin != 8)
                err = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__,
                                      "%s: tensor '%s' must be one I64 value, found %s with %zu bytes", path, f->name,
                                      mn_st_dtype_name(f->dtype), f->end - f->begin);
            match[i] = -2;
            continue;
        }
        int t = mn_model_find_tensor(m, name);
        if (enc_only && (t < 0 || m->tensors[t].part >= 0)) {
            r->skipped++;
            continue;
        }
        if (t < 0) {
            r->unexpected++;
            detail(r, "%sunexpected: %s", r->detail[0] ? "; " : "", f->name);
            continue;
        }
        const mn_tensor_info *ti = &m->tensors[t];
        if (f->dtype != MN_ST_F32) {
            err = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__,
                                  "%s: tensor '%s' has dtype %s, expected F32 (convert it with torch: .float())", path,
                                  f->name, mn_st_dtype_name(f->dtype));
            break;
        }
        seen[t] = 1;
        if (!same_shape(f, ti)) {
            char a[96], b[96];
            int64_t ms[5];
            for (int d = 0; d < ti->ndim; d++) ms[d] = ti->shape[d];
            shape_str(a, sizeof a, f->ndim, f->shape);
            shape_str(b, sizeof b, ti->ndim, ms);
            r->mis_shaped++;
            detail(r, "%smis-shaped: %s (file %s, model %s)", r->detail[0] ? "; " : "", f->name, a, b);
            continue;
        }
        match[i] = t;
    }
    for (int t = 0; t < nt && !err; t++)
        if (!seen[t] && !(enc_only && m->tensors[t].part >= 0)) {
            r->missing++;
            detail(r, "%smissing: %s", r->detail[0] ? "; " : "", m->tensors[t].name);
        }
    if (!err && strict && (r->missing || r->unexpected || r->mis_shaped))
        err = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__,
                              "%s: strict import: %d missing, %d unexpected, %d mis-shaped tensors: %s", path,
                              r->missing, r->unexpected, r->mis_shaped, r->detail);
    /* Copy. */
    for (int i = 0; i < nf && !err; i++) {
        const mn_st_tensor *f = mn_st_get(st, i);
        if (match[i] == -2) {
            /* num_batches_tracked: take the encoder's and each head's from their own BN layers. */
            char nm[128];
            const char *name = strncmp(f->name, "module.", 7) ? f->name : f->name + 7;
            size_t stem = strlen(name) - strlen("num_batches_tracked");
            snprintf(nm, sizeof nm, "%.*srunning_var", (int)stem, name);
            int t = mn_model_find_tensor(m, nm);
            if (t >= 0 && !(enc_only && m->tensors[t].part >= 0)) {
                int64_t v;
                memcpy(&v, f->data, sizeof v);
                if (m->tensors[t].part < 0)
                    m->enc_bn_batches = (long)v;
                else
                    m->heads[m->tensors[t].part].bn_batches = (long)v;
            }
            continue;
        }
        if (match[i] < 0) continue;
        const mn_tensor_info *ti = &m->tensors[match[i]];
        float *dst = (ti->kind == MN_TENSOR_PARAM ? m->params : m->bufs) + ti->offset;
        memcpy(dst, f->data, ti->numel * sizeof(float));
        r->loaded++;
    }
    free(seen);
    free(match);
    return err;
}

static mn_err load_file(mn_model *m, const char *path, int strict, int enc_only, mn_import_report *rep)
{
    MN_CHECK(m && path, MN_ERR_ARG, "NULL model or path");
    mn_import_report local;
    mn_import_report *r = rep ? rep : &local;
    memset(r, 0, sizeof *r);
    mn_safetensors *st = NULL;
    MN_CALL(mn_st_open(path, &st));
    mn_err err = load(m, st, path, strict, enc_only, r);
    mn_st_close(&st);
    if (err) return err;
    if (r->missing || r->unexpected || r->mis_shaped)
        mn_log_warn("%s: loaded %d tensors; %d missing, %d unexpected, %d mis-shaped: %s", path, r->loaded, r->missing,
                    r->unexpected, r->mis_shaped, r->detail);
    return MN_OK;
}

mn_err mn_model_load_safetensors(mn_model *m, const char *path, int strict, mn_import_report *rep)
{
    return load_file(m, path, strict, 0, rep);
}

mn_err mn_model_load_safetensors_encoder(mn_model *m, const char *path, mn_import_report *rep)
{
    return load_file(m, path, 1, 1, rep);
}
