//! Image trust, rkt v1's model (docs/trust.md): armored OpenPGP public keys trusted for an image
//! name prefix (`trustedkeys/prefix.d/<prefix>/<fingerprint>`) or for every image
//! (`trustedkeys/root.d/<fingerprint>`), under `<local-config>` (written by `rkt trust`) and
//! `<system-config>` (read only). A fetch checks, before anything enters the store, that the
//! image is signed by such a key: ACIs with a detached signature over the file, OCI and Docker
//! images with containers' simple signing over the manifest digest.

mod keys;
pub mod registries;
pub mod simple;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use pgp::types::VerifyingKey;

use keys::Signing;
use serde::{Deserialize, Serialize};

pub use keys::{parse_keys, KeyInfo};

use crate::source::{parse_docker, DockerRef};
use crate::{FetchOptions, Result, Store};

/// Where trusted keys live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustConfig {
    /// `--local-config` (default /etc/rkt): `rkt trust` writes its `trustedkeys/`.
    pub local_config: PathBuf,
    /// `--system-config` (default /usr/lib/rkt): keys a distribution ships, honoured, not written.
    pub system_config: PathBuf,
    /// `--trust-keys-from-https`: an appc-discovered image whose name no prefix key covers gets
    /// the keys its `ac-discovery-pubkeys` name (over authenticated https), trusted for its name.
    pub trust_keys_from_https: bool,
}

impl Default for TrustConfig {
    fn default() -> Self {
        TrustConfig {
            local_config: PathBuf::from("/etc/rkt"),
            system_config: PathBuf::from("/usr/lib/rkt"),
            trust_keys_from_https: false,
        }
    }
}

/// What a fetch checks. The default verifies against the default trust store.
#[derive(Debug, Clone, Default)]
pub struct Verify {
    /// `--insecure-options=image`: no signature check.
    pub skip: bool,
    pub config: TrustConfig,
    /// `--signature=FILE`: the signature of this image (else `IMAGE.aci.asc` beside an ACI,
    /// or the registry's lookaside signatures).
    pub signature: Option<PathBuf>,
    /// Do not print who signed.
    pub quiet: bool,
}

impl Verify {
    pub fn skip() -> Verify {
        Verify {
            skip: true,
            ..Default::default()
        }
    }
}

/// Whom a key is trusted for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Root,
    Prefix(String),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Root => f.write_str("(root)"),
            Scope::Prefix(p) => f.write_str(p),
        }
    }
}

/// Longest prefix accepted; image names are far shorter.
const MAX_PREFIX: usize = 1024;

impl Scope {
    /// A `--prefix` value: an image name or a leading part of one, whole `/` components
    /// (`example.com/app` covers `example.com/app` and `example.com/app/x`, not `example.com/apps`).
    pub fn prefix(p: &str) -> Result<Scope> {
        let p = p.trim().trim_end_matches('/');
        if p.is_empty() {
            bail!("empty prefix (use --root to trust a key for every image)");
        }
        if p.len() > MAX_PREFIX || p.contains('\0') {
            bail!("invalid prefix {p:?}");
        }
        if p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            bail!("invalid prefix {p:?}: empty, . or .. component");
        }
        if p.contains("://") {
            bail!("invalid prefix {p:?}: give an image name prefix, not a URL");
        }
        Ok(Scope::Prefix(p.to_string()))
    }

    /// Whether a key in this scope may sign an image named `name`.
    pub fn covers(&self, name: &str) -> bool {
        match self {
            Scope::Root => true,
            Scope::Prefix(p) => {
                name == p || (name.starts_with(p.as_str()) && name[p.len()..].starts_with('/'))
            }
        }
    }

    /// `trustedkeys/root.d` or `trustedkeys/prefix.d/<escaped components>` under `config`.
    pub fn dir(&self, config: &Path) -> PathBuf {
        let base = config.join("trustedkeys");
        match self {
            Scope::Root => base.join("root.d"),
            Scope::Prefix(p) => {
                let mut d = base.join("prefix.d");
                for c in p.split('/') {
                    d.push(escape(c));
                }
                d
            }
        }
    }
}

