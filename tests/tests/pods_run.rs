//! `rkt run` end to end on the ns flavour: exit codes, what the app sees (env, hostname, DNS,
//! hosts, caps, limits, volumes), run-prepared, status, stop, and owners killed mid-run.

use std::time::{Duration, Instant};

use rkt_tests::{images, require_root, RktEnv, RktOutput};

fn busybox() -> String {
    images().busybox_oci_ref()
}

fn run(env: &RktEnv, pod_flags: &[&str], app: &[&str]) -> RktOutput {
    let img = busybox();
    let mut a = vec!["run", "--net=none"];
    a.extend_from_slice(pod_flags);
    a.push(&img);
    a.push("--name=busybox");
    a.push("--exec=/inspect");
    a.push("--");
    a.extend_from_slice(app);
    env.rkt(&a)
}

fn only_pod(env: &RktEnv, state: &str) -> String {
    let rd: Vec<String> = std::fs::read_dir(env.dir.join("pods").join(state))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(rd.len(), 1, "pods in {state}: {rd:?}");
    rd[0].clone()
}

fn mounts_under(path: &std::path::Path) -> Vec<String> {
    let p = path.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(String::from))
        .filter(|m| m.starts_with(&p))
        .collect()
}

#[test]
fn run_exits_with_the_apps_code_and_status_reports_it() {
    require_root();
    let env = RktEnv::new();
    let out = run(&env, &[], &["--exit-code=7"]);
    out.assert_code(7);
    let uuid = only_pod(&env, "run");
    let st = env.rkt(&["status", &uuid]);
    st.assert_ok();
    assert_eq!(st.expect_value("state"), "exited");
    assert_eq!(st.expect_value("exited"), "true");
    assert_eq!(st.expect_value("app-busybox"), "7");
    assert!(st.expect_value("started").ends_with("+0000 UTC"));
    st.expect_value("pid");
    let list = env.rkt(&["list", "--no-legend"]);
    assert!(list.stdout.contains("\texited\t"), "{list}");
}

#[test]
fn with_several_apps_the_first_failure_decides_the_exit_code() {
    require_root();
    let env = RktEnv::new();
    let img = busybox();
    let out = env.rkt(&[
        "run",
        "--net=none",
        &img,
        "--name=ok",
        "--exec=/inspect",
        "--",
        "--exit-code=0",
        "---",
        &img,
        "--name=bad",
        "--exec=/inspect",
        "--",
        "--sleep=0.3",
        "--exit-code=5",
    ]);
    out.assert_code(5);
    let st = env.rkt(&["status", &only_pod(&env, "run")]);
    assert_eq!(st.expect_value("app-ok"), "0");
    assert_eq!(st.expect_value("app-bad"), "5");
}

#[test]
fn environment_follows_rkt_precedence() {
    require_root();
    let env = RktEnv::new();
    let file = env.scratch.join("env");
    std::fs::write(
        &file,
        "# comment\nFROM_FILE=file\nOVER=file\n\nHOST_VAR=file\n",
    )
    .unwrap();
    let file_flag = format!("--set-env-file={}", file.display());
    let img = busybox();
    let mut cmd = env.command(&[
        "run",
        "--net=none",
        "--inherit-env",
        &file_flag,
        "--set-env=OVER=setenv",
        "--set-env=APPOVER=setenv",
        &img,
        "--name=busybox",
        "--exec=/inspect",
        "--environment=APPOVER=app",
        "--",
        "--print-env=HOST_ONLY",
        "--print-env=FROM_FILE",
        "--print-env=OVER",
        "--print-env=HOST_VAR",
        "--print-env=APPOVER",
        "--print-env=AC_APP_NAME",
        "--print-env=PATH",
    ]);
    cmd.env("HOST_ONLY", "host").env("HOST_VAR", "host");
    let out = rkt_tests::run_command(cmd, 120);
    out.assert_ok();
    assert_eq!(out.expect_value("HOST_ONLY"), "host");
    assert_eq!(out.expect_value("FROM_FILE"), "file");
    assert_eq!(out.expect_value("HOST_VAR"), "file");
    assert_eq!(out.expect_value("OVER"), "setenv");
    assert_eq!(out.expect_value("APPOVER"), "app");
    assert_eq!(out.expect_value("AC_APP_NAME"), "busybox");
    // The image's PATH wins over the default.
    assert!(out.expect_value("PATH").contains("/bin"), "{out}");
}

