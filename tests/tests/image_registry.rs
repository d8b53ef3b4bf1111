//! `rkt fetch docker://…` from a real registry (Debian's docker-registry), plain HTTP only with
//! `--insecure-options=http`, the anonymous bearer-token flow, and pull policies that avoid work.

use rkt_tests::{images, Registry, RegistryOptions, RktEnv};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

fn fetch_ok(env: &RktEnv, args: &[&str]) -> String {
    let out = env.rkt(args);
    out.assert_ok();
    let id = out.stdout.trim().to_string();
    assert!(id.starts_with("sha256-") && id.len() == 71, "{out}");
    id
}

#[test]
fn pull_over_http_only_when_allowed() {
    let reg = Registry::start();
    reg.push(&images().busybox_oci_ref(), "busybox:1.0");
    reg.push(&images().multilayer_oci_ref(), "tools/multi:latest");
    let env = RktEnv::new();
    let r = reg.docker_ref("busybox:1.0");

    // Without --insecure-options=http rkt speaks HTTPS, which this registry does not.
    let out = env.rkt(&["fetch", &r]);
    out.assert_code(254)
        .assert_stderr_contains("--insecure-options=http");
    assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");
    assert_eq!(
        std::fs::read_dir(env.dir.join("cas/blobs/sha256"))
            .unwrap()
            .count(),
        0
    );

    let id = fetch_ok(&env, &["--insecure-options=http", "fetch", &r]);
    let rootfs = env.dir.join("cas/tree").join(&id).join("rootfs");
    assert!(rootfs.join("bin/busybox").is_file());
    let list = env.rkt(&["image", "list", "--no-legend", "--fields=name"]);
    list.assert_ok();
    assert_eq!(list.stdout.trim(), format!("{}/busybox:1.0", reg.addr));
    let m = env.rkt(&[
        "image",
        "cat-manifest",
        &format!("{}/busybox:1.0", reg.addr),
    ]);
    m.assert_ok().assert_stdout_contains("\"value\": \"1.0\"");

    // Multi-layer image with whiteouts through the registry: same tree as from the layout.
    let multi = fetch_ok(
        &env,
        &[
            "--insecure-options=http",
            "fetch",
            &reg.docker_ref("tools/multi"),
        ],
    );
    let local = fetch_ok(&env, &["fetch", &images().multilayer_oci_ref()]);
    let td = |id: &str| {
        std::fs::read_to_string(env.dir.join("cas/tree").join(id).join("tree_digest")).unwrap()
    };
    assert_eq!(td(&multi), td(&local));

    // By digest.
    let digest = id.replacen("sha256-", "sha256:", 1);
    let env2 = RktEnv::new();
    let by_digest = fetch_ok(
        &env2,
        &[
            "--insecure-options=http",
            "fetch",
            &reg.docker_ref(&format!("busybox@{digest}")),
        ],
    );
    assert_eq!(by_digest, id);

    // Unknown tag: one clear line.
    let out = env.rkt(&[
        "--insecure-options=http",
        "fetch",
        &reg.docker_ref("busybox:nope"),
    ]);
    out.assert_code(254).assert_stderr_contains("HTTP 404");
}

/// A front for the real registry that demands an anonymous bearer token (as Docker Hub does) and
/// counts requests.
struct TokenProxy {
    addr: String,
    manifests: Arc<AtomicUsize>,
    blobs: Arc<AtomicUsize>,
    tokens: Arc<AtomicUsize>,
    seen_scope: Arc<Mutex<String>>,
}

fn read_head(r: &mut BufReader<TcpStream>) -> Option<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).ok()? == 0 {
            return None;
        }
        let l = l.trim_end().to_string();
        if l.is_empty() {
            return Some(lines);
        }
        lines.push(l);
    }
}

