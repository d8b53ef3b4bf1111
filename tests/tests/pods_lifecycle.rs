//! Pod lifecycle without running apps: prepare, list, status, cat-manifest, rm, gc, bad input,
//! privilege checks and a prepare killed half-way. Pods are prepared with `--stage1=ns` (named,
//! not rkt's default, so a change of default changes nothing here).

use std::path::Path;
use std::process::Command;

use rkt_tests::{images, require_root, rkt_bin, run_command, RktEnv, RktOutput};

const STATE_DIRS: [&str; 6] = [
    "embryo",
    "prepare",
    "prepared",
    "run",
    "exited-garbage",
    "garbage",
];

fn busybox() -> String {
    images().busybox_oci_ref()
}

/// The app name rkt derives from the image name (`busybox-oci:latest`, as the store names an OCI
/// layout directory) when `--name` is not given.
const APP: &str = "busybox-oci";

/// UUIDs in one `pods/<state>` directory.
fn pods_in(env: &RktEnv, state: &str) -> Vec<String> {
    match std::fs::read_dir(env.dir.join("pods").join(state)) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn all_pods(env: &RktEnv) -> Vec<String> {
    STATE_DIRS.iter().flat_map(|s| pods_in(env, s)).collect()
}

fn prepare(env: &RktEnv, args: &[&str]) -> String {
    let mut a = vec!["prepare", "--stage1=ns", "--quiet"];
    a.extend_from_slice(args);
    let out = env.rkt(&a);
    out.assert_ok();
    let uuid = out.stdout.trim().to_string();
    assert!(is_uuid(&uuid), "not a UUID on stdout\n{out}");
    uuid
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.chars().filter(|c| *c == '-').count() == 4
        && s.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
}

#[track_caller]
fn assert_one_line_error(out: &RktOutput, needle: &str) {
    out.assert_code(254);
    assert_eq!(
        out.stderr.lines().count(),
        1,
        "expected one line on stderr\n{out}"
    );
    out.assert_stderr_contains(needle);
}

#[test]
fn prepare_prints_the_uuid_and_lays_out_the_pod() {
    require_root();
    let env = RktEnv::new();
    let img = busybox();
    let out = env.rkt(&["prepare", "--stage1=ns", &img]);
    out.assert_ok();
    let uuid = out.stdout.trim();
    assert!(is_uuid(uuid), "{out}");
    assert_eq!(out.stdout.lines().count(), 1, "{out}");
    assert_eq!(pods_in(&env, "prepared"), vec![uuid.to_string()]);
    let pod = env.dir.join("pods/prepared").join(uuid);
    for f in ["pod", "pod-created", "overlay-prepared"] {
        assert!(pod.join(f).exists(), "missing {f}");
    }
    assert_eq!(
        std::fs::read_to_string(pod.join("stage1-flavor")).unwrap(),
        "ns"
    );
    let tree = std::fs::read_to_string(pod.join("appsinfo").join(APP).join("treeStoreID")).unwrap();
    assert!(tree.starts_with("sha256-"), "{tree}");
    assert!(pod
        .join("overlay")
        .join(&tree)
        .join("upper")
        .join(APP)
        .is_dir());
}

/// kvm is the default stage1; a `stage1.d` config naming `ns` changes the default, `--stage1`
/// beats both, and `rkt config` shows the default in force.
#[test]
fn default_stage1_is_kvm_unless_the_config_or_the_flag_says_otherwise() {
    require_root();
    let env = RktEnv::new();
    let img = busybox();
    let flavor_of = |args: &[&str]| {
        let mut a = vec!["prepare", "--quiet"];
        a.extend_from_slice(args);
        let out = env.rkt_isolated(&a);
        out.assert_ok();
        let uuid = out.stdout.trim().to_string();
        std::fs::read_to_string(
            env.dir
                .join("pods/prepared")
                .join(uuid)
                .join("stage1-flavor"),
        )
        .unwrap()
    };
    assert_eq!(flavor_of(&[&img]), "kvm");
    let name = |out: &RktOutput| {
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        v["stage0"][1]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(name(&env.rkt_isolated(&["config"])), "kvm");
    let d = env.local_config.join("stage1.d");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("default.json"),
        r#"{"rktKind": "stage1", "rktVersion": "v1", "name": "ns"}"#,
    )
    .unwrap();
    assert_eq!(flavor_of(&[&img]), "ns");
    assert_eq!(name(&env.rkt_isolated(&["config"])), "ns");
    assert_eq!(flavor_of(&["--stage1=kvm", &img]), "kvm");
}

#[test]
fn prepare_quiet_prints_only_the_uuid() {
    require_root();
    let env = RktEnv::new();
    let out = env.rkt(&["prepare", "--stage1=ns", "--quiet", &busybox()]);
    out.assert_ok();
    assert!(is_uuid(out.stdout.strip_suffix('\n').unwrap()), "{out}");
}

#[test]
fn no_overlay_copies_the_image_into_the_pod() {
    require_root();
    let env = RktEnv::new();
    let uuid = prepare(&env, &["--no-overlay", &busybox()]);
    let pod = env.dir.join("pods/prepared").join(&uuid);
    assert!(pod
        .join("stage1/rootfs/opt/stage2")
        .join(APP)
        .join("rootfs/inspect")
        .is_file());
    assert!(!pod.join("overlay-prepared").exists());
}

#[test]
fn list_shows_prepared_pods_in_rkt_columns() {
    require_root();
    let env = RktEnv::new();
    let uuid = prepare(&env, &[&busybox()]);
    let out = env.rkt(&["list"]);
    out.assert_ok();
    let mut lines = out.stdout.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap()
        .split('\t')
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "UUID",
            "APP",
            "IMAGE NAME",
            "STATE",
            "CREATED",
            "STARTED",
            "NETWORKS"
        ]
    );
    let row: Vec<&str> = lines
        .next()
        .unwrap()
        .split('\t')
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(row[0], &uuid[..8], "{out}");
    assert_eq!(row[1], APP);
    assert_eq!(row[3], "prepared");
    assert!(row[4] == "now" || row[4].ends_with("ago"), "{out}");

    let out = env.rkt(&["list", "--full", "--no-legend"]);
    out.assert_ok();
    assert!(out.stdout.starts_with(&uuid), "{out}");
    assert!(out.stdout.contains("\tsha256-"), "{out}");
    assert!(out.stdout.contains(" +0000 UTC"), "{out}");

    let out = env.rkt(&["list", "--format=json"]);
    out.assert_ok();
    out.assert_stdout_contains(&format!("\"name\":\"{uuid}\""));
    out.assert_stdout_contains("\"state\":\"prepared\"");
    out.assert_stdout_contains(&format!("\"app_names\":[\"{APP}\"]"));
}

