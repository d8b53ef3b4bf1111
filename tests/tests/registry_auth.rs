//! Registries and fetching (issue 13): credentials from rkt's auth.d and the containers/docker
//! files against a real docker-registry with htpasswd auth over TLS (test CA in
//! `<local-config>/certs.d/HOST:PORT/`), the bearer token flow with credentials, multi-arch
//! platform choice, ACIs by https URL and by appc discovery, and `rkt image export` as an ACI.
//! Every refusal is one line, exit 254, and leaves the store as it was.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;

use rkt_tests::{
    images, run_command, HttpsServer, Registry, RegistryOptions, RktEnv, RktOutput, TestCa,
};

/// `rkt --dir --local-config --system-config ARGS` with a private HOME and XDG_RUNTIME_DIR (so
/// the host's ~/.docker/config.json never leaks in) plus `vars`.
fn rkt(env: &RktEnv, vars: &[(&str, &Path)], args: &[&str]) -> RktOutput {
    let flags = env.config_flags();
    let mut full: Vec<&str> = flags.iter().map(String::as_str).collect();
    full.extend_from_slice(args);
    let mut c = env.command(&full);
    let home = env.scratch.join("home");
    let run = env.scratch.join("run");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&run).unwrap();
    c.env("HOME", &home)
        .env("XDG_RUNTIME_DIR", &run)
        .env_remove("REGISTRY_AUTH_FILE");
    for (k, v) in vars {
        c.env(k, v);
    }
    run_command(c, 300)
}

/// Everything under `cas/` that an import could leave: blobs, trees, temp files, index rows.
fn store_state(env: &RktEnv) -> BTreeSet<String> {
    let mut s = BTreeSet::new();
    for sub in ["cas/blobs/sha256", "cas/tree", "cas/tmp"] {
        if let Ok(rd) = std::fs::read_dir(env.dir.join(sub)) {
            for e in rd.flatten() {
                s.insert(format!("{sub}/{}", e.file_name().to_string_lossy()));
            }
        }
    }
    let l = env.rkt(&["image", "list", "--no-legend", "--full", "--fields=id"]);
    for line in l.stdout.lines() {
        s.insert(line.trim().to_string());
    }
    s
}

/// A refusal: exit 254, one stderr line containing every `needles`, store unchanged.
#[track_caller]
fn refused(env: &RktEnv, out: &RktOutput, before: &BTreeSet<String>, needles: &[&str]) {
    out.assert_code(254);
    assert_eq!(out.stderr.trim().lines().count(), 1, "not one line:\n{out}");
    for n in needles {
        assert!(out.stderr.contains(n), "{n:?} missing:\n{out}");
    }
    assert_eq!(&store_state(env), before, "the store changed\n{out}");
}

#[track_caller]
fn fetched(out: &RktOutput) -> String {
    out.assert_ok();
    let id = out.stdout.trim().lines().last().unwrap_or("").to_string();
    assert!(id.starts_with("sha256-") && id.len() == 71, "{out}");
    id
}

fn write_json(path: &Path, v: serde_json::Value) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

fn docker_auth(env: &RktEnv, file: &str, registry: &str, user: &str, password: &str) {
    write_json(
        &env.local_config.join("auth.d").join(file),
        serde_json::json!({"rktKind": "dockerAuth", "rktVersion": "v1",
            "registries": [registry], "credentials": {"user": user, "password": password}}),
    );
}

/// `{"auths": {HOST: {"auth": base64(user:password)}}}`, what `podman login` writes.
fn auth_json(path: &Path, host: &str, user: &str, password: &str) {
    let mut c = Command::new("base64");
    c.arg("-w0");
    let b64 = rkt_tests::run_command_with_stdin(c, format!("{user}:{password}").as_bytes(), 10);
    b64.assert_ok();
    write_json(
        path,
        serde_json::json!({"auths": {host: {"auth": b64.stdout.trim()}}}),
    );
}