/// Path component for a prefix component: characters outside `[A-Za-z0-9._~:-]` as `%XX`
/// (image names with ports keep their colon; nothing can spell `..` or a separator).
fn escape(c: &str) -> String {
    let mut s = String::new();
    for b in c.bytes() {
        if b.is_ascii_alphanumeric() || b"._~:-".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

fn unescape(c: &str) -> Option<String> {
    let b = c.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = c.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A key file of the trust store.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub scope: Scope,
    pub path: PathBuf,
    /// From `<system-config>` (read only for rkt).
    pub system: bool,
    pub info: KeyInfo,
}

/// Every key of the trust store, and the files that could not be used (with why).
#[derive(Debug, Default)]
pub struct KeyRing {
    pub keys: Vec<TrustedKey>,
    pub problems: Vec<(PathBuf, String)>,
}

/// prefix.d is nested one directory per name component; names are not this deep.
const MAX_PREFIX_DEPTH: usize = 64;

impl TrustConfig {
    fn roots(&self) -> [(&Path, bool); 2] {
        [(&self.local_config, false), (&self.system_config, true)]
    }

    /// Reads both trust stores.
    pub fn keyring(&self) -> KeyRing {
        let mut ring = KeyRing::default();
        for (root, system) in self.roots() {
            let base = root.join("trustedkeys");
            read_dir_keys(&base.join("root.d"), Scope::Root, system, &mut ring);
            walk_prefixes(&base.join("prefix.d"), &mut Vec::new(), system, &mut ring);
        }
        ring.keys
            .sort_by(|a, b| (&a.scope, a.system, &a.path).cmp(&(&b.scope, b.system, &b.path)));
        ring
    }

    /// Stores `key` in the local trust store for `scope`; returns where.
    pub fn add(&self, scope: &Scope, key: &KeyInfo) -> Result<PathBuf> {
        use std::io::Write;
        let dir = scope.dir(&self.local_config);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(&key.fingerprint);
        let mut tmp = tempfile::Builder::new()
            .prefix(".key-")
            .tempfile_in(&dir)
            .with_context(|| format!("writing in {}", dir.display()))?;
        tmp.write_all(&key.armored()?)?;
        tmp.as_file().sync_all()?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))?;
        }
        tmp.persist(&path)
            .map_err(|e| anyhow!("writing {}: {}", path.display(), e.error))?;
        Ok(path)
    }

    /// Removes local key files whose fingerprint starts with `fingerprint` (at least 8 hex
    /// digits; spaces ignored), in `scope` or in every scope. System keys are never removed.
    pub fn remove(&self, fingerprint: &str, scope: Option<&Scope>) -> Result<Vec<TrustedKey>> {
        let want: String = fingerprint
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase();
        let want = want.strip_prefix("0x").unwrap_or(&want).to_string();
        if want.len() < 8 || !want.chars().all(|c| c.is_ascii_hexdigit()) {
            bail!("invalid fingerprint {fingerprint:?}: give at least 8 hex digits");
        }
        let ring = self.keyring();
        let matching: Vec<TrustedKey> = ring
            .keys
            .into_iter()
            .filter(|k| k.info.fingerprint.starts_with(&want))
            .filter(|k| scope.is_none_or(|s| *s == k.scope))
            .collect();
        let fps: std::collections::BTreeSet<&str> = matching
            .iter()
            .map(|k| k.info.fingerprint.as_str())
            .collect();
        if fps.len() > 1 {
            bail!(
                "fingerprint {fingerprint:?} is ambiguous: it matches {} keys",
                fps.len()
            );
        }
        let (system, local): (Vec<_>, Vec<_>) = matching.into_iter().partition(|k| k.system);
        if local.is_empty() {
            match system.first() {
                Some(k) => bail!(
                    "key {} is in the system configuration ({}): rkt does not change it",
                    k.info.fingerprint,
                    k.path.display()
                ),
                None => bail!("no trusted key matches {fingerprint:?}"),
            }
        }
        for k in &local {
            std::fs::remove_file(&k.path)
                .with_context(|| format!("removing {}", k.path.display()))?;
            // Drop the prefix's directories once empty, up to prefix.d.
            let stop = self.local_config.join("trustedkeys");
            let mut d = k.path.parent();
            while let Some(dir) = d {
                if dir == stop || !dir.starts_with(&stop) || std::fs::remove_dir(dir).is_err() {
                    break;
                }
                d = dir.parent();
            }
        }
        Ok(local)
    }
}

fn read_dir_keys(dir: &Path, scope: Scope, system: bool, ring: &mut KeyRing) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let Ok(ft) = e.file_type() else { continue };
        let name = e.file_name().to_string_lossy().into_owned();
        if !ft.is_file() || name.starts_with('.') {
            continue;
        }
        match keys::read_key_file(&path) {
            Ok(info) if info.fingerprint == name.to_ascii_lowercase() => {
                ring.keys.push(TrustedKey {
                    scope: scope.clone(),
                    path,
                    system,
                    info,
                })
            }
            Ok(info) => ring.problems.push((
                path,
                format!("holds key {}, not the one its name says", info.fingerprint),
            )),
            Err(e) => ring.problems.push((path, format!("{e:#}"))),
        }
    }
}

