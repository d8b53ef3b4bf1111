//! From parsed flags to a prepared pod: images fetched and rendered, the appc pod manifest (with
//! every app's effective exec/env/user/isolators/mounts), the pod directory's files; and, when the
//! pod starts, the fully resolved `stage1-spec.json` the stage1 consumes.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rkt_schema::{
    lookup, set, App, ImageManifest, Mount, NameValue, PodManifest, RuntimeApp, RuntimeImage,
    Volume,
};
use rkt_stage2::{AppSpec, InsecureRun, MountSpec, NetMode, PodSpec, RootfsSpec};
use rkt_store::{FetchOptions, PullPolicy, Store};

use super::isolators;
use super::request::{AppFlags, PodFlags, StartFlags};
use crate::global::Insecure;
use crate::stage1::Flavor;

/// Default PATH for apps whose environment has none (rkt's stage1 default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything decided before the pod directory exists, so bad input never leaves a pod behind.
pub struct Plan {
    pub manifest: PodManifest,
    pub flavor: Flavor,
    pub no_overlay: bool,
    pub tpm: String,
    /// Per app (manifest order): the image manifest and the rendered tree's rootfs.
    pub images: Vec<(ImageManifest, PathBuf)>,
}

pub fn flavor(pf: &PodFlags, config_default: Option<&str>) -> Result<Flavor> {
    let f: Flavor = match (&pf.stage1, config_default) {
        (Some((flag, v)), _) => Flavor::from_flag(flag, v)?,
        (None, Some(c)) => Flavor::from_flag("stage1-name", c).map_err(|_| {
            anyhow::anyhow!(
                "the stage1.d configuration names stage1 {c:?}, which we do not have (available: ns, kvm, fly)"
            )
        })?,
        (None, None) => crate::DEFAULT_STAGE1.parse()?,
    };
    Ok(f)
}

pub fn insecure(global: Insecure, pf: &PodFlags) -> Result<Insecure> {
    let mut i = global;
    for o in &pf.insecure_options {
        let more = Insecure::parse(o)?;
        i.image |= more.image;
        i.tls |= more.tls;
        i.http |= more.http;
        i.pubkey |= more.pubkey;
        i.capabilities |= more.capabilities;
        i.paths |= more.paths;
        i.seccomp |= more.seccomp;
    }
    Ok(i)
}

pub fn fetch_options(
    pf: &PodFlags,
    insecure: Insecure,
    config: &crate::config::Config,
) -> Result<FetchOptions> {
    let pull_policy = match pf.pull_policy.as_deref() {
        None | Some("new") => PullPolicy::New,
        Some("never") => PullPolicy::Never,
        Some("update") => PullPolicy::Update,
        Some(o) => bail!("invalid --pull-policy {o:?} (expected never, new or update)"),
    };
    Ok(FetchOptions {
        pull_policy,
        insecure_http: insecure.http,
        insecure_tls: insecure.tls,
        progress: !pf.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        // The caller sets the trust store (Globals::trust); verification is on by default.
        trust: rkt_store::trust::Verify {
            skip: insecure.image,
            quiet: pf.quiet,
            ..Default::default()
        },
        config_dirs: config.dirs.clone(),
    })
}

/// Fetches the images and builds the pod manifest for `rkt run`/`rkt prepare`.
pub fn plan(
    store: &Store,
    pf: &PodFlags,
    apps: &[AppFlags],
    fetch: &FetchOptions,
    flavor: Flavor,
    tpm_default: Option<&str>,
) -> Result<Plan> {
    if pf.private_users {
        bail!("--private-users is not supported");
    }
    let ports = pf
        .ports
        .iter()
        .map(|p| crate::net::ports::parse(p))
        .collect::<Result<Vec<_>>>()?;
    let tpm = pf
        .tpm
        .as_deref()
        .or(tpm_default)
        .unwrap_or("auto")
        .to_string();
    if !matches!(tpm.as_str(), "auto" | "required" | "off") {
        bail!("invalid --tpm {tpm:?} (expected auto, required or off)");
    }
    let (mut manifest, images) = match &pf.pod_manifest {
        Some(p) => from_pod_manifest(store, p, fetch)?,
        None => from_flags(store, pf, apps, fetch)?,
    };
    check_volumes(&manifest, &images)?;
    if !ports.is_empty() {
        manifest.ports = ports;
    }
    crate::net::ports::check(&manifest)?;
    Ok(Plan {
        manifest,
        flavor,
        no_overlay: pf.no_overlay,
        tpm,
        images,
    })
}

fn get_image(store: &Store, image: &str, fetch: &FetchOptions) -> Result<rkt_store::ImageInfo> {
    // An image ID is looked up locally; anything else goes through the fetch (pull policy).
    let looks_like_id = image.starts_with("sha256-") || image.starts_with("sha256:");
    let info = if looks_like_id {
        store.resolve(image)
    } else {
        store.fetch(image, fetch)
    };
    info.with_context(|| format!("image {image:?}"))
}

