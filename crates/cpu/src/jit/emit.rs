//! Code generation for one block: each decoded instruction becomes x86-64
//! code or a bail to the interpreter, and the block's exits go back to the
//! run loop or through link slots (see the parent module for the register
//! use and the rules translated code keeps).
//!
//! Safe code only: it appends bytes to an assembler buffer. Placing them
//! in the code region and running them is the parent's business.

#![deny(unsafe_code)]

use std::mem::offset_of;

use dynasmrt::x64::X64Relocation;
use dynasmrt::{DynamicLabel, DynasmApi, DynasmLabelApi, VecAssembler, dynasm};

use super::{
    ChunkStamp, DIRECT_KEY, EXIT_BAIL, EXIT_LINK, JitContext, MISS_LOAD, MISS_STORE, ctx,
    jump_cache,
};
use crate::decode::{Decoded, Op};

const PAGE_BYTES: u64 = 4096;

// The TLB index is masked as `(vaddr >> 8) & 0xff0`: 256 entries of 16
// bytes.
const _: () = assert!(super::FAST_ENTRIES == 256 && size_of::<super::FastEntry>() == 16);

const RAX: u8 = 0;
const RCX: u8 = 1;
const RDX: u8 = 2;

/// Host registers that may hold guest registers: the caller-saved ones
/// that emitted code neither uses as temporaries (rax, rcx, rdx) nor
/// clobbers implicitly (`mul`, shifts by `cl`), and r14, which the entry
/// stub saves and nothing else uses.
const CACHE_HOSTS: [u8; 7] = [6, 7, 8, 9, 10, 11, 14];

/// A use inside the loop of a block that jumps back to its own start
/// counts this many times a use after it, which runs once per exit: a
/// loop rarely runs fewer times.
const LOOP_WEIGHT: u32 = 64;

/// A static exit waiting to be emitted out of line.
struct Cold {
    label: DynamicLabel,
    kind: ColdKind,
    /// The cached guest registers to write back first: those dirty where
    /// the exit leaves.
    dirty: u32,
}

enum ColdKind {
    /// Bail at the instruction `index` at block-relative offset `rel`.
    Bail { index: i32, rel: i32 },
    /// The same for a load or store whose virtual address (in rax) the
    /// translator's TLB did not hold: noted for the run loop first.
    Miss { index: i32, rel: i32, store: bool },
    /// Leave for a target `rel` bytes from the block start, having executed
    /// `executed` instructions of the block.
    Exit { executed: i32, rel: i64 },
}

/// The register-immediate operations: one source register, and nothing
/// to do for rd = x0.
fn is_op_imm(op: Op) -> bool {
    matches!(
        op,
        Op::Addi
            | Op::Slti
            | Op::Sltiu
            | Op::Xori
            | Op::Ori
            | Op::Andi
            | Op::Slli
            | Op::Srli
            | Op::Srai
            | Op::Addiw
            | Op::Slliw
            | Op::Srliw
            | Op::Sraiw
    )
}

/// Instructions translated code never executes: it writes back, bails
/// and ends the block there.
fn ends_in_the_interpreter(op: Op) -> bool {
    matches!(
        op,
        Op::Div
            | Op::Divu
            | Op::Rem
            | Op::Remu
            | Op::Divw
            | Op::Divuw
            | Op::Remw
            | Op::Remuw
            | Op::Other
    )
}

/// The guest registers an instruction reads and writes (0: none), or
/// `None` if the translator leaves it to the interpreter, which ends the
/// block's translation.
fn operands(d: &Decoded) -> Option<([u8; 2], u8)> {
    let (rd, rs1, rs2) = (d.rd & 31, d.rs1 & 31, d.rs2 & 31);
    Some(match d.op {
        Op::Lui | Op::Auipc | Op::Jal => ([0, 0], rd),
        Op::Jalr => ([rs1, 0], rd),
        Op::Beq | Op::Bne | Op::Blt | Op::Bge | Op::Bltu | Op::Bgeu => ([rs1, rs2], 0),
        Op::Lb | Op::Lh | Op::Lw | Op::Ld | Op::Lbu | Op::Lhu | Op::Lwu => ([rs1, 0], rd),
        Op::Sb | Op::Sh | Op::Sw | Op::Sd => ([rs1, rs2], 0),
        op if is_op_imm(op) => {
            if rd == 0 {
                ([0, 0], 0)
            } else {
                ([rs1, 0], rd)
            }
        }
        op if ends_in_the_interpreter(op) => return None,
        Op::Fence => ([0, 0], 0),
        _ => {
            if rd == 0 {
                ([0, 0], 0)
            } else {
                ([rs1, rs2], rd)
            }
        }
    })
}

