#include "test.h"

volatile u64 trap_count, last_cause, last_tval, last_epc, last_mstatus;
volatile u64 s_trap_count, s_last_cause, s_last_tval, s_last_epc, s_last_sstatus;
int (*volatile m_hook)(struct frame *f, u64 cause);
int (*volatile s_hook)(struct frame *f, u64 cause);
static u64 n_checks, n_fail;
extern char mode_return[], mode_exit_ecall[];

void *memset(void *d, int c, unsigned long n) { unsigned char *p = d; while (n--) *p++ = (unsigned char)c; return d; }
void *memcpy(void *d, const void *s, unsigned long n) { unsigned char *p = d; const unsigned char *q = s; while (n--) *p++ = *q++; return d; }

void putc_(char c) {
  volatile unsigned char *u = (volatile unsigned char *)UART_BASE;
  while (!(u[5] & 0x20)) {}
  u[0] = (unsigned char)c;
}
void puts_(const char *s) { while (*s) putc_(*s++); }
void puthex(u64 v) {
  int i = 60;
  puts_("0x");
  while (i > 0 && ((v >> i) & 0xf) == 0) i -= 4;
  for (; i >= 0; i -= 4) putc_("0123456789abcdef"[(v >> i) & 0xf]);
}
void putdec(u64 v) {
  char b[24]; int i = 0;
  do { b[i++] = (char)('0' + v % 10); v /= 10; } while (v);
  while (i) putc_(b[--i]);
}
int check(const char *what, u64 got, u64 want) {
  n_checks++;
  if (got == want) {
    puts_("ok "); putdec(n_checks); putc_(' '); puts_(what); putc_('\n');
    return 1;
  }
  n_fail++;
  puts_("FAIL "); putdec(n_checks); putc_(' '); puts_(what);
  puts_(" (got "); puthex(got); puts_(", want "); puthex(want); puts_(")\n");
  return 0;
}
int check2(const char *what, u64 got, u64 gflags, u64 want, u64 wflags) {
  n_checks++;
  if (got == want && gflags == wflags) {
    puts_("ok "); putdec(n_checks); putc_(' '); puts_(what);
    puts_(" = "); puthex(got); puts_(" flags "); puthex(gflags); putc_('\n');
    return 1;
  }
  n_fail++;
  puts_("FAIL "); putdec(n_checks); putc_(' '); puts_(what);
  puts_(" (got "); puthex(got); puts_(" flags "); puthex(gflags);
  puts_(", want "); puthex(want); puts_(" flags "); puthex(wflags); puts_(")\n");
  return 0;
}
void note_fail(const char *what) { check(what, 1, 0); }

void exit_code(int code) {
  volatile u32 *t = (volatile u32 *)TEST_DEV;
  *t = code ? (((u32)code << 16) | 0x3333) : 0x5555;
  for (;;) {}
}
void finish(void) {
  puts_("summary: "); putdec(n_checks - n_fail); puts_(" passed, "); putdec(n_fail); puts_(" failed\n");
  exit_code(n_fail ? 1 : 0);
}

void reset_traps(void) {
  trap_count = last_cause = last_tval = last_epc = last_mstatus = 0;
  s_trap_count = s_last_cause = s_last_tval = s_last_epc = s_last_sstatus = 0;
}

static u64 insn_len_at(u64 pc) {
  /* only called for synchronous exceptions where pc is readable by M (physical) */
  unsigned short h = *(volatile unsigned short *)pc;
  return (h & 3) == 3 ? 4 : 2;
}

void m_trap(struct frame *f) {
  u64 cause = csrr(mcause);
  if (cause == 8 || cause == 9 || cause == 11) {
    if (f->r[17] == ECALL_MAGIC && csrr(mepc) == (u64)mode_exit_ecall) {
      /* return to M-mode at mode_return with a0 intact */
      csrs(mstatus, 3UL << 11);
      csrw(mepc, (u64)mode_return);
      return;
    }
  }
  trap_count++;
  last_cause = cause;
  last_tval = csrr(mtval);
  last_epc = csrr(mepc);
  last_mstatus = csrr(mstatus);
  if (m_hook && m_hook(f, cause)) return;
  if ((i64)cause < 0) {
    puts_("unexpected interrupt "); puthex(cause); putc_('\n');
    exit_code(2);
  }
  if (cause == 1 || cause == 12) {
    /* fetch fault: return to caller (ra) */
    csrw(mepc, f->r[1]);
    return;
  }
  csrw(mepc, last_epc + insn_len_at(last_epc));
}

void s_trap(struct frame *f) {
  u64 cause = csrr(scause);
  if (cause == 8 && f->r[17] == ECALL_MAGIC && csrr(sepc) == (u64)mode_exit_ecall) {
    /* forward the mode-exit request to M */
    register u64 a0 asm("a0") = f->r[10];
    register u64 a7 asm("a7") = ECALL_MAGIC;
    asm volatile("j mode_exit_ecall" :: "r"(a0), "r"(a7));
  }
  s_trap_count++;
  s_last_cause = cause;
  s_last_tval = csrr(stval);
  s_last_epc = csrr(sepc);
  s_last_sstatus = csrr(sstatus);
  if (s_hook && s_hook(f, cause)) return;
  if ((i64)cause < 0) {
    s_trap_count += 1000; /* unexpected */
    return;
  }
  if (cause == 1 || cause == 12) {
    csrw(sepc, f->r[1]);
    return;
  }
  csrw(sepc, s_last_epc + insn_len_at(s_last_epc));
}
