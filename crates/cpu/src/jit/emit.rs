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

use super::{ChunkStamp, DIRECT_KEY, JitContext, Stubs, bail_operand, ctx, ctx8, jump_cache};
use crate::decode::{Decoded, Op};

const PAGE_BYTES: u64 = 4096;

// The TLB index is masked as `(vaddr >> 8) & 0xff0`: 256 entries of 16
// bytes.
const _: () = assert!(super::FAST_ENTRIES == 256 && size_of::<super::FastEntry>() == 16);

const RAX: u8 = 0;
const RCX: u8 = 1;
const RDX: u8 = 2;
const RBP: u8 = 5;

/// Host registers that may hold guest registers: the caller-saved ones
/// that emitted code neither uses as temporaries (rax, rcx, rdx) nor
/// clobbers implicitly (`mul`, shifts by `cl`), and r14, which the entry
/// stub saves and nothing else uses.
const CACHE_HOSTS: [u8; 7] = [6, 7, 8, 9, 10, 11, 14];

/// A use inside the loop of a block that jumps back to its own start
/// counts this many times a use after it, which runs once per exit: a
/// loop rarely runs fewer times.
const LOOP_WEIGHT: u32 = 64;

/// What a block's host code bytes are for, as counted by
/// [`Emitter::part`] (see `Jit::code_stats`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    /// The block's entry checks, and the loads before a loop's head.
    Top,
    /// Loads and stores on their fast path (address, TLB, access).
    MemFast,
    /// The out-of-line bails of loads and stores (misses, bounds).
    MemCold,
    /// Jumps and the block's last exit, with their write-backs.
    Exit,
    /// Taken branches' out-of-line exits, with their write-backs.
    ColdExit,
    /// Integer and multiply instructions, `lui`, `auipc`.
    Alu,
    /// Conditional branches' compares and jumps (and loops' back-edges).
    Branch,
    /// The shared exits: icount limit, retired code, a loop's limit.
    Trailer,
    /// Bails for instructions the interpreter executes.
    Bail,
}

/// The number of [`Part`]s.
pub(crate) const PARTS: usize = 9;

/// A static exit waiting to be emitted out of line.
struct Cold {
    label: DynamicLabel,
    kind: ColdKind,
    /// The cached guest registers to write back first: those dirty where
    /// the exit leaves.
    dirty: u32,
}

enum ColdKind {
    /// Bail at the load or store `index` at block-relative offset `rel`,
    /// whose virtual address (in rax) the translator's TLB did not hold
    /// (or, for a load without translation, is not in RAM): noted for the
    /// run loop first.
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
    stubs: Stubs,
    links: &'a mut [usize],
    links_used: &'a mut usize,
    page_offset: u64,
    count: i32,
    cold: Vec<Cold>,
    cache: Cache,
    looping: Option<Loop>,
    /// What the bytes emitted since `part_at` are for.
    part: Part,
    part_at: usize,
    /// Bytes emitted so far, by [`Part`].
    pub(super) bytes: [u64; PARTS],
}

impl<'a> Emitter<'a> {
    /// An emitter for code that will live at address `at` and use the
    /// shared code at `stubs`, handing out link slots
    /// from `links[*links_used..]`; the block has `count` instructions, the
    /// first at page offset `page_offset`.
    pub(super) fn new(
        at: usize,
        stubs: Stubs,
        links: &'a mut [usize],
        links_used: &'a mut usize,
        page_offset: u64,
        count: i32,
    ) -> Self {
        Emitter {
            ops: VecAssembler::new(at),
            stubs,
            links,
            links_used,
            page_offset,
            count,
            cold: Vec::new(),
            cache: Cache::plan(&[]),
            looping: None,
            part: Part::Top,
            part_at: 0,
            bytes: [0; PARTS],
        }
    }

    /// Count the bytes emitted since the last call as `self.part`'s, and
    /// those emitted from here on as `part`'s.
    fn part(&mut self, part: Part) {
        let now = self.ops.offset().0;
        self.bytes[self.part as usize] += (now - self.part_at) as u64;
        self.part = part;
        self.part_at = now;
    }

