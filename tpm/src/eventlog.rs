//! The TCG PC Client "crypto agile" event log format (TCG PC Client Platform Firmware Profile,
//! section 10): one `TCG_PCR_EVENT` header (EV_NO_ACTION, "Spec ID Event03", listing the banks and
//! their digest sizes), then `TCG_PCR_EVENT2` records. All integers little-endian.

use anyhow::{bail, Context, Result};

use crate::bank::Bank;

pub const EV_NO_ACTION: u32 = 0x3;
/// EV_IPL: "used for measurements of the initial program loader and what it loads"; rkt's stages
/// are what it loads, and tpm2-tools prints EV_IPL event data as text.
pub const EV_IPL: u32 = 0xd;

const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";
/// Written into the header's vendorInfo so that a reader can tell who wrote the log.
const VENDOR_INFO: &[u8] = b"rkt";
/// Refuse absurd sizes instead of allocating them when reading a damaged log.
const MAX_EVENT_SIZE: usize = 1 << 20;

/// One `TCG_PCR_EVENT2` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub pcr: u32,
    pub event_type: u32,
    /// (bank, digest) in the order of the header's algorithm list.
    pub digests: Vec<(Bank, Vec<u8>)>,
    pub data: Vec<u8>,
}

impl Event {
    /// An event whose digest in every bank is that bank's hash of the event data.
    pub fn new(pcr: u32, event_type: u32, banks: &[Bank], data: Vec<u8>) -> Event {
        let digests = banks.iter().map(|b| (*b, b.hash(&data))).collect();
        Event {
            pcr,
            event_type,
            digests,
            data,
        }
    }

    pub fn digest(&self, bank: Bank) -> Option<&[u8]> {
        self.digests
            .iter()
            .find(|(b, _)| *b == bank)
            .map(|(_, d)| d.as_slice())
    }

    /// The first bank whose digest is not that bank's hash of the event data.
    pub fn mismatched_bank(&self) -> Option<Bank> {
        self.digests
            .iter()
            .find(|(b, d)| b.hash(&self.data) != *d)
            .map(|(b, _)| *b)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.pcr.to_le_bytes());
        out.extend_from_slice(&self.event_type.to_le_bytes());
        out.extend_from_slice(&(self.digests.len() as u32).to_le_bytes());
        for (bank, d) in &self.digests {
            out.extend_from_slice(&bank.alg_id().to_le_bytes());
            out.extend_from_slice(d);
        }
        out.extend_from_slice(&(self.data.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.data);
        out
    }
}

/// The header event (TCG_PCR_EVENT with a TCG_EfiSpecIDEvent) for the given banks.
pub fn encode_header(banks: &[Bank]) -> Vec<u8> {
    let mut spec = Vec::new();
    spec.extend_from_slice(SPEC_ID_SIGNATURE);
    spec.extend_from_slice(&0u32.to_le_bytes()); // platformClass: client
    spec.extend_from_slice(&[0, 2, 0, 2]); // specVersionMinor, Major, errata, uintnSize (UINT64)
    spec.extend_from_slice(&(banks.len() as u32).to_le_bytes());
    for b in banks {
        spec.extend_from_slice(&b.alg_id().to_le_bytes());
        spec.extend_from_slice(&(b.digest_size() as u16).to_le_bytes());
    }
    spec.push(VENDOR_INFO.len() as u8);
    spec.extend_from_slice(VENDOR_INFO);

    let mut out = Vec::new();
    out.extend_from_slice(&0u32.to_le_bytes()); // pcrIndex
    out.extend_from_slice(&EV_NO_ACTION.to_le_bytes());
    out.extend_from_slice(&[0u8; 20]); // SHA-1 sized digest, zero for EV_NO_ACTION
    out.extend_from_slice(&(spec.len() as u32).to_le_bytes());
    out.extend_from_slice(&spec);
    out
}

/// A parsed log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    pub banks: Vec<Bank>,
    pub events: Vec<Event>,
    /// Byte offset where each event starts (parallel to `events`), then the end of the last one.
    pub offsets: Vec<usize>,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() - self.pos < n {
            bail!(
                "truncated at byte {} (needed {n} more bytes, {} left)",
                self.pos,
                self.buf.len() - self.pos
            );
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
}

