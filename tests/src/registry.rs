//! A real Docker registry (Debian's docker-registry, i.e. distribution v2) on 127.0.0.1, optionally
//! with HTTPS (a certificate from a fresh test CA) and basic auth (htpasswd, bcrypt).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// How to run the registry. `Default` is plain HTTP without auth.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Serve HTTPS with a certificate for 127.0.0.1 from a fresh test CA (see [`Registry::ca_cert`]).
    pub tls: bool,
    /// Require HTTP basic auth with this user and password (htpasswd, bcrypt).
    pub basic_auth: Option<(String, String)>,
}

/// A registry on a free port with its own storage; killed on drop.
pub struct Registry {
    /// `127.0.0.1:PORT`
    pub addr: String,
    opts: RegistryOptions,
    child: Child,
    tmp: tempfile::TempDir,
}

impl Registry {
    /// Starts a plain-HTTP registry without auth and waits until `GET /v2/` answers 200.
    pub fn start() -> Registry {
        Self::start_with(RegistryOptions::default())
    }

    /// Starts a registry with `opts` and waits until it answers.
    pub fn start_with(opts: RegistryOptions) -> Registry {
        let mut last_err = String::new();
        // The free port is found by binding and releasing it, so another process may grab it in
        // between: retry a few times.
        for _ in 0..3 {
            match Self::try_start(&opts) {
                Ok(r) => return r,
                Err(e) => last_err = e,
            }
        }
        panic!("docker-registry did not start: {last_err}");
    }

    fn try_start(opts: &RegistryOptions) -> Result<Registry, String> {
        let tmp = tempfile::Builder::new()
            .prefix("rkt-test-registry-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let dir = tmp.path();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a free port: {e}"))?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let storage = dir.join("storage");
        std::fs::create_dir(&storage).map_err(|e| e.to_string())?;
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            storage.display()
        );
        if opts.tls {
            let ca = crate::https::TestCa::new(&dir.join("ca"));
            let (cert, key) = ca.issue("registry");
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
        }
        if let Some((user, pass)) = &opts.basic_auth {
            let hash = bcrypt::hash(pass, 4).map_err(|e| format!("bcrypt: {e}"))?;
            std::fs::write(dir.join("htpasswd"), format!("{user}:{hash}\n"))
                .map_err(|e| e.to_string())?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: rkt-tests\n    path: {}\n",
                dir.join("htpasswd").display()
            ));
        }
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.join("registry.log")).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("running {REGISTRY_BIN}: {e}"))?;
        let mut reg = Registry {
            addr,
            opts: opts.clone(),
            child,
            tmp,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = reg.child.try_wait() {
                return Err(format!("exited with {st}; log:\n{}", reg.log()));
            }
            if reg.ready() {
                return Ok(reg);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no answer on {} within 30 s; log:\n{}",
                    reg.addr,
                    reg.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("registry.log")).unwrap_or_default()
    }

    /// Plain HTTP: `GET /v2/` answers 200 (401 with auth). HTTPS: the port accepts connections
    /// (the registry listens only once fully set up).
    fn ready(&self) -> bool {
        if self.opts.tls {
            return TcpStream::connect(&self.addr).is_ok();
        }
        let want = if self.opts.basic_auth.is_some() {
            401
        } else {
            200
        };
        self.v2_status() == Some(want)
    }

    /// HTTP status of a plain-HTTP `GET /v2/`, None if it does not answer.
    fn v2_status(&self) -> Option<u16> {
        let mut s = TcpStream::connect(&self.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(s, "GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr).ok()?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).ok()?;
        let head = std::str::from_utf8(&buf[..n]).ok()?;
        head.split(' ').nth(1)?.parse().ok()
    }

    /// `docker://<addr>/<repo_tag>`, the reference to give rkt (with `--insecure-options=http`
    /// for plain HTTP, `tls` for the self-signed HTTPS) or skopeo.
    pub fn docker_ref(&self, repo_tag: &str) -> String {
        format!("docker://{}/{repo_tag}", self.addr)
    }

    /// The PEM CA certificate that issued an HTTPS registry's certificate (SAN 127.0.0.1).
    pub fn ca_cert(&self) -> Option<PathBuf> {
        self.opts.tls.then(|| self.tmp.path().join("ca/ca.pem"))
    }

    /// Installs the CA of an HTTPS registry where rkt looks for it:
    /// `<config_dir>/certs.d/<addr>/ca.crt`.
    pub fn trust_ca_in(&self, config_dir: &Path) {
        let ca = self.ca_cert().expect("an HTTPS registry");
        let d = config_dir.join("certs.d").join(&self.addr);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(ca, d.join("ca.crt")).unwrap();
    }

    /// The basic-auth user and password, if any.
    pub fn credentials(&self) -> Option<(String, String)> {
        self.opts.basic_auth.clone()
    }

    /// Copies image `src` (any skopeo transport, e.g. `oci:/path:latest`) to `<addr>/<repo_tag>`,
    /// keeping its manifest format (OCI for the test images).
    pub fn push(&self, src: &str, repo_tag: &str) {
        self.push_inner(src, repo_tag, None)
    }

    /// Like [`Registry::push`], converting the manifest to `format`: `v2s2` (Docker schema 2, what
    /// Docker Hub mostly serves), `oci`, or `v2s1` (the deprecated Docker schema 1).
    pub fn push_as(&self, src: &str, repo_tag: &str, format: &str) {
        self.push_inner(src, repo_tag, Some(format))
    }

    fn push_inner(&self, src: &str, repo_tag: &str, format: Option<&str>) {
        let mut c = Command::new("skopeo");
        c.args(["--insecure-policy", "copy", "--dest-tls-verify=false"]);
        if let Some(f) = format {
            c.arg(format!("--format={f}"));
        }
        if let Some((u, p)) = &self.opts.basic_auth {
            c.arg(format!("--dest-creds={u}:{p}"));
        }
        c.arg(src).arg(self.docker_ref(repo_tag));
        let out = crate::run_command(c, 600);
        if out.code != 0 {
            panic!(
                "pushing {src} to {repo_tag} failed\n{out}\nregistry log:\n{}",
                self.log()
            );
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
