/* SIGINT / SIGTERM / SIGUSR1 as a polite request to stop (docs/training.md, "Signals"). SIGUSR1 is the one
 * Open MPI's mpirun forwards to every rank at once (it turns SIGTERM into its own kill sequence:
 * docs/parallelism.md, "Faults").
 *
 * A command that can run for long (train, eval, sample, prepare, and checkpoint loading inside them)
 * calls mg_signals_install() at its start. The first SIGINT or SIGTERM then only records the signal;
 * the work polls mg_stop_requested() between units of work (training steps, evaluation batches, decoded
 * tokens, prepared documents and shards, checkpoint tensors), stops there, releases what it allocated
 * and exits: training saves a checkpoint first and exits 0, every other command exits with
 * mg_stop_exit_status() (128 + the signal: 130 for SIGINT, 143 for SIGTERM, 138 for SIGUSR1). The handler is installed
 * with SA_RESETHAND, so a second SIGINT or SIGTERM takes the default action and ends the process at once.
 *
 * A command that never calls mg_signals_install keeps the default action (the signal ends it at once);
 * mg_stop_requested() then stays 0, so library code can poll it unconditionally. */
#ifndef MG_SIGNALS_H
#define MG_SIGNALS_H

/* Install the SIGINT, SIGTERM and SIGUSR1 handlers (idempotent) and clear any earlier request. */
void mg_signals_install(void);

/* 0 while no stop was requested, else the signal number (SIGINT or SIGTERM). Async-signal-safe to read. */
int mg_stop_requested(void);

/* Record a stop request as the handler would (tests, and code that must stop on its own). */
void mg_stop_request(int sig);

/* Clear the request and restore the default actions (tests). */
void mg_signals_reset(void);

/* "SIGINT", "SIGTERM" or "signal N" for the pending request ("none" without one). */
const char *mg_stop_signal_name(void);

/* 128 + the pending signal (130 SIGINT, 143 SIGTERM); 1 without a request. */
int mg_stop_exit_status(void);

/* Print "interrupted by SIGINT: <what> (<detail>)" to stderr and return mg_stop_exit_status(): the last
 * line of a command that stopped early, after it released what it allocated. */
int mg_stop_report(const char *what);

#endif
