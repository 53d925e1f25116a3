/* RV64M: multiply/divide incl. W forms, division by zero and signed overflow. */
#include "test.h"
#define RR(op, a, b) ({ u64 __r; asm volatile(op " %0,%1,%2" : "=r"(__r) : "r"((u64)(a)), "r"((u64)(b))); __r; })
#define T(op, a, b, w) CHECK(op " " #a "," #b, RR(op, a, b), w)
#define MIN64 0x8000000000000000UL
int main(void) {
  T("mul", 3, 7, 21);
  T("mul", -3L, 7, -21L);
  T("mul", 0x100000001UL, 0x100000001UL, 0x200000001UL);
  T("mul", MIN64, -1L, MIN64);
  T("mulh", -1L, -1L, 0);
  T("mulh", MIN64, MIN64, 0x4000000000000000UL);
  T("mulh", MIN64, 2, -1L);
  T("mulh", 0x7fffffffffffffffUL, 0x7fffffffffffffffUL, 0x3fffffffffffffffUL);
  T("mulhu", -1L, -1L, 0xfffffffffffffffeUL);
  T("mulhu", MIN64, 2, 1);
  T("mulhsu", -1L, -1L, -1L);
  T("mulhsu", 1, -1L, 0);
  T("mulhsu", MIN64, -1L, 0x8000000000000000UL);
  T("mulw", 0x10000, 0x10000, 0);
  T("mulw", 0x7fffffff, 2, -2L);
  T("mulw", 0xffffffff00000003UL, 5, 15);
  T("div", 20, 6, 3);
  T("div", -20L, 6, -3L);
  T("div", 20, -6L, -3L);
  T("div", 5, 0, -1L);
  T("div", MIN64, -1L, MIN64);
  T("divu", -1L, 2, 0x7fffffffffffffffUL);
  T("divu", 5, 0, -1L);
  T("rem", -20L, 6, -2L);
  T("rem", 20, -6L, 2);
  T("rem", 5, 0, 5);
  T("rem", MIN64, -1L, 0);
  T("remu", -1L, 10, 5);
  T("remu", 5, 0, 5);
  T("divw", 0xffffffff80000000UL, -1L, 0xffffffff80000000UL);
  T("divw", 0x80000000UL, -1L, 0xffffffff80000000UL);
  T("divw", -20L, 6, -3L);
  T("divw", 5, 0, -1L);
  T("divw", 0x100000005UL, 0x100000002UL, 2);
  T("divuw", 0xffffffffUL, 2, 0x7fffffff);
  T("divuw", 0x80000000UL, 1, 0xffffffff80000000UL);
  T("divuw", 5, 0, -1L);
  T("divuw", 5, 0x100000000UL, -1L);
  T("remw", 0x80000000UL, -1L, 0);
  T("remw", -20L, 6, -2L);
  T("remw", 0xffffffff80000001UL, 0, 0xffffffff80000001UL);
  T("remw", 0x180000001UL, 0, 0xffffffff80000001UL);
  T("remuw", 0xffffffffUL, 0x10, 0xf);
  T("remuw", 0x80000000UL, 0, 0xffffffff80000000UL);
  T("remuw", 7, 0, 7);
  finish();
}
