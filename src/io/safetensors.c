/* safetensors.c: a bounds-checked reader and a writer of the safetensors format (see safetensors.h).
 *
 * The reader copies the file image, parses the JSON header with a small recursive-descent parser that only knows
 * the shapes safetensors uses (an object of tensor objects plus an optional "__metadata__" object of strings), and
 * then validates the data offsets as the reference implementation does.  Every read goes through a cursor that
 * checks against the header end, so a truncated or corrupt file yields an error with its byte offset, never an
 * out-of-bounds read.  A general JSON library was considered and rejected: the grammar needed is tiny and the
 * offset-precise error messages are easier to give here.
 *
 * The writer emits tensors in the caller's order with contiguous offsets and pads the header with spaces so the
 * data region starts 8-byte aligned (as the Python writer does).  Data are written as-is: mednet runs on
 * little-endian hosts only, which the reader and writer check once.
 */
#include "mednet/safetensors.h"
#include "mednet/limits.h"
#include "mednet/mem.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ST_MAX_HEADER ((uint64_t)100 * 1024 * 1024) /* the reference implementation's limit */

static const struct {
    const char *name;
    size_t size;
} dtypes[MN_ST_NDTYPES] = {
    [MN_ST_F32] = {"F32", 4}, [MN_ST_F64] = {"F64", 8}, [MN_ST_F16] = {"F16", 2}, [MN_ST_BF16] = {"BF16", 2},
    [MN_ST_I64] = {"I64", 8}, [MN_ST_I32] = {"I32", 4}, [MN_ST_I16] = {"I16", 2}, [MN_ST_I8] = {"I8", 1},
    [MN_ST_U8] = {"U8", 1},   [MN_ST_BOOL] = {"BOOL", 1},
};

struct mn_safetensors {
    unsigned char *file; /* the whole file image */
    size_t file_len;
    int n;
    mn_st_tensor *t; /* sorted by begin */
    int nmeta;
    char **meta_k, **meta_v;
};

const char *mn_st_dtype_name(mn_st_dtype t) { return (unsigned)t < MN_ST_NDTYPES ? dtypes[t].name : "?"; }
size_t mn_st_dtype_size(mn_st_dtype t) { return (unsigned)t < MN_ST_NDTYPES ? dtypes[t].size : 0; }

