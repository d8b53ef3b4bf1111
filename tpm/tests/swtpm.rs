//! The measurement journal against a real TPM (swtpm), checked independently with tpm2-tools.

mod common;

use std::process::Command;

use common::Swtpm;
use rkt_tpm::{Bank, Journal, Log};

#[test]
fn log_replay_equals_tpm2_pcrread_and_tpm2_eventlog_parses_it() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::new(dir.path(), &tpm.tcti());
    let mut last = 0;
    for i in 0..5 {
        let l = j
            .measure(15, format!("rkt/test {{\"n\":{i}}}").as_bytes())
            .unwrap();
        assert_eq!(
            l.index,
            i + 1,
            "events are numbered from 1, after the header"
        );
        last = l.index;
    }
    assert_eq!(last, 5);
    let boot = j.probe().unwrap();
    let path = j.log_path(boot);
    assert!(path.ends_with(format!("eventlog-{}.bin", boot.id())));
    let log = Log::parse(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(log.events.len(), 5);
    // swtpm allocates sha1, sha256, sha384 and sha512: every active bank is measured.
    assert_eq!(
        log.banks,
        vec![Bank::Sha1, Bank::Sha256, Bank::Sha384, Bank::Sha512]
    );
    for bank in &log.banks {
        assert_eq!(
            hex::encode(log.replay(15, *bank, log.events.len())),
            tpm.pcrread(bank.name(), 15),
            "{bank} bank"
        );
    }

    let out = Command::new("tpm2_eventlog").arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tpm2_eventlog: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("EV_IPL"), "{text}");
    // Its event numbers are ours: the header is event 0, the fifth measurement is event 5.
    assert!(
        text.contains("- EventNum: 0\n  PCRIndex: 0\n  EventType: EV_NO_ACTION"),
        "{text}"
    );
    assert!(
        text.contains("- EventNum: 5\n  PCRIndex: 15\n  EventType: EV_IPL"),
        "{text}"
    );
    assert!(text.contains("rkt/test {\"n\":4}"), "{text}");
    // tpm2_eventlog's own replay agrees with the TPM.
    let sha256 = tpm.pcrread("sha256", 15);
    assert!(text.contains(&format!("15 : 0x{sha256}")), "{text}");
}

#[test]
fn quote_verifies_with_tpm2_checkquote() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::new(dir.path(), &tpm.tcti());
    j.measure(15, b"rkt/test {\"quote\":true}").unwrap();
    let nonce = hex::decode("0123456789abcdef").unwrap();
    let (q, log, _) = j.quote(15, &nonce).unwrap();
    let out = dir.path().join("quote");
    q.write_files(&out, &log).unwrap();
    let p = |n: &str| out.join(n).display().to_string();
    let check = |nonce: &str| {
        tpm.tool_output(&[
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
            nonce,
        ])
    };
    let ok = check("0123456789abcdef");
    assert!(
        ok.status.success(),
        "tpm2_checkquote: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // The PCR values in the quote are the TPM's, and the quoted log replays to them.
    let text = String::from_utf8_lossy(&ok.stdout).to_lowercase();
    let sha256 = tpm.pcrread("sha256", 15);
    assert!(text.contains(&sha256), "{text}");
    let log = Log::parse(&log).unwrap();
    assert_eq!(hex::encode(log.replay(15, Bank::Sha256, 1)), sha256);
    // A different nonce is refused.
    assert!(!check("0123456789abcdee").status.success());
    // The AK is derived, not stored: quoting again gives the same public key.
    let (q2, _, _) = j.quote(15, &nonce).unwrap();
    assert_eq!(q2.ak_pem, q.ak_pem);
}

/// Several processes measuring at once: the log order must equal the extend order.
#[test]
fn concurrent_processes_never_break_the_log() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..8)
        .map(|id| {
            Command::new(&exe)
                .args(["--exact", "concurrent_child", "--ignored", "--nocapture"])
                .env("RKT_TPM_CHILD_DIR", dir.path())
                .env("RKT_TPM_CHILD_TCTI", tpm.tcti())
                .env("RKT_TPM_CHILD_ID", id.to_string())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let j = Journal::new(dir.path(), &tpm.tcti());
    let log = Log::parse(&std::fs::read(j.log_path(j.probe().unwrap())).unwrap()).unwrap();
    assert_eq!(log.events.len(), 80);
    for id in 0..8 {
        // Each process's events are all there, in its own order.
        let mine: Vec<String> = log
            .events
            .iter()
            .map(|e| String::from_utf8(e.data.clone()).unwrap())
            .filter(|d| d.starts_with(&format!("rkt/test child={id} ")))
            .collect();
        let want: Vec<String> = (0..10)
            .map(|i| format!("rkt/test child={id} event={i}"))
            .collect();
        assert_eq!(mine, want);
    }
    for bank in &log.banks {
        assert_eq!(
            hex::encode(log.replay(15, *bank, 80)),
            tpm.pcrread(bank.name(), 15),
            "{bank}"
        );
    }
}

/// Not a test on its own: the child half of `concurrent_processes_never_break_the_log`.
#[test]
#[ignore]
fn concurrent_child() {
    let (Ok(dir), Ok(tcti), Ok(id)) = (
        std::env::var("RKT_TPM_CHILD_DIR"),
        std::env::var("RKT_TPM_CHILD_TCTI"),
        std::env::var("RKT_TPM_CHILD_ID"),
    ) else {
        return;
    };
    let j = Journal::new(std::path::Path::new(&dir), &tcti);
    for i in 0..10 {
        j.measure(15, format!("rkt/test child={id} event={i}").as_bytes())
            .unwrap();
    }
}
