//! `rkt app` (issue 14): rktlet's call sequence against a sandbox pod (sandbox, add two apps,
//! start, status/list, exec, stop one, rm, stop the pod, gc), rkt v1's states, times and exit
//! codes, the per-app fields of `rkt list`/`rkt status` JSON, and the hostile cases (each one
//! line + exit 254, nothing left behind).
//!
//! The rktlet sequence runs on ns and kvm (one VM for all its checks: apps reach the running
//! guest over the host<->guest protocol); the hostile cases run on ns, where the same engine
//! checks apply. fly refuses mutable pods with one line (tested), see docs/app.md.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rkt_tests::{images, rkt_bin, Flavor, RktChild, RktEnv, RktOutput};
use serde_json::Value;

fn busybox() -> String {
    images().busybox_oci_ref()
}

#[track_caller]
fn one_line_254(out: &RktOutput, needle: &str) {
    out.assert_code(254);
    let err = out.stderr.trim_end();
    assert_eq!(err.lines().count(), 1, "not one line:\n{out}");
    assert!(err.contains(needle), "expected {needle:?} in:\n{out}");
}

/// Starts `rkt app sandbox --stage1=ns EXTRA…` in the background and waits until it is ready.
fn sandbox(env: &RktEnv, extra: &[&str]) -> (RktChild, String) {
    sandbox_on(Flavor::Ns, env, extra)
}

fn sandbox_on(flavor: Flavor, env: &RktEnv, extra: &[&str]) -> (RktChild, String) {
    let uuid_file = env.scratch.join("uuid");
    let uf = format!("--uuid-file-save={}", uuid_file.display());
    let mut a = vec!["app", "sandbox", flavor.flag(), "--net=none", &uf];
    a.extend_from_slice(extra);
    let mut child = env.spawn(&a);
    let start = Instant::now();
    while !uuid_file.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(flavor.start_secs()),
            "no uuid file\n{}",
            child.output_so_far()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let uuid = std::fs::read_to_string(&uuid_file).unwrap();
    let wait = format!("--wait-ready={}s", flavor.start_secs());
    env.rkt(&["status", &wait, &uuid]).assert_ok();
    (child, uuid)
}

fn pod_dir(env: &RktEnv, uuid: &str) -> PathBuf {
    env.dir.join("pods/run").join(uuid)
}

fn app_status(env: &RktEnv, uuid: &str, app: &str) -> Value {
    let out = env.rkt(&[
        "app",
        "status",
        uuid,
        &format!("--app={app}"),
        "--format=json",
    ]);
    out.assert_ok();
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}\n{out}"))
}

