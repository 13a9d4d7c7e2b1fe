//! `cargo xtask profile`: where the kernel's instructions go (issue #13).
//!
//! Boots a system with the release kernel on QEMU under `-icount` with `-d exec,nochain` limited
//! to the kernel's text (`-dfilter`), so QEMU logs every translation block the kernel executes.
//! The log streams through a FIFO (it runs to gigabytes) into a count per block address. Each
//! block's length comes from decoding the kernel ELF with iced-x86 up to the first instruction
//! that ends a block, and blocks are summed per function symbol. The figures are exact block
//! counts times approximate block lengths: QEMU also ends blocks at page boundaries and at some
//! system instructions, so a function's total can be a little off, never its rank.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use iced_x86::{Code, Decoder, DecoderOptions, FlowControl, Mnemonic};
use serde::Serialize;

use crate::cli::ProfileArgs;
use crate::emulator::{self, Emulator, Spec};
use crate::outcome::Outcome;
use crate::setup::{self, Need};
use crate::{build, elf, image, layout, manifest, pack, run};

/// The kernel's half of the address space, where its text lies.
const KERNEL_RANGE: &str = "0xffffffff80000000..0xffffffffffffffff";

/// Most instructions QEMU puts in one translation block.
const MAX_BLOCK: usize = 512;

/// One function's share.
#[derive(Debug, Serialize, PartialEq)]
pub struct FunctionCost {
    pub function: String,
    pub instructions: u64,
    /// Times its hottest block ran: a lower bound of how often the function ran.
    pub executions: u64,
}

pub fn command(args: &ProfileArgs) -> Result<bool> {
    setup::ensure(&[Need::KernelToolchain, Need::Iso, Need::Qemu])?;
    let root = layout::root();
    let kernel = build::kernel(&root, true)?;
    let system = manifest::load(&root, &args.system)?;
    let work = layout::work_dir(&["profile", &args.system])?;
    let iso = work.join(format!("{}.iso", args.system));
    let modules = pack::modules(&root, &system, true, true)?;
    image::for_system(
        &system,
        &modules,
        run::default_bootloader(),
        &kernel,
        "",
        &iso,
    )?;
    let fifo = work.join("exec.fifo");
    let _ = std::fs::remove_file(&fifo);
    make_fifo(&fifo)?;
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || -> Result<HashMap<u64, u64>> {
            let file = std::fs::File::open(&fifo)?;
            count_blocks(BufReader::with_capacity(1 << 20, file))
        })
    };
    let spec = Spec {
        iso,
        cpu: Emulator::Qemu.default_cpu().into(),
        timeout: Duration::from_secs(900),
        ram_mib: system.ram_mib,
        icount: true,
        echo: false,
        work: work.join("run"),
        extra: [
            "-d",
            "exec,nochain",
            "-dfilter",
            KERNEL_RANGE,
            "-D",
            &fifo.display().to_string(),
        ]
        .map(String::from)
        .to_vec(),
    };
    eprintln!(
        "profile: booting `{}` with -icount and block tracing (a few minutes)",
        args.system
    );
    let boot = emulator::boot(Emulator::Qemu, &spec)?;
    let counts = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the trace reader panicked"))??;
    let _ = std::fs::remove_file(&fifo);
    if boot.outcome() != Outcome::Success {
        bail!(
            "the {} system did not succeed: {}",
            args.system,
            boot.outcome()
        );
    }
    let image = std::fs::read(&kernel).with_context(|| format!("reading {}", kernel.display()))?;
    let costs = attribute(&image, &counts)?;
    let total: u64 = costs.iter().map(|c| c.instructions).sum();
    for line in boot.lines.iter().filter(|l| l.text.contains("tsc per")) {
        println!("{}", line.text.trim());
    }
    println!(
        "kernel instructions: {total} (release kernel, QEMU -icount, system {})",
        args.system
    );
    println!(
        "{:>12} {:>6} {:>10}  function",
        "instructions", "share", "runs"
    );
    for c in costs.iter().take(args.top) {
        println!(
            "{:>12} {:>5.1}% {:>10}  {}",
            c.instructions,
            c.instructions as f64 * 100.0 / total.max(1) as f64,
            c.executions,
            c.function
        );
    }
    let out = layout::work_dir(&["profile"])?.join(format!("{}.json", args.system));
    std::fs::write(&out, serde_json::to_string_pretty(&costs)? + "\n")?;
    println!("wrote {}", layout::show(&out));
    Ok(true)
}