static int little_endian(void)
{
    const uint16_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

/* ---- the JSON cursor ---- */

typedef struct cursor {
    const unsigned char *p; /* header start (file offset 8) */
    size_t len, pos;        /* header length, position within it */
    const char *origin;
} cursor;

#define FILE_OFF(c) ((size_t)8 + (c)->pos)

static void skip_ws(cursor *c)
{
    while (c->pos < c->len && (c->p[c->pos] == ' ' || c->p[c->pos] == '\t' || c->p[c->pos] == '\n' ||
                               c->p[c->pos] == '\r'))
        c->pos++;
}

/* Expect character ch after optional whitespace. */
static mn_err expect(cursor *c, char ch, const char *where)
{
    skip_ws(c);
    MN_CHECK(c->pos < c->len, MN_ERR_FORMAT, "%s: byte %zu: header ends where '%c' was expected %s (truncated?)",
             c->origin, FILE_OFF(c), ch, where);
    MN_CHECK(c->p[c->pos] == (unsigned char)ch, MN_ERR_FORMAT, "%s: byte %zu: expected '%c' %s, found '%c'",
             c->origin, FILE_OFF(c), ch, where, c->p[c->pos] >= 32 && c->p[c->pos] < 127 ? c->p[c->pos] : '?');
    c->pos++;
    return MN_OK;
}

/* 1 and consume if the next non-space character is ch. */
static int accept(cursor *c, char ch)
{
    skip_ws(c);
    if (c->pos < c->len && c->p[c->pos] == (unsigned char)ch) {
        c->pos++;
        return 1;
    }
    return 0;
}

static int hexval(unsigned char ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

static mn_err read_hex4(cursor *c, unsigned *v)
{
    MN_CHECK(c->pos + 4 <= c->len, MN_ERR_FORMAT, "%s: byte %zu: truncated \\u escape", c->origin, FILE_OFF(c));
    *v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(c->p[c->pos + i]);
        MN_CHECK(h >= 0, MN_ERR_FORMAT, "%s: byte %zu: bad hex digit in \\u escape", c->origin, FILE_OFF(c) + i);
        *v = *v * 16 + (unsigned)h;
    }
    c->pos += 4;
    return MN_OK;
}

/* Parse a JSON string into a new NUL-terminated UTF-8 buffer (*out, caller frees). */
static mn_err parse_string(cursor *c, char **out)
{
    *out = NULL;
    MN_CALL(expect(c, '"', "(start of a string)"));
    size_t start = c->pos;
    /* The decoded string is never longer than the raw one. */
    size_t end = start;
    while (end < c->len && c->p[end] != '"') end += (c->p[end] == '\\') ? 2 : 1;
    MN_CHECK(end < c->len, MN_ERR_FORMAT, "%s: byte %zu: unterminated string in the header", c->origin,
             (size_t)8 + start - 1);
    char *s = NULL;
    MN_CALL(mn_malloc(end - start + 1, "safetensors name", (void **)&s));
    size_t k = 0;
    mn_err err = MN_OK;
    while (c->pos < end) {
        unsigned char ch = c->p[c->pos++];
        if (ch < 0x20) {
            err = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__,
                                  "%s: byte %zu: control character in a string", c->origin, FILE_OFF(c) - 1);
            break;
        }
        if (ch != '\\') {
            s[k++] = (char)ch;
            continue;
        }
        unsigned char e = c->p[c->pos++]; /* in bounds: end was found stepping over escapes */
        const char *simple = strchr("\"\\/bfnrt", e);
        if (e && simple) {
            static const char rep[] = "\"\\/\b\f\n\r\t";
            s[k++] = rep[simple - "\"\\/bfnrt"];
            continue;
        }
        if (e != 'u') {
            err = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__, "%s: byte %zu: bad escape '\\%c'",
                                  c->origin, FILE_OFF(c) - 1, e >= 32 && e < 127 ? e : '?');
            break;
        }
        unsigned u = 0;
        /* \uXXXX occupies 6 raw bytes and encodes to at most 3 (4 for a pair of 12): the buffer suffices. */
        if ((err = read_hex4(c, &u)) != MN_OK) break;
        if (u >= 0xD800 && u < 0xDC00 && c->pos + 6 <= end && c->p[c->pos] == '\\' && c->p[c->pos + 1] == 'u') {
            unsigned lo = 0;
            c->pos += 2;
            if ((err = read_hex4(c, &lo)) != MN_OK) break;
            u = (lo >= 0xDC00 && lo < 0xE000) ? 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00) : 0xFFFD;
        }
        if (u < 0x80) {
            s[k++] = (char)u;
        } else if (u < 0x800) {
            s[k++] = (char)(0xC0 | (u >> 6));
            s[k++] = (char)(0x80 | (u & 0x3F));
        } else if (u < 0x10000) {
            s[k++] = (char)(0xE0 | (u >> 12));
            s[k++] = (char)(0x80 | ((u >> 6) & 0x3F));
            s[k++] = (char)(0x80 | (u & 0x3F));
        } else {
            s[k++] = (char)(0xF0 | (u >> 18));
            s[k++] = (char)(0x80 | ((u >> 12) & 0x3F));
            s[k++] = (char)(0x80 | ((u >> 6) & 0x3F));
            s[k++] = (char)(0x80 | (u & 0x3F));
        }
    }
    if (err) {
        mn_free(&s);
        return err;
    }
    s[k] = '\0';
    c->pos = end + 1;
    *out = s;
    return MN_OK;
}

