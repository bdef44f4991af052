/* Subcommands of build/megalodon. Each returns the process exit status. */
#ifndef MG_CLI_H
#define MG_CLI_H

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv); /* argv[0] is the subcommand name */
    const char *summary;
} MgCommand;

int cmd_features(int argc, char **argv);
int cmd_ckpt(int argc, char **argv); /* cmd_ckpt.c */

#endif