fn from_flags(
    store: &Store,
    pf: &PodFlags,
    apps: &[AppFlags],
    fetch: &FetchOptions,
) -> Result<(PodManifest, Vec<(ImageManifest, PathBuf)>)> {
    let mut pm = PodManifest::default();
    for v in &pf.volumes {
        let vol = parse_volume(v)?;
        if pm.volumes.iter().any(|x| x.name == vol.name) {
            bail!("volume {:?} is defined twice", vol.name);
        }
        pm.volumes.push(vol);
    }
    let pod_env = pod_env(pf)?;
    // `--mount` before the first image: in every app, unless the app mounts that path itself.
    let pod_mounts = pf
        .mounts
        .iter()
        .map(|m| parse_mount(m))
        .collect::<Result<Vec<_>>>()?;
    // Check every per-app flag before fetching anything: a typo should not cost a download.
    for a in apps {
        if let Some(n) = &a.name {
            check_app_name(n)?;
        }
        isolators::from_flags(&isolator_flags(a))?;
        for m in &a.mounts {
            parse_mount(m)?;
        }
    }
    let mut images = Vec::new();
    for a in apps {
        let info = match &a.signature {
            Some(sig) => {
                let mut f = fetch.clone();
                f.trust.signature = Some(sig.clone());
                get_image(store, &a.image, &f)?
            }
            None => get_image(store, &a.image, fetch)?,
        };
        let im = store
            .manifest(&info.id)
            .with_context(|| format!("image {:?}: reading its manifest", a.image))?;
        let tree = store
            .render(&info.id)
            .with_context(|| format!("image {:?}: rendering", a.image))?;
        let name = match &a.name {
            Some(n) => {
                check_app_name(n)?;
                n.clone()
            }
            None => app_name_from_image(if info.name.is_empty() {
                &im.name
            } else {
                &info.name
            }),
        };
        if pm.apps.iter().any(|x| x.name == name) {
            bail!("duplicate app name {name:?} (give each app its own --name)");
        }
        let app = effective_app(&im, a, &pod_env)
            .with_context(|| format!("app {name:?} ({})", a.image))?;
        let mut ra = RuntimeApp {
            name: name.clone(),
            image: RuntimeImage {
                name: if info.name.is_empty() {
                    im.name.clone()
                } else {
                    info.name.clone()
                },
                id: info.id.clone(),
                labels: im.labels.clone(),
            },
            app: Some(app),
            read_only_rootfs: a.readonly_rootfs.unwrap_or(false),
            mounts: Vec::new(),
            annotations: Vec::new(),
        };
        for m in &a.mounts {
            ra.mounts.push(parse_mount(m)?);
        }
        for m in &pod_mounts {
            if !ra.mounts.iter().any(|x| x.path == m.path) {
                ra.mounts.push(m.clone());
            }
        }
        for (flag, list, prefix) in [
            ("annotation", &a.annotations, ""),
            ("user-annotation", &a.user_annotations, USER_ANNOTATION),
            ("user-label", &a.user_labels, USER_LABEL),
        ] {
            for kv in list {
                let (k, v) = kv
                    .split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .with_context(|| format!("invalid --{flag} {kv:?}: expected NAME=VALUE"))?;
                set(&mut ra.annotations, &format!("{prefix}{k}"), v);
            }
        }
        pm.apps.push(ra);
        images.push((im, tree.rootfs));
    }
    add_implicit_volumes(&mut pm);
    Ok((pm, images))
}

/// Prefixes under which `--user-annotation`/`--user-label` are kept in the app's annotations.
pub const USER_ANNOTATION: &str = "coreos.com/rkt/user-annotation/";
pub const USER_LABEL: &str = "coreos.com/rkt/user-label/";

/// The app section of one app: the image's, with the per-app flags and pod env applied.
fn effective_app(im: &ImageManifest, a: &AppFlags, pod_env: &[NameValue]) -> Result<App> {
    let mut app = im.app.clone().unwrap_or_default();
    match (&a.exec, &a.args) {
        (Some(e), args) => {
            app.exec = std::iter::once(e.clone())
                .chain(args.iter().flatten().cloned())
                .collect()
        }
        (None, Some(args)) => {
            let Some(first) = app.exec.first().cloned() else {
                bail!("the image has no command to run: use --exec");
            };
            app.exec = std::iter::once(first).chain(args.iter().cloned()).collect();
        }
        (None, None) => {}
    }
    if app.exec.is_empty() {
        bail!("the image has no command to run: use --exec");
    }
    if let Some(w) = &a.working_dir {
        if !w.starts_with('/') {
            bail!("--working-dir must be an absolute path, not {w:?}");
        }
        app.working_directory = w.clone();
    }
    if let Some(u) = &a.user {
        if u.is_empty() {
            bail!("--user must not be empty");
        }
        check_id("--user", u)?;
        app.user = u.clone();
    }
    if let Some(g) = &a.group {
        if g.is_empty() {
            bail!("--group must not be empty");
        }
        check_id("--group", g)?;
        app.group = g.clone();
    }
    if app.user.is_empty() {
        app.user = "0".into();
    }
    if app.group.is_empty() {
        app.group = "0".into();
    }
    if let Some(s) = &a.supplementary_gids {
        app.supplementary_gids = s
            .split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(|g| match g.parse::<u32>() {
                Ok(NO_ID) => {
                    bail!("invalid --supplementary-gids entry {g:?}: {NO_ID} is not an id")
                }
                r => r.with_context(|| format!("invalid --supplementary-gids entry {g:?}")),
            })
            .collect::<Result<_>>()?;
    }
    for nv in pod_env {
        set(&mut app.environment, &nv.name, nv.value.clone());
    }
    for kv in &a.environment {
        let (k, v) = split_env(kv).with_context(|| format!("invalid --environment {kv:?}"))?;
        set(&mut app.environment, k, v);
    }
    app.isolators = isolators::merge(&app.isolators, isolators::from_flags(&isolator_flags(a))?);
    isolators::resolve(&app.isolators, false)?;
    Ok(app)
}

