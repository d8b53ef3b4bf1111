//! Pods measured into a real TPM (swtpm) by `rkt run`, checked with tpm2-tools and `rkt tpm verify`.

mod tpm_support;

use std::path::{Path, PathBuf};

use rkt_tests::{images, require_root, RktEnv};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tpm_support::Swtpm;

fn tcti_flag(tpm: &Swtpm) -> String {
    format!("--tpm-tcti={}", tpm.tcti())
}

/// `rkt run --stage1=ns --tpm=MODE busybox --exec /bin/echo -- WORD`, saving the pod UUID.
fn run_echo(env: &RktEnv, tcti: &str, mode: &str, word: &str) -> (rkt_tests::RktOutput, PathBuf) {
    let uuid_file = env.scratch.join(format!("uuid-{word}"));
    let img = images().busybox_oci_ref();
    let out = env.rkt(&[
        tcti,
        "--insecure-options=image",
        "run",
        "--stage1=ns",
        &format!("--tpm={mode}"),
        &format!("--uuid-file-save={}", uuid_file.display()),
        "--net=none",
        &img,
        "--exec",
        "/bin/echo",
        "--",
        word,
    ]);
    (out, uuid_file)
}

fn pod_dir(env: &RktEnv, uuid: &str) -> PathBuf {
    for state in ["run", "exited-garbage", "prepared", "garbage"] {
        let p = env.dir.join("pods").join(state).join(uuid);
        if p.exists() {
            return p;
        }
    }
    panic!("pod {uuid} not found under {}", env.dir.display());
}

