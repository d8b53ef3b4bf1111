//! Image trust (docs/trust.md): `rkt trust`, signature verification on fetch and run (on by
//! default), `rkt image verify`. Keys and signatures are made here with Debian's gpg; OCI images
//! are signed with `skopeo copy --sign-by` into a lookaside configured in `<local-config>`.
//! ns only: verification happens in stage0, before any stage1 is involved.

use std::path::{Path, PathBuf};
use std::process::Command;

use rkt_tests::{
    images, require_root, run_command, HttpsServer, Registry, RktEnv, RktOutput, TestCa,
};

/// A throw-away gpg home with one signing key.
struct Gpg {
    home: PathBuf,
    fingerprint: String,
    /// The armored public key.
    public: PathBuf,
}

fn gpg(home: &Path, args: &[&str]) -> RktOutput {
    let mut c = Command::new("gpg");
    c.arg("--homedir")
        .arg(home)
        .args([
            "--batch",
            "--quiet",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ])
        .args(args);
    let out = run_command(c, 120);
    assert_eq!(out.code, 0, "gpg {args:?}\n{out}");
    out
}

impl Gpg {
    /// `algo`: gpg's `--quick-gen-key` algorithm (`rsa3072`, `ed25519`).
    fn new(dir: &Path, who: &str, algo: &str) -> Gpg {
        let home = dir.join(format!("gnupg-{who}"));
        std::fs::create_dir_all(&home).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
        let uid = format!("rkt trust test {who} <{who}@example.com>");
        gpg(&home, &["--quick-gen-key", &uid, algo, "sign", "never"]);
        let colons = gpg(&home, &["--with-colons", "--fingerprint"]).stdout;
        let fingerprint = colons
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.split(':').find(|f| f.len() >= 40))
            .expect("a fingerprint")
            .to_ascii_lowercase();
        let public = dir.join(format!("{who}.pub.asc"));
        gpg(
            &home,
            &[
                "--armor",
                "--output",
                public.to_str().unwrap(),
                "--export",
                &fingerprint,
            ],
        );
        Gpg {
            home,
            fingerprint,
            public,
        }
    }

    /// Writes `FILE.asc`, an armored detached signature of `file`.
    fn sign(&self, file: &Path) -> PathBuf {
        let asc = PathBuf::from(format!("{}.asc", file.display()));
        let _ = std::fs::remove_file(&asc);
        gpg(
            &self.home,
            &[
                "--armor",
                "--detach-sign",
                "--output",
                asc.to_str().unwrap(),
                file.to_str().unwrap(),
            ],
        );
        asc
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(&self.home)
            .args(["--kill", "all"])
            .status();
    }
}

/// An env whose rkt checks signatures, with private config dirs (its trust store).
fn verifying_env() -> RktEnv {
    let mut env = RktEnv::new();
    env.verify_images();
    env
}

fn image_list(env: &RktEnv) -> String {
    let out = env.rkt_isolated(&["image", "list", "--no-legend", "--full"]);
    out.assert_ok();
    out.stdout
}

