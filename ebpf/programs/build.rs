//! Rebuild when bpf-linker changes, and fail early with a clear message when it is missing.

fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => panic!("bpf-linker not found on PATH ({err}): run `cargo xtask setup`"),
    }
}
