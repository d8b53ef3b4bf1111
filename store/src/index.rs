//! The image index: SQLite (WAL, busy timeout) at `cas/db/index.sqlite`. Every write is one
//! `BEGIN IMMEDIATE` transaction, so concurrent rkt processes serialise on SQLite's lock and a
//! crash leaves either the old or the new state.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context};
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::{ImageInfo, Result};

/// One layer blob of an image, in application order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Layer {
    pub digest: String,
    /// OCI media type, or `application/vnd.appc.aci` for an ACI file (entries under `rootfs/`).
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub size: u64,
}

pub const ACI_MEDIA_TYPE: &str = "application/vnd.appc.aci";

/// Everything the store keeps about an image.
#[derive(Debug, Clone)]
pub struct Record {
    pub id: String,
    pub name: String,
    pub tag: String,
    pub size: u64,
    pub import_time: DateTime<Utc>,
    pub last_used: DateTime<Utc>,
    pub origin: String,
    /// `oci` (OCI/Docker manifest + config + layers) or `aci`.
    pub kind: String,
    pub appc_manifest: String,
    /// OCI image manifest blob (None for ACI).
    pub manifest_digest: Option<String>,
    pub config_digest: Option<String>,
    pub layers: Vec<Layer>,
}

impl Record {
    pub fn info(&self) -> ImageInfo {
        ImageInfo {
            id: self.id.clone(),
            name: format!("{}:{}", self.name, self.tag),
            size: self.size,
            import_time: self.import_time,
            last_used: self.last_used,
            origin: self.origin.clone(),
        }
    }
}

pub struct Index {
    conn: Connection,
}

fn ts(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(i64::MAX)
}

fn from_ts(n: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(n)
}

const COLS: &str = "id, name, tag, size, import_time, last_used, origin, kind, appc_manifest, \
                    manifest_digest, config_digest, layers";

fn row_to_record(r: &rusqlite::Row) -> rusqlite::Result<Record> {
    let layers: String = r.get(11)?;
    Ok(Record {
        id: r.get(0)?,
        name: r.get(1)?,
        tag: r.get(2)?,
        size: r.get::<_, i64>(3)? as u64,
        import_time: from_ts(r.get(4)?),
        last_used: from_ts(r.get(5)?),
        origin: r.get(6)?,
        kind: r.get(7)?,
        appc_manifest: r.get(8)?,
        manifest_digest: r.get(9)?,
        config_digest: r.get(10)?,
        layers: serde_json::from_str(&layers).unwrap_or_default(),
    })
}

impl Index {
    pub fn open(path: &Path) -> Result<Index> {
        let conn = Connection::open(path)
            .with_context(|| format!("opening image index {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(60))?;
        // Every rkt command opens and closes the index; checkpointing at each close would cost two
        // fsyncs per command. The WAL is replayed by the next opener and auto-checkpointed as it grows.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )?;
        // journal_mode=WAL needs the write lock the first time; the busy timeout covers the race.
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .context("enabling WAL on the image index")?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(anyhow!("image index refused WAL mode (got {mode})"));
        }
        conn.execute_batch(
            "PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS images (
                id TEXT PRIMARY KEY, name TEXT NOT NULL, tag TEXT NOT NULL, size INTEGER NOT NULL,
                import_time INTEGER NOT NULL, last_used INTEGER NOT NULL, origin TEXT NOT NULL,
                kind TEXT NOT NULL, appc_manifest TEXT NOT NULL, manifest_digest TEXT,
                config_digest TEXT, layers TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS names (
                name TEXT NOT NULL, tag TEXT NOT NULL, id TEXT NOT NULL, added INTEGER NOT NULL,
                PRIMARY KEY (name, tag, id));",
        )
        .context("creating the image index schema")?;
        Ok(Index { conn })
    }

    fn write<T>(&self, f: impl FnOnce(&rusqlite::Transaction) -> rusqlite::Result<T>) -> Result<T> {
        // `unchecked_transaction` because we hold &self; the connection is not shared across threads.
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .context("locking the image index")?;
        let v = f(&tx).context("writing the image index")?;
        tx.commit().context("committing the image index")?;
        Ok(v)
    }

    /// Adds the image (or, if its id is known, just records the extra name and refreshes origin).
    pub fn insert(&self, r: &Record) -> Result<()> {
        let layers = serde_json::to_string(&r.layers)?;
        self.write(|tx| {
            tx.execute(
                "INSERT INTO images (id, name, tag, size, import_time, last_used, origin, kind,
                    appc_manifest, manifest_digest, config_digest, layers)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT(id) DO NOTHING",
                params![
                    r.id,
                    r.name,
                    r.tag,
                    r.size as i64,
                    ts(r.import_time),
                    ts(r.last_used),
                    r.origin,
                    r.kind,
                    r.appc_manifest,
                    r.manifest_digest,
                    r.config_digest,
                    layers
                ],
            )?;
            tx.execute(
                "INSERT OR REPLACE INTO names (name, tag, id, added) VALUES (?1, ?2, ?3, ?4)",
                params![r.name, r.tag, r.id, ts(Utc::now())],
            )?;
            Ok(())
        })
    }

