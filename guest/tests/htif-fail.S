/* HTIF exit with code 3: tohost = (3 << 1) | 1. */
#define HTIF_CODE 3
#include "htif.S"