#[test]
fn list_shows_every_app_of_a_pod() {
    require_root();
    let env = RktEnv::new();
    let img = busybox();
    prepare(&env, &[&img, "--name=web", "---", &img, "--name=db"]);
    let out = env.rkt(&["list", "--no-legend"]);
    out.assert_ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].contains("\tweb\t"), "{out}");
    assert!(
        lines[1].starts_with('\t') && lines[1].contains("db"),
        "{out}"
    );
}

#[test]
fn status_of_a_prepared_pod() {
    require_root();
    let env = RktEnv::new();
    let uuid = prepare(&env, &[&busybox()]);
    let out = env.rkt(&["status", &uuid[..8]]);
    out.assert_ok();
    assert_eq!(out.expect_value("state"), "prepared");
    assert!(out.expect_value("created").ends_with("+0000 UTC"), "{out}");
    assert!(
        out.value("pid").is_none() && out.value("exited").is_none(),
        "{out}"
    );
    let out = env.rkt(&["status", "--format=json", &uuid]);
    out.assert_ok();
    out.assert_stdout_contains("\"state\":\"prepared\"");
}

#[test]
fn per_app_flags_end_up_in_the_pod_manifest() {
    require_root();
    let env = RktEnv::new();
    let img = busybox();
    let uuid = prepare(
        &env,
        &[
            "--set-env=POD=1",
            &img,
            "--name=web",
            "--exec=/inspect",
            "--memory=64Mi",
            "--caps-retain=CAP_NET_ADMIN",
            "--environment=APP=2",
            "--user=1000",
            "--",
            "--print-env=APP",
            "---",
            &img,
            "--name=db",
            "--readonly-rootfs",
        ],
    );
    let out = env.rkt(&["cat-manifest", &uuid]);
    out.assert_ok();
    assert!(
        out.stdout.starts_with("{\n\t\"acKind\": \"PodManifest\""),
        "{out}"
    );
    for needle in [
        "\"name\": \"web\"",
        "\"name\": \"db\"",
        "\"/inspect\"",
        "\"--print-env=APP\"",
        "resource/memory",
        "\"64Mi\"",
        "CAP_NET_ADMIN",
        "\"APP\"",
        "\"POD\"",
        "\"user\": \"1000\"",
        "\"readOnlyRootFS\": true",
    ] {
        out.assert_stdout_contains(needle);
    }
    let out = env.rkt(&["cat-manifest", "--pretty-print=false", &uuid]);
    out.assert_ok();
    assert_eq!(out.stdout.lines().count(), 1, "{out}");
}

