//! Pod networking with the real CNI plugins (Debian's containernetworking-plugins in /usr/lib/cni):
//! the default network (ptp + host-local, masquerade), default-restricted, a named bridge network
//! from a test `net.d`, CNI args, `--port`, teardown on exit and on gc after SIGKILL,
//! `list`/`status`, and hostile `--net` values and `net.d` files. Real traffic both ways: the
//! pod's `/inspect --connect` reaches a listener this test runs on the host, the host and other
//! pods reach a pod's `/inspect --serve-tcp`. The matrix tests (`::ns`, `::kvm`) run on both
//! flavours: on kvm the traffic goes through the guest's virtio-net card, its tap and the tc
//! redirects to the CNI veth; each kvm half boots as few VMs as it can (several checks per pod).

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rkt_tests::{flavours, images, Flavor, RktEnv, RktOutput};

const HOST_LOCAL: &str = "/var/lib/cni/networks";

/// A host listener on every address that answers each connection with one line.
fn host_server(line: &'static str) -> u16 {
    let l = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = writeln!(c, "{line}");
        }
    });
    port
}

fn run_args(f: Flavor, pod_flags: &[String], inspect: &[String]) -> Vec<String> {
    let mut a = vec!["run".to_string(), f.flag().to_string()];
    a.extend(pod_flags.iter().cloned());
    a.push(images().busybox_oci_ref());
    a.extend(["--name=main", "--exec", "/inspect", "--"].map(String::from));
    a.extend(inspect.iter().cloned());
    a
}

fn rkt(env: &RktEnv, args: &[String]) -> RktOutput {
    env.rkt(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// `ADDR=<iface> <ip>/<prefix>` lines of `--print-net` for `iface`, IPv4 only.
fn v4_addrs(out: &RktOutput, iface: &str) -> Vec<String> {
    out.values("ADDR")
        .into_iter()
        .filter_map(|a| {
            let (i, ip) = a.split_once(' ')?;
            (i == iface && ip.contains('.')).then(|| ip.to_string())
        })
        .collect()
}

/// `/proc/net/route` lines (as `--read-file` prints them) with a default destination.
fn default_routes(out: &RktOutput) -> Vec<String> {
    out.stdout
        .lines()
        .map(|l| l.trim_start_matches("CONTENT="))
        .filter(|l| l.split_whitespace().nth(1) == Some("00000000"))
        .map(String::from)
        .collect()
}

fn uuid_file(env: &RktEnv) -> PathBuf {
    env.scratch.join("uuid")
}

fn uuid(env: &RktEnv) -> String {
    std::fs::read_to_string(uuid_file(env))
        .unwrap()
        .trim()
        .to_string()
}

/// host-local reservations (files in `/var/lib/cni/networks/<net>`) held by the pod.
fn reservations(net: &str, uuid: &str) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(Path::new(HOST_LOCAL).join(net)) else {
        return Vec::new();
    };
    rd.flatten()
        .map(|e| e.path())
        .filter(|p| {
            std::fs::read_to_string(p)
                .map(|s| s.contains(uuid))
                .unwrap_or(false)
        })
        .collect()
}

fn host_links() -> String {
    let o = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The host-side interface names of the pod's networks, from net-info.json's CNI results.
fn host_ifaces(pod: &Path) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pod.join("net-info.json")).unwrap()).unwrap();
    let mut names = Vec::new();
    for n in v.as_array().unwrap() {
        for i in n["result"]["interfaces"].as_array().into_iter().flatten() {
            if i.get("sandbox").is_none() {
                names.push(i["name"].as_str().unwrap().to_string());
            }
        }
    }
    names
}

