/* config.c: INI configuration on top of inih (Debian's libinih).
 *
 * inih does the parsing; this file keeps the entries in a flat array (configs hold tens of keys, so a linear
 * lookup is fine and keeps the order of the file for dumps), parses typed values with strtol/strtod and full-string
 * checks, and tracks which keys were read.  A later duplicate of a key replaces the earlier one, as in most INI
 * dialects, and so does a command-line override.
 *
 * The config travels as text (mn_config_dump into checkpoints, parsed again on resume), so every entry must be one
 * that inih reads back as it was; what it would not is refused, with the line, rather than silently changed.
 * libinih (as Debian builds it) reads at most INI_MAX_LINE - 1 bytes per line: the rest of a longer line becomes a
 * line of its own (a syntax error, or a new key), so a line, and the `key = value` line the dump writes, may hold at
 * most MN_CONFIG_LINE_MAX characters.  It cuts section names to 49 bytes, so a 49-byte name may already be cut
 * (at most MN_CONFIG_NAME_MAX), and it cuts the key it repeats for a continuation line to as many, so keys are
 * limited alike.  An empty key (a line "= value") would be dumped as " = value", which inih reads
 * as a continuation of the key before it.  "key =;x" has the value ";x", but the dump's "key = ;x" is a key with
 * a comment, so a value cannot start with ';', nor hold ';' after a space or tab (inih keeps it in a continuation
 * line, but on the dump's line it starts a comment).  A key is printable ASCII: no mednet key is anything else,
 * and a byte order mark at the start of a key would be dropped when the dump puts that key on the first line.  A
 * value holds no control character but tab (a carriage return before ';' would also start a comment).
 */
#define _POSIX_C_SOURCE 200809L
#include "mednet/config.h"
#include "mednet/limits.h"

#include <errno.h>
#include <ini.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MN_CONFIG_LINE_MAX (INI_MAX_LINE - 2) /* characters per line, without the newline */
#define MN_CONFIG_NAME_MAX 48 /* bytes of a section name or key */

typedef struct entry {
    char *section, *key, *value;
    int used;
} entry;

struct mn_config {
    entry *e;
    int n, cap;
    char origin[512];
    mn_err err;  /* first allocation error inside the inih callback */
};

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

static entry *find(const mn_config *cfg, const char *section, const char *key)
{
    for (int i = 0; i < cfg->n; i++)
        if (strcmp(cfg->e[i].section, section) == 0 && strcmp(cfg->e[i].key, key) == 0) return &cfg->e[i];
    return NULL;
}

static mn_err set_entry(mn_config *cfg, const char *section, const char *key, const char *value)
{
    entry *e = find(cfg, section, key);
    if (e) {
        char *v = dup_str(value);
        MN_CHECK(v, MN_ERR_MEM, "out of memory in config");
        free(e->value);
        e->value = v;
        return MN_OK;
    }
    if (cfg->n == cfg->cap) {
        int cap = cfg->cap ? 2 * cfg->cap : 32;
        entry *ne = realloc(cfg->e, (size_t)cap * sizeof *ne);
        MN_CHECK(ne, MN_ERR_MEM, "out of memory in config");
        cfg->e = ne;
        cfg->cap = cap;
    }
    entry *ne = &cfg->e[cfg->n];
    ne->section = dup_str(section);
    ne->key = dup_str(key);
    ne->value = dup_str(value);
    ne->used = 0;
    if (!ne->section || !ne->key || !ne->value) {
        free(ne->section), free(ne->key), free(ne->value);
        MN_FAIL(MN_ERR_MEM, "out of memory in config");
    }
    cfg->n++;
    return MN_OK;
}

