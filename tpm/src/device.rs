//! A connection to a TPM 2.0 through tpm2-tss (tss-esapi), in tpm2-tools' TCTI syntax.
//!
//! Connections are short-lived on purpose: swtpm's socket server and some resource managers serve
//! one client at a time, so a pod must never keep the TPM open while it runs.

use std::ffi::CString;
use std::ptr::null_mut;
use std::str::FromStr;

use anyhow::{anyhow, bail, Context as _, Result};
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::{KeyHandle, ObjectHandle, PcrHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::structures::{
    Attest, CapabilityData, Data, Digest, DigestValues, EccPoint, EccScheme, HashScheme,
    KeyDerivationFunctionScheme, PcrSelectionList, PcrSelectionListBuilder, PcrSlot, Public,
    PublicBuilder, PublicEccParametersBuilder, Signature, SignatureScheme,
    SymmetricDefinitionObject,
};
use tss_esapi::tss2_esys;
use tss_esapi::{Context, TctiNameConf};

use crate::bank::Bank;

pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";

/// The TCTI to use: an explicit one (flag or config), else `TPM2TOOLS_TCTI` as tpm2-tools reads
/// it, else the kernel's resource manager.
pub fn resolve_tcti(explicit: Option<&str>) -> String {
    explicit
        .map(str::to_string)
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::env::var("TPM2TOOLS_TCTI")
                .ok()
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| DEFAULT_TCTI.to_string())
}

/// tpm2-tss logs warnings straight to stderr; rkt reports errors itself, in one line.
fn quiet_tss() {
    // Once per process, before the first connection (tpm2-tss reads it when it first logs).
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TSS2_LOG").is_none() {
            std::env::set_var("TSS2_LOG", "all+none");
        }
    });
}

/// The TPM's boot cycle: PCRs are reset exactly when one of these counters changes
/// (resetCount on TPM Reset, restartCount on TPM Restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootCycle {
    pub reset_count: u32,
    pub restart_count: u32,
}

impl BootCycle {
    pub fn id(&self) -> String {
        format!("{}-{}", self.reset_count, self.restart_count)
    }
}

/// tpm2-tss' base response codes (tss2_common.h) that a connection attempt can produce.
fn rc_text(rc: u32) -> String {
    let name = match rc & 0xffff {
        1 => "general failure",
        8 => "no connection",
        9 => "try again",
        10 => "I/O error",
        11 => "bad value",
        12 => "not permitted",
        20 => "incompatible TCTI",
        21 => "not supported",
        28 => "no configuration",
        29 => "bad path",
        _ => {
            return tss_esapi::Error::Tss2Error(
                tss_esapi::constants::response_code::Tss2ResponseCode::from(rc),
            )
            .to_string()
        }
    };
    format!("{name} (TSS2 rc {rc:#x})")
}

/// A missing device node is the common "no TPM" case: say so plainly.
fn check_device(tcti: &str) -> Result<()> {
    if let Some(path) = tcti.strip_prefix("device:") {
        let path = if path.is_empty() { "/dev/tpm0" } else { path };
        if !std::path::Path::new(path).exists() {
            bail!("no TPM at {tcti}: {path} does not exist");
        }
    }
    Ok(())
}
/// TPM2_ReadClock, which tss-esapi does not wrap: through the ESAPI C library directly, on a
/// connection of its own that is closed before returning.
pub fn read_clock(tcti: &str) -> Result<BootCycle> {
    quiet_tss();
    check_device(tcti)?;
    let conf = CString::new(tcti).map_err(|_| anyhow!("TCTI {tcti:?} contains a NUL byte"))?;
    // SAFETY: plain FFI calls following tpm2-tss' documented init/finalize sequence; every
    // pointer is either null-initialised and filled by the library or freed exactly once below.
    unsafe {
        let mut t: *mut tss2_esys::TSS2_TCTI_CONTEXT = null_mut();
        let rc = tss2_esys::Tss2_TctiLdr_Initialize(conf.as_ptr(), &mut t);
        if rc != 0 {
            bail!("cannot connect to the TPM at {tcti}: {}", rc_text(rc));
        }
        let mut esys: *mut tss2_esys::ESYS_CONTEXT = null_mut();
        let rc = tss2_esys::Esys_Initialize(&mut esys, t, null_mut());
        if rc != 0 {
            tss2_esys::Tss2_TctiLdr_Finalize(&mut t);
            bail!("cannot connect to the TPM at {tcti}: {}", rc_text(rc));
        }
        let mut info: *mut tss2_esys::TPMS_TIME_INFO = null_mut();
        let rc = tss2_esys::Esys_ReadClock(
            esys,
            tss2_esys::ESYS_TR_NONE,
            tss2_esys::ESYS_TR_NONE,
            tss2_esys::ESYS_TR_NONE,
            &mut info,
        );
        let out = if rc == 0 && !info.is_null() {
            let ci = (*info).clockInfo;
            Ok(BootCycle {
                reset_count: ci.resetCount,
                restart_count: ci.restartCount,
            })
        } else {
            Err(anyhow!("TPM2_ReadClock on {tcti} failed: {}", rc_text(rc)))
        };
        if !info.is_null() {
            tss2_esys::Esys_Free(info.cast());
        }
        tss2_esys::Esys_Finalize(&mut esys);
        tss2_esys::Tss2_TctiLdr_Finalize(&mut t);
        out
    }
}

