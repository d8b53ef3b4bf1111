//! Checks the harness itself: the test images are what the other tests assume (validated with
//! independent tools: umoci, skopeo, tar, file), the inspect app works, the registry serves pushed
//! images, and RktEnv cleans up after failed pod tests. None of these need the rkt binary.

use rkt_tests::{
    big_image, images, require_root, run_command, Registry, RegistryOptions, RktEnv, RktOutput,
};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

fn cmd(prog: &str, args: &[&str]) -> RktOutput {
    let mut c = Command::new(prog);
    c.args(args);
    run_command(c, 300)
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON ({e}): {s}"))
}

/// Layer digests of an image, via skopeo's raw manifest.
fn layer_digests(reference: &str) -> Vec<String> {
    let raw = cmd(
        "skopeo",
        &["--insecure-policy", "inspect", "--raw", reference],
    );
    raw.assert_ok();
    json(&raw.stdout)["layers"]
        .as_array()
        .expect("manifest has layers")
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn busybox_oci_layout_validates_and_has_config() {
    let im = images();
    cmd(
        "umoci",
        &[
            "stat",
            "--image",
            &format!("{}:latest", im.busybox_oci.display()),
        ],
    )
    .assert_ok();
    let info = cmd("skopeo", &["inspect", &im.busybox_oci_ref()]);
    info.assert_ok();
    let v = json(&info.stdout);
    assert_eq!(v["Labels"]["org.example.test"], "busybox", "{info}");
    assert_eq!(v["Os"], "linux");
    assert_eq!(v["Architecture"], "amd64");
    assert_eq!(v["Layers"].as_array().unwrap().len(), 1);

    let cfg = cmd("skopeo", &["inspect", "--config", &im.busybox_oci_ref()]);
    cfg.assert_ok();
    let c = json(&cfg.stdout);
    assert_eq!(
        c["config"]["Cmd"],
        serde_json::json!(["/inspect", "--print-hostname"])
    );
    assert_eq!(c["config"]["WorkingDir"], "/");
    assert!(c["config"]["Env"][0]
        .as_str()
        .unwrap()
        .starts_with("PATH=/usr/local/sbin"));
}

#[test]
fn archives_hold_the_same_image() {
    let im = images();
    let oci = layer_digests(&im.busybox_oci_ref());
    assert_eq!(layer_digests(&im.busybox_oci_archive_ref()), oci);
    // docker-archive stores the layer uncompressed, so compare the config instead.
    let a = cmd("skopeo", &["inspect", "--config", &im.busybox_oci_ref()]);
    let b = cmd(
        "skopeo",
        &["inspect", "--config", &im.busybox_docker_archive_ref()],
    );
    a.assert_ok();
    b.assert_ok();
    assert_eq!(
        json(&a.stdout)["config"]["Cmd"],
        json(&b.stdout)["config"]["Cmd"]
    );
    let manifest = cmd(
        "tar",
        &[
            "-xOf",
            im.busybox_docker_archive.to_str().unwrap(),
            "manifest.json",
        ],
    );
    manifest.assert_ok();
    assert_eq!(
        json(&manifest.stdout)[0]["RepoTags"][0],
        "docker.io/library/busybox:latest"
    );
}

#[test]
fn aci_has_manifest_and_rootfs() {
    let im = images();
    let list = cmd("tar", &["-tzf", im.busybox_aci.to_str().unwrap()]);
    list.assert_ok();
    for entry in [
        "manifest",
        "rootfs/inspect",
        "rootfs/bin/busybox",
        "rootfs/etc/passwd",
    ] {
        assert!(
            list.stdout.lines().any(|l| l == entry),
            "{entry} missing from the ACI\n{list}"
        );
    }
    let m = cmd(
        "tar",
        &["-xzOf", im.busybox_aci.to_str().unwrap(), "manifest"],
    );
    m.assert_ok();
    let man: rkt_schema::ImageManifest = serde_json::from_str(&m.stdout).expect("appc manifest");
    assert_eq!(man.ac_kind, "ImageManifest");
    assert_eq!(man.name, "example.com/busybox");
    let label = |n: &str| {
        man.labels
            .iter()
            .find(|l| l.name == n)
            .map(|l| l.value.clone())
    };
    assert_eq!(label("version").as_deref(), Some("latest"));
    assert_eq!(label("os").as_deref(), Some("linux"));
    assert_eq!(label("arch").as_deref(), Some("amd64"));
    let app = man.app.expect("app section");
    assert_eq!(app.exec, vec!["/inspect", "--print-hostname"]);
    // The uncompressed copy holds the same entries.
    let plain = cmd("tar", &["-tf", im.busybox_aci_tar.to_str().unwrap()]);
    plain.assert_ok();
    assert_eq!(plain.stdout, list.stdout);
}

#[test]
fn rootfs_users_groups_and_permissions() {
    let im = images();
    let passwd = std::fs::read_to_string(im.rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.contains("user:x:1000:1000:"));
    assert!(passwd.contains("nobody:x:65534:65534:"));
    let group = std::fs::read_to_string(im.rootfs.join("etc/group")).unwrap();
    assert!(group.contains("wheel:x:10:user"));
    assert!(group.contains("staff:x:50:user"));
    let home = std::fs::metadata(im.rootfs.join("home/user")).unwrap();
    assert_eq!((home.uid(), home.gid()), (1000, 1000));
    assert_eq!(
        std::fs::metadata(im.rootfs.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    let sh = std::fs::read_link(im.rootfs.join("bin/sh")).unwrap();
    assert_eq!(sh, Path::new("/bin/busybox"));
}

#[test]
fn multilayer_layers_contain_whiteouts_and_links() {
    let im = images();
    let layers = layer_digests(&im.multilayer_oci_ref());
    assert_eq!(layers.len(), 4, "base + 3 layers");
    // The base layer is the busybox image's own blob.
    assert_eq!(layers[0], layer_digests(&im.busybox_oci_ref())[0]);
    let listing = |i: usize| {
        let blob = im
            .multilayer_oci
            .join("blobs/sha256")
            .join(layers[i].trim_start_matches("sha256:"));
        let o = cmd("tar", &["-tzvf", blob.to_str().unwrap()]);
        o.assert_ok();
        o.stdout
    };
    let l1 = listing(1);
    assert!(
        l1.contains(" data/remove-me.txt\n") && l1.contains(" data/replace/old1.txt\n"),
        "{l1}"
    );
    let l2 = listing(2);
    assert!(l2.contains(" data/.wh.remove-me.txt\n"), "{l2}");
    assert!(l2.contains(" data/replace/.wh..wh..opq\n"), "{l2}");
    assert!(l2.contains(" data/replace/new.txt\n"), "{l2}");
    let l3 = listing(3);
    assert!(
        l3.lines()
            .any(|l| l.starts_with('h') && l.contains("link to data/")),
        "no hardlink entry in layer 3\n{l3}"
    );
    assert!(l3.contains(" data/symlink -> keep.txt\n"), "{l3}");
    assert!(l3.contains(" data/abs-symlink -> /data/dir\n"), "{l3}");
}

#[test]
fn multilayer_unpacks_to_the_expected_tree() {
    require_root();
    let im = images();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    cmd(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:latest", im.multilayer_oci.display()),
            bundle.to_str().unwrap(),
        ],
    )
    .assert_ok();
    let data = bundle.join("rootfs/data");
    assert!(!data.join("remove-me.txt").exists());
    let mut replaced: Vec<String> = std::fs::read_dir(data.join("replace"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    replaced.sort();
    assert_eq!(replaced, vec!["new.txt"]);
    assert_eq!(
        std::fs::read_to_string(data.join("keep.txt")).unwrap(),
        "keep\n"
    );
    assert!(data.join("emptydir").is_dir());
    let a = std::fs::metadata(data.join("hl-src.txt")).unwrap();
    let b = std::fs::metadata(data.join("hardlink")).unwrap();
    assert_eq!(a.ino(), b.ino(), "hardlink shares the inode");
    assert_eq!(
        std::fs::read_link(data.join("symlink")).unwrap(),
        Path::new("keep.txt")
    );
    let a_txt = std::fs::metadata(data.join("dir/a.txt")).unwrap();
    assert_eq!(a_txt.uid(), 1000);
    assert_eq!(
        std::fs::metadata(data.join("dir/b.txt")).unwrap().mode() & 0o777,
        0o600
    );
}

#[test]
fn inspect_is_static_and_prints_key_values() {
    require_root();
    let im = images();
    let f = cmd("file", &["-L", im.inspect.to_str().unwrap()]);
    f.assert_ok();
    assert!(
        f.stdout.contains("statically linked") || f.stdout.contains("static-pie linked"),
        "{f}"
    );
    let ldd = cmd("ldd", &[im.inspect.to_str().unwrap()]);
    assert!(
        !ldd.stdout.contains("libc.so"),
        "inspect must not load shared libraries\n{ldd}"
    );

    // Inside the bare busybox rootfs (no libc there) it must still run.
    let mut c = Command::new("chroot");
    c.arg(&im.rootfs)
        .args([
            "/inspect",
            "--print-user",
            "--print-env=FOO",
            "--print-env=UNSET_VAR",
            "--stat=/home/user",
            "--write-file=/tmp/x",
            "--content=hello",
            "--read-file=/tmp/x",
            "--print-cwd",
            "--check-syscall=getpid",
            "--exit-code=5",
        ])
        .env("FOO", "bar baz")
        .env_remove("UNSET_VAR");
    let o = run_command(c, 30);
    o.assert_code(5);
    assert_eq!(o.expect_value("UID"), "0");
    assert_eq!(o.expect_value("FOO"), "bar baz");
    assert_eq!(o.expect_value("ENV_UNSET"), "UNSET_VAR");
    assert_eq!(o.expect_value("STAT_UID"), "1000");
    assert_eq!(o.expect_value("STAT_TYPE"), "dir");
    assert_eq!(o.expect_value("CONTENT"), "hello");
    assert_eq!(o.expect_value("CWD"), "/");
    assert_eq!(o.expect_value("SYSCALL_getpid"), "OK");
    // Output order follows flag order.
    let keys: Vec<&str> = o
        .stdout
        .lines()
        .filter_map(|l| l.split('=').next())
        .collect();
    let pos = |k: &str| keys.iter().position(|x| *x == k).unwrap();
    assert!(
        pos("UID") < pos("FOO") && pos("FOO") < pos("STAT_UID") && pos("WROTE") < pos("CONTENT")
    );
    let _ = std::fs::remove_file(im.rootfs.join("tmp/x"));

    // A failed action gives exit 1; a bad flag exit 2 without running anything.
    let o = cmd(
        im.inspect.to_str().unwrap(),
        &["--read-file=/nonexistent/x"],
    );
    o.assert_code(1);
    assert_eq!(o.expect_value("READ_ERRNO"), "ENOENT");
    let o = cmd(im.inspect.to_str().unwrap(), &["--print-pid", "--bogus"]);
    o.assert_code(2);
    assert!(
        o.stdout.is_empty() && o.stderr.contains("unknown flag"),
        "{o}"
    );
}

#[test]
fn registry_serves_pushed_images() {
    let im = images();
    let reg = Registry::start();
    let other = Registry::start();
    assert_ne!(reg.addr, other.addr);
    reg.push(&im.busybox_oci_ref(), "busybox:latest");
    reg.push(&im.multilayer_oci_ref(), "test/multilayer:v1");
    let info = cmd(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            &reg.docker_ref("busybox:latest"),
        ],
    );
    info.assert_ok();
    let v = json(&info.stdout);
    assert_eq!(v["Labels"]["org.example.test"], "busybox");
    assert_eq!(
        v["Layers"][0].as_str().unwrap(),
        layer_digests(&im.busybox_oci_ref())[0]
    );
    let ml = cmd(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            &reg.docker_ref("test/multilayer:v1"),
        ],
    );
    ml.assert_ok();
    assert_eq!(json(&ml.stdout)["Layers"].as_array().unwrap().len(), 4);
    // Docker schema 2 on request.
    reg.push_as(&im.busybox_oci_ref(), "busybox:v2s2", "v2s2");
    let raw = cmd(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &reg.docker_ref("busybox:v2s2"),
        ],
    );
    raw.assert_ok();
    assert_eq!(
        json(&raw.stdout)["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    // The second registry has its own storage.
    let missing = cmd(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            &other.docker_ref("busybox:latest"),
        ],
    );
    assert_ne!(missing.code, 0, "{missing}");
}

#[test]
fn big_image_has_three_large_layers() {
    let big = big_image();
    let size = std::fs::metadata(big).unwrap().len();
    assert!(size > 190_000_000, "big image is only {size} bytes");
    let reference = format!("oci-archive:{}", big.display());
    let raw = cmd(
        "skopeo",
        &["--insecure-policy", "inspect", "--raw", &reference],
    );
    raw.assert_ok();
    let sizes: Vec<u64> = json(&raw.stdout)["layers"]
        .as_array()
        .expect("manifest layers")
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes.len(), 3, "{raw}");
    assert!(sizes.iter().all(|s| *s > 65_000_000), "{sizes:?}");
}

#[test]
fn env_cleanup_unmounts_and_kills_leftovers() {
    require_root();
    let env = RktEnv::new();
    let root = env.dir.parent().unwrap().to_path_buf();
    // What a failed pod test leaves behind: a mount (with a nested one) and a process inside.
    let m = env.dir.join("pods/run/x/stage1/rootfs");
    std::fs::create_dir_all(&m).unwrap();
    cmd("mount", &["-t", "tmpfs", "tmpfs", m.to_str().unwrap()]).assert_ok();
    std::fs::create_dir(m.join("sub")).unwrap();
    cmd(
        "mount",
        &["-t", "tmpfs", "tmpfs", m.join("sub").to_str().unwrap()],
    )
    .assert_ok();
    let mut sleeper = Command::new("sleep")
        .arg("300")
        .current_dir(m.join("sub"))
        .spawn()
        .unwrap();
    assert_eq!(rkt_tests::mounts_under(&root).len(), 2);
    drop(env);
    let st = sleeper.wait().unwrap();
    assert!(!st.success(), "the leftover process was killed");
    assert!(rkt_tests::mounts_under(&root).is_empty());
    assert!(!root.exists(), "{} removed", root.display());
}

#[test]
fn rkt_child_runs_in_background() {
    let env = RktEnv::new();
    let mut c = Command::new("sh");
    c.args(["-c", "echo started; sleep 0.3; echo done; exit 3"]);
    let mut child = rkt_tests::RktChild::spawn_command(c, &env.scratch);
    assert!(child.wait_for_stdout("started", 10));
    let o = child.wait_timeout(10);
    o.assert_code(3);
    assert_eq!(o.stdout, "started\ndone\n");
}

/// inspect reports what the kernel really applied: credentials, capabilities, no_new_privs and
/// syscall refusals set up by setpriv (util-linux), independently of rkt.
#[test]
fn inspect_reports_privileges_set_by_setpriv() {
    require_root();
    let im = images();
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=1000",
        "--regid=1000",
        "--groups=10,50",
        "--bounding-set=-all,+chown,+kill",
        "--inh-caps=-all",
        "--nnp",
    ])
    .arg(&im.inspect)
    .args([
        "--print-user",
        "--print-groups",
        "--print-caps",
        "--print-no-new-privs",
        "--print-seccomp",
        "--check-syscall=mount",
        "--check-syscall=reboot",
    ]);
    let o = run_command(c, 30);
    o.assert_ok();
    assert_eq!(o.expect_value("UID"), "1000");
    assert_eq!(o.expect_value("EGID"), "1000");
    assert_eq!(o.expect_value("GROUPS"), "10,50");
    assert_eq!(o.expect_value("CAP_BND_NAMES"), "cap_chown,cap_kill");
    assert_eq!(o.expect_value("CAP_BND"), "0000000000000021");
    assert_eq!(o.expect_value("CAP_EFF_NAMES"), "");
    assert_eq!(o.expect_value("NO_NEW_PRIVS"), "1");
    assert_eq!(o.expect_value("SECCOMP"), "0");
    assert_eq!(o.expect_value("SYSCALL_mount"), "EPERM");
    assert_eq!(o.expect_value("SYSCALL_reboot"), "EPERM");
}

