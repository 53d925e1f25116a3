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
  .text
  .globl main
main:
  la a0, msg
  call puts_
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
