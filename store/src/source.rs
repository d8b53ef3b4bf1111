//! Image arguments: `oci:PATH[:REFERENCE]` (PATH ends at the first colon), `oci-archive:FILE`,
//! `docker-archive:FILE`, a local `.aci` file, `docker://[HOST[:PORT]/]NAME[:TAG|@DIGEST]`, an
//! `https://` URL of an ACI, an appc name to discover (`example.com/app:v1.0`), or a name/ID
//! already in the store.

use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::Result;

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Oci {
        path: PathBuf,
        tag: Option<String>,
    },
    OciArchive {
        path: PathBuf,
        tag: Option<String>,
    },
    DockerArchive {
        path: PathBuf,
    },
    Aci {
        path: PathBuf,
    },
    Docker(DockerRef),
    /// An ACI at an http(s) URL (its signature at URL.asc).
    Url(String),
    /// An appc name with a host (`example.com/app:v1.0`): the store, else appc discovery.
    Discover(crate::discovery::AppcName),
    /// A name[:tag] or image ID: only looked up in the store.
    Stored(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct DockerRef {
    /// `host[:port]` as written (docker.io for Docker Hub).
    pub registry: String,
    pub repo: String,
    /// Tag (default `latest`), unless a digest was given.
    pub tag: String,
    pub digest: Option<String>,
}

impl DockerRef {
    /// The name images from this reference get in the store (`host[:port]/repo`).
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repo)
    }

    /// The host to talk to (Docker Hub's API host for docker.io).
    pub fn api_host(&self) -> &str {
        if self.registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }
}

fn split_tag(s: &str) -> (PathBuf, Option<String>) {
    if Path::new(s).exists() {
        return (PathBuf::from(s), None);
    }
    match s.rfind(':') {
        Some(i) if !s[i + 1..].contains('/') && i > 0 => {
            (PathBuf::from(&s[..i]), Some(s[i + 1..].to_string()))
        }
        _ => (PathBuf::from(s), None),
    }
}

/// A docker reference (`[host[:port]/]repo[:tag][@digest]`), by the distribution grammar as
/// oci-spec implements it: Docker Hub names get `docker.io` and `library/`, the tag defaults to
/// `latest` (also beside a digest: the digest decides what is fetched).
pub fn parse_docker(rest: &str) -> Result<DockerRef> {
    let rest = rest.trim_start_matches('/');
    if rest.is_empty() {
        bail!("empty docker image reference");
    }
    let r: oci_spec::distribution::Reference = rest
        .parse()
        .map_err(|e| anyhow::anyhow!("invalid docker image reference {rest:?}: {e}"))?;
    if let Some(d) = r.digest() {
        crate::blob::digest_hex(d)?;
    }
    Ok(DockerRef {
        registry: r.registry().to_string(),
        repo: r.repository().to_string(),
        tag: r.tag().unwrap_or("latest").to_string(),
        digest: r.digest().map(str::to_string),
    })
}

impl Source {
    pub fn parse(s: &str) -> Result<Source> {
        if let Some(r) = s.strip_prefix("docker://") {
            return Ok(Source::Docker(parse_docker(r)?));
        }
        if let Some(r) = s.strip_prefix("oci:") {
            // skopeo's convention: the path ends at the FIRST colon, so the reference may hold
            // colons of its own (buildah writes `org.opencontainers.image.ref.name` values such
            // as `busybox:1.36`); a layout path cannot contain a colon.
            let (path, tag) = match r.split_once(':') {
                Some((p, t)) => (p, (!t.is_empty()).then(|| t.to_string())),
                None => (r, None),
            };
            if path.is_empty() {
                bail!("oci: needs a layout directory: oci:PATH[:REFERENCE]");
            }
            return Ok(Source::Oci {
                path: PathBuf::from(path),
                tag,
            });
        }
        if let Some(r) = s.strip_prefix("oci-archive:") {
            let (path, tag) = split_tag(r);
            return Ok(Source::OciArchive { path, tag });
        }
        if let Some(r) = s.strip_prefix("docker-archive:") {
            let (path, _) = split_tag(r);
            return Ok(Source::DockerArchive { path });
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            if crate::http::authority(s).is_empty() {
                bail!("invalid URL {s:?}: no host");
            }
            return Ok(Source::Url(s.to_string()));
        }
        let file = s.strip_prefix("file://").unwrap_or(s);
        if file.ends_with(".aci") || (file.contains('/') && Path::new(file).is_file()) {
            return Ok(Source::Aci {
                path: PathBuf::from(file),
            });
        }
        if let Some(n) = crate::discovery::AppcName::parse(s) {
            return Ok(Source::Discover(n?));
        }
        Ok(Source::Stored(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_refs() {
        let r = parse_docker("127.0.0.1:5000/busybox:1.36").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repo.as_str(), r.tag.as_str()),
            ("127.0.0.1:5000", "busybox", "1.36")
        );
        let r = parse_docker("busybox").unwrap();
        assert_eq!(r.name(), "docker.io/library/busybox");
        assert_eq!(r.tag, "latest");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse_docker(&format!("localhost/x/y@{d}")).unwrap();
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert!(parse_docker("HOST.io/Bad").is_err());
        let r = parse_docker(&format!("index.docker.io/me/app:v1@{d}")).unwrap();
        assert_eq!(
            (r.name(), r.tag.as_str()),
            ("docker.io/me/app".into(), "v1")
        );
        for bad in [
            "a//b",
            "a b",
            "a/b:",
            "a/b:-x",
            "x/y@sha256:abc",
            "x/y@md5:0123456789abcdef0123456789abcdef",
            "../../etc",
        ] {
            assert!(parse_docker(bad).is_err(), "{bad}");
        }
        // The distribution grammar's length limit: no unbounded names reach a registry URL.
        assert!(parse_docker(&"a".repeat(256)).is_err());
        assert!(parse_docker(&format!("x/y:{}", "t".repeat(129))).is_err());
    }

    #[test]
    fn oci_path_ends_at_the_first_colon() {
        assert_eq!(
            Source::parse("oci:/imgs/bb:busybox:1.36").unwrap(),
            Source::Oci {
                path: "/imgs/bb".into(),
                tag: Some("busybox:1.36".into())
            }
        );
        assert_eq!(
            Source::parse("oci:./bb").unwrap(),
            Source::Oci {
                path: "./bb".into(),
                tag: None
            }
        );
        assert_eq!(
            Source::parse("oci:/imgs/bb:").unwrap(),
            Source::Oci {
                path: "/imgs/bb".into(),
                tag: None
            }
        );
        assert!(Source::parse("oci::latest").is_err());
    }

    #[test]
    fn parses_sources() {
        assert_eq!(
            Source::parse("oci:/nonexistent/img:v1").unwrap(),
            Source::Oci {
                path: "/nonexistent/img".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            Source::parse("x.aci").unwrap(),
            Source::Aci {
                path: "x.aci".into()
            }
        );
        assert_eq!(
            Source::parse("busybox:1").unwrap(),
            Source::Stored("busybox:1".into())
        );
        assert_eq!(
            Source::parse("https://h:8443/x.aci").unwrap(),
            Source::Url("https://h:8443/x.aci".into())
        );
        assert!(matches!(
            Source::parse("example.com/app:v1").unwrap(),
            Source::Discover(n) if n.name == "example.com/app"
        ));
        assert!(Source::parse("https:///x.aci").is_err());
    }
}
