//! `rkt tpm log|verify|quote`: read the measurement log, check it against the TPM (and the pods'
//! files against the log), and produce quotes a remote verifier checks with tpm2-tools.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::global::Globals;
use crate::measure::{self, find_pod_dir, parse_event_data, read_pod_events, PodEvents};
use rkt_tpm::eventlog::type_name;
use rkt_tpm::{Bank, Event, Log};

#[derive(Args, Debug)]
pub struct TpmArgs {
    #[command(subcommand)]
    pub cmd: TpmCmd,
}

#[derive(Subcommand, Debug)]
pub enum TpmCmd {
    /// Print the measurement log (this TPM boot cycle's, or the one a pod was measured into)
    Log {
        /// Only this pod's entries (UUID or unambiguous prefix)
        #[arg(long, value_name = "UUID")]
        pod: Option<String>,
        /// Output format: table (default), json or json-pretty
        #[arg(long, default_value = "", value_name = "FORMAT")]
        format: String,
    },
    /// Replay the log, compare it with the TPM's PCRs, and re-check measured pod files
    Verify {
        /// Check this pod's entries and files (UUID or unambiguous prefix)
        #[arg(long, value_name = "UUID")]
        pod: Option<String>,
    },
    /// Sign the PCR values with a TPM attestation key, for a remote verifier
    Quote {
        /// Qualifying data (the verifier's nonce), hex, at most 64 bytes
        #[arg(long, value_name = "HEX")]
        nonce: String,
        /// Directory to write ak.pub.pem, quote.msg, quote.sig, quote.pcrs and eventlog.bin into
        #[arg(long, default_value = "rkt-quote", value_name = "DIR")]
        out: PathBuf,
    },
}

pub fn run(g: &Globals, a: TpmArgs) -> Result<i32> {
    match a.cmd {
        TpmCmd::Log { pod, format } => log(g, pod.as_deref(), &format),
        TpmCmd::Verify { pod } => verify(g, pod.as_deref()),
        TpmCmd::Quote { nonce, out } => quote(g, &nonce, &out),
    }
}

/// A pod's record, with its directory.
struct PodRef {
    uuid: String,
    dir: PathBuf,
    events: PodEvents,
}

fn pod_ref(g: &Globals, query: &str) -> Result<PodRef> {
    let (uuid, dir) = find_pod_dir(&g.dir, query)?;
    let events = read_pod_events(&dir)?
        .with_context(|| format!("pod {uuid} was not measured (no {})", measure::EVENTS_FILE))?;
    Ok(PodRef { uuid, dir, events })
}

/// The log to show when no pod is named: the current boot cycle's if the TPM answers, else the
/// most recently written one.
fn default_log(g: &Globals) -> Result<PathBuf> {
    let j = measure::journal(g);
    if let Ok(boot) = j.probe() {
        return Ok(j.log_path(boot));
    }
    let newest = std::fs::read_dir(&j.dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("eventlog-") && n.ends_with(".bin")
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
    match newest {
        Some(e) => Ok(e.path()),
        None => bail!("no TPM event log in {} (nothing measured)", j.dir.display()),
    }
}

fn read_log(path: &Path) -> Result<Log> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Log::parse(&bytes).with_context(|| format!("event log {}", path.display()))
}

/// One line saying what an event measured: its label, then its scalar details.
fn describe(ev: &Event) -> String {
    let Some((label, details)) = parse_event_data(&ev.data) else {
        return String::from_utf8_lossy(&ev.data).replace(['\n', '\t'], " ");
    };
    let mut s = label;
    if let Value::Object(m) = details {
        for (k, v) in m {
            let v = match v {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Null => continue,
                other => {
                    let t = other.to_string();
                    if t.chars().count() > 60 {
                        format!("{}…", t.chars().take(60).collect::<String>())
                    } else {
                        t
                    }
                }
            };
            s.push_str(&format!(" {k}={v}"));
        }
    }
    s
}