fn walk_prefixes(dir: &Path, comps: &mut Vec<String>, system: bool, ring: &mut KeyRing) {
    if comps.len() > MAX_PREFIX_DEPTH {
        return;
    }
    if !comps.is_empty() {
        read_dir_keys(dir, Scope::Prefix(comps.join("/")), system, ring);
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Some(c) = unescape(&e.file_name().to_string_lossy()) else {
            continue;
        };
        comps.push(c);
        walk_prefixes(&e.path(), comps, system, ring);
        comps.pop();
    }
}

// ---------------------------------------------------------------------------------- refusals

/// Why an image was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// Nothing to check: where we looked.
    NoSignature(String),
    /// Signed by a key no trust store holds (its id).
    UnknownKey(String),
    /// The signature does not verify, or is not an OpenPGP signature.
    BadSignature(String),
    /// Signed by a trusted key, but one trusted for other prefixes.
    NotTrustedForPrefix { key: String, prefixes: Vec<String> },
    /// A valid signature, for another image or manifest.
    WrongImage(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NoSignature(w) => write!(f, "no signature ({w})"),
            Reason::UnknownKey(k) => {
                write!(f, "signed by unknown key {k} (trust it with rkt trust)")
            }
            Reason::BadSignature(e) => write!(f, "bad signature: {e}"),
            Reason::NotTrustedForPrefix { key, prefixes } => write!(
                f,
                "key {key} is not trusted for this prefix (it is trusted for {})",
                prefixes.join(", ")
            ),
            Reason::WrongImage(e) => write!(f, "signature is for another image: {e}"),
        }
    }
}

/// The error a refused fetch returns: one line naming the image and the reason.
#[derive(Debug, Clone, thiserror::Error)]
#[error("image {image:?} refused: {reason}; --insecure-options=image skips the check")]
pub struct Refused {
    pub image: String,
    pub reason: Reason,
}

/// Who signed an accepted image.
#[derive(Debug, Clone)]
pub struct Signer {
    pub fingerprint: String,
    pub user_ids: Vec<String>,
    pub scope: Scope,
}

/// Hashes a signature over data must not use: collisions can be made for them.
fn weak_hash(sig: &pgp::packet::Signature) -> Option<String> {
    use pgp::crypto::hash::HashAlgorithm as H;
    match sig.hash_alg() {
        Some(h @ (H::Md5 | H::Sha1 | H::Ripemd160)) => Some(format!("{h:?}")),
        None => Some("unknown".into()),
        _ => None,
    }
}

fn issuer_matches(sig: &pgp::packet::Signature, k: &dyn VerifyingKey) -> bool {
    let fps = sig.issuer_fingerprint();
    let ids = sig.issuer_key_id();
    if fps.is_empty() && ids.is_empty() {
        return true; // no issuer named: every key is a candidate
    }
    let fp = k.fingerprint();
    let id = k.legacy_key_id();
    fps.iter().any(|f| **f == fp) || ids.iter().any(|i| **i == id)
}

fn issuer_name(sig: &pgp::packet::Signature) -> String {
    if let Some(f) = sig.issuer_fingerprint().first() {
        return hex::encode(f.as_bytes());
    }
    match sig.issuer_key_id().first() {
        Some(i) => hex::encode(i.as_ref()),
        None => "(unnamed)".into(),
    }
}

