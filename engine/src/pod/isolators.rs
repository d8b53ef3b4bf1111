//! appc isolators: built from rkt's per-app flags (`--memory`, `--cpu`, `--cpu-shares`,
//! `--caps-retain`, `--caps-remove`, `--seccomp`, `--oom-score-adj`), merged over the image's, and
//! resolved into the final values the stage1 applies.

use anyhow::{bail, Context, Result};
use rkt_schema::Isolator;
use rkt_stage2::SeccompSpec;
use serde_json::{json, Value};

pub const MEMORY: &str = "resource/memory";
pub const CPU: &str = "resource/cpu";
pub const CPU_SHARES: &str = "os/linux/cpu-shares";
pub const CAPS_RETAIN: &str = "os/linux/capabilities-retain-set";
pub const CAPS_REMOVE: &str = "os/linux/capabilities-remove-set";
pub const SECCOMP_RETAIN: &str = "os/linux/seccomp-retain-set";
pub const SECCOMP_REMOVE: &str = "os/linux/seccomp-remove-set";
pub const OOM_SCORE_ADJ: &str = "os/linux/oom-score-adj";

/// rkt's default capability set for apps (stage1/init/common: appDefaultCapabilities).
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETUID",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETFCAP",
    "CAP_SYS_CHROOT",
];

/// Every capability Linux knows, in number order (one table, shared with the stage1s).
use rkt_stage2::caps::names as known_caps;

/// The per-app isolator flags of one app.
#[derive(Debug, Default)]
pub struct IsolatorFlags<'a> {
    pub memory: Option<&'a str>,
    pub cpu: Option<&'a str>,
    pub cpu_shares: Option<&'a str>,
    pub caps_retain: Option<&'a str>,
    pub caps_remove: Option<&'a str>,
    pub seccomp: Option<&'a str>,
    pub oom_score_adj: Option<&'a str>,
}

/// Isolators for the flags given, validated. Each replaces the image's isolator of the same kind.
pub fn from_flags(f: &IsolatorFlags) -> Result<Vec<Isolator>> {
    let mut out = Vec::new();
    let iso = |name: &str, value: Value| Isolator {
        name: name.to_string(),
        value,
    };
    if let Some(m) = f.memory {
        memory_bytes(m).with_context(|| format!("invalid --memory {m:?}"))?;
        out.push(iso(MEMORY, json!({ "limit": m, "request": m })));
    }
    if let Some(c) = f.cpu {
        cpu_millis(c).with_context(|| format!("invalid --cpu {c:?}"))?;
        out.push(iso(CPU, json!({ "limit": c, "request": c })));
    }
    if let Some(s) = f.cpu_shares {
        let n: u64 = s
            .parse()
            .ok()
            .filter(|n| (2..=262_144).contains(n))
            .with_context(|| format!("invalid --cpu-shares {s:?}: expected 2..262144"))?;
        out.push(iso(CPU_SHARES, json!(n)));
    }
    if f.caps_retain.is_some() && f.caps_remove.is_some() {
        bail!("--caps-retain and --caps-remove cannot be used together");
    }
    for (flag, name, v) in [
        ("caps-retain", CAPS_RETAIN, f.caps_retain),
        ("caps-remove", CAPS_REMOVE, f.caps_remove),
    ] {
        if let Some(v) = v {
            let set = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(cap_name)
                .collect::<Result<Vec<_>>>()
                .with_context(|| format!("invalid --{flag}"))?;
            if set.is_empty() {
                bail!("invalid --{flag}: no capability given");
            }
            out.push(iso(name, json!({ "set": set })));
        }
    }
    if let Some(s) = f.seccomp {
        let (retain, syscalls, errno) =
            parse_seccomp(s).with_context(|| format!("invalid --seccomp {s:?}"))?;
        let mut v = json!({ "set": syscalls });
        if let Some(e) = errno {
            v["errno"] = json!(e);
        }
        out.push(iso(
            if retain {
                SECCOMP_RETAIN
            } else {
                SECCOMP_REMOVE
            },
            v,
        ));
    }
    if let Some(s) = f.oom_score_adj {
        let n: i64 = s
            .parse()
            .ok()
            .filter(|n| (-1000..=1000).contains(n))
            .with_context(|| format!("invalid --oom-score-adj {s:?}: expected -1000..1000"))?;
        out.push(iso(OOM_SCORE_ADJ, json!(n)));
    }
    Ok(out)
}

/// The image's isolators with the flags' ones replacing those of the same kind (retain and remove
/// sets of one kind exclude each other).
pub fn merge(image: &[Isolator], flags: Vec<Isolator>) -> Vec<Isolator> {
    let kind = |n: &str| -> String {
        match n {
            CAPS_RETAIN | CAPS_REMOVE => "caps".into(),
            SECCOMP_RETAIN | SECCOMP_REMOVE => "seccomp".into(),
            other => other.into(),
        }
    };
    let mut out: Vec<Isolator> = image
        .iter()
        .filter(|i| !flags.iter().any(|f| kind(&f.name) == kind(&i.name)))
        .cloned()
        .collect();
    out.extend(flags);
    out
}

