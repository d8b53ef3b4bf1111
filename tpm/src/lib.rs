//! TPM 2.0 measurement for rkt: PCR extends recorded in a TCG crypto-agile event log (one per TPM
//! boot cycle), log replay against the PCRs, and quotes that tpm2-tools can check.

pub mod bank;
pub mod device;
pub mod eventlog;
pub mod journal;

pub use bank::Bank;
pub use device::{read_clock, resolve_tcti, BootCycle, Quote, Tpm, DEFAULT_TCTI, QUOTE_FILES};
pub use eventlog::{Event, Log, EV_IPL, EV_NO_ACTION};
pub use journal::{Journal, Logged, Snapshot};