impl KeyRing {
    /// Finds the key that made `sig` among the keys trusted for `name` and checks it with
    /// `check` (which verifies the signature against one candidate signing key).
    fn signer(
        &self,
        name: &str,
        sig: &pgp::packet::Signature,
        check: &dyn Fn(Signing<'_>) -> Result<()>,
    ) -> std::result::Result<Signer, Reason> {
        if let Some(h) = weak_hash(sig) {
            return Err(Reason::BadSignature(format!("made with the weak hash {h}")));
        }
        let mut other_prefixes = Vec::new();
        let mut other_key = None;
        let mut last_err = None;
        for k in &self.keys {
            let candidates: Vec<Signing<'_>> = k
                .info
                .signing_keys()
                .into_iter()
                .filter(|vk| issuer_matches(sig, vk.as_dyn()))
                .collect();
            if candidates.is_empty() {
                continue;
            }
            if !k.scope.covers(name) {
                other_key = Some(k.info.fingerprint.clone());
                other_prefixes.push(k.scope.to_string());
                continue;
            }
            for vk in candidates {
                match check(vk) {
                    Ok(()) => {
                        return Ok(Signer {
                            fingerprint: k.info.fingerprint.clone(),
                            user_ids: k.info.user_ids.clone(),
                            scope: k.scope.clone(),
                        })
                    }
                    Err(e) => last_err = Some(e),
                }
            }
        }
        if let Some(e) = last_err {
            return Err(Reason::BadSignature(format!("{e:#}")));
        }
        if let Some(key) = other_key {
            other_prefixes.dedup();
            return Err(Reason::NotTrustedForPrefix {
                key,
                prefixes: other_prefixes,
            });
        }
        Err(Reason::UnknownKey(issuer_name(sig)))
    }
}

/// Parses detached signatures (armored, as `gpg --armor --detach-sign` writes, or binary).
fn detached_signatures(data: &[u8]) -> Result<Vec<pgp::packet::Signature>> {
    use pgp::composed::{Deserializable, DetachedSignature};
    if data.len() as u64 > simple::MAX_SIGNATURE_BYTES {
        bail!(
            "signature file is larger than {} bytes",
            simple::MAX_SIGNATURE_BYTES
        );
    }
    let sigs: Vec<DetachedSignature> = if keys::is_armored(data, "") {
        let (it, _) = DetachedSignature::from_armor_many(data).map_err(|e| anyhow!("{e}"))?;
        it.collect::<std::result::Result<_, _>>()
            .map_err(|e| anyhow!("{e}"))?
    } else {
        DetachedSignature::from_bytes_many(data)
            .map_err(|e| anyhow!("{e}"))?
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| anyhow!("{e}"))?
    };
    if sigs.is_empty() {
        bail!("no OpenPGP signature found");
    }
    Ok(sigs.into_iter().map(|s| s.signature).collect())
}

/// Checks a detached signature over the data `open` yields, made by a key trusted for `name`.
pub fn verify_detached(
    ring: &KeyRing,
    name: &str,
    signature: &[u8],
    open: &dyn Fn() -> Result<Box<dyn Read>>,
) -> std::result::Result<Signer, Reason> {
    let sigs = detached_signatures(signature)
        .map_err(|e| Reason::BadSignature(format!("not an OpenPGP signature: {e:#}")))?;
    let mut first_err = None;
    for sig in &sigs {
        let check = |vk: Signing<'_>| -> Result<()> { vk.verify(sig, open()?) };
        match ring.signer(name, sig, &check) {
            Ok(s) => return Ok(s),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.expect("at least one signature"))
}

/// Checks simple-signing signatures of the manifest `digest` of `image` (trusted for `name`):
/// one valid signature by a trusted key, for this manifest and this image, is enough.
pub fn verify_simple(
    ring: &KeyRing,
    name: &str,
    image: &DockerRef,
    digest: &str,
    signatures: &[Vec<u8>],
) -> std::result::Result<Signer, Reason> {
    let mut first_err = None;
    for data in signatures {
        let r = (|| {
            let msg = simple::SignedPayload::parse(data)
                .map_err(|e| Reason::BadSignature(format!("{e:#}")))?;
            let sig = msg
                .signature()
                .ok_or_else(|| Reason::BadSignature("no signature packet".into()))?;
            let check = |vk: Signing<'_>| msg.verify(vk.as_dyn());
            let signer = ring.signer(name, sig, &check)?;
            // Only now, with the payload known to come from a trusted key, is it read.
            let claim = simple::parse_payload(&msg.payload)
                .map_err(|e| Reason::BadSignature(format!("{e:#}")))?;
            if claim.manifest_digest != digest {
                return Err(Reason::WrongImage(format!(
                    "it signs manifest {}, the image's is {digest}",
                    claim.manifest_digest
                )));
            }
            if !simple::identity_matches(&claim, image) {
                return Err(Reason::WrongImage(format!(
                    "it names {}{}",
                    claim.reference.name(),
                    claim.tag.map(|t| format!(":{t}")).unwrap_or_default()
                )));
            }
            Ok(signer)
        })();
        match r {
            Ok(s) => return Ok(s),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or_else(|| Reason::NoSignature("none given".into())))
}

// ------------------------------------------------------------------------- the fetch's checks

/// What was verified for an image, kept in `cas/signatures/<id>.json` for `rkt image verify`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// `aci` (detached signature over the ACI file) or `simple-signing`.
    pub kind: String,
    /// The name the key had to be trusted for.
    pub name: String,
    /// simple-signing: the reference the signature had to name, and the signed manifest digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The signatures, hex.
    pub signatures: Vec<String>,
    /// Fingerprint of the key that verified at fetch time.
    pub signer: String,
}

fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut v = Vec::new();
    f.take(simple::MAX_SIGNATURE_BYTES + 1)
        .read_to_end(&mut v)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(v)
}