/// What the stage1 applies for one app.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub capabilities: Vec<String>,
    pub seccomp: SeccompSpec,
    pub memory_limit: Option<u64>,
    pub cpu_millis: Option<u64>,
    pub cpu_shares: Option<u64>,
    pub oom_score_adj: Option<i32>,
}

pub fn resolve(isolators: &[Isolator], all_caps: bool) -> Result<Resolved> {
    let mut r = Resolved {
        capabilities: DEFAULT_CAPS.iter().map(|s| s.to_string()).collect(),
        seccomp: SeccompSpec::Default,
        memory_limit: None,
        cpu_millis: None,
        cpu_shares: None,
        oom_score_adj: None,
    };
    let set_of = |i: &Isolator| -> Result<Vec<String>> {
        let arr = i
            .value
            .get("set")
            .and_then(Value::as_array)
            .with_context(|| format!("isolator {}: value needs a \"set\" list", i.name))?;
        arr.iter()
            .map(|v| {
                v.as_str()
                    .map(String::from)
                    .with_context(|| format!("isolator {}: set entries must be strings", i.name))
            })
            .collect()
    };
    let limit_of = |i: &Isolator| -> Result<String> {
        match &i.value {
            Value::Object(o) => o
                .get("limit")
                .or_else(|| o.get("request"))
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .with_context(|| format!("isolator {}: no limit", i.name)),
            other => bail!("isolator {}: unexpected value {other}", i.name),
        }
    };
    for i in isolators {
        match i.name.as_str() {
            MEMORY => r.memory_limit = Some(memory_bytes(&limit_of(i)?)?),
            CPU => r.cpu_millis = Some(cpu_millis(&limit_of(i)?)?),
            CPU_SHARES => {
                r.cpu_shares = Some(
                    i.value
                        .as_u64()
                        .with_context(|| format!("isolator {}: expected a number", i.name))?,
                )
            }
            CAPS_RETAIN => {
                r.capabilities = set_of(i)?
                    .iter()
                    .map(|c| cap_name(c))
                    .collect::<Result<_>>()?;
            }
            CAPS_REMOVE => {
                let remove = set_of(i)?
                    .iter()
                    .map(|c| cap_name(c))
                    .collect::<Result<Vec<_>>>()?;
                r.capabilities.retain(|c| !remove.contains(c));
            }
            SECCOMP_RETAIN | SECCOMP_REMOVE => {
                let syscalls = set_of(i)?;
                let errno = i
                    .value
                    .get("errno")
                    .and_then(Value::as_str)
                    .map(String::from);
                r.seccomp = if i.name == SECCOMP_RETAIN {
                    SeccompSpec::Retain { syscalls, errno }
                } else {
                    SeccompSpec::Remove { syscalls, errno }
                };
            }
            OOM_SCORE_ADJ => {
                r.oom_score_adj = Some(
                    i.value
                        .as_i64()
                        .filter(|n| (-1000..=1000).contains(n))
                        .with_context(|| {
                            format!("isolator {}: expected a number -1000..1000", i.name)
                        })? as i32,
                );
            }
            _ => {} // other isolators (no-new-privileges...) are recorded only
        }
    }
    if all_caps {
        r.capabilities = known_caps();
    }
    Ok(r)
}

/// `net_admin`, `NET_ADMIN` or `CAP_NET_ADMIN` -> `CAP_NET_ADMIN`, if Linux has it.
pub fn cap_name(s: &str) -> Result<String> {
    let up = s.trim().to_ascii_uppercase();
    let full = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    if !known_caps().contains(&full) {
        bail!("unknown capability {s:?}");
    }
    Ok(full)
}

/// `mode=retain|remove[,errno=EXXX],syscall,...` -> (retain?, syscalls, errno).
fn parse_seccomp(s: &str) -> Result<(bool, Vec<String>, Option<String>)> {
    let mut retain = None;
    let mut errno = None;
    let mut syscalls = Vec::new();
    for item in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
        if let Some(m) = item.strip_prefix("mode=") {
            retain = Some(match m {
                "retain" => true,
                "remove" => false,
                _ => bail!("mode must be retain or remove, not {m:?}"),
            });
        } else if let Some(e) = item.strip_prefix("errno=") {
            if !(e.len() > 1
                && e.starts_with('E')
                && e.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()))
            {
                bail!("bad errno {e:?} (expected a name like EPERM)");
            }
            errno = Some(e.to_string());
        } else if item.starts_with('@')
            || item
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            syscalls.push(item.to_string());
        } else {
            bail!("bad syscall name {item:?}");
        }
    }
    let Some(retain) = retain else {
        bail!("mode=retain or mode=remove is required");
    };
    if syscalls.is_empty() {
        bail!("no syscall given");
    }
    Ok((retain, syscalls, errno))
}