/// (uid_t)-1: to setresuid/setresgid it means "leave unchanged", so running "as" it would run as
/// whoever rkt is (root). No user or group can have it.
const NO_ID: u32 = u32::MAX;

/// A numeric `--user`/`--group` must be a usable id (names and paths are resolved at run time).
fn check_id(flag: &str, v: &str) -> Result<()> {
    let numeric = v.trim();
    if numeric.parse::<u32>() == Ok(NO_ID) || numeric == "-1" {
        bail!("invalid {flag} {v:?}: {NO_ID} (-1) is not an id");
    }
    if !numeric.is_empty()
        && numeric.bytes().all(|b| b.is_ascii_digit())
        && numeric.parse::<u32>().is_err()
    {
        bail!("invalid {flag} {v:?}: ids are at most {}", NO_ID - 1);
    }
    Ok(())
}

fn isolator_flags(a: &AppFlags) -> isolators::IsolatorFlags<'_> {
    isolators::IsolatorFlags {
        memory: a.memory.as_deref(),
        cpu: a.cpu.as_deref(),
        cpu_shares: a.cpu_shares.as_deref(),
        caps_retain: a.caps_retain.as_deref(),
        caps_remove: a.caps_remove.as_deref(),
        seccomp: a.seccomp.as_deref(),
        oom_score_adj: a.oom_score_adj.as_deref(),
    }
}

fn split_env(kv: &str) -> Result<(&str, &str)> {
    match kv.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.contains(char::is_whitespace) => Ok((k, v)),
        _ => bail!("expected NAME=VALUE"),
    }
}

/// Pod-wide environment, in rkt's precedence order: host env (`--inherit-env`), then
/// `--set-env-file`, then `--set-env`.
fn pod_env(pf: &PodFlags) -> Result<Vec<NameValue>> {
    let mut env = Vec::new();
    if pf.inherit_env {
        for (k, v) in std::env::vars() {
            set(&mut env, &k, v);
        }
    }
    for file in &pf.set_env_file {
        let text =
            crate::read_limited_string(Path::new(file), crate::limits::ENV_FILE, "--set-env-file")?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = split_env(line)
                .with_context(|| format!("--set-env-file {file:?} line {}", n + 1))?;
            set(&mut env, k, v);
        }
    }
    for kv in &pf.set_env {
        let (k, v) = split_env(kv).with_context(|| format!("invalid --set-env {kv:?}"))?;
        set(&mut env, k, v);
    }
    Ok(env)
}

/// appc AC name: lowercase letters, digits and single dashes.
fn check_app_name(n: &str) -> Result<()> {
    let ok = !n.is_empty()
        && n.len() <= 512
        && n.split('-').all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        });
    if !ok {
        bail!("invalid app name {n:?} (lowercase letters, digits and dashes)");
    }
    Ok(())
}

/// `127.0.0.1:5000/library/busybox:latest` -> `busybox`, made a valid AC name.
pub fn app_name_from_image(image: &str) -> String {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    let base = last.split(':').next().unwrap_or(last);
    let mut out = String::new();
    for c in base.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() {
        "app".into()
    } else {
        out
    }
}

fn kv_pairs(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| match x.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (x.to_string(), String::new()),
        })
        .collect()
}