/// Where a branch or `jal` at block-relative offset `rel` goes, relative
/// to the block's start.
fn jump_target(d: &Decoded, rel: i64) -> Option<i64> {
    match d.op {
        Op::Jal | Op::Beq | Op::Bne | Op::Blt | Op::Bge | Op::Bltu | Op::Bgeu => {
            Some(rel + i64::from(d.imm))
        }
        _ => None,
    }
}

/// Which guest registers live in host registers within a block, and what
/// state they are in at the point being emitted. A block is straight-line
/// code whose every way out is an exit, so the state at each point is
/// known while emitting.
struct Cache {
    /// The host register caching each guest register, if any (x0 never).
    host: [Option<u8>; 32],
    /// Cached guest registers whose host register holds their value.
    loaded: u32,
    /// Cached guest registers whose value in memory is stale: written back
    /// before every way out of the block.
    dirty: u32,
    /// The block jumps back to its own start.
    looping: bool,
    /// The loaded set at the loop's head: every cached register the loop
    /// uses. The others are used after it only, and loaded there.
    loop_loaded: u32,
    /// The dirty set at the loop's head: every cached register the loop
    /// writes (a superset of what a pass left dirty).
    loop_dirty: u32,
}

/// Where a block that jumps back to its own start goes round.
#[derive(Clone, Copy)]
struct Loop {
    /// After the block's checks and the loads of the cached registers the
    /// loop uses.
    head: DynamicLabel,
    /// The exit taken when the next pass could overrun the icount limit.
    full: DynamicLabel,
}

impl Cache {
    /// Give the cache's host registers to the guest registers the block's
    /// translated instructions use most. A register used once gains
    /// nothing, unless inside the loop, where a use counts once per pass.
    fn plan(insns: &[Decoded]) -> Cache {
        let mut accesses = Vec::with_capacity(insns.len());
        let mut rel: i64 = 0;
        let mut loop_end = None;
        for (i, d) in insns.iter().enumerate() {
            let Some(access) = operands(d) else {
                break;
            };
            accesses.push(access);
            if jump_target(d, rel) == Some(0) {
                loop_end = Some(i);
            }
            if matches!(d.op, Op::Jal | Op::Jalr) {
                break;
            }
            rel += i64::from(d.len);
        }
        let mut score = [0u32; 32];
        let (mut loop_uses, mut loop_writes) = (0u32, 0u32);
        for (i, &(reads, write)) in accesses.iter().enumerate() {
            let in_loop = loop_end.is_some_and(|end| i <= end);
            let weight = if in_loop { LOOP_WEIGHT } else { 1 };
            for r in reads.into_iter().chain([write]) {
                score[usize::from(r)] += weight;
                if in_loop {
                    loop_uses |= 1 << r;
                }
            }
            if in_loop {
                loop_writes |= 1 << write;
            }
        }
        let mut order: Vec<usize> = (1..32).filter(|&r| score[r] >= 2).collect();
        // Stable: ties go to the lower register number.
        order.sort_by_key(|&r| std::cmp::Reverse(score[r]));
        let mut host = [None; 32];
        let mut cached = 0u32;
        for (&r, &h) in order.iter().zip(CACHE_HOSTS.iter()) {
            host[r] = Some(h);
            cached |= 1 << r;
        }
        Cache {
            host,
            loaded: 0,
            dirty: 0,
            looping: loop_end.is_some(),
            loop_loaded: loop_uses & cached,
            loop_dirty: loop_writes & cached,
        }
    }
}

pub(super) struct Emitter<'a> {
    /// The block's code; finalized by the caller.
    pub(super) ops: VecAssembler<X64Relocation>,
    exit: usize,
    exit_link: usize,
    links: &'a mut [usize],
    links_used: &'a mut usize,
    page_offset: u64,
    count: i32,
    cold: Vec<Cold>,
    cache: Cache,
    looping: Option<Loop>,
}

impl<'a> Emitter<'a> {
    /// An emitter for code that will live at address `at` and leave
    /// through the stubs at `exit` and `exit_link`, handing out link slots
    /// from `links[*links_used..]`; the block has `count` instructions, the
    /// first at page offset `page_offset`.
    pub(super) fn new(
        at: usize,
        exit: usize,
        exit_link: usize,
        links: &'a mut [usize],
        links_used: &'a mut usize,
        page_offset: u64,
        count: i32,
    ) -> Self {
        Emitter {
            ops: VecAssembler::new(at),
            exit,
            exit_link,
            links,
            links_used,
            page_offset,
            count,
            cold: Vec::new(),
            cache: Cache::plan(&[]),
            looping: None,
        }
    }