#[test]
fn hostname_defaults_to_rkt_uuid_and_uuid_file_save_records_the_pod() {
    require_root();
    let env = RktEnv::new();
    let f = env.scratch.join("uuid");
    let flag = format!("--uuid-file-save={}", f.display());
    let out = run(&env, &[&flag], &["--print-hostname"]);
    out.assert_ok();
    let uuid = std::fs::read_to_string(&f).unwrap();
    assert_eq!(uuid, only_pod(&env, "run"));
    assert_eq!(out.expect_value("HOSTNAME"), format!("rkt-{uuid}"));
    let out = run(&env, &["--hostname=web1"], &["--print-hostname"]);
    assert_eq!(out.expect_value("HOSTNAME"), "web1");
}

#[test]
fn dns_flags_generate_resolv_conf() {
    require_root();
    let env = RktEnv::new();
    let out = run(
        &env,
        &[
            "--dns=8.8.8.8",
            "--dns=4.2.2.2",
            "--dns-search=example.com",
            "--dns-opt=rotate",
            "--dns-domain=example.org",
        ],
        &["--read-file=/etc/resolv.conf"],
    );
    out.assert_ok();
    assert!(out.stdout.contains(
        "CONTENT=# Generated by rkt run\n\nsearch example.com\nnameserver 8.8.8.8\nnameserver 4.2.2.2\noptions rotate\ndomain example.org\n"
    ), "{out}");
}

#[test]
fn hosts_entries_are_written_with_localhost_and_the_hostname() {
    require_root();
    let env = RktEnv::new();
    let out = run(
        &env,
        &[
            "--hostname=pod1",
            "--hosts-entry=198.51.100.1=db,198.51.100.1=db2",
            "--hosts-entry=198.51.100.2=web",
        ],
        &["--read-file=/etc/hosts"],
    );
    out.assert_ok();
    assert!(out.stdout.contains("CONTENT=127.0.0.1 localhost"), "{out}");
    assert!(out.stdout.contains("127.0.0.1 pod1\n"), "{out}");
    assert!(
        out.stdout.contains("198.51.100.1 db db2\n198.51.100.2 web"),
        "{out}"
    );
}

#[test]
fn capabilities_default_retain_remove_and_insecure() {
    require_root();
    let env = RktEnv::new();
    let names = |out: &RktOutput| -> Vec<String> {
        out.expect_value("CAP_BND_NAMES")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    };
    let out = run(&env, &[], &["--print-caps"]);
    out.assert_ok();
    let default = names(&out);
    assert_eq!(default.len(), 14, "{out}");
    assert!(default.contains(&"cap_net_bind_service".to_string()));
    assert!(!default.contains(&"cap_sys_admin".to_string()));

    let img = busybox();
    let out = env.rkt(&[
        "run",
        "--net=none",
        &img,
        "--exec=/inspect",
        "--caps-retain=CAP_NET_ADMIN,CAP_CHOWN",
        "--",
        "--print-caps",
    ]);
    out.assert_ok();
    assert_eq!(names(&out), ["cap_chown", "cap_net_admin"]);

    let out = env.rkt(&[
        "run",
        "--net=none",
        &img,
        "--exec=/inspect",
        "--caps-remove=CAP_CHOWN",
        "--",
        "--print-caps",
    ]);
    out.assert_ok();
    let n = names(&out);
    assert_eq!(n.len(), 13, "{out}");
    assert!(!n.contains(&"cap_chown".to_string()));

    let out = env.rkt(&[
        "--insecure-options=capabilities",
        "run",
        "--net=none",
        &img,
        "--exec=/inspect",
        "--",
        "--print-caps",
    ]);
    out.assert_ok();
    assert!(names(&out).contains(&"cap_sys_admin".to_string()), "{out}");
}

