//! The block translator: decoded blocks become x86-64 code, so the hot
//! integer paths run without an interpreter's dispatch.
//!
//! The translator is deliberately small, and the interpreter stays the
//! reference. Translated code handles the RV64IM integer instructions,
//! branches and jumps, and loads and stores that hit RAM through the
//! current translation (direct, or a hit in the hart's TLB). Anything else
//! -- division, system, atomic and floating-point instructions, MMIO, TLB
//! misses, page-crossing accesses, stores to a chunk holding cached code,
//! stores while an LR reservation or a store watch is set -- *bails out*:
//! the code stores the pc and icount of that instruction and returns, and
//! the interpreter executes it. Because the bail happens before the
//! instruction has any effect, every instruction executes with exactly
//! the interpreter's semantics, and the machine's state after any number of
//! instructions is the same whichever engine ran them (the tests compare
//! the two engines' state digests).
//!
//! Blocks are chained: an exit to a target in the same guest page (whose
//! physical page is therefore the same) goes through a link slot that,
//! once the target is translated, jumps straight into it. Every block
//! starts by checking the icount limit, so chaining never runs past it.
//! Translated code never changes interrupt state, so pending interrupts are
//! only looked for back in the run loop, as with the interpreter.
//!
//! All translated code is dropped at once when a guest store retires cached
//! code or the host writes RAM, which keeps links trivially coherent.
//!
//! Register use inside translated code: r12 = context, rbx = guest `x`
//! array, r15 = host address of RAM, r13 = icount at the current block's
//! start, rbp = guest pc of the current block's start.

// dynasm's dynamic-register operands (`Rq(n)`) expand to `n.into()`.
#![allow(clippy::useless_conversion)]

use std::mem::offset_of;

use dynasmrt::x64::X64Relocation;
use dynasmrt::{DynasmApi, DynasmLabelApi, VecAssembler, dynasm};
use memmap2::{Mmap, MmapMut};

use crate::decode::{Decoded, Op};

const CODE_BYTES: usize = 32 << 20;
/// Link slots (one per static exit of a block).
const LINK_SLOTS: usize = 1 << 20;
/// Room one block's code may need, at most: translation stops before it.
const MAX_BLOCK_BYTES: usize = 64 << 10;
const PAGE_BYTES: u64 = 4096;

/// Why translated code returned.
pub(crate) const EXIT_DONE: u64 = 0;
/// `pc` is an instruction the interpreter must execute.
pub(crate) const EXIT_BAIL: u64 = 1;
/// A static exit whose link slot (`JitContext::link`) is still unset.
pub(crate) const EXIT_LINK: u64 = 2;

/// What translated code reads and writes besides guest registers and RAM.
/// Filled by the run loop before entering translated code.
#[repr(C)]
pub(crate) struct JitContext {
    pub x: *mut u64,
    pub ram: *mut u8,
    pub ram_base: u64,
    pub ram_size: u64,
    pub pc: u64,
    pub icount: u64,
    pub icount_limit: u64,
    /// `BlockCache`'s bitmap of chunks that hold cached code.
    pub code_chunks: *const u64,
    /// `BlockCache`'s chunk generations.
    pub chunk_generation: *const u32,
    /// The hart's load and store TLBs (`[TlbEntry; 256]` each).
    pub tlb_load: *const u64,
    pub tlb_store: *const u64,
    /// Nonzero: loads (stores) are not translated (M-mode, or bare satp).
    pub load_direct: u64,
    pub store_direct: u64,
    /// The TLB tag bits of the current translation context.
    pub load_key: u64,
    pub store_key: u64,
    /// Nonzero: every store bails (reservation or store watch set).
    pub stores_bail: u64,
    /// The link slot of the last static exit taken.
    pub link: *mut usize,
}

/// A link slot to fill once the block at `pc` is translated.
#[derive(Clone, Copy)]
pub(crate) struct PendingLink {
    pub slot: usize,
    pub pc: u64,
    pub epoch: u64,
}

