//! Loading firmware, kernel and initrd into RAM the way QEMU `virt` does.

use std::path::Path;

use ftvm_cpu::Ram;
use goblin::elf::{Elf, program_header::PT_LOAD};

use crate::BoardError;

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const EM_RISCV: u16 = 243;
const MIB: u64 = 1 << 20;

/// A loaded image: where it starts executing and the memory it took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    pub entry: u64,
    /// Lowest and one-past-highest physical address written.
    pub start: u64,
    pub end: u64,
    /// Address of the `tohost` symbol, if the ELF defines one.
    pub tohost: Option<u64>,
}

/// Load an ELF at its physical addresses, or a raw image at `raw_base`.
pub fn load_image(
    ram: &mut Ram,
    path: &Path,
    bytes: &[u8],
    raw_base: u64,
) -> Result<Loaded, BoardError> {
    if bytes.starts_with(ELF_MAGIC) {
        load_elf(ram, path, bytes)
    } else {
        if bytes.is_empty() {
            return Err(BoardError::BadImage {
                path: path.to_path_buf(),
                reason: "the file is empty".into(),
            });
        }
        check_linux_header(
            path,
            bytes,
            (ram.base() + ram.size()).saturating_sub(raw_base),
        )?;
        place(ram, path, raw_base, bytes, "raw image")?;
        Ok(Loaded {
            entry: raw_base,
            start: raw_base,
            end: raw_base + bytes.len() as u64,
            tohost: None,
        })
    }
}

/// Whether `bytes` is a Linux kernel: a raw `Image` with the RISC-V boot
/// header (magic `RSC\x05` at 0x38; Debian's EFI-stub kernels have it
/// too), or an ELF `vmlinux` that defines `linux_banner`. Such a kernel
/// starts in S-mode under an SBI firmware, never in M-mode on its own.
pub fn is_linux_kernel(bytes: &[u8]) -> bool {
    if bytes.get(0x38..0x3c) == Some(b"RSC\x05") {
        return true;
    }
    if !bytes.starts_with(ELF_MAGIC) {
        return false;
    }
    Elf::parse(bytes).is_ok_and(|elf| {
        elf.syms
            .iter()
            .any(|sym| elf.strtab.get_at(sym.st_name) == Some("linux_banner"))
    })
}

/// A raw image with the RISC-V Linux `Image` header (magic `RSC\x05` at
/// 0x38) must be consistent with it: the memory it asks for (`image_size`,
/// which includes its bss) covers the file and fits in RAM.
fn check_linux_header(path: &Path, bytes: &[u8], room: u64) -> Result<(), BoardError> {
    if bytes.get(0x38..0x3c) != Some(b"RSC\x05") {
        return Ok(());
    }
    let field = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let image_size = field(0x10);
    if image_size < bytes.len() as u64 {
        return Err(BoardError::BadImage {
            path: path.to_path_buf(),
            reason: format!(
                "corrupt Linux image header: image_size {image_size} is smaller than the file ({} bytes)",
                bytes.len()
            ),
        });
    }
    if image_size > room {
        return Err(BoardError::TooLarge {
            path: path.to_path_buf(),
            what: format!("its Linux image header asks for {image_size} bytes"),
        });
    }
    Ok(())
}

