use super::*;
use alloc::vec;
use alloc::vec::Vec;

const LONG: CpuMode = CpuMode {
    cr0: CR0_PE | CR0_PG,
    cr3: 0x1000,
    cr4: CR4_PAE,
    efer: EFER_LMA | (1 << 8),
    cs_attributes: 0xa9b,
    cs_base: 0,
};

fn gprs() -> [u64; 16] {
    let mut g = [0u64; 16];
    for (i, r) in g.iter_mut().enumerate() {
        *r = 0x1111_1111_1111_1111u64.wrapping_mul(i as u64 + 1);
    }
    g
}

fn dec(bytes: &[u8], bitness: u32) -> Result<Decoded, MmioError> {
    decode_bytes(bytes, bitness, &gprs())
}

fn put(mem: &mut [u8], at: u64, value: u64, wide: bool) {
    let n = if wide { 8 } else { 4 };
    mem[at as usize..at as usize + n].copy_from_slice(&value.to_le_bytes()[..n]);
}

#[test]
fn stores() {
    // mov [rax], ecx
    let d = dec(&[0x89, 0x08], 64).unwrap();
    assert_eq!(d.len, 2);
    assert_eq!(
        d.op,
        MmioOp::Store {
            size: 4,
            value: 0x2222_2222
        }
    );
    // mov dword [rax+0xb0], 0
    let d = dec(&[0xc7, 0x80, 0xb0, 0, 0, 0, 0, 0, 0, 0], 64).unwrap();
    assert_eq!((d.op, d.len), (MmioOp::Store { size: 4, value: 0 }, 10));
    // mov [rbx], ah
    let d = dec(&[0x88, 0x23], 64).unwrap();
    assert_eq!(
        d.op,
        MmioOp::Store {
            size: 1,
            value: 0x11
        }
    );
    // mov qword [rdi], -1 (sign-extended immediate)
    let d = dec(&[0x48, 0xc7, 0x07, 0xff, 0xff, 0xff, 0xff], 64).unwrap();
    assert_eq!(
        d.op,
        MmioOp::Store {
            size: 8,
            value: u64::MAX
        }
    );
    // mov word [bx], 0x1234 in 16-bit code
    let d = dec(&[0xc7, 0x07, 0x34, 0x12], 16).unwrap();
    assert_eq!(
        d.op,
        MmioOp::Store {
            size: 2,
            value: 0x1234
        }
    );
}

#[test]
fn loads_and_extension() {
    let g = gprs();
    // mov eax, [rbx]: 32-bit destination clears the upper half.
    let d = dec(&[0x8b, 0x03], 64).unwrap();
    let MmioOp::Load { size, dest, extend } = d.op else {
        panic!("{d:?}")
    };
    assert_eq!((size, dest.number), (4, 0));
    assert_eq!(loaded(dest, g[0], size, 0xfee0_0014, extend), 0xfee0_0014);
    // mov ah, [rbx]
    let d = dec(&[0x8a, 0x23], 64).unwrap();
    let MmioOp::Load { size, dest, extend } = d.op else {
        panic!()
    };
    assert_eq!(
        loaded(dest, g[0], size, 0xab, extend),
        0x1111_1111_1111_ab11
    );
    // movzx eax, byte [rdx]
    let d = dec(&[0x0f, 0xb6, 0x02], 64).unwrap();
    let MmioOp::Load { size, dest, extend } = d.op else {
        panic!()
    };
    assert_eq!(loaded(dest, g[0], size, 0x1ff, extend), 0xff);
    // movsx rax, word [rdx]
    let d = dec(&[0x48, 0x0f, 0xbf, 0x02], 64).unwrap();
    let MmioOp::Load { size, dest, extend } = d.op else {
        panic!()
    };
    assert_eq!(
        loaded(dest, g[0], size, 0x8000, extend),
        0xffff_ffff_ffff_8000
    );
    // mov r9w, [rax]: 16-bit merge keeps the rest.
    let d = dec(&[0x66, 0x44, 0x8b, 0x08], 64).unwrap();
    let MmioOp::Load { size, dest, extend } = d.op else {
        panic!()
    };
    assert_eq!(dest.number, 9);
    assert_eq!(
        loaded(dest, g[9], size, 0xbeef, extend),
        0xaaaa_aaaa_aaaa_beef
    );
    // mov eax, [0xfee00020] (moffs) in 32-bit code.
    let d = dec(&[0xa1, 0x20, 0x00, 0xe0, 0xfe], 32).unwrap();
    assert_eq!(d.len, 5);
    assert!(matches!(d.op, MmioOp::Load { size: 4, .. }));
}

#[test]
fn exchange_and_unsupported() {
    let d = dec(&[0x87, 0x08], 64).unwrap();
    assert!(matches!(d.op, MmioOp::Exchange { size: 4, reg } if reg.number == 1));
    assert_eq!(
        dec(&[0x01, 0x08], 64),
        Err(MmioError::Unsupported(Mnemonic::Add))
    );
    // A register-only MOV never touched memory.
    assert_eq!(
        dec(&[0x89, 0xc8], 64),
        Err(MmioError::Unsupported(Mnemonic::Mov))
    );
    assert_eq!(dec(&[0x0f, 0xff], 64), Err(MmioError::Invalid));
    // movaps [rax], xmm0: not a general register.
    assert!(matches!(
        dec(&[0x0f, 0x29, 0x00], 64),
        Err(MmioError::Unsupported(_))
    ));
}