fn pod_dir(env: &RktEnv, uuid: &str) -> PathBuf {
    for s in ["run", "exited-garbage", "garbage", "prepared", "prepare"] {
        let p = env.dir.join("pods").join(s).join(uuid);
        if p.exists() {
            return p;
        }
    }
    panic!("pod {uuid} not found");
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// default-restricted: 172.31.0.0/16, no default route, no masquerading; the host is still
/// reachable on the link.
#[test]
fn ns_default_restricted_has_no_default_route() {
    let f = Flavor::Ns;
    let env = f.env();
    let port = host_server("restricted");
    let out = rkt(
        &env,
        &run_args(
            f,
            &["--net=default-restricted".into()],
            &[
                "--print-net".into(),
                "--read-file=/proc/net/route".into(),
                format!("--connect=172.31.0.1:{port}"),
            ],
        ),
    );
    out.assert_ok();
    let addrs = v4_addrs(&out, "eth0");
    assert!(addrs.len() == 1 && addrs[0].starts_with("172.31."), "{out}");
    assert!(addrs[0].ends_with("/16"), "{out}");
    assert!(default_routes(&out).is_empty(), "{out}");
    assert_eq!(out.expect_value("RECEIVED"), "restricted");
}

/// `--net=none` keeps loopback only.
#[test]
fn ns_net_none_is_loopback_only() {
    let f = Flavor::Ns;
    let env = f.env();
    let out = rkt(
        &env,
        &run_args(f, &["--net=none".into()], &["--print-net".into()]),
    );
    out.assert_ok();
    assert_eq!(out.values("IFACE"), ["lo"], "{out}");
}

/// Bad input is one line, exit 254, and no pod or namespace left behind.
#[test]
fn ns_bad_networks_are_refused_cleanly() {
    let f = Flavor::Ns;
    let env = f.env();
    let netd = env.local_config.join("net.d");
    std::fs::create_dir_all(&netd).unwrap();
    let try_net = |net: &str, conf: Option<&str>, expect: &str| {
        for e in std::fs::read_dir(&netd).unwrap().flatten() {
            std::fs::remove_file(e.path()).unwrap();
        }
        if let Some(c) = conf {
            std::fs::write(netd.join("10-x.conf"), c).unwrap();
        }
        let mut a: Vec<String> = env.config_flags().to_vec();
        a.extend(run_args(
            f,
            &[format!("--net={net}")],
            &["--echo=ran".into()],
        ));
        let out = rkt(&env, &a);
        out.assert_code(254);
        assert!(!out.stdout.contains("ran"), "{out}");
        assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");
        out.assert_stderr_contains(expect);
    };
    // A plugin type is a name in the plugin path, never a path.
    try_net(
        "x",
        Some(r#"{"name":"x","type":"../../../bin/sh"}"#),
        "invalid plugin type",
    );
    try_net(
        "x",
        Some(r#"{"name":"x","type":"/bin/sh"}"#),
        "invalid plugin type",
    );
    try_net(
        "x",
        Some(r#"{"name":"x","type":"ptp","ipam":{"type":"../host-local"}}"#),
        "invalid plugin type",
    );
    try_net(
        "x",
        Some(r#"{"name":"x","type":"no-such-plugin"}"#),
        "not found",
    );
    try_net("x", Some("{broken"), "not valid JSON");
    let huge = format!(
        r#"{{"name":"x","type":"ptp","pad":"{}"}}"#,
        "a".repeat(2 << 20)
    );
    try_net("x", Some(&huge), "is larger than");
    try_net("nope", None, "network \"nope\" not found");
    // CNI args: `;` and `=` separate pairs; anything that would smuggle another pair is refused.
    try_net("default:IP=1.2.3.4=5", None, "invalid CNI arguments");
    try_net("default:IP=1.2.3.4;;K=v", None, "invalid CNI arguments");
    try_net("default:IP=1.2.3.4\nK=v", None, "invalid CNI arguments");
    try_net("../etc", None, "invalid network name");
    try_net("host,default", None, "cannot be combined");
    let pods = env.rkt(&["list", "--no-legend"]);
    assert!(pods.stdout.trim().is_empty(), "{pods}");
}

/// A pod manifest whose app serves TCP on port 8000, named `http`, forwarded from `host_port`.
fn port_pod_manifest(env: &RktEnv, port_name: &str, host_port: u16) -> PathBuf {
    let id = env.fetch_id(&[&images().busybox_oci_ref()]);
    let pm = format!(
        r#"{{"acKind":"PodManifest","acVersion":"0.8.11","apps":[{{"name":"web","image":{{"name":"busybox","id":"{id}"}},"app":{{"exec":["/inspect","--serve-tcp=8000"],"user":"0","group":"0","ports":[{{"name":"http","protocol":"tcp","port":8000}}]}}}}],"ports":[{{"name":"{port_name}","hostPort":{host_port}}}]}}"#
    );
    let file = env
        .scratch
        .join(format!("pod-{port_name}-{host_port}.json"));
    std::fs::write(&file, pm).unwrap();
    file
}

fn free_port() -> u16 {
    TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The host's first global IPv4 address.
fn host_address() -> String {
    let o = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&o.stdout);
    let a = s.split_whitespace().skip_while(|w| *w != "inet").nth(1);
    a.unwrap().split('/').next().unwrap().to_string()
}

fn fetch_line(addr: &str) -> std::io::Result<String> {
    use std::io::Read;
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut b = String::new();
    s.read_to_string(&mut b)?;
    Ok(b.trim().to_string())
}

/// An unknown port name, a host port already taken, `--port` without the default network: one
/// line, 254, no pod left.
#[test]
fn ns_bad_ports_are_refused_cleanly() {
    let f = Flavor::Ns;
    let env = f.env();
    let taken = TcpListener::bind("0.0.0.0:0").unwrap();
    let tp = taken.local_addr().unwrap().port();
    let img = images().busybox_oci_ref();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![format!(
                "--pod-manifest={}",
                port_pod_manifest(&env, "nope", 8080).display()
            )],
            "no port named \"nope\"",
        ),
        (
            vec![format!(
                "--pod-manifest={}",
                port_pod_manifest(&env, "http", tp).display()
            )],
            "is not available",
        ),
        (
            vec![
                "--net=none".into(),
                format!(
                    "--pod-manifest={}",
                    port_pod_manifest(&env, "http", 8080).display()
                ),
            ],
            "--port needs the default network",
        ),
        (
            vec![format!("--port=http:{tp}"), img.clone()],
            "no port named \"http\"",
        ),
        (vec!["--port=http:99999".into(), img], "invalid --port"),
    ];
    for (flags, needle) in cases {
        let mut a = vec!["run".to_string(), f.flag().to_string()];
        a.extend(flags);
        let out = rkt(&env, &a);
        out.assert_code(254);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");
        out.assert_stderr_contains(needle);
        let pods = env.rkt(&["list", "--no-legend"]);
        assert!(pods.stdout.trim().is_empty(), "{pods}");
    }
}

/// The harness releases the networks of a pod its test left running (RktEnv's drop runs gc), so
/// a failed test does not leak host-local addresses.
#[test]
fn ns_harness_releases_networks_of_abandoned_pods() {
    let f = Flavor::Ns;
    let env = f.env();
    let args = run_args(
        f,
        &[format!("--uuid-file-save={}", uuid_file(&env).display())],
        &["--echo=started".into(), "--sleep=120".into()],
    );
    let mut child = env.spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(child.wait_for_stdout("started", f.start_secs()));
    let id = uuid(&env);
    assert_eq!(reservations("default", &id).len(), 1);
    drop(child);
    drop(env);
    assert!(!Path::new(&format!("/run/netns/rkt-{id}")).exists());
    assert!(reservations("default", &id).is_empty());
}

/// DNS settings in a CNI result become the pod's resolv.conf when no `--dns` flag is given; a
/// `--dns` flag wins.
#[test]
fn ns_dns_from_the_cni_result_unless_dns_flags() {
    let f = Flavor::Ns;
    let env = f.env();
    let netd = env.local_config.join("net.d");
    std::fs::create_dir_all(&netd).unwrap();
    let net = format!("rkt-dns-{}", std::process::id());
    std::fs::write(
        netd.join("10-dns.conflist"),
        format!(
            r#"{{"cniVersion":"1.0.0","name":"{net}","plugins":[{{"type":"ptp",
               "ipam":{{"type":"host-local","subnet":"10.99.78.0/24"}},
               "dns":{{"nameservers":["198.51.100.53"],"search":["example.test"],"options":["ndots:2"]}}}}]}}"#
        ),
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let mut a: Vec<String> = env.config_flags().to_vec();
        let mut pod = vec![format!("--net={net}")];
        pod.extend(extra.iter().map(|s| s.to_string()));
        a.extend(run_args(f, &pod, &["--read-file=/etc/resolv.conf".into()]));
        let out = rkt(&env, &a);
        out.assert_ok();
        out
    };
    let out = run(&[]);
    out.assert_stdout_contains("search example.test\nnameserver 198.51.100.53\noptions ndots:2\n");
    let out = run(&["--dns=192.0.2.53"]);
    out.assert_stdout_contains("nameserver 192.0.2.53");
    assert!(!out.stdout.contains("198.51.100.53"), "{out}");
    let _ = std::fs::remove_dir_all(Path::new(HOST_LOCAL).join(&net));
}