/// `rkt app add --mnt-volume=name=NAME,kind=host|empty,source=PATH,target=PATH,readOnly=BOOL`
/// (rkt v1): a volume and its mount in the added app, returned as its name and the `--volume`
/// and `--mount` values `rkt run` takes, so both go through the same checks.
pub fn mnt_volume(s: &str) -> Result<(String, String, String)> {
    let (mut name, mut target, mut rest) = (None, None, Vec::new());
    for (k, v) in kv_pairs(s) {
        match k.as_str() {
            "name" if name.is_none() => name = Some(v),
            "target" if target.is_none() => target = Some(v),
            "name" | "target" => bail!("invalid --mnt-volume {s:?}: {k} given twice"),
            _ => rest.push(format!("{k}={v}")),
        }
    }
    let (Some(name), Some(target)) = (name, target) else {
        bail!("invalid --mnt-volume {s:?}: expected name=NAME,kind=host|empty,...,target=PATH");
    };
    let vol = std::iter::once(name.clone())
        .chain(rest)
        .collect::<Vec<_>>()
        .join(",");
    parse_volume(&vol).with_context(|| format!("invalid --mnt-volume {s:?}"))?;
    let mount = format!("volume={name},target={target}");
    Ok((name, vol, mount))
}

/// `--volume NAME,kind=host|empty,source=PATH,readOnly=BOOL,recursive=BOOL,mode=,uid=,gid=`.
pub fn parse_volume(s: &str) -> Result<Volume> {
    let mut it = kv_pairs(s).into_iter();
    let Some((name, v)) = it.next().filter(|(_, v)| v.is_empty()) else {
        bail!("invalid --volume {s:?}: expected NAME,kind=host|empty,...");
    };
    let _ = v;
    check_app_name(&name).with_context(|| format!("invalid --volume {s:?}: bad name"))?;
    let mut vol = Volume {
        name,
        kind: String::new(),
        source: None,
        read_only: None,
        recursive: None,
        mode: None,
        uid: None,
        gid: None,
    };
    let b = |k: &str, v: &str| -> Result<bool> {
        v.parse::<bool>()
            .with_context(|| format!("invalid --volume {s:?}: {k} must be true or false"))
    };
    for (k, v) in it {
        match k.as_str() {
            "kind" => vol.kind = v,
            "source" => vol.source = Some(v),
            "readOnly" | "readonly" => vol.read_only = Some(b(&k, &v)?),
            "recursive" => vol.recursive = Some(b(&k, &v)?),
            "mode" => {
                u32::from_str_radix(&v, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .with_context(|| format!("invalid --volume {s:?}: bad mode {v:?}"))?;
                vol.mode = Some(v)
            }
            "uid" | "gid" => {
                let n: u32 = v
                    .parse()
                    .with_context(|| format!("invalid --volume {s:?}: bad {k} {v:?}"))?;
                if k == "uid" {
                    vol.uid = Some(n)
                } else {
                    vol.gid = Some(n)
                }
            }
            _ => bail!("invalid --volume {s:?}: unknown key {k:?}"),
        }
    }
    match vol.kind.as_str() {
        "host" => {
            let Some(src) = &vol.source else {
                bail!("invalid --volume {s:?}: kind=host needs source=PATH");
            };
            if !src.starts_with('/') {
                bail!("invalid --volume {s:?}: source must be an absolute path");
            }
            if !Path::new(src).exists() {
                bail!("volume {:?}: source {src:?} does not exist", vol.name);
            }
        }
        "empty" => {
            if vol.source.is_some() {
                bail!("invalid --volume {s:?}: kind=empty takes no source");
            }
        }
        "" => bail!("invalid --volume {s:?}: kind=host or kind=empty is required"),
        k => bail!("invalid --volume {s:?}: unknown kind {k:?} (host or empty)"),
    }
    Ok(vol)
}

/// `--mount volume=NAME,target=PATH`.
fn parse_mount(s: &str) -> Result<Mount> {
    let mut volume = None;
    let mut target = None;
    for (k, v) in kv_pairs(s) {
        match k.as_str() {
            "volume" => volume = Some(v),
            "target" => target = Some(v),
            _ => bail!("invalid --mount {s:?}: unknown key {k:?}"),
        }
    }
    match (volume, target) {
        (Some(volume), Some(path)) if !volume.is_empty() && path.starts_with('/') => {
            Ok(Mount { volume, path })
        }
        _ => bail!("invalid --mount {s:?}: expected volume=NAME,target=/ABSOLUTE/PATH"),
    }
}

/// rkt gives an image mount point without a matching volume an `empty` volume of that name.
fn add_implicit_volumes(pm: &mut PodManifest) {
    let mut add = Vec::new();
    for ra in &pm.apps {
        for mp in ra.app.iter().flat_map(|a| &a.mount_points) {
            let covered = ra.mounts.iter().any(|m| m.path == mp.path);
            let exists = pm.volumes.iter().any(|v| v.name == mp.name)
                || add.iter().any(|v: &Volume| v.name == mp.name);
            if !covered && !exists {
                eprintln!(
                    "rkt: warning: no volume specified for mount point {:?}, using an \"empty\" volume",
                    mp.name
                );
                add.push(Volume {
                    name: mp.name.clone(),
                    kind: "empty".into(),
                    source: None,
                    read_only: None,
                    recursive: None,
                    mode: None,
                    uid: None,
                    gid: None,
                });
            }
        }
    }
    pm.volumes.extend(add);
}

fn check_volumes(pm: &PodManifest, _images: &[(ImageManifest, PathBuf)]) -> Result<()> {
    for ra in &pm.apps {
        for m in &ra.mounts {
            if !pm.volumes.iter().any(|v| v.name == m.volume) {
                bail!(
                    "app {:?}: --mount refers to volume {:?}, which no --volume defines",
                    ra.name,
                    m.volume
                );
            }
        }
    }
    for v in &pm.volumes {
        let used = pm.apps.iter().any(|ra| {
            ra.mounts.iter().any(|m| m.volume == v.name)
                || ra
                    .app
                    .iter()
                    .flat_map(|a| &a.mount_points)
                    .any(|mp| mp.name == v.name)
        });
        if !used {
            bail!(
                "volume {:?} is not mounted by any app (add --mount volume={},target=PATH)",
                v.name,
                v.name
            );
        }
    }
    Ok(())
}

/// `--pod-manifest`: apps and volumes come from the file; images are fetched by ID or name and
/// fill in whatever app section the file leaves out.
fn from_pod_manifest(
    store: &Store,
    path: &Path,
    fetch: &FetchOptions,
) -> Result<(PodManifest, Vec<(ImageManifest, PathBuf)>)> {
    let text = crate::read_limited(path, crate::limits::POD_MANIFEST, "--pod-manifest")?;
    let mut pm: PodManifest = serde_json::from_slice(&text)
        .with_context(|| format!("parsing pod manifest {}", path.display()))?;
    if pm.apps.is_empty() {
        bail!("pod manifest {} has no apps", path.display());
    }
    let mut images = Vec::new();
    let mut names = Vec::new();
    for ra in &mut pm.apps {
        check_app_name(&ra.name)?;
        if names.contains(&ra.name) {
            bail!("duplicate app name {:?} in the pod manifest", ra.name);
        }
        names.push(ra.name.clone());
        let wanted = if ra.image.id.is_empty() {
            ra.image.name.clone()
        } else {
            ra.image.id.clone()
        };
        let info = get_image(store, &wanted, fetch)?;
        let im = store.manifest(&info.id)?;
        let tree = store.render(&info.id)?;
        ra.image.id = info.id.clone();
        if ra.image.name.is_empty() {
            ra.image.name = info.name.clone();
        }
        let mut app = ra
            .app
            .clone()
            .or_else(|| im.app.clone())
            .unwrap_or_default();
        if app.exec.is_empty() {
            bail!("app {:?}: the image has no command to run", ra.name);
        }
        if app.user.is_empty() {
            app.user = "0".into();
        }
        if app.group.is_empty() {
            app.group = "0".into();
        }
        isolators::resolve(&app.isolators, false).with_context(|| format!("app {:?}", ra.name))?;
        ra.app = Some(app);
        images.push((im, tree.rootfs));
    }
    for v in &pm.volumes {
        if v.kind == "host"
            && v.source
                .as_deref()
                .is_none_or(|s| !Path::new(s).is_absolute())
        {
            bail!("volume {:?}: kind=host needs an absolute source", v.name);
        }
    }
    add_implicit_volumes(&mut pm);
    Ok((pm, images))
}

/// Fills a fresh pod directory (still in `prepare/`). On error the caller removes the directory.
pub fn populate(pod: &Path, plan: &Plan) -> Result<()> {
    use super::write_atomic;
    write_atomic(
        &pod.join(super::MANIFEST_FILE),
        &serde_json::to_vec(&plan.manifest)?,
    )?;
    super::write_time(&pod.join(super::CREATED_FILE))?;
    write_atomic(
        &pod.join(crate::stage1::FLAVOR_FILE),
        plan.flavor.to_string().as_bytes(),
    )?;
    write_atomic(&pod.join(super::TPM_FILE), plan.tpm.as_bytes())?;
    for (ra, (im, lower)) in plan.manifest.apps.iter().zip(&plan.images) {
        populate_app(pod, ra, im, lower, plan.no_overlay)?;
    }
    for v in &plan.manifest.volumes {
        populate_volume(pod, v)?;
    }
    if !plan.no_overlay {
        write_atomic(&pod.join(super::OVERLAY_MARKER), b"")?;
    }
    Ok(())
}

/// One app's files in a pod directory: `appsinfo/<app>`, and its overlay's upper/work (or, with
/// `no_overlay`, its copy of the image tree). `rkt prepare` and `rkt app add`.
pub fn populate_app(
    pod: &Path,
    ra: &RuntimeApp,
    im: &ImageManifest,
    lower: &Path,
    no_overlay: bool,
) -> Result<()> {
    use super::write_atomic;
    let info = pod.join("appsinfo").join(&ra.name);
    std::fs::create_dir_all(&info)?;
    write_atomic(&info.join("treeStoreID"), ra.image.id.as_bytes())?;
    write_atomic(&info.join("manifest"), &serde_json::to_vec(im)?)?;
    if no_overlay {
        let dest = rkt_stage2::app_root_path(pod, &ra.name);
        std::fs::create_dir_all(dest.parent().unwrap())?;
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg("--reflink=auto")
            .arg(lower)
            .arg(&dest)
            .stderr(std::process::Stdio::piped())
            .output()
            .context("running cp")?;
        if !st.status.success() {
            bail!(
                "copying the image tree for app {:?}: {}",
                ra.name,
                String::from_utf8_lossy(&st.stderr).trim()
            );
        }
    } else {
        let (upper, work) = overlay_dirs(pod, &ra.image.id, &ra.name);
        std::fs::create_dir_all(&upper)?;
        std::fs::create_dir_all(&work)?;
        // The merged root takes the upper root's owner and mode: match the image's root.
        let m =
            std::fs::metadata(lower).with_context(|| format!("image tree {}", lower.display()))?;
        std::os::unix::fs::chown(&upper, Some(m.uid()), Some(m.gid()))?;
        std::fs::set_permissions(&upper, std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
    }
    Ok(())
}

/// A `kind=empty` volume's directory, `sharedVolumes/<name>`, with its mode and owner.
pub fn populate_volume(pod: &Path, v: &Volume) -> Result<()> {
    if v.kind != "empty" {
        return Ok(());
    }
    let d = pod.join("sharedVolumes").join(&v.name);
    std::fs::create_dir_all(&d)?;
    let mode = v
        .mode
        .as_deref()
        .and_then(|m| u32::from_str_radix(m, 8).ok())
        .unwrap_or(0o755);
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode))?;
    std::os::unix::fs::chown(&d, Some(v.uid.unwrap_or(0)), Some(v.gid.unwrap_or(0)))?;
    Ok(())
}

