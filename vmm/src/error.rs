//! The VMM's error type. Each variant says which kind of thing failed; the message names the
//! step (an ioctl, a file, a snapshot check) and the cause stays reachable as `source()`, so
//! `anyhow`'s `{:#}` in the callers prints the same one line it printed before this type existed
//! ("KVM_CREATE_VM: Permission denied (os error 13)").

use std::path::PathBuf;

/// Why building, running, saving or restoring a VM failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration asks for a VM this VMM or host cannot make (vCPU count, memory size,
    /// a device's parameters, a kernel command line or initrd that does not fit).
    #[error("{0}")]
    Config(String),
    /// /dev/kvm cannot be opened.
    #[error("cannot open /dev/kvm: {0} (is KVM available and accessible?)")]
    KvmUnavailable(kvm_ioctls::Error),
    /// A KVM ioctl failed; `op` names it (e.g. `KVM_CREATE_VM`).
    #[error("{op}")]
    Kvm {
        op: String,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A host file or resource (eventfd, epoll, socket, thread, signal handler) failed.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The kernel image is not an uncompressed vmlinux ELF that fits in guest RAM.
    #[error("loading kernel {}: {err} (an uncompressed vmlinux ELF that fits in guest RAM is needed)", path.display())]
    Kernel {
        path: PathBuf,
        err: linux_loader::loader::Error,
    },
    /// Guest memory could not be allocated, mapped or written.
    #[error("{what}")]
    GuestMemory {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A KVM data structure (CPUID or MSR list) could not be built.
    #[error("building {what}: {detail}")]
    Build { what: &'static str, detail: String },
    /// A snapshot does not fit this VM, or its state is damaged or of another VMM version.
    #[error("{0}")]
    Snapshot(String),
    /// Saving or restoring one vCPU failed.
    #[error("{action} vCPU {id}")]
    Vcpu {
        action: &'static str,
        id: usize,
        #[source]
        source: Box<Error>,
    },
    /// A snapshot state file could not be decoded.
    #[error("decoding {}", path.display())]
    StateFile {
        path: PathBuf,
        #[source]
        source: Box<Error>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Names the step that failed, like `anyhow::Context`; the error type decides the variant.
pub(crate) trait Context<T> {
    fn context(self, what: &'static str) -> Result<T>;
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, std::io::Error> {
    fn context(self, what: &'static str) -> Result<T> {
        self.with_context(|| what.to_string())
    }
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            what: what(),
            source,
        })
    }
}

impl<T> Context<T> for std::result::Result<T, kvm_ioctls::Error> {
    fn context(self, op: &'static str) -> Result<T> {
        self.with_context(|| op.to_string())
    }
    fn with_context(self, op: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Kvm { op: op(), source })
    }
}

impl<T> Context<T> for std::result::Result<T, vm_memory::GuestMemoryError> {
    fn context(self, what: &'static str) -> Result<T> {
        self.with_context(|| what.to_string())
    }
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::GuestMemory {
            what: what(),
            source: Box::new(e),
        })
    }
}

/// `return Err(Error::Variant(format!(...)))` for the message-carrying variants.
macro_rules! bail {
    ($variant:ident, $($arg:tt)*) => {
        return Err($crate::error::Error::$variant(format!($($arg)*)))
    };
}
pub(crate) use bail;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_prints_as_one_line_with_the_cause() {
        let mem = crate::arch::boot::create_memory(16 << 20).unwrap();
        let e = crate::arch::boot::load_kernel(&mem, std::path::Path::new("/nonexistent/vmlinux"))
            .unwrap_err();
        assert!(matches!(e, Error::Io { .. }));
        // What the rkt CLI prints: the step, then the cause, on one line (as with anyhow before).
        let line = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(
            line,
            "opening kernel /nonexistent/vmlinux: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn nested_vcpu_errors_keep_their_cause() {
        let e = Error::Vcpu {
            action: "restoring",
            id: 1,
            source: Box::new(Error::Kvm {
                op: "KVM_SET_REGS".into(),
                source: kvm_ioctls::Error::new(libc::EINVAL),
            }),
        };
        assert_eq!(
            format!("{:#}", anyhow::Error::from(e)),
            "restoring vCPU 1: KVM_SET_REGS: Invalid argument (os error 22)"
        );
    }
}
