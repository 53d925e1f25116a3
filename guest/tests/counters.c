/* Counters: mcycle/minstret advance and are writable, time CSR vs CLINT mtime,
 * mcounteren/scounteren gating of cycle/time/instret from S and U.
 * Only timing-independent relations are printed. */
#include "test.h"
static u64 rd_cycle(u64 a) { (void)a; return csrr(cycle); }
static u64 rd_time(u64 a) { (void)a; return csrr(time); }
static u64 rd_instret(u64 a) { (void)a; return csrr(instret); }
static u64 (*const rd[3])(u64) = { rd_cycle, rd_time, rd_instret };
static const char *const nm[3] = { "cycle", "time", "instret" };

static void gate(int mode, const char *label, int want_trap[3]) {
  for (int i = 0; i < 3; i++) {
    reset_traps();
    run_in_mode(mode, rd[i], 0);
    char buf[96]; char *p = buf; const char *q;
    for (q = label; *q; q++) *p++ = *q;
    *p++ = ' ';
    for (q = nm[i]; *q; q++) *p++ = *q;
    for (q = want_trap[i] ? " -> illegal instruction" : " -> readable"; *q; q++) *p++ = *q;
    *p = 0;
    CHECK(buf, want_trap[i] ? last_cause : trap_count, want_trap[i] ? 2 : 0);
  }
}

int main(void) {
  u64 a, b;
  csrw(mcountinhibit, 0);
  a = csrr(mcycle); for (volatile int i = 0; i < 1000; i++) {} b = csrr(mcycle);
  CHECK("mcycle advances", b > a, 1);
  a = csrr(minstret); for (volatile int i = 0; i < 1000; i++) {} b = csrr(minstret);
  CHECK("minstret advances", b > a, 1);
  CHECK("minstret advanced by at least 1000 loop iterations", b - a >= 1000, 1);
  a = csrr(cycle); b = csrr(mcycle);
  CHECK("cycle (user alias) readable in M", b >= a, 1);
  a = csrr(instret); b = csrr(minstret);
  CHECK("instret (user alias) readable in M", b >= a, 1);
  /* writes: value read afterwards is close to the written value */
  csrw(minstret, 1UL << 40);
  b = csrr(minstret);
  CHECK("minstret write takes effect (>= written)", b >= (1UL << 40), 1);
  CHECK("minstret write takes effect (close)", b < (1UL << 40) + 100000, 1);
  csrw(mcycle, 1UL << 41);
  b = csrr(mcycle);
  CHECK("mcycle write takes effect", b >= (1UL << 41) && b < (1UL << 41) + 100000000, 1);
  /* time CSR in M mode (QEMU virt: readable, backed by CLINT mtime) */
  reset_traps();
  a = *(volatile u64 *)CLINT_MTIME;
  b = csrr(time);
  CHECK("rdtime in M: no trap", trap_count, 0);
  CHECK("time >= mtime read just before", b >= a, 1);
  a = csrr(time);
  b = *(volatile u64 *)CLINT_MTIME;
  CHECK("mtime >= time read just before", b >= a, 1);
  /* gating */
  csrw(mcounteren, 0);
  csrw(scounteren, 0);
  { int t[3] = { 1, 1, 1 }; gate(1, "S, mcounteren=0:", t); }
  { int t[3] = { 1, 1, 1 }; gate(0, "U, mcounteren=0:", t); }
  csrw(mcounteren, 7);
  { int t[3] = { 0, 0, 0 }; gate(1, "S, mcounteren=7:", t); }
  { int t[3] = { 1, 1, 1 }; gate(0, "U, mcounteren=7 scounteren=0:", t); }
  csrw(scounteren, 7);
  { int t[3] = { 0, 0, 0 }; gate(0, "U, mcounteren=7 scounteren=7:", t); }
  csrw(mcounteren, 2);
  csrw(scounteren, 7);
  { int t[3] = { 1, 0, 1 }; gate(1, "S, mcounteren=TM only:", t); }
  { int t[3] = { 1, 0, 1 }; gate(0, "U, mcounteren=TM scounteren=7:", t); }
  csrw(mcounteren, 7);
  csrw(scounteren, 5);
  { int t[3] = { 0, 1, 0 }; gate(0, "U, scounteren=CY|IR:", t); }
  finish();
}