/* Non-negative integer, at most 2^53 (JSON numbers beyond that are not exact). */
static mn_err parse_uint(cursor *c, uint64_t *v, const char *what, const char *tname)
{
    skip_ws(c);
    size_t at = FILE_OFF(c);
    MN_CHECK(c->pos < c->len && c->p[c->pos] >= '0' && c->p[c->pos] <= '9', MN_ERR_FORMAT,
             "%s: byte %zu: expected a non-negative integer in %s of tensor '%s'", c->origin, at, what, tname);
    uint64_t x = 0;
    while (c->pos < c->len && c->p[c->pos] >= '0' && c->p[c->pos] <= '9') {
        x = x * 10 + (uint64_t)(c->p[c->pos++] - '0');
        MN_CHECK(x <= ((uint64_t)1 << 53), MN_ERR_FORMAT, "%s: byte %zu: integer too large in %s of tensor '%s'",
                 c->origin, at, what, tname);
    }
    *v = x;
    return MN_OK;
}

static void free_tensors(mn_safetensors *st)
{
    for (int i = 0; i < st->n; i++) mn_free(&st->t[i].name);
    for (int i = 0; i < st->nmeta; i++) {
        mn_free(&st->meta_k[i]);
        mn_free(&st->meta_v[i]);
    }
}

void mn_st_close(mn_safetensors **pst)
{
    if (!pst || !*pst) return;
    mn_safetensors *st = *pst;
    free_tensors(st);
    free(st->t);
    free(st->meta_k);
    free(st->meta_v);
    mn_free(&st->file);
    free(st);
    *pst = NULL;
}

/* "__metadata__": {"k": "v", ...} */
static mn_err parse_metadata(cursor *c, mn_safetensors *st)
{
    MN_CALL(expect(c, '{', "to open __metadata__"));
    if (accept(c, '}')) return MN_OK;
    do {
        char *k = NULL, *v = NULL;
        MN_CALL(parse_string(c, &k));
        mn_err err = expect(c, ':', "after a metadata key");
        if (!err) {
            skip_ws(c);
            err = parse_string(c, &v);
        }
        if (!err) {
            char **nk = realloc(st->meta_k, sizeof *nk * (size_t)(st->nmeta + 1));
            if (nk) st->meta_k = nk;
            char **nv = nk ? realloc(st->meta_v, sizeof *nv * (size_t)(st->nmeta + 1)) : NULL;
            if (nv) st->meta_v = nv;
            if (!nk || !nv) err = mn_error_report(MN_ERR_MEM, __FILE__, __LINE__, __func__, "metadata table");
        }
        if (err) {
            mn_free(&k);
            mn_free(&v);
            return err;
        }
        st->meta_k[st->nmeta] = k;
        st->meta_v[st->nmeta] = v;
        st->nmeta++;
    } while (accept(c, ','));
    MN_CALL(expect(c, '}', "to close __metadata__ (or ',' between entries)"));
    return MN_OK;
}

