//! User and group resolution from the image's own `/etc/passwd` and `/etc/group`.
//!
//! NSS is never consulted: the host's users mean nothing inside an image, and the kvm guest init
//! is a static binary without NSS. rkt accepted a number, a name, or a path (the owner of that path
//! inside the app's root).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{anyhow, bail, Context};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// Parses passwd(5) text; malformed lines are skipped as getpwent(3) does.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

/// Parses group(5) text; malformed lines are skipped.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

fn read_optional(path: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// (uid_t)-1 means "unchanged" to setresuid/setresgid: an app "running as" it would keep rkt's
/// identity (root), so no source (flag, manifest, /etc/passwd) may name it.
fn usable_id(kind: &str, name: &str, id: u32) -> anyhow::Result<u32> {
    if id == u32::MAX {
        bail!("{kind} {name:?} resolves to {id} (-1), which is not an id");
    }
    Ok(id)
}

/// Resolves `user` (number, name in `<root>/etc/passwd`, or absolute path whose owner is taken)
/// to a uid. `root` is the app's root directory as seen by the caller.
pub fn resolve_user(root: &Path, user: &str) -> anyhow::Result<u32> {
    resolve_user_any(root, user).and_then(|id| usable_id("user", user, id))
}

fn resolve_user_any(root: &Path, user: &str) -> anyhow::Result<u32> {
    let user = user.trim();
    if user.is_empty() {
        return Ok(0);
    }
    if let Ok(n) = user.parse::<u32>() {
        return Ok(n);
    }
    if user.starts_with('/') {
        let p = root.join(user.trim_start_matches('/'));
        let md = std::fs::metadata(&p).with_context(|| format!("user path {user}"))?;
        return Ok(md.uid());
    }
    let text = read_optional(&root.join("etc/passwd"))?;
    parse_passwd(&text)
        .into_iter()
        .find(|e| e.name == user)
        .map(|e| e.uid)
        .ok_or_else(|| anyhow!("user {user:?} not found in the image's /etc/passwd"))
}

/// Resolves `group` like [`resolve_user`], with names from `<root>/etc/group`.
pub fn resolve_group(root: &Path, group: &str) -> anyhow::Result<u32> {
    resolve_group_any(root, group).and_then(|id| usable_id("group", group, id))
}

fn resolve_group_any(root: &Path, group: &str) -> anyhow::Result<u32> {
    let group = group.trim();
    if group.is_empty() {
        return Ok(0);
    }
    if let Ok(n) = group.parse::<u32>() {
        return Ok(n);
    }
    if group.starts_with('/') {
        let p = root.join(group.trim_start_matches('/'));
        let md = std::fs::metadata(&p).with_context(|| format!("group path {group}"))?;
        return Ok(md.gid());
    }
    let text = read_optional(&root.join("etc/group"))?;
    parse_group(&text)
        .into_iter()
        .find(|e| e.name == group)
        .map(|e| e.gid)
        .ok_or_else(|| anyhow!("group {group:?} not found in the image's /etc/group"))
}

/// The home directory of `uid` in the image, for `$HOME` when the environment has none.
pub fn home_of(root: &Path, uid: u32) -> Option<String> {
    let text = read_optional(&root.join("etc/passwd")).ok()?;
    parse_passwd(&text)
        .into_iter()
        .find(|e| e.uid == uid)
        .map(|e| e.home)
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n# comment\nbroken line\n\
                          daemon:x:1:1:daemon:/usr/sbin:/bin/false\nuser:x:1000:1000::/home/user:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:root,user\nbad:x:notanumber:\nuser:x:1000:\n";

    #[test]
    fn parses_passwd_skipping_bad_lines() {
        let e = parse_passwd(PASSWD);
        assert_eq!(e.len(), 3);
        assert_eq!(e[2].name, "user");
        assert_eq!(e[2].uid, 1000);
        assert_eq!(e[2].home, "/home/user");
    }

    #[test]
    fn parses_group_members() {
        let g = parse_group(GROUP);
        assert_eq!(g.len(), 3);
        assert_eq!(g[1].members, vec!["root", "user"]);
        assert_eq!(g[2].gid, 1000);
    }

    fn root() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(d.path().join("etc/group"), GROUP).unwrap();
        d
    }

    #[test]
    fn resolves_numbers_names_and_paths() {
        let d = root();
        assert_eq!(resolve_user(d.path(), "1234").unwrap(), 1234);
        assert_eq!(resolve_user(d.path(), "user").unwrap(), 1000);
        assert_eq!(resolve_user(d.path(), "").unwrap(), 0);
        assert_eq!(resolve_group(d.path(), "wheel").unwrap(), 10);
        let f = d.path().join("owned");
        std::fs::write(&f, "").unwrap();
        std::os::unix::fs::chown(&f, Some(4321), Some(8765)).ok();
        let md = std::fs::metadata(&f).unwrap();
        assert_eq!(resolve_user(d.path(), "/owned").unwrap(), md.uid());
        assert_eq!(resolve_group(d.path(), "/owned").unwrap(), md.gid());
        assert_eq!(home_of(d.path(), 1000).as_deref(), Some("/home/user"));
    }

    #[test]
    fn unknown_names_fail_with_the_name() {
        let d = root();
        let e = resolve_user(d.path(), "nobody").unwrap_err().to_string();
        assert!(e.contains("\"nobody\""), "{e}");
        let e = resolve_group(d.path(), "nogroup").unwrap_err().to_string();
        assert!(e.contains("nogroup"), "{e}");
        // An image without /etc/group: names cannot resolve, numbers still do.
        let empty = tempfile::tempdir().unwrap();
        assert!(resolve_group(empty.path(), "wheel").is_err());
        assert_eq!(resolve_group(empty.path(), "7").unwrap(), 7);
    }

    #[test]
    fn minus_one_is_no_id() {
        let d = root();
        std::fs::write(
            d.path().join("etc/passwd"),
            "evil:x:4294967295:4294967295::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(d.path().join("etc/group"), "evil:x:4294967295:\n").unwrap();
        for u in ["4294967295", "evil"] {
            assert!(resolve_user(d.path(), u).is_err(), "{u}");
            assert!(resolve_group(d.path(), u).is_err(), "{u}");
        }
        assert_eq!(resolve_user(d.path(), "4294967294").unwrap(), 4294967294);
    }
}