/* Why inih would not read (section, key, value) back from the dump as it is, or NULL. */
static const char *entry_problem(const char *section, const char *key, const char *value, char *msg, size_t cap)
{
    if (!*key) return "a key is missing before '='";
    for (const char *p = key; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e) {
            snprintf(msg, cap, "key '%s' contains a byte that is not printable ASCII (0x%02x)", key,
                     (unsigned char)*p);
            return msg;
        }
    for (const char *p = value; *p; p++)
        if (((unsigned char)*p < 0x20 && *p != '\t') || *p == 0x7f) {
            snprintf(msg, cap, "the value of key '%s' contains a control character (0x%02x)", key, (unsigned char)*p);
            return msg;
        }
    if (*value == ';') return "a value cannot start with ';' (after `key = ` it starts a comment)";
    /* A continuation line (one starting with white space) keeps " ;..." in its value; on the dump's line it would
     * start a comment. */
    if (strstr(value, " ;") || strstr(value, "\t;"))
        return "a value cannot contain ';' after a space or tab (in a `key = value` line it starts a comment)";
    if (strlen(section) > MN_CONFIG_NAME_MAX) {
        snprintf(msg, cap, "section name '%.*s...' is longer than %d bytes (libinih cuts longer names)",
                 MN_CONFIG_NAME_MAX, section, MN_CONFIG_NAME_MAX);
        return msg;
    }
    if (strlen(key) > MN_CONFIG_NAME_MAX) {
        snprintf(msg, cap, "key '%.*s...' is longer than %d bytes (libinih cuts longer names)", MN_CONFIG_NAME_MAX,
                 key, MN_CONFIG_NAME_MAX);
        return msg;
    }
    size_t n = strlen(key) + 3 + strlen(value);
    if (n > MN_CONFIG_LINE_MAX) {
        snprintf(msg, cap, "`%s = ...` is %zu characters as a config line; libinih reads at most %d per line", key, n,
                 MN_CONFIG_LINE_MAX);
        return msg;
    }
    return NULL;
}

/* The state of one parse: inih reads the text through read_line, so that on_entry knows the line it is on. */
typedef struct parse_state {
    mn_config *cfg;
    const char *p;   /* the text not read yet */
    int line;        /* the line inih is parsing (1-based) */
    int why_line;    /* the line of the first refusal, 0 if none */
    char why[700];
} parse_state;

static void refuse(parse_state *ps, const char *why)
{
    if (ps->why_line) return;
    ps->why_line = ps->line;
    snprintf(ps->why, sizeof ps->why, "%s", why);
}

/* inih's reader: one whole line per call (with its newline), or NULL at the end.  A line longer than inih's buffer
 * would be split into two; it is refused here and the parse ends. */
static char *read_line(char *str, int num, void *stream)
{
    parse_state *ps = stream;
    if (!*ps->p || ps->why_line) return NULL;
    size_t len = strcspn(ps->p, "\n");
    ps->line++;
    if (len > MN_CONFIG_LINE_MAX || len + 2 > (size_t)num) {
        char msg[160];
        snprintf(msg, sizeof msg, "the line is %zu characters long; libinih reads at most %d per line", len,
                 MN_CONFIG_LINE_MAX);
        refuse(ps, msg);
        return NULL;
    }
    if (ps->p[len] == '\n') len++;
    memcpy(str, ps->p, len);
    str[len] = 0;
    ps->p += len;
    return str;
}

static int on_entry(void *user, const char *section, const char *name, const char *value)
{
    parse_state *ps = user;
    if (!name) return 1; /* section header without keys */
    if (!value) value = "";
    char msg[400];
    const char *why = entry_problem(section, name, value, msg, sizeof msg);
    if (why) {
        refuse(ps, why);
        return 0;
    }
    mn_err e = set_entry(ps->cfg, section, name, value);
    if (e) {
        ps->cfg->err = e;
        return 0;
    }
    return 1;
}

mn_err mn_config_parse(const char *text, const char *origin, mn_config **out)
{
    *out = NULL;
    mn_config *cfg = calloc(1, sizeof *cfg);
    MN_CHECK(cfg, MN_ERR_MEM, "out of memory in config");
    snprintf(cfg->origin, sizeof cfg->origin, "%s", origin ? origin : "<string>");
    parse_state ps = {.cfg = cfg, .p = text};
    int rc = ini_parse_stream(read_line, &ps, on_entry, &ps);
    if (rc != 0 || cfg->err || ps.why_line) {
        mn_err code = cfg->err ? cfg->err : MN_ERR_CONFIG;
        char where[600];
        snprintf(where, sizeof where, "%s", cfg->origin);
        mn_config_destroy(&cfg);
        if (code != MN_ERR_CONFIG) MN_FAIL(code, "cannot parse config %s", where);
        if (ps.why_line && (rc <= 0 || ps.why_line <= rc))
            MN_FAIL(MN_ERR_CONFIG, "config %s: line %d: %s", where, ps.why_line, ps.why);
        MN_FAIL(MN_ERR_CONFIG, "config %s: syntax error on line %d (expected `key = value` or `[section]`)", where, rc);
    }
    *out = cfg;
    return MN_OK;
}