impl Log {
    /// Parses a whole log. Event numbers in errors count the header as event 0, like tpm2_eventlog.
    pub fn parse(buf: &[u8]) -> Result<Log> {
        let mut r = Reader { buf, pos: 0 };
        let banks = parse_header(&mut r).context("event log header (event 0)")?;
        let mut events = Vec::new();
        let mut offsets = Vec::new();
        while r.pos < buf.len() {
            let start = r.pos;
            let n = events.len() + 1;
            let ev = parse_event(&mut r, &banks)
                .with_context(|| format!("event log entry {n} (at byte {start})"))?;
            offsets.push(start);
            events.push(ev);
        }
        offsets.push(r.pos);
        Ok(Log {
            banks,
            events,
            offsets,
        })
    }

    /// The value of `pcr` in `bank` after replaying the first `n` events from the reset value.
    pub fn replay(&self, pcr: u32, bank: Bank, n: usize) -> Vec<u8> {
        let mut v = bank.zero();
        for ev in self.events.iter().take(n).filter(|e| e.pcr == pcr) {
            if ev.event_type == EV_NO_ACTION {
                continue;
            }
            if let Some(d) = ev.digest(bank) {
                v = bank.extend(&v, d);
            }
        }
        v
    }

    /// The value of `pcr` in `bank` after each prefix of the log: element k is `replay(pcr, bank, k)`.
    pub fn replay_prefixes(&self, pcr: u32, bank: Bank) -> Vec<Vec<u8>> {
        let mut v = bank.zero();
        let mut out = vec![v.clone()];
        for ev in &self.events {
            if ev.pcr == pcr && ev.event_type != EV_NO_ACTION {
                if let Some(d) = ev.digest(bank) {
                    v = bank.extend(&v, d);
                }
            }
            out.push(v.clone());
        }
        out
    }

    /// Every PCR index the log extends.
    pub fn pcrs(&self) -> Vec<u32> {
        let mut p: Vec<u32> = self
            .events
            .iter()
            .filter(|e| e.event_type != EV_NO_ACTION)
            .map(|e| e.pcr)
            .collect();
        p.sort_unstable();
        p.dedup();
        p
    }
}

fn parse_header(r: &mut Reader) -> Result<Vec<Bank>> {
    let pcr = r.u32()?;
    let ty = r.u32()?;
    let _digest = r.take(20)?;
    let size = r.u32()? as usize;
    if pcr != 0 || ty != EV_NO_ACTION {
        bail!("not a crypto-agile log: first event is PCR {pcr} type {ty:#x}, expected PCR 0 EV_NO_ACTION");
    }
    if size > MAX_EVENT_SIZE {
        bail!("header size {size} is implausible");
    }
    let mut s = Reader {
        buf: r.take(size)?,
        pos: 0,
    };
    if s.take(16)? != SPEC_ID_SIGNATURE {
        bail!("no \"Spec ID Event03\" signature");
    }
    let _platform_class = s.u32()?;
    let _minor = s.u8()?;
    let major = s.u8()?;
    let _errata = s.u8()?;
    let _uintn = s.u8()?;
    if major != 2 {
        bail!("spec version major {major}, expected 2");
    }
    let n = s.u32()?;
    if n == 0 || n > 16 {
        bail!("{n} algorithms listed");
    }
    let mut banks = Vec::new();
    for _ in 0..n {
        let id = s.u16()?;
        let size = s.u16()? as usize;
        let bank = Bank::from_alg_id(id)
            .with_context(|| format!("unsupported algorithm {id:#06x} in the header"))?;
        if bank.digest_size() != size {
            bail!("{bank} listed with digest size {size}");
        }
        banks.push(bank);
    }
    let vlen = s.u8()? as usize;
    s.take(vlen)?;
    Ok(banks)
}

fn parse_event(r: &mut Reader, banks: &[Bank]) -> Result<Event> {
    let pcr = r.u32()?;
    let event_type = r.u32()?;
    let count = r.u32()? as usize;
    if count > banks.len() {
        bail!(
            "{count} digests but the header lists {} algorithms",
            banks.len()
        );
    }
    let mut digests = Vec::with_capacity(count);
    for _ in 0..count {
        let id = r.u16()?;
        let bank = Bank::from_alg_id(id)
            .filter(|b| banks.contains(b))
            .with_context(|| format!("digest algorithm {id:#06x} is not listed in the header"))?;
        digests.push((bank, r.take(bank.digest_size())?.to_vec()));
    }
    let size = r.u32()? as usize;
    if size > MAX_EVENT_SIZE {
        bail!("event size {size} is implausible");
    }
    let data = r.take(size)?.to_vec();
    Ok(Event {
        pcr,
        event_type,
        digests,
        data,
    })
}

