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
    mn_error_set_quiet(0);

    void *p = NULL;
    TEST_EXPECT(mn_malloc(1000, "x", &p) == MN_OK && ((size_t)p % 64) == 0, "aligned alloc");
    mn_free(&p);
    TEST_EXPECT(p == NULL, "free clears");
    return mn_test_finish("test_core");
}