/// Bounded generously: a kvm guest under a loaded host forks and execs slowly.
fn wait_state(env: &RktEnv, uuid: &str, app: &str, state: &str) -> Value {
    let start = Instant::now();
    loop {
        let v = app_status(env, uuid, app);
        if v["state"] == state {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "app {app} never {state}: {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn manifest_apps(env: &RktEnv, uuid: &str) -> Vec<String> {
    let m: Value =
        serde_json::from_slice(&std::fs::read(pod_dir(env, uuid).join("pod")).unwrap()).unwrap();
    m["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect()
}

/// `rkt logs UUID --app=APP` once its stdout has `want` (the relay writes a moment after the
/// app did).
fn wait_logs(env: &RktEnv, uuid: &str, app: &str, want: &str) -> RktOutput {
    let start = Instant::now();
    loop {
        let out = env.rkt(&["logs", uuid, &format!("--app={app}")]);
        out.assert_ok();
        if out.stdout.contains(want) {
            return out;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no {want:?} in the logs of {app}:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn mounts_under(p: &Path) -> Vec<PathBuf> {
    rkt_tests::mounts_under(p)
}

rkt_tests::flavours!(rktlet_sequence_on_a_sandbox);

fn rktlet_sequence_on_a_sandbox(flavor: Flavor) {
    let env = flavor.env();
    let (mut child, uuid) = sandbox_on(
        flavor,
        &env,
        &[
            "--hostname=sbx",
            "--dns=192.0.2.53",
            "--hosts-entry=192.0.2.7=db",
            "--user-annotation=team=infra",
            "--user-label=tier=web",
        ],
    );
    // Following every app of the empty pod: the apps added later are taken in.
    let mut follow = env.spawn(&["logs", "--follow", &uuid]);
    // An empty pod: running, no apps.
    let list = env.rkt(&["app", "list", &uuid]);
    list.assert_ok();
    assert_eq!(list.stdout.trim(), "NAME\tSTATE", "{list}");
    let manifest = env.rkt(&["cat-manifest", &uuid]);
    manifest.assert_stdout_contains("coreos.com/rkt/stage1/mutable");
    manifest.assert_stdout_contains("coreos.com/rkt/user-label/tier");

    let img = busybox();
    // A host directory as the web app's own volume (rktlet's Kubernetes volumes).
    let host = env.scratch.join("web-data");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("in"), "from-host").unwrap();
    let mnt = format!(
        "--mnt-volume=name=web-data,kind=host,source={},target=/data",
        host.display()
    );
    env.rkt(&[
        "app",
        "add",
        &uuid,
        &img,
        "--name=web",
        "--user-label=role=frontend",
        "--environment=GREETING=hi",
        &mnt,
        "--exec=/bin/sh",
        "--",
        "-c",
        "echo web says $GREETING $(cat /data/in); echo w >/data/out; exec sleep 3600",
    ])
    .assert_ok();
    env.rkt(&[
        "app",
        "add",
        &uuid,
        &img,
        "--name=job",
        "--exec=/bin/sh",
        "--",
        "-c",
        // The pause orders the last line after the stderr one (streams are read apart).
        "echo job line 1; echo job err >&2; sleep 0.3; echo job line 2; exit 3",
    ])
    .assert_ok();
    let created = app_status(&env, &uuid, "web");
    assert_eq!(created["state"], "created", "{created}");
    assert!(created["created_at"].as_i64().unwrap() > 0);
    assert!(created.get("started_at").is_none(), "{created}");
    assert_eq!(created["user_labels"]["role"], "frontend");

    env.rkt(&["app", "start", &uuid, "--app=web"]).assert_ok();
    env.rkt(&["app", "start", &uuid, "--app=job"]).assert_ok();
    assert!(
        child.wait_for_stdout("web says hi from-host", 120),
        "no output"
    );
    let start = Instant::now();
    while std::fs::read_to_string(host.join("out")).ok().as_deref() != Some("w\n") {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "web wrote no /data/out"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let web = wait_state(&env, &uuid, "web", "running");
    assert!(web["started_at"].as_i64().unwrap() >= web["created_at"].as_i64().unwrap());
    let job = wait_state(&env, &uuid, "job", "exited");
    assert_eq!(job["exit_code"], 3, "{job}");
    assert!(job["finished_at"].as_i64().unwrap() >= job["started_at"].as_i64().unwrap());
    // Added apps' output is in the pod's logs, as a boot-time app's is.
    let logs = wait_logs(&env, &uuid, "job", "job line 2");
    assert_eq!(logs.stdout, "job line 1\njob line 2\n", "{logs}");
    assert_eq!(logs.stderr, "job err\n", "{logs}");
    let tail = env.rkt(&["logs", &uuid, "--app=job", "--tail=1"]);
    tail.assert_ok();
    assert_eq!(tail.stdout, "job line 2\n", "{tail}");
    // The CRI line format on disk.
    let raw = std::fs::read_to_string(pod_dir(&env, &uuid).join("logs/job.log")).unwrap();
    assert!(
        raw.lines().any(|l| l.ends_with(" stderr F job err")),
        "{raw}"
    );
    wait_logs(&env, &uuid, "web", "web says hi");
    // One app's failure does not stop the others, nor the pod.
    let list = env.rkt(&["app", "list", "--no-legend", &uuid]);
    list.assert_ok();
    let rows: Vec<Vec<&str>> = list
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        vec![vec!["web", "running"], vec!["job", "exited"]],
        "{list}"
    );
    let kv = env.rkt(&["app", "status", &uuid, "--app=job"]);
    kv.assert_ok();
    assert_eq!(kv.expect_value("state"), "exited");
    assert_eq!(kv.expect_value("exit_code"), "3");

    // exec: the pod's UTS namespace, DNS and hosts, and the app's environment.
    let ex = env.rkt(&[
        "app",
        "exec",
        &uuid,
        "--app=web",
        "--",
        "/bin/sh",
        "-c",
        "hostname; cat /etc/resolv.conf /etc/hosts; echo $GREETING; exit 7",
    ]);
    ex.assert_code(7);
    for want in ["sbx", "nameserver 192.0.2.53", "192.0.2.7 db", "hi"] {
        ex.assert_stdout_contains(want);
    }
    // `rkt enter` works on an added app too.
    env.rkt(&["enter", "--app=web", &uuid, "/bin/true"])
        .assert_ok();

    // rkt list/status JSON carry the per-app fields.
    let lj = env.rkt(&["list", "--format=json"]);
    lj.assert_ok();
    let pods: Value = serde_json::from_str(lj.stdout.trim()).unwrap();
    let apps = pods[0]["apps"].as_array().unwrap().clone();
    assert_eq!(apps[0]["name"], "web");
    assert_eq!(apps[0]["state"], "running");
    assert!(apps[0]["created_at"].is_i64() && apps[0]["started_at"].is_i64());
    assert_eq!(apps[1]["state"], "exited");
    assert!(apps[1]["finished_at"].is_i64());

    // stop one app: SIGTERM, recorded as 128+15.
    env.rkt(&["app", "stop", &uuid, "--app=web"]).assert_ok();
    let web = app_status(&env, &uuid, "web");
    assert_eq!(web["state"], "exited", "{web}");
    assert_eq!(web["exit_code"], 143, "{web}");
    // rm: gone from the manifest, the spec, the mount table and the pod directory (its logs too).
    let root = pod_dir(&env, &uuid).join("stage1/rootfs/opt/stage2/web");
    env.rkt(&["app", "rm", &uuid, "--app=web"]).assert_ok();
    assert!(!pod_dir(&env, &uuid).join("logs/web.log").exists());
    assert_eq!(manifest_apps(&env, &uuid), vec!["job"]);
    assert!(mounts_under(&root).is_empty(), "{:?}", mounts_under(&root));
    assert!(!root.exists());
    assert!(!pod_dir(&env, &uuid).join("appsinfo/web").exists());
    one_line_254(
        &env.rkt(&["app", "status", &uuid, "--app=web"]),
        "has no app named \"web\"",
    );
    // rm of a name that was never started but added works too, and an app can be re-added.
    env.rkt(&["app", "add", &uuid, &img, "--name=web", "--exec=/bin/true"])
        .assert_ok();
    env.rkt(&["app", "rm", &uuid, "--app=web"]).assert_ok();

    // Stop the pod: the sandbox returns 0; the pod is exited with its remaining app's code.
    env.rkt(&["stop", &uuid]).assert_ok();
    let out = child.wait_timeout(60);
    out.assert_ok();
    let st = env.rkt(&["status", &uuid]);
    assert_eq!(st.expect_value("state"), "exited", "{st}");
    assert_eq!(st.expect_value("app-job"), "3", "{st}");
    let job = app_status(&env, &uuid, "job");
    assert_eq!(job["state"], "exited");
    // The logs outlive the pod.
    let logs = env.rkt(&["logs", &uuid, "--app=job"]);
    logs.assert_ok();
    assert_eq!(logs.stdout, "job line 1\njob line 2\n", "{logs}");
    // A sandbox's lines are prefixed with their app (its apps come and go).
    let all = env.rkt(&["logs", &uuid]);
    all.assert_ok();
    assert_eq!(all.stdout, "job: job line 1\njob: job line 2\n", "{all}");
    // The follower started before any app saw both, and ended with the pod.
    let followed = follow.wait_timeout(60);
    followed.assert_ok();
    for want in [
        "web: web says hi from-host\n",
        "job: job line 1\n",
        "job: job line 2\n",
    ] {
        assert!(followed.stdout.contains(want), "{want:?}:\n{followed}");
    }
    assert!(followed.stderr.contains("job: job err\n"), "{followed}");
    env.rkt(&["gc", "--grace-period=0s"]).assert_ok();
    assert!(
        mounts_under(&env.dir).is_empty(),
        "{:?}",
        mounts_under(&env.dir)
    );
    for d in ["run", "exited-garbage", "garbage"] {
        let n = std::fs::read_dir(env.dir.join("pods").join(d))
            .unwrap()
            .count();
        assert_eq!(n, 0, "pods/{d} not empty");
    }
}

#[test]
fn hostile_app_requests_are_refused_with_one_line() {
    let env = Flavor::Ns.env();
    let (mut child, uuid) = sandbox(&env, &[]);
    let img = busybox();
    let pd = pod_dir(&env, &uuid);
    env.rkt(&["app", "add", &uuid, &img, "--name=one", "--exec=/bin/true"])
        .assert_ok();
    let appsinfo = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(pd.join("appsinfo"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let spec_apps = || -> usize {
        let s: Value =
            serde_json::from_slice(&std::fs::read(pd.join("stage1-spec.json")).unwrap()).unwrap();
        s["apps"].as_array().unwrap().len()
    };

    // Duplicate name.
    one_line_254(
        &env.rkt(&["app", "add", &uuid, &img, "--name=one"]),
        "already has an app named \"one\"",
    );
    // Bad image.
    one_line_254(
        &env.rkt(&[
            "app",
            "add",
            &uuid,
            "oci:/nonexistent/image:latest",
            "--name=two",
        ]),
        "nonexistent",
    );
    // Bad per-app flag, pod flags, two images.
    one_line_254(
        &env.rkt(&["app", "add", &uuid, &img, "--name=two", "--memory=lots"]),
        "memory",
    );
    one_line_254(
        &env.rkt(&["app", "add", &uuid, "--net=host", &img, "--name=two"]),
        "per-app flags only",
    );
    one_line_254(
        &env.rkt(&["app", "add", &uuid, &img, "--name=a", &img, "--name=b"]),
        "exactly one image",
    );
    assert_eq!(appsinfo(), vec!["one"]);
    assert_eq!(manifest_apps(&env, &uuid), vec!["one"]);
    assert_eq!(spec_apps(), 1);
    assert!(mounts_under(&pd.join("stage1/rootfs/opt/stage2")).is_empty());

    // Unknown and malformed app names, on every command that takes one.
    for cmd in ["start", "stop", "rm", "status", "exec"] {
        one_line_254(
            &env.rkt(
                &["app", cmd, &uuid, "--app=nope", "--", "/bin/true"]
                    [..if cmd == "exec" { 6 } else { 4 }],
            ),
            "has no app named \"nope\"",
        );
        one_line_254(
            &env.rkt(&["app", cmd, &uuid, "--app=../x"]),
            if cmd == "status" {
                "has no app named"
            } else {
                "invalid app name"
            },
        );
    }
    // Stop/exec an app that was never started; start one twice.
    one_line_254(
        &env.rkt(&["app", "stop", &uuid, "--app=one"]),
        "is not running",
    );
    one_line_254(
        &env.rkt(&["app", "exec", &uuid, "--app=one", "--", "/bin/true"]),
        "is not running",
    );
    env.rkt(&["app", "start", &uuid, "--app=one"]).assert_ok();
    wait_state(&env, &uuid, "one", "exited");
    one_line_254(
        &env.rkt(&["app", "start", &uuid, "--app=one"]),
        "already been started",
    );

    // Not root.
    let add = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(rkt_bin())
        .arg(format!("--dir={}", env.dir.display()))
        .args([
            "--insecure-options=image",
            "app",
            "add",
            &uuid,
            &img,
            "--name=x",
        ])
        .output()
        .unwrap();
    assert_eq!(add.status.code(), Some(254));
    let err = String::from_utf8_lossy(&add.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("unprivileged"), "{err}");
    // The control socket is root's alone.
    let sock = pd.join("supervisor.sock");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(appsinfo(), vec!["one"]);

    // Sandbox misuse: an image, per-app flags, flags of run it does not take, other flavours.
    for (args, needle) in [
        (
            vec!["app", "sandbox", "--stage1=ns", &img],
            "takes no image",
        ),
        (
            vec!["app", "sandbox", "--stage1=ns", "--exec=/bin/sh"],
            "pod flags only",
        ),
        (
            vec!["app", "sandbox", "--stage1=ns", "--volume=v,kind=empty"],
            "--volume is not accepted",
        ),
        (
            vec!["app", "sandbox", "--stage1=ns", "--port=http:8080"],
            "invalid --port",
        ),
        (vec!["app", "sandbox", "--stage1=fly"], "use --stage1=ns"),
    ] {
        one_line_254(&env.rkt(&args), needle);
    }
    // None of these made a pod.
    let pods: usize = ["embryo", "prepare", "prepared", "run", "garbage"]
        .iter()
        .map(|d| std::fs::read_dir(env.dir.join("pods").join(d)).map_or(0, |r| r.count()))
        .sum();
    assert_eq!(pods, 1);

    env.rkt(&["stop", &uuid]).assert_ok();
    child.wait_timeout(60).assert_ok();
    // An exited pod's apps cannot change.
    one_line_254(
        &env.rkt(&["app", "add", &uuid, &img, "--name=late"]),
        "is not running",
    );
    env.rkt(&["gc", "--grace-period=0s"]).assert_ok();
    assert!(mounts_under(&env.dir).is_empty());
}

/// `rkt app add --mnt-volume` (rkt v1; rktlet's Kubernetes volumes): a host directory read-write
/// and read-only, and an empty volume, in an added app; a name the pod already has, or a value
/// without a target, is one line and leaves no app behind.
#[test]
fn added_apps_get_their_mnt_volumes() {
    let env = Flavor::Ns.env();
    let (mut child, uuid) = sandbox(&env, &[]);
    let img = busybox();
    let host = env.scratch.join("host-vol");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("in"), "from the host").unwrap();
    let vol = |name: &str, extra: &str, target: &str| {
        format!(
            "--mnt-volume=name={name},kind=host,source={}{extra},target={target}",
            host.display()
        )
    };
    let (rw, ro) = (vol("hv", "", "/data"), vol("ro", ",readOnly=true", "/ro"));
    env.rkt(&[
        "app",
        "add",
        &uuid,
        &img,
        "--name=writer",
        &rw,
        &ro,
        "--mnt-volume=name=scratch,kind=empty,target=/scratch",
        "--exec=/bin/sh",
        "--",
        "-c",
        "cat /data/in && echo out >/data/out && echo s >/scratch/s && cat /scratch/s \
         && if echo x >/ro/x; then echo RO-WRITABLE; fi",
    ])
    .assert_ok();
    env.rkt(&["app", "start", &uuid, "--app=writer"])
        .assert_ok();
    let st = wait_state(&env, &uuid, "writer", "exited");
    assert_eq!(st["exit_code"], 0, "{st}");
    assert_eq!(std::fs::read_to_string(host.join("out")).unwrap(), "out\n");
    assert!(!host.join("x").exists());
    let logs = wait_logs(&env, &uuid, "writer", "from the host");
    assert!(logs.stdout.contains('s'), "{logs}");
    assert!(!logs.stdout.contains("RO-WRITABLE"), "{logs}");

    // The pod's volume names are taken; a value without a target is no mount.
    let add_two = |mnt: &str| env.rkt(&["app", "add", &uuid, &img, "--name=two", mnt]);
    one_line_254(
        &add_two(&vol("hv", "", "/x")),
        "already has a volume named \"hv\"",
    );
    one_line_254(
        &add_two("--mnt-volume=name=v,kind=empty"),
        "invalid --mnt-volume",
    );
    one_line_254(
        &add_two("--mnt-volume=name=v,kind=host,source=relative,target=/x"),
        "source must be an absolute path",
    );
    assert_eq!(manifest_apps(&env, &uuid), vec!["writer"]);
    env.rkt(&["stop", &uuid]).assert_ok();
    child.wait_timeout(60).assert_ok();
    env.rkt(&["gc", "--grace-period=0s"]).assert_ok();
    assert!(mounts_under(&env.dir).is_empty());
}

/// A pod started by `rkt run` is not a sandbox: its apps cannot change, and its apps' states
/// follow the pod's (rkt v1's immutable pods).
#[test]
fn ordinary_pods_refuse_app_changes_and_report_app_states() {
    let env = Flavor::Ns.env();
    let uuid_file = env.scratch.join("uuid");
    let uf = format!("--uuid-file-save={}", uuid_file.display());
    let img = busybox();
    let mut child = env.spawn(&[
        "run",
        "--stage1=ns",
        "--net=none",
        &uf,
        &img,
        "--name=main",
        "--exec=/bin/sleep",
        "--",
        "300",
    ]);
    let start = Instant::now();
    while !uuid_file.exists() {
        assert!(start.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(20));
    }
    let uuid = std::fs::read_to_string(&uuid_file).unwrap();
    env.rkt(&["status", "--wait-ready=60s", &uuid]).assert_ok();
    let before = std::fs::read(pod_dir(&env, &uuid).join("pod")).unwrap();
    one_line_254(
        &env.rkt(&["app", "add", &uuid, &img, "--name=extra"]),
        "was not started by \"rkt app sandbox\"",
    );
    one_line_254(
        &env.rkt(&["app", "stop", &uuid, "--app=main"]),
        "was not started by \"rkt app sandbox\"",
    );
    assert_eq!(
        std::fs::read(pod_dir(&env, &uuid).join("pod")).unwrap(),
        before
    );
    assert!(!pod_dir(&env, &uuid).join("appsinfo/extra").exists());
    let main = app_status(&env, &uuid, "main");
    assert_eq!(main["state"], "running", "{main}");
    // app exec works on any running pod, like enter.
    env.rkt(&["app", "exec", &uuid, "--app=main", "--", "/bin/true"])
        .assert_ok();
    env.rkt(&["stop", &uuid]).assert_ok();
    child.wait_timeout(60);
    let main = app_status(&env, &uuid, "main");
    assert_eq!(main["state"], "exited", "{main}");
    assert!(main["created_at"].is_i64() && main["started_at"].is_i64());
    let st = env.rkt(&["status", "--format=json", &uuid]);
    let v: Value = serde_json::from_str(st.stdout.trim()).unwrap();
    assert_eq!(v["apps"][0]["state"], "exited", "{v}");
    assert!(v["apps"][0]["finished_at"].is_i64(), "{v}");
}

/// `RKT_EXPERIMENT_APP` (rkt v1 hid the commands behind it) is accepted and changes nothing.
#[test]
fn experiment_variable_is_accepted() {
    let env = RktEnv::new();
    for v in [None, Some("true")] {
        let mut c = env.command(&["app", "list", "0000"]);
        if let Some(v) = v {
            c.env("RKT_EXPERIMENT_APP", v);
        }
        let out = rkt_tests::run_command(c, 30);
        one_line_254(&out, "no matches found");
    }
}
