//! RktEnv runs `$RKT_BIN --dir=<dir> ARGS…`: checked with a stand-in script so it needs no real rkt.
//! Alone in its own test binary because it sets RKT_BIN for the whole process.

use rkt_tests::RktEnv;
use std::os::unix::fs::PermissionsExt;

#[test]
fn rkt_gets_dir_then_args_stdin_and_exit_code() {
    let script_dir = tempfile::tempdir().unwrap();
    let fake = script_dir.path().join("rkt");
    std::fs::write(
        &fake,
        "#!/bin/sh\nfor a in \"$@\"; do echo \"ARG=$a\"; done\necho \"STDIN=$(cat)\"\necho sha512-0123abcd\necho oops >&2\nexit ${FAKE_EXIT:-3}\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::env::set_var("RKT_BIN", &fake);
    assert_eq!(rkt_tests::rkt_bin(), fake);

    let env = RktEnv::new();
    let out = env.rkt_with_stdin(b"input", &["fetch", "--insecure-options=image", "x y"]);
    out.assert_code(3);
    assert_eq!(
        out.values("ARG"),
        vec![
            format!("--dir={}", env.dir.display()),
            "fetch".into(),
            "--insecure-options=image".into(),
            "x y".into(),
        ]
    );
    assert_eq!(out.expect_value("STDIN"), "input");
    assert_eq!(out.stderr, "oops\n");
    // Without stdin the process reads EOF at once instead of hanging.
    assert_eq!(
        env.rkt_timeout(10, &["list"]).value("STDIN").as_deref(),
        Some("")
    );
    let r = std::panic::catch_unwind(|| env.fetch_id(&["img"]));
    assert!(r.is_err(), "fetch_id must panic on a non-zero exit");
    std::env::set_var("FAKE_EXIT", "0");
    assert_eq!(env.fetch_id(&["img"]), "sha512-0123abcd");

    // Private config dirs come right after --dir (and the unsigned test images' global
    // --insecure-options=image, see rkt_tests::insecure_image).
    let iso = env.rkt_isolated(&["trust"]);
    assert_eq!(
        iso.values("ARG")[..5],
        [
            format!("--dir={}", env.dir.display()),
            "--insecure-options=image".to_string(),
            format!("--local-config={}", env.local_config.display()),
            format!("--system-config={}", env.system_config.display()),
            "trust".to_string(),
        ]
    );
    assert!(env.local_config.is_dir() && env.system_config.is_dir());

    std::env::set_var("RKT_BIN", script_dir.path().join("missing"));
    let r = std::panic::catch_unwind(rkt_tests::rkt_bin);
    let msg = *r.unwrap_err().downcast::<String>().unwrap();
    assert!(msg.contains("build rkt first: cargo build -p rkt"), "{msg}");
}
