//! Many rkt processes fetching at once must leave one consistent store: 20 concurrent
//! `rkt fetch` of the same image, then concurrent fetches of different images.

use rkt_tests::{images, RktEnv};
use std::process::Stdio;

fn spawn_all(env: &RktEnv, refs: &[String]) -> Vec<(String, i32, String, String)> {
    let children: Vec<_> = refs
        .iter()
        .map(|r| {
            let mut c = env.command(&["fetch", r]);
            c.stdout(Stdio::piped()).stderr(Stdio::piped());
            (r.clone(), c.spawn().expect("spawning rkt"))
        })
        .collect();
    children
        .into_iter()
        .map(|(r, ch)| {
            let out = ch.wait_with_output().expect("waiting for rkt");
            (
                r,
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).trim().to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        })
        .collect()
}

fn assert_store_consistent(env: &RktEnv, expect_images: usize) {
    let store = rkt_store::Store::open(&env.dir).unwrap();
    assert!(store.index_ok().unwrap(), "SQLite integrity check failed");
    let imgs = store.list().unwrap();
    assert_eq!(imgs.len(), expect_images, "{imgs:?}");
    for i in &imgs {
        let t = store
            .rendered(&i.id)
            .expect("every fetched image is rendered");
        assert_eq!(
            rkt_store::tree_digest(&t.rootfs).unwrap(),
            t.tree_digest,
            "tree of {} damaged",
            i.id
        );
    }
    let tmp: Vec<_> = std::fs::read_dir(env.dir.join("cas/tmp"))
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "temp files left: {tmp:?}");
}

#[test]
fn twenty_concurrent_fetches_of_the_same_image() {
    let env = RktEnv::new();
    let r = images().busybox_oci_archive_ref();
    let results = spawn_all(&env, &vec![r; 20]);
    let first = &results[0].2;
    for (r, code, out, err) in &results {
        assert_eq!(*code, 0, "rkt fetch {r} failed: {err}");
        assert_eq!(out, first, "different IDs from concurrent fetches: {err}");
    }
    assert!(first.starts_with("sha256-"));
    assert_store_consistent(&env, 1);
    let list = env.rkt(&["image", "list", "--no-legend"]);
    list.assert_ok();
    assert_eq!(list.stdout.lines().count(), 1, "{list}");
}

#[test]
fn concurrent_fetches_of_different_images() {
    let env = RktEnv::new();
    let im = images();
    let mut refs = Vec::new();
    for _ in 0..4 {
        refs.push(im.busybox_oci_ref());
        refs.push(im.busybox_docker_archive_ref());
        refs.push(im.busybox_aci.display().to_string());
        refs.push(im.multilayer_oci_ref());
        refs.push(format!("oci:{}", im.dir.join("configured-oci").display()));
    }
    for (r, code, _out, err) in spawn_all(&env, &refs) {
        assert_eq!(code, 0, "rkt fetch {r} failed: {err}");
    }
    assert_store_consistent(&env, 5);
}

/// Waits until an entry whose name starts with `prefix` shows up in cas/tmp (or the child exits).
fn wait_for_tmp(env: &RktEnv, child: &mut rkt_tests::RktChild, prefix: &str) -> bool {
    let tmp = env.dir.join("cas/tmp");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::time::Instant::now() < deadline && child.is_running() {
        let hit = std::fs::read_dir(&tmp)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
            })
            .unwrap_or(false);
        if hit {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    false
}

#[test]
fn fetch_killed_mid_import_or_render_leaves_a_usable_store() {
    let big = rkt_tests::big_image();
    let r = format!("oci-archive:{}", big.display());
    for phase in ["blob-", "render-"] {
        let env = RktEnv::new();
        let mut child = env.spawn(&["fetch", &r]);
        assert!(
            wait_for_tmp(&env, &mut child, phase),
            "fetch never reached the {phase} phase"
        );
        child.signal(libc::SIGKILL);
        child.wait_timeout(60);
        // The interrupted image is not in the index (or, if the kill came after the index write,
        // it is complete); the index is intact.
        let store = rkt_store::Store::open(&env.dir).unwrap();
        assert!(store.index_ok().unwrap());
        for i in store.list().unwrap() {
            assert_eq!(
                phase, "render-",
                "image indexed before its blobs were all in: {i:?}"
            );
        }
        assert!(
            std::fs::read_dir(env.dir.join("cas/tree"))
                .unwrap()
                .next()
                .is_none(),
            "half tree published"
        );
        // gc clears the debris; a new fetch completes and verifies.
        let gc = env.rkt(&["image", "gc"]);
        gc.assert_ok();
        assert_eq!(
            std::fs::read_dir(env.dir.join("cas/tmp")).unwrap().count(),
            0,
            "{gc}"
        );
        let out = env.rkt(&["fetch", &r]);
        out.assert_ok();
        let id = out.stdout.trim();
        let t = store.rendered(id).expect("rendered");
        assert_eq!(rkt_store::tree_digest(&t.rootfs).unwrap(), t.tree_digest);
        assert_eq!(
            std::fs::read_dir(env.dir.join("cas/blobs/sha256"))
                .unwrap()
                .count(),
            5,
            "3 layers + config + manifest"
        );
    }
}