impl TokenProxy {
    fn start(upstream: String) -> TokenProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let p = TokenProxy {
            addr: addr.clone(),
            manifests: Arc::default(),
            blobs: Arc::default(),
            tokens: Arc::default(),
            seen_scope: Arc::default(),
        };
        let (m, b, t, s) = (
            p.manifests.clone(),
            p.blobs.clone(),
            p.tokens.clone(),
            p.seen_scope.clone(),
        );
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let (upstream, addr) = (upstream.clone(), addr.clone());
                let (m, b, t, s) = (m.clone(), b.clone(), t.clone(), s.clone());
                std::thread::spawn(move || {
                    let mut r = BufReader::new(conn.try_clone().unwrap());
                    let mut w = conn;
                    while let Some(head) = read_head(&mut r) {
                        let path = head[0].split(' ').nth(1).unwrap_or("").to_string();
                        let authed = head
                            .iter()
                            .any(|h| h.eq_ignore_ascii_case("authorization: bearer anon-token"));
                        if path.starts_with("/token") {
                            t.fetch_add(1, Ordering::SeqCst);
                            *s.lock().unwrap() = path.clone();
                            let body = r#"{"token":"anon-token"}"#;
                            let _ = write!(w, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                            continue;
                        }
                        if !authed {
                            let _ = write!(w, "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://{addr}/token\",service=\"test-registry\",scope=\"repository:busybox:pull\"\r\nContent-Length: 0\r\n\r\n");
                            continue;
                        }
                        if path.contains("/manifests/") {
                            m.fetch_add(1, Ordering::SeqCst);
                        }
                        if path.contains("/blobs/") {
                            b.fetch_add(1, Ordering::SeqCst);
                        }
                        // Forward one request (GETs only) and relay the response, then close.
                        let mut up = TcpStream::connect(&upstream).unwrap();
                        let mut req = format!("{}\r\n", head[0]);
                        for h in &head[1..] {
                            let lower = h.to_ascii_lowercase();
                            if !lower.starts_with("connection:")
                                && !lower.starts_with("authorization:")
                            {
                                req.push_str(&format!("{h}\r\n"));
                            }
                        }
                        req.push_str("Connection: close\r\n\r\n");
                        up.write_all(req.as_bytes()).unwrap();
                        let mut resp = Vec::new();
                        up.read_to_end(&mut resp).unwrap();
                        // Tell the client the connection closes after this response.
                        let split = resp.windows(4).position(|x| x == b"\r\n\r\n").unwrap() + 2;
                        let _ = w.write_all(&resp[..split]);
                        let _ = w.write_all(b"Connection: close\r\n");
                        let _ = w.write_all(&resp[split..]);
                        return;
                    }
                });
            }
        });
        p
    }
}

#[test]
fn bearer_token_flow_and_no_work_refetch() {
    let reg = Registry::start();
    reg.push(&images().busybox_oci_ref(), "busybox:latest");
    let proxy = TokenProxy::start(reg.addr.clone());
    let env = RktEnv::new();
    let r = format!("docker://{}/busybox", proxy.addr);

    let id = fetch_ok(&env, &["--insecure-options=http", "fetch", &r]);
    assert!(
        proxy.tokens.load(Ordering::SeqCst) >= 1,
        "no token was requested"
    );
    let scope = proxy.seen_scope.lock().unwrap().clone();
    assert!(
        scope.contains("service=test-registry")
            && scope.contains("scope=repository%3Abusybox%3Apull"),
        "{scope}"
    );
    let blobs = proxy.blobs.load(Ordering::SeqCst);
    assert!(blobs >= 2, "config and layer come from the registry");

    // --pull-policy=update (fetch's default): the manifest is checked, no blob is downloaded again.
    let m0 = proxy.manifests.load(Ordering::SeqCst);
    assert_eq!(
        fetch_ok(&env, &["--insecure-options=http", "fetch", &r]),
        id
    );
    assert!(proxy.manifests.load(Ordering::SeqCst) > m0);
    assert_eq!(
        proxy.blobs.load(Ordering::SeqCst),
        blobs,
        "re-fetch downloaded blobs again"
    );

    // --pull-policy=new with the name in the store: no network at all.
    let (m1, t1) = (
        proxy.manifests.load(Ordering::SeqCst),
        proxy.tokens.load(Ordering::SeqCst),
    );
    assert_eq!(
        fetch_ok(
            &env,
            &["--insecure-options=http", "fetch", "--pull-policy=new", &r]
        ),
        id
    );
    assert_eq!(proxy.manifests.load(Ordering::SeqCst), m1);
    assert_eq!(proxy.tokens.load(Ordering::SeqCst), t1);
    assert_eq!(proxy.blobs.load(Ordering::SeqCst), blobs);

    // --pull-policy=never for a name not in the store.
    let out = env.rkt(&[
        "fetch",
        "--pull-policy=never",
        &format!("docker://{}/other", proxy.addr),
    ]);
    out.assert_code(254)
        .assert_stderr_contains("not found in the store");
}

