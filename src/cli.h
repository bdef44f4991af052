/* Subcommands of build/megalodon. Each returns the process exit status. */
#ifndef MG_CLI_H
#define MG_CLI_H

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv); /* argv[0] is the subcommand name */
    const char *summary;
} MgCommand;

int cmd_features(int argc, char **argv);
int cmd_plot(int argc, char **argv);     /* main.c: runs scripts/plot_runs.py */
int cmd_info(int argc, char **argv); /* info.c */
int cmd_prepare(int argc, char **argv);  /* src/cmd_prepare.c */
int cmd_tokenize(int argc, char **argv); /* src/cmd_prepare.c */
int cmd_train(int argc, char **argv);    /* src/train/trainer.c */
int cmd_eval(int argc, char **argv);     /* src/train/eval.c */
int cmd_sample(int argc, char **argv);   /* src/sample.c */
int cmd_eval_positions(int argc, char **argv); /* src/long_eval.c */
int cmd_passkey(int argc, char **argv);  /* src/long_eval.c */
int cmd_bench(int argc, char **argv);    /* src/bench.c */
int cmd_ckpt(int argc, char **argv); /* cmd_ckpt.c */
int cmd_import(int argc, char **argv); /* cmd_weights.c */
int cmd_export(int argc, char **argv); /* cmd_weights.c */

#endif
