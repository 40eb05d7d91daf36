#include "commands.h"
mn_err mn_cmd_infer(int argc, char **argv, mn_cmd_result *res) { (void)argc; (void)argv; (void)res; MN_FAIL(MN_ERR_ARG, "not yet"); }