fn announce(v: &Verify, image: &str, s: &Signer) {
    if v.quiet {
        return;
    }
    eprintln!("image: signature verified for {image}:");
    if s.user_ids.is_empty() {
        eprintln!("  {}", s.fingerprint);
    }
    for u in &s.user_ids {
        eprintln!("  {u}");
    }
}

/// An ACI at `path` named `name`: its `--signature` or `PATH.asc` must verify.
pub(crate) fn check_aci(opts: &FetchOptions, path: &Path, name: &str) -> Result<Option<Record>> {
    let v = &opts.trust;
    if v.skip {
        return Ok(None);
    }
    let image = path.display().to_string();
    let refuse = |reason| Refused {
        image: image.clone(),
        reason,
    };
    let asc = match &v.signature {
        Some(s) => s.clone(),
        None => {
            let mut p = path.as_os_str().to_owned();
            p.push(".asc");
            PathBuf::from(p)
        }
    };
    if !asc.exists() {
        return Err(refuse(Reason::NoSignature(format!(
            "no {}; give one with --signature=FILE",
            asc.display()
        )))
        .into());
    }
    let sig = read_bounded(&asc)?;
    let ring = v.config.keyring();
    let p = path.to_path_buf();
    let open = move || -> Result<Box<dyn Read>> {
        Ok(Box::new(std::io::BufReader::new(std::fs::File::open(&p)?)))
    };
    let signer = verify_detached(&ring, name, &sig, &open).map_err(refuse)?;
    announce(v, &image, &signer);
    Ok(Some(Record {
        kind: "aci".into(),
        name: name.to_string(),
        reference: None,
        digest: None,
        signatures: vec![hex::encode(&sig)],
        signer: signer.fingerprint,
    }))
}

/// An OCI/Docker image `name:tag` whose top manifest is `digest`, from `origin` (a
/// `docker://` origin is the registry reference, whose lookaside holds its signatures).
pub(crate) fn check_oci(
    opts: &FetchOptions,
    origin: &str,
    name: &str,
    tag: &str,
    digest: &str,
) -> Result<Option<Record>> {
    let v = &opts.trust;
    if v.skip {
        return Ok(None);
    }
    let refuse = |reason| Refused {
        image: origin.to_string(),
        reason,
    };
    let registry = origin.strip_prefix("docker://");
    let image = match registry {
        Some(r) => parse_docker(r)?,
        None => parse_docker(&format!("{name}:{tag}")).map_err(|e| {
            refuse(Reason::WrongImage(format!(
                "{name}:{tag} cannot be named in a signature: {e:#}"
            )))
        })?,
    };
    let sigs = match (&v.signature, registry) {
        (Some(s), _) => vec![read_bounded(s)?],
        (None, Some(_)) => {
            let dirs = registries_dirs(&v.config);
            let reg = registries::Registries::load(&dirs)?;
            let base = reg.lookaside(&image);
            let sigs = lookaside_signatures(&base, &image, digest, opts)
                .map_err(|e| refuse(Reason::NoSignature(format!("{e:#}"))))?;
            if sigs.is_empty() {
                return Err(refuse(Reason::NoSignature(format!(
                    "none at {}",
                    registries::signature_url(&base, &image, digest, 1)?
                )))
                .into());
            }
            sigs
        }
        (None, None) => {
            return Err(refuse(Reason::NoSignature(
                "give a simple-signing signature with --signature=FILE".into(),
            ))
            .into())
        }
    };
    let ring = v.config.keyring();
    let signer = verify_simple(&ring, name, &image, digest, &sigs).map_err(refuse)?;
    announce(v, origin, &signer);
    Ok(Some(Record {
        kind: "simple-signing".into(),
        name: name.to_string(),
        reference: Some(match &image.digest {
            Some(d) => format!("{}@{d}", image.name()),
            None => format!("{}:{}", image.name(), image.tag),
        }),
        digest: Some(digest.to_string()),
        signatures: sigs.iter().map(hex::encode).collect(),
        signer: signer.fingerprint,
    }))
}

/// `<local-config>/registries.d`, then containers' `/etc/containers/registries.d`.
pub fn registries_dirs(c: &TrustConfig) -> Vec<PathBuf> {
    vec![
        c.local_config.join("registries.d"),
        PathBuf::from("/etc/containers/registries.d"),
    ]
}

