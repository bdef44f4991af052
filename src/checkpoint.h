/* The checkpoint API lives with its implementation in src/ckpt/ (one file per job; docs/checkpoint.md). */
#include "ckpt/checkpoint.h"
