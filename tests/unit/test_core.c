/* test_core: the config parser (inih underneath), typed getters with range checks, unknown-key detection,
 * overrides, and the error-message path. */
#include "mednet/config.h"
#include "mednet/error.h"
#include "mednet/mem.h"
#include "test_util.h"

#include <string.h>

int main(void)
{
    const char *text = "[model]\ndepth = 18\nshortcut = A\n[optim]\nlr = 0.01\nnesterov = yes\nspacing = 1, 1.5,2\n";
    mn_config *cfg = NULL;
    TEST_EXPECT(mn_config_parse(text, "test.ini", &cfg) == MN_OK, "parse");
    long depth = 0;
    double lr = 0, sp[4];
    int nest = 0, nsp = 0, choice = -1;
    TEST_EXPECT(mn_config_int(cfg, "model", "depth", 10, 10, 200, &depth) == MN_OK && depth == 18, "int");
    const char *const shortcuts[] = {"A", "B", NULL};
    TEST_EXPECT(mn_config_choice(cfg, "model", "shortcut", "B", shortcuts, &choice) == MN_OK && choice == 0, "choice");
    TEST_EXPECT(mn_config_double(cfg, "optim", "lr", 0.1, 0, 10, &lr) == MN_OK && lr == 0.01, "double");
    TEST_EXPECT(mn_config_bool(cfg, "optim", "nesterov", 0, &nest) == MN_OK && nest == 1, "bool");
    TEST_EXPECT(mn_config_doubles(cfg, "optim", "spacing", sp, 4, &nsp) == MN_OK && nsp == 3 && sp[1] == 1.5, "list");
    TEST_EXPECT(mn_config_check_unused(cfg) == MN_OK, "all keys used");

    /* An override replaces, a new key is unknown until read. */
    TEST_EXPECT(mn_config_override(cfg, "model.depth=34") == MN_OK, "override");
    TEST_EXPECT(mn_config_int(cfg, "model", "depth", 10, 10, 200, &depth) == MN_OK && depth == 34, "override value");
    mn_error_set_quiet(1);
    TEST_EXPECT(mn_config_override(cfg, "model.dpeth=34") == MN_OK, "override new key");
    TEST_EXPECT(mn_config_check_unused(cfg) == MN_ERR_CONFIG, "unknown key rejected");
    TEST_EXPECT(strstr(mn_error_last(), "dpeth") != NULL, "message names the key: %s", mn_error_last());

    /* Bad values: out of range, not a number, bad choice, bad bool. */
    TEST_EXPECT(mn_config_override(cfg, "model.depth=7") == MN_OK, "override");
    TEST_EXPECT(mn_config_int(cfg, "model", "depth", 10, 10, 200, &depth) == MN_ERR_CONFIG, "range");
    TEST_EXPECT(strstr(mn_error_last(), "test.ini") && strstr(mn_error_last(), "depth"), "msg: %s", mn_error_last());
    TEST_EXPECT(mn_config_override(cfg, "optim.lr=abc") == MN_OK, "override");
    TEST_EXPECT(mn_config_double(cfg, "optim", "lr", 0.1, 0, 10, &lr) == MN_ERR_CONFIG, "nan-number");
    TEST_EXPECT(mn_config_override(cfg, "optim.lr=nan") == MN_OK, "override");
    TEST_EXPECT(mn_config_double(cfg, "optim", "lr", 0.1, 0, 10, &lr) == MN_ERR_CONFIG, "nan rejected");
    TEST_EXPECT(mn_config_override(cfg, "model.shortcut=C") == MN_OK, "override");
    TEST_EXPECT(mn_config_choice(cfg, "model", "shortcut", "B", shortcuts, &choice) == MN_ERR_CONFIG, "choice");
    TEST_EXPECT(mn_config_override(cfg, "noequals") == MN_ERR_CONFIG, "malformed override");
    char *dump = NULL;
    TEST_EXPECT(mn_config_dump(cfg, &dump) == MN_OK && strstr(dump, "[model]") && strstr(dump, "depth = 7"), "dump");
    free(dump);
    mn_config_destroy(&cfg);
    TEST_EXPECT(cfg == NULL, "destroy clears the pointer");

    /* Syntax error and missing file. */
    TEST_EXPECT(mn_config_parse("[model\ndepth = 1\n", "bad.ini", &cfg) == MN_ERR_CONFIG && !cfg, "syntax error");
    TEST_EXPECT(mn_config_load_file("/nonexistent/x.ini", &cfg) == MN_ERR_IO, "missing file");
    TEST_EXPECT(strstr(mn_error_last(), "/nonexistent/x.ini") != NULL, "names the file");

    /* What inih would read back differently from the dump is refused with the file and line: an empty key (dumped
     * as " = v", a continuation of the key before), a key that is not printable ASCII (a byte order mark would be
     * dropped on the dump's first line), a line longer than inih reads (its rest becomes a new key), a section name
     * inih may have cut, and an override that the dump would write as such a line. */
    TEST_EXPECT(mn_config_parse("[ds]\nk = 1\n=1,1,2\n", "e.ini", &cfg) == MN_ERR_CONFIG && !cfg, "empty key");
    TEST_EXPECT(strstr(mn_error_last(), "e.ini: line 3") && strstr(mn_error_last(), "key is missing"), "msg: %s",
                mn_error_last());
    TEST_EXPECT(mn_config_parse("[s]\npath =;x\n", "c.ini", &cfg) == MN_ERR_CONFIG, "value starting with ';'");
    TEST_EXPECT(strstr(mn_error_last(), "c.ini: line 2") != NULL, "msg: %s", mn_error_last());
    TEST_EXPECT(mn_config_parse("[s]\npath = a;x ; comment\n", "c.ini", &cfg) == MN_OK, "';' inside a value");
    TEST_EXPECT(mn_config_dump(cfg, &dump) == MN_OK && strstr(dump, "path = a;x\n"), "dump: %s", dump);
    free(dump);
    mn_config_destroy(&cfg);
    TEST_EXPECT(mn_config_parse("a = 1\n\xEF\xBB\xBF" "b = 2\n", "bom.ini", &cfg) == MN_ERR_CONFIG, "BOM in a key");
    TEST_EXPECT(strstr(mn_error_last(), "bom.ini: line 2") != NULL, "msg: %s", mn_error_last());
    TEST_EXPECT(mn_config_parse("\xEF\xBB\xBF[d\xC3\xA9]\nk = 1\n", "u.ini", &cfg) == MN_OK, "BOM + UTF-8 section");
    mn_config_destroy(&cfg);
    char line[400];
    for (int len = 197; len <= 201; len++) { /* "k = xxx": len characters, then a key on the next line */
        snprintf(line, sizeof line, "[s]\nk = %0*d\nz = 1\n", len - 4, 0);
        mn_err e = mn_config_parse(line, "long.ini", &cfg);
        TEST_EXPECT((e == MN_OK) == (len <= 198), "line of %d characters: %d", len, (int)e);
        if (e) TEST_EXPECT(strstr(mn_error_last(), "long.ini: line 2"), "msg: %s", mn_error_last());
        if (!e && mn_config_dump(cfg, &dump) == MN_OK) {
            TEST_EXPECT(strstr(dump, line + 4) != NULL, "the dump keeps both lines");
            free(dump);
        }
        mn_config_destroy(&cfg);
    }
    snprintf(line, sizeof line, "[s]\nk=%0196d\n", 0); /* fits in the file, not as the dump's `k = ...` */
    TEST_EXPECT(mn_config_parse(line, "long.ini", &cfg) == MN_ERR_CONFIG, "dump line too long");
    snprintf(line, sizeof line, "[%048d]\nk = 1\n", 0);
    TEST_EXPECT(mn_config_parse(line, "sec.ini", &cfg) == MN_OK, "48-byte section");
    snprintf(line, sizeof line, "%048d.k2=1", 0);
    TEST_EXPECT(mn_config_override(cfg, line) == MN_OK, "48-byte section override");
    mn_config_destroy(&cfg);
    snprintf(line, sizeof line, "[%049d]\nk = 1\n", 0);
    TEST_EXPECT(mn_config_parse(line, "sec.ini", &cfg) == MN_ERR_CONFIG && strstr(mn_error_last(), "sec.ini: line 2"),
                "49-byte section: %s", mn_error_last());
    TEST_EXPECT(mn_config_parse("[s]\nk = 1\n", "o.ini", &cfg) == MN_OK, "parse");
    snprintf(line, sizeof line, "%049d.k=1", 0);
    TEST_EXPECT(mn_config_override(cfg, line) == MN_ERR_CONFIG, "49-byte section override");
    snprintf(line, sizeof line, "s.k=%0195d", 0);
    TEST_EXPECT(mn_config_override(cfg, line) == MN_ERR_CONFIG, "override too long for a line");
    snprintf(line, sizeof line, "s.k=%0194d", 0);
    TEST_EXPECT(mn_config_override(cfg, line) == MN_OK, "override of 198 characters as a line");
    TEST_EXPECT(mn_config_override(cfg, "s.k\xC3\xA9=1") == MN_ERR_CONFIG, "override key not ASCII");
    mn_config_destroy(&cfg);
    mn_error_set_quiet(0);

    void *p = NULL;
    TEST_EXPECT(mn_malloc(1000, "x", &p) == MN_OK && ((size_t)p % 64) == 0, "aligned alloc");
    mn_free(&p);
    TEST_EXPECT(p == NULL, "free clears");
    /* A large buffer: 2 MiB aligned (offered to transparent huge pages), zeroed by mn_calloc, freed by mn_free. */
    size_t big = (size_t)9 << 20;
    TEST_EXPECT(mn_calloc(big, "big", &p) == MN_OK && ((size_t)p % ((size_t)2 << 20)) == 0, "large alloc aligned");
    if (p) {
        size_t nz = 0;
        for (size_t i = 0; i < big; i += 4093) nz += ((unsigned char *)p)[i] != 0;
        TEST_EXPECT(nz == 0, "large calloc zeroed");
        memset(p, 1, big);
    }
    mn_free(&p);
    TEST_EXPECT(p == NULL, "free clears a large buffer");
    /* Config entries that the dump would not read back as they are. */
    mn_error_set_quiet(1);
    TEST_EXPECT(mn_config_parse("[s]\na =\n \x1d\r;x\n", "cr.ini", &cfg) == MN_ERR_CONFIG, "control character in a value");
    TEST_EXPECT(mn_config_parse("[s]\na =\n b ; c\n", "cont.ini", &cfg) == MN_ERR_CONFIG, "' ;' kept by a continuation");
    snprintf(line, sizeof line, "[s]\n%049d = 1\n", 0);
    TEST_EXPECT(mn_config_parse(line, "key.ini", &cfg) == MN_ERR_CONFIG, "49-byte key");
    snprintf(line, sizeof line, "[s]\n%048d = 1\n", 0);
    TEST_EXPECT(mn_config_parse(line, "key.ini", &cfg) == MN_OK, "48-byte key");
    mn_config_destroy(&cfg);
    TEST_EXPECT(mn_config_parse("[s]\nk = 1\n", "o.ini", &cfg) == MN_OK, "parse");
    TEST_EXPECT(mn_config_override(cfg, "a ;b.k=1") == MN_ERR_CONFIG, "';' in an override's section");
    mn_config_destroy(&cfg);
    mn_error_set_quiet(0);
    return mn_test_finish("test_core");
}