/// A registry image's lookaside signatures: `signature-1`, `-2`, … until the first missing one.
fn lookaside_signatures(
    base: &str,
    image: &DockerRef,
    digest: &str,
    opts: &FetchOptions,
) -> Result<Vec<Vec<u8>>> {
    const MAX_SIGNATURES: usize = 16;
    // rkt's HTTP client, as for the registry: a server's CA in certs.d, --insecure-options=tls
    // (the signature, not the connection, is what vouches for the image).
    let mut http = crate::http::Http::new(opts.insecure_tls, &opts.config_dirs);
    let mut out = Vec::new();
    for n in 1..=MAX_SIGNATURES {
        let url = registries::signature_url(base, image, digest, n)?;
        let got = if let Some(path) = url.strip_prefix("file://") {
            match std::fs::metadata(path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                _ => Some(read_bounded(Path::new(path))?),
            }
        } else if url.starts_with("https://") || url.starts_with("http://") {
            if url.starts_with("http://") && !opts.insecure_http {
                bail!("lookaside {base} is plain HTTP: allow it with --insecure-options=http");
            }
            match http.agent(&url)?.get(&url).call() {
                Ok(r) => {
                    let mut v = Vec::new();
                    r.into_reader()
                        .take(simple::MAX_SIGNATURE_BYTES + 1)
                        .read_to_end(&mut v)?;
                    Some(v)
                }
                Err(ureq::Error::Status(404, _)) => None,
                Err(ureq::Error::Status(code, r)) => {
                    bail!(
                        "fetching {url}: HTTP {code} {}",
                        crate::http::body_excerpt(r)
                    )
                }
                Err(ureq::Error::Transport(t)) => {
                    return Err(crate::http::transport_error("fetching", &url, &t))
                }
            }
        } else {
            bail!("lookaside {base:?}: only file://, https:// and http:// are supported");
        };
        match got {
            Some(v) => out.push(v),
            None => break,
        }
    }
    Ok(out)
}

/// How `rkt trust` reaches key URLs and discovery pages.
#[derive(Debug, Clone, Default)]
pub struct KeyFetch {
    /// `--insecure-allow-http`: plain-HTTP URLs (and redirects to them) are allowed.
    pub insecure_http: bool,
    /// `--insecure-options=tls`: any server certificate is accepted.
    pub insecure_tls: bool,
    /// rkt's configuration directories, whose `certs.d/HOST[:PORT]/` CAs are trusted for HOST.
    pub config_dirs: Vec<PathBuf>,
}

/// GETs a key or discovery document (at most `limit` bytes) with rkt's HTTP client (a server's
/// CA from `certs.d`, `--insecure-options=tls`). Redirects are followed here, at most 5, so that
/// none leads to plain HTTP unless allowed.
pub fn download(url: &str, how: &KeyFetch, limit: u64) -> Result<Vec<u8>> {
    let mut http = crate::http::Http::new(how.insecure_tls, &how.config_dirs).without_redirects();
    let mut url = url.to_string();
    for _ in 0..=5 {
        if url.starts_with("http://") && !how.insecure_http {
            bail!("{url} is plain HTTP: use https, or allow it with --insecure-allow-http");
        }
        if !url.starts_with("https://") && !url.starts_with("http://") {
            bail!("{url:?} is not an http(s) URL");
        }
        let r = match http.agent(&url)?.get(&url).call() {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                bail!(
                    "fetching {url}: HTTP {code} {}",
                    crate::http::body_excerpt(r)
                )
            }
            Err(ureq::Error::Transport(t)) => {
                return Err(crate::http::transport_error("fetching", &url, &t))
            }
        };
        if (300..400).contains(&r.status()) {
            let loc = r
                .header("location")
                .ok_or_else(|| anyhow!("fetching {url}: HTTP {} without a Location", r.status()))?;
            url = if loc.contains("://") {
                loc.to_string()
            } else if loc.starts_with('/') {
                let scheme = url.split_once("://").map_or("https", |(s, _)| s);
                format!("{scheme}://{}{loc}", crate::http::authority(&url))
            } else {
                bail!("fetching {url}: redirect to {loc:?} (not an absolute URL or path)");
            };
            continue;
        }
        let mut v = Vec::new();
        r.into_reader()
            .take(limit + 1)
            .read_to_end(&mut v)
            .with_context(|| format!("reading {url}"))?;
        if v.len() as u64 > limit {
            bail!("{url} is larger than {limit} bytes");
        }
        return Ok(v);
    }
    bail!("fetching {url}: more than 5 redirects")
}

// ------------------------------------------------------------------------ stored signatures

fn record_path(store: &Store, id: &str) -> PathBuf {
    store.root.join("signatures").join(format!("{id}.json"))
}

/// Keeps what a fetch verified, for `rkt image verify`.
pub(crate) fn remember(store: &Store, id: &str, rec: Option<Record>) -> Result<()> {
    let Some(rec) = rec else { return Ok(()) };
    let p = record_path(store, id);
    let dir = p.parent().expect("signatures dir");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer(tmp.as_file(), &rec)?;
    tmp.persist(&p)
        .map_err(|e| anyhow!("writing {}: {}", p.display(), e.error))?;
    Ok(())
}

