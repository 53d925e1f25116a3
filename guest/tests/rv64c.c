/* RV64C: every compressed instruction (RV64 set) incl. stack-pointer forms and c.ebreak. */
#include "test.h"
static volatile u64 buf[8] __attribute__((aligned(16)));
#define C1(insn, init, w) do { register u64 __a asm("a0") = (u64)(init); asm volatile(".option push\n.option rvc\n" insn "\n.option pop" : "+r"(__a)); CHECK(insn " (a0=" #init ")", __a, w); } while (0)
#define C2(insn, init, b, w) do { register u64 __a asm("a0") = (u64)(init); register u64 __b asm("a1") = (u64)(b); asm volatile(".option push\n.option rvc\n" insn "\n.option pop" : "+r"(__a) : "r"(__b)); CHECK(insn " (a0=" #init ",a1=" #b ")", __a, w); } while (0)

int main(void) {
  C1("c.li a0, -32", 0, -32L);
  C1("c.li a0, 31", 0, 31);
  C1("c.lui a0, 0xfffe0", 0, 0xfffffffffffe0000UL);
  C1("c.lui a0, 1", 0, 0x1000);
  C1("c.lui a0, 0x1f", 0, 0x1f000);
  C1("c.addi a0, -1", 0, -1L);
  C1("c.addi a0, 31", 1, 32);
  C1("c.addiw a0, 1", 0x7fffffff, 0xffffffff80000000UL);
  C1("c.addiw a0, 0", 0x1ffffffffUL, -1L);
  C1("c.slli a0, 63", 1, 0x8000000000000000UL);
  C1("c.slli a0, 1", 0x8000000000000001UL, 2);
  C1("c.srli a0, 63", 0x8000000000000000UL, 1);
  C1("c.srli a0, 32", -1L, 0xffffffffUL);
  C1("c.srai a0, 63", 0x8000000000000000UL, -1L);
  C1("c.srai a0, 4", 0x8000000000000000UL, 0xf800000000000000UL);
  C1("c.andi a0, -2", 0xff, 0xfe);
  C1("c.andi a0, 15", 0xff, 0x0f);
  C2("c.mv a0, a1", 0, 0x123456789UL, 0x123456789UL);
  C2("c.add a0, a1", 5, -7L, -2L);
  C2("c.sub a0, a1", 5, 7, -2L);
  C2("c.and a0, a1", 0xff0, 0x0ff, 0x0f0);
  C2("c.or a0, a1", 0xff0, 0x0ff, 0xfff);
  C2("c.xor a0, a1", 0xff0, 0x0ff, 0xf0f);
  C2("c.addw a0, a1", 0x7fffffff, 1, 0xffffffff80000000UL);
  C2("c.subw a0, a1", 0x80000000UL, 1, 0x7fffffff);
  C2("c.subw a0, a1", 0, 1, -1L);
  C1("c.nop", 77, 77);
  /* loads/stores (register-based) */
#define CM(body, basev, out) asm volatile("mv a1, %1\n.option push\n.option rvc\n" body "\n.option pop\nmv %0, a0" : "=r"(out) : "r"((u64)(basev)) : "a0", "a1", "fa0", "memory")
  {
    u64 v;
    buf[0] = 0; buf[1] = 0;
    asm volatile("mv a1, %0\n li a0, 0xfedcba9880000001\n.option push\n.option rvc\nc.sd a0, 8(a1)\nc.sw a0, 0(a1)\n.option pop" :: "r"(buf) : "a0", "a1", "memory");
    CHECK("c.sd", buf[1], 0xfedcba9880000001UL);
    CHECK("c.sw", buf[0], 0x80000001UL);
    CM("c.lw a0, 0(a1)", buf, v);
    CHECK("c.lw sign-extends", v, 0xffffffff80000001UL);
    CM("c.ld a0, 8(a1)", buf, v);
    CHECK("c.ld", v, 0xfedcba9880000001UL);
    CM("c.lw a0, 124(a1)", (u64)buf - 124 + 12, v);
    CHECK("c.lw max offset", v, 0xfffffffffedcba98UL);
    buf[2] = 0x400921fb54442d18UL; /* pi */
    CM("c.fld fa0, 16(a1)\nc.fsd fa0, 24(a1)", buf, v);
    CHECK("c.fld/c.fsd", buf[3], 0x400921fb54442d18UL);
  }
  /* stack-pointer based */
  {
    u64 r1, r2, r3, r4, f;
    asm volatile(".option push\n.option rvc\n"
                 "mv t1, sp\n"
                 "c.addi16sp sp, -64\n"
                 "sub %0, t1, sp\n"
                 "c.addi4spn a0, sp, 16\n"
                 "sub %1, a0, sp\n"
                 "li t2, -5\n"
                 "c.sdsp t2, 8(sp)\n"
                 "c.swsp t2, 16(sp)\n"
                 "c.ldsp %2, 8(sp)\n"
                 "c.lwsp %3, 16(sp)\n"
                 "li t2, 0x3ff0000000000000\n"
                 "fmv.d.x ft3, t2\n"
                 "c.fsdsp ft3, 24(sp)\n"
                 "c.fldsp ft4, 24(sp)\n"
                 "fmv.x.d %4, ft4\n"
                 "c.addi16sp sp, 64\n"
                 "sub %3, %3, zero\n"
                 ".option pop"
                 : "=&r"(r1), "=&r"(r2), "=&r"(r3), "=&r"(r4), "=&r"(f) :: "t1", "t2", "a0", "ft3", "ft4", "memory");
    CHECK("c.addi16sp -64", r1, 64);
    CHECK("c.addi4spn 16", r2, 16);
    CHECK("c.sdsp/c.ldsp", r3, -5L);
    CHECK("c.swsp/c.lwsp", r4, -5L);
    CHECK("c.fsdsp/c.fldsp", f, 0x3ff0000000000000UL);
  }
  /* control flow */
  {
    u64 r;
    asm volatile(".option push\n.option rvc\nli %0, 0\nc.j 1f\nli %0, 1\n1: addi %0, %0, 2\n.option pop" : "=&r"(r));
    CHECK("c.j", r, 2);
    register u64 a0 asm("a0");
    a0 = 0; asm volatile(".option push\n.option rvc\nli a1, 5\nc.beqz a0, 1f\nli a1, 6\n1: mv a0, a1\n.option pop" : "+r"(a0) :: "a1");
    CHECK("c.beqz taken", a0, 5);
    a0 = 3; asm volatile(".option push\n.option rvc\nli a1, 5\nc.beqz a0, 1f\nli a1, 6\n1: mv a0, a1\n.option pop" : "+r"(a0) :: "a1");
    CHECK("c.beqz not taken", a0, 6);
    a0 = 3; asm volatile(".option push\n.option rvc\nli a1, 5\nc.bnez a0, 1f\nli a1, 6\n1: mv a0, a1\n.option pop" : "+r"(a0) :: "a1");
    CHECK("c.bnez taken", a0, 5);
    a0 = 0; asm volatile(".option push\n.option rvc\nli a1, 5\nc.bnez a0, 1f\nli a1, 6\n1: mv a0, a1\n.option pop" : "+r"(a0) :: "a1");
    CHECK("c.bnez not taken", a0, 6);
    u64 link, ret;
    asm volatile(".option push\n.option rvc\nla t1, 1f\nli %1, 0\nc.jr t1\nli %1, 9\n1: addi %1, %1, 1\nla t1, 2f\nc.jalr t1\n3: j 4f\n2: mv %0, ra\nla t2, 3b\nsub %0, %0, t2\nret\n4:\n.option pop"
                 : "=&r"(link), "=&r"(ret) :: "t1", "t2", "ra");
    CHECK("c.jr", ret, 1);
    CHECK("c.jalr link = pc+2", link, 0);
  }
  /* c.ebreak traps with cause 3, mepc at the instruction; handler skips 2 bytes */
  {
    u64 pc;
    reset_traps();
    asm volatile(".option push\n.option rvc\nla %0, 1f\n1: c.ebreak\n.option pop" : "=&r"(pc) :: "memory");
    CHECK("c.ebreak trapped", trap_count, 1);
    CHECK("c.ebreak mcause", last_cause, 3);
    CHECK("c.ebreak mepc", last_epc, pc);
    CHECK("c.ebreak 16-bit encoding", *(volatile unsigned short *)pc, 0x9002);
  }
  finish();
}
