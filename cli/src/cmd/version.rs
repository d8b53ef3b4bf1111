//! `rkt version`: the first two lines are parsed by Nomad, keep their shape.

pub fn run() -> anyhow::Result<i32> {
    crate::outln!("rkt Version: {}", env!("CARGO_PKG_VERSION"));
    crate::outln!("appc Version: {}", rkt_schema::AC_VERSION);
    crate::outln!(
        "Rust Version: {}",
        option_env!("RKT_RUSTC_VERSION").unwrap_or("unknown")
    );
    crate::outln!(
        "Rust OS/Arch: {}/{}",
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    crate::outln!("Features: -TPM +SDJOURNAL=false +stage1-ns +stage1-kvm");
    Ok(0)
}
