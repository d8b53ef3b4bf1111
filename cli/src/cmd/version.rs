//! `rkt version`: the first two lines are parsed by Nomad, keep their shape.

pub fn run() -> anyhow::Result<i32> {
    println!("rkt Version: {}", env!("CARGO_PKG_VERSION"));
    println!("appc Version: {}", rkt_schema::AC_VERSION);
    println!(
        "Rust Version: {}",
        option_env!("RKT_RUSTC_VERSION").unwrap_or("unknown")
    );
    println!(
        "Rust OS/Arch: {}/{}",
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    println!("Features: -TPM +SDJOURNAL=false +stage1-ns +stage1-kvm");
    Ok(0)
}
