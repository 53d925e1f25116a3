# S-mode payload for OpenSBI (linked at 0x80200000, where the board puts a
# kernel after firmware): print through the SBI console, then shut down.
    .section .text
    .globl _start
_start:
    la   s1, msg
1:  lbu  a0, 0(s1)
    beqz a0, 2f
    li   a7, 1          # legacy console_putchar
    ecall
    addi s1, s1, 1
    j    1b
2:  li   a7, 0x53525354 # SRST extension
    li   a6, 0          # system_reset
    li   a0, 0          # shutdown
    li   a1, 0          # no reason
    ecall
    li   a7, 8          # legacy shutdown, if SRST is missing
    ecall
3:  j    3b
    .section .rodata
msg: .asciz "payload: hello from S-mode via SBI\n"
