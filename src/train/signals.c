/* signals.c: SIGUSR1/SIGTERM handlers that only set a flag (see signals.h for the protocol).
 *
 * The flag is a volatile sig_atomic_t holding the signal number; the first signal wins so that a SIGTERM arriving
 * after a SIGUSR1 does not change what the log reports.  SA_RESTART keeps reads and writes of the data loader
 * from failing with EINTR.  A second signal does not kill the process: the loop checkpoints at the next step
 * boundary, and Slurm's SIGKILL after KillWait remains the backstop.
 */
#include "mednet/signals.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>

static volatile sig_atomic_t g_pending = 0;
static struct sigaction g_old_usr1, g_old_term;
static int g_installed = 0;

static void on_signal(int sig)
{
    if (g_pending == 0) g_pending = sig;
}

mn_err mn_signals_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    if (sigemptyset(&sa.sa_mask) != 0) MN_FAIL(MN_ERR_INTERNAL, "sigemptyset failed");
    g_pending = 0;
    if (sigaction(SIGUSR1, &sa, g_installed ? NULL : &g_old_usr1) != 0)
        MN_FAIL(MN_ERR_INTERNAL, "sigaction(SIGUSR1) failed");
    if (sigaction(SIGTERM, &sa, g_installed ? NULL : &g_old_term) != 0)
        MN_FAIL(MN_ERR_INTERNAL, "sigaction(SIGTERM) failed");
    g_installed = 1;
    return MN_OK;
}

mn_err mn_signals_restore(void)
{
    if (!g_installed) return MN_OK;
    if (sigaction(SIGUSR1, &g_old_usr1, NULL) != 0) MN_FAIL(MN_ERR_INTERNAL, "sigaction(SIGUSR1) restore failed");
    if (sigaction(SIGTERM, &g_old_term, NULL) != 0) MN_FAIL(MN_ERR_INTERNAL, "sigaction(SIGTERM) restore failed");
    g_installed = 0;
    return MN_OK;
}

int mn_signals_pending(void) { return (int)g_pending; }

void mn_signals_clear(void) { g_pending = 0; }

const char *mn_signals_name(int sig)
{
    static _Thread_local char buf[24];
    if (sig == SIGUSR1) return "SIGUSR1";
    if (sig == SIGTERM) return "SIGTERM";
    snprintf(buf, sizeof buf, "signal %d", sig);
    return buf;
}
