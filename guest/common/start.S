#define ECALL_MAGIC 0x5EC0
  .section .text.init
  .globl _start
_start:
  la sp, _stack_top
  /* clear bss */
  la t0, __bss_start
  la t1, __bss_end
1: bgeu t0, t1, 2f
  sd zero, 0(t0)
  addi t0, t0, 8
  j 1b
2:
  la t0, m_trap_entry
  csrw mtvec, t0
  la t0, s_trap_entry
  csrw stvec, t0
  /* PMP: whole address space RWX for S/U */
  li t0, -1
  csrw pmpaddr0, t0
  li t0, 0x1f
  csrw pmpcfg0, t0
  /* FPU on */
  li t0, (1 << 13)
  csrs mstatus, t0
  csrwi fcsr, 0
  call main
  call finish

/* ---------- trap entries: save all regs on current stack, call C ---------- */
  .macro SAVE_REGS
  addi sp, sp, -256
  .irp n,1,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
  sd x\n, (\n*8)(sp)
  .endr
  addi t0, sp, 256
  sd t0, 16(sp)
  .endm
  .macro RESTORE_REGS
  .irp n,1,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
  ld x\n, (\n*8)(sp)
  .endr
  ld sp, 16(sp)
  .endm

  .align 6
  .globl m_trap_entry
m_trap_entry:
  SAVE_REGS
  mv a0, sp
  call m_trap
  RESTORE_REGS
  mret

  .align 6
  .globl s_trap_entry
s_trap_entry:
  SAVE_REGS
  mv a0, sp
  call s_trap
  RESTORE_REGS
  sret

/* u64 run_in_mode(int mode, u64 (*fn)(u64), u64 arg) */
  .globl run_in_mode
run_in_mode:
  la t0, mode_ctx
  sd ra, 0(t0)
  sd sp, 8(t0)
  .irp n,0,1,2,3,4,5,6,7,8,9,10,11
  sd s\n, (16+\n*8)(t0)
  .endr
  /* mstatus.MPP = mode */
  li t1, (3 << 11)
  csrc mstatus, t1
  slli t1, a0, 11
  csrs mstatus, t1
  li t1, (1 << 7)
  csrc mstatus, t1
  csrw mepc, a1
  mv a0, a2
  la ra, mode_exit_stub
  mret
  .globl mode_exit_stub
mode_exit_stub:
  li a7, ECALL_MAGIC
  .globl mode_exit_ecall
mode_exit_ecall:
  ecall
1: j 1b
  .globl mode_return
mode_return:
  csrci mstatus, 8
  la t0, mode_ctx
  ld ra, 0(t0)
  ld sp, 8(t0)
  .irp n,0,1,2,3,4,5,6,7,8,9,10,11
  ld s\n, (16+\n*8)(t0)
  .endr
  ret

  .section .bss
  .align 3
mode_ctx: .space 8*14
