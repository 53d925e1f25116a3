/* RV64A: lr/sc and every AMO, .w sign extension, signed/unsigned min/max. */
#include "test.h"
static volatile u64 m[4] __attribute__((aligned(16)));
#define AMO(op, init, src) ({ u64 __r; m[0] = (init); asm volatile(op " %0, %2, (%1)" : "=r"(__r) : "r"(&m[0]), "r"((u64)(src)) : "memory"); __r; })
#define T(op, init, src, wold, wmem) do { u64 __o = AMO(op, init, src); CHECK(op " " #init "," #src " old", __o, wold); CHECK(op " " #init "," #src " mem", m[0], wmem); } while (0)
int main(void) {
  T("amoswap.d", 1, 2, 1, 2);
  T("amoadd.d", 0x7fffffffffffffffUL, 1, 0x7fffffffffffffffUL, 0x8000000000000000UL);
  T("amoxor.d", 0xff, 0x0f, 0xff, 0xf0);
  T("amoand.d", 0xff, 0x0f, 0xff, 0x0f);
  T("amoor.d", 0xf0, 0x0f, 0xf0, 0xff);
  T("amomin.d", -1L, 1, -1L, -1L);
  T("amomax.d", -1L, 1, -1L, 1);
  T("amominu.d", -1L, 1, -1L, 1);
  T("amomaxu.d", -1L, 1, -1L, -1L);
  /* .w: operate on low word, upper word of memory untouched, result sign-extended */
  T("amoswap.w", 0x1111111180000000UL, 0x7fffffff, 0xffffffff80000000UL, 0x111111117fffffffUL);
  T("amoadd.w", 0x222222227fffffffUL, 1, 0x7fffffff, 0x2222222280000000UL);
  T("amoadd.w", 0x00000000ffffffffUL, 1, -1L, 0);
  T("amoxor.w", 0x80000000UL, 0xffffffffUL, 0xffffffff80000000UL, 0x7fffffff);
  T("amoand.w", 0xffffffffUL, 0x80000000UL, -1L, 0x80000000UL);
  T("amoor.w", 0x5UL, 0x80000000UL, 5, 0x80000005UL);
  T("amomin.w", 0x80000000UL, 1, 0xffffffff80000000UL, 0x80000000UL);
  T("amomin.w", 5, 0xffffffffUL, 5, 0xffffffffUL);
  T("amomax.w", 0x80000000UL, 1, 0xffffffff80000000UL, 1);
  T("amominu.w", 0x80000000UL, 1, 0xffffffff80000000UL, 1);
  T("amomaxu.w", 0x80000000UL, 1, 0xffffffff80000000UL, 0x80000000UL);
  T("amomaxu.w", 1, 0xffffffff00000002UL, 1, 2);
  T("amoadd.d.aqrl", 10, 5, 10, 15);
  { /* .w on the upper half */
    u64 r; m[0] = 0x8000000000000001UL;
    asm volatile("amoadd.w %0, %2, (%1)" : "=r"(r) : "r"((char *)&m[0] + 4), "r"(1UL) : "memory");
    CHECK("amoadd.w high word old", r, 0xffffffff80000000UL);
    CHECK("amoadd.w high word mem", m[0], 0x8000000100000001UL);
  }
  /* lr/sc */
  { u64 v, sc; m[1] = 42;
    asm volatile("lr.d %0, (%2)\n addi %0, %0, 1\n sc.d %1, %0, (%2)" : "=&r"(v), "=&r"(sc) : "r"(&m[1]) : "memory");
    CHECK("lr.d/sc.d success code", sc, 0); CHECK("lr.d/sc.d stored", m[1], 43); }
  { u64 sc; m[1] = 42;
    asm volatile("sc.d %0, %1, (%2)" : "=&r"(sc) : "r"(7UL), "r"(&m[1]) : "memory");
    CHECK("sc.d without reservation fails", sc != 0, 1); CHECK("sc.d failed: memory unchanged", m[1], 42); }
  { u64 v, sc; m[2] = 0xffffffff80000000UL;
    asm volatile("lr.w %0, (%2)\n sc.w %1, %3, (%2)" : "=&r"(v), "=&r"(sc) : "r"(&m[2]), "r"(0x12345678UL) : "memory");
    CHECK("lr.w sign-extends", v, 0xffffffff80000000UL); CHECK("sc.w success", sc, 0); CHECK("sc.w stored low word only", m[2], 0xffffffff12345678UL); }
  { u64 v, sc, sc2; m[1] = 1;
    asm volatile("lr.d %0, (%3)\n sc.d %1, %0, (%3)\n sc.d %2, %0, (%3)" : "=&r"(v), "=&r"(sc), "=&r"(sc2) : "r"(&m[1]) : "memory");
    CHECK("sc after sc: first succeeds", sc, 0); CHECK("sc after sc: second fails", sc2 != 0, 1); }
  { u64 v, sc; m[1] = 1;
    asm volatile("lr.d %0, (%2)\n ecall\n sc.d %1, %0, (%2)" : "=&r"(v), "=&r"(sc) : "r"(&m[1]) : "memory");
    CHECK("sc fails after trap (xRET clears reservation)", sc != 0, 1); }
  finish();
}
