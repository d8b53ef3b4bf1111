//! containers' "simple signing" (what `skopeo copy --sign-by` and `podman push --sign-by` write):
//! an OpenPGP signed message whose literal data is a JSON payload naming the image
//! (`critical.identity.docker-reference`) and its manifest digest
//! (`critical.image.docker-manifest-digest`).

use std::io::Read;

use anyhow::{anyhow, bail};
use pgp::composed::Message;
use serde_json::Value;

use crate::source::{parse_docker, DockerRef};
use crate::Result;

/// A payload is a few hundred bytes; this bounds what a hostile message may decompress to.
pub const MAX_PAYLOAD_BYTES: u64 = 64 << 10;
/// A signature file is a few hundred bytes too.
pub const MAX_SIGNATURE_BYTES: u64 = 4 << 20;
pub const SIGNATURE_TYPE: &str = "atomic container signature";

/// The message's payload and its one signature packet; the signature is checked by `verify`.
pub struct SignedPayload<'a> {
    msg: Message<'a>,
    pub payload: Vec<u8>,
}

impl<'a> SignedPayload<'a> {
    pub fn parse(data: &'a [u8]) -> Result<SignedPayload<'a>> {
        if data.len() as u64 > MAX_SIGNATURE_BYTES {
            bail!("signature is larger than {MAX_SIGNATURE_BYTES} bytes");
        }
        let msg = if super::keys::is_armored(data, "MESSAGE") {
            Message::from_armor(data).map(|(m, _)| m)
        } else {
            Message::from_bytes(data)
        }
        .map_err(|e| anyhow!("not an OpenPGP signed message: {e}"))?;
        let mut msg = msg
            .decompress()
            .map_err(|e| anyhow!("not an OpenPGP signed message: {e}"))?;
        if !msg.is_signed() {
            bail!("not an OpenPGP signed message");
        }
        let mut payload = Vec::new();
        (&mut msg)
            .take(MAX_PAYLOAD_BYTES + 1)
            .read_to_end(&mut payload)
            .map_err(|e| anyhow!("reading the signed payload: {e}"))?;
        if payload.len() as u64 > MAX_PAYLOAD_BYTES {
            bail!("signed payload is larger than {MAX_PAYLOAD_BYTES} bytes");
        }
        let Message::Signed { reader, .. } = &msg else {
            bail!("not an OpenPGP signed message");
        };
        if reader.num_signatures() != 1 {
            bail!(
                "the message has {} signatures, not one",
                reader.num_signatures()
            );
        }
        Ok(SignedPayload { msg, payload })
    }

    pub fn signature(&self) -> Option<&pgp::packet::Signature> {
        match &self.msg {
            Message::Signed { reader, .. } => reader.signature(0),
            _ => None,
        }
    }

    pub fn verify(&self, key: &dyn pgp::types::VerifyingKey) -> Result<()> {
        self.msg.verify(key).map(|_| ()).map_err(|e| anyhow!("{e}"))
    }
}

/// What a verified payload claims.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub reference: DockerRef,
    /// The tag as written in the signature (None for `name@digest` identities).
    pub tag: Option<String>,
    pub manifest_digest: String,
}

/// Parses a payload strictly, as containers/image does: the `critical` object holds exactly
/// `type`, `image` and `identity`, and each of those exactly its one field.
pub fn parse_payload(payload: &[u8]) -> Result<Claim> {
    let v: Value =
        serde_json::from_slice(payload).map_err(|e| anyhow!("payload is not JSON: {e}"))?;
    let crit = v
        .get("critical")
        .and_then(Value::as_object)
        .ok_or_else(|| anyhow!("payload has no critical section"))?;
    let exact = |o: &serde_json::Map<String, Value>, keys: &[&str], what: &str| -> Result<()> {
        if o.len() != keys.len() || !keys.iter().all(|k| o.contains_key(*k)) {
            bail!("payload {what} must hold exactly {keys:?}");
        }
        Ok(())
    };
    exact(crit, &["type", "image", "identity"], "critical section")?;
    if crit.get("type").and_then(Value::as_str) != Some(SIGNATURE_TYPE) {
        bail!("payload type is not {SIGNATURE_TYPE:?}");
    }
    let obj = |k: &str| {
        crit.get(k)
            .and_then(Value::as_object)
            .ok_or_else(|| anyhow!("payload critical.{k} is not an object"))
    };
    let image = obj("image")?;
    exact(image, &["docker-manifest-digest"], "critical.image")?;
    let identity = obj("identity")?;
    exact(identity, &["docker-reference"], "critical.identity")?;
    let digest = image["docker-manifest-digest"]
        .as_str()
        .ok_or_else(|| anyhow!("docker-manifest-digest is not a string"))?;
    crate::blob::digest_hex(digest)?;
    let reference = identity["docker-reference"]
        .as_str()
        .ok_or_else(|| anyhow!("docker-reference is not a string"))?;
    let r = parse_docker(reference)?;
    // parse_docker defaults the tag: remember whether the signature named one.
    let last = reference.rsplit('/').next().unwrap_or(reference);
    let tag = (r.digest.is_none() && last.contains(':')).then(|| r.tag.clone());
    Ok(Claim {
        reference: r,
        tag,
        manifest_digest: digest.to_string(),
    })
}

/// containers' default identity rule (`matchRepoDigestOrExact`): an image pulled by tag needs a
/// signature for exactly that name and tag; one pulled by digest, for its repository.
pub fn identity_matches(claim: &Claim, image: &DockerRef) -> bool {
    if claim.reference.name() != image.name() {
        return false;
    }
    match &image.digest {
        Some(_) => true,
        None => claim.tag.as_deref().unwrap_or("latest") == image.tag,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789012345678901234567890123456789012345678901234567890123";

    fn payload(reference: &str, extra: &str) -> Vec<u8> {
        format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"{reference}"}},"image":{{"docker-manifest-digest":"{D}"}},"type":"atomic container signature"{extra}}},"optional":{{"creator":"skopeo"}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn payloads_are_parsed_strictly() {
        let c = parse_payload(&payload("127.0.0.1:5000/busybox:v1", "")).unwrap();
        assert_eq!(c.reference.name(), "127.0.0.1:5000/busybox");
        assert_eq!(c.tag.as_deref(), Some("v1"));
        assert_eq!(c.manifest_digest, D);
        assert!(parse_payload(&payload("127.0.0.1:5000/busybox", ",\"x\":1")).is_err());
        assert!(parse_payload(b"{}").is_err());
        assert!(parse_payload(&payload("Bad/Name", "")).is_err());
    }

    #[test]
    fn identity_rule() {
        let c = parse_payload(&payload("127.0.0.1:5000/busybox:v1", "")).unwrap();
        let by_tag = parse_docker("127.0.0.1:5000/busybox:v1").unwrap();
        assert!(identity_matches(&c, &by_tag));
        assert!(!identity_matches(
            &c,
            &parse_docker("127.0.0.1:5000/busybox:v2").unwrap()
        ));
        assert!(!identity_matches(
            &c,
            &parse_docker("127.0.0.1:5000/other:v1").unwrap()
        ));
        assert!(identity_matches(
            &c,
            &parse_docker(&format!("127.0.0.1:5000/busybox@{D}")).unwrap()
        ));
        let untagged = parse_payload(&payload("127.0.0.1:5000/busybox", "")).unwrap();
        assert_eq!(untagged.tag, None);
        assert!(identity_matches(
            &untagged,
            &parse_docker("127.0.0.1:5000/busybox").unwrap()
        ));
    }
}
