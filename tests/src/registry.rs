//! A real Docker registry (Debian's docker-registry, i.e. distribution v2) on 127.0.0.1.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A registry serving plain HTTP on a free port, with its own storage; killed on drop.
pub struct Registry {
    /// `127.0.0.1:PORT`
    pub addr: String,
    child: Child,
    tmp: tempfile::TempDir,
}

impl Registry {
    /// Starts the registry and waits until `GET /v2/` answers 200.
    pub fn start() -> Registry {
        let mut last_err = String::new();
        // The free port is found by binding and releasing it, so another process may grab it in
        // between: retry a few times.
        for _ in 0..3 {
            match Self::try_start() {
                Ok(r) => return r,
                Err(e) => last_err = e,
            }
        }
        panic!("docker-registry did not start: {last_err}");
    }

    fn try_start() -> Result<Registry, String> {
        let tmp = tempfile::Builder::new()
            .prefix("rkt-test-registry-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a free port: {e}"))?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let storage = tmp.path().join("storage");
        std::fs::create_dir(&storage).map_err(|e| e.to_string())?;
        let config = tmp.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                storage.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let log =
            std::fs::File::create(tmp.path().join("registry.log")).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("running {REGISTRY_BIN}: {e}"))?;
        let mut reg = Registry { addr, child, tmp };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = reg.child.try_wait() {
                return Err(format!("exited with {st}; log:\n{}", reg.log()));
            }
            if reg.v2_status() == Some(200) {
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

    /// HTTP status of `GET /v2/`, None if it does not answer.
    fn v2_status(&self) -> Option<u16> {
        let mut s = TcpStream::connect(&self.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(s, "GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr).ok()?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).ok()?;
        let head = std::str::from_utf8(&buf[..n]).ok()?;
        head.split(' ').nth(1)?.parse().ok()
    }

    /// `docker://<addr>/<repo_tag>`, the reference to give rkt (with `--insecure-options=http`)
    /// or skopeo.
    pub fn docker_ref(&self, repo_tag: &str) -> String {
        format!("docker://{}/{repo_tag}", self.addr)
    }

    /// Copies image `src` (any skopeo transport, e.g. `oci:/path:latest`) to `<addr>/<repo_tag>`.
    pub fn push(&self, src: &str, repo_tag: &str) {
        let mut c = Command::new("skopeo");
        c.args(["--insecure-policy", "copy", "--dest-tls-verify=false", src])
            .arg(self.docker_ref(repo_tag));
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
