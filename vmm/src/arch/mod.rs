//! x86_64 specifics: memory layout, boot protocol, vCPU registers and CPUID.
pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;