/* {"dtype": "F32", "shape": [..], "data_offsets": [b, e]} into t (t->name already set). */
static mn_err parse_tensor(cursor *c, mn_st_tensor *t)
{
    int have_dtype = 0, have_shape = 0, have_off = 0;
    size_t obj_at = FILE_OFF(c);
    MN_CALL(expect(c, '{', "to open a tensor entry"));
    do {
        char *key = NULL;
        skip_ws(c);
        size_t key_at = FILE_OFF(c);
        MN_CALL(parse_string(c, &key));
        mn_err err = expect(c, ':', "after a key");
        if (err) {
            mn_free(&key);
            return err;
        }
        if (!strcmp(key, "dtype")) {
            char *d = NULL;
            skip_ws(c);
            size_t at = FILE_OFF(c);
            err = parse_string(c, &d);
            if (!err) {
                int found = -1;
                for (int i = 0; i < MN_ST_NDTYPES; i++)
                    if (!strcmp(d, dtypes[i].name)) found = i;
                if (found < 0)
                    err = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__,
                                          "%s: byte %zu: unknown dtype '%s' of tensor '%s'", c->origin, at, d, t->name);
                else
                    t->dtype = (mn_st_dtype)found;
                have_dtype = 1;
            }
            mn_free(&d);
        } else if (!strcmp(key, "shape")) {
            err = expect(c, '[', "to open a shape");
            t->ndim = 0;
            if (!err && !accept(c, ']')) {
                do {
                    uint64_t v = 0;
                    if (t->ndim >= MN_ST_MAX_DIMS) {
                        err = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__,
                                              "%s: byte %zu: tensor '%s' has more than %d dimensions", c->origin,
                                              FILE_OFF(c), t->name, MN_ST_MAX_DIMS);
                        break;
                    }
                    if ((err = parse_uint(c, &v, "the shape", t->name)) != MN_OK) break;
                    t->shape[t->ndim++] = (int64_t)v;
                } while (accept(c, ','));
                if (!err) err = expect(c, ']', "to close a shape");
            }
            have_shape = 1;
        } else if (!strcmp(key, "data_offsets")) {
            uint64_t b = 0, e = 0;
            err = expect(c, '[', "to open data_offsets");
            if (!err) err = parse_uint(c, &b, "data_offsets", t->name);
            if (!err) err = expect(c, ',', "between the two data_offsets");
            if (!err) err = parse_uint(c, &e, "data_offsets", t->name);
            if (!err) err = expect(c, ']', "to close data_offsets");
            t->begin = (size_t)b;
            t->end = (size_t)e;
            have_off = 1;
        } else {
            err = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__,
                                  "%s: byte %zu: unknown key '%s' in the entry of tensor '%s'", c->origin, key_at, key,
                                  t->name);
        }
        mn_free(&key);
        if (err) return err;
    } while (accept(c, ','));
    MN_CALL(expect(c, '}', "to close a tensor entry (or ',' between keys)"));
    MN_CHECK(have_dtype && have_shape && have_off, MN_ERR_FORMAT,
             "%s: byte %zu: tensor '%s' lacks %s", c->origin, obj_at, t->name,
             !have_dtype ? "a dtype" : !have_shape ? "a shape" : "data_offsets");
    return MN_OK;
}

