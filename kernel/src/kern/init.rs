//! Starting the root server: the kernel loads the boot module named `init` into a new domain,
//! gives it a boot page, its modules, a pool of free memory and every I/O port and IRQ as
//! capabilities (see `abi::boot`), and runs it.

use abi::boot::{self, sel, BootModule, BootPage};
use abi::PAGE_SIZE;
use abi::{well_known, Rights};
use bootinfo::BootInfo;
use cap::Quota;
use elf::endian::AnyEndian;
use elf::ElfBytes;

use super::ids::PdId;
use super::obj::Obj;
use super::state::{init_state, with_kernel, Kernel};
use super::{memory, syscalls};
use crate::arch::power;
use crate::mem::{direct, frames};

/// Priority of init's thread: above every server, so that bootstrap requests are served at once.
const INIT_PRIORITY: u8 = 30;

/// Loads init if the boot modules hold one; returns whether it did.
pub fn load_init(info: &BootInfo) -> bool {
    let Some(init_index) = info
        .modules
        .iter()
        .position(|m| m.name.as_str() == boot::INIT_MODULE)
    else {
        return false;
    };
    init_state();
    let result = with_kernel(|k| load(k, info, init_index));
    if let Err(why) = result {
        power::fail(format_args!("init: {why}"));
    }
    log::info!("init: started");
    true
}

fn load(k: &mut Kernel, info: &BootInfo, init_index: usize) -> Result<(), &'static str> {
    let (free, _) = frames::stats();
    // Init's kernel-memory quota: what the kernel heap can really back (objects live there), at
    // most a quarter of free memory, so that no quota promises memory the heap does not have.
    // The pool of pages it hands out to servers is another quarter of free memory.
    let quota = Quota::new((crate::mem::heap_free_bytes() / 2).min(free as u64 / 4 * PAGE_SIZE));
    let pd = syscalls::new_pd(k, None, quota).map_err(|_| "no memory for the root domain")?;
    k.root = Some(pd);
    let space = k.pds.get(pd).ok_or("root domain vanished")?.space;

    let module = &info.modules[init_index];
    let image = direct::bytes(module.start, module.len as usize)
        .ok_or("init module outside the direct map")?;
    let entry = load_elf(k, pd, image)?;

    let stack_base = boot::INIT_STACK_TOP - boot::INIT_STACK_PAGES * PAGE_SIZE;
    map_fresh(
        k,
        pd,
        stack_base,
        boot::INIT_STACK_PAGES,
        Rights::READ | Rights::WRITE,
    )?;
    let utcb_frame = map_fresh(k, pd, boot::INIT_UTCB_ADDR, 1, Rights::READ | Rights::WRITE)?;

    let mut page = BootPage {
        magic: boot::BOOT_PAGE_MAGIC,
        free_pages: 0,
        quota: 0,
        module_count: 0,
        modules: [BootModule {
            name: [0; 48],
            addr: 0,
            len: 0,
            sel: abi::Sel::new(0),
        }; boot::MAX_BOOT_MODULES],
        cmdline: [0; 256],
    };
    let cmdline = info.cmdline.as_bytes();
    page.cmdline[..cmdline.len().min(255)].copy_from_slice(&cmdline[..cmdline.len().min(255)]);

    let mut next = boot::MODULES_ADDR;
    for (i, m) in info.modules.iter().enumerate().take(boot::MAX_BOOT_MODULES) {
        let first = m.start & !(PAGE_SIZE - 1);
        let pages = (m.start + m.len).div_ceil(PAGE_SIZE) - first / PAGE_SIZE;
        memory::map_pages(k, pd, next, first, pages, Rights::READ)
            .map_err(|_| "cannot map a boot module")?;
        let module_sel = sel::FIRST_MODULE.offset(i as u64);
        k.caps
            .insert_original(
                space,
                module_sel.raw(),
                Obj::Memory { base: first, pages },
                Rights::READ | Rights::GRANT,
            )
            .map_err(|_| "cannot give init a module capability")?;
        let entry = &mut page.modules[i];
        let name = m.name.as_bytes();
        entry.name[..name.len().min(47)].copy_from_slice(&name[..name.len().min(47)]);
        entry.addr = next + (m.start - first);
        entry.len = m.len;
        entry.sel = module_sel;
        page.module_count += 1;
        next += pages * PAGE_SIZE;
    }

    let pool_pages = largest_pool(free as u64 / 4);
    let pool = frames::alloc(pool_pages as usize).ok_or("no memory for init's pool")?;
    page.free_pages = pool_pages;
    let memory_rights = Rights::READ | Rights::WRITE | Rights::EXEC | Rights::GRANT;
    let insert = |k: &mut Kernel, s: u64, o: Obj, r: Rights| {
        k.caps
            .insert_original(space, s, o, r)
            .map_err(|_| "cannot fill init's capability space")
    };
    insert(
        k,
        sel::FREE_MEMORY.raw(),
        Obj::Memory {
            base: pool,
            pages: pool_pages,
        },
        memory_rights,
    )?;
    insert(
        k,
        sel::ALL_IO_PORTS.raw(),
        Obj::IoPorts {
            base: 0,
            count: 65536,
        },
        Rights::CALL | Rights::GRANT,
    )?;
    memory::after_cap_insert_pd(k, pd, sel::ALL_IO_PORTS.raw());
    for irq in 0..boot::IRQ_COUNT {
        insert(
            k,
            sel::FIRST_IRQ.offset(irq).raw(),
            Obj::Irq(irq as u8),
            Rights::CALL | Rights::GRANT,
        )?;
    }
    insert(k, well_known::SELF_PD.raw(), Obj::Pd(pd), Rights::ALL)?;

    page.quota = k.pds.get(pd).map_or(0, |d| d.quota.available());
    let boot_frame = map_fresh(k, pd, boot::BOOT_PAGE_ADDR, 1, Rights::READ)?;
    write_boot_page(boot_frame, &page);

    let thread = syscalls::spawn(
        k,
        pd,
        entry,
        boot::INIT_STACK_TOP,
        INIT_PRIORITY,
        boot::INIT_UTCB_ADDR,
        utcb_frame,
        boot::BOOT_PAGE_ADDR,
    )
    .ok_or("init's UTCB is outside the direct map")?;
    insert(
        k,
        well_known::SELF_THREAD.raw(),
        Obj::Thread(thread),
        Rights::ALL,
    )?;
    log::info!(
        "init: entry {entry:#x}, {} modules, pool {} MiB, quota {} KiB",
        page.module_count,
        (pool_pages * PAGE_SIZE) >> 20,
        page.quota >> 10
    );
    Ok(())
}