/// Drops an image's record (the image left the store).
pub(crate) fn forget(store: &Store, id: &str) {
    let _ = std::fs::remove_file(record_path(store, id));
}

/// `rkt image verify`: re-checks a stored image's recorded signatures against today's trust
/// store (a key removed since the fetch makes it fail) and, for an ACI, today's blob.
pub fn verify_stored(store: &Store, id: &str, config: &TrustConfig) -> Result<Signer> {
    let info = store
        .index
        .get(id)?
        .ok_or_else(|| anyhow!("image {id:?} not found in the store"))?;
    let image = info.name.clone();
    let refuse = |reason| Refused {
        image: image.clone(),
        reason,
    };
    let p = record_path(store, id);
    let rec: Record = match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("parsing {}", p.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(refuse(Reason::NoSignature(
                "none recorded: it was fetched with --insecure-options=image".into(),
            ))
            .into())
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
    };
    let sigs = rec
        .signatures
        .iter()
        .map(hex::decode)
        .collect::<std::result::Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", p.display()))?;
    let ring = config.keyring();
    let rec_ = store.index.record(id)?;
    let signer = match rec.kind.as_str() {
        "aci" => {
            let layer = rec_
                .layers
                .first()
                .ok_or_else(|| anyhow!("ACI {id} has no blob"))?;
            let blob = store.blobs.path(&layer.digest)?;
            let open = move || -> Result<Box<dyn Read>> {
                Ok(Box::new(std::io::BufReader::new(std::fs::File::open(
                    &blob,
                )?)))
            };
            let sig = sigs
                .first()
                .ok_or_else(|| anyhow!("empty record {}", p.display()))?;
            verify_detached(&ring, &rec.name, sig, &open).map_err(refuse)?
        }
        "simple-signing" => {
            let reference = rec
                .reference
                .as_deref()
                .ok_or_else(|| anyhow!("record {} names no reference", p.display()))?;
            let digest = rec
                .digest
                .as_deref()
                .ok_or_else(|| anyhow!("record {} names no digest", p.display()))?;
            // The image's own manifest must still be what was signed (or what the signed index
            // points to, which the fetch checked).
            let r = parse_docker(reference)?;
            verify_simple(&ring, &rec.name, &r, digest, &sigs).map_err(refuse)?
        }
        k => bail!("record {} has unknown kind {k:?}", p.display()),
    };
    Ok(signer)
}