pub struct Tpm {
    ctx: Context,
    pub tcti: String,
}

fn pcr_handle(pcr: u32) -> Result<PcrHandle> {
    if pcr > 23 {
        bail!("PCR {pcr} does not exist (a PC Client TPM has PCRs 0-23)");
    }
    PcrHandle::try_from(pcr as tss2_esys::ESYS_TR).map_err(|e| anyhow!("PCR {pcr}: {e}"))
}

fn pcr_slot(pcr: u32) -> Result<PcrSlot> {
    if pcr > 23 {
        bail!("PCR {pcr} does not exist (a PC Client TPM has PCRs 0-23)");
    }
    PcrSlot::try_from(1u32 << pcr).map_err(|e| anyhow!("PCR {pcr}: {e}"))
}

/// What `Tpm::quote` returns: the marshalled TPMS_ATTEST and TPMT_SIGNATURE, the PCR selection
/// and values (as read with the quote, in selection order), and the AK's public key.
pub struct Quote {
    pub message: Vec<u8>,
    pub signature: Vec<u8>,
    pub pcr_values: Vec<(Bank, u32, Vec<u8>)>,
    pub ak_pem: String,
    pub attest: Attest,
}

impl Tpm {
    pub fn connect(tcti: &str) -> Result<Tpm> {
        quiet_tss();
        check_device(tcti)?;
        let conf = TctiNameConf::from_str(tcti).map_err(|_| {
            anyhow!("invalid TCTI {tcti:?} (expected device:PATH, swtpm:host=H,port=P, mssim:… or tabrmd:…)")
        })?;
        let ctx =
            Context::new(conf).map_err(|e| anyhow!("cannot connect to the TPM at {tcti}: {e}"))?;
        Ok(Tpm {
            ctx,
            tcti: tcti.to_string(),
        })
    }

    /// The banks in which `pcr` is allocated (TPM2_GetCapability(TPM_CAP_PCRS)), in the TPM's order.
    pub fn active_banks(&mut self, pcr: u32) -> Result<Vec<Bank>> {
        let slot = pcr_slot(pcr)?;
        let (cap, _) = self
            .ctx
            .get_capability(CapabilityType::AssignedPcr, 0, 16)
            .map_err(|e| anyhow!("reading the TPM's PCR banks: {e}"))?;
        let CapabilityData::AssignedPcr(list) = cap else {
            bail!("the TPM answered TPM_CAP_PCRS with something else");
        };
        let mut banks = Vec::new();
        for sel in list.get_selections() {
            if sel.is_selected(slot) {
                banks.push(Bank::from_tss(sel.hashing_algorithm())?);
            }
        }
        if banks.is_empty() {
            bail!("PCR {pcr} is not allocated in any bank of the TPM");
        }
        Ok(banks)
    }

    fn selection(pcr: u32, banks: &[Bank]) -> Result<PcrSelectionList> {
        let slot = pcr_slot(pcr)?;
        let mut b = PcrSelectionListBuilder::new();
        for bank in banks {
            b = b.with_selection(bank.to_tss(), &[slot]);
        }
        b.build().map_err(|e| anyhow!("PCR selection: {e}"))
    }

    /// TPM2_PCR_Extend with one digest per bank.
    pub fn extend(&mut self, pcr: u32, digests: &[(Bank, Vec<u8>)]) -> Result<()> {
        let handle = pcr_handle(pcr)?;
        let mut vals = DigestValues::new();
        for (bank, d) in digests {
            vals.set(
                bank.to_tss(),
                Digest::try_from(d.clone()).map_err(|e| anyhow!("{bank} digest: {e}"))?,
            );
        }
        self.ctx
            .execute_with_nullauth_session(|c| c.pcr_extend(handle, vals))
            .map_err(|e| anyhow!("extending PCR {pcr}: {e}"))
    }

