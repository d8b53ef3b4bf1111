//! `rkt tpm …` against a real TPM (swtpm), checked independently with tpm2-tools.

mod tpm_support;

use rkt_tests::RktEnv;
use tpm_support::Swtpm;

fn tcti_flag(tpm: &Swtpm) -> String {
    format!("--tpm-tcti={}", tpm.tcti())
}

#[test]
fn quote_verifies_with_tpm2_checkquote() {
    let tpm = Swtpm::start();
    let env = RktEnv::new();
    let out = env.scratch.join("q");
    let r = env.rkt(&[
        &tcti_flag(&tpm),
        "tpm",
        "quote",
        "--nonce",
        "00112233aabbccdd",
        "--out",
        out.to_str().unwrap(),
    ]);
    r.assert_ok();
    r.assert_stdout_contains("tpm2_checkquote -u");
    let p = |n: &str| out.join(n).display().to_string();
    let check = tpm.tool_output(&[
        "tpm2_checkquote",
        "-u",
        &p("ak.pub.pem"),
        "-m",
        &p("quote.msg"),
        "-s",
        &p("quote.sig"),
        "-f",
        &p("quote.pcrs"),
        "-g",
        "sha256",
        "-q",
        "00112233aabbccdd",
    ]);
    assert!(
        check.status.success(),
        "tpm2_checkquote: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    // Nothing measured yet: the log has only its header, and tpm2_eventlog still reads it.
    tpm.tool(&["tpm2_eventlog", &p("eventlog.bin")]);
    // A bad nonce is refused with one line.
    let bad = env.rkt(&[&tcti_flag(&tpm), "tpm", "quote", "--nonce", "xyz"]);
    bad.assert_code(254);
    bad.assert_stderr_contains("--nonce \"xyz\" is not hex");
}

#[test]
fn verify_notices_extends_outside_the_log() {
    let tpm = Swtpm::start();
    let env = RktEnv::new();
    let ok = env.rkt(&[&tcti_flag(&tpm), "tpm", "verify"]);
    ok.assert_ok();
    ok.assert_stdout_contains("PCR 15 is at its reset value");
    // `rkt tpm log` with nothing measured: just the header line.
    let log = env.rkt(&[&tcti_flag(&tpm), "tpm", "log"]);
    log.assert_ok();
    assert_eq!(log.stdout, "INDEX  PCR  TYPE  SHA256  DESCRIPTION\n");

    tpm.tool(&["tpm2_pcrextend", &format!("15:sha256={}", "ab".repeat(32))]);
    let bad = env.rkt(&[&tcti_flag(&tpm), "tpm", "verify"]);
    bad.assert_code(254);
    bad.assert_stderr_contains("PCR 15 (sha256) is ");
    bad.assert_stderr_contains("extended outside rkt's log");
    assert_eq!(bad.stderr.lines().count(), 1, "{}", bad.stderr);
}

#[test]
fn no_tpm_is_one_clear_line() {
    let env = RktEnv::new();
    let r = env.rkt(&["--tpm-tcti=device:/nonexistent/tpmrm0", "tpm", "verify"]);
    r.assert_code(254);
    r.assert_stderr_contains("/nonexistent/tpmrm0");
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
}

#[test]
fn tcti_comes_from_the_flag_then_tpm2tools_tcti() {
    let tpm = Swtpm::start();
    let env = RktEnv::new();
    // TPM2TOOLS_TCTI, exactly as tpm2-tools reads it.
    let mut cmd = env.command(&["tpm", "verify"]);
    cmd.env("TPM2TOOLS_TCTI", tpm.tcti());
    let out = rkt_tests::run_command(cmd, 60);
    out.assert_ok();
    out.assert_stdout_contains("PCR 15 is at its reset value");
    // The flag wins over the environment.
    let mut cmd = env.command(&["--tpm-tcti=device:/nonexistent/tpmrm0", "tpm", "verify"]);
    cmd.env("TPM2TOOLS_TCTI", tpm.tcti());
    let out = rkt_tests::run_command(cmd, 60);
    out.assert_code(254);
    out.assert_stderr_contains("/nonexistent/tpmrm0");
}