#[test]
fn memory_and_cpu_limits_reach_the_cgroup() {
    require_root();
    let env = RktEnv::new();
    let img = busybox();
    let out = env.rkt(&[
        "run",
        "--net=none",
        &img,
        "--exec=/inspect",
        "--memory=64Mi",
        "--cpu=500m",
        "--",
        "--print-cgroup-limits",
    ]);
    out.assert_ok();
    assert_eq!(out.expect_value("MEMORY_LIMIT"), (64u64 << 20).to_string());
    let quota: u64 = out.expect_value("CPU_QUOTA").parse().unwrap();
    let period: u64 = out.expect_value("CPU_PERIOD").parse().unwrap();
    assert_eq!(quota * 1000 / period, 500, "{out}");
}

#[test]
fn user_and_group_flags_are_applied() {
    require_root();
    let env = RktEnv::new();
    let img = busybox();
    let out = env.rkt(&[
        "run",
        "--net=none",
        &img,
        "--exec=/inspect",
        "--user=user",
        "--group=1000",
        "--",
        "--print-user",
    ]);
    out.assert_ok();
    assert_eq!(out.expect_value("UID"), "1000");
    assert_eq!(out.expect_value("GID"), "1000");
}

#[test]
fn host_and_empty_volumes_are_mounted() {
    require_root();
    let env = RktEnv::new();
    let host = env.scratch.join("hostvol");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("hello"), "from host").unwrap();
    let hv = format!(
        "--volume=data,kind=host,source={},readOnly=true",
        host.display()
    );
    let img = busybox();
    let out = env.rkt(&[
        "run",
        "--net=none",
        &hv,
        "--volume=scratch,kind=empty,mode=0700",
        &img,
        "--exec=/inspect",
        "--mount=volume=data,target=/data",
        "--mount=volume=scratch,target=/scratch",
        "--",
        "--read-file=/data/hello",
        "--write-file=/data/x",
        "--content=y",
        "--stat=/scratch",
    ]);
    // The write to the read-only volume fails (exit 1), everything else worked.
    out.assert_code(1);
    assert_eq!(out.expect_value("CONTENT"), "from host");
    assert_eq!(out.expect_value("WRITE_ERRNO"), "EROFS");
    assert_eq!(out.expect_value("STAT_MODE"), "0700");
    assert!(!host.join("x").exists());
}

#[test]
fn run_prepared_runs_a_prepared_pod_with_its_start_flags() {
    require_root();
    let env = RktEnv::new();
    let img = busybox();
    let out = env.rkt(&[
        "prepare",
        "--quiet",
        &img,
        "--exec=/inspect",
        "--",
        "--print-hostname",
        "--exit-code=4",
    ]);
    out.assert_ok();
    let uuid = out.stdout.trim().to_string();
    let out = env.rkt(&["run-prepared", "--net=none", "--hostname=prep", &uuid[..8]]);
    out.assert_code(4);
    assert_eq!(out.expect_value("HOSTNAME"), "prep");
    assert_eq!(only_pod(&env, "run"), uuid);
    let again = env.rkt(&["run-prepared", &uuid]);
    again.assert_code(254);
    again.assert_stderr_contains("is not prepared");
}

#[test]
fn no_overlay_pods_run() {
    require_root();
    let env = RktEnv::new();
    let out = run(
        &env,
        &["--no-overlay"],
        &[
            "--write-file=/tmp/x",
            "--content=1",
            "--read-file=/etc/image-name",
        ],
    );
    out.assert_ok();
    assert_eq!(out.expect_value("CONTENT"), "busybox");
}

#[test]
fn pod_manifest_runs_the_apps_it_describes() {
    require_root();
    let env = RktEnv::new();
    // Import the image, then describe the pod by image ID.
    let img = busybox();
    let out = env.rkt(&["prepare", "--quiet", &img]);
    out.assert_ok();
    let uuid = out.stdout.trim().to_string();
    let manifest = env.rkt(&["cat-manifest", &uuid]).stdout;
    let id = manifest
        .split("\"id\": \"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let pm = format!(
        r#"{{"acKind":"PodManifest","acVersion":"0.8.11","apps":[{{"name":"from-manifest","image":{{"name":"busybox","id":"{id}"}},"app":{{"exec":["/inspect","--print-env=X","--exit-code=9"],"user":"0","group":"0","environment":[{{"name":"X","value":"y"}}]}}}}]}}"#
    );
    let f = env.scratch.join("pod.json");
    std::fs::write(&f, pm).unwrap();
    let out = env.rkt(&[
        "run",
        "--net=none",
        &format!("--pod-manifest={}", f.display()),
    ]);
    out.assert_code(9);
    assert_eq!(out.expect_value("X"), "y");
}