/// The largest power-of-two page count not above `limit` (the buddy allocator's unit).
fn largest_pool(limit: u64) -> u64 {
    if limit == 0 {
        return 0;
    }
    1 << (63 - limit.leading_zeros())
}

fn write_boot_page(frame: u64, page: &BootPage) {
    // SAFETY: `BootPage` is plain `repr(C)` data without padding-sensitive invariants; viewing it
    // as bytes to copy it is sound.
    let bytes = unsafe {
        core::slice::from_raw_parts(
            page as *const BootPage as *const u8,
            core::mem::size_of::<BootPage>(),
        )
    };
    let _ = direct::copy_to(frame, bytes);
}

/// Maps `pages` new zeroed pages at `virt` of `pd`; returns the physical address of the first.
fn map_fresh(
    k: &mut Kernel,
    pd: PdId,
    virt: u64,
    pages: u64,
    rights: Rights,
) -> Result<u64, &'static str> {
    let phys = frames::alloc(pages as usize).ok_or("out of memory loading init")?;
    direct::zero(phys, pages * PAGE_SIZE).ok_or("frames outside the direct map")?;
    memory::map_pages(k, pd, virt, phys, pages, rights).map_err(|_| "cannot map init's memory")?;
    Ok(phys)
}

/// Loads init's ELF segments into fresh pages; returns its entry point.
fn load_elf(k: &mut Kernel, pd: PdId, image: &[u8]) -> Result<u64, &'static str> {
    let file =
        ElfBytes::<AnyEndian>::minimal_parse(image).map_err(|_| "init is not an ELF file")?;
    if file.ehdr.class != elf::file::Class::ELF64 || file.ehdr.e_machine != elf::abi::EM_X86_64 {
        return Err("init is not an x86-64 ELF64 file");
    }
    let segments = file.segments().ok_or("init has no program headers")?;
    for ph in segments.iter().filter(|ph| ph.p_type == elf::abi::PT_LOAD) {
        let start = ph.p_vaddr & !(PAGE_SIZE - 1);
        let end = ph
            .p_vaddr
            .checked_add(ph.p_memsz)
            .ok_or("init segment overflows")?;
        if end > memory::USER_END || ph.p_filesz > ph.p_memsz {
            return Err("init segment outside user space");
        }
        let pages = end.div_ceil(PAGE_SIZE) - start / PAGE_SIZE;
        let file_end = ph
            .p_offset
            .checked_add(ph.p_filesz)
            .ok_or("init segment overflows")?;
        let bytes = image
            .get(ph.p_offset as usize..file_end as usize)
            .ok_or("init segment outside the file")?;
        let mut rights = Rights::READ;
        if ph.p_flags & elf::abi::PF_W != 0 {
            rights = rights | Rights::WRITE;
        }
        if ph.p_flags & elf::abi::PF_X != 0 {
            rights = rights | Rights::EXEC;
        }
        if rights.contains(Rights::WRITE | Rights::EXEC) {
            return Err("init has a writable and executable segment");
        }
        let phys = map_fresh(k, pd, start, pages, rights)?;
        direct::copy_to(phys + (ph.p_vaddr - start), bytes).ok_or("init segment copy failed")?;
    }
    Ok(file.ehdr.e_entry)
}
