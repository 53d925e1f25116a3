# Interactive demo: echo each line typed on the UART; a line "q" powers off.
# Reads the 16550 by polling LSR.DR, so it needs no interrupts.
    .equ UART, 0x10000000
    .equ TEST, 0x100000
    .text
    .globl main
main:                       # entered from common/start.S with a stack
    li   s0, UART
    la   a0, banner
    call puts
prompt:
    la   a0, prompt_text
    call puts
    la   s1, line           # s1 = write cursor into the line buffer
    mv   s2, s1             # s2 = start of line
read_char:
    lbu  t0, 5(s0)          # LSR
    andi t0, t0, 1          # DR: a byte is waiting
    beqz t0, read_char
    lbu  a0, 0(s0)          # RBR
    li   t1, '\r'
    beq  a0, t1, end_line
    li   t1, '\n'
    beq  a0, t1, end_line
    li   t1, 127            # DEL / backspace: drop one character
    beq  a0, t1, erase
    li   t1, 8
    beq  a0, t1, erase
    addi t2, s2, 120        # keep room for the terminator
    bgeu s1, t2, read_char
    sb   a0, 0(s1)
    addi s1, s1, 1
    call putc               # echo as typed
    j    read_char
erase:
    beq  s1, s2, read_char
    addi s1, s1, -1
    la   a0, erase_text
    call puts
    j    read_char
end_line:
    sb   zero, 0(s1)
    la   a0, crlf
    call puts
    # "q" alone powers off with the pass code.
    sub  t0, s1, s2
    li   t1, 1
    bne  t0, t1, answer
    lbu  t0, 0(s2)
    li   t1, 'q'
    bne  t0, t1, answer
    la   a0, bye
    call puts
    li   t0, TEST
    li   t1, 0x5555
    sw   t1, 0(t0)
1:  j    1b
answer:
    la   a0, you_typed
    call puts
    mv   a0, s2
    call puts
    la   a0, crlf
    call puts
    j    prompt

# putc(a0): wait for THR empty (LSR bit 5), then write.
putc:
    lbu  t0, 5(s0)
    andi t0, t0, 0x20
    beqz t0, putc
    sb   a0, 0(s0)
    ret

# puts(a0): NUL-terminated string.
puts:
    addi sp, sp, -16
    sd   ra, 0(sp)
    sd   s3, 8(sp)
    mv   s3, a0
1:  lbu  a0, 0(s3)
    beqz a0, 2f
    call putc
    addi s3, s3, 1
    j    1b
2:  ld   ra, 0(sp)
    ld   s3, 8(sp)
    addi sp, sp, 16
    ret

    .section .rodata
banner:      .asciz "ftvm demo guest: type a line and press Enter; a line \"q\" powers off.\r\n"
prompt_text: .asciz "> "
you_typed:   .asciz "you typed: "
erase_text:  .asciz "\b \b"
bye:         .asciz "bye\r\n"
crlf:        .asciz "\r\n"

    .section .bss
    .balign 16
line: .space 128