static int cmp_begin(const void *a, const void *b)
{
    const mn_st_tensor *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static mn_err parse_header(mn_safetensors *st, const char *origin)
{
    MN_CHECK(st->file_len >= 8, MN_ERR_FORMAT,
             "%s: byte 0: file is %zu bytes, shorter than the 8-byte header length (truncated or not safetensors)",
             origin, st->file_len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | st->file[i];
    MN_CHECK(hlen <= ST_MAX_HEADER, MN_ERR_FORMAT,
             "%s: byte 0: header length %llu exceeds the 100 MiB limit (corrupt or not safetensors)", origin,
             (unsigned long long)hlen);
    MN_CHECK(hlen <= st->file_len - 8, MN_ERR_FORMAT,
             "%s: byte 8: header length %llu runs past the end of the %zu-byte file (truncated)", origin,
             (unsigned long long)hlen, st->file_len);
    cursor c = {st->file + 8, (size_t)hlen, 0, origin};
    size_t data_len = st->file_len - 8 - (size_t)hlen;
    const unsigned char *data = st->file + 8 + hlen;

    /* The top-level object. */
    MN_CALL(expect(&c, '{', "at the start of the header"));
    int cap = 0;
    if (!accept(&c, '}')) {
        do {
            char *name = NULL;
            skip_ws(&c);
            size_t name_at = FILE_OFF(&c);
            MN_CALL(parse_string(&c, &name));
            mn_err err = expect(&c, ':', "after a tensor name");
            if (!err && !strcmp(name, "__metadata__")) {
                mn_free(&name);
                MN_CALL(parse_metadata(&c, st));
                continue;
            }
            for (int i = 0; !err && i < st->n; i++)
                if (!strcmp(st->t[i].name, name))
                    err = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__,
                                          "%s: byte %zu: tensor '%s' appears twice", origin, name_at, name);
            if (!err && st->n == cap) {
                int ncap = cap ? 2 * cap : 64;
                mn_st_tensor *nt = realloc(st->t, sizeof *nt * (size_t)ncap);
                if (!nt)
                    err = mn_error_report(MN_ERR_MEM, __FILE__, __LINE__, __func__, "tensor table of %d", ncap);
                else {
                    st->t = nt;
                    cap = ncap;
                }
            }
            if (err) {
                mn_free(&name);
                return err;
            }
            mn_st_tensor *t = &st->t[st->n++];
            memset(t, 0, sizeof *t);
            t->name = name;
            MN_CALL(parse_tensor(&c, t));
        } while (accept(&c, ','));
        MN_CALL(expect(&c, '}', "to close the header (or ',' between tensors)"));
    }
    skip_ws(&c);
    MN_CHECK(c.pos == c.len, MN_ERR_FORMAT, "%s: byte %zu: unexpected bytes after the header's closing brace",
             origin, FILE_OFF(&c));

    /* Sizes and offsets: each tensor's byte size matches its shape; the tensors tile the data region. */
    for (int i = 0; i < st->n; i++) {
        mn_st_tensor *t = &st->t[i];
        uint64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            MN_CHECK(t->shape[d] == 0 || numel <= (((uint64_t)1 << 62) / (uint64_t)t->shape[d]), MN_ERR_FORMAT,
                     "%s: tensor '%s': shape overflows", origin, t->name);
            numel *= (uint64_t)t->shape[d];
        }
        MN_CHECK(t->begin <= t->end, MN_ERR_FORMAT, "%s: tensor '%s': data_offsets [%zu, %zu] are reversed", origin,
                 t->name, t->begin, t->end);
        MN_CHECK(numel <= ((uint64_t)1 << 60) && numel * dtypes[t->dtype].size == t->end - t->begin, MN_ERR_FORMAT,
                 "%s: tensor '%s': data_offsets [%zu, %zu] hold %zu bytes but shape x %s needs %llu", origin, t->name,
                 t->begin, t->end, t->end - t->begin, dtypes[t->dtype].name,
                 (unsigned long long)(numel * dtypes[t->dtype].size));
        MN_CHECK(t->end <= data_len, MN_ERR_FORMAT,
                 "%s: tensor '%s': data ends at file byte %llu, past the end of the %zu-byte file (truncated)", origin,
                 t->name, (unsigned long long)(8 + hlen + t->end), st->file_len);
    }
    if (st->n > 1) qsort(st->t, (size_t)st->n, sizeof *st->t, cmp_begin); /* st->t is NULL when n == 0 */
    size_t at = 0;
    for (int i = 0; i < st->n; i++) {
        mn_st_tensor *t = &st->t[i];
        MN_CHECK(t->begin == at, MN_ERR_FORMAT,
                 "%s: tensor '%s': data starts at file byte %llu but the previous tensor ends at %llu (%s)", origin,
                 t->name, (unsigned long long)(8 + hlen + t->begin), (unsigned long long)(8 + hlen + at),
                 t->begin < at ? "overlap" : "hole");
        at = t->end;
        t->data = data + t->begin;
    }
    MN_CHECK(at == data_len, MN_ERR_FORMAT,
             "%s: byte %llu: %zu bytes after the last tensor's data (file %zu bytes; corrupt header?)", origin,
             (unsigned long long)(8 + hlen + at), data_len - at, st->file_len);
    return MN_OK;
}

