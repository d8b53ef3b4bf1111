//! The one `/proc/self/mountinfo` reader: cgroup discovery and pod teardown both need it.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One mount: where, which filesystem type, and its super-block options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub point: PathBuf,
    pub fstype: String,
    pub super_opts: String,
}

/// Parses mountinfo text; malformed lines are skipped (the kernel writes it, but a test may not).
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let point = pre.split(' ').nth(4)?;
            let mut post = post.split(' ');
            let fstype = post.next()?.to_string();
            let _source = post.next()?;
            let super_opts = post.next().unwrap_or("").to_string();
            Some(Mount {
                point: unescape(point),
                fstype,
                super_opts,
            })
        })
        .collect()
}

/// This process's mounts.
pub fn read_self() -> std::io::Result<Vec<Mount>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// Mount points at or below `dir`, deepest first (the order to unmount them in).
pub fn points_under(mounts: &[Mount], dir: &Path) -> Vec<PathBuf> {
    let mut under: Vec<PathBuf> = mounts
        .iter()
        .map(|m| m.point.clone())
        .filter(|p| p.starts_with(dir))
        .collect();
    under.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    under.dedup();
    under
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`; names are bytes, not UTF-8.
fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_unescapes() {
        let mi = "36 35 98:0 / /a\\040b rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                  37 35 0:5 / /a\\040b/\\303\\251 rw - tmpfs none rw\n\
                  garbage\n\
                  38 35 0:6 / /end\\ rw - proc proc rw";
        let m = parse(mi);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].point, PathBuf::from("/a b"));
        assert_eq!(m[0].fstype, "ext3");
        assert_eq!(m[0].super_opts, "rw,errors=continue");
        assert_eq!(m[1].point, PathBuf::from("/a b/é"));
        assert_eq!(m[2].point, PathBuf::from("/end\\"));
        assert_eq!(
            points_under(&m, Path::new("/a b")),
            vec![PathBuf::from("/a b/é"), PathBuf::from("/a b")]
        );
        assert!(points_under(&m, Path::new("/a")).is_empty());
    }
}
