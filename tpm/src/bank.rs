//! The PCR banks (hash algorithms) rkt knows how to compute digests for.

use anyhow::{bail, Result};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha384, Sha512};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;

/// A PCR bank, named by its TCG algorithm identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Bank {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Bank {
    pub const ALL: [Bank; 4] = [Bank::Sha1, Bank::Sha256, Bank::Sha384, Bank::Sha512];

    /// TPM_ALG_ID.
    pub fn alg_id(self) -> u16 {
        match self {
            Bank::Sha1 => 0x0004,
            Bank::Sha256 => 0x000b,
            Bank::Sha384 => 0x000c,
            Bank::Sha512 => 0x000d,
        }
    }

    pub fn from_alg_id(id: u16) -> Option<Bank> {
        Bank::ALL.into_iter().find(|b| b.alg_id() == id)
    }

    pub fn digest_size(self) -> usize {
        match self {
            Bank::Sha1 => 20,
            Bank::Sha256 => 32,
            Bank::Sha384 => 48,
            Bank::Sha512 => 64,
        }
    }

    /// tpm2-tools' name for the algorithm.
    pub fn name(self) -> &'static str {
        match self {
            Bank::Sha1 => "sha1",
            Bank::Sha256 => "sha256",
            Bank::Sha384 => "sha384",
            Bank::Sha512 => "sha512",
        }
    }

    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Bank::Sha1 => Sha1::digest(data).to_vec(),
            Bank::Sha256 => Sha256::digest(data).to_vec(),
            Bank::Sha384 => Sha384::digest(data).to_vec(),
            Bank::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// PCR extend: new = H(old || digest).
    pub fn extend(self, pcr: &[u8], digest: &[u8]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(pcr.len() + digest.len());
        buf.extend_from_slice(pcr);
        buf.extend_from_slice(digest);
        self.hash(&buf)
    }

    /// Value of a PCR after TPM2_Startup(CLEAR) for PCRs 0–15 and 16–23 (all zeros).
    pub fn zero(self) -> Vec<u8> {
        vec![0; self.digest_size()]
    }

    pub fn to_tss(self) -> HashingAlgorithm {
        match self {
            Bank::Sha1 => HashingAlgorithm::Sha1,
            Bank::Sha256 => HashingAlgorithm::Sha256,
            Bank::Sha384 => HashingAlgorithm::Sha384,
            Bank::Sha512 => HashingAlgorithm::Sha512,
        }
    }

    pub fn from_tss(h: HashingAlgorithm) -> Result<Bank> {
        Ok(match h {
            HashingAlgorithm::Sha1 => Bank::Sha1,
            HashingAlgorithm::Sha256 => Bank::Sha256,
            HashingAlgorithm::Sha384 => Bank::Sha384,
            HashingAlgorithm::Sha512 => Bank::Sha512,
            other => bail!("the TPM has an active PCR bank rkt cannot compute ({other:?})"),
        })
    }
}

impl std::fmt::Display for Bank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
