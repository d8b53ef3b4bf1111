//! `rkt api-service`: rkt's v1alpha gRPC API, called through a client generated from the same
//! proto (rkt-api's). One service on a throw-away `--dir` answers for a prepared pod and an `ns`
//! pod that ran and exited, an image fetched before, the events of the pod's life and its logs;
//! then the hostile cases (huge and malformed filters, a caller that is not root) and socket
//! activation as a systemd `.socket` unit does it.

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rkt_api::v1alpha::{self as api, public_api_client::PublicApiClient};
use rkt_tests::{images, require_root, RktChild, RktEnv};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Waits until something accepts on `addr`.
fn wait_listening(addr: &str, child: &mut RktChild) {
    let start = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            child.is_running(),
            "api-service exited\n{}",
            child.output_so_far()
        );
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "api-service never listened on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_service(env: &RktEnv) -> (RktChild, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = env.spawn(&["api-service", &format!("--listen={addr}")]);
    wait_listening(&addr, &mut child);
    (child, addr)
}

async fn client(addr: &str) -> PublicApiClient<Channel> {
    let ch = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    PublicApiClient::new(ch)
}

fn filter_pods(f: api::PodFilter, detail: bool) -> api::ListPodsRequest {
    api::ListPodsRequest {
        filters: vec![f],
        detail,
    }
}

fn ids(pods: &[api::Pod]) -> Vec<&str> {
    let mut v: Vec<&str> = pods.iter().map(|p| p.id.as_str()).collect();
    v.sort();
    v
}

/// Reads events until `want` returns true for the ones seen so far, or 60 s pass.
async fn events_until(
    stream: &mut tonic::Streaming<api::ListenEventsResponse>,
    want: impl Fn(&[api::Event]) -> bool,
) -> Vec<api::Event> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while !want(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.message()).await {
            Ok(Ok(Some(r))) => seen.extend(r.events),
            other => panic!("event stream ended or timed out ({other:?}); seen: {seen:#?}"),
        }
    }
    seen
}

