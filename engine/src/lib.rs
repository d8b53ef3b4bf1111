//! The rkt engine: pods on disk and their lifecycle, the stage1 flavours (`ns`, `fly`, `kvm`, one
//! folder each under [`stage1`]), pod networking (CNI) and TPM measurement. The `rkt` CLI is a thin
//! command layer over it; nothing here knows about flag syntax.

pub mod config;
pub mod global;
pub mod measure;
pub mod net;
pub mod pod;
pub mod stage1;

/// Exit code for rkt's own errors (rkt v1's runWrapper).
pub use rkt_stage2::EXIT_RKT_ERROR;

/// The stage1 flavour used when neither `--stage1` nor the config picks one.
pub const DEFAULT_STAGE1: &str = "kvm";

/// Writes `rkt: LINE` to stderr; a stderr that cannot be written to is not worth a panic.
pub fn print_error(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "rkt: {line}");
}

/// Limits on files rkt reads because a flag named them (docs/pods.md): a file larger than its
/// limit (or endless, like /dev/zero) is refused instead of read until memory runs out.
pub mod limits {
    /// `--set-env-file`: the kernel caps an exec's environment far below this anyway.
    pub const ENV_FILE: u64 = 1 << 20;
    /// `--pod-manifest`.
    pub const POD_MANIFEST: u64 = 4 << 20;
    /// `--uuid-file`: one UUID and some whitespace.
    pub const UUID_FILE: u64 = 4096;
    /// Configuration files (`*.d/*.json`) and the host's /etc/resolv.conf and /etc/hosts.
    pub const CONFIG_FILE: u64 = 1 << 20;
}

/// Reads at most `limit` bytes of `path`; more is an error naming `what` and the limit.
pub fn read_limited(path: &std::path::Path, limit: u64, what: &str) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    use std::io::Read;
    let f =
        std::fs::File::open(path).with_context(|| format!("reading {what} {}", path.display()))?;
    let mut buf = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading {what} {}", path.display()))?;
    if buf.len() as u64 > limit {
        anyhow::bail!("{what} {} is larger than {limit} bytes", path.display());
    }
    Ok(buf)
}

/// [`read_limited`] for text files.
pub fn read_limited_string(
    path: &std::path::Path,
    limit: u64,
    what: &str,
) -> anyhow::Result<String> {
    String::from_utf8(read_limited(path, limit, what)?)
        .map_err(|_| anyhow::anyhow!("{what} {} is not UTF-8 text", path.display()))
}

/// Joins an error and its causes into a single line, made safe to print ([`sanitize`]).
pub fn one_line(e: &anyhow::Error) -> String {
    sanitize(&format!("{e:#}"))
}

/// Longest error line rkt prints, in characters after escaping; longer ones keep their start
/// and end (where the context and the root cause are) around a marker.
pub const MAX_ERROR_CHARS: usize = 1024;

/// One printable line from a message that may carry bytes from images, files or the command
/// line: control characters (NUL, ESC, newlines, C1) are escaped as `\n`, `\t`, `\xNN` or
/// `\u{NNNN}` (non-UTF-8 bytes already arrive as U+FFFD), and the result is cut to
/// [`MAX_ERROR_CHARS`].
pub fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_ERROR_CHARS + 64));
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            // C1 controls and the bidi overrides that can make a terminal show something else.
            c if c.is_control()
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c) =>
            {
                out.push_str(&format!("\\u{{{:04x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    let n = out.chars().count();
    if n <= MAX_ERROR_CHARS {
        return out;
    }
    let keep = MAX_ERROR_CHARS / 2;
    let head: String = out.chars().take(keep).collect();
    let tail: String = out.chars().skip(n - keep).collect();
    format!("{head}…[{} characters cut]…{tail}", n - 2 * keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_escapes_and_cuts() {
        assert_eq!(sanitize("a\0b\nc\x1b[31m"), "a\\x00b\\nc\\x1b[31m");
        assert_eq!(
            sanitize("bad \u{fffd} \u{202e}x"),
            "bad \u{fffd} \\u{202e}x"
        );
        let long = format!("start{}end", "x".repeat(5000));
        let s = sanitize(&long);
        assert!(s.chars().count() < MAX_ERROR_CHARS + 40, "{}", s.len());
        assert!(s.starts_with("start") && s.ends_with("end") && s.contains("characters cut"));
    }
}