    pub(super) fn block(&mut self, insns: &[Decoded], chunk: ChunkStamp) {
        let count = self.count;
        let exit = self.exit;
        let no_room = self.ops.new_dynamic_label();
        let stale = self.ops.new_dynamic_label();
        let generation_at = (chunk.index * 4) as i32;
        let generation = chunk.generation as i32;
        self.cache = Cache::plan(insns);
        dynasm!(self.ops
            ; .arch x64
            ; mov rax, QWORD [r12 + ctx!(chunk_generation)]
            ; cmp DWORD [rax + generation_at], generation
            ; jne =>stale
            ; lea rax, [r13 + count]
            ; cmp rax, QWORD [r12 + ctx!(icount_limit)]
            ; ja =>no_room
        );
        if self.cache.looping {
            // Every pass of the loop starts in the same state: the cached
            // registers it uses loaded, those it writes dirty.
            let loaded = self.cache.loop_loaded;
            for r in bits(loaded) {
                if let Some(host) = self.cache.host[usize::from(r)] {
                    let disp = i32::from(r) * 8;
                    dynasm!(self.ops ; .arch x64 ; mov Rq(host), QWORD [rbx + disp]);
                }
            }
            self.cache.loaded = loaded;
            self.cache.dirty = self.cache.loop_dirty;
            let head = self.ops.new_dynamic_label();
            dynasm!(self.ops ; .arch x64 ; =>head);
            self.looping = Some(Loop {
                head,
                full: self.ops.new_dynamic_label(),
            });
        }
        let mut rel: i64 = 0;
        let mut ended = false;
        for (index, d) in insns.iter().enumerate() {
            if self.insn(index as i32, rel, d) {
                ended = true;
                break;
            }
            rel += i64::from(d.len);
        }
        if !ended {
            self.write_back(self.cache.dirty);
            self.static_exit(count, rel);
        }
        dynasm!(self.ops
            ; .arch x64
            ; =>no_room
            ; mov QWORD [r12 + ctx!(pc)], rbp
            ; xor eax, eax
            ; jmp extern exit
            // Retired code: the run loop translates the block anew and
            // points the link that led here at the new translation.
            ; =>stale
            ; mov QWORD [r12 + ctx!(pc)], rbp
            ; mov eax, EXIT_LINK as i32
            ; jmp extern exit
        );
        if let Some(Loop { full, .. }) = self.looping {
            // A pass would run past the icount limit: leave at the block's
            // start (rbp), as the top of the block would.
            dynasm!(self.ops ; .arch x64 ; =>full);
            self.write_back(self.cache.loop_dirty);
            dynasm!(self.ops
                ; .arch x64
                ; mov QWORD [r12 + ctx!(pc)], rbp
                ; xor eax, eax
                ; jmp extern exit
            );
        }
        for cold in std::mem::take(&mut self.cold) {
            dynasm!(self.ops ; .arch x64 ; =>cold.label);
            self.write_back(cold.dirty);
            match cold.kind {
                ColdKind::Bail { index, rel } => self.bail_now(index, rel),
                ColdKind::Miss { index, rel, store } => {
                    let miss = if store { MISS_STORE } else { MISS_LOAD } as i32;
                    dynasm!(self.ops
                        ; .arch x64
                        ; mov QWORD [r12 + ctx!(miss_vaddr)], rax
                        ; mov QWORD [r12 + ctx!(miss)], miss
                    );
                    self.bail_now(index, rel)
                }
                ColdKind::Exit { executed, rel } => self.static_exit(executed, rel),
            }
        }
    }

    fn bail_now(&mut self, index: i32, rel: i32) {
        let exit = self.exit;
        dynasm!(self.ops
            ; .arch x64
            ; lea rax, [rbp + rel]
            ; mov QWORD [r12 + ctx!(pc)], rax
            ; add r13, index
            ; mov eax, EXIT_BAIL as i32
            ; jmp extern exit
        );
    }

    /// Store the cached guest registers in `dirty` to memory: the next
    /// block, the run loop and the interpreter find them there.
    fn write_back(&mut self, dirty: u32) {
        for r in bits(dirty) {
            if let Some(host) = self.cache.host[r as usize] {
                let disp = i32::from(r) * 8;
                dynasm!(self.ops ; .arch x64 ; mov QWORD [rbx + disp], Rq(host));
            }
        }
    }

