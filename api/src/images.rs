//! Images as the v1alpha API shows them, read from the store (`rkt_store`), and rkt's ImageFilter
//! semantics.

use rkt_store::{ImageInfo, Store};

use crate::pods::{key_values, key_values_contain};
use crate::v1alpha as api;

/// Every image in the store is kept as an appc manifest plus layers, so rkt reports them all as
/// appc images of the appc spec version the manifests follow.
pub fn appc_format() -> api::ImageFormat {
    api::ImageFormat {
        r#type: api::ImageType::Appc as i32,
        version: rkt_schema::AC_VERSION.to_string(),
    }
}

/// The store at `dir`, or None when there is none yet (the service never creates one).
pub fn open_store(dir: &std::path::Path) -> anyhow::Result<Option<Store>> {
    if !dir.join("cas/db/index.sqlite").exists() {
        return Ok(None);
    }
    Ok(Some(Store::open(dir)?))
}

pub fn to_api(store: &Store, info: &ImageInfo) -> anyhow::Result<api::Image> {
    let m = store.manifest(&info.id)?;
    let version = rkt_schema::lookup(&m.labels, "version").unwrap_or("latest");
    Ok(api::Image {
        base_format: Some(appc_format()),
        id: info.id.clone(),
        name: m.name.clone(),
        version: version.to_string(),
        import_timestamp: info.import_time.timestamp(),
        // What `rkt image cat-manifest` prints.
        manifest: serde_json::to_vec(&m)?,
        size: i64::try_from(info.size).unwrap_or(i64::MAX),
        annotations: key_values(&m.annotations),
        labels: key_values(&m.labels),
    })
}

fn base_name(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// rkt's ImageFilter: every non-empty condition must hold; within one, ids, full names, prefixes,
/// base names and keywords match any of those given, labels and annotations all of them; import
/// times are exclusive bounds in seconds.
pub fn matches(i: &api::Image, f: &api::ImageFilter) -> bool {
    (f.ids.is_empty() || f.ids.contains(&i.id))
        && (f.full_names.is_empty() || f.full_names.contains(&i.name))
        && (f.prefixes.is_empty() || f.prefixes.iter().any(|p| i.name.starts_with(p.as_str())))
        && (f.base_names.is_empty() || f.base_names.iter().any(|b| b == base_name(&i.name)))
        && (f.keywords.is_empty() || f.keywords.iter().any(|k| i.name.contains(k.as_str())))
        && (f.imported_after <= 0 || i.import_timestamp > f.imported_after)
        && (f.imported_before <= 0 || i.import_timestamp < f.imported_before)
        && key_values_contain(&i.labels, &f.labels)
        && key_values_contain(&i.annotations, &f.annotations)
}

pub fn matches_any(i: &api::Image, filters: &[api::ImageFilter]) -> bool {
    filters.is_empty() || filters.iter().any(|f| matches(i, f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(name: &str, t: i64) -> api::Image {
        api::Image {
            id: "sha256-ab".into(),
            name: name.into(),
            import_timestamp: t,
            labels: vec![api::KeyValue {
                key: "version".into(),
                value: "1".into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn rkt_filter_semantics() {
        let i = img("coreos.com/etcd", 100);
        let f = |g: fn(&mut api::ImageFilter)| {
            let mut f = api::ImageFilter::default();
            g(&mut f);
            matches(&i, &f)
        };
        assert!(f(|_| {}));
        assert!(f(|f| f.base_names = vec!["etcd".into()]));
        assert!(!f(|f| f.base_names = vec!["etc".into()]));
        assert!(f(|f| f.keywords = vec!["tcd".into(), "zzz".into()]));
        assert!(f(|f| f.prefixes = vec!["coreos.com/".into()]));
        assert!(!f(|f| f.full_names = vec!["etcd".into()]));
        assert!(f(|f| f.imported_after = 99));
        assert!(!f(|f| f.imported_after = 100));
        assert!(!f(|f| f.imported_before = 100));
        assert!(f(|f| f.labels = vec![api::KeyValue {
            key: "version".into(),
            value: "1".into()
        }]));
        assert!(!f(|f| f.labels = vec![api::KeyValue {
            key: "version".into(),
            value: "2".into()
        }]));
        // Conditions within a filter are ANDed, filters ORed.
        assert!(!f(|f| {
            f.base_names = vec!["etcd".into()];
            f.keywords = vec!["zzz".into()];
        }));
        let no = api::ImageFilter {
            keywords: vec!["zzz".into()],
            ..Default::default()
        };
        let yes = api::ImageFilter {
            keywords: vec!["etcd".into()],
            ..Default::default()
        };
        assert!(matches_any(&i, &[no, yes]));
    }
}
