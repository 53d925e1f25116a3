/* RV64F: see fp.inc. */
#define FP_S
#define GOLD_H "rv64f.gold.h"
#include "fp.inc"
