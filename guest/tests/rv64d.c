/* RV64D: see fp.inc. */
#define FP_D
#define GOLD_H "rv64d.gold.h"
#include "fp.inc"
