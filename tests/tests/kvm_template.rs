//! stage1 kvm VM templates (issue 12): the first pod boots cold and leaves a template, the next
//! pods are restored from it, each with its own identity. Three boots' worth of work, but only
//! the first is a kernel boot; the two restores take about a second each here.
//!
//! Uses its own template cache (`RKT_TEMPLATE_CACHE` in the test's scratch dir), so it never
//! depends on, or leaves behind, templates of the host's /var/cache/rkt/templates.

use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rkt_tests::{images, Flavor, RktEnv};

const SCRIPT: &str = "cat /proc/sys/kernel/random/boot_id; \
    head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s; hostname";

struct Pod {
    boot_id: String,
    urandom: String,
    clock: u64,
    hostname: String,
    how: String,
    secs: f64,
    host: (u64, u64),
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn run_pod(env: &RktEnv, cache: &Path, extra_env: &[(&str, &str)], hostname: &str) -> Pod {
    let img = images().busybox_oci_ref();
    let uuid_file = env.scratch.join(format!("uuid-{hostname}"));
    let mut c = env.command(&[
        "run",
        "--insecure-options=image",
        Flavor::Kvm.flag(),
        "--net=none",
        &format!("--uuid-file-save={}", uuid_file.display()),
        &format!("--hostname={hostname}"),
        &img,
        "--exec=/bin/sh",
        "--",
        "-c",
        SCRIPT,
    ]);
    c.env("RKT_TEMPLATE_CACHE", cache);
    for (k, v) in extra_env {
        c.env(k, v);
    }
    let t = Instant::now();
    let before = now();
    let out = c.output().expect("running rkt");
    let after = now();
    let secs = t.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "rkt run failed: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.len() >= 4, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let uuid = std::fs::read_to_string(&uuid_file).unwrap();
    let pod_dir = ["run", "exited-garbage", "garbage"]
        .iter()
        .map(|s| env.dir.join("pods").join(s).join(uuid.trim()))
        .find(|p| p.is_dir())
        .expect("pod directory");
    let how = std::fs::read_to_string(pod_dir.join("stage1/kvm-boot")).unwrap_or_default();
    Pod {
        boot_id: lines[0].trim().into(),
        urandom: lines[1].trim().into(),
        clock: lines[2].trim().parse().expect("date +%s"),
        hostname: lines[3].trim().into(),
        how: how.trim().into(),
        secs,
        host: (before, after),
    }
}

#[test]
fn pods_restored_from_one_template_each_have_their_own_identity() {
    let env = Flavor::Kvm.env();
    let cache = env.scratch.join("templates");
    let cold = run_pod(&env, &cache, &[], "cold");
    assert!(cold.how.starts_with("cold template "), "{}", cold.how);
    let key = cold.how.trim_start_matches("cold template ").to_string();
    let tdir = cache.join(&key);
    for f in ["state", "mem"] {
        let md = std::fs::metadata(tdir.join(f)).unwrap();
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        assert_eq!(md.permissions().mode() & 0o777, 0o400, "{f}");
        assert_eq!(md.uid(), 0, "{f}");
        if f == "mem" {
            assert!(md.blocks() * 512 < md.len() / 2, "mem is stored sparsely");
        }
    }
    let a = run_pod(&env, &cache, &[], "first");
    let b = run_pod(&env, &cache, &[], "second");
    for (p, name) in [(&a, "first"), (&b, "second")] {
        assert_eq!(p.how, format!("restored {key}"), "{name}");
        assert_eq!(p.hostname, name);
        assert!(
            p.clock + 1 >= p.host.0 && p.clock <= p.host.1 + 1,
            "{name}: guest clock {} vs host {:?}",
            p.clock,
            p.host
        );
    }
    assert_ne!(a.boot_id, b.boot_id);
    assert_ne!(a.boot_id, cold.boot_id);
    assert_ne!(a.urandom, b.urandom);
    assert!(cold.clock + 1 >= cold.host.0 && cold.clock <= cold.host.1 + 1);
    eprintln!(
        "rkt run to exit: cold {:.2} s (template made), restored {:.2} s and {:.2} s",
        cold.secs, a.secs, b.secs
    );
    // Forced cold boot: no template used.
    let c = run_pod(&env, &cache, &[("RKT_STAGE1_KVM_TEMPLATE", "0")], "forced");
    assert_eq!(c.how, "cold");
}