    /// Leave the block for block-relative target `rel` after `executed`
    /// instructions: chained through a link slot when the target is in the
    /// same page, through the jump cache otherwise. Dirty registers are
    /// written back already.
    fn static_exit(&mut self, executed: i32, rel: i64) {
        let exit = self.exit;
        let target = self.page_offset as i64 + rel;
        let rel32 = rel as i32;
        if (0..PAGE_BYTES as i64).contains(&target) && *self.links_used < self.links.len() {
            // Slots are handed out unlinked; `Jit::set_link` links them.
            let slot = &mut self.links[*self.links_used];
            *slot = self.exit_link;
            let slot = slot as *mut usize as i64;
            *self.links_used += 1;
            dynasm!(self.ops
                ; .arch x64
                ; add r13, executed
                ; add rbp, rel32
                ; mov rax, QWORD slot
                ; mov QWORD [r12 + ctx!(link)], rax
                ; jmp QWORD [rax]
            );
        } else {
            // `rel` fits in 32 bits: an immediate is at most 2^20 and the
            // block is within a page.
            dynasm!(self.ops
                ; .arch x64
                ; add r13, executed
                ; lea rax, [rbp + rel32]
            );
            jump_cache::lookup(&mut self.ops, exit);
        }
    }

    /// Go round the block's loop after `executed` instructions, as the
    /// chained exit to the block's own start would, but with the registers
    /// still cached: the icount check of the block's top, then the head.
    /// The top's other check, for retired code, cannot fail here: while
    /// translated code runs, every store that would retire code bails.
    fn loop_back(&mut self, executed: i32, Loop { head, full }: Loop) {
        let count = self.count;
        debug_assert_eq!(self.cache.dirty, self.cache.loop_dirty);
        debug_assert_eq!(self.cache.loaded, self.cache.loop_loaded);
        dynasm!(self.ops
            ; .arch x64
            ; add r13, executed
            ; lea rax, [r13 + count]
            ; cmp rax, QWORD [r12 + ctx!(icount_limit)]
            ; ja =>full
            ; jmp =>head
        );
    }

    /// The host register holding guest register `r` for reading: its
    /// cache register (loaded on first use), or else `scratch`, loaded.
    fn read(&mut self, r: u8, scratch: u8) -> u8 {
        let r = r & 31;
        if r == 0 {
            dynasm!(self.ops ; .arch x64 ; xor Rd(scratch), Rd(scratch));
            return scratch;
        }
        let disp = i32::from(r) * 8;
        match self.cache.host[usize::from(r)] {
            Some(host) => {
                if self.cache.loaded & (1 << r) == 0 {
                    dynasm!(self.ops ; .arch x64 ; mov Rq(host), QWORD [rbx + disp]);
                    self.cache.loaded |= 1 << r;
                }
                host
            }
            None => {
                dynasm!(self.ops ; .arch x64 ; mov Rq(scratch), QWORD [rbx + disp]);
                scratch
            }
        }
    }

    fn load_x(&mut self, host: u8, r: u8) {
        let from = self.read(r, host);
        if from != host {
            dynasm!(self.ops ; .arch x64 ; mov Rq(host), Rq(from));
        }
    }

    /// The host register to compute guest register `r`'s new value in:
    /// its cache register, or else `scratch`.
    fn dest(&self, r: u8, scratch: u8) -> u8 {
        match r & 31 {
            0 => scratch,
            r => self.cache.host[usize::from(r)].unwrap_or(scratch),
        }
    }

    /// Set guest register `r` to the value in host register `value`.
    fn store_x(&mut self, r: u8, value: u8) {
        let r = r & 31;
        if r == 0 {
            return;
        }
        match self.cache.host[usize::from(r)] {
            Some(host) => {
                if host != value {
                    dynasm!(self.ops ; .arch x64 ; mov Rq(host), Rq(value));
                }
                self.cache.loaded |= 1 << r;
                self.cache.dirty |= 1 << r;
            }
            None => {
                let disp = i32::from(r) * 8;
                dynasm!(self.ops ; .arch x64 ; mov QWORD [rbx + disp], Rq(value));
            }
        }
    }