    /// TPM2_PCR_Read of one PCR in the given banks; values in the order of `banks`.
    pub fn read_pcr(&mut self, pcr: u32, banks: &[Bank]) -> Result<Vec<(Bank, Vec<u8>)>> {
        let mut out = Vec::new();
        // One bank per read: the answer order is then unambiguous.
        for bank in banks {
            let sel = Self::selection(pcr, &[*bank])?;
            let (_, _, digests) = self
                .ctx
                .execute_without_session(|c| c.pcr_read(sel))
                .map_err(|e| anyhow!("reading PCR {pcr} ({bank}): {e}"))?;
            let d = digests
                .value()
                .first()
                .with_context(|| format!("the TPM returned no value for PCR {pcr} ({bank})"))?;
            out.push((*bank, d.value().to_vec()));
        }
        Ok(out)
    }

    /// The attestation key: a restricted ECDSA P-256 signing key, created as a primary key in the
    /// endorsement hierarchy from a fixed template. Primary keys are derived from the hierarchy
    /// seed and the template, so the same TPM gives the same key every time without storing it.
    fn create_ak(&mut self) -> Result<(KeyHandle, Public)> {
        let attrs = ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_sensitive_data_origin(true)
            .with_user_with_auth(true)
            .with_restricted(true)
            .with_sign_encrypt(true)
            .build()
            .map_err(|e| anyhow!("AK attributes: {e}"))?;
        let params = PublicEccParametersBuilder::new()
            .with_ecc_scheme(EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)))
            .with_curve(EccCurve::NistP256)
            .with_is_signing_key(true)
            .with_is_decryption_key(false)
            .with_restricted(true)
            .with_symmetric(SymmetricDefinitionObject::Null)
            .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
            .build()
            .map_err(|e| anyhow!("AK parameters: {e}"))?;
        let template = PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attrs)
            .with_ecc_parameters(params)
            .with_ecc_unique_identifier(EccPoint::default())
            .build()
            .map_err(|e| anyhow!("AK template: {e}"))?;
        let r = self
            .ctx
            .execute_with_nullauth_session(|c| {
                c.create_primary(Hierarchy::Endorsement, template, None, None, None, None)
            })
            .map_err(|e| anyhow!("creating the attestation key: {e}"))?;
        Ok((r.key_handle, r.out_public))
    }

    /// TPM2_Quote over `pcr` in `banks` with `nonce` as qualifying data, signed by the AK.
    pub fn quote(&mut self, pcr: u32, banks: &[Bank], nonce: &[u8]) -> Result<Quote> {
        use tss_esapi::traits::Marshall;
        let (ak, public) = self.create_ak()?;
        let res = (|| -> Result<Quote> {
            let ak_pem = ecc_public_pem(&public)?;
            let data = Data::try_from(nonce.to_vec())
                .map_err(|_| anyhow!("nonce too long ({} bytes; at most 64)", nonce.len()))?;
            let sel = Self::selection(pcr, banks)?;
            let (attest, sig): (Attest, Signature) = self
                .ctx
                .execute_with_nullauth_session(|c| c.quote(ak, data, SignatureScheme::Null, sel))
                .map_err(|e| anyhow!("TPM2_Quote: {e}"))?;
            // The PCR file must list the banks in the quote's order (tss-esapi's selection
            // builder does not keep ours).
            let tss_esapi::structures::AttestInfo::Quote { info } = attest.attested() else {
                bail!("TPM2_Quote returned a non-quote attestation");
            };
            let mut order = Vec::new();
            for sel in info.pcr_selection().get_selections() {
                order.push(Bank::from_tss(sel.hashing_algorithm())?);
            }
            let pcr_values = self
                .read_pcr(pcr, &order)?
                .into_iter()
                .map(|(b, v)| (b, pcr, v))
                .collect();
            Ok(Quote {
                message: attest.marshall().map_err(|e| anyhow!("TPMS_ATTEST: {e}"))?,
                signature: sig.marshall().map_err(|e| anyhow!("TPMT_SIGNATURE: {e}"))?,
                pcr_values,
                ak_pem,
                attest,
            })
        })();
        // Transient objects outlive the connection on a TPM without a resource manager (swtpm).
        let flushed = self.ctx.flush_context(ObjectHandle::from(ak));
        let q = res?;
        flushed.map_err(|e| anyhow!("flushing the attestation key: {e}"))?;
        Ok(q)
    }
}

