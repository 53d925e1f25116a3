/* RV64I: every base instruction, with sign/zero-extension and shift edge cases. */
#include "test.h"

#define RR(op, a, b) ({ u64 __r; asm volatile(op " %0,%1,%2" : "=r"(__r) : "r"((u64)(a)), "r"((u64)(b))); __r; })
#define RI(op, a, i) ({ u64 __r; asm volatile(op " %0,%1," #i : "=r"(__r) : "r"((u64)(a))); __r; })
#define T_RR(op, a, b, w) CHECK(op " " #a "," #b, RR(op, a, b), w)
#define T_RI(op, a, i, w) CHECK(op " " #a "," #i, RI(op, a, i), w)
#define BR(op, a, b) ({ u64 __r; asm volatile("li %0,1\n" op " %1,%2,1f\nli %0,0\n1:" : "=&r"(__r) : "r"((u64)(a)), "r"((u64)(b))); __r; })
#define T_BR(op, a, b, w) CHECK(op " " #a "," #b " taken", BR(op, a, b), w)

static volatile u64 mem[4] = { 0x8070605040302010UL, 0xfffefdfcfbfaf9f8UL, 0, 0 };
extern char lbl_auipc[];

int main(void) {
  T_RR("add", 0x7fffffffffffffffUL, 1, 0x8000000000000000UL);
  T_RR("add", -1L, 1, 0);
  T_RR("sub", 0, 1, -1L);
  T_RR("sub", 0x8000000000000000UL, 1, 0x7fffffffffffffffUL);
  T_RR("and", 0xff00ff00ff00ff00UL, 0x0ff00ff00ff00ff0UL, 0x0f000f000f000f00UL);
  T_RR("or", 0xff00ff00ff00ff00UL, 0x0ff00ff00ff00ff0UL, 0xfff0fff0fff0fff0UL);
  T_RR("xor", 0xff00ff00ff00ff00UL, 0x0ff00ff00ff00ff0UL, 0xf0f0f0f0f0f0f0f0UL);
  T_RR("sll", 1, 63, 0x8000000000000000UL);
  T_RR("sll", 1, 64 + 3, 8);
  T_RR("srl", 0x8000000000000000UL, 63, 1);
  T_RR("sra", 0x8000000000000000UL, 63, -1L);
  T_RR("sra", 0x8000000000000000UL, 127, -1L);
  T_RR("slt", -1L, 1, 1);
  T_RR("slt", 1, -1L, 0);
  T_RR("sltu", -1L, 1, 0);
  T_RR("sltu", 1, -1L, 1);
  T_RR("slt", 5, 5, 0);
  T_RR("addw", 0x7fffffff, 1, 0xffffffff80000000UL);
  T_RR("addw", 0xffffffff00000001UL, 0x100000000UL, 1);
  T_RR("subw", 0, 1, -1L);
  T_RR("subw", 0x80000000UL, 1, 0x7fffffff);
  T_RR("sllw", 1, 31, 0xffffffff80000000UL);
  T_RR("sllw", 1, 32 + 1, 2);
  T_RR("srlw", 0xffffffff80000000UL, 31, 1);
  T_RR("srlw", 0xffffffff80000000UL, 0, 0xffffffff80000000UL);
  T_RR("sraw", 0x80000000UL, 31, -1L);
  T_RR("sraw", 0x7fffffff00000000UL, 4, 0);
  T_RI("addi", 0, -2048, -2048L);
  T_RI("addi", 0, 2047, 2047);
  T_RI("addiw", 0x7fffffff, 1, 0xffffffff80000000UL);
  T_RI("addiw", 0xfffffffffUL, 0, -1L);
  T_RI("slti", -5L, -4, 1);
  T_RI("slti", 5, -4, 0);
  T_RI("sltiu", 5, -1, 1);
  T_RI("sltiu", 0, 1, 1);
  T_RI("sltiu", -1L, -1, 0);
  T_RI("andi", 0x1234, -1, 0x1234);
  T_RI("andi", -1L, 0x7ff, 0x7ff);
  T_RI("ori", 0x1000, -2048, -2048L);
  T_RI("xori", 0x00ff, -1, -256L);
  T_RI("slli", 1, 63, 0x8000000000000000UL);
  T_RI("srli", -1L, 63, 1);
  T_RI("srai", 0x8000000000000000UL, 63, -1L);
  T_RI("srai", 0x4000000000000000UL, 62, 1);
  T_RI("slliw", 1, 31, 0xffffffff80000000UL);
  T_RI("slliw", 0xffffffff00000003UL, 1, 6);
  T_RI("srliw", -1L, 31, 1);
  T_RI("srliw", -1L, 0, -1L);
  T_RI("sraiw", 0x80000000UL, 31, -1L);
  T_RI("sraiw", 0xf0000000fUL, 1, 7);
  { u64 r; asm volatile("lui %0, 0x80000" : "=r"(r)); CHECK("lui 0x80000 sign-extends", r, 0xffffffff80000000UL); }
  { u64 r; asm volatile("lui %0, 0x7ffff" : "=r"(r)); CHECK("lui 0x7ffff", r, 0x7ffff000UL); }
  { u64 r; asm volatile(".globl lbl_auipc\nlbl_auipc: auipc %0, 0" : "=r"(r)); CHECK("auipc 0 = pc", r, (u64)lbl_auipc); }
  { u64 r, r2; asm volatile("1: auipc %0, 1\n auipc %1, 0\n addi %1,%1,-4" : "=r"(r), "=r"(r2)); CHECK("auipc 1", r - r2, 0x1000); }
  { u64 r; asm volatile("1: auipc %0, 0x80000\n auipc t0, 0\n sub %0, %0, t0\n" : "=r"(r) :: "t0"); CHECK("auipc 0x80000 negative offset", r, 0xffffffff80000000UL - 4); }
  /* branches both ways */
  T_BR("beq", 3, 3, 1); T_BR("beq", 3, 4, 0);
  T_BR("bne", 3, 4, 1); T_BR("bne", 3, 3, 0);
  T_BR("blt", -1L, 0, 1); T_BR("blt", 0, -1L, 0);
  T_BR("bge", 0, -1L, 1); T_BR("bge", -1L, 0, 0); T_BR("bge", 7, 7, 1);
  T_BR("bltu", 0, -1L, 1); T_BR("bltu", -1L, 0, 0);
  T_BR("bgeu", -1L, 0, 1); T_BR("bgeu", 0, -1L, 0); T_BR("bgeu", 7, 7, 1);
  { u64 r; asm volatile("li %0,0\n j 1f\n li %0,5\n1: addi %0,%0,1\n 2: bnez zero, 2b" : "=&r"(r)); CHECK("backward branch not taken / jal forward", r, 1); }
  { u64 r = 0, i = 0; asm volatile("li %1, 10\n1: addi %0,%0,3\n addi %1,%1,-1\n bnez %1, 1b" : "+r"(r), "+r"(i)); CHECK("backward branch loop", r, 30); }
  /* jal / jalr */
  { u64 link, target; asm volatile("jal %0, 1f\n2: nop\n1: la %1, 2b" : "=r"(link), "=r"(target)); CHECK("jal link = pc+4", link, target); }
  { u64 link, tgt, r;
    asm volatile("la %1, 1f\n addi %1, %1, 1\n li %2, 0\n jalr %0, 0(%1)\n 3: li %2, 9\n j 2f\n 1: li %2, 7\n 2:" : "=&r"(link), "=&r"(tgt), "=&r"(r));
    CHECK("jalr odd target bit0 cleared", r, 7);
    asm volatile("la %0, 3f\n jalr %0, 0(%0)\n 3:" : "=&r"(link) :: "memory");
    (void)link; }
  { u64 r; asm volatile("la t0, 2f\n addi t0, t0, 8\n li %0, 0\n jalr zero, -8(t0)\n li %0, 1\n 2: addi %0, %0, 2" : "=&r"(r) :: "t0");
    CHECK("jalr negative offset", r, 2); }
  { u64 m, d; asm volatile(".option push\n.option norvc\n li %0, 0\n la t0, 2f\n jalr t0, 0(t0)\n 1: li %0, 1\n 2: la %1, 1b\n sub %1, t0, %1\n.option pop" : "=&r"(m), "=&r"(d) :: "t0");
    CHECK("jalr rd==rs1: jumps to old rs1", m, 0); CHECK("jalr rd==rs1: link = pc+4", d, 0); }
  { u64 z; asm volatile("addi x0, x0, 5\n mv %0, x0" : "=r"(z)); CHECK("x0 hardwired", z, 0); }
  /* loads */
  volatile unsigned char *m = (volatile unsigned char *)mem;
  CHECK("lb sign", *(volatile signed char *)(m + 7), (u64)(i64)(signed char)0x80);
  CHECK("lbu zero", *(volatile unsigned char *)(m + 7), 0x80);
  CHECK("lh sign", (i64)*(volatile short *)(m + 14), (i64)(short)0xfffe);
  CHECK("lhu zero", *(volatile unsigned short *)(m + 14), 0xfffe);
  CHECK("lw sign", (i64)*(volatile int *)(m + 12), (i64)(int)0xfffefdfc);
  CHECK("lwu zero", *(volatile unsigned int *)(m + 12), 0xfffefdfcUL);
  CHECK("lw positive", (i64)*(volatile int *)(m + 0), 0x40302010);
  CHECK("ld", mem[1], 0xfffefdfcfbfaf9f8UL);
  { u64 r; asm volatile("lb %0, 0(%1)" : "=r"(r) : "r"(m + 1)); CHECK("lb positive", r, 0x20); }
  { u64 r; asm volatile("lh %0, -2(%1)" : "=r"(r) : "r"(m + 8)); CHECK("lh negative offset", r, 0xffffffffffff8070UL); }
  { u64 r; asm volatile("lwu %0, 4(%1)" : "=r"(r) : "r"(m + 8)); CHECK("lwu offset", r, 0xfffefdfcUL); }
  /* stores */
  mem[2] = 0;
  asm volatile("sb %1, 0(%0)\n sh %1, 2(%0)\n sw %1, 4(%0)" :: "r"(m + 16), "r"(0x1122334455667788UL) : "memory");
  CHECK("sb/sh/sw", mem[2], 0x5566778877880088UL);
  asm volatile("sd %1, 8(%0)" :: "r"(m + 16), "r"(0xdeadbeefcafef00dUL) : "memory");
  CHECK("sd", mem[3], 0xdeadbeefcafef00dUL);
  asm volatile("sb %1, -1(%0)" :: "r"(m + 24), "r"(0xabUL) : "memory");
  CHECK("sb negative offset", mem[2] >> 56, 0xab);
  asm volatile("fence\n fence.i\n fence rw, rw" ::: "memory");
  CHECK("fence/fence.i execute", 1, 1);
  finish();
}