fn bad_elf(path: &Path, reason: impl Into<String>) -> BoardError {
    BoardError::BadElf {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn load_elf(ram: &mut Ram, path: &Path, bytes: &[u8]) -> Result<Loaded, BoardError> {
    let elf = Elf::parse(bytes).map_err(|e| bad_elf(path, e.to_string()))?;
    if !elf.is_64 || elf.header.e_machine != EM_RISCV {
        return Err(BoardError::NotRiscv64 {
            path: path.to_path_buf(),
            machine: elf.header.e_machine,
        });
    }
    let mut start = u64::MAX;
    let mut end = 0;
    for ph in elf.program_headers.iter().filter(|ph| ph.p_type == PT_LOAD) {
        let file_range = ph
            .p_offset
            .checked_add(ph.p_filesz)
            .filter(|&e| e <= bytes.len() as u64 && ph.p_filesz <= ph.p_memsz)
            .ok_or_else(|| bad_elf(path, "a segment lies outside the file"))?;
        let data = &bytes[ph.p_offset as usize..file_range as usize];
        let seg_end = ph
            .p_paddr
            .checked_add(ph.p_memsz)
            .ok_or_else(|| bad_elf(path, "a segment wraps the address space"))?;
        if !ram.contains(ph.p_paddr, ph.p_memsz) {
            return Err(BoardError::TooLarge {
                path: path.to_path_buf(),
                what: format!(
                    "segment {:#x}..{:#x} is outside RAM {:#x}..{:#x}",
                    ph.p_paddr,
                    seg_end,
                    ram.base(),
                    ram.base() + ram.size()
                ),
            });
        }
        place(ram, path, ph.p_paddr, data, "segment")?;
        // Zero the part of the segment beyond the file (.bss).
        let zeros = vec![0u8; (ph.p_memsz - ph.p_filesz) as usize];
        place(ram, path, ph.p_paddr + ph.p_filesz, &zeros, "segment")?;
        start = start.min(ph.p_paddr);
        end = end.max(seg_end);
    }
    if start == u64::MAX {
        return Err(bad_elf(path, "no loadable segment"));
    }
    let tohost = elf
        .syms
        .iter()
        .find(|sym| elf.strtab.get_at(sym.st_name) == Some("tohost"))
        .map(|sym| sym.st_value);
    Ok(Loaded {
        entry: elf.entry,
        start,
        end,
        tohost,
    })
}

fn place(ram: &mut Ram, path: &Path, addr: u64, data: &[u8], what: &str) -> Result<(), BoardError> {
    ram.write(addr, data).map_err(|_| BoardError::TooLarge {
        path: path.to_path_buf(),
        what: format!(
            "{what} of {} bytes at {addr:#x}; RAM is {:#x}..{:#x}",
            data.len(),
            ram.base(),
            ram.base() + ram.size()
        ),
    })
}

/// Where QEMU puts the kernel after firmware: the next 2 MiB boundary
/// (riscv_calc_kernel_start_addr for RV64).
pub fn kernel_start_after(firmware_end: u64) -> u64 {
    firmware_end.div_ceil(2 * MIB) * 2 * MIB
}

/// Where QEMU puts the device tree: the top of RAM (below 3 GiB), less the
/// blob, aligned down to 2 MiB.
pub fn fdt_address(ram: &Ram, fdt_len: u64) -> u64 {
    let top = (ram.base() + ram.size()).min(3072 * MIB);
    (top - fdt_len) & !(2 * MIB - 1)
}

/// Load the initrd where QEMU does: above the kernel by half of RAM (at most
/// 128 MiB). Returns its start and end.
pub fn load_initrd(
    ram: &mut Ram,
    path: &Path,
    bytes: &[u8],
    kernel_entry: u64,
) -> Result<(u64, u64), BoardError> {
    let start = kernel_entry + (ram.size() / 2).min(128 * MIB);
    place(ram, path, start, bytes, "initrd")?;
    Ok((start, start + bytes.len() as u64))
}

/// OpenSBI's `fw_dynamic_info` (version 2), which QEMU hands the firmware in
/// a2 to say where the next stage is and in which mode to enter it.
pub fn fw_dynamic_info(next_addr: u64) -> [u8; 48] {
    const MAGIC: u64 = 0x4942_534f; // "OSBI"
    const VERSION: u64 = 2;
    const NEXT_MODE_S: u64 = 1;
    let fields = [MAGIC, VERSION, next_addr, NEXT_MODE_S, 0, 0];
    let mut out = [0u8; 48];
    for (chunk, field) in out.chunks_exact_mut(8).zip(fields) {
        chunk.copy_from_slice(&field.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ram() -> Ram {
        Ram::new(0x8000_0000, 4 * MIB)
    }

    /// A minimal valid RV64 ELF with one PT_LOAD of `code` at 0x8000_0000.
    fn tiny_elf(code: &[u8]) -> Vec<u8> {
        let mut elf = vec![0u8; 64 + 56];
        elf[..4].copy_from_slice(ELF_MAGIC);
        elf[4] = 2; // 64-bit
        elf[5] = 1; // little-endian
        elf[6] = 1;
        elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        elf[18..20].copy_from_slice(&EM_RISCV.to_le_bytes());
        elf[20..24].copy_from_slice(&1u32.to_le_bytes());
        elf[24..32].copy_from_slice(&0x8000_0000u64.to_le_bytes()); // entry
        elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        elf[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
        elf[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
        elf[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
        let ph = &mut elf[64..120];
        ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        ph[4..8].copy_from_slice(&5u32.to_le_bytes());
        ph[8..16].copy_from_slice(&120u64.to_le_bytes()); // offset
        ph[16..24].copy_from_slice(&0x8000_0000u64.to_le_bytes());
        ph[24..32].copy_from_slice(&0x8000_0000u64.to_le_bytes());
        ph[32..40].copy_from_slice(&(code.len() as u64).to_le_bytes());
        ph[40..48].copy_from_slice(&(code.len() as u64 + 16).to_le_bytes());
        elf.extend_from_slice(code);
        elf
    }

    #[test]
    fn loads_an_elf_segment_and_its_bss() {
        let mut ram = ram();
        ram.write(0x8000_0004, &[0xff; 16]).unwrap();
        let elf = tiny_elf(&[1, 2, 3, 4]);
        let loaded = load_image(&mut ram, Path::new("t"), &elf, 0).unwrap();
        assert_eq!(loaded.entry, 0x8000_0000);
        assert_eq!((loaded.start, loaded.end), (0x8000_0000, 0x8000_0014));
        let mut buf = [0u8; 8];
        ram.read(0x8000_0000, &mut buf).unwrap();
        assert_eq!(buf, [1, 2, 3, 4, 0, 0, 0, 0]);
    }

    #[test]
    fn linux_images_are_told_from_other_programs() {
        let mut image = vec![0u8; 0x40];
        assert!(!is_linux_kernel(&image));
        image[0x38..0x3c].copy_from_slice(b"RSC\x05");
        assert!(is_linux_kernel(&image));
        assert!(!is_linux_kernel(&tiny_elf(&[0x13, 0, 0, 0])));
        assert!(!is_linux_kernel(b"\x7fELF garbage"));
        assert!(!is_linux_kernel(&[]));
    }

    #[test]
    fn rejects_other_machines_and_truncation() {
        let mut elf = tiny_elf(&[0; 4]);
        elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        let err = load_image(&mut ram(), Path::new("x"), &elf, 0).unwrap_err();
        assert!(
            matches!(err, BoardError::NotRiscv64 { machine: 62, .. }),
            "{err}"
        );
        let elf = tiny_elf(&[0; 4]);
        let err = load_image(&mut ram(), Path::new("x"), &elf[..90], 0).unwrap_err();
        assert!(matches!(err, BoardError::BadElf { .. }), "{err}");
    }

    #[test]
    fn raw_image_too_large() {
        let big = vec![0u8; 5 * MIB as usize];
        let err = load_image(&mut ram(), Path::new("big"), &big, 0x8000_0000).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("big: does not fit in guest RAM"),
            "{err}"
        );
    }

    #[test]
    fn qemu_layout() {
        assert_eq!(kernel_start_after(0x8001_2345), 0x8020_0000);
        assert_eq!(kernel_start_after(0x8020_0000), 0x8020_0000);
        let ram = Ram::new(0x8000_0000, 128 * MIB);
        assert_eq!(fdt_address(&ram, 0x2000), 0x87e0_0000);
    }

    proptest! {
        #[test]
        fn mutated_elves_never_panic(flips in prop::collection::vec((0usize..200, any::<u8>()), 1..12),
                                     cut in 0usize..200) {
            let mut elf = tiny_elf(&[0x13, 0, 0, 0, 0x6f, 0, 0, 0]);
            for (at, byte) in flips {
                let n = elf.len();
                elf[at % n] = byte;
            }
            elf.truncate(cut.max(4));
            let _ = load_image(&mut ram(), Path::new("fuzz"), &elf, 0x8000_0000);
        }
    }
}