#[test]
fn rm_removes_a_prepared_pod() {
    require_root();
    let env = RktEnv::new();
    let uuid = prepare(&env, &[&busybox()]);
    let out = env.rkt(&["rm", &uuid]);
    out.assert_ok();
    assert_eq!(out.stdout, format!("\"{uuid}\"\n"));
    assert!(all_pods(&env).is_empty(), "{:?}", all_pods(&env));
}

#[test]
fn uuid_file_is_accepted_by_status_rm_and_cat_manifest() {
    require_root();
    let env = RktEnv::new();
    let uuid = prepare(&env, &[&busybox()]);
    let f = env.scratch.join("uuid");
    std::fs::write(&f, format!("{uuid}\n")).unwrap();
    let flag = format!("--uuid-file={}", f.display());
    env.rkt(&["status", &flag]).assert_ok();
    env.rkt(&["cat-manifest", &flag]).assert_ok();
    env.rkt(&["rm", &flag]).assert_ok();
    assert!(all_pods(&env).is_empty());
}

#[test]
fn unknown_uuids_are_one_line_errors() {
    require_root();
    let env = RktEnv::new();
    prepare(&env, &[&busybox()]);
    for cmd in ["status", "rm", "cat-manifest", "stop", "run-prepared"] {
        let out = env.rkt(&[cmd, "deadbeef"]);
        out.assert_code(254);
        assert_eq!(
            out.stderr.lines().last().unwrap(),
            "rkt: no matches found for \"deadbeef\"",
            "{out}"
        );
    }
}

#[test]
fn bad_input_is_refused_and_leaves_no_pod() {
    require_root();
    let env = RktEnv::new();
    let img = busybox();
    let nohost = "--volume=v,kind=host,source=/does/not/exist";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["prepare", &img, "--bogus"], "unknown flag: --bogus"),
        (
            vec!["run", "--exec=/x", &img],
            "--exec must follow an image",
        ),
        (vec!["prepare", &img, "--memory=lots"], "--memory"),
        (vec!["prepare", &img, "--cpu=-1"], "--cpu"),
        (
            vec!["prepare", &img, "--caps-retain=CAP_BOGUS"],
            "CAP_BOGUS",
        ),
        (vec!["prepare", &img, "--seccomp=chmod"], "--seccomp"),
        (
            vec!["prepare", "--volume=v,kind=empty", &img],
            "volume \"v\" is not mounted",
        ),
        (
            vec!["prepare", &img, "--mount=volume=nope,target=/x"],
            "\"nope\"",
        ),
        (
            vec!["prepare", nohost, &img, "--mount=volume=v,target=/v"],
            "does not exist",
        ),
        (
            vec!["prepare", "--pull-policy=sometimes", &img],
            "--pull-policy",
        ),
        (
            vec!["prepare", "--stage1=xen", &img],
            "--stage1=\"xen\" does not name a stage1 we have (available: --stage1=ns, --stage1=kvm, --stage1=fly)",
        ),
        (
            vec!["run", "--stage1-name=example.com/xen-stage1", &img],
            "does not name a stage1 we have",
        ),
        (
            vec!["prepare", "--pod-manifest=/nonexistent", &img],
            "conflicting flags set with --pod-manifest",
        ),
        (vec!["run", "--dns=not-an-ip", &img], "--dns"),
        (vec!["run", "--hosts-entry=1.2.3.4", &img], "--hosts-entry"),
        (vec!["run", "--net=mynet", &img], "mynet"),
        (vec!["run", "--interactive", &img, &img], "interactive"),
        (vec!["prepare", &img, "--name=Bad_Name"], "invalid app name"),
        (vec!["prepare", &img, "---", &img], "duplicate app name"),
        (vec!["prepare"], "must provide at least one image"),
    ];
    for (args, needle) in cases {
        let out = env.rkt(&args);
        assert_one_line_error(&out, needle);
        assert!(
            all_pods(&env).is_empty(),
            "{args:?} left {:?}",
            all_pods(&env)
        );
    }
    // An image that cannot be fetched.
    let out = env.rkt(&[
        "prepare",
        "--pull-policy=never",
        "oci:/nonexistent/layout:latest",
    ]);
    out.assert_code(254);
    assert!(all_pods(&env).is_empty());
}