mn_err mn_st_parse(const void *buf, size_t len, const char *origin, mn_safetensors **out)
{
    *out = NULL;
    MN_CHECK(little_endian(), MN_ERR_INTERNAL, "safetensors: big-endian hosts are not supported");
    mn_safetensors *st = calloc(1, sizeof *st);
    MN_CHECK(st, MN_ERR_MEM, "safetensors object");
    mn_err err = mn_malloc(len, "safetensors file image", (void **)&st->file);
    if (!err) {
        if (len) memcpy(st->file, buf, len);
        st->file_len = len;
        err = parse_header(st, origin ? origin : "(buffer)");
    }
    if (err) {
        mn_st_close(&st);
        return err;
    }
    *out = st;
    return MN_OK;
}

mn_err mn_st_open(const char *path, mn_safetensors **out)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    MN_CHECK(f, MN_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    unsigned char *buf = NULL;
    long sz = -1;
    if (fseek(f, 0, SEEK_END) == 0) sz = ftell(f);
    mn_err err = MN_OK;
    if (sz < 0 || fseek(f, 0, SEEK_SET) != 0)
        err = mn_error_report(MN_ERR_IO, __FILE__, __LINE__, __func__, "cannot size %s: %s", path, strerror(errno));
    if (!err && (int64_t)sz > MN_MAX_SAFETENSORS_BYTES)
        err = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__, "%s is %ld bytes, more than mednet's "
                              "limit of %lld bytes for a safetensors file (read whole into memory); refused", path,
                              sz, (long long)MN_MAX_SAFETENSORS_BYTES);
    if (!err) err = mn_malloc((size_t)sz, path, (void **)&buf);
    if (!err && sz > 0 && fread(buf, 1, (size_t)sz, f) != (size_t)sz)
        err = mn_error_report(MN_ERR_IO, __FILE__, __LINE__, __func__, "cannot read %ld bytes of %s", sz, path);
    if (fclose(f) != 0 && !err)
        err = mn_error_report(MN_ERR_IO, __FILE__, __LINE__, __func__, "cannot close %s", path);
    if (!err) err = mn_st_parse(buf, (size_t)sz, path, out);
    mn_free(&buf);
    return err;
}

int mn_st_count(const mn_safetensors *st) { return st ? st->n : 0; }

const mn_st_tensor *mn_st_get(const mn_safetensors *st, int i)
{
    return (st && i >= 0 && i < st->n) ? &st->t[i] : NULL;
}

const mn_st_tensor *mn_st_find(const mn_safetensors *st, const char *name)
{
    for (int i = 0; st && i < st->n; i++)
        if (!strcmp(st->t[i].name, name)) return &st->t[i];
    return NULL;
}

const char *mn_st_metadata(const mn_safetensors *st, const char *key)
{
    for (int i = 0; st && i < st->nmeta; i++)
        if (!strcmp(st->meta_k[i], key)) return st->meta_v[i];
    return NULL;
}

/* ---- writer ---- */

