//! Links the kernel with its own linker script (higher-half image with a low load address so that
//! both Limine and GRUB's Multiboot2 loader can place it).
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-arg-bins=-T{dir}/linker.ld");
    println!("cargo:rustc-link-arg-bins=-zmax-page-size=0x1000");
    println!("cargo:rerun-if-changed={dir}/linker.ld");
}
