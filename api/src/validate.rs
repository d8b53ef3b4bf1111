//! Request checks: a value no pod, image or event could have is the caller's mistake
//! (INVALID_ARGUMENT, naming the field), and bounded sizes keep one request from making the
//! service compare megabytes against every pod. The gRPC layer already caps a request at
//! [`crate::MAX_REQUEST_BYTES`].

use tonic::Status;

use crate::v1alpha as api;

/// Filters in one request.
const MAX_FILTERS: usize = 64;
/// Values in one repeated field of a filter.
const MAX_VALUES: usize = 256;
/// Bytes in one string value (an appc name is at most a few hundred; a cgroup path a few KiB).
const MAX_STRING: usize = 4096;

fn bad(field: &str, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {why}"))
}

fn strings(field: &str, v: &[String]) -> Result<(), Status> {
    if v.len() > MAX_VALUES {
        return Err(bad(field, format!("more than {MAX_VALUES} values")));
    }
    for s in v {
        if s.len() > MAX_STRING {
            return Err(bad(
                field,
                format!("a value longer than {MAX_STRING} bytes"),
            ));
        }
        if s.chars().any(|c| c.is_control()) {
            return Err(bad(field, "a value with control characters"));
        }
    }
    Ok(())
}

fn key_values(field: &str, v: &[api::KeyValue]) -> Result<(), Status> {
    if v.len() > MAX_VALUES {
        return Err(bad(field, format!("more than {MAX_VALUES} values")));
    }
    for kv in v {
        if kv.key.is_empty() {
            return Err(bad(field, "an empty key"));
        }
        if kv.key.len() + kv.value.len() > MAX_STRING {
            return Err(bad(field, format!("a pair longer than {MAX_STRING} bytes")));
        }
    }
    Ok(())
}

fn filters_len(n: usize) -> Result<(), Status> {
    if n > MAX_FILTERS {
        return Err(bad("filters", format!("more than {MAX_FILTERS} filters")));
    }
    Ok(())
}

/// A pod UUID as rkt prints it (36 characters, hex and dashes).
pub fn pod_uuid(field: &str, s: &str) -> Result<(), Status> {
    match uuid::Uuid::parse_str(s) {
        Ok(u) if u.hyphenated().to_string() == s.to_ascii_lowercase() => Ok(()),
        _ => Err(bad(
            field,
            format!(
                "{:?} is not a pod UUID",
                s.chars().take(64).collect::<String>()
            ),
        )),
    }
}

/// `sha256-<hex>` (full, or a prefix of at least 12 hex digits as the CLI takes), or an image
/// name (`name[:tag]`, no spaces or control characters).
pub fn image_ref(field: &str, s: &str) -> Result<(), Status> {
    if s.is_empty() {
        return Err(bad(field, "empty"));
    }
    if s.len() > 1024 || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad(field, "not an image ID or name"));
    }
    if let Some(hex) = s.strip_prefix("sha256-") {
        if hex.len() < 12 || hex.len() > 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad(field, "an image ID is sha256- and 12 to 64 hex digits"));
        }
    }
    Ok(())
}

/// An appc app name: lower-case letters, digits and `-._~/:`, at most 512 bytes.
pub fn app_name(field: &str, s: &str) -> Result<(), Status> {
    let ok = s.len() <= 512
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._~/:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(bad(field, "not an app name"))
    }
}

fn time(field: &str, t: i64) -> Result<(), Status> {
    if t < 0 {
        return Err(bad(field, "negative timestamp"));
    }
    Ok(())
}

pub fn list_pods(r: &api::ListPodsRequest) -> Result<(), Status> {
    filters_len(r.filters.len())?;
    for f in &r.filters {
        strings("ids", &f.ids)?;
        for id in &f.ids {
            pod_uuid("ids", id)?;
        }
        if f.states.len() > MAX_VALUES {
            return Err(bad("states", format!("more than {MAX_VALUES} values")));
        }
        for s in &f.states {
            if api::PodState::try_from(*s).is_err() {
                return Err(bad("states", format!("{s} is not a PodState")));
            }
        }
        strings("app_names", &f.app_names)?;
        strings("image_ids", &f.image_ids)?;
        strings("network_names", &f.network_names)?;
        key_values("annotations", &f.annotations)?;
        strings("cgroups", &f.cgroups)?;
        strings("pod_sub_cgroups", &f.pod_sub_cgroups)?;
    }
    Ok(())
}

pub fn list_images(r: &api::ListImagesRequest) -> Result<(), Status> {
    filters_len(r.filters.len())?;
    for f in &r.filters {
        strings("ids", &f.ids)?;
        strings("prefixes", &f.prefixes)?;
        strings("base_names", &f.base_names)?;
        strings("keywords", &f.keywords)?;
        strings("full_names", &f.full_names)?;
        key_values("labels", &f.labels)?;
        key_values("annotations", &f.annotations)?;
        time("imported_after", f.imported_after)?;
        time("imported_before", f.imported_before)?;
    }
    Ok(())
}

pub fn event_filter(f: &api::EventFilter) -> Result<(), Status> {
    if f.types.len() > MAX_VALUES {
        return Err(bad("types", format!("more than {MAX_VALUES} values")));
    }
    for t in &f.types {
        if api::EventType::try_from(*t).is_err() {
            return Err(bad("types", format!("{t} is not an EventType")));
        }
    }
    strings("ids", &f.ids)?;
    strings("names", &f.names)?;
    time("since_time", f.since_time)?;
    time("until_time", f.until_time)?;
    Ok(())
}

pub fn get_logs(r: &api::GetLogsRequest) -> Result<(), Status> {
    pod_uuid("pod_id", &r.pod_id)?;
    if !r.app_name.is_empty() {
        app_name("app_name", &r.app_name)?;
    }
    if r.lines < 0 {
        return Err(bad("lines", "negative"));
    }
    time("since_time", r.since_time)?;
    time("until_time", r.until_time)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_no_pod_can_match() {
        assert!(pod_uuid("id", "0b0c6b8e-6b0c-4d58-9f1d-2c4f3f6f2a11").is_ok());
        assert!(pod_uuid("id", "0b0c6b8e").is_err());
        assert!(pod_uuid("id", &"a".repeat(100_000)).is_err());
        let huge = api::ListPodsRequest {
            filters: vec![api::PodFilter {
                app_names: vec!["x".repeat(MAX_STRING + 1)],
                ..Default::default()
            }],
            detail: false,
        };
        assert_eq!(
            list_pods(&huge).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let state = api::ListPodsRequest {
            filters: vec![api::PodFilter {
                states: vec![99],
                ..Default::default()
            }],
            detail: false,
        };
        assert!(list_pods(&state).is_err());
        assert!(image_ref("id", "sha256-abc").is_err());
        assert!(image_ref("id", "sha256-0123456789ab").is_ok());
        assert!(image_ref("id", "example.com/busybox:latest").is_ok());
        assert!(app_name("app", "Bad Name").is_err());
    }
}
