/* HTIF exit (ftvm only; QEMU virt ignores HTIF and would hang): print, then tohost = 1 (pass). */
#ifndef HTIF_CODE
#define HTIF_CODE 0
#endif
  .section .rodata
msg:
#if HTIF_CODE == 0
  .asciz "htif: exiting with code 0 via tohost\n"
#else
  .asciz "htif: exiting with code 3 via tohost\n"
#endif
htif_msg:
  .asciz "htif putchar\n"
  .text
  .globl main
main:
  la a0, msg
  call puts_
  /* HTIF console putchar (device 1, command 1): tohost = 1<<56 | 1<<48 | char;
     the host prints it and clears tohost. */
  la t1, tohost
  la t2, htif_msg
2: lbu t3, 0(t2)
  beqz t3, 4f
  li t0, 0x0101
  slli t0, t0, 48
  or t0, t0, t3
  sd t0, 0(t1)
3: ld t0, 0(t1)
  bnez t0, 3b
  addi t2, t2, 1
  j 2b
4:
  li t0, (HTIF_CODE << 1) | 1
  la t1, tohost
  sd t0, 0(t1)
1: j 1b

  .section .tohost, "aw", @progbits
  .align 3
  .globl tohost
tohost: .dword 0
  .align 3
  .globl fromhost
fromhost: .dword 0