#[test]
fn htpasswd_registry_over_tls_with_a_test_ca() {
    let reg = Registry::start_with(RegistryOptions {
        tls: true,
        basic_auth: Some(("alice".into(), "s3cret".into())),
    });
    reg.push(&images().busybox_oci_ref(), "private/busybox:1");
    let r = reg.docker_ref("private/busybox:1");
    let env = RktEnv::new();
    let fetch =
        |vars: &[(&str, &Path)]| rkt(&env, vars, &["--insecure-options=image", "fetch", &r]);
    let empty = store_state(&env);

    // The CA is not trusted yet: a certificate error that says where a CA goes.
    docker_auth(&env, "reg.json", &reg.addr, "alice", "s3cret");
    refused(&env, &fetch(&[]), &empty, &["certificate", "certs.d/"]);
    reg.trust_ca_in(&env.local_config);

    // No credentials: a hint where they go.
    std::fs::remove_file(env.local_config.join("auth.d/reg.json")).unwrap();
    refused(
        &env,
        &fetch(&[]),
        &empty,
        &["wants credentials", "auth.d", "podman"],
    );

    // Wrong password: which user and which file.
    docker_auth(&env, "reg.json", &reg.addr, "alice", "wrong");
    let cfg_file = env.local_config.join("auth.d/reg.json");
    refused(
        &env,
        &fetch(&[]),
        &empty,
        &[
            "refused the credentials of user \"alice\"",
            &cfg_file.display().to_string(),
        ],
    );

    // A malformed auth.d file is an error naming it, not an anonymous fetch.
    std::fs::write(env.local_config.join("auth.d/zz-bad.json"), "{").unwrap();
    refused(&env, &fetch(&[]), &empty, &["zz-bad.json"]);
    let out = rkt(&env, &[], &["config"]);
    out.assert_code(254).assert_stderr_contains("zz-bad.json");
    std::fs::remove_file(env.local_config.join("auth.d/zz-bad.json")).unwrap();

    // The right password: fetched over verified TLS.
    docker_auth(&env, "reg.json", &reg.addr, "alice", "s3cret");
    let id = fetched(&fetch(&[]));
    assert!(env
        .dir
        .join("cas/tree")
        .join(&id)
        .join("rootfs/bin/busybox")
        .is_file());

    // `rkt config` shows the entry, password masked.
    let out = rkt(&env, &[], &["config"]);
    out.assert_ok();
    assert!(!out.stdout.contains("s3cret"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let entry = v["stage0"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["rktKind"] == "dockerAuth")
        .unwrap_or_else(|| panic!("no dockerAuth entry\n{out}"))
        .clone();
    assert_eq!(entry["registries"][0], reg.addr.as_str());
    assert_eq!(entry["credentials"]["user"], "alice");
    assert_eq!(entry["credentials"]["password"], "***");

    // The same from the files podman/skopeo (auth.json) and docker (config.json) write; rkt's
    // own auth.d wins over them.
    for (var, rel) in [
        ("REGISTRY_AUTH_FILE", "my-auth.json"),
        ("XDG_RUNTIME_DIR", "containers/auth.json"),
        ("HOME", ".docker/config.json"),
    ] {
        let env2 = RktEnv::new();
        reg.trust_ca_in(&env2.local_config);
        let base = env2.scratch.join(format!("creds-{var}"));
        let file = base.join(rel);
        auth_json(&file, &reg.addr, "alice", "s3cret");
        let var_value = if var == "REGISTRY_AUTH_FILE" {
            file.clone()
        } else {
            base.clone()
        };
        let vars: &[(&str, &Path)] = &[(var, &var_value)];
        let out = rkt(&env2, vars, &["--insecure-options=image", "fetch", &r]);
        assert_eq!(fetched(&out), id, "{var}");
        // auth.d with a wrong password overrides the right one from the file.
        docker_auth(&env2, "reg.json", &reg.addr, "alice", "wrong");
        let out = rkt(&env2, vars, &["--insecure-options=image", "fetch", &r]);
        out.assert_code(254)
            .assert_stderr_contains("refused the credentials");
    }
}

/// A front for a plain registry that wants a bearer token, issued only for alice's Basic
/// credentials (the Docker Hub / Harbor flow).
fn token_proxy(upstream: String) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let me = addr.clone();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let (upstream, me) = (upstream.clone(), me.clone());
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                let mut head = Vec::new();
                loop {
                    let mut l = String::new();
                    if r.read_line(&mut l).unwrap_or(0) == 0 {
                        return;
                    }
                    if l.trim_end().is_empty() {
                        break;
                    }
                    head.push(l.trim_end().to_string());
                }
                let path = head[0].split(' ').nth(1).unwrap_or("").to_string();
                let has = |v: &str| {
                    head.iter()
                        .any(|h| h.eq_ignore_ascii_case(&format!("authorization: {v}")))
                };
                if path.starts_with("/token") {
                    // base64("alice:s3cret")
                    let (status, body) = if has("Basic YWxpY2U6czNjcmV0") {
                        ("200 OK", r#"{"token":"alice-token"}"#)
                    } else {
                        (
                            "401 Unauthorized",
                            r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
                        )
                    };
                    let _ = write!(w, "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                    return;
                }
                if !has("Bearer alice-token") {
                    let _ = write!(w, "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://{me}/token\",service=\"test\",scope=\"repository:private/busybox:pull\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    return;
                }
                let mut up = TcpStream::connect(&upstream).unwrap();
                let mut req = format!("{}\r\n", head[0]);
                for h in &head[1..] {
                    let lower = h.to_ascii_lowercase();
                    if !lower.starts_with("connection:") && !lower.starts_with("authorization:") {
                        req.push_str(&format!("{h}\r\n"));
                    }
                }
                req.push_str("Connection: close\r\n\r\n");
                up.write_all(req.as_bytes()).unwrap();
                let mut resp = Vec::new();
                up.read_to_end(&mut resp).unwrap();
                let _ = w.write_all(&resp);
            });
        }
    });
    addr
}

