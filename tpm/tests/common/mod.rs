//! A real TPM for tests: Debian's swtpm in socket mode on free local ports, its own state
//! directory, killed (by its pid) when dropped.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Swtpm {
    child: Child,
    pub port: u16,
    pub state: tempfile::TempDir,
}

impl Swtpm {
    pub fn start() -> Swtpm {
        let state = tempfile::tempdir().unwrap();
        for _ in 0..50 {
            // An ephemeral port whose successor is free too (swtpm's control channel).
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            if port == u16::MAX || TcpListener::bind(("127.0.0.1", port + 1)).is_err() {
                continue;
            }
            drop(l);
            let mut child = Command::new("swtpm")
                .args(["socket", "--tpm2"])
                .args(["--server", &format!("type=tcp,port={port}")])
                .args(["--ctrl", &format!("type=tcp,port={}", port + 1)])
                .args(["--tpmstate", &format!("dir={}", state.path().display())])
                .args(["--flags", "not-need-init,startup-clear"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("swtpm is installed (scripts/deps.sh)");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // lost a port race; try another
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Swtpm { child, port, state };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start swtpm");
    }

    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Runs a tpm2-tools command against this TPM; returns stdout, panics on failure.
    pub fn tool(&self, args: &[&str]) -> String {
        let out = self.tool_output(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn tool_output(&self, args: &[&str]) -> std::process::Output {
        Command::new(args[0])
            .args(&args[1..])
            .env("TPM2TOOLS_TCTI", self.tcti())
            .output()
            .unwrap()
    }

    /// `tpm2_pcrread BANK:PCR` → the value as lowercase hex.
    pub fn pcrread(&self, bank: &str, pcr: u32) -> String {
        let out = self.tool(&["tpm2_pcrread", &format!("{bank}:{pcr}")]);
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{pcr}:")))
            .unwrap_or_else(|| panic!("no PCR {pcr} in {out}"));
        line.split("0x").nth(1).unwrap().trim().to_lowercase()
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