    /// Emit one instruction; returns true if it ended the block.
    fn insn(&mut self, index: i32, rel: i64, d: &Decoded) -> bool {
        let imm = d.imm;
        let len = i64::from(d.len);
        let (rd, rs1, rs2) = (d.rd, d.rs1, d.rs2);
        // A jump back to the block's start goes round the loop in place.
        let back = self.looping.filter(|_| jump_target(d, rel) == Some(0));
        match d.op {
            Op::Lui => {
                let dst = self.dest(rd, RAX);
                dynasm!(self.ops ; .arch x64 ; mov Rq(dst), imm);
                self.store_x(rd, dst);
            }
            Op::Auipc => {
                let dst = self.dest(rd, RAX);
                let rel32 = rel as i32;
                dynasm!(self.ops
                    ; .arch x64
                    ; lea Rq(dst), [rbp + rel32]
                    ; add Rq(dst), imm
                );
                self.store_x(rd, dst);
            }
            Op::Jal => {
                let link = (rel + len) as i32;
                let dst = self.dest(rd, RAX);
                dynasm!(self.ops ; .arch x64 ; lea Rq(dst), [rbp + link]);
                self.store_x(rd, dst);
                match back {
                    Some(looping) => self.loop_back(index + 1, looping),
                    None => {
                        self.write_back(self.cache.dirty);
                        self.static_exit(index + 1, rel + i64::from(imm));
                    }
                }
                return true;
            }
            Op::Jalr => {
                let link = (rel + len) as i32;
                let executed = index + 1;
                let base = self.read(rs1, RAX);
                dynasm!(self.ops
                    ; .arch x64
                    ; lea rax, [Rq(base) + imm]
                    ; and rax, -2
                );
                // rd's host register is never rax: the target stays there.
                let dst = self.dest(rd, RCX);
                dynasm!(self.ops ; .arch x64 ; lea Rq(dst), [rbp + link]);
                self.store_x(rd, dst);
                self.write_back(self.cache.dirty);
                dynasm!(self.ops ; .arch x64 ; add r13, executed);
                jump_cache::lookup(&mut self.ops, self.exit);
                return true;
            }
            Op::Beq | Op::Bne | Op::Blt | Op::Bge | Op::Bltu | Op::Bgeu => {
                let b = (rs2 & 31 != 0).then(|| self.read(rs2, RCX));
                let a = self.read(rs1, RAX);
                match b {
                    Some(b) => dynasm!(self.ops ; .arch x64 ; cmp Rq(a), Rq(b)),
                    None => dynasm!(self.ops ; .arch x64 ; test Rq(a), Rq(a)),
                }
                match back {
                    Some(looping) => {
                        let stay = self.ops.new_dynamic_label();
                        match d.op {
                            Op::Beq => dynasm!(self.ops ; .arch x64 ; jne =>stay),
                            Op::Bne => dynasm!(self.ops ; .arch x64 ; je =>stay),
                            Op::Blt => dynasm!(self.ops ; .arch x64 ; jge =>stay),
                            Op::Bge => dynasm!(self.ops ; .arch x64 ; jl =>stay),
                            Op::Bltu => dynasm!(self.ops ; .arch x64 ; jae =>stay),
                            _ => dynasm!(self.ops ; .arch x64 ; jb =>stay),
                        }
                        self.loop_back(index + 1, looping);
                        dynasm!(self.ops ; .arch x64 ; =>stay);
                    }
                    None => {
                        let taken = self.ops.new_dynamic_label();
                        self.cold.push(Cold {
                            label: taken,
                            kind: ColdKind::Exit {
                                executed: index + 1,
                                rel: rel + i64::from(imm),
                            },
                            dirty: self.cache.dirty,
                        });
                        match d.op {
                            Op::Beq => dynasm!(self.ops ; .arch x64 ; je =>taken),
                            Op::Bne => dynasm!(self.ops ; .arch x64 ; jne =>taken),
                            Op::Blt => dynasm!(self.ops ; .arch x64 ; jl =>taken),
                            Op::Bge => dynasm!(self.ops ; .arch x64 ; jge =>taken),
                            Op::Bltu => dynasm!(self.ops ; .arch x64 ; jb =>taken),
                            _ => dynasm!(self.ops ; .arch x64 ; jae =>taken),
                        }
                    }
                }
            }
            Op::Lb | Op::Lh | Op::Lw | Op::Ld | Op::Lbu | Op::Lhu | Op::Lwu => {
                let size = d.op.access_size() as i32;
                let direct = self.ops.new_dynamic_label();
                let done = self.ops.new_dynamic_label();
                let dirty = self.cache.dirty;
                self.virtual_address(rs1, imm);
                dynasm!(self.ops
                    ; .arch x64
                    ; cmp QWORD [r12 + ctx!(load_key)], DIRECT_KEY as i32
                    ; je =>direct
                );
                self.fast_tlb(index, rel, size, false);
                // Past the last bail: rd may change now.
                let dst = self.dest(rd, RCX);
                self.load(d.op, dst);
                dynasm!(self.ops ; .arch x64 ; jmp =>done ; =>direct);
                // No translation: RAM's bounds are all to check.
                let miss = self.ops.new_dynamic_label();
                self.cold.push(Cold {
                    label: miss,
                    kind: ColdKind::Bail {
                        index,
                        rel: rel as i32,
                    },
                    dirty,
                });
                let limit = ctx!(ram_limit) + 8 * (size.trailing_zeros() as i32);
                dynasm!(self.ops
                    ; .arch x64
                    ; sub rax, QWORD [r12 + ctx!(ram_base)]
                    ; cmp rax, QWORD [r12 + limit]
                    ; ja =>miss
                );
                self.load(d.op, dst);
                dynasm!(self.ops ; .arch x64 ; =>done);
                self.store_x(rd, dst);
            }
            Op::Sb | Op::Sh | Op::Sw | Op::Sd => {
                // A hit in the store TLB is a store to a dirty page without
                // cached code (see `JitContext::fast_store`): the store is
                // all there is to do.
                let size = d.op.access_size() as i32;
                self.virtual_address(rs1, imm);
                self.fast_tlb(index, rel, size, true);
                let value = self.read(rs2, RCX);
                match size {
                    1 => dynasm!(self.ops ; .arch x64 ; mov BYTE [r15 + rax], Rb(value)),
                    2 => dynasm!(self.ops ; .arch x64 ; mov WORD [r15 + rax], Rw(value)),
                    4 => dynasm!(self.ops ; .arch x64 ; mov DWORD [r15 + rax], Rd(value)),
                    _ => dynasm!(self.ops ; .arch x64 ; mov QWORD [r15 + rax], Rq(value)),
                }
            }
            op if is_op_imm(op) => {
                if rd & 31 == 0 {
                    return false;
                }
                self.op_imm(d.op, rd, rs1, imm);
            }
            op if ends_in_the_interpreter(op) => {
                // The interpreter executes these; the block ends here.
                self.write_back(self.cache.dirty);
                self.bail_now(index, rel as i32);
                return true;
            }
            Op::Fence => {}
            _ => {
                if rd & 31 == 0 {
                    return false;
                }
                self.op_reg(d.op, rd, rs1, rs2);
            }
        }
        false
    }

