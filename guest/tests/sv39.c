/* Sv39: 4K/2M/1G pages, S and U access, hardware A/D updates, every page-fault kind,
 * SUM, MXR, MPRV, sfence.vma after a PTE change, delegation of page faults to S. */
#include "test.h"
#define V 1UL
#define R 2UL
#define W 4UL
#define X 8UL
#define U 16UL
#define A 64UL
#define D 128UL
#define PTE(pa, fl) ((((u64)(pa)) >> 12) << 10 | (fl))
#define MPRV (1UL << 17)
#define SUM (1UL << 18)
#define MXR (1UL << 19)

static u64 root_s[512] __attribute__((aligned(4096)));
static u64 root_u[512] __attribute__((aligned(4096)));
static u64 l1[512] __attribute__((aligned(4096)));
static u64 l0[512] __attribute__((aligned(4096)));
static volatile u64 pages[11][512] __attribute__((aligned(4096)));
static volatile u64 target_var = 0x1badb002;

#define TVA 0x40000000UL               /* 4K test pages: TVA + k*4K */
#define SUPER2M_VA 0x40200000UL
#define SUPER2M_PA 0x80400000UL
#define BADSUPER_VA 0x40400000UL
#define GIG_VA 0xc0000000UL            /* 1G alias of 0x80000000 */
#define UNMAPPED_VA 0x100000000UL      /* root[4]: invalid */

enum { P_RW, P_RO, P_XO, P_INV, P_URW, P_RSVD, P_WO, P_RW2, P_ALT, P_UX, P_RSVD54 };
#define VA(k) (TVA + (u64)(k) * 4096)

static u64 s_load(u64 va) { return *(volatile u64 *)va; }
static u64 s_store(u64 va) { *(volatile u64 *)va = 0x5a5a5a5aUL; return 0; }
static u64 s_exec(u64 va) { return ((u64 (*)(void))va)(); }
static u64 s_sfence_test(u64 va) {
  u64 a = *(volatile u64 *)va;
  l0[P_RW] = PTE(&pages[P_ALT][0], V | R | W | A | D);
  asm volatile("sfence.vma" ::: "memory");
  u64 b = *(volatile u64 *)va;
  l0[P_RW] = PTE(&pages[P_RW][0], V | R | W | A | D);
  asm volatile("sfence.vma %0, zero" :: "r"(va) : "memory");
  u64 c = *(volatile u64 *)va;
  return a << 40 | b << 20 | c;
}

/* A second address space: the same identity gigapage, but VA(P_RW) maps P_ALT. */
static u64 root_b[512] __attribute__((aligned(4096)));
static u64 l1_b[512] __attribute__((aligned(4096)));
static u64 l0_b[512] __attribute__((aligned(4096)));
#define SATP_ASID(root, asid) ((8UL << 60) | ((u64)(asid) << 44) | ((u64)(root) >> 12))

/* S-mode: load VA(P_RW) in address spaces A (ASID 1) and B (ASID 2, then 257, whose low
 * bits are A's), switching satp without sfence.vma; one hex digit per load. */
static u64 s_asid_switch(u64 va) {
  u64 seen = 0;
  u64 spaces[5] = { SATP_ASID(root_s, 1), SATP_ASID(root_b, 2), SATP_ASID(root_s, 1),
                    SATP_ASID(root_b, 257), SATP_ASID(root_s, 1) };
  for (int i = 0; i < 5; i++) {
    csrw(satp, spaces[i]);
    seen = seen << 4 | (*(volatile u64 *)va & 0xf);
  }
  return seen;
}

/* S-mode, ASID 1: a PTE change made visible by sfence.vma of the ASID alone. */
static u64 s_asid_fence(u64 va) {
  u64 asid = 1;
  u64 a = *(volatile u64 *)va;
  l0[P_RW] = PTE(&pages[P_ALT][0], V | R | W | A | D);
  asm volatile("sfence.vma zero, %0" :: "r"(asid) : "memory");
  u64 b = *(volatile u64 *)va;
  l0[P_RW] = PTE(&pages[P_RW][0], V | R | W | A | D);
  asm volatile("sfence.vma %0, %1" :: "r"(va), "r"(asid) : "memory");
  u64 c = *(volatile u64 *)va;
  return (a & 0xf) << 8 | (b & 0xf) << 4 | (c & 0xf);
}

