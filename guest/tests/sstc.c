/* Sstc: stimecmp and menvcfg.STCE. With STCE set, STIP follows time >= stimecmp and
 * M-mode cannot write it; S-mode may use stimecmp only with STCE and mcounteren.TM;
 * the supervisor timer interrupts S and wakes WFI; with STCE clear, STIP is M's again. */
#include "test.h"
#define IRQ (1UL << 63)
#define MIP_STIP (1UL << 5)
#define SSTATUS_SIE (1UL << 1)
#define STCE (1UL << 63)
#define TM (1UL << 1)
#define stimecmp_read() csrr(0x14d)
#define stimecmp_write(v) csrw(0x14d, v)

static volatile u64 taken, taken_cause, taken_late;
static volatile u64 target;

static int s_irq(struct frame *f, u64 cause) {
  (void)f;
  if (!((i64)cause < 0)) return 0;
  taken++;
  taken_cause = cause;
  taken_late = csrr(time) >= target;
  stimecmp_write(-1UL); /* the only way S clears the supervisor timer */
  return 1;
}

static u64 s_read(u64 unused) { (void)unused; return stimecmp_read(); }
static u64 s_write(u64 v) { stimecmp_write(v); return 0; }

/* S-mode: arm the timer `delay` ticks ahead and spin with interrupts on. */
static u64 s_timer(u64 delay) {
  target = csrr(time) + delay;
  stimecmp_write(target);
  csrs(sie, MIP_STIP);
  csrs(sstatus, SSTATUS_SIE);
  /* Up to a second of guest time: QEMU delivers its timer from another host thread,
   * which a loaded host may not run for a while. */
  while (taken == 0 && csrr(time) < target + 10000000UL) {}
  csrc(sstatus, SSTATUS_SIE);
  return taken;
}

/* S-mode: arm the timer and wait in WFI with SIE clear: no trap, STIP pending after. */
static u64 s_wfi(u64 delay) {
  csrs(sie, MIP_STIP);
  stimecmp_write(csrr(time) + delay);
  for (int i = 0; i < 1000 && !(csrr(sip) & MIP_STIP); i++) asm volatile("wfi" ::: "memory");
  return csrr(sip) & MIP_STIP;
}

int main(void) {
  s_hook = s_irq;
  CHECK("menvcfg.STCE clear at reset", csrr(menvcfg) & STCE, 0);
  csrs(menvcfg, STCE);
  CHECK("menvcfg.STCE set", csrr(menvcfg) & STCE, STCE);
  stimecmp_write(0x123456789UL);
  CHECK("stimecmp read back in M", stimecmp_read(), 0x123456789UL);

  /* STIP is time >= stimecmp */
  stimecmp_write(-1UL);
  CHECK("stimecmp in the future: STIP clear", csrr(mip) & MIP_STIP, 0);
  csrs(mip, MIP_STIP);
  CHECK("STCE: M cannot set STIP", csrr(mip) & MIP_STIP, 0);
  stimecmp_write(0);
  CHECK("stimecmp in the past: STIP set", csrr(mip) & MIP_STIP, MIP_STIP);
  csrc(mip, MIP_STIP);
  CHECK("STCE: M cannot clear STIP", csrr(mip) & MIP_STIP, MIP_STIP);
  stimecmp_write(csrr(time) + 1000000000UL);
  CHECK("stimecmp moved ahead: STIP clear", csrr(mip) & MIP_STIP, 0);

  /* S-mode access needs STCE and mcounteren.TM */
  csrs(mcounteren, TM);
  reset_traps();
  stimecmp_write(77);
  CHECK("S reads stimecmp", run_in_mode(1, s_read, 0), 77);
  run_in_mode(1, s_write, 88);
  CHECK("S writes stimecmp", stimecmp_read(), 88);
  CHECK("S access: no trap", trap_count, 0);
  csrc(mcounteren, TM);
  reset_traps();
  run_in_mode(1, s_read, 0);
  CHECK("TM clear: S access is illegal", last_cause, 2);
  csrs(mcounteren, TM);
  csrc(menvcfg, STCE);
  reset_traps();
  run_in_mode(1, s_write, 99);
  CHECK("STCE clear: S access is illegal", last_cause, 2);
  CHECK("STCE clear: stimecmp unchanged", stimecmp_read(), 88);
  CHECK("STCE clear: STIP stays as stimecmp left it", csrr(mip) & MIP_STIP, MIP_STIP);
  csrc(mip, MIP_STIP);
  CHECK("STCE clear: M clears STIP again", csrr(mip) & MIP_STIP, 0);
  csrs(mip, MIP_STIP);
  CHECK("STCE clear: M sets STIP again", csrr(mip) & MIP_STIP, MIP_STIP);
  csrc(mip, MIP_STIP);
  csrs(menvcfg, STCE);

  /* the supervisor timer interrupt, delegated to S */
  csrw(mideleg, MIP_STIP);
  csrs(mie, MIP_STIP);
  stimecmp_write(-1UL);
  reset_traps();
  taken = 0;
  CHECK("S timer interrupt taken", run_in_mode(1, s_timer, 500), 1);
  CHECK("S timer scause", taken_cause, IRQ | 5);
  CHECK("S timer not before stimecmp", taken_late, 1);
  CHECK("S timer: M not involved", trap_count, 0);
  CHECK("handler's write cleared STIP", csrr(mip) & MIP_STIP, 0);

  /* WFI wakes on the supervisor timer without taking it */
  taken = 0;
  CHECK("WFI woke on STIP", run_in_mode(1, s_wfi, 300), MIP_STIP);
  CHECK("WFI with SIE clear: no interrupt", taken, 0);
  stimecmp_write(-1UL);
  csrw(mie, 0);
  csrw(mideleg, 0);
  finish();
}
