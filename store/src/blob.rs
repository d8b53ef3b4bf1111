//! Content-addressed blobs at `blobs/sha256/<hex>`: written to a temp file while hashing, checked
//! against the expected digest and size, fsynced, then renamed into place. A mismatch removes the
//! temp file, so nothing half-written or unverified is ever visible under `blobs/`.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use crate::Result;

pub struct BlobStore {
    dir: PathBuf,
    tmp: PathBuf,
}

/// Checks `sha256:<64 hex>` (the only algorithm we accept) and returns the hex part.
pub fn digest_hex(digest: &str) -> Result<&str> {
    match digest.strip_prefix("sha256:") {
        Some(h)
            if h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(h)
        }
        _ => bail!("unsupported or malformed digest {digest:?} (want sha256:<64 hex>)"),
    }
}

/// A reader that hashes everything read through it.
pub struct HashingReader<R> {
    pub inner: R,
    pub hasher: Sha256,
    pub count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
    pub fn digest(self) -> (String, u64) {
        (
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.count,
        )
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

impl BlobStore {
    pub fn new(dir: PathBuf, tmp: PathBuf) -> Self {
        BlobStore { dir, tmp }
    }

    pub fn path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.dir.join("sha256").join(digest_hex(digest)?))
    }

    pub fn has(&self, digest: &str) -> bool {
        self.path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    pub fn open(&self, digest: &str) -> Result<File> {
        let p = self.path(digest)?;
        File::open(&p).with_context(|| format!("blob {digest} missing from the store"))
    }

    pub fn read(&self, digest: &str) -> Result<Vec<u8>> {
        let p = self.path(digest)?;
        std::fs::read(&p).with_context(|| format!("blob {digest} missing from the store"))
    }

    /// Stores `r`'s content. With `expected`, the digest (and size, if given) must match or the
    /// blob is refused and nothing is kept. Returns (digest, size).
    pub fn put(
        &self,
        r: &mut dyn Read,
        expected: Option<&str>,
        expected_size: Option<u64>,
        mut progress: impl FnMut(u64),
    ) -> Result<(String, u64)> {
        if let Some(d) = expected {
            digest_hex(d)?;
        }
        let mut tmp = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(&self.tmp)
            .context("creating a temp file in the store")?;
        let mut hr = HashingReader::new(r);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match hr.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("reading blob data"),
            };
            tmp.write_all(&buf[..n]).context("writing a blob")?;
            progress(n as u64);
            if let Some(max) = expected_size {
                if hr.count > max {
                    bail!(
                        "blob {} is larger than the {max} bytes its descriptor declares",
                        expected.unwrap_or("?")
                    );
                }
            }
        }
        let (digest, size) = hr.digest();
        if let Some(want) = expected {
            if want != digest {
                return Err(crate::Error::new(
                    crate::ErrorKind::Refused,
                    format!("digest mismatch: expected {want}, content hashes to {digest}"),
                )
                .into());
            }
        }
        if let Some(want) = expected_size {
            if want != size {
                return Err(crate::Error::new(
                    crate::ErrorKind::Refused,
                    format!("size mismatch for {digest}: descriptor says {want} bytes, got {size}"),
                )
                .into());
            }
        }
        let dest = self.path(&digest)?;
        if dest.is_file() {
            return Ok((digest, size));
        }
        tmp.as_file().sync_all().context("fsync blob")?;
        tmp.persist(&dest)
            .map_err(|e| e.error)
            .with_context(|| format!("publishing blob {digest}"))?;
        sync_dir(dest.parent().expect("blob has a parent"));
        Ok((digest, size))
    }

    pub fn put_bytes(&self, data: &[u8], expected: Option<&str>) -> Result<(String, u64)> {
        self.put(&mut &data[..], expected, Some(data.len() as u64), |_| {})
    }

    /// Every stored digest.
    pub fn all(&self) -> Result<Vec<String>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(self.dir.join("sha256"))? {
            let e = e?;
            if let Some(n) = e.file_name().to_str() {
                if n.len() == 64 {
                    v.push(format!("sha256:{n}"));
                }
            }
        }
        Ok(v)
    }

    pub fn remove(&self, digest: &str) -> Result<()> {
        match std::fs::remove_file(self.path(digest)?) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

/// Best-effort fsync of a directory so a rename inside it survives a crash.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatch_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("b/sha256")).unwrap();
        std::fs::create_dir_all(t.path().join("tmp")).unwrap();
        let bs = BlobStore::new(t.path().join("b"), t.path().join("tmp"));
        let wrong = format!("sha256:{}", "0".repeat(64));
        let e = bs.put_bytes(b"hello", Some(&wrong)).unwrap_err();
        assert!(e.to_string().contains("digest mismatch"), "{e}");
        // Right digest, wrong size.
        let (d, _) = {
            let mut h = HashingReader::new(&b"hello"[..]);
            std::io::copy(&mut h, &mut std::io::sink()).unwrap();
            h.digest()
        };
        let e = bs
            .put(&mut &b"hello"[..], Some(&d), Some(4), |_| {})
            .unwrap_err();
        assert!(e.to_string().contains("larger"), "{e}");
        assert!(bs.all().unwrap().is_empty());
        assert_eq!(std::fs::read_dir(t.path().join("tmp")).unwrap().count(), 0);
        let (d2, n) = bs.put_bytes(b"hello", Some(&d)).unwrap();
        assert_eq!((d2.as_str(), n), (d.as_str(), 5));
        assert_eq!(bs.read(&d).unwrap(), b"hello");
    }
}
