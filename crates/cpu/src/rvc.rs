//! RV64C: each compressed instruction expands to the 32-bit instruction it
//! abbreviates, so the interpreter has one implementation of each operation.

use std::sync::OnceLock;

/// Every parcel's expansion, computed once: the interpreter looks
/// compressed instructions up instead of re-assembling them each time they
/// execute. 0 marks an illegal parcel (no valid expansion is 0).
pub fn expansion_table() -> &'static [u32] {
    static TABLE: OnceLock<Vec<u32>> = OnceLock::new();
    TABLE.get_or_init(|| (0..=u16::MAX).map(|c| expand(c).unwrap_or(0)).collect())
}

/// The 32-bit equivalent of a 16-bit parcel, or `None` if it is reserved or
/// illegal (including the all-zero parcel).
pub fn expand(c: u16) -> Option<u32> {
    let c = c as u32;
    let bits = |hi: u32, lo: u32| (c >> lo) & ((1 << (hi - lo + 1)) - 1);
    let rd_full = bits(11, 7);
    let rs2_full = bits(6, 2);
    let rd_p = bits(4, 2) + 8; // rd' / rs2'
    let rs1_p = bits(9, 7) + 8; // rs1' / rd'
    let op = bits(1, 0);
    let funct3 = bits(15, 13);

    let i_type = |imm: i64, rs1: u32, f3: u32, rd: u32, opc: u32| -> u32 {
        ((imm as u32 & 0xfff) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | opc
    };
    let s_type = |imm: i64, rs2: u32, rs1: u32, f3: u32, opc: u32| -> u32 {
        let imm = imm as u32;
        (((imm >> 5) & 0x7f) << 25)
            | (rs2 << 20)
            | (rs1 << 15)
            | (f3 << 12)
            | ((imm & 0x1f) << 7)
            | opc
    };
    let r_type = |f7: u32, rs2: u32, rs1: u32, f3: u32, rd: u32, opc: u32| -> u32 {
        (f7 << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | opc
    };
    let b_type = |imm: i64, rs2: u32, rs1: u32, f3: u32| -> u32 {
        let imm = imm as u32;
        (((imm >> 12) & 1) << 31)
            | (((imm >> 5) & 0x3f) << 25)
            | (rs2 << 20)
            | (rs1 << 15)
            | (f3 << 12)
            | (((imm >> 1) & 0xf) << 8)
            | (((imm >> 11) & 1) << 7)
            | 0x63
    };
    let j_type = |imm: i64, rd: u32| -> u32 {
        let imm = imm as u32;
        (((imm >> 20) & 1) << 31)
            | (((imm >> 1) & 0x3ff) << 21)
            | (((imm >> 11) & 1) << 20)
            | (((imm >> 12) & 0xff) << 12)
            | (rd << 7)
            | 0x6f
    };
    let sext = |value: u32, width: u32| -> i64 { ((value as i64) << (64 - width)) >> (64 - width) };

    // Immediates, assembled per format.
    let ci_imm6 = sext((bits(12, 12) << 5) | bits(6, 2), 6);
    let cl_ld_off = (bits(12, 10) << 3) | (bits(6, 5) << 6); // ld/sd/fld/fsd
    let cl_lw_off = (bits(12, 10) << 3) | (bits(6, 6) << 2) | (bits(5, 5) << 6); // lw/sw
    let cj_imm = sext(
        (bits(12, 12) << 11)
            | (bits(11, 11) << 4)
            | (bits(10, 9) << 8)
            | (bits(8, 8) << 10)
            | (bits(7, 7) << 6)
            | (bits(6, 6) << 7)
            | (bits(5, 3) << 1)
            | (bits(2, 2) << 5),
        12,
    );
    let cb_imm = sext(
        (bits(12, 12) << 8)
            | (bits(11, 10) << 3)
            | (bits(6, 5) << 6)
            | (bits(4, 3) << 1)
            | (bits(2, 2) << 5),
        9,
    );

    Some(match (op, funct3) {
        // Quadrant 0
        (0, 0) => {
            // c.addi4spn
            let nzuimm =
                (bits(12, 11) << 4) | (bits(10, 7) << 6) | (bits(6, 6) << 2) | (bits(5, 5) << 3);
            if nzuimm == 0 {
                return None;
            }
            i_type(nzuimm as i64, 2, 0, rd_p, 0x13)
        }
        (0, 1) => i_type(cl_ld_off as i64, rs1_p, 3, rd_p, 0x07), // c.fld
        (0, 2) => i_type(cl_lw_off as i64, rs1_p, 2, rd_p, 0x03), // c.lw
        (0, 3) => i_type(cl_ld_off as i64, rs1_p, 3, rd_p, 0x03), // c.ld
        (0, 5) => s_type(cl_ld_off as i64, rd_p, rs1_p, 3, 0x27), // c.fsd
        (0, 6) => s_type(cl_lw_off as i64, rd_p, rs1_p, 2, 0x23), // c.sw
        (0, 7) => s_type(cl_ld_off as i64, rd_p, rs1_p, 3, 0x23), // c.sd
        (0, _) => return None,
        // Quadrant 1
        (1, 0) => i_type(ci_imm6, rd_full, 0, rd_full, 0x13), // c.addi / c.nop
        (1, 1) => {
            // c.addiw (rd != 0)
            if rd_full == 0 {
                return None;
            }
            i_type(ci_imm6, rd_full, 0, rd_full, 0x1b)
        }
        (1, 2) => i_type(ci_imm6, 0, 0, rd_full, 0x13), // c.li
        (1, 3) => {
            if rd_full == 2 {
                // c.addi16sp
                let imm = sext(
                    (bits(12, 12) << 9)
                        | (bits(6, 6) << 4)
                        | (bits(5, 5) << 6)
                        | (bits(4, 3) << 7)
                        | (bits(2, 2) << 5),
                    10,
                );
                if imm == 0 {
                    return None;
                }
                i_type(imm, 2, 0, 2, 0x13)
            } else {
                // c.lui
                if ci_imm6 == 0 {
                    return None;
                }
                ((ci_imm6 as u32) << 12) | (rd_full << 7) | 0x37
            }
        }
        (1, 4) => {
            let shamt = (bits(12, 12) << 5) | bits(6, 2);
            match bits(11, 10) {
                0 => r_type(0, 0, rs1_p, 5, rs1_p, 0x13) | (shamt << 20), // c.srli
                1 => r_type(0x20, 0, rs1_p, 5, rs1_p, 0x13) | (shamt << 20), // c.srai
                2 => i_type(ci_imm6, rs1_p, 7, rs1_p, 0x13),              // c.andi
                _ => {
                    let rs2 = rd_p;
                    match (bits(12, 12), bits(6, 5)) {
                        (0, 0) => r_type(0x20, rs2, rs1_p, 0, rs1_p, 0x33), // c.sub
                        (0, 1) => r_type(0, rs2, rs1_p, 4, rs1_p, 0x33),    // c.xor
                        (0, 2) => r_type(0, rs2, rs1_p, 6, rs1_p, 0x33),    // c.or
                        (0, 3) => r_type(0, rs2, rs1_p, 7, rs1_p, 0x33),    // c.and
                        (1, 0) => r_type(0x20, rs2, rs1_p, 0, rs1_p, 0x3b), // c.subw
                        (1, 1) => r_type(0, rs2, rs1_p, 0, rs1_p, 0x3b),    // c.addw
                        _ => return None,
                    }
                }
            }
        }
        (1, 5) => j_type(cj_imm, 0),           // c.j
        (1, 6) => b_type(cb_imm, 0, rs1_p, 0), // c.beqz
        (1, 7) => b_type(cb_imm, 0, rs1_p, 1), // c.bnez
        // Quadrant 2
        (2, 0) => {
            let shamt = (bits(12, 12) << 5) | bits(6, 2);
            r_type(0, 0, rd_full, 1, rd_full, 0x13) | (shamt << 20) // c.slli
        }
        (2, 1) => {
            let off = (bits(12, 12) << 5) | (bits(6, 5) << 3) | (bits(4, 2) << 6);
            i_type(off as i64, 2, 3, rd_full, 0x07) // c.fldsp
        }
        (2, 2) => {
            if rd_full == 0 {
                return None;
            }
            let off = (bits(12, 12) << 5) | (bits(6, 4) << 2) | (bits(3, 2) << 6);
            i_type(off as i64, 2, 2, rd_full, 0x03) // c.lwsp
        }
        (2, 3) => {
            if rd_full == 0 {
                return None;
            }
            let off = (bits(12, 12) << 5) | (bits(6, 5) << 3) | (bits(4, 2) << 6);
            i_type(off as i64, 2, 3, rd_full, 0x03) // c.ldsp
        }
        (2, 4) => match (bits(12, 12), rd_full, rs2_full) {
            (0, 0, 0) => return None,
            (0, rs1, 0) => i_type(0, rs1, 0, 0, 0x67), // c.jr
            (0, rd, rs2) => r_type(0, rs2, 0, 0, rd, 0x33), // c.mv
            (1, 0, 0) => 0x0010_0073,                  // c.ebreak
            (1, rs1, 0) => i_type(0, rs1, 0, 1, 0x67), // c.jalr
            (_, rd, rs2) => r_type(0, rs2, rd, 0, rd, 0x33), // c.add
        },
        (2, 5) => {
            let off = (bits(12, 10) << 3) | (bits(9, 7) << 6);
            s_type(off as i64, rs2_full, 2, 3, 0x27) // c.fsdsp
        }
        (2, 6) => {
            let off = (bits(12, 9) << 2) | (bits(8, 7) << 6);
            s_type(off as i64, rs2_full, 2, 2, 0x23) // c.swsp
        }
        (2, 7) => {
            let off = (bits(12, 10) << 3) | (bits(9, 7) << 6);
            s_type(off as i64, rs2_full, 2, 3, 0x23) // c.sdsp
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn known_expansions() {
        assert_eq!(expand(0x0000), None);
        assert_eq!(expand(0x0001), Some(0x0000_0013)); // c.nop = addi x0,x0,0
        assert_eq!(expand(0x9002), Some(0x0010_0073)); // c.ebreak
        assert_eq!(expand(0x8082), Some(0x0000_8067)); // c.jr ra = ret
        assert_eq!(expand(0x4505), Some(0x0010_0513)); // c.li a0,1
        assert_eq!(expand(0x1141), Some(0xff01_0113)); // c.addi sp,sp,-16
        assert_eq!(expand(0xe406), Some(0x0011_3423)); // c.sdsp ra,8(sp)
        assert_eq!(expand(0x60a2), Some(0x0081_3083)); // c.ldsp ra,8(sp)
        assert_eq!(expand(0x852e), Some(0x00b0_0533)); // c.mv a0,a1
    }

    #[test]
    fn every_parcel_expands_or_is_rejected_without_panicking() {
        for c in 0..=u16::MAX {
            if c & 3 == 3 {
                continue;
            }
            if let Some(i) = expand(c) {
                assert_eq!(i & 3, 3, "{c:#06x} expanded to a compressed encoding");
            }
        }
    }
}
