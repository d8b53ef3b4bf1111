//! A test certificate authority (openssl) and a small HTTPS file server (rustls) for fetches by
//! URL and appc discovery: it serves fixed bodies by path (query included), optionally only to
//! requests carrying one `Authorization` header, answers chosen paths with a redirect, and
//! records what it was asked.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

/// A CA made with openssl in `dir`: `ca.pem` (give it to rkt) and its key.
pub struct TestCa {
    pub dir: PathBuf,
}

fn openssl(args: &[&str], dir: &Path) {
    let mut c = Command::new("openssl");
    c.args(args).current_dir(dir);
    let out = crate::run_command(c, 60);
    if out.code != 0 {
        panic!("openssl {args:?} failed\n{out}");
    }
}

impl TestCa {
    /// A fresh EC CA (`CN=rkt test CA`) valid for a week.
    pub fn new(dir: &Path) -> TestCa {
        std::fs::create_dir_all(dir).unwrap();
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "7",
                "-subj",
                "/CN=rkt test CA",
                "-keyout",
                "ca-key.pem",
                "-out",
                "ca.pem",
            ],
            dir,
        );
        TestCa {
            dir: dir.to_path_buf(),
        }
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A server certificate for 127.0.0.1 and localhost signed by this CA: (cert, key) paths.
    pub fn issue(&self, name: &str) -> (PathBuf, PathBuf) {
        let (key, csr, crt, ext) = (
            format!("{name}-key.pem"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        std::fs::write(
            self.dir.join(&ext),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
            &self.dir,
        );
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-days",
                "7",
                "-extfile",
                &ext,
                "-out",
                &crt,
            ],
            &self.dir,
        );
        (self.dir.join(crt), self.dir.join(key))
    }
}

/// One request the server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Path with query, as requested.
    pub path: String,
    pub authorization: Option<String>,
}

/// An HTTPS server on 127.0.0.1 serving fixed bodies; stops when dropped (the listener thread
/// is left blocked in accept, which is harmless in a test process).
pub struct HttpsServer {
    /// `127.0.0.1:PORT`
    pub addr: String,
    routes: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    redirects: Arc<Mutex<HashMap<String, String>>>,
    /// Requests seen, in order.
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl HttpsServer {
    /// Starts a server with a certificate for 127.0.0.1 issued by `ca`. With `auth`, requests
    /// without exactly that `Authorization` header get 401.
    pub fn start(ca: &TestCa, auth: Option<String>) -> HttpsServer {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let (crt, key) = ca.issue("https-server");
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&crt)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_file(&key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap(),
        );
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let routes: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let redirects: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let (r2, s2, d2) = (routes.clone(), seen.clone(), redirects.clone());
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let (cfg, routes, seen, auth) = (cfg.clone(), r2.clone(), s2.clone(), auth.clone());
                let redirects = d2.clone();
                std::thread::spawn(move || {
                    let mut conn = conn;
                    let Ok(mut tls) = rustls::ServerConnection::new(cfg) else {
                        return;
                    };
                    let mut s = rustls::Stream::new(&mut tls, &mut conn);
                    let mut lines = Vec::new();
                    {
                        let mut r = BufReader::new(&mut s);
                        loop {
                            let mut l = String::new();
                            match r.read_line(&mut l) {
                                Ok(0) | Err(_) => return,
                                Ok(_) => {}
                            }
                            let l = l.trim_end().to_string();
                            if l.is_empty() {
                                break;
                            }
                            lines.push(l);
                        }
                    }
                    let path = lines
                        .first()
                        .and_then(|l| l.split(' ').nth(1))
                        .unwrap_or("")
                        .to_string();
                    let authorization = lines.iter().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("authorization")
                            .then(|| v.trim().to_string())
                    });
                    seen.lock().unwrap().push(Seen {
                        path: path.clone(),
                        authorization: authorization.clone(),
                    });
                    if let Some(to) = redirects.lock().unwrap().get(&path).cloned() {
                        let _ = write!(
                            s,
                            "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        );
                        let _ = s.flush();
                        s.conn.send_close_notify();
                        let _ = s.conn.complete_io(s.sock);
                        return;
                    }
                    let body = routes.lock().unwrap().get(&path).cloned();
                    let (status, body) = match (&auth, body) {
                        (Some(want), _) if authorization.as_ref() != Some(want) => {
                            ("401 Unauthorized", b"unauthorized".to_vec())
                        }
                        (_, Some(b)) => ("200 OK", b),
                        (_, None) => ("404 Not Found", b"not found".to_vec()),
                    };
                    let _ = write!(
                        s,
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(&body);
                    let _ = s.flush();
                    s.conn.send_close_notify();
                    let _ = s.conn.complete_io(s.sock);
                });
            }
        });
        HttpsServer {
            addr,
            routes,
            redirects,
            seen,
        }
    }

    /// Serves `body` at `path` (with its query, e.g. `/app?ac-discovery=1`).
    pub fn serve(&self, path: &str, body: impl Into<Vec<u8>>) {
        self.routes
            .lock()
            .unwrap()
            .insert(path.to_string(), body.into());
    }

    /// Answers `path` with `302 Found` to `location`.
    pub fn redirect(&self, path: &str, location: &str) {
        self.redirects
            .lock()
            .unwrap()
            .insert(path.to_string(), location.to_string());
    }

    /// `https://ADDR/PATH`
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// Paths requested so far.
    pub fn paths(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.path.clone())
            .collect()
    }
}
