/* SIGINT / SIGTERM / SIGUSR1: the stop request every long-running command polls (signals.h). */
#define _POSIX_C_SOURCE 200809L
#include "signals.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>

static volatile sig_atomic_t g_stop = 0;

static void on_stop_signal(int sig) { g_stop = sig; }

void mg_signals_install(void) {
    g_stop = 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    /* SA_RESETHAND: the handler runs once; a second signal finds the default action and ends the process.
     * SA_RESTART: an interrupted write to a pipe (stdout) resumes instead of failing with EINTR. */
    sa.sa_flags = SA_RESETHAND | SA_RESTART;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL); /* mpirun forwards it to every rank at once (docs/parallelism.md) */
}

int mg_stop_requested(void) { return (int)g_stop; }

void mg_stop_request(int sig) { g_stop = sig; }

void mg_signals_reset(void) {
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGUSR1, SIG_DFL);
    g_stop = 0;
}

const char *mg_stop_signal_name(void) {
    static char buf[32];
    switch (g_stop) {
    case 0: return "none";
    case SIGINT: return "SIGINT";
    case SIGTERM: return "SIGTERM";
    case SIGUSR1: return "SIGUSR1";
    default: snprintf(buf, sizeof buf, "signal %d", (int)g_stop); return buf;
    }
}

int mg_stop_exit_status(void) { return g_stop ? 128 + (int)g_stop : 1; }

int mg_stop_report(const char *what) {
    fflush(stdout);
    fprintf(stderr, "interrupted by %s: %s\n", mg_stop_signal_name(), what);
    return mg_stop_exit_status();
}