/// Removes the cgroups it holds on drop, so a failing test leaves none behind.
struct CgroupGuard(Vec<std::path::PathBuf>);

impl CgroupGuard {
    fn create(&mut self, d: std::path::PathBuf) -> std::path::PathBuf {
        std::fs::create_dir(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        self.0.push(d.clone());
        d
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// inspect reads the memory and CPU limits of the cgroup it runs in (whichever cgroup version the
/// host has), checked against limits written here by hand.
#[test]
fn inspect_reports_cgroup_limits() {
    require_root();
    let im = images();
    let name = format!("rkt-inspect-test-{}", std::process::id());
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let mut guard = CgroupGuard(Vec::new());
    let expect: Vec<(&str, &str)> = if v2 {
        let d = guard.create(Path::new("/sys/fs/cgroup").join(&name));
        std::fs::write(d.join("memory.max"), "104857600").unwrap();
        std::fs::write(d.join("cpu.max"), "50000 100000").unwrap();
        vec![
            ("CGROUP_VERSION", "2"),
            ("MEMORY_LIMIT", "104857600"),
            ("CPU_QUOTA", "50000"),
            ("CPU_PERIOD", "100000"),
        ]
    } else {
        let mem = guard.create(Path::new("/sys/fs/cgroup/memory").join(&name));
        // cpu is co-mounted with cpuacct on most hosts, alone on some (this one).
        let cpu_mount = ["/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu"]
            .into_iter()
            .find(|m| Path::new(m).exists())
            .expect("a cgroup v1 cpu hierarchy");
        let cpu = guard.create(Path::new(cpu_mount).join(&name));
        std::fs::write(mem.join("memory.limit_in_bytes"), "104857600").unwrap();
        std::fs::write(cpu.join("cpu.cfs_quota_us"), "50000").unwrap();
        std::fs::write(cpu.join("cpu.shares"), "512").unwrap();
        vec![
            ("CGROUP_VERSION", "1"),
            ("MEMORY_LIMIT", "104857600"),
            ("CPU_QUOTA", "50000"),
            ("CPU_PERIOD", "100000"),
            ("CPU_SHARES", "512"),
        ]
    };
    let join: String = guard
        .0
        .iter()
        .map(|d| format!("echo $$ > {}/cgroup.procs; ", d.display()))
        .collect();
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!(
        "{join}exec {} --print-cgroup-limits",
        im.inspect.display()
    ));
    let o = run_command(c, 30);
    o.assert_ok();
    for (k, v) in expect {
        assert_eq!(o.expect_value(k), v, "{k}\n{o}");
    }
}

#[test]
fn configured_image_and_multilayer_docker_archive() {
    let im = images();
    let cfg = cmd("skopeo", &["inspect", "--config", &im.configured_oci_ref()]);
    cfg.assert_ok();
    let c = &json(&cfg.stdout)["config"];
    assert_eq!(c["User"], "user");
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!(["/inspect", "--print-user"])
    );
    assert_eq!(
        c["Cmd"],
        serde_json::json!(["--print-cwd", "--print-env=GREETING"])
    );
    assert_eq!(c["WorkingDir"], "/home/user");
    assert!(c["Env"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("GREETING=hello")));
    assert!(c["ExposedPorts"]["8080/tcp"].is_object());
    assert!(c["ExposedPorts"]["5353/udp"].is_object());
    assert!(c["Volumes"]["/data"].is_object());
    assert_eq!(c["StopSignal"], "SIGINT");
    // Same filesystem as busybox: only the config differs.
    assert_eq!(
        layer_digests(&im.configured_oci_ref()),
        layer_digests(&im.busybox_oci_ref())
    );

    let d = cmd("skopeo", &["inspect", &im.multilayer_docker_archive_ref()]);
    d.assert_ok();
    assert_eq!(json(&d.stdout)["Layers"].as_array().unwrap().len(), 4);
}

/// inspect shows mounts and the hostname of the namespaces it runs in.
#[test]
fn inspect_reports_mounts_and_hostname() {
    require_root();
    let im = images();
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt with space");
    std::fs::create_dir(&mnt).unwrap();
    let mut c = Command::new("unshare");
    c.args(["--mount", "--uts", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "hostname inspect-host && mount -t tmpfs -o size=1m,mode=0700 tmpfs '{}' && exec {} --print-hostname --print-mounts",
            mnt.display(),
            im.inspect.display()
        ));
    let o = run_command(c, 30);
    o.assert_ok();
    assert_eq!(o.expect_value("HOSTNAME"), "inspect-host");
    let line = o
        .values("MOUNT")
        .into_iter()
        .find(|m| m.starts_with(&format!("{} ", mnt.display())))
        .unwrap_or_else(|| panic!("no MOUNT line for {}\n{o}", mnt.display()));
    let fields: Vec<&str> = line.rsplitn(3, ' ').collect(); // source, options, "point fstype"
    assert_eq!(fields[0], "tmpfs", "{line}");
    assert!(
        fields[1].contains("size=1024k") && fields[1].contains("mode=700"),
        "{line}"
    );
    assert!(fields[2].ends_with(" tmpfs"), "{line}");
}

#[test]
fn registry_with_tls_and_basic_auth() {
    let im = images();
    let reg = Registry::start_with(RegistryOptions {
        tls: true,
        basic_auth: Some(("alice".into(), "s3cret".into())),
    });
    reg.push(&im.busybox_oci_ref(), "private/busybox:1");
    let r = reg.docker_ref("private/busybox:1");
    let creds = "--creds=alice:s3cret";
    // Trusting the registry's own certificate works; without it TLS verification fails.
    let certs = tempfile::tempdir().unwrap();
    std::fs::copy(reg.ca_cert().unwrap(), certs.path().join("ca.crt")).unwrap();
    let cert_dir = format!("--cert-dir={}", certs.path().display());
    let ok = cmd("skopeo", &["inspect", &cert_dir, creds, &r]);
    ok.assert_ok();
    assert_eq!(json(&ok.stdout)["Labels"]["org.example.test"], "busybox");
    let untrusted = cmd("skopeo", &["inspect", creds, &r]);
    assert_ne!(untrusted.code, 0, "{untrusted}");
    assert!(untrusted.stderr.contains("certificate"), "{untrusted}");
    // Wrong or missing credentials are refused.
    let bad = cmd("skopeo", &["inspect", &cert_dir, "--creds=alice:wrong", &r]);
    assert_ne!(bad.code, 0, "{bad}");
    let anon = cmd("skopeo", &["inspect", &cert_dir, "--no-creds", &r]);
    assert_ne!(anon.code, 0, "{anon}");
}

/// Signal handling, stdin, TCP serve/connect and namespace ids, checked from the host.
#[test]
fn inspect_signals_stdin_and_network() {
    let im = images();
    let env = RktEnv::new();
    let spawn = |args: &[&str]| {
        let mut c = Command::new(&im.inspect);
        c.args(args);
        rkt_tests::RktChild::spawn_command(c, &env.scratch)
    };
    // Trapped SIGTERM: message and the --exit-code value.
    let mut t = spawn(&["--trap-signals", "--sleep=30", "--exit-code=7"]);
    assert!(t.wait_for_stdout("TRAPPING=", 10));
    t.signal(libc::SIGTERM);
    let o = t.wait_timeout(10);
    o.assert_code(7);
    assert_eq!(o.expect_value("SIGNAL"), "SIGTERM");
    // Ignored SIGTERM: still running afterwards.
    let mut i = spawn(&["--ignore-signals", "--sleep=30"]);
    assert!(i.wait_for_stdout("IGNORING=", 10));
    i.signal(libc::SIGTERM);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(i.is_running(), "SIGTERM must be ignored");
    assert_eq!(i.kill().code, 137);

    let mut c = Command::new(&im.inspect);
    c.arg("--read-stdin");
    let o = rkt_tests::run_command_with_stdin(c, b"line1\nline2\n", 30);
    assert_eq!(o.stdout, "STDIN=line1\nline2\n");

    let port = free_port();
    let mut s = spawn(&[&format!("--serve-tcp={port}")]);
    assert!(
        s.wait_for_stdout(&format!("LISTENING={port}"), 10),
        "{}",
        s.output_so_far()
    );
    let o = cmd(
        im.inspect.to_str().unwrap(),
        &[&format!("--connect=127.0.0.1:{port}")],
    );
    o.assert_ok();
    assert!(o.expect_value("RECEIVED").starts_with("inspect "), "{o}");
    s.kill();
    let o = cmd(
        im.inspect.to_str().unwrap(),
        &[&format!("--connect=127.0.0.1:{port}")],
    );
    o.assert_code(1);
    assert_eq!(o.expect_value("CONNECT_ERRNO"), "ECONNREFUSED");

    // --wait-file blocks until the host creates the file.
    let flag = env.scratch.join("go");
    let mut w = spawn(&[&format!("--wait-file={}", flag.display()), "--print-tty"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(w.is_running() && !w.output_so_far().stdout.contains("WAITED"));
    std::fs::write(&flag, b"").unwrap();
    let o = w.wait_timeout(10);
    o.assert_ok();
    assert_eq!(o.expect_value("WAITED"), flag.display().to_string());
    assert_eq!(o.expect_value("TTY_STDOUT"), "0", "stdout is a file here");

    let o = cmd(im.inspect.to_str().unwrap(), &["--print-ns", "--print-net"]);
    o.assert_ok();
    let own_net = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_eq!(o.expect_value("NS_NET"), own_net.display().to_string());
    assert!(o.values("IFACE").contains(&"lo".to_string()), "{o}");
    assert!(
        o.values("ADDR").contains(&"lo 127.0.0.1/8".to_string()),
        "{o}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The ACI signatures verify with gpgv against the right key only.
#[test]
fn aci_signatures_verify_with_gpgv() {
    let im = images();
    let tmp = tempfile::tempdir().unwrap();
    let keyring = |pubkey: &Path, name: &str| {
        let ring = tmp.path().join(name);
        let mut c = Command::new("gpg");
        c.args(["--batch", "--dearmor", "--output"])
            .arg(&ring)
            .arg(pubkey);
        run_command(c, 60).assert_ok();
        ring
    };
    let trusted = keyring(&im.trusted_pubkey, "trusted.gpg");
    let other = keyring(&im.other_pubkey, "other.gpg");
    let verify = |ring: &Path, sig: &Path| {
        let mut c = Command::new("gpgv");
        c.arg("--keyring").arg(ring).arg(sig).arg(&im.busybox_aci);
        run_command(c, 60)
    };
    let good = verify(&trusted, &im.busybox_aci_asc);
    good.assert_ok();
    assert!(good.stderr.contains("rkt test trusted"), "{good}");
    assert_ne!(verify(&trusted, &im.busybox_aci_other_asc).code, 0);
    verify(&other, &im.busybox_aci_other_asc).assert_ok();
    assert_ne!(verify(&other, &im.busybox_aci_asc).code, 0);
    let fp = im.trusted_fingerprint();
    assert_eq!(fp.len(), 40, "{fp}");
    assert!(good.stderr.contains(&fp), "{good}");
    assert_ne!(fp, im.other_fingerprint());
}