/// Pods started at the same time never share an address (host-local's lock): 20 at once.
#[test]
fn ns_concurrent_pods_get_distinct_addresses() {
    let f = Flavor::Ns;
    let env = f.env();
    let n = 20;
    let outs: Vec<RktOutput> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(|| {
                    rkt(
                        &env,
                        &run_args(f, &[], &["--print-net".into(), "--sleep=1".into()]),
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips: Vec<String> = outs
        .iter()
        .map(|o| {
            o.assert_ok();
            v4_addrs(o, "eth0").pop().unwrap()
        })
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), n, "{ips:?}");
}

flavours!(
    default_network_host_pods_port_and_gc,
    named_bridge_and_default_restricted
);

/// Everything a pod's networks left on the host, for one pod: its host-side interfaces (read
/// from its net-info.json while the pod directory exists), its
/// namespace, its iptables rules, its host-local reservations.
fn leftovers(veths: &[String], id: &str, nets: &[&str]) -> Vec<String> {
    let mut left = Vec::new();
    let links = host_links();
    for v in veths {
        if links.contains(&format!(" {v}@")) || links.contains(&format!(" {v}:")) {
            left.push(format!("link {v}"));
        }
    }
    let ns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    if String::from_utf8_lossy(&ns.stdout).contains(&format!("rkt-{id}")) {
        left.push("ip netns".into());
    }
    if Path::new(&format!("/run/netns/rkt-{id}")).exists() {
        left.push("/run/netns file".into());
    }
    let ipt = std::process::Command::new("iptables-save")
        .output()
        .unwrap();
    for l in String::from_utf8_lossy(&ipt.stdout).lines() {
        if l.contains(id) {
            left.push(format!("iptables {l}"));
        }
    }
    for n in nets {
        for r in reservations(n, id) {
            left.push(format!("reservation {}", r.display()));
        }
    }
    left
}

/// The default network, both ways: pod A serves TCP and is reached from the host at its CNI
/// address and through `--port` at 127.0.0.1 and the host's own address; pod B gets an address
/// in 172.16.28.0/24 and a default route, reaches the host at the gateway and reaches pod A;
/// list/status show B's network; B's network is gone once it exited; A's `rkt run` is
/// SIGKILLed and `rkt gc` releases its network (no link, namespace, rule or reservation left).
/// kvm: two VMs (the second restored from the template the first left, NIC included).
fn default_network_host_pods_port_and_gc(f: Flavor) {
    let env = f.env();
    let hp = free_port();
    let pm = port_pod_manifest(&env, "http", hp);
    let uf_a = env.scratch.join("uuid-a");
    let mut a = env.spawn(&[
        "run",
        f.flag(),
        &format!("--uuid-file-save={}", uf_a.display()),
        &format!("--pod-manifest={}", pm.display()),
    ]);
    assert!(
        a.wait_for_stdout("LISTENING=8000", f.start_secs()),
        "{}",
        a.output_so_far()
    );
    let id_a = std::fs::read_to_string(&uf_a).unwrap().trim().to_string();
    let st = env.rkt(&["status", &id_a]);
    let nets = st.expect_value("networks");
    let ip_a = nets
        .strip_prefix("default:ip4=")
        .unwrap_or_else(|| panic!("{st}"))
        .to_string();
    let want = format!("inspect rkt-{id_a}");
    for addr in [
        format!("{ip_a}:8000"),
        format!("127.0.0.1:{hp}"),
        format!("{}:{hp}", host_address()),
    ] {
        let got = fetch_line(&addr);
        assert_eq!(
            got.as_deref().ok(),
            Some(want.as_str()),
            "via {addr}: {got:?}"
        );
    }

    let port = host_server("hello-from-host");
    let mut probe = vec![
        "--print-net".into(),
        "--read-file=/proc/net/route".into(),
        format!("--connect=172.16.28.1:{port}"),
        format!("--connect={ip_a}:8000"),
    ];
    let kvm = matches!(f, Flavor::Kvm);
    if kvm {
        // The virtio feature bits the guest's driver acked (char i = bit i).
        probe.push("--read-file=/sys/class/net/eth0/device/features".into());
    }
    let out = rkt(
        &env,
        &run_args(
            f,
            &[format!("--uuid-file-save={}", uuid_file(&env).display())],
            &probe,
        ),
    );
    out.assert_ok();
    if kvm {
        let feats = out
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix("CONTENT="))
            .find(|l| l.len() == 64 && l.bytes().all(|b| b == b'0' || b == b'1'))
            .unwrap_or_else(|| panic!("no feature bits: {out}"));
        // CSUM, GUEST_CSUM, GUEST_TSO4/6, HOST_TSO4/6, MRG_RXBUF: the card's offloads are
        // live (the tap was told the same at activation, vmm unit tests).
        for bit in [0, 1, 7, 8, 11, 12, 15] {
            assert_eq!(
                &feats[bit..=bit],
                "1",
                "virtio-net feature bit {bit}: {feats}"
            );
        }
    }
    let addrs = v4_addrs(&out, "eth0");
    assert_eq!(addrs.len(), 1, "{out}");
    assert!(
        addrs[0].starts_with("172.16.28.") && addrs[0].ends_with("/24"),
        "{out}"
    );
    assert_eq!(default_routes(&out).len(), 1, "{out}");
    assert_eq!(
        out.values("RECEIVED"),
        ["hello-from-host", want.as_str()],
        "{out}"
    );
    let ip_b = addrs[0].split('/').next().unwrap().to_string();
    assert_ne!(ip_a, ip_b);
    let id_b = uuid(&env);
    let st = env.rkt(&["status", &id_b]);
    st.assert_ok();
    assert_eq!(st.expect_value("networks"), format!("default:ip4={ip_b}"));
    env.rkt(&["list", "--no-legend"])
        .assert_ok()
        .assert_stdout_contains(&format!("default:ip4={ip_b}"));
    let js = env.rkt(&["status", "--format=json", &id_b]);
    let v: serde_json::Value = serde_json::from_str(&js.stdout).unwrap();
    assert_eq!(v["networks"][0]["netName"], "default");
    assert_eq!(v["networks"][0]["ip"], ip_b.as_str());
    assert_eq!(v["networks"][0]["ifName"], "eth0");
    let pod_b = pod_dir(&env, &id_b);
    let veths = host_ifaces(&pod_b);
    assert_eq!(veths.len(), 1);
    let left = leftovers(&veths, &id_b, &["default"]);
    assert!(left.is_empty(), "after B exited: {left:?}");

    // A: `rkt run` (and on ns its supervisor; on kvm they are the same process) SIGKILLed.
    let pod_a = pod_dir(&env, &id_a);
    let veths = host_ifaces(&pod_a);
    let pid: i32 = std::fs::read_to_string(pod_a.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2).
    unsafe {
        libc::kill(a.pid() as i32, libc::SIGKILL);
        libc::kill(pid, libc::SIGKILL);
    }
    a.wait_timeout(30);
    wait_for("pod A's processes to die", 10, || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(
        !leftovers(&veths, &id_a, &["default"]).is_empty(),
        "nothing was held before gc"
    );
    env.rkt(&["gc", "--grace-period=0s"]).assert_ok();
    let left = leftovers(&veths, &id_a, &["default"]);
    assert!(left.is_empty(), "after gc: {left:?}");
    assert!(fetch_line(&format!("127.0.0.1:{hp}")).is_err());
}

/// A named network from `<local-config>/net.d` (the real bridge plugin) with CNI args picking the
/// address, and default-restricted added as rkt v1 does: two cards (on kvm two virtio-net
/// devices), the host reached over each, no default route; both released at exit.
fn named_bridge_and_default_restricted(f: Flavor) {
    let env = f.env();
    let netd = env.local_config.join("net.d");
    std::fs::create_dir_all(&netd).unwrap();
    // Unique per test process and flavour, so parallel runs share no bridge or address pool.
    let tag = std::process::id() % 10000;
    let br = format!("rktbr{}{tag}", f.name());
    let net = format!("rkt-test-{}-{tag}", f.name());
    let subnet = if f == Flavor::Ns { 77 } else { 79 };
    std::fs::write(
        netd.join("10-test.conf"),
        format!(
            r#"{{"cniVersion":"0.4.0","name":"{net}","type":"bridge","bridge":"{br}","isGateway":true,
               "ipam":{{"type":"host-local","subnet":"10.99.{subnet}.0/24"}}}}"#
        ),
    )
    .unwrap();
    let port = host_server("over-the-bridge");
    let port2 = host_server("restricted");
    let mut flags: Vec<String> = env.config_flags().to_vec();
    flags.extend(run_args(
        f,
        &[
            format!("--net={net}:IgnoreUnknown=1;IP=10.99.{subnet}.42"),
            format!("--uuid-file-save={}", uuid_file(&env).display()),
        ],
        &[
            "--print-net".into(),
            "--read-file=/proc/net/route".into(),
            format!("--connect=10.99.{subnet}.1:{port}"),
            format!("--connect=172.31.0.1:{port2}"),
        ],
    ));
    let out = rkt(&env, &flags);
    let _ = std::process::Command::new("ip")
        .args(["link", "del", &br])
        .status();
    out.assert_ok();
    assert_eq!(
        v4_addrs(&out, "eth0"),
        [format!("10.99.{subnet}.42/24")],
        "{out}"
    );
    let eth1 = v4_addrs(&out, "eth1");
    assert!(eth1.len() == 1 && eth1[0].starts_with("172.31."), "{out}");
    assert!(eth1[0].ends_with("/16"), "{out}");
    assert!(default_routes(&out).is_empty(), "{out}");
    assert_eq!(
        out.values("RECEIVED"),
        ["over-the-bridge", "restricted"],
        "{out}"
    );
    let id = uuid(&env);
    let st = env.rkt(&["status", &id]);
    let nets = st.expect_value("networks");
    assert!(
        nets.starts_with(&format!(
            "{net}:ip4=10.99.{subnet}.42, default-restricted:ip4=172.31."
        )),
        "{nets}"
    );
    let veths = host_ifaces(&pod_dir(&env, &id));
    let left = leftovers(&veths, &id, &[&net, "default-restricted"]);
    assert!(left.is_empty(), "{left:?}");
    let _ = std::fs::remove_dir_all(Path::new(HOST_LOCAL).join(&net));
}

