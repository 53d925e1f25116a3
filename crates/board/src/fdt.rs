//! The flattened device tree describing the board, laid out like QEMU
//! `virt`'s (same node names, compatibles, phandle scheme and interrupt
//! wiring) for the devices ftvm has.

use vm_fdt::{FdtWriter, FdtWriterResult};

use crate::devices::{Clint, Plic, Rtc, SifiveTest, Uart, VirtioSlots};

const PHANDLE_CPU: u32 = 1;
const PHANDLE_CPU_INTC: u32 = 2;
const PHANDLE_PLIC: u32 = 3;
const PHANDLE_TEST: u32 = 4;

/// The ISA string: exactly what the hart implements.
pub const RISCV_ISA: &str = "rv64imafdc_zicsr_zifencei_sstc";

pub struct FdtParams<'a> {
    pub ram_base: u64,
    pub ram_size: u64,
    pub bootargs: &'a str,
    pub initrd: Option<(u64, u64)>,
    pub timebase_frequency: u32,
}

fn reg(base: u64, size: u64) -> [u64; 2] {
    [base, size]
}

pub fn build(p: &FdtParams) -> FdtWriterResult<Vec<u8>> {
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_string("compatible", "riscv-virtio")?;
    fdt.property_string("model", "riscv-virtio,qemu")?;

    let chosen = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", p.bootargs)?;
    fdt.property_string("stdout-path", "/soc/serial@10000000")?;
    if let Some((start, end)) = p.initrd {
        fdt.property_u64("linux,initrd-start", start)?;
        fdt.property_u64("linux,initrd-end", end)?;
    }
    fdt.end_node(chosen)?;

    for (name, value) in [("poweroff", 0x5555u32), ("reboot", 0x7777)] {
        let node = fdt.begin_node(name)?;
        fdt.property_u32("value", value)?;
        fdt.property_u32("offset", 0)?;
        fdt.property_u32("regmap", PHANDLE_TEST)?;
        fdt.property_string("compatible", &format!("syscon-{name}"))?;
        fdt.end_node(node)?;
    }

    let memory = fdt.begin_node(&format!("memory@{:x}", p.ram_base))?;
    fdt.property_string("device_type", "memory")?;
    fdt.property_array_u64("reg", &reg(p.ram_base, p.ram_size))?;
    fdt.end_node(memory)?;

    let cpus = fdt.begin_node("cpus")?;
    fdt.property_u32("#address-cells", 1)?;
    fdt.property_u32("#size-cells", 0)?;
    fdt.property_u32("timebase-frequency", p.timebase_frequency)?;
    let cpu = fdt.begin_node("cpu@0")?;
    fdt.property_phandle(PHANDLE_CPU)?;
    fdt.property_string("device_type", "cpu")?;
    fdt.property_u32("reg", 0)?;
    fdt.property_string("status", "okay")?;
    fdt.property_string("compatible", "riscv")?;
    fdt.property_string("riscv,isa", RISCV_ISA)?;
    fdt.property_string("mmu-type", "riscv,sv39")?;
    let intc = fdt.begin_node("interrupt-controller")?;
    fdt.property_u32("#interrupt-cells", 1)?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_string("compatible", "riscv,cpu-intc")?;
    fdt.property_phandle(PHANDLE_CPU_INTC)?;
    fdt.end_node(intc)?;
    fdt.end_node(cpu)?;
    let map = fdt.begin_node("cpu-map")?;
    let cluster = fdt.begin_node("cluster0")?;
    let core = fdt.begin_node("core0")?;
    fdt.property_u32("cpu", PHANDLE_CPU)?;
    fdt.end_node(core)?;
    fdt.end_node(cluster)?;
    fdt.end_node(map)?;
    fdt.end_node(cpus)?;

    let soc = fdt.begin_node("soc")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_string("compatible", "simple-bus")?;
    fdt.property_null("ranges")?;

    let serial = fdt.begin_node(&format!("serial@{:x}", Uart::BASE))?;
    fdt.property_u32("interrupts", Uart::IRQ as u32)?;
    fdt.property_u32("interrupt-parent", PHANDLE_PLIC)?;
    fdt.property_u32("clock-frequency", 0x38_4000)?;
    fdt.property_array_u64("reg", &reg(Uart::BASE, Uart::SIZE))?;
    fdt.property_string("compatible", "ns16550a")?;
    fdt.end_node(serial)?;

    let test = fdt.begin_node(&format!("test@{:x}", SifiveTest::BASE))?;
    fdt.property_phandle(PHANDLE_TEST)?;
    fdt.property_array_u64("reg", &reg(SifiveTest::BASE, SifiveTest::SIZE))?;
    fdt.property_string_list(
        "compatible",
        vec![
            "sifive,test1".into(),
            "sifive,test0".into(),
            "syscon".into(),
        ],
    )?;
    fdt.end_node(test)?;

    let rtc = fdt.begin_node(&format!("rtc@{:x}", Rtc::BASE))?;
    fdt.property_u32("interrupts", Rtc::IRQ as u32)?;
    fdt.property_u32("interrupt-parent", PHANDLE_PLIC)?;
    fdt.property_array_u64("reg", &reg(Rtc::BASE, Rtc::SIZE))?;
    fdt.property_string("compatible", "google,goldfish-rtc")?;
    fdt.end_node(rtc)?;

    for slot in (0..VirtioSlots::SLOTS).rev() {
        let base = VirtioSlots::BASE + slot * VirtioSlots::SLOT_SIZE;
        let node = fdt.begin_node(&format!("virtio_mmio@{base:x}"))?;
        fdt.property_u32("interrupts", VirtioSlots::FIRST_IRQ + slot as u32)?;
        fdt.property_u32("interrupt-parent", PHANDLE_PLIC)?;
        fdt.property_array_u64("reg", &reg(base, VirtioSlots::SLOT_SIZE))?;
        fdt.property_string("compatible", "virtio,mmio")?;
        fdt.end_node(node)?;
    }

    let plic = fdt.begin_node(&format!("plic@{:x}", Plic::BASE))?;
    fdt.property_phandle(PHANDLE_PLIC)?;
    fdt.property_u32("riscv,ndev", Plic::SOURCES as u32)?;
    fdt.property_array_u64("reg", &reg(Plic::BASE, Plic::SIZE))?;
    // Context 0: machine external (11); context 1: supervisor external (9).
    fdt.property_array_u32(
        "interrupts-extended",
        &[PHANDLE_CPU_INTC, 11, PHANDLE_CPU_INTC, 9],
    )?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_string_list(
        "compatible",
        vec!["sifive,plic-1.0.0".into(), "riscv,plic0".into()],
    )?;
    fdt.property_u32("#address-cells", 0)?;
    fdt.property_u32("#interrupt-cells", 1)?;
    fdt.end_node(plic)?;

    let clint = fdt.begin_node(&format!("clint@{:x}", Clint::BASE))?;
    // Machine software (3) and machine timer (7).
    fdt.property_array_u32(
        "interrupts-extended",
        &[PHANDLE_CPU_INTC, 3, PHANDLE_CPU_INTC, 7],
    )?;
    fdt.property_array_u64("reg", &reg(Clint::BASE, Clint::SIZE))?;
    fdt.property_string_list(
        "compatible",
        vec!["sifive,clint0".into(), "riscv,clint0".into()],
    )?;
    fdt.end_node(clint)?;

    fdt.end_node(soc)?;
    fdt.end_node(root)?;
    fdt.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn blob_has_header_and_key_nodes() {
        let blob = build(&FdtParams {
            ram_base: 0x8000_0000,
            ram_size: 128 << 20,
            bootargs: "console=ttyS0",
            initrd: Some((0x8400_0000, 0x8410_0000)),
            timebase_frequency: 10_000_000,
        })
        .expect("fdt");
        assert_eq!(&blob[..4], &[0xd0, 0x0d, 0xfe, 0xed], "FDT magic");
        let total = u32::from_be_bytes([blob[4], blob[5], blob[6], blob[7]]) as usize;
        assert_eq!(total, blob.len());
        for needle in [
            &b"serial@10000000"[..],
            b"plic@c000000",
            b"clint@2000000",
            b"memory@80000000",
            b"virtio_mmio@10008000",
            b"rv64imafdc_zicsr_zifencei",
            b"console=ttyS0",
            b"linux,initrd-start",
            b"riscv,sv39",
        ] {
            assert!(
                contains(&blob, needle),
                "missing {}",
                String::from_utf8_lossy(needle)
            );
        }
    }
}