fn has(ev: &[api::Event], t: api::EventType, id: &str, from: &str) -> bool {
    ev.iter()
        .any(|e| e.r#type == t as i32 && e.id == id && e.from == from)
}

#[test]
fn api_service_serves_pods_images_events_and_logs() {
    require_root();
    let env = RktEnv::new();
    let img = images().busybox_oci_ref();
    let image_id = env.fetch_id(&[&img]);
    let prepared = env.rkt(&[
        "prepare",
        "--stage1=ns",
        "--quiet",
        &img,
        "--name=waiting",
        "--exec=/inspect",
    ]);
    prepared.assert_ok();
    let prepared = prepared.stdout.trim().to_string();
    let (_service, addr) = start_service(&env);
    rt().block_on(async {
        let mut c = client(&addr).await;

        let info = c
            .get_info(api::GetInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        let info = info.info.unwrap();
        assert_eq!(info.api_version, "1.0.0-alpha");
        assert_eq!(info.appc_version, "0.8.11");
        assert!(info.rkt_version.starts_with("1."), "{info:?}");
        assert_eq!(
            info.global_flags.unwrap().dir,
            env.dir.display().to_string()
        );

        // Images: list (without manifests unless detail), inspect, rkt's filters.
        let list = c
            .list_images(api::ListImagesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .images;
        assert_eq!(list.len(), 1, "{list:?}");
        let im = &list[0];
        assert_eq!(im.id, image_id);
        assert!(im.manifest.is_empty(), "no manifest without detail");
        assert_eq!(im.version, "latest");
        assert!(im.size > 0 && im.import_timestamp > 0, "{im:?}");
        assert_eq!(
            im.base_format.as_ref().unwrap().r#type,
            api::ImageType::Appc as i32
        );
        let cat = env.rkt(&["image", "cat-manifest", &image_id]);
        cat.assert_ok();
        let inspected = c
            .inspect_image(api::InspectImageRequest {
                id: image_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .image
            .unwrap();
        assert_eq!(inspected.name, im.name);
        let printed: serde_json::Value = serde_json::from_str(&cat.stdout).unwrap();
        let served: serde_json::Value = serde_json::from_slice(&inspected.manifest).unwrap();
        assert_eq!(
            served, printed,
            "InspectImage's manifest is `rkt image cat-manifest`'s"
        );
        assert!(
            inspected
                .annotations
                .iter()
                .any(|a| a.key == "org.example.test" && a.value == "busybox"),
            "{inspected:?}"
        );
        assert!(inspected
            .labels
            .iter()
            .any(|l| l.key == "version" && l.value == "latest"));
        let base = im.name.rsplit('/').next().unwrap().to_string();
        for (f, n) in [
            (
                api::ImageFilter {
                    base_names: vec![base.clone()],
                    ..Default::default()
                },
                1,
            ),
            (
                api::ImageFilter {
                    keywords: vec!["no-such-image".into()],
                    ..Default::default()
                },
                0,
            ),
            (
                api::ImageFilter {
                    imported_after: im.import_timestamp,
                    ..Default::default()
                },
                0,
            ),
            (
                api::ImageFilter {
                    full_names: vec![im.name.clone()],
                    ids: vec![image_id.clone()],
                    ..Default::default()
                },
                1,
            ),
        ] {
            let got = c
                .list_images(api::ListImagesRequest {
                    filters: vec![f.clone()],
                    detail: true,
                })
                .await
                .unwrap()
                .into_inner()
                .images;
            assert_eq!(got.len(), n, "filter {f:?}: {got:?}");
            if n == 1 {
                assert_eq!(
                    got[0].manifest, inspected.manifest,
                    "detail brings the manifest"
                );
            }
        }
        let missing = c
            .inspect_image(api::InspectImageRequest {
                id: "sha256-0123456789abcdef".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

        // The prepared pod.
        let p = c
            .inspect_pod(api::InspectPodRequest {
                id: prepared.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .pod
            .unwrap();
        assert_eq!(p.state, api::PodState::Prepared as i32);
        assert_eq!(p.pid, -1);
        assert_eq!(p.apps.len(), 1);
        assert_eq!(p.apps[0].name, "waiting");
        assert_eq!(p.apps[0].state, api::AppState::Undefined as i32);
        assert_eq!(p.apps[0].image.as_ref().unwrap().id, image_id);
        assert_eq!(p.apps[0].image.as_ref().unwrap().name, im.name);
        assert!(p.created_at > 0 && p.started_at == 0, "{p:?}");
        let cat = env.rkt(&["cat-manifest", &prepared]);
        let on_disk: serde_json::Value = serde_json::from_slice(&p.manifest).unwrap();
        let printed: serde_json::Value = serde_json::from_str(&cat.stdout).unwrap();
        assert_eq!(on_disk, printed, "InspectPod's manifest is the pod's");

        // Events of a pod that starts, runs and exits while the stream is open.
        let mut events = c
            .listen_events(api::ListenEventsRequest { filter: None })
            .await
            .unwrap()
            .into_inner();
        let uuid_file = env.scratch.join("uuid");
        let mut run = env.spawn(&[
            "run",
            "--stage1=ns",
            "--net=none",
            &format!("--uuid-file-save={}", uuid_file.display()),
            &img,
            "--name=runner",
            "--exec=/inspect",
            "--",
            "--echo=hello from the pod",
            "--sleep=3",
            "--exit-code=3",
        ]);
        let start = Instant::now();
        let uuid = loop {
            if let Ok(u) = std::fs::read_to_string(&uuid_file) {
                if !u.trim().is_empty() {
                    break u.trim().to_string();
                }
            }
            assert!(start.elapsed() < Duration::from_secs(60), "no uuid file");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // While it runs: state, pid, the app running, its cgroup.
        let running = loop {
            let p = c
                .inspect_pod(api::InspectPodRequest { id: uuid.clone() })
                .await
                .unwrap()
                .into_inner()
                .pod
                .unwrap();
            // The stage1 writes its pid just after the pod starts running.
            if p.state == api::PodState::Running as i32 && p.pid > 0 {
                break p;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "pod never running: {p:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(running.pid > 0, "{running:?}");
        assert_eq!(running.apps[0].name, "runner");
        assert_eq!(running.apps[0].state, api::AppState::Running as i32);
        assert!(!running.cgroup.is_empty(), "{running:?}");
        assert!(running.started_at >= running.created_at, "{running:?}");
        // Followed logs: the stream stays open while the pod runs and ends after it exits.
        let mut follow = c
            .get_logs(api::GetLogsRequest {
                pod_id: uuid.clone(),
                follow: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let seen = events_until(&mut events, |ev| {
            has(ev, api::EventType::PodExited, &uuid, &format!("rkt-{uuid}"))
        })
        .await;
        assert!(
            has(
                &seen,
                api::EventType::PodStarted,
                &uuid,
                &format!("rkt-{uuid}")
            ),
            "{seen:#?}"
        );
        assert!(
            has(&seen, api::EventType::AppStarted, &uuid, "runner"),
            "{seen:#?}"
        );
        let exited = seen
            .iter()
            .find(|e| e.r#type == api::EventType::AppExited as i32 && e.id == uuid)
            .unwrap_or_else(|| panic!("no APP_EXITED: {seen:#?}"));
        assert_eq!(exited.from, "runner");
        assert!(
            exited
                .data
                .iter()
                .any(|kv| kv.key == "exit_code" && kv.value == "3"),
            "{exited:?}"
        );
        run.wait_timeout(60).assert_code(3);
        let mut followed = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(30), follow.message()).await {
                Ok(Ok(Some(r))) => followed.extend(r.lines),
                Ok(Ok(None)) => break,
                other => panic!("following the logs: {other:?}; got {followed:?}"),
            }
        }
        assert!(
            followed
                .iter()
                .any(|l| l.ends_with(" stdout F hello from the pod")),
            "{followed:?}"
        );

        let p = c
            .inspect_pod(api::InspectPodRequest { id: uuid.clone() })
            .await
            .unwrap()
            .into_inner()
            .pod
            .unwrap();
        assert_eq!(p.state, api::PodState::Exited as i32);
        assert_eq!(p.apps[0].state, api::AppState::Exited as i32);
        assert_eq!(p.apps[0].exit_code, 3);
        assert!(p.networks.is_empty() && p.cgroup.is_empty(), "{p:?}");

        // ListPods and rkt's PodFilter (conditions ANDed, filters ORed; manifests with detail).
        let all = c
            .list_pods(api::ListPodsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .pods;
        let mut both = vec![prepared.as_str(), uuid.as_str()];
        both.sort();
        assert_eq!(ids(&all), both);
        assert!(all.iter().all(|p| p.manifest.is_empty()));
        let by_state = c
            .list_pods(filter_pods(
                api::PodFilter {
                    states: vec![api::PodState::Prepared as i32],
                    ..Default::default()
                },
                true,
            ))
            .await
            .unwrap()
            .into_inner()
            .pods;
        assert_eq!(ids(&by_state), vec![prepared.as_str()]);
        assert!(!by_state[0].manifest.is_empty());
        let by_app = c
            .list_pods(filter_pods(
                api::PodFilter {
                    app_names: vec!["runner".into()],
                    image_ids: vec![image_id.clone()],
                    ..Default::default()
                },
                false,
            ))
            .await
            .unwrap()
            .into_inner()
            .pods;
        assert_eq!(ids(&by_app), vec![uuid.as_str()]);
        let none = c
            .list_pods(filter_pods(
                api::PodFilter {
                    app_names: vec!["runner".into()],
                    states: vec![api::PodState::Prepared as i32],
                    ..Default::default()
                },
                false,
            ))
            .await
            .unwrap()
            .into_inner()
            .pods;
        assert!(none.is_empty(), "{none:?}");
        let either = c
            .list_pods(api::ListPodsRequest {
                filters: vec![
                    api::PodFilter {
                        ids: vec![uuid.clone()],
                        ..Default::default()
                    },
                    api::PodFilter {
                        app_names: vec!["waiting".into()],
                        ..Default::default()
                    },
                ],
                detail: false,
            })
            .await
            .unwrap()
            .into_inner()
            .pods;
        assert_eq!(ids(&either), both);

        // Logs: the app's line, in the CRI format the pod keeps.
        let mut logs = c
            .get_logs(api::GetLogsRequest {
                pod_id: uuid.clone(),
                app_name: "runner".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut lines = Vec::new();
        while let Some(r) = logs.message().await.unwrap() {
            lines.extend(r.lines);
        }
        assert!(
            lines
                .iter()
                .any(|l| l.ends_with(" stdout F hello from the pod")),
            "{lines:?}"
        );
        let no_app = c
            .get_logs(api::GetLogsRequest {
                pod_id: uuid.clone(),
                app_name: "nosuchapp".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(no_app.code(), Code::NotFound);
        let not_run = c
            .get_logs(api::GetLogsRequest {
                pod_id: prepared.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(not_run.code(), Code::FailedPrecondition);

        // Hostile requests: INVALID_ARGUMENT, and the service keeps answering.
        let huge = c
            .list_pods(filter_pods(
                api::PodFilter {
                    app_names: vec!["a".repeat(200_000)],
                    ..Default::default()
                },
                false,
            ))
            .await
            .unwrap_err();
        assert_eq!(huge.code(), Code::InvalidArgument, "{huge:?}");
        let bad_state = c
            .list_pods(filter_pods(
                api::PodFilter {
                    states: vec![4242],
                    ..Default::default()
                },
                false,
            ))
            .await
            .unwrap_err();
        assert_eq!(bad_state.code(), Code::InvalidArgument, "{bad_state:?}");
        for id in ["../../../etc", "", &"f".repeat(100_000)] {
            let e = c
                .inspect_pod(api::InspectPodRequest { id: id.to_string() })
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        }
        let e = c
            .inspect_image(api::InspectImageRequest {
                id: "sha256-../../x".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let e = c
            .list_images(api::ListImagesRequest {
                filters: vec![
                    api::ImageFilter {
                        imported_before: -1,
                        ..Default::default()
                    };
                    1
                ],
                detail: false,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        // Larger than the service takes at all (1 MiB): refused before it is decoded.
        let e = c
            .list_pods(filter_pods(
                api::PodFilter {
                    app_names: vec!["a".repeat(2 << 20)],
                    ..Default::default()
                },
                false,
            ))
            .await
            .unwrap_err();
        assert!(
            matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted),
            "{e:?}"
        );
        let gone = c
            .inspect_pod(api::InspectPodRequest {
                id: "0b0c6b8e-6b0c-4d58-9f1d-2c4f3f6f2a11".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(gone.code(), Code::NotFound);
        c.get_info(api::GetInfoRequest {}).await.unwrap();
    });

    // Read-only: nothing moved.
    assert!(env.dir.join("pods/prepared").join(&prepared).is_dir());

    // A caller that is not root (nor the data dir's owner) reads nothing: the same test binary,
    // run as nobody, is the client.
    let (_keep, exe) = exe_for_nobody();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&exe)
        .args([
            "--exact",
            "probe_as_another_user",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RKT_API_PROBE", format!("{addr} {prepared}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("PROBE uid=65534 info=ok pods=PermissionDenied pod=PermissionDenied images=PermissionDenied events=PermissionDenied logs=PermissionDenied"), "{text}");
}

/// This test binary where uid 65534 can run it: the checkout may sit below a directory only root
/// may enter (a clone in a `mktemp -d` directory).
/// GetLogs serves an app added to a sandbox (`rkt app add|start`) as it serves `rkt run`'s apps,
/// while the pod runs and after it exited.
#[test]
fn get_logs_serves_an_added_apps_output() {
    require_root();
    let env = RktEnv::new();
    let uuid_file = env.scratch.join("uuid");
    let uf = format!("--uuid-file-save={}", uuid_file.display());
    let mut sandbox = env.spawn(&["app", "sandbox", "--stage1=ns", "--net=none", &uf]);
    let start = Instant::now();
    while !uuid_file.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{}",
            sandbox.output_so_far()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let uuid = std::fs::read_to_string(&uuid_file).unwrap();
    env.rkt(&["status", "--wait-ready=60s", &uuid]).assert_ok();
    let (_service, addr) = start_service(&env);
    // Following every app of the still empty sandbox: the app added later is taken in.
    let follower = {
        let (addr, uuid) = (addr.clone(), uuid.clone());
        std::thread::spawn(move || {
            rt().block_on(async {
                let mut s = client(&addr)
                    .await
                    .get_logs(api::GetLogsRequest {
                        pod_id: uuid,
                        follow: true,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let mut lines = Vec::new();
                while let Some(r) = s.message().await.unwrap() {
                    lines.extend(r.lines);
                }
                lines
            })
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    env.rkt(&[
        "app",
        "add",
        &uuid,
        &images().busybox_oci_ref(),
        "--name=added",
        "--exec=/bin/sh",
        "--",
        "-c",
        "echo added says hi; echo added err >&2",
    ])
    .assert_ok();
    env.rkt(&["app", "start", &uuid, "--app=added"]).assert_ok();
    let lines = |c: PublicApiClient<Channel>| {
        let uuid = uuid.clone();
        async move {
            let mut c = c;
            let mut s = c
                .get_logs(api::GetLogsRequest {
                    pod_id: uuid,
                    app_name: "added".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let mut lines = Vec::new();
            while let Some(r) = s.message().await.unwrap() {
                lines.extend(r.lines);
            }
            lines
        }
    };
    rt().block_on(async {
        let c = client(&addr).await;
        let start = Instant::now();
        loop {
            let l = lines(c.clone()).await;
            if l.iter().any(|l| l.ends_with(" stderr F added err")) {
                assert!(
                    l.iter().any(|l| l.ends_with(" stdout F added says hi")),
                    "{l:?}"
                );
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "{l:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    env.rkt(&["stop", &uuid]).assert_ok();
    sandbox.wait_timeout(60).assert_ok();
    let followed = follower.join().unwrap();
    assert!(
        followed
            .iter()
            .any(|l| l.starts_with("added: ") && l.ends_with(" stdout F added says hi")),
        "{followed:?}"
    );
    rt().block_on(async {
        let l = lines(client(&addr).await).await;
        assert!(
            l.iter().any(|l| l.ends_with(" stdout F added says hi")),
            "{l:?}"
        );
    });
}

fn exe_for_nobody() -> (tempfile::TempDir, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = d.path().join("api_service_probe");
    let exe = std::env::current_exe().unwrap();
    if std::fs::hard_link(&exe, &p).is_err() {
        std::fs::copy(&exe, &p).unwrap();
    }
    (d, p)
}

/// The client half of the non-root check above; does nothing unless RKT_API_PROBE is set.
#[test]
fn probe_as_another_user() {
    let Ok(probe) = std::env::var("RKT_API_PROBE") else {
        return;
    };
    let (addr, pod) = probe.split_once(' ').unwrap();
    rt().block_on(async {
        let mut c = client(addr).await;
        let code = |r: Result<(), tonic::Status>| match r {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("{:?}", e.code()),
        };
        let info = code(c.get_info(api::GetInfoRequest {}).await.map(|_| ()));
        let pods = code(c.list_pods(api::ListPodsRequest::default()).await.map(|_| ()));
        let one = code(
            c.inspect_pod(api::InspectPodRequest { id: pod.into() })
                .await
                .map(|_| ()),
        );
        let images = code(c.list_images(api::ListImagesRequest::default()).await.map(|_| ()));
        let events = code(
            c.listen_events(api::ListenEventsRequest::default())
                .await
                .map(|_| ()),
        );
        let logs = code(
            c.get_logs(api::GetLogsRequest {
                pod_id: pod.into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        );
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        println!("PROBE uid={uid} info={info} pods={pods} pod={one} images={images} events={events} logs={logs}");
    });
}

/// What a systemd `.socket` unit does (the shipped rkt-api.socket has two `ListenStream=`): the
/// listening sockets are fds 3.. with LISTEN_FDS and LISTEN_PID. With systemd-socket-activate
/// (systemd's own tool) when installed, else a spawner doing the same; `--listen` together with
/// passed sockets is refused as rkt does.
#[test]
fn socket_activation_serves_the_passed_sockets() {
    require_root();
    let env = RktEnv::new();
    let port = free_port();
    let tcp = format!("127.0.0.1:{port}");
    let sock = env.scratch.join("api.sock");
    let rkt = rkt_tests::rkt_bin();
    let dir = format!("--dir={}", env.dir.display());
    let mut child = if Path::new("/usr/bin/systemd-socket-activate").exists() {
        let mut cmd = Command::new("systemd-socket-activate");
        cmd.args(["-l", &tcp, "-l"])
            .arg(&sock)
            .arg(&rkt)
            .args([dir.as_str(), "api-service"]);
        RktChild::spawn_command(cmd, &env.scratch)
    } else {
        let l1 = TcpListener::bind(&tcp).unwrap();
        let l2 = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        RktChild::spawn_command(
            activated(
                &[l1.as_raw_fd(), l2.as_raw_fd()],
                &rkt,
                &[&dir, "api-service"],
            ),
            &env.scratch,
        )
    };
    wait_listening(&tcp, &mut child);
    rt().block_on(async {
        let mut c = client(&tcp).await;
        let info = c
            .get_info(api::GetInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            info.info.unwrap().global_flags.unwrap().dir,
            env.dir.display().to_string()
        );
        assert!(c
            .list_pods(api::ListPodsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .pods
            .is_empty());
        // The Unix socket: the caller's uid comes from SO_PEERCRED (root here: allowed).
        let path = sock.clone();
        let ch = Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .unwrap();
        let mut u = PublicApiClient::new(ch);
        u.list_images(api::ListImagesRequest::default())
            .await
            .unwrap();
    });
    drop(child);

    // Passed sockets and --listen: refused, one line, exit 254.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = format!("--listen=127.0.0.1:{}", free_port());
    let out = rkt_tests::run_command(
        activated(&[l.as_raw_fd()], &rkt, &[&dir, "api-service", &listen]),
        30,
    );
    out.assert_code(254);
    out.assert_stderr_contains("--listen was given too");
}

/// `PROGRAM ARGS` with `fds` as 3.., LISTEN_FDS and LISTEN_PID set to the program's own pid (a
/// shell that execs it keeps its pid), as systemd starts a socket-activated service.
fn activated(fds: &[i32], program: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "LISTEN_PID=$$ LISTEN_FDS={} exec \"$0\" \"$@\"",
            fds.len()
        ))
        .arg(program)
        .args(args);
    let fds = fds.to_vec();
    // SAFETY: only async-signal-safe calls (dup, dup2, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Move the sockets out of the way first, then into 3.. (they may already sit there).
            let tmp: Vec<i32> = fds
                .iter()
                .map(|&fd| libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100))
                .collect();
            for (i, fd) in tmp.iter().enumerate() {
                if *fd < 0 || libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd
}