fn blob_count(env: &RktEnv) -> usize {
    std::fs::read_dir(env.dir.join("cas/blobs/sha256"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// rkt's refusal: exit 254 and one line on stderr holding every `needles`.
#[track_caller]
fn assert_refused(out: &RktOutput, needles: &[&str]) {
    out.assert_code(254);
    let err = out.stderr.trim();
    assert_eq!(err.lines().count(), 1, "one line expected\n{out}");
    for n in needles {
        assert!(err.contains(n), "{n:?} missing\n{out}");
    }
}

/// A copy of the test ACI (`example.com/busybox`) in the scratch dir.
fn aci_copy(env: &RktEnv, name: &str) -> PathBuf {
    let p = env.scratch.join(name);
    std::fs::copy(&images().busybox_aci, &p).unwrap();
    p
}

fn trust(env: &RktEnv, args: &[&str]) -> RktOutput {
    let mut a = vec!["trust"];
    a.extend_from_slice(args);
    env.rkt_isolated(&a)
}

#[test]
fn signed_aci_runs_after_trust_prefix() {
    require_root();
    let env = verifying_env();
    let alice = Gpg::new(&env.scratch, "alice", "rsa3072");
    let aci = aci_copy(&env, "busybox.aci");
    alice.sign(&aci);
    let aci_s = aci.to_str().unwrap();

    // Nobody trusts alice yet: refused, nothing stored.
    let out = env.rkt_isolated(&["fetch", aci_s]);
    assert_refused(&out, &[aci_s, "unknown key", "--insecure-options=image"]);
    assert_eq!(image_list(&env), "");
    assert_eq!(blob_count(&env), 0);

    let out = trust(
        &env,
        &[
            "--prefix=example.com/busybox",
            "--skip-fingerprint-review",
            alice.public.to_str().unwrap(),
        ],
    );
    out.assert_ok();
    let stored = env
        .local_config
        .join("trustedkeys/prefix.d/example.com/busybox")
        .join(&alice.fingerprint);
    assert!(stored.is_file(), "{}\n{out}", stored.display());
    assert!(std::fs::read_to_string(&stored)
        .unwrap()
        .starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----"));

    let out = env.rkt_isolated(&[
        "run",
        "--stage1=ns",
        "--net=none",
        aci_s,
        "--exec=/inspect",
        "--",
        "--echo=signed-and-trusted",
    ]);
    out.assert_ok();
    out.assert_stdout_contains("signed-and-trusted");
    out.assert_stderr_contains("signature verified");
    out.assert_stderr_contains("alice@example.com");

    // rkt image verify re-checks the stored image against today's keys.
    let out = env.rkt_isolated(&["image", "verify", "example.com/busybox"]);
    out.assert_ok();
    out.assert_stdout_contains(&alice.fingerprint);
    let out = trust(&env, &["--remove", &alice.fingerprint]);
    out.assert_ok();
    assert!(!stored.exists());
    let out = env.rkt_isolated(&["image", "verify", "example.com/busybox"]);
    assert_refused(&out, &["example.com/busybox", "unknown key"]);
}

#[test]
fn tampered_untrusted_and_other_prefix_signatures_are_refused() {
    require_root();
    let env = verifying_env();
    let alice = Gpg::new(&env.scratch, "alice", "ed25519");
    let bob = Gpg::new(&env.scratch, "bob", "ed25519");
    let mallory = Gpg::new(&env.scratch, "mallory", "ed25519");
    for (prefix, k) in [("example.com/busybox", &alice), ("example.com/other", &bob)] {
        trust(
            &env,
            &[
                &format!("--prefix={prefix}"),
                "--skip-fingerprint-review",
                k.public.to_str().unwrap(),
            ],
        )
        .assert_ok();
    }

    // A byte flipped after signing (the gzip trailer: the manifest still reads).
    let flipped = aci_copy(&env, "flipped.aci");
    alice.sign(&flipped);
    let mut b = std::fs::read(&flipped).unwrap();
    let n = b.len();
    b[n - 1] ^= 0x01;
    std::fs::write(&flipped, &b).unwrap();
    // Signed by a key nobody trusts.
    let untrusted = aci_copy(&env, "untrusted.aci");
    mallory.sign(&untrusted);
    // Signed by bob, who is trusted for example.com/other only.
    let other_prefix = aci_copy(&env, "other-prefix.aci");
    bob.sign(&other_prefix);
    // No signature at all.
    let unsigned = aci_copy(&env, "unsigned.aci");

    let cases: [(&Path, &[&str]); 4] = [
        (&flipped, &["bad signature"]),
        (&untrusted, &["unknown key"]),
        (
            &other_prefix,
            &["not trusted for this prefix", "example.com/other"],
        ),
        (&unsigned, &["no signature", "unsigned.aci.asc"]),
    ];
    for (aci, why) in cases {
        let s = aci.to_str().unwrap();
        let mut needles = vec![s];
        needles.extend_from_slice(why);
        assert_refused(&env.rkt_isolated(&["fetch", s]), &needles);
        assert_refused(
            &env.rkt_isolated(&["run", "--stage1=ns", "--net=none", s, "--exec=/bin/true"]),
            &needles,
        );
        assert_eq!(image_list(&env), "", "{s}");
        assert_eq!(blob_count(&env), 0, "{s}");
        assert_eq!(
            std::fs::read_dir(env.dir.join("pods/run"))
                .map(|d| d.count())
                .unwrap_or(0),
            0
        );
    }

    // A --signature given explicitly wins over the one beside the file.
    let good = alice.sign(&aci_copy(&env, "good.aci"));
    let s = untrusted.to_str().unwrap();
    let sig = format!("--signature={}", good.display());
    env.rkt_isolated(&["fetch", &sig, s]).assert_ok();
    assert_eq!(image_list(&env).lines().count(), 1);

    // --insecure-options=image skips the check, as in rkt.
    let unsigned_s = unsigned.to_str().unwrap();
    env.rkt_isolated(&["fetch", "--insecure-options=image", unsigned_s])
        .assert_ok();

    // --trust-keys-from-https only adds keys for appc-discovered images: it skips nothing.
    let out = env.rkt_isolated(&["--trust-keys-from-https", "fetch", unsigned_s]);
    assert_refused(&out, &["no signature"]);
}

#[test]
fn trust_review_list_remove_and_root_keys() {
    require_root();
    let env = verifying_env();
    let alice = Gpg::new(&env.scratch, "alice", "ed25519");
    let key = alice.public.to_str().unwrap();

    // Review needs a terminal: with stdin a pipe, nothing is trusted.
    let out = env.rkt_with_stdin(
        b"yes\n",
        &[
            &env.config_flags()[0],
            &env.config_flags()[1],
            "trust",
            "--prefix=example.com",
            key,
        ],
    );
    assert_refused(
        &out,
        &["stdin is not a terminal", "--skip-fingerprint-review"],
    );
    assert!(!env.local_config.join("trustedkeys").exists());

    // Hostile prefixes never leave prefix.d.
    for bad in ["../../etc", "a//b", "https://example.com/x"] {
        let out = trust(&env, &["--prefix", bad, "--skip-fingerprint-review", key]);
        assert_refused(&out, &["prefix"]);
    }
    // A secret key is refused.
    let secret = env.scratch.join("secret.asc");
    gpg(
        &alice.home,
        &[
            "--armor",
            "--output",
            secret.to_str().unwrap(),
            "--export-secret-keys",
            &alice.fingerprint,
        ],
    );
    assert_refused(
        &trust(
            &env,
            &[
                "--root",
                "--skip-fingerprint-review",
                secret.to_str().unwrap(),
            ],
        ),
        &["secret key"],
    );

    // A root key (here in the system config, which rkt honours but never writes) covers every
    // image name.
    let root_d = env.system_config.join("trustedkeys/root.d");
    std::fs::create_dir_all(&root_d).unwrap();
    std::fs::copy(&alice.public, root_d.join(&alice.fingerprint)).unwrap();
    let list = trust(&env, &["--list"]);
    list.assert_ok();
    let row = list
        .stdout
        .lines()
        .find(|l| l.contains(&alice.fingerprint))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(row.starts_with("(root)") && row.contains("system"), "{row}");
    let aci = aci_copy(&env, "busybox.aci");
    alice.sign(&aci);
    env.rkt_isolated(&["fetch", aci.to_str().unwrap()])
        .assert_ok();
    assert_refused(
        &trust(&env, &["--remove", &alice.fingerprint[..16]]),
        &["system configuration"],
    );

    // rkt image verify of an image fetched without a check has nothing to check.
    let out = env.rkt_isolated(&[
        "fetch",
        "--insecure-options=image",
        &images().busybox_oci_ref(),
    ]);
    out.assert_ok();
    let id = out.stdout.trim().lines().last().unwrap().to_string();
    assert_refused(
        &env.rkt_isolated(&["image", "verify", &id]),
        &["no signature", "--insecure-options=image"],
    );
}

/// skopeo's policy and a registries.d whose lookaside is a directory under the test's scratch
/// dir, shared by skopeo (writing) and rkt (reading, from `<local-config>/registries.d`).
fn lookaside(env: &RktEnv, reg: &Registry) -> PathBuf {
    let sigstore = env.scratch.join("sigstore");
    std::fs::create_dir_all(&sigstore).unwrap();
    let dir = env.local_config.join("registries.d");
    std::fs::create_dir_all(&dir).unwrap();
    let host = reg
        .docker_ref("x")
        .trim_start_matches("docker://")
        .trim_end_matches("/x")
        .to_string();
    std::fs::write(
        dir.join("test.yaml"),
        format!(
            "# the test registry's signatures\ndocker:\n  \"{host}\":\n    lookaside: file://{s}\n    sigstore-staging: file://{s}\n",
            s = sigstore.display()
        ),
    )
    .unwrap();
    dir
}

fn skopeo_sign_push(env: &RktEnv, reg: &Registry, key: &Gpg, regd: &Path, repo_tag: &str) {
    let mut c = Command::new("skopeo");
    c.env("GNUPGHOME", &key.home)
        .arg("--insecure-policy")
        .arg("--registries.d")
        .arg(regd)
        .args([
            "copy",
            "--dest-tls-verify=false",
            "--sign-by",
            &key.fingerprint,
        ])
        .arg(images().busybox_oci_ref())
        .arg(reg.docker_ref(repo_tag));
    let out = run_command(c, 600);
    assert_eq!(
        out.code,
        0,
        "skopeo copy --sign-by\n{out}\n{}",
        env.dir.display()
    );
}

#[test]
fn oci_image_signed_by_skopeo_runs_after_trust() {
    require_root();
    let env = verifying_env();
    let reg = Registry::start();
    let alice = Gpg::new(&env.scratch, "alice", "rsa3072");
    let regd = lookaside(&env, &reg);
    skopeo_sign_push(&env, &reg, &alice, &regd, "signed/busybox:v1");
    reg.push(&images().busybox_oci_ref(), "unsigned/busybox:v1");
    let signed = reg.docker_ref("signed/busybox:v1");
    let name = signed
        .trim_start_matches("docker://")
        .trim_end_matches(":v1")
        .to_string();
    let written = std::fs::read_dir(env.scratch.join("sigstore/signed"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(written, 1, "skopeo wrote no lookaside signature");

    // Signed, but by a key not trusted yet.
    let run = |image: &str, insecure: &str| {
        env.rkt_isolated(&[
            "run",
            "--stage1=ns",
            "--net=none",
            &format!("--insecure-options={insecure}"),
            image,
            "--exec=/inspect",
            "--",
            "--echo=simple-signing-ok",
        ])
    };
    assert_refused(&run(&signed, "http"), &[&signed, "unknown key"]);
    assert_eq!(image_list(&env), "");

    trust(
        &env,
        &[
            &format!("--prefix={name}"),
            "--skip-fingerprint-review",
            alice.public.to_str().unwrap(),
        ],
    )
    .assert_ok();
    let out = run(&signed, "http");
    out.assert_ok();
    out.assert_stdout_contains("simple-signing-ok");
    out.assert_stderr_contains("signature verified");
    let out = env.rkt_isolated(&["image", "verify", &format!("{name}:v1")]);
    out.assert_ok();

    // The same manifest under another tag: the signature names v1, so it is not this image's.
    let other_tag = reg.docker_ref("signed/busybox:v2");
    reg.push(&images().busybox_oci_ref(), "signed/busybox:v2");
    assert_refused(
        &env.rkt_isolated(&["fetch", "--insecure-options=http", &other_tag]),
        &[&other_tag, "signature is for another image", ":v1"],
    );

    // Unsigned: refused unless --insecure-options=image.
    let before = image_list(&env);
    let unsigned = reg.docker_ref("unsigned/busybox:v1");
    let out = run(&unsigned, "http");
    assert_refused(&out, &[&unsigned, "no signature"]);
    assert_eq!(image_list(&env), before);
    let out = run(&unsigned, "http,image");
    out.assert_ok();
    out.assert_stdout_contains("simple-signing-ok");
}

/// Puts the test CA in `<local-config>/certs.d/ADDR/`, as for a registry.
fn trust_ca(env: &RktEnv, ca: &TestCa, srv: &HttpsServer) {
    let certs = env.local_config.join("certs.d").join(&srv.addr);
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(ca.cert(), certs.join("ca.crt")).unwrap();
}

fn trusted_files(env: &RktEnv) -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                walk(&e.path(), out);
            } else {
                out.push(e.path());
            }
        }
    }
    let mut v = Vec::new();
    walk(&env.local_config.join("trustedkeys"), &mut v);
    v
}

#[test]
fn trust_keys_from_https_urls_and_appc_discovery() {
    let env = verifying_env();
    let ca = TestCa::new(&env.scratch.join("ca"));
    let srv = HttpsServer::start(&ca, None);
    let alice = Gpg::new(&env.scratch, "alice", "ed25519");
    srv.serve("/keys/alice.asc", std::fs::read(&alice.public).unwrap());
    let prefix = format!("--prefix={}/app", srv.addr);
    let key_url = srv.url("/keys/alice.asc");
    let stored = env
        .local_config
        .join("trustedkeys/prefix.d")
        .join(&srv.addr)
        .join("app")
        .join(&alice.fingerprint);

    // The test CA is not trusted yet: one line naming certs.d, nothing written.
    let out = trust(&env, &[&prefix, "--skip-fingerprint-review", &key_url]);
    assert_refused(&out, &["certificate", &format!("certs.d/{}/", srv.addr)]);
    assert!(trusted_files(&env).is_empty());
    // --insecure-options=tls is honoured for key URLs.
    let out = env.rkt_isolated(&[
        "--insecure-options=tls",
        "trust",
        &prefix,
        "--skip-fingerprint-review",
        &key_url,
    ]);
    out.assert_ok();
    assert!(stored.is_file(), "{out}");
    std::fs::remove_dir_all(env.local_config.join("trustedkeys")).unwrap();

    // With the CA in certs.d: the key URL is trusted for the prefix.
    trust_ca(&env, &ca, &srv);
    let out = trust(&env, &[&prefix, "--skip-fingerprint-review", &key_url]);
    out.assert_ok();
    assert!(stored.is_file(), "{out}");
    std::fs::remove_dir_all(env.local_config.join("trustedkeys")).unwrap();

    // No KEY: appc meta discovery of the prefix (its parent's page here) names the key URL.
    srv.serve(
        "/?ac-discovery=1",
        format!(
            "<html><head><meta name=\"ac-discovery-pubkeys\" content=\"{}/other {}\">\n<meta name=\"ac-discovery-pubkeys\" content=\"{} {key_url}\"></head></html>",
            srv.addr,
            srv.url("/keys/wrong.asc"),
            srv.addr
        ),
    );
    let out = trust(&env, &[&prefix, "--skip-fingerprint-review"]);
    out.assert_ok();
    assert!(stored.is_file(), "{out}");
    let paths = srv.paths();
    assert!(
        paths.contains(&"/app?ac-discovery=1".to_string()),
        "{paths:?}"
    );
    assert!(!paths.contains(&"/keys/wrong.asc".to_string()), "{paths:?}");
    std::fs::remove_dir_all(env.local_config.join("trustedkeys")).unwrap();

    // Hostile key URLs: one line, exit 254, nothing under trustedkeys/.
    let secret = env.scratch.join("alice.sec.asc");
    gpg(
        &alice.home,
        &[
            "--armor",
            "--output",
            secret.to_str().unwrap(),
            "--export-secret-keys",
            &alice.fingerprint,
        ],
    );
    srv.serve("/keys/secret.asc", std::fs::read(&secret).unwrap());
    srv.serve("/keys/huge.asc", vec![b'A'; 3 << 20]);
    srv.serve("/keys/page.html", "<html>not a key</html>");
    srv.redirect(
        "/keys/downgrade.asc",
        &format!("http://{}/keys/alice.asc", srv.addr),
    );
    let plain = format!("http://{}/keys/alice.asc", srv.addr);
    for (path, why) in [
        ("/keys/secret.asc", "secret key"),
        ("/keys/huge.asc", "larger than"),
        ("/keys/page.html", "OpenPGP"),
        ("/keys/downgrade.asc", "plain HTTP"),
        ("/keys/missing.asc", "HTTP 404"),
    ] {
        let out = trust(
            &env,
            &[&prefix, "--skip-fingerprint-review", &srv.url(path)],
        );
        assert_refused(&out, &[why]);
        assert!(trusted_files(&env).is_empty(), "{path}");
    }
    let out = trust(&env, &[&prefix, "--skip-fingerprint-review", &plain]);
    assert_refused(&out, &["plain HTTP", "--insecure-allow-http"]);
    assert!(trusted_files(&env).is_empty());
    // Discovery that finds nothing for the prefix says so.
    let out = trust(
        &env,
        &[
            &format!("--prefix={}/app", "localhost:1"),
            "--skip-fingerprint-review",
        ],
    );
    out.assert_code(254);
    assert!(trusted_files(&env).is_empty());
}

#[test]
fn lookaside_over_https_uses_the_certs_d_ca() {
    require_root();
    let env = verifying_env();
    let reg = Registry::start();
    let alice = Gpg::new(&env.scratch, "alice", "ed25519");
    let regd = lookaside(&env, &reg);
    skopeo_sign_push(&env, &reg, &alice, &regd, "signed/busybox:v1");
    let signed = reg.docker_ref("signed/busybox:v1");
    let name = signed
        .trim_start_matches("docker://")
        .trim_end_matches(":v1")
        .to_string();
    trust(
        &env,
        &[
            &format!("--prefix={name}"),
            "--skip-fingerprint-review",
            alice.public.to_str().unwrap(),
        ],
    )
    .assert_ok();

    // The signatures skopeo wrote, served over https by a server whose CA only certs.d knows.
    let ca = TestCa::new(&env.scratch.join("ca"));
    let srv = HttpsServer::start(&ca, None);
    let sigstore = env.scratch.join("sigstore");
    let mut stack = vec![sigstore.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                let rel = e
                    .path()
                    .strip_prefix(&sigstore)
                    .unwrap()
                    .display()
                    .to_string();
                srv.serve(&format!("/sigs/{rel}"), std::fs::read(e.path()).unwrap());
            }
        }
    }
    std::fs::remove_dir_all(&sigstore).unwrap();
    let host = name.split('/').next().unwrap();
    std::fs::write(
        regd.join("test.yaml"),
        format!(
            "docker:\n  \"{host}\":\n    lookaside: {}\n",
            srv.url("/sigs")
        ),
    )
    .unwrap();

    let fetch = || env.rkt_isolated(&["fetch", "--insecure-options=http", &signed]);
    assert_refused(
        &fetch(),
        &[&signed, "certificate", &format!("certs.d/{}/", srv.addr)],
    );
    assert_eq!(image_list(&env), "");
    trust_ca(&env, &ca, &srv);
    let out = fetch();
    out.assert_ok();
    out.assert_stderr_contains("signature verified");
    assert!(
        srv.paths().iter().any(|p| p.ends_with("/signature-1")),
        "{:?}",
        srv.paths()
    );
}