    /// The register-immediate operations (`rd` is not x0).
    fn op_imm(&mut self, op: Op, rd: u8, rs1: u8, imm: i32) {
        let a = self.read(rs1, RAX);
        let dst = self.dest(rd, RAX);
        let sh = imm as i8;
        match op {
            Op::Addi => {
                if dst == a {
                    if imm != 0 {
                        dynasm!(self.ops ; .arch x64 ; add Rq(dst), imm);
                    }
                } else {
                    dynasm!(self.ops ; .arch x64 ; lea Rq(dst), [Rq(a) + imm]);
                }
                self.store_x(rd, dst);
            }
            Op::Slti | Op::Sltiu => {
                dynasm!(self.ops ; .arch x64 ; xor edx, edx ; cmp Rq(a), imm);
                if op == Op::Slti {
                    dynasm!(self.ops ; .arch x64 ; setl dl);
                } else {
                    dynasm!(self.ops ; .arch x64 ; setb dl);
                }
                self.store_x(rd, RDX);
            }
            Op::Xori | Op::Ori | Op::Andi | Op::Slli | Op::Srli | Op::Srai => {
                if dst != a {
                    dynasm!(self.ops ; .arch x64 ; mov Rq(dst), Rq(a));
                }
                match op {
                    Op::Xori => dynasm!(self.ops ; .arch x64 ; xor Rq(dst), imm),
                    Op::Ori => dynasm!(self.ops ; .arch x64 ; or Rq(dst), imm),
                    Op::Andi => dynasm!(self.ops ; .arch x64 ; and Rq(dst), imm),
                    Op::Slli => dynasm!(self.ops ; .arch x64 ; shl Rq(dst), sh),
                    Op::Srli => dynasm!(self.ops ; .arch x64 ; shr Rq(dst), sh),
                    _ => dynasm!(self.ops ; .arch x64 ; sar Rq(dst), sh),
                }
                self.store_x(rd, dst);
            }
            _ => {
                // The word forms: computed in eax, sign-extended into place.
                if op == Op::Addiw && imm == 0 {
                    dynasm!(self.ops ; .arch x64 ; movsxd Rq(dst), Rd(a));
                } else {
                    if a != RAX {
                        dynasm!(self.ops ; .arch x64 ; mov eax, Rd(a));
                    }
                    match op {
                        Op::Addiw => dynasm!(self.ops ; .arch x64 ; add eax, imm),
                        Op::Slliw => dynasm!(self.ops ; .arch x64 ; shl eax, sh),
                        Op::Srliw => dynasm!(self.ops ; .arch x64 ; shr eax, sh),
                        _ => dynasm!(self.ops ; .arch x64 ; sar eax, sh),
                    }
                    dynasm!(self.ops ; .arch x64 ; movsxd Rq(dst), eax);
                }
                self.store_x(rd, dst);
            }
        }
    }

