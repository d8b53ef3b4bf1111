//! Measure-and-log: every extend rkt makes is appended to the event log of the current TPM boot
//! cycle, `<dir>/tpm/eventlog-<resetCount>-<restartCount>.bin`, under an exclusive lock on
//! `<dir>/tpm/lock`, so that concurrent pods append in exactly the order they extend.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use rkt_flock::{Flock, Mode};

use crate::bank::Bank;
use crate::device::{read_clock, BootCycle, Quote, Tpm};
use crate::eventlog::{encode_header, Event, Log, EV_IPL};

/// Where one measurement went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub log: PathBuf,
    pub boot: BootCycle,
    /// Event number in the log; the Spec ID header is event 0, as tpm2_eventlog counts.
    pub index: usize,
}

/// The log and the PCR values, read together under the lock.
pub struct Snapshot {
    pub boot: BootCycle,
    pub log_path: PathBuf,
    /// Empty when nothing was measured in this boot cycle.
    pub log_bytes: Vec<u8>,
    /// (pcr, bank, value).
    pub pcrs: Vec<(u32, Bank, Vec<u8>)>,
}

pub struct Journal {
    /// `<dir>/tpm`.
    pub dir: PathBuf,
    pub tcti: String,
}

impl Journal {
    pub fn new(data_dir: &Path, tcti: &str) -> Journal {
        Journal {
            dir: data_dir.join("tpm"),
            tcti: tcti.to_string(),
        }
    }

    pub fn log_path(&self, boot: BootCycle) -> PathBuf {
        self.dir.join(format!("eventlog-{}.bin", boot.id()))
    }

    /// `<dir>/tpm/lock`, held until dropped.
    fn lock(&self, mode: Mode) -> Result<Flock> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let path = self.dir.join("lock");
        let f = rkt_flock::open_lock_file(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Flock::lock(f, mode).with_context(|| format!("locking {}", path.display()))
    }

    /// Is the TPM there and answering? Returns its boot cycle.
    pub fn probe(&self) -> Result<BootCycle> {
        read_clock(&self.tcti)
    }

    /// Extends `pcr` with each active bank's hash of `data` and appends the EV_IPL event to the log.
    pub fn measure(&self, pcr: u32, data: &[u8]) -> Result<Logged> {
        let _lock = self.lock(Mode::Exclusive)?;
        let boot = read_clock(&self.tcti)?;
        let path = self.log_path(boot);
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening the event log {}", path.display()))?;
        let mut tpm = Tpm::connect(&self.tcti)?;
        let banks = tpm.active_banks(pcr)?;

        let mut buf = Vec::new();
        f.read_to_end(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if buf.is_empty() {
            buf = encode_header(&banks);
            write_at_end(&mut f, 0, &buf, &path)?;
        }
        let log = Log::parse(&buf).with_context(|| {
            format!(
                "the event log {} is damaged (move it aside to start a new one; PCR replay will not match)",
                path.display()
            )
        })?;
        if log.banks != banks {
            bail!(
                "the event log {} lists banks {:?} but the TPM has {:?} active for PCR {pcr}",
                path.display(),
                log.banks.iter().map(|b| b.name()).collect::<Vec<_>>(),
                banks.iter().map(|b| b.name()).collect::<Vec<_>>()
            );
        }
        let len = buf.len() as u64;
        let ev = Event::new(pcr, EV_IPL, &banks, data.to_vec());
        // Log first, then extend: if the extend fails the entry is cut off again, so the log never
        // claims an extend the TPM did not make (a crash in between leaves one surplus entry,
        // which `verify` names).
        write_at_end(&mut f, len, &ev.encode(), &path)?;
        if let Err(e) = tpm.extend(pcr, &ev.digests) {
            let _ = f.set_len(len).and_then(|_| f.sync_all());
            return Err(e);
        }
        Ok(Logged {
            log: path,
            boot,
            index: log.events.len() + 1,
        })
    }

    /// Reads the current boot cycle's log and the values of `pcrs` (plus every PCR the log
    /// extends) under a shared lock, so no measurement lands in between.
    pub fn snapshot(&self, pcrs: &[u32]) -> Result<Snapshot> {
        let _lock = self.lock(Mode::Shared)?;
        let boot = read_clock(&self.tcti)?;
        let log_path = self.log_path(boot);
        let log_bytes = match std::fs::read(&log_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", log_path.display())),
        };
        let mut tpm = Tpm::connect(&self.tcti)?;
        let parsed = (!log_bytes.is_empty())
            .then(|| Log::parse(&log_bytes))
            .and_then(Result::ok);
        let mut all: Vec<u32> = pcrs.to_vec();
        if let Some(l) = &parsed {
            all.extend(l.pcrs());
        }
        all.sort_unstable();
        all.dedup();
        let mut values = Vec::new();
        for pcr in all {
            let banks = match &parsed {
                Some(l) => l.banks.clone(),
                None => tpm.active_banks(pcr)?,
            };
            for (bank, v) in tpm.read_pcr(pcr, &banks)? {
                values.push((pcr, bank, v));
            }
        }
        Ok(Snapshot {
            boot,
            log_path,
            log_bytes,
            pcrs: values,
        })
    }

    /// A quote over `pcr` in every active bank, with the log as it was when quoted.
    pub fn quote(&self, pcr: u32, nonce: &[u8]) -> Result<(Quote, Vec<u8>, BootCycle)> {
        let _lock = self.lock(Mode::Shared)?;
        let boot = read_clock(&self.tcti)?;
        let log_bytes = std::fs::read(self.log_path(boot)).unwrap_or_default();
        let mut tpm = Tpm::connect(&self.tcti)?;
        let banks = tpm.active_banks(pcr)?;
        // Nothing measured yet: a log with the header only, which still parses.
        let log_bytes = if log_bytes.is_empty() {
            encode_header(&banks)
        } else {
            log_bytes
        };
        let q = tpm.quote(pcr, &banks, nonce)?;
        Ok((q, log_bytes, boot))
    }
}

fn write_at_end(f: &mut File, at: u64, bytes: &[u8], path: &Path) -> Result<()> {
    f.seek(SeekFrom::Start(at))
        .and_then(|_| f.write_all(bytes))
        .and_then(|_| f.sync_all())
        .map_err(|e| anyhow!("writing the event log {}: {e}", path.display()))
}