/// An ACI named `name` (version `version`) holding the static inspect binary, in `dir`.
fn make_aci(dir: &Path, name: &str, version: &str) -> PathBuf {
    let root = dir.join(format!("aci-{version}"));
    std::fs::create_dir_all(root.join("rootfs")).unwrap();
    std::fs::copy(&images().inspect, root.join("rootfs/inspect")).unwrap();
    std::fs::write(
        root.join("manifest"),
        serde_json::json!({"acKind": "ImageManifest", "acVersion": "0.8.11", "name": name,
            "labels": [{"name": "version", "value": version}, {"name": "os", "value": "linux"},
                       {"name": "arch", "value": "amd64"}],
            "app": {"exec": ["/inspect"], "user": "0", "group": "0"}})
        .to_string(),
    )
    .unwrap();
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
fn trust_keys_from_https_trusts_the_discovered_keys() {
    let env = verifying_env();
    let ca = TestCa::new(&env.scratch.join("ca"));
    let srv = HttpsServer::start(&ca, None);
    trust_ca(&env, &ca, &srv);
    let alice = Gpg::new(&env.scratch, "alice", "ed25519");
    srv.serve("/keys/alice.asc", std::fs::read(&alice.public).unwrap());
    let page = |prefix: &str, key: &str| {
        format!(
            "<html><head><meta name=\"ac-discovery\" content=\"{a} https://{a}/dl/{{name}}-{{version}}.{{ext}}\">\n<meta name=\"ac-discovery-pubkeys\" content=\"{a}/{prefix} {}\"></head></html>",
            srv.url(key),
            a = srv.addr
        )
    };
    let name = format!("{}/app", srv.addr);
    let aci = make_aci(&env.scratch, &name, "v1.0");
    let asc = alice.sign(&aci);
    srv.serve("/app?ac-discovery=1", page("app", "/keys/alice.asc"));
    srv.serve(
        &format!("/dl/{name}-v1.0.aci"),
        std::fs::read(&aci).unwrap(),
    );
    srv.serve(
        &format!("/dl/{name}-v1.0.aci.asc"),
        std::fs::read(&asc).unwrap(),
    );
    let image = format!("{name}:v1.0");

    // Without the flag: the key is unknown, nothing stored, nothing trusted.
    assert_refused(&env.rkt_isolated(&["fetch", &image]), &["unknown key"]);
    assert_eq!(image_list(&env), "");
    assert!(trusted_files(&env).is_empty());
    // --insecure-options=tls cannot vouch for a key.
    let out = env.rkt_isolated(&[
        "--trust-keys-from-https",
        "--insecure-options=tls",
        "fetch",
        &image,
    ]);
    assert_refused(&out, &["--trust-keys-from-https", "--insecure-options=tls"]);
    assert!(trusted_files(&env).is_empty());

    // With it: the discovered key is trusted for the name (fingerprint shown), then verifies.
    let out = env.rkt_isolated(&["--trust-keys-from-https", "fetch", &image]);
    out.assert_ok();
    out.assert_stderr_contains("gpg key fingerprint is:");
    out.assert_stderr_contains("without fingerprint review");
    out.assert_stderr_contains("signature verified");
    let stored = env
        .local_config
        .join("trustedkeys/prefix.d")
        .join(&srv.addr)
        .join("app")
        .join(&alice.fingerprint);
    assert!(stored.is_file(), "{out}");
    assert_eq!(image_list(&env).lines().count(), 1);
    // The prefix has a key now: not fetched again.
    let key_gets = || {
        srv.paths()
            .iter()
            .filter(|p| p.as_str() == "/keys/alice.asc")
            .count()
    };
    let n = key_gets();
    env.rkt_isolated(&["--trust-keys-from-https", "fetch", &image])
        .assert_ok();
    assert_eq!(key_gets(), n);

    // Hostile: the discovered key URL serves a secret key, or redirects to http.
    let secret = env.scratch.join("alice.sec.asc");
    gpg(
        &alice.home,
        &[
            "--armor",
            "--output",
            secret.to_str().unwrap(),
            "--export-secret-keys",
            &alice.fingerprint,
        ],
    );
    srv.serve("/keys/secret.asc", std::fs::read(&secret).unwrap());
    srv.redirect(
        "/keys/downgrade.asc",
        &format!("http://{}/keys/alice.asc", srv.addr),
    );
    for (app, key, why) in [
        ("evil", "/keys/secret.asc", "secret key"),
        ("down", "/keys/downgrade.asc", "plain HTTP"),
    ] {
        srv.serve(&format!("/{app}?ac-discovery=1"), page(app, key));
        srv.serve(
            &format!("/dl/{}/{app}-v1.0.aci", srv.addr),
            std::fs::read(&aci).unwrap(),
        );
        let out = env.rkt_isolated(&[
            "--trust-keys-from-https",
            "fetch",
            &format!("{}/{app}:v1.0", srv.addr),
        ]);
        assert_refused(&out, &[why]);
        assert!(!env
            .local_config
            .join("trustedkeys/prefix.d")
            .join(&srv.addr)
            .join(app)
            .exists());
    }
    assert_eq!(image_list(&env).lines().count(), 1);
}