typedef struct sbuf {
    char *s;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_put(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sb_put(sbuf *b, const char *fmt, ...)
{
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (k < 0) {
            b->oom = 1;
            return;
        }
        if (b->s && b->len + (size_t)k < b->cap) {
            b->len += (size_t)k;
            return;
        }
        size_t ncap = (b->cap + (size_t)k + 1) * 2;
        char *ns = realloc(b->s, ncap);
        if (!ns) {
            b->oom = 1;
            return;
        }
        b->s = ns;
        b->cap = ncap;
    }
}

static mn_err check_json_name(const char *s, const char *what)
{
    MN_CHECK(s && *s, MN_ERR_ARG, "safetensors: empty %s", what);
    for (const char *p = s; *p; p++)
        MN_CHECK(*p != '"' && *p != '\\' && (unsigned char)*p >= 0x20, MN_ERR_ARG,
                 "safetensors: %s '%s' contains a quote, backslash or control character", what, s);
    return MN_OK;
}

mn_err mn_st_write(const char *path, const mn_st_entry *e, int n, const char *const *meta_keys,
                   const char *const *meta_values, int nmeta)
{
    MN_CHECK(little_endian(), MN_ERR_INTERNAL, "safetensors: big-endian hosts are not supported");
    MN_CHECK(n >= 0 && nmeta >= 0, MN_ERR_ARG, "safetensors: negative count");
    for (int i = 0; i < n; i++) {
        MN_CALL(check_json_name(e[i].name, "tensor name"));
        MN_CHECK((unsigned)e[i].dtype < MN_ST_NDTYPES && e[i].ndim >= 0 && e[i].ndim <= MN_ST_MAX_DIMS, MN_ERR_ARG,
                 "safetensors: tensor '%s': bad dtype or ndim", e[i].name);
        for (int j = 0; j < i; j++)
            MN_CHECK(strcmp(e[i].name, e[j].name), MN_ERR_ARG, "safetensors: tensor '%s' given twice", e[i].name);
    }
    for (int i = 0; i < nmeta; i++) {
        MN_CALL(check_json_name(meta_keys[i], "metadata key"));
        MN_CALL(check_json_name(meta_values[i], "metadata value"));
    }

    /* Header JSON. */
    sbuf b = {0};
    size_t off = 0;
    sb_put(&b, "{");
    if (nmeta) {
        sb_put(&b, "\"__metadata__\":{");
        for (int i = 0; i < nmeta; i++) sb_put(&b, "%s\"%s\":\"%s\"", i ? "," : "", meta_keys[i], meta_values[i]);
        sb_put(&b, "}%s", n ? "," : "");
    }
    for (int i = 0; i < n; i++) {
        size_t bytes = dtypes[e[i].dtype].size;
        sb_put(&b, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", i ? "," : "", e[i].name, dtypes[e[i].dtype].name);
        for (int d = 0; d < e[i].ndim; d++) {
            sb_put(&b, "%s%lld", d ? "," : "", (long long)e[i].shape[d]);
            bytes *= (size_t)e[i].shape[d];
        }
        sb_put(&b, "],\"data_offsets\":[%zu,%zu]}", off, off + bytes);
        off += bytes;
    }
    sb_put(&b, "}");
    while (!b.oom && (b.len % 8) != 0) sb_put(&b, " ");
    if (b.oom) {
        free(b.s);
        MN_FAIL(MN_ERR_MEM, "safetensors: header of %d tensors for %s", n, path);
    }

    /* Data, through a temporary file renamed into place. */
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 5);
    if (!tmp) {
        free(b.s);
        MN_FAIL(MN_ERR_MEM, "path");
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    FILE *f = fopen(tmp, "wb");
    mn_err err = MN_OK;
    if (!f) err = mn_error_report(MN_ERR_IO, __FILE__, __LINE__, __func__, "cannot create %s: %s", tmp, strerror(errno));
    if (!err) {
        unsigned char len8[8];
        uint64_t h = b.len;
        for (int i = 0; i < 8; i++) len8[i] = (unsigned char)(h >> (8 * i));
        int ok = fwrite(len8, 1, 8, f) == 8 && fwrite(b.s, 1, b.len, f) == b.len;
        for (int i = 0; ok && i < n; i++) {
            size_t bytes = dtypes[e[i].dtype].size;
            for (int d = 0; d < e[i].ndim; d++) bytes *= (size_t)e[i].shape[d];
            ok = bytes == 0 || fwrite(e[i].data, 1, bytes, f) == bytes;
        }
        int closed = fclose(f) == 0;
        if (!ok || !closed)
            err = mn_error_report(MN_ERR_IO, __FILE__, __LINE__, __func__, "cannot write %s: %s", tmp,
                                  strerror(errno));
        else if (rename(tmp, path) != 0)
            err = mn_error_report(MN_ERR_IO, __FILE__, __LINE__, __func__, "cannot rename %s to %s: %s", tmp, path,
                                  strerror(errno));
        if (err) remove(tmp);
    }
    free(tmp);
    free(b.s);
    return err;
}