#[test]
fn bearer_token_obtained_with_credentials() {
    let reg = Registry::start();
    reg.push(&images().busybox_oci_ref(), "private/busybox:latest");
    let proxy = token_proxy(reg.addr.clone());
    let r = format!("docker://{proxy}/private/busybox");
    let env = RktEnv::new();
    let empty = store_state(&env);
    let fetch = |env: &RktEnv| rkt(env, &[], &["--insecure-options=http,image", "fetch", &r]);

    // Anonymous: the token server turns us down, and the hint says where credentials go.
    refused(&env, &fetch(&env), &empty, &["wants credentials", "auth.d"]);
    // Credentials sent to a plain-HTTP token realm only with --insecure-options=http (given).
    docker_auth(&env, "p.json", &proxy, "alice", "nope");
    refused(
        &env,
        &fetch(&env),
        &empty,
        &["token server", "refused the credentials of user \"alice\""],
    );
    docker_auth(&env, "p.json", &proxy, "alice", "s3cret");
    let id = fetched(&fetch(&env));
    assert!(env
        .dir
        .join("cas/tree")
        .join(&id)
        .join("rootfs/bin/busybox")
        .is_file());

    // Without --insecure-options=http rkt speaks HTTPS, which this front does not: one line.
    let env2 = RktEnv::new();
    docker_auth(&env2, "p.json", &proxy, "alice", "s3cret");
    let out = rkt(&env2, &[], &["--insecure-options=image", "fetch", &r]);
    refused(
        &env2,
        &out,
        &store_state(&env2),
        &["--insecure-options=http"],
    );
}

/// An OCI layout whose `latest` is an image index with `platforms`: each entry points at the
/// busybox or the multilayer manifest (blobs of both are in the layout).
fn multiarch_layout(env: &RktEnv, name: &str, platforms: &[(serde_json::Value, bool)]) -> PathBuf {
    use sha2::{Digest, Sha256};
    let im = images();
    let layout = env.scratch.join(name);
    let mut c = Command::new("cp");
    c.arg("-a").arg(&im.busybox_oci).arg(&layout);
    run_command(c, 60).assert_ok();
    let mut c = Command::new("cp");
    c.arg("-a")
        .arg(im.multilayer_oci.join("blobs/sha256/."))
        .arg(layout.join("blobs/sha256"));
    run_command(c, 60).assert_ok();
    let desc = |dir: &Path| -> serde_json::Value {
        let idx: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        let mut d = idx["manifests"][0].clone();
        d.as_object_mut().unwrap().remove("annotations");
        d
    };
    let ms: Vec<serde_json::Value> = platforms
        .iter()
        .map(|(p, busybox)| {
            let mut d = desc(if *busybox {
                &im.busybox_oci
            } else {
                &im.multilayer_oci
            });
            d["platform"] = p.clone();
            d
        })
        .collect();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": ms,
    }))
    .unwrap();
    let hex = hex::encode(Sha256::digest(&index));
    std::fs::write(layout.join("blobs/sha256").join(&hex), &index).unwrap();
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": format!("sha256:{hex}"), "size": index.len(),
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]});
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    layout
}