#[test]
fn manifest_list_resolves_to_linux_amd64() {
    use sha2::{Digest, Sha256};
    // A layout whose tag points at an image index: an arm64 entry and the busybox manifest as
    // linux/amd64 (the arm64 entry reuses the multilayer manifest so the registry has its blobs).
    let env = RktEnv::new();
    let layout = env.scratch.join("multiarch");
    let mut c = std::process::Command::new("cp");
    c.arg("-a").arg(&images().busybox_oci).arg(&layout);
    rkt_tests::run_command(c, 60).assert_ok();
    let mut c = std::process::Command::new("cp");
    c.arg("-a")
        .arg(images().multilayer_oci.join("blobs/sha256/."))
        .arg(layout.join("blobs/sha256"));
    rkt_tests::run_command(c, 60).assert_ok();
    let desc = |dir: &std::path::Path| -> serde_json::Value {
        let idx: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        idx["manifests"][0].clone()
    };
    let mut amd = desc(&images().busybox_oci);
    let mut arm = desc(&images().multilayer_oci);
    for d in [&mut amd, &mut arm] {
        d.as_object_mut().unwrap().remove("annotations");
    }
    amd["platform"] = serde_json::json!({"os": "linux", "architecture": "amd64"});
    arm["platform"] = serde_json::json!({"os": "linux", "architecture": "arm64"});
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [arm, amd.clone()],
    }))
    .unwrap();
    let hex = hex::encode(Sha256::digest(&index));
    std::fs::write(layout.join("blobs/sha256").join(&hex), &index).unwrap();
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": format!("sha256:{hex}"), "size": index.len(),
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]});
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();

    // From the layout directly.
    let out = env.rkt(&["fetch", &format!("oci:{}:latest", layout.display())]);
    out.assert_ok();
    let want = amd["digest"]
        .as_str()
        .unwrap()
        .replacen("sha256:", "sha256-", 1);
    assert_eq!(out.stdout.trim(), want);

    // Through a registry (skopeo copy --all pushes the whole index).
    let reg = Registry::start();
    let mut c = std::process::Command::new("skopeo");
    c.args([
        "--insecure-policy",
        "copy",
        "--all",
        "--dest-tls-verify=false",
    ])
    .arg(format!("oci:{}:latest", layout.display()))
    .arg(reg.docker_ref("multi:latest"));
    rkt_tests::run_command(c, 300).assert_ok();
    let env2 = RktEnv::new();
    let id = fetch_ok(
        &env2,
        &["--insecure-options=http", "fetch", &reg.docker_ref("multi")],
    );
    assert_eq!(id, want);
}

#[test]
fn https_registry_needs_a_trusted_cert_or_insecure_tls() {
    let reg = Registry::start_with(RegistryOptions {
        tls: true,
        ..Default::default()
    });
    reg.push(&images().busybox_oci_ref(), "busybox:latest");
    let env = RktEnv::new();
    let r = reg.docker_ref("busybox");
    let out = env.rkt(&["fetch", &r]);
    out.assert_code(254);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");
    assert!(out.stderr.to_lowercase().contains("certificate"), "{out}");
    let id = fetch_ok(&env, &["--insecure-options=tls", "fetch", &r]);
    assert!(env
        .dir
        .join("cas/tree")
        .join(&id)
        .join("rootfs/bin/busybox")
        .is_file());
}

#[test]
fn docker_schema2_is_accepted_and_exported_as_oci() {
    let reg = Registry::start();
    reg.push_as(&images().multilayer_oci_ref(), "multi:v2s2", "v2s2");
    let env = RktEnv::new();
    let id = fetch_ok(
        &env,
        &[
            "--insecure-options=http",
            "fetch",
            &reg.docker_ref("multi:v2s2"),
        ],
    );
    let local = fetch_ok(&env, &["fetch", &images().multilayer_oci_ref()]);
    assert_ne!(id, local, "a converted manifest has its own digest");
    let td = |id: &str| {
        std::fs::read_to_string(env.dir.join("cas/tree").join(id).join("tree_digest")).unwrap()
    };
    assert_eq!(
        td(&id),
        td(&local),
        "same tree whatever the manifest format"
    );
    let m = env.rkt(&["image", "cat-manifest", &id]);
    m.assert_ok().assert_stdout_contains("\"value\": \"v2s2\"");

    // Export rewrites Docker media types to OCI; skopeo reads the result.
    let out = env.scratch.join("exported.tar");
    env.rkt(&[
        "image",
        "export",
        "--format=oci-archive",
        &id,
        out.to_str().unwrap(),
    ])
    .assert_ok();
    let mut c = std::process::Command::new("skopeo");
    c.args(["--insecure-policy", "inspect", "--raw"])
        .arg(format!("oci-archive:{}", out.display()));
    let raw = rkt_tests::run_command(c, 120);
    raw.assert_ok();
    let v: serde_json::Value = serde_json::from_str(&raw.stdout).unwrap();
    assert_eq!(
        v["mediaType"], "application/vnd.oci.image.manifest.v1+json",
        "{raw}"
    );
    assert!(!raw.stdout.contains("docker"), "{raw}");
}

#[test]
fn registry_requiring_credentials_is_a_clear_error() {
    let reg = Registry::start_with(RegistryOptions {
        basic_auth: Some(("user".into(), "secret".into())),
        ..Default::default()
    });
    reg.push(&images().busybox_oci_ref(), "busybox:latest");
    let env = RktEnv::new();
    let out = env.rkt(&[
        "--insecure-options=http",
        "fetch",
        &reg.docker_ref("busybox"),
    ]);
    out.assert_code(254)
        .assert_stderr_contains("wants credentials");
    assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");
}
