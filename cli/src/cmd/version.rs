//! `rkt version`: the first two lines are parsed by Nomad (`rkt [vV]ersion[:]? (\d[.\d]+)`, at
//! least 1.27.0, and the appc line), so they keep rkt v1's shape and name the rkt v1 release
//! whose command line, layout and exit codes we keep; our own version follows on its own line.

/// The rkt v1 release this rkt is compatible with (its CLI, pod layout and stage1 contract).
pub const RKT_V1_COMPAT: &str = "1.30.0";

pub fn run() -> anyhow::Result<i32> {
    crate::outln!("rkt Version: {RKT_V1_COMPAT}");
    crate::outln!("appc Version: {}", rkt_schema::AC_VERSION);
    crate::outln!("rkt-rs Version: {}", env!("CARGO_PKG_VERSION"));
    crate::outln!(
        "Rust Version: {}",
        option_env!("RKT_RUSTC_VERSION").unwrap_or("unknown")
    );
    crate::outln!(
        "Rust OS/Arch: {}/{}",
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    // TPM: every stage is measured when a TPM is there (--tpm).
    crate::outln!("Features: +TPM +SDJOURNAL=false +stage1-ns +stage1-kvm");
    Ok(0)
}