fn manifest_id(dir: &Path) -> String {
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    idx["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .replacen("sha256:", "sha256-", 1)
}

#[test]
fn multi_arch_picks_the_host_platform_or_names_what_exists() {
    use serde_json::json;
    let im = images();
    let env = RktEnv::new();
    let empty = store_state(&env);

    // No entry for this host (amd64): the error lists what the index has.
    let foreign = multiarch_layout(
        &env,
        "foreign",
        &[
            (
                json!({"os": "linux", "architecture": "arm64", "variant": "v8"}),
                true,
            ),
            (json!({"os": "linux", "architecture": "ppc64le"}), false),
            (json!({"os": "unknown", "architecture": "unknown"}), false),
        ],
    );
    let out = rkt(
        &env,
        &[],
        &[
            "--insecure-options=image",
            "fetch",
            &format!("oci:{}:latest", foreign.display()),
        ],
    );
    refused(
        &env,
        &out,
        &empty,
        &[
            "no image for this host's platform linux/amd64",
            "(it has: linux/arm64/v8, linux/ppc64le)",
        ],
    );

    // Through a registry too (skopeo copy --all pushes the whole index).
    let reg = Registry::start();
    let mut c = Command::new("skopeo");
    c.args([
        "--insecure-policy",
        "copy",
        "--all",
        "--dest-tls-verify=false",
    ])
    .arg(format!("oci:{}:latest", foreign.display()))
    .arg(reg.docker_ref("foreign:latest"));
    run_command(c, 300).assert_ok();
    let out = rkt(
        &env,
        &[],
        &[
            "--insecure-options=http,image",
            "fetch",
            &reg.docker_ref("foreign"),
        ],
    );
    refused(&env, &out, &empty, &["linux/arm64/v8, linux/ppc64le"]);

    // Variants: an amd64/v2 entry beats plain amd64 on a CPU that runs v2 code (x86-64-v2:
    // SSE4.2, POPCNT, SSSE3, CMPXCHG16B); a v4 entry is never picked unless the CPU has AVX-512.
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let flags: BTreeSet<&str> = cpu
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap()
        .split_whitespace()
        .collect();
    let v2 = ["sse4_2", "popcnt", "ssse3", "cx16"]
        .iter()
        .all(|f| flags.contains(f));
    let v4 = flags.contains("avx512f");
    let variants = multiarch_layout(
        &env,
        "variants",
        &[
            (json!({"os": "linux", "architecture": "amd64"}), false),
            (
                json!({"os": "linux", "architecture": "amd64", "variant": "v2"}),
                true,
            ),
        ],
    );
    let id = fetched(&rkt(
        &env,
        &[],
        &[
            "--insecure-options=image",
            "fetch",
            &format!("oci:{}:latest", variants.display()),
        ],
    ));
    let want = if v2 {
        &im.busybox_oci
    } else {
        &im.multilayer_oci
    };
    assert_eq!(id, manifest_id(want), "v2 CPU: {v2}");
    if !v4 {
        let only_v4 = multiarch_layout(
            &env,
            "v4",
            &[(
                json!({"os": "linux", "architecture": "amd64", "variant": "v4"}),
                true,
            )],
        );
        let before = store_state(&env);
        let out = rkt(
            &env,
            &[],
            &[
                "--insecure-options=image",
                "fetch",
                &format!("oci:{}:latest", only_v4.display()),
            ],
        );
        refused(&env, &out, &before, &["(it has: linux/amd64/v4)"]);
    }
}

/// An ACI named `name` (version `version`) holding the static inspect binary.
fn make_aci(dir: &Path, name: &str, version: &str) -> PathBuf {
    let root = dir.join(format!("aci-{}", version));
    std::fs::create_dir_all(root.join("rootfs")).unwrap();
    std::fs::copy(&images().inspect, root.join("rootfs/inspect")).unwrap();
    write_json(
        &root.join("manifest"),
        serde_json::json!({"acKind": "ImageManifest", "acVersion": "0.8.11", "name": name,
            "labels": [{"name": "version", "value": version}, {"name": "os", "value": "linux"},
                       {"name": "arch", "value": "amd64"}],
            "app": {"exec": ["/inspect"], "user": "0", "group": "0"}}),
    );
    let out = dir.join(format!("app-{version}.aci"));
    let mut c = Command::new("tar");
    c.arg("-C")
        .arg(&root)
        .arg("-czf")
        .arg(&out)
        .args(["manifest", "rootfs"]);
    run_command(c, 60).assert_ok();
    out
}

#[test]
fn aci_by_https_url_and_by_appc_discovery() {
    let env = RktEnv::new();
    let ca = TestCa::new(&env.scratch.join("ca"));
    let srv = HttpsServer::start(&ca, None);
    let name = format!("{}/app", srv.addr);
    let aci = make_aci(&env.scratch, &name, "v1.0");
    let aci_bytes = std::fs::read(&aci).unwrap();
    srv.serve("/files/app.aci", aci_bytes.clone());
    srv.serve("/files/app.aci.asc", "-----BEGIN PGP SIGNATURE-----\n");
    let url = srv.url("/files/app.aci");
    let empty = store_state(&env);
    let fetch = |what: &str| rkt(&env, &[], &["--insecure-options=image", "fetch", what]);

    // The test CA is not trusted yet.
    refused(
        &env,
        &fetch(&url),
        &empty,
        &["certificate", &format!("certs.d/{}/", srv.addr)],
    );
    let certs = env.local_config.join("certs.d").join(&srv.addr);
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(ca.cert(), certs.join("ca.crt")).unwrap();

    // By URL: the ACI and its signature beside it are fetched; the ID is the file's digest.
    let id = fetched(&fetch(&url));
    assert!(env
        .dir
        .join("cas/tree")
        .join(&id)
        .join("rootfs/inspect")
        .is_file());
    let paths = srv.paths();
    assert!(
        paths.contains(&"/files/app.aci.asc".to_string()),
        "{paths:?}"
    );
    let json = env.rkt(&["image", "list", "--format=json"]);
    json.assert_ok()
        .assert_stdout_contains(&format!("\"name\":\"{name}:v1.0\""));
    let before = store_state(&env);
    refused(
        &env,
        &fetch(&srv.url("/files/missing.aci")),
        &before,
        &["HTTP 404"],
    );
    // Plain HTTP needs --insecure-options=http.
    refused(
        &env,
        &fetch(&format!("http://{}/files/app.aci", srv.addr)),
        &before,
        &["--insecure-options=http"],
    );

    // By appc discovery: the name's page, then the template.
    let env = RktEnv::new();
    std::fs::create_dir_all(env.local_config.join("certs.d").join(&srv.addr)).unwrap();
    std::fs::copy(
        ca.cert(),
        env.local_config
            .join("certs.d")
            .join(&srv.addr)
            .join("ca.crt"),
    )
    .unwrap();
    let fetch = |what: &str| rkt(&env, &[], &["--insecure-options=image", "fetch", what]);
    srv.serve(
        "/app?ac-discovery=1",
        format!(
            "<html><head><meta name=\"ac-discovery\" content=\"{} https://{}/dl/{{name}}-{{version}}-{{os}}-{{arch}}.{{ext}}\"></head></html>",
            srv.addr, srv.addr
        ),
    );
    let base = format!("/dl/{name}-v1.0-linux-amd64");
    srv.serve(&format!("{base}.aci"), aci_bytes.clone());
    srv.serve(&format!("{base}.aci.asc"), "sig");
    let empty = store_state(&env);
    let id2 = fetched(&fetch(&format!("{name}:v1.0")));
    assert_eq!(id2, id, "same ACI, same ID");
    assert!(srv.paths().contains(&format!("{base}.aci.asc")));
    // --pull-policy=new with the name in the store: no request at all.
    let n = srv.paths().len();
    assert_eq!(
        fetched(&rkt(
            &env,
            &[],
            &[
                "--insecure-options=image",
                "fetch",
                "--pull-policy=new",
                &format!("{name}:v1.0")
            ]
        )),
        id
    );
    assert_eq!(srv.paths().len(), n);

    // Hostile and missing: an unknown version (404), a page without a matching meta tag, an ACI
    // that is not named what was discovered.
    let before = store_state(&env);
    refused(&env, &fetch(&format!("{name}:v9")), &before, &["HTTP 404"]);
    refused(
        &env,
        &fetch(&format!("{}/other:v1.0", srv.addr)),
        &before,
        &["found no ACI"],
    );
    let liar = make_aci(&env.scratch, "example.com/evil", "v2.0");
    srv.serve(
        &format!("/dl/{name}-v2.0-linux-amd64.aci"),
        std::fs::read(&liar).unwrap(),
    );
    refused(
        &env,
        &fetch(&format!("{name}:v2.0")),
        &before,
        &["is named \"example.com/evil\""],
    );
    assert_ne!(empty, before);
}

#[test]
fn aci_host_credentials_from_auth_d() {
    let env = RktEnv::new();
    let ca = TestCa::new(&env.scratch.join("ca"));
    // base64("alice:s3cret")
    let srv = HttpsServer::start(&ca, Some("Basic YWxpY2U6czNjcmV0".into()));
    let aci = make_aci(&env.scratch, "example.com/app", "v1.0");
    srv.serve("/app.aci", std::fs::read(&aci).unwrap());
    let certs = env.local_config.join("certs.d").join(&srv.addr);
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(ca.cert(), certs.join("ca.crt")).unwrap();
    let url = srv.url("/app.aci");
    let empty = store_state(&env);
    let fetch = || rkt(&env, &[], &["--insecure-options=image", "fetch", &url]);
    refused(&env, &fetch(), &empty, &["HTTP 401", "auth.d"]);
    let auth = |password: &str| {
        write_json(
            &env.local_config.join("auth.d/aci.json"),
            serde_json::json!({"rktKind": "auth", "rktVersion": "v1", "domains": ["127.0.0.1"],
                "type": "basic", "credentials": {"user": "alice", "password": password}}),
        )
    };
    auth("wrong");
    refused(
        &env,
        &fetch(),
        &empty,
        &["refused the credentials of user \"alice\""],
    );
    auth("s3cret");
    fetched(&fetch());
    let out = rkt(&env, &[], &["config"]);
    out.assert_ok().assert_stdout_contains("\"basic\"");
    assert!(!out.stdout.contains("s3cret"), "{out}");
}

#[test]
fn export_writes_an_aci_that_fetch_reads_back() {
    let im = images();
    let env = RktEnv::new();
    let id = fetched(&env.rkt(&[
        "--insecure-options=image",
        "fetch",
        &im.multilayer_oci_ref(),
    ]));
    let out = env.scratch.join("multi.aci");
    env.rkt(&["image", "export", &id, out.to_str().unwrap()])
        .assert_ok();

    // rkt's ACI: a tar with `manifest` and `rootfs/`.
    let mut c = Command::new("tar");
    c.arg("-tf").arg(&out);
    let list = run_command(c, 60);
    list.assert_ok();
    let names: Vec<&str> = list.stdout.lines().collect();
    assert_eq!(names[0], "manifest", "{list}");
    assert!(names[1..].iter().all(|n| n.starts_with("rootfs")), "{list}");
    let mut c = Command::new("tar");
    c.arg("-xOf").arg(&out).arg("manifest");
    let m = run_command(c, 60);
    let m: serde_json::Value = serde_json::from_str(&m.stdout).unwrap();
    assert_eq!(m["acKind"], "ImageManifest");

    // Fetched back: the same tree.
    let env2 = RktEnv::new();
    let back = fetched(&env2.rkt(&["--insecure-options=image", "fetch", out.to_str().unwrap()]));
    let td = |e: &RktEnv, id: &str| {
        std::fs::read_to_string(e.dir.join("cas/tree").join(id).join("tree_digest")).unwrap()
    };
    assert_eq!(td(&env2, &back), td(&env, &id));

    // An ACI in the store is written back byte for byte (same ID, signatures still apply).
    let aci_id = fetched(&env.rkt(&[
        "--insecure-options=image",
        "fetch",
        im.busybox_aci.to_str().unwrap(),
    ]));
    let out2 = env.scratch.join("busybox.aci");
    env.rkt(&["image", "export", &aci_id, out2.to_str().unwrap()])
        .assert_ok();
    assert_eq!(
        std::fs::read(&out2).unwrap(),
        std::fs::read(&im.busybox_aci).unwrap()
    );

    // An OCI archive only when asked; skopeo reads it.
    let oci = env.scratch.join("multi.tar");
    env.rkt(&[
        "image",
        "export",
        "--format=oci-archive",
        &id,
        oci.to_str().unwrap(),
    ])
    .assert_ok();
    let mut c = Command::new("skopeo");
    c.args(["--insecure-policy", "inspect"])
        .arg(format!("oci-archive:{}", oci.display()));
    run_command(c, 120).assert_ok();

    // Bad inputs: one line, nothing written.
    let bad = env.scratch.join("bad.aci");
    let before = store_state(&env);
    let o = env.rkt(&[
        "image",
        "export",
        "--format=tarball",
        &id,
        bad.to_str().unwrap(),
    ]);
    refused(&env, &o, &before, &["invalid export format \"tarball\""]);
    let o = env.rkt(&[
        "image",
        "export",
        "sha256-0123456789abcdef",
        bad.to_str().unwrap(),
    ]);
    refused(&env, &o, &before, &["not found"]);
    assert!(!bad.exists());
    let o = env.rkt(&["image", "export", &id, out.to_str().unwrap()]);
    refused(&env, &o, &before, &["--overwrite"]);
    let leftovers: Vec<_> = std::fs::read_dir(&env.scratch)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".rkt-export-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