fn log(g: &Globals, pod: Option<&str>, format: &str) -> Result<i32> {
    if !matches!(format, "" | "table" | "json" | "json-pretty") {
        bail!("invalid --format {format:?} (expected json or json-pretty)");
    }
    let (path, only) = match pod {
        Some(q) => {
            let p = pod_ref(g, q)?;
            (
                measure::journal(g).dir.join(&p.events.log),
                Some(p.events.events),
            )
        }
        None => (default_log(g)?, None),
    };
    let log = if path.exists() || only.is_some() {
        read_log(&path)?
    } else {
        // Nothing measured in this boot cycle yet.
        Log {
            banks: Vec::new(),
            events: Vec::new(),
            offsets: Vec::new(),
        }
    };
    let selected: Vec<(usize, &Event)> = log
        .events
        .iter()
        .enumerate()
        .map(|(i, e)| (i + 1, e))
        .filter(|(i, _)| only.as_ref().is_none_or(|o| o.contains(i)))
        .collect();
    if format.starts_with("json") {
        let arr: Vec<Value> = selected
            .iter()
            .map(|(i, e)| {
                let digests: serde_json::Map<String, Value> = e
                    .digests
                    .iter()
                    .map(|(b, d)| (b.name().to_string(), json!(hex::encode(d))))
                    .collect();
                json!({
                    "index": i,
                    "pcr": e.pcr,
                    "type": type_name(e.event_type),
                    "digests": digests,
                    "event": String::from_utf8_lossy(&e.data),
                })
            })
            .collect();
        let out = if format == "json" {
            serde_json::to_string(&arr)?
        } else {
            serde_json::to_string_pretty(&arr)?
        };
        crate::outln!("{out}");
        return Ok(0);
    }
    let mut rows = vec![vec![
        "INDEX".to_string(),
        "PCR".into(),
        "TYPE".into(),
        "SHA256".into(),
        "DESCRIPTION".into(),
    ]];
    for (i, e) in &selected {
        rows.push(vec![
            i.to_string(),
            e.pcr.to_string(),
            type_name(e.event_type),
            e.digest(Bank::Sha256)
                .map(hex::encode)
                .unwrap_or_else(|| "-".into()),
            describe(e),
        ]);
    }
    crate::out!("{}", table(&rows));
    Ok(0)
}

/// Columns separated by two spaces, like rkt's tabwriter output.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = width[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The entry's number and description, for messages.
fn entry(i: usize, e: &Event) -> String {
    format!("entry {i} ({})", describe(e))
}

