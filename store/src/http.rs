//! HTTP(S) agents for registries, ACI hosts and discovery. Server certificates are checked
//! against the bundled Mozilla roots plus, for one server, the CA certificates in
//! `<config>/certs.d/HOST[:PORT]/*.crt|*.pem` of rkt's system, local and user configuration
//! directories (the layout containers and Docker use under /etc/containers and /etc/docker).
//! A CA there is trusted for that server only. `--insecure-options=tls` accepts any certificate.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use crate::Result;

pub(crate) struct Http {
    insecure_tls: bool,
    config_dirs: Vec<PathBuf>,
    agents: HashMap<String, ureq::Agent>,
    redirects: u32,
}

/// `host[:port]` of an http(s) URL.
pub(crate) fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let a = &rest[..end];
    // Userinfo is never used by rkt, but must not be mistaken for the host.
    a.rsplit_once('@').map_or(a, |(_, h)| h)
}

impl Http {
    pub(crate) fn new(insecure_tls: bool, config_dirs: &[PathBuf]) -> Http {
        Http {
            insecure_tls,
            config_dirs: config_dirs.to_vec(),
            agents: HashMap::new(),
            redirects: 5,
        }
    }

    /// Agents that return 3xx answers instead of following them, for callers that check each
    /// hop (ureq follows an https URL's redirect to plain http).
    pub(crate) fn without_redirects(mut self) -> Http {
        self.redirects = 0;
        self
    }

    /// CA files configured for `authority`.
    fn ca_files(&self, authority: &str) -> Vec<PathBuf> {
        let mut v = Vec::new();
        // A directory name cannot hold '/', and ".." must not walk out of certs.d.
        if authority.is_empty() || authority.contains('/') || authority.starts_with('.') {
            return v;
        }
        for d in &self.config_dirs {
            let Ok(rd) = std::fs::read_dir(d.join("certs.d").join(authority)) else {
                continue;
            };
            let mut files: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "crt" || x == "pem"))
                .collect();
            files.sort();
            v.extend(files);
        }
        v
    }

    /// The agent for `url`'s server (one per `host:port`, so a configured CA stays scoped).
    pub(crate) fn agent(&mut self, url: &str) -> Result<ureq::Agent> {
        let auth = authority(url).to_string();
        if let Some(a) = self.agents.get(&auth) {
            return Ok(a.clone());
        }
        let mut b = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(30))
            .timeout_read(Duration::from_secs(300))
            .redirects(self.redirects);
        if self.insecure_tls {
            b = b.tls_config(insecure_tls_config());
        } else {
            let cas = self.ca_files(&auth);
            if !cas.is_empty() {
                b = b.tls_config(tls_with_cas(&cas)?);
            }
        }
        let a = b.build();
        self.agents.insert(auth, a.clone());
        Ok(a)
    }
}

/// Mozilla's roots plus the certificates in `files`.
fn tls_with_cas(files: &[PathBuf]) -> Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for f in files {
        let mut n = 0;
        for c in CertificateDer::pem_file_iter(f)
            .map_err(|e| anyhow!("reading CA certificate {}: {e}", f.display()))?
        {
            let c = c.map_err(|e| anyhow!("reading CA certificate {}: {e}", f.display()))?;
            roots
                .add(c)
                .with_context(|| format!("CA certificate {}", f.display()))?;
            n += 1;
        }
        if n == 0 {
            bail!("{} holds no PEM certificate", f.display());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// One line for a failed connection, with what the user can do about it.
pub(crate) fn transport_error(what: &str, url: &str, t: &ureq::Transport) -> anyhow::Error {
    let msg = t.to_string().replacen(&format!("{url}: "), "", 1);
    let hint = if url.starts_with("https://") {
        let a = authority(url);
        if msg.to_ascii_lowercase().contains("certificate") {
            format!(" (trust its CA by putting it in <local-config>/certs.d/{a}/ca.crt, or skip certificate checks with --insecure-options=tls)")
        } else {
            " (for a plain-HTTP server use --insecure-options=http, to skip certificate checks --insecure-options=tls)".to_string()
        }
    } else {
        String::new()
    };
    anyhow!("{what} {url}: {msg}{hint}")
}

/// Up to 200 characters of an error response's body, on one line.
pub(crate) fn body_excerpt(r: ureq::Response) -> String {
    use std::io::Read;
    let mut s = String::new();
    let _ = r.into_reader().take(4096).read_to_string(&mut s);
    s.chars()
        .take(200)
        .collect::<String>()
        .replace(['\n', '\r'], " ")
        .trim()
        .to_string()
}

/// `--insecure-options=tls`: a TLS client that accepts any server certificate (signatures in the
/// handshake are still checked, so the connection is encrypted, just not authenticated).
pub(crate) fn insecure_tls_config() -> Arc<rustls::ClientConfig> {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);
    impl ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> std::result::Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    Arc::new(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_of_urls() {
        assert_eq!(
            authority("https://a.example:8443/x/y.aci"),
            "a.example:8443"
        );
        assert_eq!(authority("http://u:p@h/x"), "h");
        assert_eq!(authority("https://h?x=1"), "h");
    }

    #[test]
    fn certs_dir_is_scoped_and_cannot_escape() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("certs.d/127.0.0.1:5000")).unwrap();
        std::fs::write(t.path().join("certs.d/127.0.0.1:5000/ca.crt"), "x").unwrap();
        let h = Http::new(false, &[t.path().to_path_buf()]);
        assert_eq!(h.ca_files("127.0.0.1:5000").len(), 1);
        assert!(h.ca_files("127.0.0.1:5001").is_empty());
        assert!(h.ca_files("..").is_empty());
        // A file that is not PEM is an error naming it, not an ignored CA.
        let e = tls_with_cas(&h.ca_files("127.0.0.1:5000")).unwrap_err();
        assert!(format!("{e:#}").contains("ca.crt"), "{e:#}");
    }
}