    /// The register-register operations (`rd` is not x0).
    fn op_reg(&mut self, op: Op, rd: u8, rs1: u8, rs2: u8) {
        match op {
            Op::Add | Op::Sub | Op::Xor | Op::Or | Op::And | Op::Mul => {
                let mut b = self.read(rs2, RCX);
                let mut a = self.read(rs1, RAX);
                let mut dst = self.dest(rd, RAX);
                // `dst` is written first: it must not be the second
                // operand, unless it is the first as well.
                if dst == b && dst != a {
                    if op == Op::Sub {
                        dst = RAX;
                    } else {
                        std::mem::swap(&mut a, &mut b);
                    }
                }
                if dst != a {
                    dynasm!(self.ops ; .arch x64 ; mov Rq(dst), Rq(a));
                }
                match op {
                    Op::Add => dynasm!(self.ops ; .arch x64 ; add Rq(dst), Rq(b)),
                    Op::Sub => dynasm!(self.ops ; .arch x64 ; sub Rq(dst), Rq(b)),
                    Op::Xor => dynasm!(self.ops ; .arch x64 ; xor Rq(dst), Rq(b)),
                    Op::Or => dynasm!(self.ops ; .arch x64 ; or Rq(dst), Rq(b)),
                    Op::And => dynasm!(self.ops ; .arch x64 ; and Rq(dst), Rq(b)),
                    _ => dynasm!(self.ops ; .arch x64 ; imul Rq(dst), Rq(b)),
                }
                self.store_x(rd, dst);
            }
            Op::Sll | Op::Srl | Op::Sra => {
                self.load_x(RCX, rs2);
                let a = self.read(rs1, RAX);
                let dst = self.dest(rd, RAX);
                if dst != a {
                    dynasm!(self.ops ; .arch x64 ; mov Rq(dst), Rq(a));
                }
                match op {
                    Op::Sll => dynasm!(self.ops ; .arch x64 ; shl Rq(dst), cl),
                    Op::Srl => dynasm!(self.ops ; .arch x64 ; shr Rq(dst), cl),
                    _ => dynasm!(self.ops ; .arch x64 ; sar Rq(dst), cl),
                }
                self.store_x(rd, dst);
            }
            Op::Slt | Op::Sltu => {
                let b = self.read(rs2, RCX);
                let a = self.read(rs1, RAX);
                dynasm!(self.ops ; .arch x64 ; xor edx, edx ; cmp Rq(a), Rq(b));
                if op == Op::Slt {
                    dynasm!(self.ops ; .arch x64 ; setl dl);
                } else {
                    dynasm!(self.ops ; .arch x64 ; setb dl);
                }
                self.store_x(rd, RDX);
            }
            Op::Mulh | Op::Mulhu | Op::Mulhsu => {
                let b = self.read(rs2, RCX);
                let a = self.read(rs1, RAX);
                if op == Op::Mulhsu {
                    // mulhsu = mulhu - (x1 < 0 ? x2 : 0); the correction
                    // waits on the stack while `mul` takes rax and rdx.
                    dynasm!(self.ops
                        ; .arch x64
                        ; mov rdx, Rq(a)
                        ; sar rdx, 63
                        ; and rdx, Rq(b)
                        ; push rdx
                    );
                }
                if a != RAX {
                    dynasm!(self.ops ; .arch x64 ; mov rax, Rq(a));
                }
                match op {
                    Op::Mulh => dynasm!(self.ops ; .arch x64 ; imul Rq(b)),
                    Op::Mulhu => dynasm!(self.ops ; .arch x64 ; mul Rq(b)),
                    _ => dynasm!(self.ops
                        ; .arch x64
                        ; mul Rq(b)
                        ; pop rax
                        ; sub rdx, rax
                    ),
                }
                self.store_x(rd, RDX);
            }
            Op::Addw | Op::Subw | Op::Sllw | Op::Srlw | Op::Sraw | Op::Mulw => {
                // Computed in eax, sign-extended into place.
                let shift = matches!(op, Op::Sllw | Op::Srlw | Op::Sraw);
                let b = if shift {
                    self.load_x(RCX, rs2);
                    RCX
                } else {
                    self.read(rs2, RCX)
                };
                let a = self.read(rs1, RAX);
                if a != RAX {
                    dynasm!(self.ops ; .arch x64 ; mov eax, Rd(a));
                }
                match op {
                    Op::Addw => dynasm!(self.ops ; .arch x64 ; add eax, Rd(b)),
                    Op::Subw => dynasm!(self.ops ; .arch x64 ; sub eax, Rd(b)),
                    Op::Sllw => dynasm!(self.ops ; .arch x64 ; shl eax, cl),
                    Op::Srlw => dynasm!(self.ops ; .arch x64 ; shr eax, cl),
                    Op::Sraw => dynasm!(self.ops ; .arch x64 ; sar eax, cl),
                    _ => dynasm!(self.ops ; .arch x64 ; imul eax, Rd(b)),
                }
                let dst = self.dest(rd, RAX);
                dynasm!(self.ops ; .arch x64 ; movsxd Rq(dst), eax);
                self.store_x(rd, dst);
            }
            other => unreachable!("{other:?} is not a register-register operation"),
        }
    }

