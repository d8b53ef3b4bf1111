//! OpenPGP public keys as `rkt trust` takes them (armored, as `gpg --armor --export` writes them,
//! or binary) and the signing keys a trusted key offers (its primary key and signing subkeys).

use anyhow::{anyhow, bail, Context};
use pgp::composed::{Deserializable, SignedPublicKey};
use pgp::types::{KeyDetails, VerifyingKey};

use crate::Result;

/// A trusted key file may hold at most this much: real keys are a few KiB, a key with many
/// signatures a few hundred.
pub const MAX_KEY_BYTES: usize = 1 << 20;

/// One public key, parsed and with its self-signatures checked.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    /// Lower-case hex of the primary key's fingerprint: the key's file name in the trust store.
    pub fingerprint: String,
    pub user_ids: Vec<String>,
    pub(crate) key: SignedPublicKey,
}

impl KeyInfo {
    /// The fingerprint in gpg's grouping (`8B86 DE38 … 2190`), as shown for review.
    pub fn fingerprint_grouped(&self) -> String {
        let up = self.fingerprint.to_ascii_uppercase();
        let groups: Vec<&str> = up
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).expect("hex is ascii"))
            .collect();
        let half = groups.len() / 2;
        format!("{}  {}", groups[..half].join(" "), groups[half..].join(" "))
    }

    /// The key, armored (what the trust store keeps).
    pub fn armored(&self) -> Result<Vec<u8>> {
        self.key
            .to_armored_bytes(Default::default())
            .map_err(|e| anyhow!("armoring key {}: {e}", self.fingerprint))
    }

    /// Keys that may have made a data signature: the primary key unless revoked, and subkeys
    /// whose latest binding allows signing and that are not revoked.
    pub(crate) fn signing_keys(&self) -> Vec<Signing<'_>> {
        let mut out = Vec::new();
        if self.revoked() {
            return out;
        }
        out.push(Signing::Primary(&self.key.primary_key));
        for sk in &self.key.public_subkeys {
            let revoked = sk
                .signatures
                .iter()
                .any(|s| s.typ() == Some(pgp::packet::SignatureType::SubkeyRevocation));
            let signs = sk
                .signatures
                .iter()
                .filter(|s| s.typ() == Some(pgp::packet::SignatureType::SubkeyBinding))
                .max_by_key(|s| s.created().map(|t| t.as_secs()))
                .is_some_and(|s| s.key_flags().sign());
            if signs && !revoked {
                out.push(Signing::Sub(&sk.key));
            }
        }
        out
    }

    /// A valid key revocation signature by the key itself.
    pub fn revoked(&self) -> bool {
        self.key
            .details
            .revocation_signatures
            .iter()
            .any(|s| s.verify_key(&self.key.primary_key).is_ok())
    }
}

/// A key that can verify data signatures: a primary key or a signing subkey.
#[derive(Clone, Copy)]
pub(crate) enum Signing<'a> {
    Primary(&'a pgp::packet::PublicKey),
    Sub(&'a pgp::packet::PublicSubkey),
}

impl Signing<'_> {
    pub(crate) fn as_dyn(&self) -> &dyn VerifyingKey {
        match self {
            Signing::Primary(k) => *k,
            Signing::Sub(k) => *k,
        }
    }

    /// Checks a signature over the data `data` yields.
    pub(crate) fn verify(
        &self,
        sig: &pgp::packet::Signature,
        data: impl std::io::Read,
    ) -> Result<()> {
        match self {
            Signing::Primary(k) => sig.verify(*k, data),
            Signing::Sub(k) => sig.verify(*k, data),
        }
        .map_err(|e| anyhow!("{e}"))
    }
}

/// Parses every public key in `data` (armored or binary) and checks its self-signatures. A
/// secret key is refused rather than silently reduced: it does not belong in a trust store.
pub fn parse_keys(data: &[u8]) -> Result<Vec<KeyInfo>> {
    if data.len() > MAX_KEY_BYTES {
        bail!("key data is larger than {MAX_KEY_BYTES} bytes");
    }
    if is_armored(data, "PRIVATE KEY BLOCK") {
        bail!("this is a secret key: give the public key (gpg --armor --export KEYID)");
    }
    let keys: Vec<SignedPublicKey> = if is_armored(data, "") {
        let (it, _) = SignedPublicKey::from_armor_many(data)
            .map_err(|e| anyhow!("not an armored OpenPGP public key: {e}"))?;
        it.collect::<std::result::Result<_, _>>()
            .map_err(|e| anyhow!("not a valid OpenPGP public key: {e}"))?
    } else {
        SignedPublicKey::from_bytes_many(data)
            .map_err(|e| anyhow!("not an OpenPGP public key: {e}"))?
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| anyhow!("not a valid OpenPGP public key: {e}"))?
    };
    if keys.is_empty() {
        bail!("no OpenPGP public key found");
    }
    keys.into_iter().map(key_info).collect()
}

fn key_info(key: SignedPublicKey) -> Result<KeyInfo> {
    let fingerprint = hex::encode(key.primary_key.fingerprint().as_bytes());
    key.verify_bindings()
        .map_err(|e| anyhow!("key {fingerprint}: its self-signatures do not verify: {e}"))?;
    let user_ids = key
        .details
        .users
        .iter()
        .map(|u| String::from_utf8_lossy(u.id.id()).into_owned())
        .collect();
    Ok(KeyInfo {
        fingerprint,
        user_ids,
        key,
    })
}

/// An ASCII-armored block (of `kind`, any kind when empty) starts the data, after whitespace.
pub(crate) fn is_armored(data: &[u8], kind: &str) -> bool {
    let s = data.trim_ascii_start();
    let head = b"-----BEGIN PGP ";
    s.starts_with(head) && s[head.len()..].starts_with(kind.as_bytes())
}

/// Reads one key file of the trust store.
pub(crate) fn read_key_file(path: &std::path::Path) -> Result<KeyInfo> {
    use std::io::Read;
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut data = Vec::new();
    f.take(MAX_KEY_BYTES as u64 + 1)
        .read_to_end(&mut data)
        .with_context(|| format!("reading {}", path.display()))?;
    let mut keys = parse_keys(&data).with_context(|| path.display().to_string())?;
    if keys.len() != 1 {
        bail!("{} holds {} keys, not one", path.display(), keys.len());
    }
    Ok(keys.remove(0))
}