/// A Kubernetes-style quantity as an exact fraction (numerator, denominator).
fn quantity(s: &str) -> Result<(u128, u128)> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    if num.is_empty() || num.matches('.').count() > 1 || num == "." {
        bail!("not a number");
    }
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.len() + frac.len() > 24 {
        bail!("too large");
    }
    let digits: u128 = format!("{int}{frac}").parse().context("not a number")?;
    let den = 10u128.pow(frac.len() as u32);
    let (mul, div): (u128, u128) = match suffix {
        "" => (1, 1),
        "m" => (1, 1000),
        "k" | "K" => (1000, 1),
        "M" => (1000u128.pow(2), 1),
        "G" => (1000u128.pow(3), 1),
        "T" => (1000u128.pow(4), 1),
        "P" => (1000u128.pow(5), 1),
        "E" => (1000u128.pow(6), 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        _ => bail!("unknown unit {suffix:?} (use k, M, G, T or Ki, Mi, Gi, Ti)"),
    };
    Ok((digits * mul, den * div))
}

/// `--memory`: bytes, rounded up; at least one page.
pub fn memory_bytes(s: &str) -> Result<u64> {
    let (n, d) = quantity(s)?;
    let bytes = n.div_ceil(d);
    if bytes < 4096 {
        bail!("memory limit must be at least 4096 bytes");
    }
    u64::try_from(bytes).context("too large")
}

/// `--cpu`: millicores, rounded up; `500m`, `1`, `2.5`.
pub fn cpu_millis(s: &str) -> Result<u64> {
    let (n, d) = quantity(s)?;
    let millis = (n * 1000).div_ceil(d);
    if millis == 0 {
        bail!("cpu limit must be positive");
    }
    u64::try_from(millis).context("too large")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(memory_bytes("64M").unwrap(), 64_000_000);
        assert_eq!(memory_bytes("64Mi").unwrap(), 64 << 20);
        assert_eq!(memory_bytes("1G").unwrap(), 1_000_000_000);
        assert_eq!(memory_bytes("1.5Gi").unwrap(), 3 << 29);
        assert_eq!(memory_bytes("1048576").unwrap(), 1 << 20);
        assert!(memory_bytes("12").is_err());
        assert!(memory_bytes("lots").is_err());
        assert!(memory_bytes("5X").is_err());
        assert_eq!(cpu_millis("500m").unwrap(), 500);
        assert_eq!(cpu_millis("1").unwrap(), 1000);
        assert_eq!(cpu_millis("2.5").unwrap(), 2500);
        assert!(cpu_millis("0").is_err());
        assert!(cpu_millis("-1").is_err());
    }

    #[test]
    fn caps_default_retain_remove_insecure() {
        let none = resolve(&[], false).unwrap();
        assert_eq!(none.capabilities.len(), DEFAULT_CAPS.len());
        let f = IsolatorFlags {
            caps_retain: Some("CAP_NET_ADMIN,sys_admin"),
            ..Default::default()
        };
        let r = resolve(&from_flags(&f).unwrap(), false).unwrap();
        assert_eq!(r.capabilities, vec!["CAP_NET_ADMIN", "CAP_SYS_ADMIN"]);
        let f = IsolatorFlags {
            caps_remove: Some("CAP_CHOWN,CAP_KILL"),
            ..Default::default()
        };
        let r = resolve(&from_flags(&f).unwrap(), false).unwrap();
        assert_eq!(r.capabilities.len(), DEFAULT_CAPS.len() - 2);
        assert!(!r.capabilities.contains(&"CAP_CHOWN".to_string()));
        assert_eq!(
            resolve(&[], true).unwrap().capabilities.len(),
            known_caps().len()
        );
        let f = IsolatorFlags {
            caps_retain: Some("CAP_BOGUS"),
            ..Default::default()
        };
        assert!(from_flags(&f).is_err());
    }

    #[test]
    fn seccomp_flag() {
        let f = IsolatorFlags {
            seccomp: Some("mode=remove,errno=ENOTSUP,chmod,fchmodat"),
            ..Default::default()
        };
        let r = resolve(&from_flags(&f).unwrap(), false).unwrap();
        assert_eq!(
            r.seccomp,
            SeccompSpec::Remove {
                syscalls: vec!["chmod".into(), "fchmodat".into()],
                errno: Some("ENOTSUP".into())
            }
        );
        for bad in [
            "chmod",
            "mode=keep,chmod",
            "mode=retain",
            "mode=retain,errno=x,read",
        ] {
            let f = IsolatorFlags {
                seccomp: Some(bad),
                ..Default::default()
            };
            assert!(from_flags(&f).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_replace_image_isolators_of_the_same_kind() {
        let image = vec![
            Isolator {
                name: CAPS_REMOVE.into(),
                value: json!({"set": ["CAP_KILL"]}),
            },
            Isolator {
                name: MEMORY.into(),
                value: json!({"limit": "1G"}),
            },
        ];
        let f = IsolatorFlags {
            caps_retain: Some("CAP_CHOWN"),
            ..Default::default()
        };
        let merged = merge(&image, from_flags(&f).unwrap());
        let r = resolve(&merged, false).unwrap();
        assert_eq!(r.capabilities, vec!["CAP_CHOWN"]);
        assert_eq!(r.memory_limit, Some(1_000_000_000));
    }
}