static void setup(void) {
  for (int k = 0; k < 11; k++) { pages[k][0] = 0x1000 + k; pages[k][1] = 0; }
  for (int i = 0; i < 512; i++) { root_s[i] = 0; root_u[i] = 0; l1[i] = 0; l0[i] = 0; }
  root_s[2] = PTE(0x80000000UL, V | R | W | X | A | D);        /* 1G identity, S */
  root_s[3] = PTE(0x80000000UL, V | R | A | D);              /* 1G alias at 0xc0000000 */
  root_s[1] = PTE(l1, V);
  root_u[2] = PTE(0x80000000UL, V | R | W | X | U | A | D);    /* 1G identity, U */
  root_u[1] = PTE(l1, V);
  l1[0] = PTE(l0, V);
  l1[1] = PTE(SUPER2M_PA, V | R | W | A | D);                  /* 2M page */
  l1[2] = PTE(SUPER2M_PA + 0x1000, V | R | W | A | D);         /* misaligned 2M */
  l0[P_RW] = PTE(&pages[P_RW][0], V | R | W);                  /* A/D clear: hardware sets */
  l0[P_RO] = PTE(&pages[P_RO][0], V | R | A);
  l0[P_XO] = PTE(&pages[P_XO][0], V | X | A);
  l0[P_INV] = PTE(&pages[P_INV][0], R | W | A | D);
  l0[P_URW] = PTE(&pages[P_URW][0], V | R | W | U | A | D);
  l0[P_RSVD] = PTE(&pages[P_RSVD][0], V | R | W | A | D) | (1UL << 61); /* PBMT without Svpbmt */
  l0[P_RSVD54] = PTE(&pages[P_RSVD54][0], V | R | W | A | D) | (1UL << 54);
  l0[P_WO] = PTE(&pages[P_WO][0], V | W | A | D);               /* W without R: reserved */
  l0[P_RW2] = PTE(&pages[P_RW2][0], V | R | W | A);             /* D clear */
  l0[P_UX] = PTE(&pages[P_UX][0], V | R | X | U | A);
  /* tiny function in the X-only page and the U X page: li a0, 42; ret */
  ((volatile u32 *)pages[P_XO])[0] = 0x02a00513; ((volatile u32 *)pages[P_XO])[1] = 0x00008067;
  ((volatile u32 *)pages[P_UX])[0] = 0x02a00513; ((volatile u32 *)pages[P_UX])[1] = 0x00008067;
  asm volatile("fence.i" ::: "memory");
  *(volatile u64 *)SUPER2M_PA = 0x2222;
  *(volatile u64 *)(SUPER2M_PA + 0x1000) = 0x2223;
}
static void use(u64 *root) { csrw(satp, (8UL << 60) | ((u64)root >> 12)); asm volatile("sfence.vma" ::: "memory"); }

#define FAULT(label, mode, fn, va, cause) do { reset_traps(); run_in_mode(mode, fn, va); \
  CHECK(label ": cause", last_cause, cause); CHECK(label ": tval", last_tval, va); } while (0)

static int mprv_hook(struct frame *f, u64 cause) { (void)f; (void)cause; csrc(mstatus, MPRV); return 0; }