impl Default for JitContext {
    fn default() -> Self {
        JitContext {
            x: std::ptr::null_mut(),
            ram: std::ptr::null_mut(),
            ram_base: 0,
            ram_size: 0,
            pc: 0,
            icount: 0,
            icount_limit: 0,
            code_chunks: std::ptr::null(),
            chunk_generation: std::ptr::null(),
            tlb_load: std::ptr::null(),
            tlb_store: std::ptr::null(),
            load_direct: 0,
            store_direct: 0,
            load_key: 0,
            store_key: 0,
            stores_bail: 0,
            link: std::ptr::null_mut(),
        }
    }
}

macro_rules! ctx {
    ($field:ident) => {
        offset_of!(JitContext, $field) as i32
    };
}

type Entry = unsafe extern "sysv64" fn(*mut JitContext, *const u8) -> u64;

/// Memory holding the entry/exit stubs and translated blocks, mapped
/// twice: writable at one address, executable at another, never both at
/// once (W^X) and without a system call per translation.
struct Region {
    write_view: MmapMut,
    exec_view: Mmap,
}

impl Region {
    fn new() -> Result<Region, JitError> {
        let file = code_file()?;
        let mut options = memmap2::MmapOptions::new();
        options.len(CODE_BYTES);
        // SAFETY: mapping a file is unsound only if someone else changes
        // or truncates it while mapped. `code_file` created it exclusively
        // (create_new, mode 0600), unlinked it and fixed its size, and no
        // other handle to it escapes this function, so the two views below
        // are its only users, and both live as long as the region.
        let (write_view, exec_view) = unsafe {
            (
                options.map_mut(&file).map_err(JitError::Map)?,
                options.map_exec(&file).map_err(JitError::Map)?,
            )
        };
        Ok(Region {
            write_view,
            exec_view,
        })
    }
}

