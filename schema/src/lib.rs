//! appc manifest types (image and pod), as rkt v1.x wrote them.
//!
//! OCI/Docker images are converted to an appc `ImageManifest` on import (the way docker2aci did), so
//! `rkt image cat-manifest`, the pod manifest and both stage1 flavours speak one format. The guest init
//! depends on this crate too, so it stays free of heavy dependencies.

use serde::{Deserialize, Serialize};

pub const AC_VERSION: &str = "0.8.11";

/// A `{"name": …, "value": …}` pair, used for labels, annotations and environment variables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameValue {
    pub name: String,
    pub value: String,
}

pub fn nv(name: impl Into<String>, value: impl Into<String>) -> NameValue {
    NameValue {
        name: name.into(),
        value: value.into(),
    }
}

/// Looks a name up in a name/value list (labels, annotations, environment).
pub fn lookup<'a>(list: &'a [NameValue], name: &str) -> Option<&'a str> {
    list.iter()
        .find(|e| e.name == name)
        .map(|e| e.value.as_str())
}

/// Sets `name` in a name/value list, replacing an existing entry in place.
pub fn set(list: &mut Vec<NameValue>, name: &str, value: impl Into<String>) {
    let value = value.into();
    match list.iter_mut().find(|e| e.name == name) {
        Some(e) => e.value = value,
        None => list.push(nv(name, value)),
    }
}

/// An isolator: `name` such as `resource/memory`, `os/linux/capabilities-retain-set`,
/// `os/linux/seccomp-remove-set`; `value` is isolator-specific JSON, kept as-is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Isolator {
    pub name: String,
    pub value: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountPoint {
    pub name: String,
    pub path: String,
    #[serde(default, rename = "readOnly", skip_serializing_if = "is_false")]
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub name: String,
    pub protocol: String,
    pub port: u16,
    #[serde(default)]
    pub count: u16,
    #[serde(default, rename = "socketActivated", skip_serializing_if = "is_false")]
    pub socket_activated: bool,
}

/// What to run and how: the `app` section of an image manifest (and of a pod's runtime app).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct App {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exec: Vec<String>,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub group: String,
    #[serde(
        default,
        rename = "supplementaryGIDs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub supplementary_gids: Vec<u32>,
    #[serde(
        default,
        rename = "workingDirectory",
        skip_serializing_if = "String::is_empty"
    )]
    pub working_directory: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environment: Vec<NameValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub isolators: Vec<Isolator>,
    #[serde(default, rename = "mountPoints", skip_serializing_if = "Vec::is_empty")]
    pub mount_points: Vec<MountPoint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageManifest {
    #[serde(rename = "acKind")]
    pub ac_kind: String,
    #[serde(rename = "acVersion")]
    pub ac_version: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<NameValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<App>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<NameValue>,
}

impl ImageManifest {
    pub fn new(name: impl Into<String>) -> Self {
        ImageManifest {
            ac_kind: "ImageManifest".into(),
            ac_version: AC_VERSION.into(),
            name: name.into(),
            labels: Vec::new(),
            app: None,
            annotations: Vec::new(),
        }
    }
}

/// Reference from a pod's app to the image it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeImage {
    pub name: String,
    /// Image ID, `sha256-<64 hex>`.
    pub id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<NameValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub volume: String,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeApp {
    pub name: String,
    pub image: RuntimeImage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<App>,
    #[serde(default, rename = "readOnlyRootFS", skip_serializing_if = "is_false")]
    pub read_only_rootfs: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<NameValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    /// `host` or `empty`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, rename = "readOnly", skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recursive: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodManifest {
    #[serde(rename = "acKind")]
    pub ac_kind: String,
    #[serde(rename = "acVersion")]
    pub ac_version: String,
    pub apps: Vec<RuntimeApp>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub isolators: Vec<Isolator>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<NameValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<serde_json::Value>,
}

impl Default for PodManifest {
    fn default() -> Self {
        PodManifest {
            ac_kind: "PodManifest".into(),
            ac_version: AC_VERSION.into(),
            apps: Vec::new(),
            volumes: Vec::new(),
            isolators: Vec::new(),
            annotations: Vec::new(),
            ports: Vec::new(),
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_manifest_round_trips_with_appc_field_names() {
        let mut pm = PodManifest::default();
        pm.apps.push(RuntimeApp {
            name: "web".into(),
            image: RuntimeImage {
                name: "example.com/web".into(),
                id: format!("sha256-{}", "a".repeat(64)),
                labels: vec![nv("version", "1")],
            },
            app: Some(App {
                exec: vec!["/bin/sh".into()],
                user: "0".into(),
                group: "0".into(),
                working_directory: "/srv".into(),
                ..Default::default()
            }),
            read_only_rootfs: true,
            mounts: vec![],
            annotations: vec![],
        });
        let json = serde_json::to_string(&pm).unwrap();
        assert!(json.contains("\"acKind\":\"PodManifest\""));
        assert!(json.contains("\"readOnlyRootFS\":true"));
        assert!(json.contains("\"workingDirectory\":\"/srv\""));
        let back: PodManifest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, pm);
    }

    #[test]
    fn set_replaces_in_place() {
        let mut env = vec![nv("PATH", "/bin"), nv("A", "1")];
        set(&mut env, "PATH", "/usr/bin");
        set(&mut env, "B", "2");
        assert_eq!(lookup(&env, "PATH"), Some("/usr/bin"));
        assert_eq!(env.len(), 3);
        assert_eq!(env[0].name, "PATH");
    }
}