/// kvm joins a network namespace it did not make (`--net=<path>`, as containerd's CRI plugin
/// hands over its sandbox's), wired like rkt's own CNI interfaces: the namespace's addressed
/// interface `ctr0` becomes the guest's `eth0`. Refused with one line and nothing left before
/// any boot: a namespace whose only interface has no address, and an interface someone else
/// already redirects (an ingress qdisc). Then two VMs in turn in the same namespace, the second
/// restored from the template the first used (one card): traffic both ways, `status`/`list`
/// show the address; after each (the first SIGKILLed and gc'd, the second exiting), the
/// namespace is as it was (no tap, no ingress qdisc left).
#[test]
fn kvm_pod_joins_an_existing_netns() {
    use std::process::Command;
    let f = Flavor::Kvm;
    let env = f.env();
    let nonce = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id())
        % 100_000;
    let (ns, host_if) = (format!("rkt-test-{nonce}"), format!("rkjh{nonce}"));
    let sub = format!("10.213.{}", nonce % 200 + 20);
    let path = format!("/run/netns/{ns}");
    struct Cleanup(String, String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            // The host end usually went with the namespace.
            let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
            let _ = Command::new("ip").args(["link", "del", &self.1]).output();
        }
    }
    let run = |cmd: &str, args: &[&str]| {
        let o = Command::new(cmd).args(args).output().unwrap();
        assert!(o.status.success(), "{cmd} {args:?}: {o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let ip = |args: &[&str]| run("ip", args);
    let in_ns = |args: &[&str]| {
        let mut a = vec!["-n", ns.as_str()];
        a.extend_from_slice(args);
        run("ip", &a)
    };
    let ingress = || {
        run(
            "tc",
            &["-n", &ns, "qdisc", "show", "dev", "ctr0", "ingress"],
        )
    };
    // What must survive the pods: links (no tap left), addresses, routes.
    let state = || {
        let links: Vec<String> = in_ns(&["-o", "link"])
            .lines()
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .collect();
        // IPv4 only: the IPv6 link-local address is still tentative right after link up.
        (links, in_ns(&["-4", "-o", "addr"]), in_ns(&["route"]))
    };
    ip(&["netns", "add", &ns]);
    let _cleanup = Cleanup(ns.clone(), host_if.clone());
    ip(&[
        "link", "add", &host_if, "type", "veth", "peer", "name", "ctr0", "netns", &ns,
    ]);
    in_ns(&["link", "set", "lo", "up"]);
    let refused = |want: &str| {
        let out = env.rkt(&[
            "run",
            f.flag(),
            &format!("--net={path}"),
            &images().busybox_oci_ref(),
            "--exec=/bin/true",
        ]);
        assert_eq!(out.code, 254, "{out}");
        assert!(out.stderr.contains(want), "{out}");
        assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");
    };
    refused("no interface of the namespace has an address for the VM to take over (ctr0");

    ip(&["addr", "add", &format!("{sub}.1/24"), "dev", &host_if]);
    ip(&["link", "set", &host_if, "up"]);
    in_ns(&["addr", "add", &format!("{sub}.2/24"), "dev", "ctr0"]);
    in_ns(&["link", "set", "ctr0", "up"]);
    in_ns(&["route", "add", "default", "via", &format!("{sub}.1")]);
    run("tc", &["-n", &ns, "qdisc", "add", "dev", "ctr0", "ingress"]);
    let before = state();
    refused("ctr0 already has an ingress qdisc");
    assert!(
        ingress().contains("ingress ffff:"),
        "someone else's qdisc went"
    );
    assert_eq!(state(), before, "the refused pod left something");
    run("tc", &["-n", &ns, "qdisc", "del", "dev", "ctr0", "ingress"]);

    let port = host_server("hello-from-the-host-side");
    let mut boots = Vec::new();
    for second in [false, true] {
        let uf = env.scratch.join(format!("uuid-{second}"));
        let mut inspect = vec![
            "--print-net".to_string(),
            format!("--connect={sub}.1:{port}"),
        ];
        if !second {
            inspect.push("--serve-tcp=8000".into());
        }
        let args = run_args(
            f,
            &[
                format!("--net={path}"),
                format!("--uuid-file-save={}", uf.display()),
            ],
            &inspect,
        );
        let mut pod = env.spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let want = if second {
            "RECEIVED="
        } else {
            "LISTENING=8000"
        };
        assert!(
            pod.wait_for_stdout(want, f.start_secs()),
            "{}",
            pod.output_so_far()
        );
        let id = std::fs::read_to_string(&uf).unwrap().trim().to_string();
        let js = env.rkt(&["status", "--format=json", &id]);
        let v: serde_json::Value = serde_json::from_str(&js.stdout).unwrap();
        assert_eq!(v["networks"][0]["ifName"], "ctr0", "{js}");
        assert_eq!(v["networks"][0]["ip"], format!("{sub}.2"), "{js}");
        let how = std::fs::read_to_string(pod_dir(&env, &id).join("stage1/kvm-boot")).unwrap();
        boots.push(how.trim().to_string());
        if !second {
            // The host reaches the guest at the namespace's address, through ctr0.
            let got = fetch_line(&format!("{sub}.2:8000"));
            assert_eq!(got.ok(), Some(format!("inspect rkt-{id}")));
            let st = env.rkt(&["status", &id]);
            assert_eq!(st.expect_value("networks"), format!("{ns}:ip4={sub}.2"));
            env.rkt(&["list", "--no-legend"])
                .assert_ok()
                .assert_stdout_contains(&format!("{ns}:ip4={sub}.2"));
            assert!(ingress().contains("ingress ffff:"), "rkt's redirect");
        }
        let out = if second {
            pod.wait_timeout(f.start_secs()).assert_ok().clone()
        } else {
            // Killed (VMM and `rkt run` are one process): its tap goes with it, its qdisc is
            // left for gc, which finds it in the pod's record.
            let out = pod.kill();
            assert!(ingress().contains("ingress ffff:"), "nothing left for gc");
            env.rkt(&["gc", "--grace-period=0s"]).assert_ok();
            out
        };
        assert_eq!(v4_addrs(&out, "eth0"), [format!("{sub}.2/24")], "{out}");
        assert_eq!(
            out.values("RECEIVED"),
            ["hello-from-the-host-side"],
            "{out}"
        );
        assert!(Path::new(&path).exists(), "rkt removed {path}");
        assert_eq!(ingress().trim(), "", "an ingress qdisc left on ctr0");
        assert_eq!(state(), before, "the namespace changed");
    }
    // The template key has the card: the second VM restores from the one the first used.
    let key = boots[0].split_whitespace().last().unwrap_or_default();
    assert_eq!(boots[1], format!("restored {key}"), "{boots:?}");
    env.rkt(&["gc", "--grace-period=0s"]).assert_ok();
    assert_eq!(state(), before, "gc changed the namespace");
}