#[test]
fn default_network_warns_and_runs_with_loopback_only() {
    require_root();
    let env = RktEnv::new();
    let img = busybox();
    let out = env.rkt(&["run", &img, "--exec=/inspect", "--", "--exit-code=0"]);
    out.assert_ok();
    out.assert_stderr_contains("default network is not implemented yet");
}

/// Waits until `rkt status --wait-ready` says the pod runs.
fn wait_running(env: &RktEnv, uuid_file: &std::path::Path) -> String {
    let start = Instant::now();
    while !uuid_file.exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "no uuid file");
        std::thread::sleep(Duration::from_millis(20));
    }
    let uuid = std::fs::read_to_string(uuid_file).unwrap();
    let st = env.rkt(&["status", "--wait-ready=60s", &uuid]);
    st.assert_ok();
    assert_eq!(st.expect_value("state"), "running", "{st}");
    uuid
}

#[test]
fn stop_ends_a_running_pod_and_rm_refuses_running_pods() {
    require_root();
    let env = RktEnv::new();
    let f = env.scratch.join("uuid");
    let img = busybox();
    let mut child = env.spawn(&[
        "run",
        "--net=none",
        &format!("--uuid-file-save={}", f.display()),
        &img,
        "--exec=/inspect",
        "--",
        "--sleep=60",
    ]);
    let uuid = wait_running(&env, &f);
    let rm = env.rkt(&["rm", &uuid]);
    rm.assert_code(254);
    rm.assert_stderr_contains("is currently running");
    let st = env.rkt(&["stop", &uuid]);
    st.assert_ok();
    assert_eq!(st.stdout, format!("\"{uuid}\"\n"));
    let out = child.wait_timeout(60);
    assert_ne!(out.code, 0, "{out}");
    let status = env.rkt(&["status", &uuid]);
    assert_eq!(status.expect_value("state"), "exited");
    let again = env.rkt(&["stop", &uuid]);
    again.assert_code(254);
    again.assert_stderr_contains("is not running");
    env.rkt(&["rm", &uuid]).assert_ok();
    assert!(
        mounts_under(&env.dir).is_empty(),
        "{:?}",
        mounts_under(&env.dir)
    );
}

#[test]
fn status_wait_returns_when_the_pod_exits() {
    require_root();
    let env = RktEnv::new();
    let f = env.scratch.join("uuid");
    let img = busybox();
    let _child = env.spawn(&[
        "run",
        "--net=none",
        &format!("--uuid-file-save={}", f.display()),
        &img,
        "--name=busybox",
        "--exec=/inspect",
        "--",
        "--sleep=1.5",
        "--exit-code=3",
    ]);
    let uuid = wait_running(&env, &f);
    let short = env.rkt(&["status", "--wait=100ms", &uuid]);
    short.assert_code(254);
    short.assert_stderr_contains("timed out");
    let st = env.rkt(&["status", "--wait", &uuid]);
    st.assert_ok();
    assert_eq!(st.expect_value("state"), "exited");
    assert_eq!(st.expect_value("app-busybox"), "3");
}