/// SubjectPublicKeyInfo (RFC 5480) of a P-256 key, PEM-encoded.
fn ecc_public_pem(public: &Public) -> Result<String> {
    let Public::Ecc { unique, .. } = public else {
        bail!("the attestation key is not an ECC key");
    };
    let pad = |v: &[u8]| -> Result<Vec<u8>> {
        if v.len() > 32 {
            bail!("ECC coordinate longer than 32 bytes");
        }
        let mut out = vec![0u8; 32 - v.len()];
        out.extend_from_slice(v);
        Ok(out)
    };
    // SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING 04||X||Y }
    let mut der = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
    der.push(0x04);
    der.extend(pad(unique.x().value())?);
    der.extend(pad(unique.y().value())?);
    let b64 = base64(&der);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    Ok(pem)
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// tpm2-tools' "serialized" PCR file (tpm2_quote -o, read by tpm2_checkquote -f): the in-memory
/// TPML_PCR_SELECTION (count + 16 × {hash u16, sizeofSelect u8, pcrSelect[4], pad}), a u32 count of
/// TPML_DIGEST blocks, then the blocks (count + 8 × {size u16, buffer[64]}); host (little) endian.
pub fn serialize_pcrs(values: &[(Bank, u32, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(values.len() as u32).to_le_bytes());
    for i in 0..16 {
        let mut e = [0u8; 8];
        if let Some((bank, pcr, _)) = values.get(i) {
            e[0..2].copy_from_slice(&bank.alg_id().to_le_bytes());
            e[2] = 3;
            e[3 + (*pcr / 8) as usize] = 1 << (pcr % 8);
        }
        out.extend_from_slice(&e);
    }
    let blocks: Vec<_> = values.chunks(8).collect();
    out.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
    for block in blocks {
        out.extend_from_slice(&(block.len() as u32).to_le_bytes());
        for i in 0..8 {
            let mut d = [0u8; 66];
            if let Some((_, _, v)) = block.get(i) {
                d[0..2].copy_from_slice(&(v.len() as u16).to_le_bytes());
                d[2..2 + v.len()].copy_from_slice(v);
            }
            out.extend_from_slice(&d);
        }
    }
    out
}

/// The files `rkt tpm quote` writes, as tpm2_checkquote and tpm2_eventlog read them.
pub const QUOTE_FILES: [&str; 5] = [
    "ak.pub.pem",
    "quote.msg",
    "quote.sig",
    "quote.pcrs",
    "eventlog.bin",
];

impl Quote {
    /// Writes ak.pub.pem, quote.msg, quote.sig, quote.pcrs and eventlog.bin into `dir`.
    pub fn write_files(&self, dir: &std::path::Path, log: &[u8]) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let pcrs = serialize_pcrs(&self.pcr_values);
        let contents: [&[u8]; 5] = [
            self.ak_pem.as_bytes(),
            &self.message,
            &self.signature,
            &pcrs,
            log,
        ];
        for (name, bytes) in QUOTE_FILES.iter().zip(contents) {
            let p = dir.join(name);
            std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn pcr_file_has_tpm2_tools_layout() {
        let f = serialize_pcrs(&[
            (Bank::Sha256, 15, vec![7; 32]),
            (Bank::Sha1, 15, vec![9; 20]),
        ]);
        // Same size as tpm2_quote's file for two banks: 132 + 4 + 532.
        assert_eq!(f.len(), 668);
        assert_eq!(&f[0..4], &[2, 0, 0, 0]);
        assert_eq!(&f[4..12], &[0x0b, 0, 3, 0, 0x80, 0, 0, 0]);
        assert_eq!(&f[12..20], &[0x04, 0, 3, 0, 0x80, 0, 0, 0]);
        assert_eq!(&f[132..140], &[1, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(&f[140..142], &[32, 0]);
        assert_eq!(f[142], 7);
    }

    #[test]
    fn tcti_resolution_order() {
        assert_eq!(resolve_tcti(Some("swtpm:port=1")), "swtpm:port=1");
        // With no explicit TCTI, the environment or the default applies.
        let r = resolve_tcti(None);
        match std::env::var("TPM2TOOLS_TCTI") {
            Ok(v) if !v.is_empty() => assert_eq!(r, v),
            _ => assert_eq!(r, DEFAULT_TCTI),
        }
    }
}