fn verify(g: &Globals, pod: Option<&str>) -> Result<i32> {
    let pod = pod.map(|q| pod_ref(g, q)).transpose()?;
    let pcr = measure::pcr(g)?;
    let j = measure::journal(g);
    let snap = j.snapshot(&[pcr])?;
    let boot = snap.boot.id();
    let log_path = match &pod {
        Some(p) if p.events.boot != boot => bail!(
            "pod {} was measured in TPM boot cycle {}, the TPM is now in boot cycle {boot}: its PCRs no longer hold those measurements",
            p.uuid,
            p.events.boot
        ),
        Some(p) => j.dir.join(&p.events.log),
        None => snap.log_path.clone(),
    };
    if snap.log_bytes.is_empty() {
        // Nothing measured this boot cycle: the PCRs must still be at their reset value.
        for (p, bank, v) in &snap.pcrs {
            if v.iter().any(|b| *b != 0) {
                bail!(
                    "PCR {p} ({bank}) is {} but there is no event log for this boot cycle ({}): it was extended outside rkt's log",
                    hex::encode(v),
                    log_path.display()
                );
            }
        }
        crate::outln!("no measurements in TPM boot cycle {boot}; PCR {pcr} is at its reset value");
        return Ok(0);
    }
    let log =
        Log::parse(&snap.log_bytes).with_context(|| format!("event log {}", log_path.display()))?;
    let n = log.events.len();

    // Each entry's digests must be the hashes of its event data, bank by bank.
    for (i, e) in log.events.iter().enumerate() {
        if let Some(bank) = e.mismatched_bank() {
            bail!(
                "{}: its {bank} digest is not the hash of its event data (the log was altered)",
                entry(i + 1, e)
            );
        }
    }
    // The replay of the whole log must equal the TPM, PCR by PCR, bank by bank.
    for (p, bank, tpm_value) in &snap.pcrs {
        let prefixes = log.replay_prefixes(*p, *bank);
        let replay = &prefixes[n];
        if replay == tpm_value {
            crate::outln!(
                "PCR {p} {bank:<6} {}  matches the replay of {n} log entries",
                hex::encode(tpm_value)
            );
            continue;
        }
        // A shorter prefix that matches means later entries were logged but never extended.
        if let Some(k) = (0..n).rev().find(|k| prefixes[*k] == *tpm_value) {
            bail!(
                "{}: logged but not in PCR {p} ({bank}); the TPM matches the log only up to entry {k}",
                entry(k + 1, &log.events[k])
            );
        }
        bail!(
            "PCR {p} ({bank}) is {} but the log replays to {}: no prefix of the log matches (an entry was removed or altered consistently, or the PCR was extended outside rkt)",
            hex::encode(tpm_value),
            hex::encode(replay)
        );
    }

    // The measured files of the pod(s) must still be what was measured.
    let mut checked = 0;
    for (i, e) in log.events.iter().enumerate() {
        let i = i + 1;
        let Some((label, d)) = parse_event_data(&e.data) else {
            continue;
        };
        let ev_pod = d.get("pod").and_then(Value::as_str).unwrap_or("");
        let pod_dir = match &pod {
            Some(p) => {
                if !p.events.events.contains(&i) {
                    continue;
                }
                if ev_pod != p.uuid {
                    bail!(
                        "{}: listed in {}/{} but it measured pod {ev_pod:?}",
                        entry(i, e),
                        p.dir.display(),
                        measure::EVENTS_FILE
                    );
                }
                p.dir.clone()
            }
            None => match find_pod_dir(&g.dir, ev_pod) {
                Ok((uuid, dir)) if uuid == ev_pod => dir,
                _ => continue, // the pod is gone (garbage collected): nothing left to check
            },
        };
        match label.as_str() {
            "rkt/pod-manifest" => {
                let want = d.get("sha256").and_then(Value::as_str).unwrap_or("");
                let file = pod_dir.join(d.get("file").and_then(Value::as_str).unwrap_or("pod"));
                let bytes = std::fs::read(&file)
                    .with_context(|| format!("{}: reading {}", entry(i, e), file.display()))?;
                let now = hex::encode(Sha256::digest(&bytes));
                if now != want {
                    bail!(
                        "{}: {} changed since it was measured (sha256 now {now})",
                        entry(i, e),
                        file.display()
                    );
                }
                checked += 1;
            }
            "rkt/app" => {
                let want = d.get("tree").and_then(Value::as_str).unwrap_or("");
                let Some(rootfs) = d.get("rootfs").and_then(Value::as_str) else {
                    continue;
                };
                let now = rkt_store::tree_digest(Path::new(rootfs))
                    .with_context(|| format!("{}: digesting {rootfs}", entry(i, e)))?;
                if now != want {
                    bail!(
                        "{}: the rendered tree {rootfs} changed since it was measured (digest now {now})",
                        entry(i, e)
                    );
                }
                checked += 1;
            }
            _ => {}
        }
    }
    if let Some(p) = &pod {
        crate::outln!(
            "pod {}: {} log entries, {checked} measured files unchanged",
            p.uuid,
            p.events.events.len()
        );
    }
    crate::outln!(
        "verified: {} ({n} entries) matches the TPM; {checked} measured pod files unchanged",
        log_path.display()
    );
    Ok(0)
}

fn quote(g: &Globals, nonce: &str, out: &Path) -> Result<i32> {
    let nonce_bytes = hex::decode(nonce.trim_start_matches("0x"))
        .map_err(|_| anyhow::anyhow!("--nonce {nonce:?} is not hex"))?;
    if nonce_bytes.len() > 64 {
        bail!("--nonce is {} bytes; at most 64", nonce_bytes.len());
    }
    let pcr = measure::pcr(g)?;
    let j = measure::journal(g);
    let (q, log, boot) = j.quote(pcr, &nonce_bytes)?;
    q.write_files(out, &log)?;
    let d = out.display();
    crate::outln!(
        "quote over PCR {pcr} (TPM boot cycle {}) written to {d}/",
        boot.id()
    );
    crate::outln!("verify with:");
    crate::outln!(
        "  tpm2_checkquote -u {d}/ak.pub.pem -m {d}/quote.msg -s {d}/quote.sig -f {d}/quote.pcrs -g sha256 -q {}",
        hex::encode(&nonce_bytes)
    );
    crate::outln!("  tpm2_eventlog {d}/eventlog.bin");
    Ok(0)
}