int main(void) {
  setup();
  use(root_s);
  /* basic S-mode accesses */
  CHECK("S load 1G identity page", run_in_mode(1, s_load, (u64)&target_var), 0x1badb002);
  CHECK("S load 1G alias page", run_in_mode(1, s_load, (u64)&target_var - 0x80000000UL + GIG_VA), 0x1badb002);
  CHECK("S load 2M page", run_in_mode(1, s_load, SUPER2M_VA), 0x2222);
  CHECK("S load 2M page + offset", run_in_mode(1, s_load, SUPER2M_VA + 0x1000), 0x2223);
  /* A/D bits set by hardware */
  CHECK("RW page: A,D initially clear", l0[P_RW] & (A | D), 0);
  reset_traps();
  CHECK("S load 4K page", run_in_mode(1, s_load, VA(P_RW)), 0x1000);
  CHECK("S load 4K page: no trap", trap_count, 0);
  CHECK("load sets A only", l0[P_RW] & (A | D), A);
  run_in_mode(1, s_store, VA(P_RW) + 8);
  CHECK("store sets D", l0[P_RW] & (A | D), A | D);
  CHECK("store reached memory", pages[P_RW][1], 0x5a5a5a5aUL);
  run_in_mode(1, s_store, VA(P_RW2) + 8);
  CHECK("store to A=1,D=0 page sets D", l0[P_RW2] & (A | D), A | D);
  CHECK("exec X-only page from S", run_in_mode(1, s_exec, VA(P_XO)), 42);
  /* page faults from S */
  FAULT("S load invalid PTE", 1, s_load, VA(P_INV), 13);
  FAULT("S store invalid PTE", 1, s_store, VA(P_INV), 15);
  FAULT("S load unmapped (root invalid)", 1, s_load, UNMAPPED_VA, 13);
  FAULT("S exec unmapped", 1, s_exec, UNMAPPED_VA, 12);
  FAULT("S store read-only page", 1, s_store, VA(P_RO), 15);
  CHECK("faulting store did not set D", l0[P_RO] & D, 0);
  FAULT("S load X-only page (MXR=0)", 1, s_load, VA(P_XO), 13);
  FAULT("S exec non-executable page", 1, s_exec, VA(P_RO), 12);
  FAULT("S load U page without SUM", 1, s_load, VA(P_URW), 13);
  FAULT("S store U page without SUM", 1, s_store, VA(P_URW), 15);
  FAULT("S exec U page (even with SUM)", 1, s_exec, VA(P_UX), 12);
  FAULT("S load misaligned 2M superpage", 1, s_load, BADSUPER_VA, 13);
  FAULT("S load W-without-R PTE", 1, s_load, VA(P_WO), 13);
  FAULT("S load PTE with PBMT bits (no Svpbmt)", 1, s_load, VA(P_RSVD), 13);
  FAULT("S load PTE with reserved bit 54", 1, s_load, VA(P_RSVD54), 13);
  FAULT("S store 1G alias (not writable)", 1, s_store, GIG_VA + 0x100000, 15);
  FAULT("S load non-canonical VA", 1, s_load, 0x0000008000000000UL, 13);
  /* SUM / MXR */
  csrs(mstatus, SUM);
  reset_traps();
  CHECK("S load U page with SUM", run_in_mode(1, s_load, VA(P_URW)), 0x1004);
  CHECK("S load U page with SUM: no trap", trap_count, 0);
  FAULT("S exec U page with SUM", 1, s_exec, VA(P_UX), 12);
  csrc(mstatus, SUM);
  csrs(mstatus, MXR);
  CHECK("S load X-only page with MXR", run_in_mode(1, s_load, VA(P_XO)), 0x0000806702a00513UL);
  csrc(mstatus, MXR);
  /* U mode under root_u */
  use(root_u);
  reset_traps();
  CHECK("U load U page", run_in_mode(0, s_load, VA(P_URW)), 0x1004);
  CHECK("U exec U page", run_in_mode(0, s_exec, VA(P_UX)), 42);
  CHECK("U accesses: no trap", trap_count, 0);
  FAULT("U load S page", 0, s_load, VA(P_RW), 13);
  FAULT("U store S page", 0, s_store, VA(P_RW), 15);
  FAULT("U exec S page", 0, s_exec, VA(P_XO), 12);
  FAULT("U load 2M S superpage", 0, s_load, SUPER2M_VA, 13);
  use(root_s);
  /* sfence.vma after PTE change (done from S) */
  CHECK("sfence.vma: old, new, restored", run_in_mode(1, s_sfence_test, VA(P_RW)), 0x10000100801000UL);
  /* ASIDs: 16 bits, as on QEMU; entries of one address space never serve another */
  csrw(satp, SATP_ASID(root_s, 0xffff));
  CHECK("satp.ASID holds 16 bits", csrr(satp) >> 44 & 0xffff, 0xffff);
  for (int i = 0; i < 512; i++) { root_b[i] = root_s[i]; l1_b[i] = l1[i]; l0_b[i] = l0[i]; }
  root_b[1] = PTE(l1_b, V);
  l1_b[0] = PTE(l0_b, V);
  l0_b[P_RW] = PTE(&pages[P_ALT][0], V | R | W | A | D);
  csrw(satp, SATP_ASID(root_s, 1));
  asm volatile("sfence.vma" ::: "memory");
  CHECK("satp switches between ASIDs: A, B, A, B', A", run_in_mode(1, s_asid_switch, VA(P_RW)), 0x08080);
  csrw(satp, SATP_ASID(root_s, 1));
  CHECK("sfence.vma of one ASID: old, new, restored", run_in_mode(1, s_asid_fence, VA(P_RW)), 0x080);
  use(root_s);
  /* MPRV: M-mode data accesses translated with MPP privilege */
  { u64 v;
    csrc(mstatus, 3UL << 11); csrs(mstatus, 1UL << 11); /* MPP=S */
    asm volatile("csrs mstatus, %2\n ld %0, 0(%1)\n csrc mstatus, %2" : "=&r"(v) : "r"(VA(P_RW)), "r"(MPRV) : "memory");
    CHECK("MPRV=1 MPP=S: M load via translation", v, 0x1000);
    asm volatile("csrs mstatus, %2\n ld %0, 0(%1)\n csrc mstatus, %2" : "=&r"(v) : "r"((u64)&target_var), "r"(MPRV) : "memory");
    CHECK("MPRV=1 MPP=S: identity-mapped load", v, 0x1badb002);
    m_hook = mprv_hook;
    reset_traps();
    csrc(mstatus, 3UL << 11); /* MPP=U */
    asm volatile("csrs mstatus, %2\n ld %0, 0(%1)\n csrc mstatus, %2" : "=&r"(v) : "r"(VA(P_RW)), "r"(MPRV) : "memory");
    CHECK("MPRV=1 MPP=U: load S page faults: cause", last_cause, 13);
    CHECK("MPRV=1 MPP=U: tval", last_tval, VA(P_RW));
    CHECK("MPRV=1: trap MPP = M", (last_mstatus >> 11) & 3, 3);
    m_hook = 0;
    csrc(mstatus, MPRV);
    reset_traps();
    v = *(volatile u64 *)&pages[P_RW][0];
    CHECK("MPRV=0: M ignores satp", v, 0x1000);
    CHECK("MPRV=0: no trap", trap_count, 0);
  }
  /* page faults delegated to S */
  csrw(medeleg, (1UL << 12) | (1UL << 13) | (1UL << 15));
  reset_traps();
  run_in_mode(1, s_load, VA(P_INV));
  CHECK("delegated load page fault: scause", s_last_cause, 13);
  CHECK("delegated load page fault: stval", s_last_tval, VA(P_INV));
  CHECK("delegated: M not involved", trap_count, 0);
  reset_traps();
  run_in_mode(1, s_store, VA(P_RO));
  CHECK("delegated store page fault: scause", s_last_cause, 15);
  csrw(medeleg, 0);
  csrw(satp, 0);
  asm volatile("sfence.vma" ::: "memory");
  CHECK("satp=0: bare again", csrr(satp), 0);
  /* unsupported satp mode (Sv57=10 on QEMU 7.2 rv64 default? use 15): write ignored */
  csrw(satp, (15UL << 60) | 5);
  CHECK("satp write with unsupported mode ignored", csrr(satp), 0);
  finish();
}