/// The owner of a running pod is SIGKILLed with everything it started: the pod shows as exited
/// (its lock went with it), and gc removes it and every mount it left.
#[test]
fn pod_whose_owner_was_killed_is_exited_and_gc_cleans_it() {
    require_root();
    let env = RktEnv::new();
    let f = env.scratch.join("uuid");
    let host = env.scratch.join("vol");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("keep"), "precious").unwrap();
    let img = busybox();
    let mut child = env.spawn(&[
        "run",
        "--net=none",
        &format!("--uuid-file-save={}", f.display()),
        &format!("--volume=v,kind=host,source={}", host.display()),
        &img,
        "--exec=/inspect",
        "--mount=volume=v,target=/v",
        "--",
        "--sleep=60",
    ]);
    let uuid = wait_running(&env, &f);
    child.kill();
    let st = env.rkt(&["status", "--wait=30s", &uuid]);
    st.assert_ok();
    assert_eq!(st.expect_value("state"), "exited");
    let list = env.rkt(&["list", "--no-legend"]);
    assert!(list.stdout.contains("\texited\t"), "{list}");
    env.rkt(&["gc", "--mark-only"]).assert_ok();
    assert_eq!(only_pod(&env, "exited-garbage"), uuid);
    let out = env.rkt(&["gc", "--grace-period=0s"]);
    out.assert_ok();
    out.assert_stdout_contains(&format!("Garbage collecting pod \"{uuid}\""));
    assert!(std::fs::read_dir(env.dir.join("pods/exited-garbage"))
        .unwrap()
        .next()
        .is_none());
    assert!(
        mounts_under(&env.dir).is_empty(),
        "{:?}",
        mounts_under(&env.dir)
    );
    // The host volume's files survived the pod's removal.
    assert_eq!(
        std::fs::read_to_string(host.join("keep")).unwrap(),
        "precious"
    );
}

#[test]
fn gc_keeps_exited_pods_within_the_grace_period() {
    require_root();
    let env = RktEnv::new();
    run(&env, &[], &["--exit-code=0"]).assert_ok();
    let uuid = only_pod(&env, "run");
    let out = env.rkt(&["gc"]);
    out.assert_ok();
    out.assert_stderr_contains(&format!("moving pod \"{uuid}\" to garbage"));
    out.assert_stderr_contains("still within grace period (30m0s)");
    assert_eq!(only_pod(&env, "exited-garbage"), uuid);
    let st = env.rkt(&["status", &uuid]);
    assert_eq!(st.expect_value("state"), "exited garbage");
    env.rkt(&["rm", &uuid]).assert_ok();
}

#[test]
fn enter_runs_a_command_in_a_running_app() {
    require_root();
    let env = RktEnv::new();
    let f = env.scratch.join("uuid");
    let img = busybox();
    let mut child = env.spawn(&[
        "run",
        "--net=none",
        "--hostname=inside",
        &format!("--uuid-file-save={}", f.display()),
        &img,
        "--name=busybox",
        "--exec=/inspect",
        "--",
        "--sleep=60",
    ]);
    let uuid = wait_running(&env, &f);
    let out = env.rkt(&[
        "enter",
        "--app=busybox",
        &uuid,
        "/inspect",
        "--print-hostname",
        "--exit-code=6",
    ]);
    out.assert_code(6);
    assert_eq!(out.expect_value("HOSTNAME"), "inside");
    let bad = env.rkt(&["enter", "--app=nope", &uuid, "/inspect"]);
    bad.assert_code(254);
    bad.assert_stderr_contains("no app named \"nope\"");
    env.rkt(&["stop", "--force", &uuid]).assert_ok();
    child.wait_timeout(60);
    let after = env.rkt(&["enter", &uuid, "/inspect"]);
    after.assert_code(254);
    after.assert_stderr_contains("is not running");
}

/// Only the `rkt run` process is SIGKILLed: the pod's supervisor still holds the pod lock, so the
/// pod is still running, and `rkt stop` ends it.
#[test]
fn pod_outlives_its_killed_rkt_process_until_stopped() {
    require_root();
    let env = RktEnv::new();
    let f = env.scratch.join("uuid");
    let img = busybox();
    let mut child = env.spawn(&[
        "run",
        "--net=none",
        &format!("--uuid-file-save={}", f.display()),
        &img,
        "--name=busybox",
        "--exec=/inspect",
        "--",
        "--sleep=60",
    ]);
    let uuid = wait_running(&env, &f);
    child.signal(libc::SIGKILL);
    child.wait_timeout(30);
    let st = env.rkt(&["status", &uuid]);
    assert_eq!(st.expect_value("state"), "running", "{st}");
    env.rkt(&["stop", &uuid]).assert_ok();
    let st = env.rkt(&["status", &uuid]);
    assert_eq!(st.expect_value("state"), "exited", "{st}");
    assert_eq!(st.expect_value("app-busybox"), "143");
    env.rkt(&["gc", "--grace-period=0s"]).assert_ok();
    assert!(
        mounts_under(&env.dir).is_empty(),
        "{:?}",
        mounts_under(&env.dir)
    );
}