fn as_nobody(env: &RktEnv, args: &[&str]) -> RktOutput {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(rkt_bin())
        .arg(format!("--dir={}", env.dir.display()))
        .args(args);
    run_command(c, 60)
}

#[test]
fn privileged_commands_refuse_unprivileged_users() {
    require_root();
    let env = RktEnv::new();
    let img = busybox();
    for args in [
        vec!["run", img.as_str()],
        vec!["prepare", img.as_str()],
        vec!["run-prepared", "deadbeef"],
        vec!["enter", "deadbeef"],
        vec!["rm", "deadbeef"],
        vec!["gc"],
    ] {
        let out = as_nobody(&env, &args);
        assert_one_line_error(&out, "cannot run as unprivileged user");
    }
}

#[test]
fn gc_expires_prepared_pods() {
    require_root();
    let env = RktEnv::new();
    let uuid = prepare(&env, &[&busybox()]);
    env.rkt(&["gc"]).assert_ok();
    assert_eq!(pods_in(&env, "prepared"), vec![uuid.clone()]);
    let out = env.rkt(&["gc", "--expire-prepared=0s"]);
    out.assert_ok();
    assert_eq!(out.stdout, format!("Garbage collecting pod \"{uuid}\"\n"));
    assert!(all_pods(&env).is_empty(), "{:?}", all_pods(&env));
}

#[test]
fn run_prepared_refuses_a_pod_that_is_not_prepared() {
    require_root();
    let env = RktEnv::new();
    let uuid = prepare(&env, &[&busybox()]);
    env.rkt(&["rm", &uuid]).assert_ok();
    let out = env.rkt(&["run-prepared", &uuid]);
    assert_one_line_error(&out, "no matches found");
}

/// SIGKILL `rkt prepare` while it copies a big image into the pod: the pod shows as an aborted
/// prepare and gc removes it.
#[test]
fn prepare_killed_half_way_is_an_aborted_prepare_that_gc_removes() {
    require_root();
    let env = RktEnv::new();
    let big = format!("oci-archive:{}", rkt_tests::big_image().display());
    // Import and render first, so the kill lands in the pod-populating copy.
    prepare(&env, &[&big]);
    env.rkt(&["gc", "--expire-prepared=0s"]).assert_ok();
    let mut child = env.spawn(&["prepare", "--stage1=ns", "--no-overlay", &big]);
    let prepare_dir = env.dir.join("pods/prepare");
    let start = std::time::Instant::now();
    while pods_in(&env, "prepare").is_empty() {
        assert!(
            child.is_running(),
            "prepare finished before it could be killed"
        );
        assert!(
            start.elapsed().as_secs() < 120,
            "no pod appeared in {}",
            prepare_dir.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill();
    let uuid = pods_in(&env, "prepare").pop().unwrap();
    let out = env.rkt(&["status", &uuid]);
    out.assert_ok();
    assert_eq!(out.expect_value("state"), "aborted prepare");
    let out = env.rkt(&["gc"]);
    out.assert_ok();
    out.assert_stderr_contains(&format!("moving failed prepare \"{uuid}\" to garbage"));
    out.assert_stdout_contains(&format!("Garbage collecting pod \"{uuid}\""));
    assert!(all_pods(&env).is_empty(), "{:?}", all_pods(&env));
    assert!(!Path::new(&env.dir.join("pods/garbage").join(&uuid)).exists());
}

/// Three `rkt gc` and one `rkt rm` per pod at once, as a node's timer, an operator and a shim's
/// `delete` may do: a pod another rkt moved or removed first is not an error, every gc exits 0,
/// and nothing is left.
#[test]
fn concurrent_gcs_and_rms_all_succeed() {
    require_root();
    let env = RktEnv::new();
    let uuids: Vec<String> = (0..12).map(|_| prepare(&env, &[&busybox()])).collect();
    let gcs = std::thread::scope(|s| {
        let gcs: Vec<_> = (0..3)
            .map(|_| s.spawn(|| env.rkt(&["gc", "--expire-prepared=0s", "--grace-period=0s"])))
            .collect();
        for u in &uuids {
            s.spawn(|| env.rkt(&["rm", u]));
        }
        gcs.into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    for out in &gcs {
        out.assert_ok();
    }
    assert!(all_pods(&env).is_empty(), "{:?}", all_pods(&env));
}