/// Signature and key parsers, for the fuzz target `trust` (fuzz/): errors, never panics.
pub(crate) fn fuzz_parsers(kind: u8, data: &[u8]) {
    match kind % 5 {
        0 => {
            if let Ok(keys) = parse_keys(data) {
                for k in keys {
                    let _ = k.fingerprint_grouped();
                    let _ = k.signing_keys();
                    let _ = k.armored();
                }
            }
        }
        1 => {
            let _ = detached_signatures(data);
            let ring = KeyRing::default();
            let open = || -> Result<Box<dyn Read>> { Ok(Box::new(&b"data"[..])) };
            let _ = verify_detached(&ring, "example.com/app", data, &open);
        }
        2 => {
            if let Ok(m) = simple::SignedPayload::parse(data) {
                let _ = m.signature();
                let _ = simple::parse_payload(&m.payload);
            }
        }
        3 => {
            if let Ok(c) = simple::parse_payload(data) {
                let r = parse_docker("example.com/app:v1").expect("valid reference");
                let _ = simple::identity_matches(&c, &r);
            }
        }
        _ => {
            let text = String::from_utf8_lossy(data);
            let _ = registries::parse_yaml(&text);
            if let Ok(Scope::Prefix(p)) = Scope::prefix(&text) {
                let s = Scope::Prefix(p.clone());
                let d = s.dir(Path::new("/c"));
                assert!(d.starts_with("/c/trustedkeys/prefix.d"), "{d:?}");
                let back: Vec<String> = d
                    .strip_prefix("/c/trustedkeys/prefix.d")
                    .expect("under prefix.d")
                    .iter()
                    .map(|c| unescape(&c.to_string_lossy()).expect("escaped"))
                    .collect();
                assert_eq!(back.join("/"), p, "escaping round-trips");
                assert!(s.covers(&p));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_cover_whole_components() {
        let s = Scope::prefix("example.com/app/").unwrap();
        assert!(s.covers("example.com/app"));
        assert!(s.covers("example.com/app/x"));
        assert!(!s.covers("example.com/apps"));
        assert!(!s.covers("example.com"));
        assert!(Scope::Root.covers("anything"));
        for bad in ["", "/", "a//b", "a/../b", "./a", "https://x/y"] {
            assert!(Scope::prefix(bad).is_err(), "{bad:?}");
        }
    }

    /// gpg (Debian's, as the end-to-end tests use) makes a key, a detached signature and a
    /// simple-signing message the way skopeo's gpgme does (`gpg --sign`: compressed, binary).
    #[test]
    fn verifies_what_gpg_signs() {
        use std::process::Command;
        let t = tempfile::tempdir().unwrap();
        let home = t.path().join("gnupg");
        std::fs::create_dir(&home).unwrap();
        let g = |args: &[&str]| {
            let o = Command::new("gpg")
                .arg("--homedir")
                .arg(&home)
                .args([
                    "--batch",
                    "--quiet",
                    "--pinentry-mode",
                    "loopback",
                    "--passphrase",
                    "",
                ])
                .args(args)
                .output()
                .expect("gpg (apt-get install gnupg)");
            assert!(
                o.status.success(),
                "gpg {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            o.stdout
        };
        g(&[
            "--quick-gen-key",
            "unit <unit@example.com>",
            "ed25519",
            "sign",
            "never",
        ]);
        let key = g(&["--armor", "--export"]);
        let data = t.path().join("data");
        std::fs::write(&data, b"an image").unwrap();
        let sig = g(&[
            "--armor",
            "--detach-sign",
            "--output",
            "-",
            data.to_str().unwrap(),
        ]);
        let digest = format!("sha256:{}", "ab".repeat(32));
        let payload = t.path().join("payload");
        std::fs::write(
            &payload,
            format!(r#"{{"critical":{{"identity":{{"docker-reference":"example.com/app:v1"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"atomic container signature"}},"optional":{{}}}}"#),
        )
        .unwrap();
        let msg = g(&["--sign", "--output", "-", payload.to_str().unwrap()]);

        let keys = parse_keys(&key).unwrap();
        assert_eq!(keys.len(), 1);
        let cfg = TrustConfig {
            local_config: t.path().join("local"),
            system_config: t.path().join("system"),
            trust_keys_from_https: false,
        };
        cfg.add(&Scope::prefix("example.com/app").unwrap(), &keys[0])
            .unwrap();
        let ring = cfg.keyring();
        assert_eq!(ring.keys.len(), 1, "{:?}", ring.problems);
        let d = data.clone();
        let open = move || -> Result<Box<dyn Read>> { Ok(Box::new(std::fs::File::open(&d)?)) };
        let s = verify_detached(&ring, "example.com/app", &sig, &open).unwrap();
        assert_eq!(s.fingerprint, keys[0].fingerprint);
        assert!(matches!(
            verify_detached(&ring, "example.com/other", &sig, &open),
            Err(Reason::NotTrustedForPrefix { .. })
        ));
        let tampered = || -> Result<Box<dyn Read>> { Ok(Box::new(&b"an imagE"[..])) };
        assert!(matches!(
            verify_detached(&ring, "example.com/app", &sig, &tampered),
            Err(Reason::BadSignature(_))
        ));
        assert!(matches!(
            verify_detached(&KeyRing::default(), "example.com/app", &sig, &open),
            Err(Reason::UnknownKey(_))
        ));

        let r = parse_docker("example.com/app:v1").unwrap();
        verify_simple(
            &ring,
            "example.com/app",
            &r,
            &digest,
            std::slice::from_ref(&msg),
        )
        .unwrap();
        let other = format!("sha256:{}", "cd".repeat(32));
        assert!(matches!(
            verify_simple(
                &ring,
                "example.com/app",
                &r,
                &other,
                std::slice::from_ref(&msg)
            ),
            Err(Reason::WrongImage(_))
        ));
        let v2 = parse_docker("example.com/app:v2").unwrap();
        assert!(matches!(
            verify_simple(
                &ring,
                "example.com/app",
                &v2,
                &digest,
                std::slice::from_ref(&msg)
            ),
            Err(Reason::WrongImage(_))
        ));
        let mut bad = msg.clone();
        let n = bad.len();
        bad[n - 3] ^= 1;
        assert!(verify_simple(&ring, "example.com/app", &r, &digest, &[bad]).is_err());
    }

    #[test]
    fn prefix_dirs_escape() {
        let s = Scope::prefix("127.0.0.1:5000/my app/x%y").unwrap();
        let d = s.dir(Path::new("/etc/rkt"));
        assert_eq!(
            d,
            Path::new("/etc/rkt/trustedkeys/prefix.d/127.0.0.1:5000/my%20app/x%25y")
        );
        assert_eq!(unescape("x%25y").as_deref(), Some("x%y"));
        assert_eq!(unescape("%zz"), None);
    }
}