fn make_fifo(path: &Path) -> Result<()> {
    let c_path = std::ffi::CString::new(path.display().to_string())?;
    // SAFETY: `c_path` is a valid NUL-terminated path; mkfifo only reads it.
    let status = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
    if status != 0 {
        bail!(
            "mkfifo {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// The block address of one `-d exec` line: `Trace 0: 0x… [cs_base/pc/flags/…] …`.
pub fn block_address(line: &str) -> Option<u64> {
    let fields = line.split_once('[')?.1;
    let pc = fields.split('/').nth(1)?;
    u64::from_str_radix(pc, 16).ok()
}

/// How often each block address appears in the trace.
pub fn count_blocks(reader: impl BufRead) -> Result<HashMap<u64, u64>> {
    let mut counts = HashMap::new();
    for line in reader.lines() {
        if let Some(pc) = block_address(&line?) {
            *counts.entry(pc).or_insert(0) += 1;
        }
    }
    Ok(counts)
}

/// Instructions in the block that starts at `code[0]` (address `ip`): up to and including the
/// first one that changes control flow or that QEMU translates alone.
pub fn block_length(code: &[u8], ip: u64) -> usize {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut n = 0;
    while decoder.can_decode() && n < MAX_BLOCK {
        let instruction = decoder.decode();
        n += 1;
        let ends = instruction.flow_control() != FlowControl::Next
            || instruction.is_invalid()
            || matches!(
                instruction.code(),
                Code::Mov_cr_r64 | Code::Wrmsr | Code::Sti | Code::Cli
            )
            || matches!(instruction.mnemonic(), Mnemonic::Invlpg | Mnemonic::Hlt);
        if ends {
            break;
        }
    }
    n.max(1)
}

/// Sums each block's executions × length per function symbol, most expensive first.
pub fn attribute(image: &[u8], counts: &HashMap<u64, u64>) -> Result<Vec<FunctionCost>> {
    let symbols = elf::code_symbols(image)?;
    let mut by_function: HashMap<String, (u64, u64)> = HashMap::new();
    for (&pc, &runs) in counts {
        let length = elf::bytes_at(image, pc).map_or(1, |code| block_length(code, pc));
        let name = function_at(&symbols, pc);
        let entry = by_function.entry(name).or_insert((0, 0));
        entry.0 += runs * length as u64;
        entry.1 = entry.1.max(runs);
    }
    let mut costs: Vec<FunctionCost> = by_function
        .into_iter()
        .map(|(function, (instructions, executions))| FunctionCost {
            function,
            instructions,
            executions,
        })
        .collect();
    costs.sort_by(|a, b| {
        b.instructions
            .cmp(&a.instructions)
            .then(a.function.cmp(&b.function))
    });
    Ok(costs)
}

/// The demangled name (without the crate hash) of the symbol containing `pc`.
fn function_at(symbols: &[elf::Symbol], pc: u64) -> String {
    let index = symbols.partition_point(|s| s.addr <= pc);
    let Some(symbol) = index.checked_sub(1).and_then(|i| symbols.get(i)) else {
        return format!("{pc:#x}");
    };
    if symbol.size != 0 && pc >= symbol.addr + symbol.size {
        return format!("{pc:#x}");
    }
    format!("{:#}", rustc_demangle::demangle(&symbol.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_lines_give_their_block_address() {
        let line = "Trace 0: 0x7f114046b2c0 [0000000000000000/ffffffff8020052f/0000c0b0/ff020200] ";
        assert_eq!(block_address(line), Some(0xffff_ffff_8020_052f));
        assert_eq!(block_address("Linking TBs 0x1 [ffff] index 0 -> 0x2"), None);
        assert_eq!(block_address("no brackets"), None);
        let log = format!("{line}\n{line}\ngarbage\n");
        let counts = count_blocks(log.as_bytes()).unwrap();
        assert_eq!(counts.get(&0xffff_ffff_8020_052f), Some(&2));
        assert_eq!(counts.len(), 1);
    }

    #[test]
    fn a_block_ends_at_its_first_branch() {
        // mov eax, 1; add eax, 2; jne +0; mov ebx, 3
        let code = [
            0xb8, 1, 0, 0, 0, 0x83, 0xc0, 2, 0x75, 0x00, 0xbb, 3, 0, 0, 0,
        ];
        assert_eq!(block_length(&code, 0x1000), 3);
        // A CR3 load ends its block too (QEMU translates it alone): mov cr3, rax; nop
        assert_eq!(block_length(&[0x0f, 0x22, 0xd8, 0x90], 0x1000), 1);
        // Straight-line code to the end of the bytes.
        assert_eq!(block_length(&[0x90, 0x90], 0x1000), 2);
    }

    #[test]
    fn blocks_are_summed_per_function() {
        let symbols = vec![
            elf::Symbol {
                addr: 0x100,
                size: 0x10,
                name: "first".into(),
            },
            elf::Symbol {
                addr: 0x200,
                size: 0,
                name: "label".into(),
            },
        ];
        assert_eq!(function_at(&symbols, 0x104), "first");
        assert_eq!(function_at(&symbols, 0x110), "0x110");
        assert_eq!(function_at(&symbols, 0x2ff), "label");
        assert_eq!(function_at(&symbols, 0x50), "0x50");
    }
}