/// tpm2_eventlog's name for an event type.
pub fn type_name(t: u32) -> String {
    match t {
        EV_NO_ACTION => "EV_NO_ACTION".into(),
        EV_IPL => "EV_IPL".into(),
        0x6 => "EV_EVENT_TAG".into(),
        0xc => "EV_COMPACT_HASH".into(),
        other => format!("{other:#x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let banks = [Bank::Sha1, Bank::Sha256, Bank::Sha384];
        let mut buf = encode_header(&banks);
        for (i, text) in ["rkt/stage0 {}", "rkt/app {\"app\":\"a\"}", ""]
            .iter()
            .enumerate()
        {
            let pcr = if i == 1 { 16 } else { 15 };
            buf.extend(Event::new(pcr, EV_IPL, &banks, text.as_bytes().to_vec()).encode());
        }
        buf
    }

    #[test]
    fn parses_what_it_writes() {
        let buf = sample();
        let log = Log::parse(&buf).unwrap();
        assert_eq!(log.banks, vec![Bank::Sha1, Bank::Sha256, Bank::Sha384]);
        assert_eq!(log.events.len(), 3);
        assert_eq!(log.events[1].pcr, 16);
        assert_eq!(log.events[1].data, b"rkt/app {\"app\":\"a\"}");
        assert_eq!(log.events[2].data, b"");
        assert_eq!(*log.offsets.last().unwrap(), buf.len());
        assert!(log.events.iter().all(|e| e.mismatched_bank().is_none()));
        assert_eq!(log.pcrs(), vec![15, 16]);
        // Re-encoding gives the same bytes.
        let mut again = encode_header(&log.banks);
        for e in &log.events {
            again.extend(e.encode());
        }
        assert_eq!(again, buf);
    }

    #[test]
    fn header_layout_matches_the_spec() {
        let h = encode_header(&[Bank::Sha256]);
        // pcrIndex 0, EV_NO_ACTION, 20 zero bytes, size, signature.
        assert_eq!(&h[0..8], &[0, 0, 0, 0, 3, 0, 0, 0]);
        assert_eq!(&h[8..28], &[0u8; 20]);
        let size = u32::from_le_bytes(h[28..32].try_into().unwrap()) as usize;
        assert_eq!(h.len(), 32 + size);
        assert_eq!(&h[32..48], b"Spec ID Event03\0");
        // one algorithm: sha256 (0x000b), 32 bytes
        assert_eq!(&h[56..60], &[1, 0, 0, 0]);
        assert_eq!(&h[60..64], &[0x0b, 0, 32, 0]);
    }

    #[test]
    fn replay_is_extend_chain() {
        let log = Log::parse(&sample()).unwrap();
        let b = Bank::Sha256;
        let mut v = b.zero();
        v = b.extend(&v, &b.hash(b"rkt/stage0 {}"));
        v = b.extend(&v, &b.hash(b""));
        assert_eq!(log.replay(15, b, 3), v);
        assert_eq!(log.replay(15, b, 0), b.zero());
        let prefixes = log.replay_prefixes(15, b);
        assert_eq!(prefixes.len(), 4);
        for (k, p) in prefixes.iter().enumerate() {
            assert_eq!(*p, log.replay(15, b, k));
        }
    }

    #[test]
    fn damage_is_detected() {
        let buf = sample();
        // Truncated final record.
        let err = Log::parse(&buf[..buf.len() - 1]).unwrap_err();
        assert!(format!("{err:#}").contains("entry 3"), "{err:#}");
        // A flipped byte in the event data is parsed but no longer matches its digests.
        let log = Log::parse(&buf).unwrap();
        // Event 0's data starts after 12 bytes, 3 (alg, digest) pairs and the size.
        let data_at = log.offsets[0] + 12 + (2 + 20) + (2 + 32) + (2 + 48) + 4;
        let mut bad = buf.clone();
        bad[data_at + 1] ^= 1;
        let log2 = Log::parse(&bad).unwrap();
        let n = log2
            .events
            .iter()
            .position(|e| e.mismatched_bank().is_some());
        assert_eq!(n, Some(0));
        // A flipped byte in event 1's sha256 digest: that bank no longer matches.
        let mut bad = buf.clone();
        bad[log.offsets[1] + 40] ^= 1;
        let log2 = Log::parse(&bad).unwrap();
        assert_eq!(log2.events[1].mismatched_bank(), Some(Bank::Sha256));
        assert!(log2.events[0].mismatched_bank().is_none());
        // Not a log at all.
        assert!(Log::parse(b"hello world, this is not an event log at all").is_err());
        // Unknown digest algorithm.
        let mut bad = buf.clone();
        bad[log.offsets[0] + 12] = 0x99;
        assert!(Log::parse(&bad).is_err());
    }
}
