//! A real TPM for the rkt tpm tests: the tpm crate's swtpm helper (Debian's swtpm in socket mode on
//! free local ports), shared rather than copied.
#[path = "../../../tpm/tests/common/mod.rs"]
mod common;
pub use common::*;