mn_err mn_config_read_text(const char *path, char **text, size_t *len)
{
    *text = NULL;
    FILE *f = fopen(path, "rb");
    MN_CHECK(f, MN_ERR_IO, "cannot open config file '%s': %s", path, strerror(errno));
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    if (!buf) {
        fclose(f);
        MN_FAIL(MN_ERR_MEM, "out of memory reading '%s'", path);
    }
    for (;;) {
        if (n + 1 >= cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) {
                free(buf);
                fclose(f);
                MN_FAIL(MN_ERR_MEM, "out of memory reading '%s'", path);
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
        if ((int64_t)n > MN_MAX_CONFIG_BYTES) {
            free(buf);
            fclose(f);
            MN_FAIL(MN_ERR_CONFIG, "config file '%s' is larger than mednet's limit of %lld bytes: not a config file?",
                    path, (long long)MN_MAX_CONFIG_BYTES);
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        MN_FAIL(MN_ERR_IO, "read error on config file '%s'", path);
    }
    buf[n] = 0;
    if (strlen(buf) != n) {
        free(buf);
        MN_FAIL(MN_ERR_CONFIG, "config file '%s' contains a NUL byte: not a text file", path);
    }
    *text = buf;
    if (len) *len = n;
    return MN_OK;
}

mn_err mn_config_load_file(const char *path, mn_config **out)
{
    char *text = NULL;
    MN_CALL(mn_config_read_text(path, &text, NULL));
    mn_err e = mn_config_parse(text, path, out);
    free(text);
    MN_CALL(e);
    return MN_OK;
}

/* Strip leading and trailing white space in place, as inih does for names and values. */
static char *strip(char *s)
{
    while (*s == ' ' || *s == '\t') s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t')) s[--n] = 0;
    return s;
}

/* An override must mean on the command line what it would mean written in the file: the config is stored in
 * checkpoints as text (mn_config_dump) and parsed again on resume, so anything the INI syntax would read
 * differently is refused rather than silently changed (a line break starting a new key, a ']' or '[' in a
 * section, a ':' or a comment character in a key, an inline comment " ;" in a value). */
mn_err mn_config_override(mn_config *cfg, const char *assignment)
{
    const char *eq = strchr(assignment, '=');
    MN_CHECK(eq && eq != assignment, MN_ERR_CONFIG, "override '%s' is not of the form section.key=value", assignment);
    for (const char *p = assignment; *p; p++)
        MN_CHECK((unsigned char)*p >= 0x20 || *p == '\t', MN_ERR_CONFIG,
                 "override '%s' contains a line break or control character", assignment);
    char lhs[256], val[4096];
    size_t n = (size_t)(eq - assignment);
    MN_CHECK(n < sizeof lhs, MN_ERR_CONFIG, "override key too long in '%s'", assignment);
    MN_CHECK(strlen(eq + 1) < sizeof val, MN_ERR_CONFIG, "override value too long in '%s'", assignment);
    memcpy(lhs, assignment, n);
    lhs[n] = 0;
    snprintf(val, sizeof val, "%s", eq + 1);
    char *dot = strrchr(lhs, '.');
    char *section = lhs + n, *key = lhs; /* section "" when there is no dot */
    if (dot) {
        *dot = 0;
        section = strip(lhs);
        key = dot + 1;
    }
    key = strip(key);
    const char *value = strip(val);
    MN_CHECK(*key, MN_ERR_CONFIG, "override '%s' has an empty key", assignment);
    MN_CHECK(!strpbrk(section, "[];#"), MN_ERR_CONFIG,
             "override '%s': a section name cannot contain '[', ']', ';' or '#'", assignment);
    MN_CHECK(!strpbrk(key, ":;#[") , MN_ERR_CONFIG,
             "override '%s': a key cannot contain ':', ';', '#' or '['", assignment);
    char msg[400];
    const char *why = entry_problem(section, key, value, msg, sizeof msg);
    MN_CHECK(!why, MN_ERR_CONFIG, "override '%s': %s", assignment, why ? why : "");
    MN_CALL(set_entry(cfg, section, key, value));
    return MN_OK;
}

void mn_config_destroy(mn_config **pcfg)
{
    if (!pcfg || !*pcfg) return;
    mn_config *cfg = *pcfg;
    for (int i = 0; i < cfg->n; i++) free(cfg->e[i].section), free(cfg->e[i].key), free(cfg->e[i].value);
    free(cfg->e);
    free(cfg);
    *pcfg = NULL;
}

static const char *lookup(mn_config *cfg, const char *section, const char *key)
{
    entry *e = find(cfg, section, key);
    if (!e) return NULL;
    e->used = 1;
    return e->value;
}

/* Report a bad value: "config FILE: [section] key = 'value': <detail>". */
static mn_err bad_value(const mn_config *cfg, const char *section, const char *key, const char *v, int line,
                        const char *func, const char *fmt, ...) __attribute__((format(printf, 7, 8)));
static mn_err bad_value(const mn_config *cfg, const char *section, const char *key, const char *v, int line,
                        const char *func, const char *fmt, ...)
{
    char detail[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    return mn_error_report(MN_ERR_CONFIG, __FILE__, line, func, "config %s: [%s] %s = '%s': %s", cfg->origin,
                           section, key, v, detail);
}
#define BAD_VALUE(cfg, section, key, v, ...) return bad_value((cfg), (section), (key), (v), __LINE__, __func__, __VA_ARGS__)

mn_err mn_config_int(mn_config *cfg, const char *section, const char *key, long def, long lo, long hi, long *out)
{
    const char *v = lookup(cfg, section, key);
    if (!v) {
        *out = def;
        return MN_OK;
    }
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    while (*end == ' ' || *end == '\t') end++;
    if (end == v || *end || errno) BAD_VALUE(cfg, section, key, v, "expected an integer");
    if (x < lo || x > hi) BAD_VALUE(cfg, section, key, v, "expected an integer in [%ld, %ld]", lo, hi);
    *out = x;
    return MN_OK;
}

mn_err mn_config_double(mn_config *cfg, const char *section, const char *key, double def, double lo, double hi,
                        double *out)
{
    const char *v = lookup(cfg, section, key);
    if (!v) {
        *out = def;
        return MN_OK;
    }
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    while (*end == ' ' || *end == '\t') end++;
    if (end == v || *end || errno || !isfinite(x)) BAD_VALUE(cfg, section, key, v, "expected a finite number");
    if (x < lo || x > hi) BAD_VALUE(cfg, section, key, v, "expected a number in [%g, %g]", lo, hi);
    *out = x;
    return MN_OK;
}

mn_err mn_config_bool(mn_config *cfg, const char *section, const char *key, int def, int *out)
{
    const char *v = lookup(cfg, section, key);
    if (!v) {
        *out = def;
        return MN_OK;
    }
    if (!strcasecmp(v, "true") || !strcasecmp(v, "yes") || !strcasecmp(v, "on") || !strcmp(v, "1"))
        *out = 1;
    else if (!strcasecmp(v, "false") || !strcasecmp(v, "no") || !strcasecmp(v, "off") || !strcmp(v, "0"))
        *out = 0;
    else
        BAD_VALUE(cfg, section, key, v, "expected true or false");
    return MN_OK;
}

mn_err mn_config_string(mn_config *cfg, const char *section, const char *key, const char *def, const char **out)
{
    const char *v = lookup(cfg, section, key);
    *out = v ? v : def;
    return MN_OK;
}

mn_err mn_config_choice(mn_config *cfg, const char *section, const char *key, const char *def,
                        const char *const *choices, int *out)
{
    const char *v = lookup(cfg, section, key);
    if (!v) v = def;
    for (int i = 0; choices[i]; i++)
        if (v && strcmp(v, choices[i]) == 0) {
            *out = i;
            return MN_OK;
        }
    char list[256] = "";
    for (int i = 0; choices[i]; i++) {
        strncat(list, choices[i], sizeof list - strlen(list) - 1);
        if (choices[i + 1]) strncat(list, ", ", sizeof list - strlen(list) - 1);
    }
    BAD_VALUE(cfg, section, key, v ? v : "", "expected one of: %s", list);
}

mn_err mn_config_doubles(mn_config *cfg, const char *section, const char *key, double *out, int max, int *n)
{
    *n = 0;
    const char *v = lookup(cfg, section, key);
    if (!v) return MN_OK;
    const char *p = v;
    while (*p) {
        char *end;
        errno = 0;
        double x = strtod(p, &end);
        if (end == p || errno || !isfinite(x)) BAD_VALUE(cfg, section, key, v, "expected comma-separated numbers");
        if (*n >= max) BAD_VALUE(cfg, section, key, v, "expected at most %d numbers", max);
        out[(*n)++] = x;
        while (*end == ' ' || *end == '\t') end++;
        if (*end == ',') end++;
        else if (*end) BAD_VALUE(cfg, section, key, v, "expected comma-separated numbers");
        p = end;
    }
    return MN_OK;
}

int mn_config_has(const mn_config *cfg, const char *section, const char *key) { return find(cfg, section, key) != NULL; }

int mn_config_section_count(const mn_config *cfg)
{
    int count = 0;
    for (int i = 0; i < cfg->n; i++) {
        int seen = 0;
        for (int j = 0; j < i && !seen; j++) seen = strcmp(cfg->e[j].section, cfg->e[i].section) == 0;
        count += !seen;
    }
    return count;
}

const char *mn_config_section_name(const mn_config *cfg, int idx)
{
    int count = 0;
    for (int i = 0; i < cfg->n; i++) {
        int seen = 0;
        for (int j = 0; j < i && !seen; j++) seen = strcmp(cfg->e[j].section, cfg->e[i].section) == 0;
        if (!seen && count++ == idx) return cfg->e[i].section;
    }
    return NULL;
}

mn_err mn_config_check_unused(const mn_config *cfg)
{
    char list[1024] = "";
    int bad = 0;
    for (int i = 0; i < cfg->n; i++) {
        if (cfg->e[i].used) continue;
        char one[300];
        snprintf(one, sizeof one, "%s[%s] %s", bad ? ", " : "", cfg->e[i].section, cfg->e[i].key);
        strncat(list, one, sizeof list - strlen(list) - 1);
        bad++;
    }
    MN_CHECK(bad == 0, MN_ERR_CONFIG, "config %s: unknown key%s: %s\n---> HINT: check the spelling against configs/",
             cfg->origin, bad > 1 ? "s" : "", list);
    return MN_OK;
}

mn_err mn_config_dump(const mn_config *cfg, char **text)
{
    size_t cap = 64;
    for (int i = 0; i < cfg->n; i++)
        cap += strlen(cfg->e[i].section) + strlen(cfg->e[i].key) + strlen(cfg->e[i].value) + 16;
    char *buf = malloc(cap);
    MN_CHECK(buf, MN_ERR_MEM, "out of memory dumping config");
    size_t n = 0;
    buf[0] = 0;
    /* Keys outside any section come first: after a [section] header they would belong to it. */
    for (int i = 0; i < cfg->n; i++)
        if (!*cfg->e[i].section) n += (size_t)snprintf(buf + n, cap - n, "%s = %s\n", cfg->e[i].key, cfg->e[i].value);
    int nsec = mn_config_section_count(cfg);
    for (int s = 0; s < nsec; s++) {
        const char *sec = mn_config_section_name(cfg, s);
        if (!*sec) continue;
        n += (size_t)snprintf(buf + n, cap - n, "%s[%s]\n", n ? "\n" : "", sec);
        for (int i = 0; i < cfg->n; i++)
            if (strcmp(cfg->e[i].section, sec) == 0)
                n += (size_t)snprintf(buf + n, cap - n, "%s = %s\n", cfg->e[i].key, cfg->e[i].value);
    }
    *text = buf;
    return MN_OK;
}

const char *mn_config_origin(const mn_config *cfg) { return cfg->origin; }