/// The file behind the code region, `CODE_BYTES` long, already unlinked:
/// a file because the region is mapped twice, writable and executable,
/// and both mappings must share its pages.
///
/// The crate otherwise keeps away from `std::fs`: nothing the machine
/// computes may depend on a host file. This one is host memory for
/// generated code, never an input to the machine: nothing is read from it
/// but what the translator wrote, and it is gone when the process is.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
fn code_file() -> Result<std::fs::File, JitError> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = ["/dev/shm"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!(
        "ftvm-code-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(JitError::Map)?;
    // Unlinked at once: from here on only this process can reach it.
    let _ = std::fs::remove_file(&path);
    file.set_len(CODE_BYTES as u64).map_err(JitError::Map)?;
    Ok(file)
}

pub(crate) struct Jit {
    region: Region,
    base: usize,
    /// Bytes in use; the stubs occupy `[0, stubs_end)`.
    used: usize,
    stubs_end: usize,
    enter: usize,
    exit: usize,
    exit_link: usize,
    links: Box<[usize]>,
    links_used: usize,
    /// Bumped by every flush; block cache entries remember the epoch their
    /// translation belongs to.
    pub epoch: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum JitError {
    #[error("cannot map executable memory for the translator: {0}")]
    Map(std::io::Error),
    #[error("cannot assemble translated code: {0}")]
    Assemble(String),
}

impl Jit {
    pub(crate) fn new() -> Result<Self, JitError> {
        let region = Region::new()?;
        let base = region.exec_view.as_ptr() as usize;
        let mut jit = Jit {
            region,
            base,
            used: 0,
            stubs_end: 0,
            enter: 0,
            exit: 0,
            exit_link: 0,
            links: vec![0; LINK_SLOTS].into_boxed_slice(),
            links_used: 0,
            epoch: 1,
        };
        jit.emit_stubs()?;
        Ok(jit)
    }

    fn emit_stubs(&mut self) -> Result<(), JitError> {
        let mut ops = VecAssembler::<X64Relocation>::new(self.base);
        let enter = ops.offset().0;
        dynasm!(ops
            ; .arch x64
            ; push rbx
            ; push rbp
            ; push r12
            ; push r13
            ; push r14
            ; push r15
            ; mov r12, rdi
            ; mov rbx, QWORD [r12 + ctx!(x)]
            ; mov r15, QWORD [r12 + ctx!(ram)]
            ; mov r13, QWORD [r12 + ctx!(icount)]
            ; mov rbp, QWORD [r12 + ctx!(pc)]
            ; jmp rsi
        );
        let exit = ops.offset().0;
        dynasm!(ops
            ; .arch x64
            ; mov QWORD [r12 + ctx!(icount)], r13
            ; pop r15
            ; pop r14
            ; pop r13
            ; pop r12
            ; pop rbp
            ; pop rbx
            ; ret
        );
        let exit_link = ops.offset().0;
        dynasm!(ops
            ; .arch x64
            ; mov QWORD [r12 + ctx!(pc)], rbp
            ; mov eax, EXIT_LINK as i32
            ; jmp extern self.base + exit
        );
        let code = ops
            .finalize()
            .map_err(|e| JitError::Assemble(e.to_string()))?;
        self.write(0, &code)?;
        self.enter = self.base + enter;
        self.exit = self.base + exit;
        self.exit_link = self.base + exit_link;
        self.used = code.len().next_multiple_of(16);
        self.stubs_end = self.used;
        Ok(())
    }

    /// Drop every translation.
    pub(crate) fn flush(&mut self) {
        self.used = self.stubs_end;
        self.links_used = 0;
        // 64 bits: an epoch never comes round again to revive a
        // translation recorded long ago.
        self.epoch += 1;
    }

    fn write(&mut self, at: usize, code: &[u8]) -> Result<(), JitError> {
        self.region.write_view[at..at + code.len()].copy_from_slice(code);
        // The code is executed through the other view: keep the compiler
        // from sinking these writes past the call into it.
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Translate a block whose first instruction is at page offset
    /// `page_offset`; returns the code's address. A full region is flushed
    /// first (which bumps the epoch); `None` only if the block cannot fit
    /// even then.
    pub(crate) fn translate(
        &mut self,
        insns: &[Decoded],
        page_offset: u64,
        chunk: ChunkStamp,
    ) -> Result<Option<usize>, JitError> {
        let full = |jit: &Jit| {
            jit.used + MAX_BLOCK_BYTES > CODE_BYTES || jit.links_used + insns.len() + 1 > LINK_SLOTS
        };
        if full(self) {
            self.flush();
            if full(self) {
                return Ok(None);
            }
        }
        let at = self.used;
        let mut emitter = Emitter {
            ops: VecAssembler::new(self.base + at),
            exit: self.exit,
            exit_link: self.exit_link,
            links: &mut self.links,
            links_used: &mut self.links_used,
            page_offset,
            count: insns.len() as i32,
            cold: Vec::new(),
        };
        emitter.block(insns, chunk);
        let code = emitter
            .ops
            .finalize()
            .map_err(|e| JitError::Assemble(e.to_string()))?;
        debug_assert!(code.len() <= MAX_BLOCK_BYTES);
        self.write(at, &code)?;
        self.used = (at + code.len()).next_multiple_of(16);
        Ok(Some(self.base + at))
    }

    /// Point the link slot at address `slot` to `code`.
    pub(crate) fn set_link(&mut self, link: PendingLink, code: usize) {
        if link.epoch != self.epoch {
            return;
        }
        let first = self.links.as_ptr() as usize;
        let index = link.slot.wrapping_sub(first) / size_of::<usize>();
        if let Some(slot) = self.links[..self.links_used].get_mut(index) {
            *slot = code;
        }
    }

    /// Run translated code from `code` until it exits; returns the exit
    /// kind.
    pub(crate) fn run(&mut self, ctx: &mut JitContext, code: usize) -> Result<u64, JitError> {
        // SAFETY: `enter` is the entry stub emitted by `emit_stubs`, a
        // sysv64 function of this signature that saves and restores every
        // callee-saved register it uses and returns through the exit stub.
        // `code` is the start of a translation in the region's executable
        // view, written completely before this call. Translated code reads and writes
        // only: `ctx`'s fields; `ctx.x[0..32]` (register numbers are
        // 5-bit); RAM at offsets it checked against `ctx.ram_size`; the
        // TLBs at a masked index below 256; the code-chunk bitmap at a chunk
        // of a RAM offset it checked; and the link slots, whose array is
        // owned by `self` and never reallocated. The run loop builds `ctx`
        // from live `&mut` borrows of the hart that nothing else uses
        // during this call.
        let exit = unsafe {
            let enter: Entry = std::mem::transmute::<usize, Entry>(self.enter);
            enter(ctx, code as *const u8)
        };
        Ok(exit)
    }
}

/// The RAM chunk a block was decoded from and that chunk's generation then:
/// a translation entered through a link after a store retired its chunk
/// leaves at once.
#[derive(Clone, Copy)]
pub(crate) struct ChunkStamp {
    pub index: usize,
    pub generation: u32,
}

/// A static exit waiting to be emitted out of line.
struct Cold {
    label: dynasmrt::DynamicLabel,
    kind: ColdKind,
}

enum ColdKind {
    /// Bail at the instruction `index` at block-relative offset `rel`.
    Bail { index: i32, rel: i32 },
    /// Leave for a target `rel` bytes from the block start, having executed
    /// `executed` instructions of the block.
    Exit { executed: i32, rel: i64 },
}

struct Emitter<'a> {
    ops: VecAssembler<X64Relocation>,
    exit: usize,
    exit_link: usize,
    links: &'a mut [usize],
    links_used: &'a mut usize,
    page_offset: u64,
    count: i32,
    cold: Vec<Cold>,
}

impl Emitter<'_> {
    fn block(&mut self, insns: &[Decoded], chunk: ChunkStamp) {
        let count = self.count;
        let exit = self.exit;
        let no_room = self.ops.new_dynamic_label();
        let stale = self.ops.new_dynamic_label();
        let generation_at = (chunk.index * 4) as i32;
        let generation = chunk.generation as i32;
        dynasm!(self.ops
            ; .arch x64
            ; mov rax, QWORD [r12 + ctx!(chunk_generation)]
            ; cmp DWORD [rax + generation_at], generation
            ; jne =>stale
            ; lea rax, [r13 + count]
            ; cmp rax, QWORD [r12 + ctx!(icount_limit)]
            ; ja =>no_room
        );
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
        for cold in std::mem::take(&mut self.cold) {
            dynasm!(self.ops ; .arch x64 ; =>cold.label);
            match cold.kind {
                ColdKind::Bail { index, rel } => self.bail_now(index, rel),
                ColdKind::Exit { executed, rel } => self.static_exit(executed, rel),
            }
        }
    }

    fn bail_label(&mut self, index: i32, rel: i64) -> dynasmrt::DynamicLabel {
        let label = self.ops.new_dynamic_label();
        self.cold.push(Cold {
            label,
            kind: ColdKind::Bail {
                index,
                rel: rel as i32,
            },
        });
        label
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

    /// Leave the block for block-relative target `rel` after `executed`
    /// instructions: chained through a link slot when the target is in the
    /// same page, to the run loop otherwise.
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
                ; add rbp, rel32
                ; mov QWORD [r12 + ctx!(pc)], rbp
                ; xor eax, eax
                ; jmp extern exit
            );
        }
    }

    fn load_x(&mut self, host: u8, r: u8) {
        let r = r & 31;
        if r == 0 {
            dynasm!(self.ops ; .arch x64 ; xor Rd(host), Rd(host));
        } else {
            let disp = i32::from(r) * 8;
            dynasm!(self.ops ; .arch x64 ; mov Rq(host), QWORD [rbx + disp]);
        }
    }

    fn store_x(&mut self, r: u8, host: u8) {
        let r = r & 31;
        if r != 0 {
            let disp = i32::from(r) * 8;
            dynasm!(self.ops ; .arch x64 ; mov QWORD [rbx + disp], Rq(host));
        }
    }

    /// Emit one instruction; returns true if it ended the block.
    fn insn(&mut self, index: i32, rel: i64, d: &Decoded) -> bool {
        const RAX: u8 = 0;
        const RCX: u8 = 1;
        let imm = d.imm;
        let len = i64::from(d.len);
        let (rd, rs1, rs2) = (d.rd, d.rs1, d.rs2);
        match d.op {
            Op::Lui => {
                dynasm!(self.ops ; .arch x64 ; mov rax, imm);
                self.store_x(rd, RAX);
            }
            Op::Auipc => {
                let rel32 = rel as i32;
                dynasm!(self.ops
                    ; .arch x64
                    ; lea rax, [rbp + rel32]
                    ; add rax, imm
                );
                self.store_x(rd, RAX);
            }
            Op::Jal => {
                let link = (rel + len) as i32;
                dynasm!(self.ops ; .arch x64 ; lea rax, [rbp + link]);
                self.store_x(rd, RAX);
                self.static_exit(index + 1, rel + i64::from(imm));
                return true;
            }
            Op::Jalr => {
                let link = (rel + len) as i32;
                let exit = self.exit;
                let executed = index + 1;
                self.load_x(RAX, rs1);
                dynasm!(self.ops
                    ; .arch x64
                    ; add rax, imm
                    ; and rax, -2
                    ; mov QWORD [r12 + ctx!(pc)], rax
                    ; lea rcx, [rbp + link]
                );
                self.store_x(rd, RCX);
                dynasm!(self.ops
                    ; .arch x64
                    ; add r13, executed
                    ; xor eax, eax
                    ; jmp extern exit
                );
                return true;
            }
            Op::Beq | Op::Bne | Op::Blt | Op::Bge | Op::Bltu | Op::Bgeu => {
                self.load_x(RAX, rs1);
                self.load_x(RCX, rs2);
                let taken = self.ops.new_dynamic_label();
                self.cold.push(Cold {
                    label: taken,
                    kind: ColdKind::Exit {
                        executed: index + 1,
                        rel: rel + i64::from(imm),
                    },
                });
                dynasm!(self.ops ; .arch x64 ; cmp rax, rcx);
                match d.op {
                    Op::Beq => dynasm!(self.ops ; .arch x64 ; je =>taken),
                    Op::Bne => dynasm!(self.ops ; .arch x64 ; jne =>taken),
                    Op::Blt => dynasm!(self.ops ; .arch x64 ; jl =>taken),
                    Op::Bge => dynasm!(self.ops ; .arch x64 ; jge =>taken),
                    Op::Bltu => dynasm!(self.ops ; .arch x64 ; jb =>taken),
                    _ => dynasm!(self.ops ; .arch x64 ; jae =>taken),
                }
            }
            Op::Lb | Op::Lh | Op::Lw | Op::Ld | Op::Lbu | Op::Lhu | Op::Lwu => {
                let size = d.op.access_size() as i32;
                let bail = self.bail_label(index, rel);
                self.address(rs1, imm, size, false, bail);
                match d.op {
                    Op::Lb => dynasm!(self.ops ; .arch x64 ; movsx rcx, BYTE [r15 + rax]),
                    Op::Lbu => dynasm!(self.ops ; .arch x64 ; movzx ecx, BYTE [r15 + rax]),
                    Op::Lh => dynasm!(self.ops ; .arch x64 ; movsx rcx, WORD [r15 + rax]),
                    Op::Lhu => dynasm!(self.ops ; .arch x64 ; movzx ecx, WORD [r15 + rax]),
                    Op::Lw => dynasm!(self.ops ; .arch x64 ; movsxd rcx, DWORD [r15 + rax]),
                    Op::Lwu => dynasm!(self.ops ; .arch x64 ; mov ecx, DWORD [r15 + rax]),
                    _ => dynasm!(self.ops ; .arch x64 ; mov rcx, QWORD [r15 + rax]),
                }
                self.store_x(rd, RCX);
            }
            Op::Sb | Op::Sh | Op::Sw | Op::Sd => {
                let size = d.op.access_size() as i32;
                let bail = self.bail_label(index, rel);
                dynasm!(self.ops
                    ; .arch x64
                    ; cmp QWORD [r12 + ctx!(stores_bail)], 0
                    ; jne =>bail
                );
                self.address(rs1, imm, size, true, bail);
                // A store overlapping cached code (the chunk of its first
                // byte - 2, or of its last byte) bails: the interpreter
                // retires that code.
                dynasm!(self.ops
                    ; .arch x64
                    ; cmp rax, 2
                    ; jb =>bail
                    ; mov rdx, QWORD [r12 + ctx!(code_chunks)]
                    ; lea rcx, [rax - 2]
                    ; shr rcx, crate::block::CHUNK_SHIFT as i8
                    ; bt QWORD [rdx], rcx
                    ; jc =>bail
                    ; lea rcx, [rax + (size - 1)]
                    ; shr rcx, crate::block::CHUNK_SHIFT as i8
                    ; bt QWORD [rdx], rcx
                    ; jc =>bail
                );
                self.load_x(RCX, rs2);
                match size {
                    1 => dynasm!(self.ops ; .arch x64 ; mov BYTE [r15 + rax], cl),
                    2 => dynasm!(self.ops ; .arch x64 ; mov WORD [r15 + rax], cx),
                    4 => dynasm!(self.ops ; .arch x64 ; mov DWORD [r15 + rax], ecx),
                    _ => dynasm!(self.ops ; .arch x64 ; mov QWORD [r15 + rax], rcx),
                }
            }
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
            | Op::Sraiw => {
                if rd & 31 == 0 {
                    return false;
                }
                self.load_x(RAX, rs1);
                let sh = imm as i8;
                match d.op {
                    Op::Addi => dynasm!(self.ops ; .arch x64 ; add rax, imm),
                    Op::Slti => dynasm!(self.ops
                        ; .arch x64
                        ; xor edx, edx
                        ; cmp rax, imm
                        ; setl dl
                        ; mov rax, rdx
                    ),
                    Op::Sltiu => dynasm!(self.ops
                        ; .arch x64
                        ; xor edx, edx
                        ; cmp rax, imm
                        ; setb dl
                        ; mov rax, rdx
                    ),
                    Op::Xori => dynasm!(self.ops ; .arch x64 ; xor rax, imm),
                    Op::Ori => dynasm!(self.ops ; .arch x64 ; or rax, imm),
                    Op::Andi => dynasm!(self.ops ; .arch x64 ; and rax, imm),
                    Op::Slli => dynasm!(self.ops ; .arch x64 ; shl rax, sh),
                    Op::Srli => dynasm!(self.ops ; .arch x64 ; shr rax, sh),
                    Op::Srai => dynasm!(self.ops ; .arch x64 ; sar rax, sh),
                    Op::Addiw => dynasm!(self.ops ; .arch x64 ; add eax, imm ; movsxd rax, eax),
                    Op::Slliw => dynasm!(self.ops ; .arch x64 ; shl eax, sh ; movsxd rax, eax),
                    Op::Srliw => dynasm!(self.ops ; .arch x64 ; shr eax, sh ; movsxd rax, eax),
                    _ => dynasm!(self.ops ; .arch x64 ; sar eax, sh ; movsxd rax, eax),
                }
                self.store_x(rd, RAX);
            }
            Op::Div
            | Op::Divu
            | Op::Rem
            | Op::Remu
            | Op::Divw
            | Op::Divuw
            | Op::Remw
            | Op::Remuw
            | Op::Other => {
                // The interpreter executes these; the block ends here.
                self.bail_now(index, rel as i32);
                return true;
            }
            Op::Fence => {}
            _ => {
                if rd & 31 == 0 {
                    return false;
                }
                self.load_x(RAX, rs1);
                self.load_x(RCX, rs2);
                match d.op {
                    Op::Add => dynasm!(self.ops ; .arch x64 ; add rax, rcx),
                    Op::Sub => dynasm!(self.ops ; .arch x64 ; sub rax, rcx),
                    Op::Sll => dynasm!(self.ops ; .arch x64 ; shl rax, cl),
                    Op::Srl => dynasm!(self.ops ; .arch x64 ; shr rax, cl),
                    Op::Sra => dynasm!(self.ops ; .arch x64 ; sar rax, cl),
                    Op::Slt => dynasm!(self.ops
                        ; .arch x64
                        ; xor edx, edx
                        ; cmp rax, rcx
                        ; setl dl
                        ; mov rax, rdx
                    ),
                    Op::Sltu => dynasm!(self.ops
                        ; .arch x64
                        ; xor edx, edx
                        ; cmp rax, rcx
                        ; setb dl
                        ; mov rax, rdx
                    ),
                    Op::Xor => dynasm!(self.ops ; .arch x64 ; xor rax, rcx),
                    Op::Or => dynasm!(self.ops ; .arch x64 ; or rax, rcx),
                    Op::And => dynasm!(self.ops ; .arch x64 ; and rax, rcx),
                    Op::Mul => dynasm!(self.ops ; .arch x64 ; imul rax, rcx),
                    Op::Mulh => dynasm!(self.ops ; .arch x64 ; imul rcx ; mov rax, rdx),
                    Op::Mulhu => dynasm!(self.ops ; .arch x64 ; mul rcx ; mov rax, rdx),
                    Op::Mulhsu => dynasm!(self.ops
                        ; .arch x64
                        // mulhsu = mulhu - (x1 < 0 ? x2 : 0)
                        ; mov r8, rax
                        ; sar r8, 63
                        ; and r8, rcx
                        ; mul rcx
                        ; sub rdx, r8
                        ; mov rax, rdx
                    ),
                    Op::Addw => dynasm!(self.ops ; .arch x64 ; add eax, ecx ; movsxd rax, eax),
                    Op::Subw => dynasm!(self.ops ; .arch x64 ; sub eax, ecx ; movsxd rax, eax),
                    Op::Sllw => dynasm!(self.ops ; .arch x64 ; shl eax, cl ; movsxd rax, eax),
                    Op::Srlw => dynasm!(self.ops ; .arch x64 ; shr eax, cl ; movsxd rax, eax),
                    Op::Sraw => dynasm!(self.ops ; .arch x64 ; sar eax, cl ; movsxd rax, eax),
                    Op::Mulw => dynasm!(self.ops ; .arch x64 ; imul eax, ecx ; movsxd rax, eax),
                    other => unreachable!("{other:?} is handled above"),
                }
                self.store_x(rd, RAX);
            }
        }
        false
    }

    /// Leave in rax the RAM offset that the access of `size` bytes at
    /// `x[rs1] + imm` touches, or jump to `bail`.
    fn address(&mut self, rs1: u8, imm: i32, size: i32, store: bool, bail: dynasmrt::DynamicLabel) {
        self.load_x(0, rs1);
        if imm != 0 {
            dynasm!(self.ops ; .arch x64 ; add rax, imm);
        }
        let (direct, tlb, key) = if store {
            (ctx!(store_direct), ctx!(tlb_store), ctx!(store_key))
        } else {
            (ctx!(load_direct), ctx!(tlb_load), ctx!(load_key))
        };
        let page_limit = PAGE_BYTES as i32 - size;
        dynasm!(self.ops
            ; .arch x64
            ; cmp QWORD [r12 + direct], 0
            ; jne >physical
            // TLB: entry (vaddr >> 12) % 256, tag = page | key.
            ; mov rcx, rax
            ; shr rcx, 12
            ; and ecx, 255
            ; shl ecx, 4
            ; add rcx, QWORD [r12 + tlb]
            ; mov rdx, rax
            ; and rdx, -4096
            ; or rdx, QWORD [r12 + key]
            ; cmp rdx, QWORD [rcx]
            ; jne =>bail
            // Accesses crossing a page take the interpreter's path.
            ; mov edx, eax
            ; and edx, 4095
            ; cmp edx, page_limit
            ; ja =>bail
            ; or rdx, QWORD [rcx + 8]
            ; mov rax, rdx
            ; physical:
            ; sub rax, QWORD [r12 + ctx!(ram_base)]
            ; mov rdx, QWORD [r12 + ctx!(ram_size)]
            ; sub rdx, size
            ; cmp rax, rdx
            ; ja =>bail
        );
    }
}
