/* commands.h: the sub-commands of `mednet`.  Each runs after MPI_Init (MPI_ERRORS_RETURN set) with argv[0] = the
 * command name, and returns MN_OK or an error.  main() decides how the job ends: an error that every rank
 * reported together (carrying MN_ERR_AGREED, from mn_agree) ends with MPI_Finalize and exit status 1 on every rank;
 * any other error ends in MPI_Abort so that no rank waits forever.  A command that wants a specific exit
 * status (e.g. "checkpointed on a signal, please requeue") sets *exit_status. */
#ifndef MN_CLI_COMMANDS_H
#define MN_CLI_COMMANDS_H

#include "mednet/error.h"

typedef struct mn_cmd_result {
    int exit_status;  /* process exit status on success (0 by default) */
} mn_cmd_result;

typedef mn_err (*mn_cmd_fn)(int argc, char **argv, mn_cmd_result *res);

mn_err mn_cmd_info(int argc, char **argv, mn_cmd_result *res);
mn_err mn_cmd_pretrain(int argc, char **argv, mn_cmd_result *res);
mn_err mn_cmd_finetune(int argc, char **argv, mn_cmd_result *res);
mn_err mn_cmd_prep(int argc, char **argv, mn_cmd_result *res);
mn_err mn_cmd_model(int argc, char **argv, mn_cmd_result *res);
mn_err mn_cmd_eval(int argc, char **argv, mn_cmd_result *res);
mn_err mn_cmd_infer(int argc, char **argv, mn_cmd_result *res);
mn_err mn_cmd_export(int argc, char **argv, mn_cmd_result *res);
mn_err mn_cmd_filter(int argc, char **argv, mn_cmd_result *res);
mn_err mn_cmd_synth(int argc, char **argv, mn_cmd_result *res);

/* Option `opt` of command `cmd` as a finite number in [lo, hi]: anything else (v NULL, not a number,
 * out of range) is MN_ERR_ARG naming the command, the option and the text. */
mn_err mn_cli_number(const char *cmd, const char *opt, const char *v, double lo, double hi, double *out);

#endif
