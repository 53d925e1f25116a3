/* Shared conventions for ftvm bare-metal guest tests (see guest/README.md). */
#ifndef FTVM_TEST_H
#define FTVM_TEST_H
typedef unsigned long u64;
typedef long i64;
typedef unsigned int u32;
typedef int i32;

#define UART_BASE 0x10000000UL
#define TEST_DEV  0x100000UL
#define CLINT_BASE 0x2000000UL
#define CLINT_MSIP (CLINT_BASE + 0x0)
#define CLINT_MTIMECMP (CLINT_BASE + 0x4000)
#define CLINT_MTIME (CLINT_BASE + 0xbff8)
#define ECALL_MAGIC 0x5EC0

#define csrr(csr) ({ u64 __v; asm volatile("csrr %0, " #csr : "=r"(__v) :: "memory"); __v; })
#define csrw(csr, v) asm volatile("csrw " #csr ", %0" :: "rK"((u64)(v)) : "memory")
#define csrs(csr, v) asm volatile("csrs " #csr ", %0" :: "rK"((u64)(v)) : "memory")
#define csrc(csr, v) asm volatile("csrc " #csr ", %0" :: "rK"((u64)(v)) : "memory")

struct frame { u64 r[32]; };

void putc_(char c);
void puts_(const char *s);
void puthex(u64 v);
void putdec(u64 v);
/* check: prints "ok n what" or "FAIL n what (got 0x.., want 0x..)" */
int check(const char *what, u64 got, u64 want);
/* check2: result + flags, printed on success too (for F/D) */
int check2(const char *what, u64 got, u64 gflags, u64 want, u64 wflags);
void note_fail(const char *what);
void finish(void) __attribute__((noreturn));
void exit_code(int code) __attribute__((noreturn));

/* trap bookkeeping (M-mode handler) */
extern volatile u64 trap_count, last_cause, last_tval, last_epc, last_mstatus;
extern volatile u64 s_trap_count, s_last_cause, s_last_tval, s_last_epc, s_last_sstatus;
/* optional hook: return nonzero if handled (then default skip is not done) */
extern int (*volatile m_hook)(struct frame *f, u64 cause);
extern int (*volatile s_hook)(struct frame *f, u64 cause);
void reset_traps(void);

/* run fn(arg) in mode (0=U,1=S); fn may return normally; returns fn's result */
u64 run_in_mode(int mode, u64 (*fn)(u64), u64 arg);

void *memset(void *d, int c, unsigned long n);
void *memcpy(void *d, const void *s, unsigned long n);

#define CHECK(what, got, want) check(what, (u64)(got), (u64)(want))
#endif