/// 4-level tables at 0x1000 mapping linear 0x40_0000 (4 KiB) to 0x7000 and 0x8000_0000
/// (2 MiB page) to 0x20_0000.
fn long_tables() -> Vec<u8> {
    let mut mem = vec![0u8; 0x40_0000];
    put(&mut mem, 0x1000, 0x2000 | 3, true); // PML4[0]
    put(&mut mem, 0x2000, 0x3000 | 3, true); // PDPT[0]
    put(&mut mem, 0x2000 + 2 * 8, 0x5000 | 3, true); // PDPT[2]
    put(&mut mem, 0x3000 + 2 * 8, 0x4000 | 3, true); // PD[2] -> PT
    put(&mut mem, 0x4000, 0x7000 | 3, true); // PT[0]
    put(&mut mem, 0x5000, 0x20_0000 | 0x83, true); // PD[0] 2 MiB
    mem
}

#[test]
fn long_mode_translation() {
    let mut mem = long_tables();
    assert_eq!(translate(&mut mem, &LONG, 0x40_0123), Some(0x7123));
    assert_eq!(translate(&mut mem, &LONG, 0x8012_3456), Some(0x32_3456));
    assert_eq!(translate(&mut mem, &LONG, 0x40_1000), None);
    // Tables outside RAM.
    let far = CpuMode {
        cr3: 0x1_0000_0000,
        ..LONG
    };
    assert_eq!(translate(&mut mem, &far, 0), None);
}

#[test]
fn legacy_translation() {
    let mut mem = vec![0u8; 0x40_0000];
    // 32-bit: PD at 0x1000; PDE[1] 4 MiB page at 0x80_0000 (PSE), PDE[0] -> PT at 0x2000.
    put(&mut mem, 0x1000, 0x2000 | 3, false);
    put(&mut mem, 0x1004, 0x80_0000 | 0x83, false);
    put(&mut mem, 0x2000 + 5 * 4, 0x9000 | 3, false);
    let mode = CpuMode {
        cr0: CR0_PE | CR0_PG,
        cr3: 0x1000,
        cr4: CR4_PSE,
        efer: 0,
        cs_attributes: 0xc9b,
        cs_base: 0,
    };
    assert_eq!(mode.bitness(), 32);
    assert_eq!(translate(&mut mem, &mode, 0x5abc), Some(0x9abc));
    assert_eq!(translate(&mut mem, &mode, 0x41_2345), Some(0x81_2345));
    // PAE: PDPT at 0x3000 (32-byte aligned), PDPTE[0] -> PD 0x4000, PDE[0] 2 MiB at 0x20_0000.
    put(&mut mem, 0x3000, 0x4000 | 1, true);
    put(&mut mem, 0x4000, 0x20_0000 | 0x83, true);
    let pae = CpuMode {
        cr3: 0x3000,
        cr4: CR4_PAE,
        ..mode
    };
    assert_eq!(translate(&mut mem, &pae, 0x1_2345), Some(0x21_2345));
    assert_eq!(translate(&mut mem, &pae, 0x4000_0000), None);
    // Paging off: linear is physical (32 bits).
    let flat = CpuMode {
        cr0: CR0_PE,
        ..mode
    };
    assert_eq!(translate(&mut mem, &flat, 0x1_0000_1234), Some(0x1234));
}

#[test]
fn fetch_crosses_pages_and_uses_cs_base() {
    let mut mem = long_tables();
    // The instruction `mov [rax], ecx` split across linear 0x40_0fff / 0x40_1000: the second
    // page is not mapped, so only one byte is readable and the decode fails.
    mem[0x7fff] = 0x89;
    assert_eq!(
        decode(&mut mem, &LONG, 0x40_0fff, &gprs()),
        Err(MmioError::Invalid)
    );
    mem[0x7100] = 0x89;
    mem[0x7101] = 0x08;
    assert!(decode(&mut mem, &LONG, 0x40_0100, &gprs()).is_ok());
    assert_eq!(
        decode(&mut mem, &LONG, 0x50_0000, &gprs()),
        Err(MmioError::Fetch(0x50_0000))
    );
    // Real mode: CS base 0x7000, IP 0x100.
    let real = CpuMode {
        cr0: 0,
        cr3: 0,
        cr4: 0,
        efer: 0,
        cs_attributes: 0x9b,
        cs_base: 0x7000,
    };
    assert_eq!(real.bitness(), 16);
    mem[0x7100] = 0x89; // mov [bx+si], cx
    mem[0x7101] = 0x08;
    let d = decode(&mut mem, &real, 0x100, &gprs()).unwrap();
    assert_eq!(
        d.op,
        MmioOp::Store {
            size: 2,
            value: 0x2222
        }
    );
}