    pub(super) fn block(&mut self, insns: &[Decoded], chunk: ChunkStamp) {
        let count = block_count(self.count);
        let Stubs { no_room, stale, .. } = self.stubs;
        let generation_at = (chunk.index * 4) as i32;
        let generation = chunk.generation as i32;
        self.cache = Cache::plan(insns);
        dynasm!(self.ops
            ; .arch x64
            ; mov rax, QWORD [BYTE r12 + ctx8!(chunk_generation)]
            ; cmp DWORD [rax + generation_at], generation
            // Retired code: the run loop translates the block anew and
            // points the link that led here at the new translation.
            ; jne extern stale
            ; lea rax, [BYTE r13 + count]
            ; cmp rax, QWORD [BYTE r12 + ctx8!(icount_limit)]
            ; ja extern no_room
        );
        if self.cache.looping {
            // Every pass of the loop starts in the same state: the cached
            // registers it uses loaded, those it writes dirty.
            let loaded = self.cache.loop_loaded;
            for r in bits(loaded) {
                if let Some(host) = self.cache.host[usize::from(r)] {
                    let disp = x_disp(r);
                    dynasm!(self.ops ; .arch x64 ; mov Rq(host), QWORD [BYTE rbx + disp]);
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
            self.part(Part::Exit);
            self.write_back(self.cache.dirty);
            self.static_exit(self.count, rel);
        }
        self.part(Part::Trailer);
        if let Some(Loop { full, .. }) = self.looping {
            // A pass would run past the icount limit: leave at the block's
            // start (rbp), as the top of the block would.
            dynasm!(self.ops ; .arch x64 ; =>full);
            self.write_back(self.cache.loop_dirty);
            dynasm!(self.ops ; .arch x64 ; jmp extern no_room);
        }
        for cold in std::mem::take(&mut self.cold) {
            self.part(match cold.kind {
                ColdKind::Exit { .. } => Part::ColdExit,
                _ => Part::MemCold,
            });
            dynasm!(self.ops ; .arch x64 ; =>cold.label);
            self.write_back(cold.dirty);
            match cold.kind {
                ColdKind::Miss { index, rel, store } => {
                    let stub = if store {
                        self.stubs.miss_store
                    } else {
                        self.stubs.miss_load
                    };
                    let operand = bail_operand(index, rel);
                    dynasm!(self.ops
                        ; .arch x64
                        ; mov edx, operand
                        ; jmp extern stub
                    );
                }
                ColdKind::Exit { executed, rel } => self.static_exit(executed, rel),
            }
        }
        self.part(Part::Trailer);
    }

    /// Bail at instruction `index` (at `rel`), the cached registers
    /// written back already.
    fn bail_now(&mut self, index: i32, rel: i32) {
        let operand = bail_operand(index, rel);
        let bail = self.stubs.bail;
        dynasm!(self.ops
            ; .arch x64
            ; mov edx, operand
            ; jmp extern bail
        );
    }

    /// Store the cached guest registers in `dirty` to memory: the next
    /// block, the run loop and the interpreter find them there.
    fn write_back(&mut self, dirty: u32) {
        for r in bits(dirty) {
            if let Some(host) = self.cache.host[r as usize] {
                let disp = x_disp(r);
                dynasm!(self.ops ; .arch x64 ; mov QWORD [BYTE rbx + disp], Rq(host));
            }
        }
    }

    /// Leave the block for block-relative target `rel` after `executed`
    /// instructions: chained through a link slot when the target is in the
    /// same page, through the jump cache otherwise. Dirty registers are
    /// written back already.
    fn static_exit(&mut self, executed: i32, rel: i64) {
        let target = self.page_offset as i64 + rel;
        let rel32 = rel as i32;
        if (0..PAGE_BYTES as i64).contains(&target) && *self.links_used < self.links.len() {
            // Slots are handed out unlinked; `Jit::set_link` links them.
            let slot = &mut self.links[*self.links_used];
            *slot = self.stubs.exit_link;
            let slot = slot as *mut usize as i64;
            *self.links_used += 1;
            let executed = block_count(executed);
            dynasm!(self.ops ; .arch x64 ; add r13, BYTE executed);
            match i8::try_from(rel32) {
                Ok(0) => {}
                Ok(rel8) => dynasm!(self.ops ; .arch x64 ; add rbp, BYTE rel8),
                Err(_) => dynasm!(self.ops ; .arch x64 ; add rbp, rel32),
            }
            dynasm!(self.ops
                ; .arch x64
                ; mov rax, QWORD slot
                ; mov QWORD [BYTE r12 + ctx8!(link)], rax
                ; jmp QWORD [rax]
            );
        } else {
            // `rel` fits in 32 bits: an immediate is at most 2^20 and the
            // block is within a page.
            let executed = block_count(executed);
            dynasm!(self.ops ; .arch x64 ; add r13, BYTE executed);
            self.lea(RAX, RBP, rel32);
            jump_cache::lookup(&mut self.ops, self.stubs.lookup);
        }
    }

    /// Go round the block's loop after `executed` instructions, as the
    /// chained exit to the block's own start would, but with the registers
    /// still cached: the icount check of the block's top, then the head.
    /// The top's other check, for retired code, cannot fail here: while
    /// translated code runs, every store that would retire code bails.
    fn loop_back(&mut self, executed: i32, Loop { head, full }: Loop) {
        let count = block_count(self.count);
        let executed = block_count(executed);
        debug_assert_eq!(self.cache.dirty, self.cache.loop_dirty);
        debug_assert_eq!(self.cache.loaded, self.cache.loop_loaded);
        dynasm!(self.ops
            ; .arch x64
            ; add r13, BYTE executed
            ; lea rax, [BYTE r13 + count]
            ; cmp rax, QWORD [BYTE r12 + ctx8!(icount_limit)]
            ; ja =>full
            ; jmp =>head
        );
    }

    /// `lea dst, [base + disp]`, with an 8-bit displacement where it fits.
    /// Encoded here: dynasm gives a dynamic base register a SIB byte it
    /// needs only for rsp and r12, which never are one.
    fn lea(&mut self, dst: u8, base: u8, disp: i32) {
        debug_assert!(dst < 16 && base < 16 && base & 7 != 4);
        let rex = 0x48 | ((dst >> 3) << 2) | (base >> 3);
        let reg = (dst & 7) << 3 | (base & 7);
        match i8::try_from(disp) {
            Ok(disp8) => self.ops.extend([rex, 0x8d, 0x40 | reg, disp8 as u8]),
            Err(_) => {
                self.ops.extend([rex, 0x8d, 0x80 | reg]);
                self.ops.extend(disp.to_le_bytes());
            }
        }
    }

    /// `xor r32, r32`: host register `r` = 0, without a REX prefix where
    /// none is needed (dynasm gives a dynamic register one).
    fn zero(&mut self, r: u8) {
        debug_assert!(r < 16);
        if r >= 8 {
            self.ops.push(0x45);
        }
        self.ops.extend([0x31, 0xc0 | (r & 7) << 3 | (r & 7)]);
    }

    /// Guest register `rd` = the sign extension of `imm`.
    fn constant(&mut self, rd: u8, imm: i32) {
        let dst = self.dest(rd, RAX);
        if imm == 0 {
            self.zero(dst);
        } else if imm > 0 {
            // Writing the low half zeroes the high one.
            dynasm!(self.ops ; .arch x64 ; mov Rd(dst), imm);
        } else {
            dynasm!(self.ops ; .arch x64 ; mov Rq(dst), imm);
        }
        self.store_x(rd, dst);
    }

    /// Guest register `rd` (not x0) = guest register `rs`: the register
    /// operations that come to a copy when an operand is x0.
    fn copy_x(&mut self, rd: u8, rs: u8) {
        let dst = self.dest(rd, RAX);
        if rs & 31 == 0 {
            self.zero(dst);
        } else {
            // Loaded straight into `dst` if `rs` is not cached: nothing
            // can leave the block before `rd` is set.
            let from = self.read(rs, dst);
            if from != dst {
                dynasm!(self.ops ; .arch x64 ; mov Rq(dst), Rq(from));
            }
        }
        self.store_x(rd, dst);
    }

    /// The host register holding guest register `r` for reading: its
    /// cache register (loaded on first use), or else `scratch`, loaded.
    fn read(&mut self, r: u8, scratch: u8) -> u8 {
        let r = r & 31;
        if r == 0 {
            self.zero(scratch);
            return scratch;
        }
        let disp = x_disp(r);
        match self.cache.host[usize::from(r)] {
            Some(host) => {
                if self.cache.loaded & (1 << r) == 0 {
                    dynasm!(self.ops ; .arch x64 ; mov Rq(host), QWORD [BYTE rbx + disp]);
                    self.cache.loaded |= 1 << r;
                }
                host
            }
            None => {
                dynasm!(self.ops ; .arch x64 ; mov Rq(scratch), QWORD [BYTE rbx + disp]);
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
                let disp = x_disp(r);
                dynasm!(self.ops ; .arch x64 ; mov QWORD [BYTE rbx + disp], Rq(value));
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
        self.part(match d.op {
            Op::Jal | Op::Jalr => Part::Exit,
            Op::Beq | Op::Bne | Op::Blt | Op::Bge | Op::Bltu | Op::Bgeu => Part::Branch,
            Op::Lb | Op::Lh | Op::Lw | Op::Ld | Op::Lbu | Op::Lhu | Op::Lwu => Part::MemFast,
            Op::Sb | Op::Sh | Op::Sw | Op::Sd => Part::MemFast,
            op if ends_in_the_interpreter(op) => Part::Bail,
            _ => Part::Alu,
        });
        match d.op {
            Op::Lui => self.constant(rd, imm),
            Op::Auipc => {
                let dst = self.dest(rd, RAX);
                // imm is a multiple of 4096 below 2^31 and rel is within
                // a page: their sum fits.
                match imm.checked_add(rel as i32) {
                    Some(offset) => self.lea(dst, RBP, offset),
                    None => {
                        let rel32 = rel as i32;
                        dynasm!(self.ops
                            ; .arch x64
                            ; lea Rq(dst), [rbp + rel32]
                            ; add Rq(dst), imm
                        );
                    }
                }
                self.store_x(rd, dst);
            }
            Op::Jal => {
                let link = (rel + len) as i32;
                let dst = self.dest(rd, RAX);
                self.lea(dst, RBP, link);
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
                let executed = block_count(index + 1);
                let base = self.read(rs1, RAX);
                self.lea(RAX, base, imm);
                dynasm!(self.ops ; .arch x64 ; and rax, BYTE -2);
                // rd's host register is never rax: the target stays there.
                let dst = self.dest(rd, RCX);
                self.lea(dst, RBP, link);
                self.store_x(rd, dst);
                self.write_back(self.cache.dirty);
                dynasm!(self.ops ; .arch x64 ; add r13, BYTE executed);
                jump_cache::lookup(&mut self.ops, self.stubs.lookup);
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
                self.virtual_address(rs1, imm);
                self.fast_tlb(index, rel, size, false);
                // Past the last bail: rd may change now.
                let dst = self.dest(rd, RCX);
                self.load(d.op, dst);
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
        if rs1 & 31 == 0 && matches!(op, Op::Addi | Op::Ori | Op::Xori | Op::Addiw) {
            // `li`: 0 + imm, 0 | imm, 0 ^ imm, all imm (12 bits, so the
            // word form's sign extension changes nothing).
            self.constant(rd, imm);
            return;
        }
        let a = self.read(rs1, RAX);
        let dst = self.dest(rd, RAX);
        let sh = imm as i8;
        match op {
            Op::Addi => {
                if dst == a {
                    match i8::try_from(imm) {
                        Ok(0) => {}
                        Ok(imm8) => dynasm!(self.ops ; .arch x64 ; add Rq(dst), BYTE imm8),
                        Err(_) => dynasm!(self.ops ; .arch x64 ; add Rq(dst), imm),
                    }
                } else {
                    self.lea(dst, a, imm);
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
                let imm8 = i8::try_from(imm).ok();
                match (op, imm8) {
                    (Op::Xori, Some(imm8)) => {
                        dynasm!(self.ops ; .arch x64 ; xor Rq(dst), BYTE imm8)
                    }
                    (Op::Xori, None) => dynasm!(self.ops ; .arch x64 ; xor Rq(dst), imm),
                    (Op::Ori, Some(imm8)) => dynasm!(self.ops ; .arch x64 ; or Rq(dst), BYTE imm8),
                    (Op::Ori, None) => dynasm!(self.ops ; .arch x64 ; or Rq(dst), imm),
                    (Op::Andi, Some(imm8)) => {
                        dynasm!(self.ops ; .arch x64 ; and Rq(dst), BYTE imm8)
                    }
                    (Op::Andi, None) => dynasm!(self.ops ; .arch x64 ; and Rq(dst), imm),
                    (Op::Slli, _) => dynasm!(self.ops ; .arch x64 ; shl Rq(dst), sh),
                    (Op::Srli, _) => dynasm!(self.ops ; .arch x64 ; shr Rq(dst), sh),
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
                        Op::Addiw => match i8::try_from(imm) {
                            Ok(imm8) => dynasm!(self.ops ; .arch x64 ; add eax, BYTE imm8),
                            Err(_) => dynasm!(self.ops ; .arch x64 ; add eax, imm),
                        },
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
        // x + 0, x - 0, x | 0, x ^ 0 and shifts by x0 (by 0) are copies.
        let copy = match op {
            Op::Add | Op::Or | Op::Xor if rs1 & 31 == 0 => Some(rs2),
            Op::Add | Op::Or | Op::Xor | Op::Sub | Op::Sll | Op::Srl | Op::Sra if rs2 & 31 == 0 => {
                Some(rs1)
            }
            _ => None,
        };
        if let Some(rs) = copy {
            self.copy_x(rd, rs);
            return;
        }
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
            self.lea(RAX, base, imm);
        } else if base != RAX {
            dynasm!(self.ops ; .arch x64 ; mov rax, Rq(base));
        }
    }

    /// Turn the virtual address in rax of the access of `size` bytes by
    /// instruction `index` (at `rel`) into the RAM offset it touches,
    /// through the translator's load or store TLB (or, for loads without
    /// translation, RAM's bounds), or bail.
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
        self.tlb_lookup(size.trailing_zeros(), store, miss);
    }

    /// Take the virtual address in rax of a load or store of `1 << log2`
    /// bytes to its RAM offset, or go to `miss` with rax unchanged.
    /// Inline: a shared stub called for it made the CPU bench 16% slower
    /// and Linux's `dd | md5sum` 30% slower, for 8 bytes less per access.
    fn tlb_lookup(&mut self, log2: u32, store: bool, miss: DynamicLabel) {
        let last = (1i8 << log2) - 1;
        let (table, key) = if store {
            (ctx!(fast_store), ctx8!(store_key))
        } else {
            (ctx!(fast_load), ctx8!(load_key))
        };
        let done = self.ops.new_dynamic_label();
        let translated = self.ops.new_dynamic_label();
        if !store {
            // No translation: RAM's bounds are all to check.
            let limit = ctx8!(ram_limit) + 8 * log2 as i8;
            dynasm!(self.ops
                ; .arch x64
                ; cmp QWORD [BYTE r12 + key], DIRECT_KEY as i32
                ; jne BYTE =>translated
                // rax stays the virtual address for the miss.
                ; mov rdx, rax
                ; sub rdx, QWORD [BYTE r12 + ctx8!(ram_base)]
                ; cmp rdx, QWORD [BYTE r12 + limit]
                ; ja =>miss
                ; mov rax, rdx
                ; jmp BYTE =>done
                ; =>translated
            );
        }
        // Entry (vaddr >> 12) % 256, 16 bytes each. Its tag must be the
        // page of the access's last byte (so that of its first byte too:
        // an access crossing a page misses) with the context's key.
        dynasm!(self.ops
            ; .arch x64
            ; mov ecx, eax
            ; shr ecx, 8
            ; and ecx, 0xff0
            ; lea rdx, [BYTE rax + last]
            ; and rdx, -4096
            ; or rdx, QWORD [BYTE r12 + key]
            ; cmp rdx, QWORD [r12 + rcx + table]
            ; jne =>miss
            ; add rax, QWORD [r12 + rcx + (table + 8)]
            ; =>done
        );
    }
}

/// How far rbx points past the guest `x` array: every register's slot is
/// then within an 8-bit displacement of it.
pub(super) const X_BIAS: i32 = 128;

/// The displacement of guest register `r`'s slot from rbx.
fn x_disp(r: u8) -> i8 {
    (i32::from(r & 31) * 8 - X_BIAS) as i8
}

/// A count of a block's instructions, at most 64: an 8-bit immediate.
fn block_count(n: i32) -> i8 {
    debug_assert!((0..=i32::from(i8::MAX)).contains(&n));
    n as i8
}

/// The register numbers set in `mask`, lowest first.
fn bits(mask: u32) -> impl Iterator<Item = u8> {
    (0..32u8).filter(move |r| mask & (1 << r) != 0)
}