fn overlay_dirs(pod: &Path, image_id: &str, app: &str) -> (PathBuf, PathBuf) {
    let base = pod.join("overlay").join(image_id);
    (base.join("upper").join(app), base.join("work").join(app))
}

/// Options applied when the pod starts, validated.
#[derive(Debug, Clone)]
pub struct Start {
    pub net: NetMode,
    /// The parsed `--net` (the CNI networks behind [`NetMode::Default`]).
    pub net_arg: crate::net::conf::NetArg,
    pub hostname: Option<String>,
    pub resolv_conf: Option<String>,
    /// Some `--dns*` flag was given: a CNI result's DNS settings are then not used.
    pub dns_given: bool,
    pub hosts_entries: Vec<(String, Vec<String>)>,
    pub hosts_from_host: bool,
    pub interactive: bool,
}

pub fn start_options(s: &StartFlags) -> Result<Start> {
    let net_arg = crate::net::conf::parse_net(s.net.as_deref())?;
    let net = match net_arg {
        crate::net::conf::NetArg::Host => NetMode::Host,
        crate::net::conf::NetArg::None => NetMode::None,
        crate::net::conf::NetArg::Cni { .. } | crate::net::conf::NetArg::Join(_) => {
            NetMode::Default
        }
    };
    if s.mds_register {
        bail!("--mds-register is not supported");
    }
    if let Some(ipc) = &s.ipc {
        if !matches!(ipc.as_str(), "auto" | "private") {
            bail!("invalid --ipc {ipc:?}: only auto and private are supported");
        }
    }
    if let Some(h) = &s.hostname {
        let ok = !h.is_empty()
            && h.len() <= 64
            && h.split('.').all(|l| {
                !l.is_empty()
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !ok {
            bail!("invalid --hostname {h:?}");
        }
    }
    let resolv_conf = resolv_conf(s)?;
    let mut hosts_entries: Vec<(String, Vec<String>)> = Vec::new();
    let mut hosts_from_host = false;
    for e in &s.hosts_entries {
        if e == "host" {
            hosts_from_host = true;
            continue;
        }
        let (ip, host) = e
            .split_once('=')
            .filter(|(_, h)| !h.is_empty() && !h.contains(char::is_whitespace))
            .with_context(|| {
                format!("invalid --hosts-entry {e:?}: expected IP=HOSTNAME or host")
            })?;
        let ip: std::net::IpAddr = ip
            .parse()
            .with_context(|| format!("invalid --hosts-entry {e:?}: bad IP address"))?;
        let ip = ip.to_string();
        match hosts_entries.iter_mut().find(|(i, _)| *i == ip) {
            Some((_, names)) => names.push(host.to_string()),
            None => hosts_entries.push((ip, vec![host.to_string()])),
        }
    }
    if hosts_from_host && !hosts_entries.is_empty() {
        bail!("--hosts-entry=host cannot be combined with IP=HOSTNAME entries");
    }
    Ok(Start {
        net,
        net_arg,
        hostname: s.hostname.clone(),
        resolv_conf,
        dns_given: !s.dns.is_empty()
            || !s.dns_search.is_empty()
            || !s.dns_opt.is_empty()
            || s.dns_domain.is_some(),
        hosts_entries,
        hosts_from_host,
        interactive: s.interactive,
    })
}

fn resolv_conf(s: &StartFlags) -> Result<Option<String>> {
    let magic = s.dns.iter().any(|d| d == "host" || d == "none");
    if magic {
        if s.dns.len() > 1
            || !s.dns_search.is_empty()
            || !s.dns_opt.is_empty()
            || s.dns_domain.is_some()
        {
            bail!("--dns=host and --dns=none cannot be combined with other DNS options");
        }
        if s.dns[0] == "none" {
            return Ok(None);
        }
        let text = crate::read_limited_string(
            Path::new("/etc/resolv.conf"),
            crate::limits::CONFIG_FILE,
            "--dns=host:",
        )?;
        return Ok(Some(text));
    }
    if s.dns.is_empty() && s.dns_search.is_empty() && s.dns_opt.is_empty() && s.dns_domain.is_none()
    {
        return Ok(None);
    }
    let mut out = String::from("# Generated by rkt run\n\n");
    if !s.dns_search.is_empty() {
        out += &format!("search {}\n", s.dns_search.join(" "));
    }
    for d in &s.dns {
        let ip: std::net::IpAddr = d.parse().with_context(|| {
            format!("invalid --dns {d:?}: expected an IP address, host or none")
        })?;
        out += &format!("nameserver {ip}\n");
    }
    if !s.dns_opt.is_empty() {
        out += &format!("options {}\n", s.dns_opt.join(" "));
    }
    if let Some(d) = &s.dns_domain {
        out += &format!("domain {d}\n");
    }
    Ok(Some(out))
}

fn hosts(start: &Start, hostname: &str) -> Result<Option<String>> {
    if start.hosts_from_host {
        return Ok(Some(crate::read_limited_string(
            Path::new("/etc/hosts"),
            crate::limits::CONFIG_FILE,
            "--hosts-entry=host:",
        )?));
    }
    if start.hosts_entries.is_empty() {
        return Ok(None);
    }
    let mut out = String::from(
        "127.0.0.1 localhost localhost.localdomain localhost4 localhost4.localdomain4\n\
         ::1 localhost localhost.localdomain localhost6 localhost6.localdomain6\n",
    );
    out += &format!("127.0.0.1 {hostname}\n\n");
    for (ip, names) in &start.hosts_entries {
        out += &format!("{ip} {}\n", names.join(" "));
    }
    Ok(Some(out))
}

/// The fully resolved spec of a pod about to start, with paths under its current directory.
pub fn pod_spec(
    pod: &Path,
    uuid: &str,
    pm: &PodManifest,
    store: &Store,
    start: &Start,
    insecure: Insecure,
    debug: bool,
) -> Result<PodSpec> {
    let overlay = pod.join(super::OVERLAY_MARKER).exists();
    let hostname = start
        .hostname
        .clone()
        .unwrap_or_else(|| format!("rkt-{uuid}"));
    let volumes: BTreeMap<&str, &Volume> =
        pm.volumes.iter().map(|v| (v.name.as_str(), v)).collect();
    let mut apps = Vec::new();
    for ra in &pm.apps {
        let app = ra.app.clone().unwrap_or_default();
        let rootfs = if overlay {
            let tree = store
                .render(&ra.image.id)
                .with_context(|| format!("app {:?}: image {}", ra.name, ra.image.id))?;
            let (upper, work) = overlay_dirs(pod, &ra.image.id, &ra.name);
            RootfsSpec::Overlay {
                lower: tree.rootfs,
                upper,
                work,
            }
        } else {
            RootfsSpec::Dir(rkt_stage2::app_root_path(pod, &ra.name))
        };
        let mut env = app.environment.clone();
        if lookup(&env, "PATH").is_none() {
            set(&mut env, "PATH", DEFAULT_PATH);
        }
        set(&mut env, "AC_APP_NAME", ra.name.clone());
        let mut mounts = Vec::new();
        let mount_of = |vol: &Volume, target: &str, mp_ro: bool| MountSpec {
            source: if vol.kind == "host" {
                PathBuf::from(vol.source.clone().unwrap_or_default())
            } else {
                pod.join("sharedVolumes").join(&vol.name)
            },
            target: target.to_string(),
            read_only: vol.read_only.unwrap_or(false) || mp_ro,
            recursive: vol.recursive.unwrap_or(true),
        };
        for m in &ra.mounts {
            let vol = volumes
                .get(m.volume.as_str())
                .with_context(|| format!("app {:?}: no volume named {:?}", ra.name, m.volume))?;
            let mp_ro = app
                .mount_points
                .iter()
                .any(|mp| mp.path == m.path && mp.read_only);
            mounts.push(mount_of(vol, &m.path, mp_ro));
        }
        for mp in &app.mount_points {
            if ra.mounts.iter().any(|m| m.path == mp.path) {
                continue;
            }
            if let Some(vol) = volumes.get(mp.name.as_str()) {
                mounts.push(mount_of(vol, &mp.path, mp.read_only));
            }
        }
        let r = isolators::resolve(&app.isolators, insecure.capabilities)
            .with_context(|| format!("app {:?}", ra.name))?;
        apps.push(AppSpec {
            name: ra.name.clone(),
            image_id: ra.image.id.clone(),
            rootfs,
            exec: app.exec.clone(),
            env: env.into_iter().map(|nv| (nv.name, nv.value)).collect(),
            user: app.user.clone(),
            group: app.group.clone(),
            supplementary_gids: app.supplementary_gids.clone(),
            working_dir: if app.working_directory.is_empty() {
                "/".into()
            } else {
                app.working_directory.clone()
            },
            readonly_rootfs: ra.read_only_rootfs,
            mounts,
            capabilities: r.capabilities,
            seccomp: r.seccomp,
            memory_limit: r.memory_limit,
            cpu_millis: r.cpu_millis,
            cpu_shares: r.cpu_shares,
            oom_score_adj: r.oom_score_adj,
        });
    }
    Ok(PodSpec {
        uuid: uuid.to_string(),
        hosts: hosts(start, &hostname)?,
        hostname,
        net: start.net.clone(),
        resolv_conf: start.resolv_conf.clone(),
        interactive: start.interactive,
        tty: false,
        insecure: InsecureRun {
            capabilities: insecure.capabilities,
            paths: insecure.paths,
            seccomp: insecure.seccomp,
        },
        debug,
        apps,
        interfaces: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_from_images() {
        assert_eq!(
            app_name_from_image("127.0.0.1:5000/busybox:latest"),
            "busybox"
        );
        assert_eq!(app_name_from_image("docker://library/My_App:1"), "my-app");
        assert_eq!(app_name_from_image("quay.io/x/etcd@sha256:abc"), "etcd");
        assert!(check_app_name("web-1").is_ok());
        assert!(check_app_name("Web").is_err());
        assert!(check_app_name("a--b").is_err());
    }

    #[test]
    fn volumes_parse_and_validate() {
        let v = parse_volume("data,kind=empty,mode=0700,uid=5,gid=6").unwrap();
        assert_eq!(
            (v.kind.as_str(), v.mode.as_deref(), v.uid),
            ("empty", Some("0700"), Some(5))
        );
        let v = parse_volume("etc,kind=host,source=/etc,readOnly=true").unwrap();
        assert_eq!(v.read_only, Some(true));
        for bad in [
            "x",
            "x,kind=host",
            "x,kind=host,source=rel",
            "x,kind=host,source=/does/not/exist",
            "x,kind=nfs",
            "x,kind=empty,color=red",
            "x,kind=empty,readOnly=maybe",
        ] {
            assert!(parse_volume(bad).is_err(), "{bad}");
        }
        assert!(parse_mount("volume=data,target=/d").is_ok());
        assert!(parse_mount("volume=data,target=d").is_err());
        assert!(parse_mount("volume=data").is_err());
    }

    #[test]
    fn dns_and_hosts() {
        let s = StartFlags {
            dns: vec!["8.8.8.8".into(), "4.2.2.2".into()],
            dns_search: vec!["example.com".into()],
            dns_opt: vec!["debug".into(), "rotate".into()],
            dns_domain: Some("example.org".into()),
            hosts_entries: vec![
                "198.51.100.0=host1".into(),
                "198.51.100.1=host2".into(),
                "198.51.100.0=host3".into(),
            ],
            ..Default::default()
        };
        let st = start_options(&s).unwrap();
        assert_eq!(
            st.resolv_conf.as_deref().unwrap(),
            "# Generated by rkt run\n\nsearch example.com\nnameserver 8.8.8.8\nnameserver 4.2.2.2\noptions debug rotate\ndomain example.org\n"
        );
        let h = hosts(&st, "pod1").unwrap().unwrap();
        assert!(h.starts_with("127.0.0.1 localhost"));
        assert!(h.contains("127.0.0.1 pod1\n"));
        assert!(h.ends_with("198.51.100.0 host1 host3\n198.51.100.1 host2\n"));
        assert_eq!(st.net, NetMode::Default);
        let bad = StartFlags {
            dns: vec!["nope".into()],
            ..Default::default()
        };
        assert!(start_options(&bad).is_err());
        let bad = StartFlags {
            hosts_entries: vec!["1.2.3.4".into()],
            ..Default::default()
        };
        assert!(start_options(&bad).is_err());
        // Named networks are resolved against net.d when the pod starts; bad names fail here.
        let named = StartFlags {
            net: Some("mynet".into()),
            ..Default::default()
        };
        assert_eq!(start_options(&named).unwrap().net, NetMode::Default);
        let bad = StartFlags {
            net: Some("../mynet".into()),
            ..Default::default()
        };
        assert!(start_options(&bad).is_err());
        let none = StartFlags {
            dns: vec!["none".into()],
            ..Default::default()
        };
        assert_eq!(start_options(&none).unwrap().resolv_conf, None);
    }
}