    /// The load `op` from RAM offset rax into host register `dst`.
    fn load(&mut self, op: Op, dst: u8) {
        match op {
            Op::Lb => dynasm!(self.ops ; .arch x64 ; movsx Rq(dst), BYTE [r15 + rax]),
            Op::Lbu => dynasm!(self.ops ; .arch x64 ; movzx Rd(dst), BYTE [r15 + rax]),
            Op::Lh => dynasm!(self.ops ; .arch x64 ; movsx Rq(dst), WORD [r15 + rax]),
            Op::Lhu => dynasm!(self.ops ; .arch x64 ; movzx Rd(dst), WORD [r15 + rax]),
            Op::Lw => dynasm!(self.ops ; .arch x64 ; movsxd Rq(dst), DWORD [r15 + rax]),
            Op::Lwu => dynasm!(self.ops ; .arch x64 ; mov Rd(dst), DWORD [r15 + rax]),
            _ => dynasm!(self.ops ; .arch x64 ; mov Rq(dst), QWORD [r15 + rax]),
        }
    }

    /// Load `x[rs1] + imm` into rax.
    fn virtual_address(&mut self, rs1: u8, imm: i32) {
        let base = self.read(rs1, RAX);
        if imm != 0 {
            dynasm!(self.ops ; .arch x64 ; lea rax, [Rq(base) + imm]);
        } else if base != RAX {
            dynasm!(self.ops ; .arch x64 ; mov rax, Rq(base));
        }
    }

    /// Turn the virtual address in rax of the access of `size` bytes by
    /// instruction `index` (at `rel`) into the RAM offset it touches,
    /// through the translator's load or store TLB, or bail.
    fn fast_tlb(&mut self, index: i32, rel: i64, size: i32, store: bool) {
        let miss = self.ops.new_dynamic_label();
        self.cold.push(Cold {
            label: miss,
            kind: ColdKind::Miss {
                index,
                rel: rel as i32,
                store,
            },
            dirty: self.cache.dirty,
        });
        let (table, key) = if store {
            (ctx!(fast_store), ctx!(store_key))
        } else {
            (ctx!(fast_load), ctx!(load_key))
        };
        // Entry (vaddr >> 12) % 256, 16 bytes each. Its tag must be the
        // page of the access's last byte (so that of its first byte too:
        // an access crossing a page misses) with the context's key.
        dynasm!(self.ops
            ; .arch x64
            ; mov ecx, eax
            ; shr ecx, 8
            ; and ecx, 0xff0
            ; lea rdx, [rax + (size - 1)]
            ; and rdx, -4096
            ; or rdx, QWORD [r12 + key]
            ; cmp rdx, QWORD [r12 + rcx + table]
            ; jne =>miss
            ; add rax, QWORD [r12 + rcx + (table + 8)]
        );
    }
}

/// The register numbers set in `mask`, lowest first.
fn bits(mask: u32) -> impl Iterator<Item = u8> {
    (0..32u8).filter(move |r| mask & (1 << r) != 0)
}