    /// Records that `name:tag` (also) refers to `id`, most recently. Nothing is written (and
    /// nothing fsynced) when it already does: `rkt run oci:PATH` re-imports its image at every
    /// run, and finding it unchanged is a read. (A writer re-pointing the name in between simply
    /// comes after us.)
    pub fn add_name(&self, name: &str, tag: &str, id: &str) -> Result<()> {
        if self.latest_name_id(name, tag)?.as_deref() == Some(id) {
            return Ok(());
        }
        self.write(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO names (name, tag, id, added) VALUES (?1, ?2, ?3, ?4)",
                params![name, tag, id, ts(Utc::now())],
            )
        })?;
        Ok(())
    }

    pub fn record(&self, id: &str) -> Result<Record> {
        self.get_record(id)?.ok_or_else(|| {
            crate::Error::new(
                crate::ErrorKind::NotFound,
                format!("image {id:?} not found in the store"),
            )
            .into()
        })
    }

    pub fn get_record(&self, id: &str) -> Result<Option<Record>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {COLS} FROM images WHERE id = ?1"),
                [id],
                row_to_record,
            )
            .optional()?)
    }

    pub fn get(&self, id: &str) -> Result<Option<ImageInfo>> {
        Ok(self.get_record(id)?.map(|r| r.info()))
    }

    /// The id `name:tag` most recently pointed at (of an image still in the index).
    fn latest_name_id(&self, name: &str, tag: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT n.id FROM names n JOIN images i ON i.id = n.id
                 WHERE n.name = ?1 AND n.tag = ?2 ORDER BY n.added DESC LIMIT 1",
                [name, tag],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The image `name:tag` most recently pointed at.
    pub fn by_name(&self, name: &str, tag: &str) -> Result<Option<ImageInfo>> {
        match self.latest_name_id(name, tag)? {
            Some(id) => self.get(&id),
            None => Ok(None),
        }
    }

    pub fn ids_with_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        let mut st = self
            .conn
            .prepare("SELECT id FROM images WHERE substr(id, 1, length(?1)) = ?1")?;
        let ids = st
            .query_map([prefix], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(ids)
    }

    pub fn list(&self) -> Result<Vec<ImageInfo>> {
        Ok(self.records()?.iter().map(Record::info).collect())
    }

    pub fn records(&self) -> Result<Vec<Record>> {
        let mut st = self
            .conn
            .prepare(&format!("SELECT {COLS} FROM images ORDER BY import_time"))?;
        let v = st
            .query_map([], row_to_record)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(v)
    }

    /// Records a use of the image. Every pod start does this, so it is committed with
    /// synchronous=NORMAL: in WAL mode that is still crash-consistent, and losing a last-used
    /// timestamp to a power cut only makes `image gc` see the image as a little older.
    pub fn touch(&self, id: &str) -> Result<()> {
        self.conn.execute_batch("PRAGMA synchronous=NORMAL")?;
        let res = self.write(|tx| {
            tx.execute(
                "UPDATE images SET last_used = ?1 WHERE id = ?2",
                params![ts(Utc::now()), id],
            )
        });
        self.conn.execute_batch("PRAGMA synchronous=FULL")?;
        res?;
        Ok(())
    }

    pub fn remove(&self, id: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute("DELETE FROM names WHERE id = ?1", [id])?;
            tx.execute("DELETE FROM images WHERE id = ?1", [id])
        })?;
        Ok(())
    }

    /// Digests of every blob some image needs.
    pub fn referenced_blobs(&self) -> Result<HashSet<String>> {
        let mut set = HashSet::new();
        for r in self.records()? {
            set.extend(r.manifest_digest.clone());
            set.extend(r.config_digest.clone());
            set.extend(r.layers.iter().map(|l| l.digest.clone()));
        }
        Ok(set)
    }

    /// `PRAGMA integrity_check` (tests and `rkt image list --debug` sanity).
    pub fn integrity_ok(&self) -> Result<bool> {
        let s: String = self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        Ok(s == "ok")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: String, name: &str) -> Record {
        let now = Utc::now();
        Record {
            id,
            name: name.into(),
            tag: "latest".into(),
            size: 1,
            import_time: now,
            last_used: now,
            origin: "test".into(),
            kind: "oci".into(),
            appc_manifest: "{}".into(),
            manifest_digest: None,
            config_digest: None,
            layers: vec![],
        }
    }

    #[test]
    fn add_name_writes_only_when_the_name_moves() {
        let t = tempfile::tempdir().unwrap();
        let ix = Index::open(&t.path().join("index.sqlite")).unwrap();
        let (a, b) = (format!("sha256-{:064x}", 1), format!("sha256-{:064x}", 2));
        ix.insert(&rec(a.clone(), "img")).unwrap();
        ix.insert(&rec(b.clone(), "other")).unwrap();
        let before = ix.conn.total_changes();
        // `rkt run oci:PATH` finding its image as it left it: a read, no commit.
        ix.add_name("img", "latest", &a).unwrap();
        assert_eq!(ix.conn.total_changes(), before);
        // Moving the name (and back) is a real write.
        ix.add_name("img", "latest", &b).unwrap();
        assert_eq!(ix.by_name("img", "latest").unwrap().unwrap().id, b);
        ix.add_name("img", "latest", &a).unwrap();
        assert_eq!(ix.by_name("img", "latest").unwrap().unwrap().id, a);
        assert!(ix.conn.total_changes() > before);
    }

    #[test]
    fn concurrent_writers_on_separate_connections() {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("index.sqlite");
        let threads: Vec<_> = (0..8)
            .map(|n| {
                let db = db.clone();
                std::thread::spawn(move || {
                    let ix = Index::open(&db).unwrap();
                    for i in 0..25 {
                        // Half the ids collide across threads: inserts must be idempotent.
                        let id =
                            format!("sha256-{:064x}", if i % 2 == 0 { i } else { n * 1000 + i });
                        ix.insert(&rec(id.clone(), &format!("img{n}"))).unwrap();
                        ix.touch(&id).unwrap();
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        let ix = Index::open(&db).unwrap();
        assert!(ix.integrity_ok().unwrap());
        // 13 shared even ids + 8 threads × 12 odd ids.
        assert_eq!(ix.records().unwrap().len(), 13 + 8 * 12);
        assert!(ix.by_name("img3", "latest").unwrap().is_some());
        assert_eq!(
            ix.ids_with_prefix("sha256-0000").unwrap().len(),
            13 + 8 * 12
        );
    }
}