fn the_log(env: &RktEnv) -> PathBuf {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(env.dir.join("tpm"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .collect();
    assert_eq!(logs.len(), 1, "one log per boot cycle: {logs:?}");
    logs.pop().unwrap()
}

/// tpm2_eventlog's replay of PCR 15 in `bank`.
fn eventlog_replay(tpm: &Swtpm, log: &Path, bank: &str) -> String {
    eventlog_replay_pcr(tpm, log, bank, 15)
}

fn eventlog_replay_pcr(tpm: &Swtpm, log: &Path, bank: &str, pcr: u32) -> String {
    let out = tpm.tool(&["tpm2_eventlog", log.to_str().unwrap()]);
    let pcrs = out
        .split("pcrs:")
        .nth(1)
        .expect("tpm2_eventlog printed pcrs");
    let section = pcrs
        .split(&format!("{bank}:"))
        .nth(1)
        .unwrap_or_else(|| panic!("no {bank} in {pcrs}"));
    let line = section
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{pcr} :")))
        .unwrap();
    line.split("0x").nth(1).unwrap().trim().to_lowercase()
}

fn flip_byte(path: &Path, at: usize) {
    let mut b = std::fs::read(path).unwrap();
    b[at] ^= 0x01;
    std::fs::write(path, b).unwrap();
}

#[test]
fn measured_pod_verifies_and_tampering_is_named() {
    require_root();
    let tpm = Swtpm::start();
    let env = RktEnv::new();
    let tcti = tcti_flag(&tpm);
    let (out, uuid_file) = run_echo(&env, &tcti, "required", "measured-hello");
    out.assert_ok();
    out.assert_stdout_contains("measured-hello");
    let uuid = std::fs::read_to_string(uuid_file)
        .unwrap()
        .trim()
        .to_string();
    let pod = pod_dir(&env, &uuid);

    // The pod lists its own entries: stage0, stage1, pod manifest, one app.
    let rec: Value =
        serde_json::from_slice(&std::fs::read(pod.join("tpm-events.json")).unwrap()).unwrap();
    assert_eq!(rec["pcr"], 15);
    assert_eq!(rec["events"], serde_json::json!([1, 2, 3, 4]));

    let log = env.rkt(&[&tcti, "tpm", "log", "--pod", &uuid]);
    log.assert_ok();
    for label in ["rkt/stage0", "rkt/stage1/ns", "rkt/pod-manifest", "rkt/app"] {
        log.assert_stdout_contains(label);
    }
    log.assert_stdout_contains("app=busybox");

    // Every entry's sha256 digest is the SHA-256 of its event data, and the pod manifest entry
    // names the SHA-256 of the file on disk.
    let json = env.rkt(&[&tcti, "tpm", "log", "--format=json"]);
    json.assert_ok();
    let entries: Vec<Value> = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(entries.len(), 4);
    for e in &entries {
        let data = e["event"].as_str().unwrap();
        assert_eq!(e["type"], "EV_IPL");
        assert_eq!(
            e["digests"]["sha256"].as_str().unwrap(),
            hex::encode(Sha256::digest(data.as_bytes()))
        );
        assert!(data.contains(&uuid), "{data}");
    }
    let manifest_sha = hex::encode(Sha256::digest(std::fs::read(pod.join("pod")).unwrap()));
    assert!(entries[2]["event"]
        .as_str()
        .unwrap()
        .contains(&manifest_sha));

    // tpm2-tools' own replay of our log equals the TPM, in every bank.
    let log_path = the_log(&env);
    for bank in ["sha1", "sha256", "sha384", "sha512"] {
        assert_eq!(
            eventlog_replay(&tpm, &log_path, bank),
            tpm.pcrread(bank, 15),
            "{bank}"
        );
    }

    env.rkt(&[&tcti, "tpm", "verify", "--pod", &uuid])
        .assert_ok()
        .assert_stdout_contains("matches the TPM");

    // A changed pod manifest is named.
    let manifest = pod.join("pod");
    let original = std::fs::read(&manifest).unwrap();
    flip_byte(&manifest, original.len() / 2);
    let bad = env.rkt(&[&tcti, "tpm", "verify", "--pod", &uuid]);
    bad.assert_code(254);
    bad.assert_stderr_contains("entry 3 (rkt/pod-manifest");
    bad.assert_stderr_contains("changed since it was measured");
    assert_eq!(bad.stderr.lines().count(), 1, "{}", bad.stderr);
    std::fs::write(&manifest, &original).unwrap();

    // A changed file in the app's rendered tree is named.
    let app_event: Value = {
        let data = entries[3]["event"].as_str().unwrap();
        serde_json::from_str(data.split_once(' ').unwrap().1).unwrap()
    };
    let rootfs = PathBuf::from(app_event["rootfs"].as_str().unwrap());
    let victim = rootfs.join("etc/passwd");
    let before = std::fs::read(&victim).unwrap();
    std::fs::write(
        &victim,
        [before.as_slice(), b"evil::0:0::/:/bin/sh\n"].concat(),
    )
    .unwrap();
    let bad = env.rkt(&[&tcti, "tpm", "verify", "--pod", &uuid]);
    bad.assert_code(254);
    bad.assert_stderr_contains("entry 4 (rkt/app");
    bad.assert_stderr_contains("rendered tree");
    std::fs::write(&victim, &before).unwrap();
    env.rkt(&[&tcti, "tpm", "verify", "--pod", &uuid])
        .assert_ok();

    // One flipped byte in the log (inside the last entry's event data) is named.
    let len = std::fs::metadata(&log_path).unwrap().len() as usize;
    flip_byte(&log_path, len - 3);
    let bad = env.rkt(&[&tcti, "tpm", "verify"]);
    bad.assert_code(254);
    bad.assert_stderr_contains("entry 4 (");
    bad.assert_stderr_contains("is not the hash of its event data");
    flip_byte(&log_path, len - 3);
    env.rkt(&[&tcti, "tpm", "verify"]).assert_ok();

    // An entry that is in the log but was never extended (a crash between append and extend):
    // append a second copy of the last entry (4 banks: 12 + 2*4 + 20+32+48+64 + 4 + data bytes).
    let last_len = 12 + 8 + 164 + 4 + entries[3]["event"].as_str().unwrap().len();
    let bytes = std::fs::read(&log_path).unwrap();
    let dup = [bytes.as_slice(), &bytes[bytes.len() - last_len..]].concat();
    std::fs::write(&log_path, dup).unwrap();
    let bad = env.rkt(&[&tcti, "tpm", "verify"]);
    bad.assert_code(254);
    bad.assert_stderr_contains("entry 5 (rkt/app");
    bad.assert_stderr_contains("logged but not in PCR 15");
    bad.assert_stderr_contains("only up to entry 4");
    std::fs::write(&log_path, bytes).unwrap();
    env.rkt(&[&tcti, "tpm", "verify"]).assert_ok();
}

#[test]
fn required_without_a_tpm_refuses_the_pod() {
    require_root();
    let env = RktEnv::new();
    let (out, _) = run_echo(
        &env,
        "--tpm-tcti=device:/nonexistent/tpmrm0",
        "required",
        "should-not-run",
    );
    out.assert_code(254);
    out.assert_stderr_contains("--tpm=required");
    out.assert_stderr_contains("/nonexistent/tpmrm0");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(!out.stdout.contains("should-not-run"), "{}", out.stdout);
}

#[test]
fn auto_without_a_tpm_runs_quietly_and_says_so_under_debug() {
    require_root();
    let env = RktEnv::new();
    let (out, uuid_file) = run_echo(
        &env,
        "--tpm-tcti=device:/nonexistent/tpmrm0",
        "auto",
        "unmeasured-hello",
    );
    out.assert_ok();
    out.assert_stdout_contains("unmeasured-hello");
    // Most hosts have no TPM: a note on every run would be noise.
    assert!(!out.stderr.contains("TPM"), "{}", out.stderr);
    let debug = env.rkt(&[
        "--debug",
        "--tpm-tcti=device:/nonexistent/tpmrm0",
        "--insecure-options=image",
        "run",
        "--stage1=ns",
        "--tpm=auto",
        "--net=none",
        &images().busybox_oci_ref(),
        "--exec",
        "/bin/echo",
        "--",
        "unmeasured-debug",
    ]);
    debug.assert_ok();
    let notes: Vec<&str> = debug
        .stderr
        .lines()
        .filter(|l| l.contains("no TPM"))
        .collect();
    assert_eq!(notes.len(), 1, "{}", debug.stderr);
    let uuid = std::fs::read_to_string(uuid_file)
        .unwrap()
        .trim()
        .to_string();
    assert!(!pod_dir(&env, &uuid).join("tpm-events.json").exists());
}

#[test]
fn concurrent_pods_keep_the_log_whole() {
    require_root();
    let tpm = Swtpm::start();
    let env = RktEnv::new();
    let tcti = tcti_flag(&tpm);
    let img = images().busybox_oci_ref();
    // Fetch once so the pods race on measurement, not on the import.
    env.fetch_id(&["--insecure-options=image", &img]);
    let children: Vec<_> = (0..4)
        .map(|i| {
            let uuid_file = env.scratch.join(format!("uuid-c{i}"));
            let child = env.spawn(&[
                &tcti,
                "--insecure-options=image",
                "run",
                "--stage1=ns",
                "--tpm=required",
                &format!("--uuid-file-save={}", uuid_file.display()),
                "--net=none",
                &img,
                "--exec",
                "/bin/true",
            ]);
            (child, uuid_file)
        })
        .collect();
    let mut uuids = Vec::new();
    for (mut child, uuid_file) in children {
        let out = child.wait_timeout(300);
        out.assert_ok();
        uuids.push(
            std::fs::read_to_string(uuid_file)
                .unwrap()
                .trim()
                .to_string(),
        );
    }
    env.rkt(&[&tcti, "tpm", "verify"]).assert_ok();
    let mut all = Vec::new();
    for uuid in &uuids {
        env.rkt(&[&tcti, "tpm", "verify", "--pod", uuid])
            .assert_ok();
        let rec: Value = serde_json::from_slice(
            &std::fs::read(pod_dir(&env, uuid).join("tpm-events.json")).unwrap(),
        )
        .unwrap();
        let ev: Vec<u64> = rec["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(ev.len(), 4);
        all.extend(ev);
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=16).collect::<Vec<u64>>(),
        "every entry belongs to one pod"
    );
}

#[test]
fn tpm_d_config_chooses_pcr_mode_and_tcti() {
    require_root();
    let tpm = Swtpm::start();
    let env = RktEnv::new();
    let conf = env.local_config.join("tpm.d");
    std::fs::create_dir_all(&conf).unwrap();
    let write_conf = |tcti: &str| {
        std::fs::write(
            conf.join("tpm.json"),
            format!(
                r#"{{"rktKind":"tpm","rktVersion":"v1","mode":"required","pcr":23,"tcti":"{tcti}"}}"#
            ),
        )
        .unwrap();
    };
    write_conf(&tpm.tcti());
    let img = images().busybox_oci_ref();
    let run = |word: &str| {
        env.rkt_isolated(&[
            "--insecure-options=image",
            "run",
            "--stage1=ns",
            "--net=none",
            &img,
            "--exec",
            "/bin/echo",
            "--",
            word,
        ])
    };
    run("configured")
        .assert_ok()
        .assert_stdout_contains("configured");
    // Measured into PCR 23, not 15.
    let log = the_log(&env);
    assert_eq!(
        eventlog_replay_pcr(&tpm, &log, "sha256", 23),
        tpm.pcrread("sha256", 23)
    );
    assert_eq!(tpm.pcrread("sha256", 15), "0".repeat(64));
    env.rkt_isolated(&["tpm", "verify"])
        .assert_ok()
        .assert_stdout_contains("PCR 23 sha256");
    // mode=required from the config: an unusable TCTI refuses the pod.
    write_conf("device:/nonexistent/tpmrm0");
    let out = run("should-not-run");
    out.assert_code(254);
    out.assert_stderr_contains("--tpm=required but no usable TPM");
    assert!(!out.stdout.contains("should-not-run"));
}
