//! Safe layer extraction. Every entry is created relative to a directory fd reached from the tree
//! root one component at a time with `O_NOFOLLOW|O_DIRECTORY`, so nothing is ever written through
//! a symlink (planted by an earlier layer or an earlier entry of the same layer). Absolute paths,
//! `..`, and symlink/hardlink targets that leave the tree are refused with an error naming the entry.
//! OCI whiteouts (`.wh.NAME`, `.wh..wh..opq`) delete what lower layers put there.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use anyhow::{anyhow, bail, Context};
use sha2::{Digest, Sha256};

use crate::Result;

/// Content hashes of regular files written during extraction, keyed by (dev, inode), so the tree
/// digest does not have to read every file a second time.
#[derive(Default)]
pub struct ContentHashes(pub HashMap<(u64, u64), [u8; 32]>);

/// Peeks at the magic bytes and wraps `r` in the matching decompressor (gzip, zstd, bzip2, xz, or
/// none).
pub fn decompress<'a>(r: impl Read + 'a) -> Result<Box<dyn Read + 'a>> {
    let mut br = BufReader::with_capacity(1 << 20, r);
    let head = br.fill_buf().context("reading layer")?.to_vec();
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(br))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::Decoder::with_buffer(br).context("zstd layer")?)
    } else if head.starts_with(b"BZh") {
        Box::new(bzip2::bufread::MultiBzDecoder::new(br))
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Box::new(xz2::bufread::XzDecoder::new_multi_decoder(br))
    } else {
        Box::new(br)
    })
}

fn cstr(s: &OsStr) -> Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| anyhow!("path {s:?} contains a NUL byte"))
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn check(r: libc::c_int) -> std::io::Result<libc::c_int> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

fn open_dir_at(dirfd: RawFd, name: &OsStr) -> Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: valid C string and dirfd; the returned fd is owned below.
    let fd = unsafe {
        libc::openat(
            dirfd,
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    check(fd).with_context(|| format!("opening directory {name:?}"))?;
    // SAFETY: fd was just returned by openat.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn lstat_at(dirfd: RawFd, name: &OsStr) -> Result<Option<libc::stat>> {
    let c = cstr(name)?;
    // SAFETY: zeroed stat is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers.
    let r = unsafe { libc::fstatat(dirfd, c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if r == 0 {
        return Ok(Some(st));
    }
    let e = errno();
    if e.raw_os_error() == Some(libc::ENOENT) {
        Ok(None)
    } else {
        Err(anyhow!(e).context(format!("stat {name:?}")))
    }
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn is_symlink(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFLNK
}

fn fstat_fd(fd: RawFd) -> Result<libc::stat> {
    // SAFETY: zeroed stat is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and pointer.
    check(unsafe { libc::fstat(fd, &mut st) }).context("fstat")?;
    Ok(st)
}

fn unlink_at(dirfd: RawFd, name: &OsStr, flags: libc::c_int) -> Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid dirfd and C string.
    check(unsafe { libc::unlinkat(dirfd, c.as_ptr(), flags) })
        .with_context(|| format!("removing {}", crate::limits::show(name)))?;
    Ok(())
}

/// Unlinks every non-directory in the directory open at `fd`; returns its subdirectories.
fn clear_files(fd: RawFd) -> Result<Vec<OsString>> {
    let p = PathBuf::from(format!("/proc/self/fd/{fd}"));
    let mut dirs = Vec::new();
    for e in std::fs::read_dir(&p).context("listing directory")? {
        let e = e?;
        if e.file_type()?.is_dir() {
            dirs.push(e.file_name());
        } else {
            unlink_at(fd, &e.file_name(), 0)?;
        }
    }
    Ok(dirs)
}

/// Removes `name` in `dirfd` (recursively for a directory) without following symlinks.
/// Iterative, with one directory fd open at a time whatever the depth (going back up through
/// `..`, checked against the device and inode seen on the way down), so a tree thousands of
/// levels deep neither exhausts fds nor the stack.
pub fn remove_at(dirfd: RawFd, name: &OsStr) -> Result<()> {
    let Some(st) = lstat_at(dirfd, name)? else {
        return Ok(());
    };
    if !is_dir(&st) {
        return unlink_at(dirfd, name, 0);
    }
    struct Frame {
        name: OsString,
        id: (u64, u64),
        pending: Vec<OsString>,
    }
    let id = |st: &libc::stat| (st.st_dev, st.st_ino);
    let mut cur = open_dir_at(dirfd, name)?;
    let mut stack = vec![Frame {
        name: name.to_os_string(),
        id: id(&fstat_fd(cur.as_raw_fd())?),
        pending: clear_files(cur.as_raw_fd())?,
    }];
    while let Some(top) = stack.last_mut() {
        if let Some(child) = top.pending.pop() {
            let sub = match open_dir_at(cur.as_raw_fd(), &child) {
                Ok(fd) => fd,
                // Replaced by a non-directory since it was listed.
                Err(_) => {
                    remove_at_leaf(cur.as_raw_fd(), &child)?;
                    continue;
                }
            };
            cur = sub;
            stack.push(Frame {
                name: child,
                id: id(&fstat_fd(cur.as_raw_fd())?),
                pending: clear_files(cur.as_raw_fd())?,
            });
            continue;
        }
        let done = stack.pop().expect("non-empty");
        // Anything created in it since it was listed goes too.
        let late = clear_files(cur.as_raw_fd())?;
        if !late.is_empty() {
            stack.push(Frame {
                pending: late,
                ..done
            });
            continue;
        }
        match stack.last() {
            None => return unlink_at(dirfd, &done.name, libc::AT_REMOVEDIR),
            Some(parent) => {
                let up = open_dir_at(cur.as_raw_fd(), OsStr::new(".."))?;
                if id(&fstat_fd(up.as_raw_fd())?) != parent.id {
                    bail!("a directory moved while it was being removed");
                }
                cur = up;
                unlink_at(cur.as_raw_fd(), &done.name, libc::AT_REMOVEDIR)?;
            }
        }
    }
    Ok(())
}

fn remove_at_leaf(dirfd: RawFd, name: &OsStr) -> Result<()> {
    match lstat_at(dirfd, name)? {
        None => Ok(()),
        Some(st) if is_dir(&st) => bail!("{} keeps changing", crate::limits::show(name)),
        Some(_) => unlink_at(dirfd, name, 0),
    }
}

/// Removes `path` (a directory tree or anything else) like [`remove_at`]; missing is fine.
pub fn remove_path(path: &Path) -> Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        bail!("cannot remove {}", path.display());
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let d = match File::open(parent) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("opening {}", parent.display())),
    };
    remove_at(d.as_raw_fd(), name).with_context(|| format!("removing {}", path.display()))
}

/// Entry names of the directory open at `fd`.
fn list_dir(fd: RawFd) -> Result<Vec<OsString>> {
    // Read through /proc/self/fd so we list exactly the directory we hold open.
    let p = PathBuf::from(format!("/proc/self/fd/{fd}"));
    let mut v = Vec::new();
    for e in std::fs::read_dir(&p).context("listing directory")? {
        v.push(e?.file_name());
    }
    Ok(v)
}

/// Normalises an archive path into components: refuses absolute paths and `..`.
pub fn clean_path(p: &Path) -> Result<Vec<OsString>> {
    let mut v = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => v.push(n.to_os_string()),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                bail!("refusing archive entry {p:?}: absolute path")
            }
            Component::ParentDir => bail!("refusing archive entry {p:?}: path contains \"..\""),
        }
    }
    Ok(v)
}

/// Whether symlink `target`, placed at `link` (components), stays inside the tree when resolved
/// lexically (absolute targets resolve from the tree root, as they will inside the container).
fn symlink_stays_inside(link: &[OsString], target: &Path) -> bool {
    let mut depth: usize = if target.is_absolute() {
        0
    } else {
        link.len().saturating_sub(1)
    };
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => {
                if depth == 0 {
                    return false;
                }
                depth -= 1;
            }
            _ => {}
        }
    }
    true
}

/// Paths written by the current layer, as a trie of (parent node, name) -> node: inserting a path
/// costs its length, however deep (a set of every prefix would be quadratic in depth).
#[derive(Default)]
struct PathSet {
    nodes: HashMap<(u32, OsString), u32>,
}

impl PathSet {
    fn insert(&mut self, comps: &[OsString]) {
        let mut n = 0;
        for c in comps {
            let next = self.nodes.len() as u32 + 1;
            n = *self.nodes.entry((n, c.clone())).or_insert(next);
        }
    }
    fn find(&self, comps: &[OsString]) -> Option<u32> {
        let mut n = 0;
        for c in comps {
            n = *self.nodes.get(&(n, c.clone()))?;
        }
        Some(n)
    }
    fn has_child(&self, node: u32, name: &OsStr) -> bool {
        self.nodes.contains_key(&(node, name.to_os_string()))
    }
}

/// Counts the decompressed tar stream of one layer against its budget, and the bytes the tar
/// reader consumes between entries (headers, PAX records, GNU long names: it holds those in
/// memory) against `MAX_ENTRY_METADATA_BYTES`.
#[derive(Default)]
struct Meter {
    total: Cell<u64>,
    budget: Cell<u64>,
    in_header: Cell<bool>,
    header: Cell<u64>,
    error: RefCell<Option<String>>,
}

impl Meter {
    fn fail(&self, msg: String) -> std::io::Error {
        *self.error.borrow_mut() = Some(msg.clone());
        std::io::Error::other(msg)
    }
    /// The limit that was hit, if that is why `e` happened.
    fn explain(&self, e: anyhow::Error) -> anyhow::Error {
        match self.error.borrow().as_ref() {
            Some(m) => anyhow!("{m}"),
            None => e,
        }
    }
}

struct Metered<R> {
    inner: R,
    meter: Rc<Meter>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let m = &self.meter;
        m.total.set(m.total.get() + n as u64);
        if m.total.get() > m.budget.get() {
            return Err(m.fail(format!(
                "layer expands to more than {} bytes (limit: {}x its size, at least {} bytes)",
                m.budget.get(),
                crate::limits::MAX_EXPANSION_RATIO,
                crate::limits::MIN_LAYER_EXPANSION_BYTES
            )));
        }
        if m.in_header.get() {
            m.header.set(m.header.get() + n as u64);
            if m.header.get() > crate::limits::MAX_ENTRY_METADATA_BYTES {
                return Err(m.fail(format!(
                    "a tar entry's headers (PAX records, long names) exceed {} bytes",
                    crate::limits::MAX_ENTRY_METADATA_BYTES
                )));
            }
        }
        Ok(n)
    }
}

/// Refuses paths deeper or longer than the limits (before anything is created for them).
fn check_path_limits(raw: &Path, comps: &[OsString]) -> Result<()> {
    use crate::limits::{show, MAX_PATH_BYTES, MAX_PATH_DEPTH};
    let len: usize = comps.iter().map(|c| c.len() + 1).sum();
    if comps.len() > MAX_PATH_DEPTH {
        bail!(
            "refusing archive entry {}: {} path components (limit {MAX_PATH_DEPTH})",
            show(raw),
            comps.len()
        );
    }
    if len > MAX_PATH_BYTES {
        bail!(
            "refusing archive entry {}: path is {len} bytes long (limit {MAX_PATH_BYTES})",
            show(raw)
        );
    }
    Ok(())
}

pub struct Extractor<'h> {
    root: OwnedFd,
    privileged: bool,
    oci_whiteouts: bool,
    /// Entries are taken only from under this prefix (ACI: `rootfs`), which is stripped.
    strip: Option<OsString>,
    hashes: &'h mut ContentHashes,
    /// Paths written by the current layer: an opaque whiteout must not delete them.
    this_layer: PathSet,
    /// File bytes written by the current layer (sparse entries expand without stream bytes).
    written: u64,
    budget: u64,
}

impl<'h> Extractor<'h> {
    /// Extracts into the existing directory `root`.
    pub fn new(root: &Path, hashes: &'h mut ContentHashes) -> Result<Extractor<'h>> {
        let f = File::open(root).with_context(|| format!("opening {}", root.display()))?;
        Ok(Extractor {
            root: OwnedFd::from(f),
            // SAFETY: no preconditions.
            privileged: unsafe { libc::geteuid() } == 0,
            oci_whiteouts: true,
            strip: None,
            hashes,
            this_layer: PathSet::default(),
            written: 0,
            budget: crate::limits::MIN_LAYER_EXPANSION_BYTES,
        })
    }

    /// ACI mode: take entries under `rootfs/` only, no OCI whiteouts.
    pub fn aci(mut self) -> Self {
        self.strip = Some("rootfs".into());
        self.oci_whiteouts = false;
        self
    }

    fn strip_prefix(&self, comps: Vec<OsString>) -> Option<Vec<OsString>> {
        match &self.strip {
            None => Some(comps),
            Some(p) => {
                if comps.first() == Some(p) {
                    Some(comps[1..].to_vec())
                } else {
                    None
                }
            }
        }
    }

    /// Opens the directory `comps` (creating missing ones 0755), refusing to pass any component
    /// that is not a real directory.
    fn walk(&self, comps: &[OsString], create: bool, entry: &Path) -> Result<OwnedFd> {
        let mut fd = self.root.try_clone()?;
        for (i, c) in comps.iter().enumerate() {
            match lstat_at(fd.as_raw_fd(), c)? {
                Some(st) if is_dir(&st) => {}
                Some(st) if is_symlink(&st) => bail!(
                    "refusing archive entry {entry:?}: {:?} is a symlink, writing through it could escape the tree",
                    join(&comps[..=i])
                ),
                Some(_) => bail!(
                    "refusing archive entry {entry:?}: {:?} is not a directory",
                    join(&comps[..=i])
                ),
                None if create => {
                    let cs = cstr(c)?;
                    // SAFETY: valid fd and C string.
                    let r = unsafe { libc::mkdirat(fd.as_raw_fd(), cs.as_ptr(), 0o755) };
                    if r < 0 && errno().raw_os_error() != Some(libc::EEXIST) {
                        return Err(anyhow!(errno()).context(format!("creating {:?}", join(&comps[..=i]))));
                    }
                }
                None => bail!("archive entry {entry:?}: {:?} does not exist", join(&comps[..=i])),
            }
            fd = open_dir_at(fd.as_raw_fd(), c)
                .with_context(|| format!("archive entry {entry:?}"))?;
        }
        Ok(fd)
    }

    /// The layer stored as `stored` bytes may expand to `limits::layer_budget(stored)`.
    pub fn set_budget_for(&mut self, stored: u64) {
        self.budget = crate::limits::layer_budget(stored);
    }

    /// Sets the expansion budget of the following layers directly (bytes).
    pub fn set_budget(&mut self, bytes: u64) {
        self.budget = bytes;
    }

    /// Like `walk` without creating: None when a component is missing.
    fn walk_existing(&self, comps: &[OsString], entry: &Path) -> Result<Option<OwnedFd>> {
        let mut fd = self.root.try_clone()?;
        for (i, c) in comps.iter().enumerate() {
            match lstat_at(fd.as_raw_fd(), c)? {
                None => return Ok(None),
                Some(st) if is_dir(&st) => {}
                Some(_) => bail!(
                    "refusing archive entry {}: {} is not a directory",
                    crate::limits::show(entry),
                    crate::limits::show(join(&comps[..=i]))
                ),
            }
            fd = open_dir_at(fd.as_raw_fd(), c)?;
        }
        Ok(Some(fd))
    }

    /// Applies one layer (a tar stream, already decompressed).
    pub fn apply(&mut self, r: impl Read) -> Result<()> {
        self.this_layer = PathSet::default();
        self.written = 0;
        let meter = Rc::new(Meter::default());
        meter.budget.set(self.budget);
        let mut ar = tar::Archive::new(Metered {
            inner: r,
            meter: meter.clone(),
        });
        let mut entries = ar
            .entries()
            .map_err(|e| meter.explain(e.into()))
            .context("reading layer tar")?;
        loop {
            meter.in_header.set(true);
            meter.header.set(0);
            let next = entries.next();
            meter.in_header.set(false);
            let Some(e) = next else { break };
            let mut e = e
                .map_err(|e| meter.explain(e.into()))
                .context("reading layer tar")?;
            let r = (|| -> Result<()> {
                let raw = e.path().context("entry path")?.into_owned();
                let comps = clean_path(&raw)?;
                let Some(comps) = self.strip_prefix(comps) else {
                    return Ok(());
                };
                if comps.is_empty() {
                    return Ok(()); // the root itself
                }
                check_path_limits(&raw, &comps)?;
                self.entry(&mut e, &raw, comps)
                    .with_context(|| format!("extracting {}", crate::limits::show(&raw)))
            })();
            r.map_err(|e| meter.explain(e))?;
            // Whatever of the entry's data was not used is skipped here, not inside the tar
            // reader, so the reader's metadata count covers headers only.
            std::io::copy(&mut e, &mut std::io::sink())
                .map_err(|e| meter.explain(e.into()))
                .context("reading layer tar")?;
        }
        Ok(())
    }

    fn entry<R: Read>(
        &mut self,
        e: &mut tar::Entry<R>,
        raw: &Path,
        comps: Vec<OsString>,
    ) -> Result<()> {
        let (parent, name) = comps.split_at(comps.len() - 1);
        let name = &name[0];
        if self.oci_whiteouts {
            if let Some(wh) = name.as_bytes().strip_prefix(b".wh.") {
                // Validated before anything is touched: the target must be one plain name.
                let opaque = wh == b".wh..opq";
                if !opaque && wh.starts_with(b".wh.") {
                    return Ok(()); // other aufs metadata (.wh..wh.plnk ...): ignored, as Docker does
                }
                if !opaque && (wh.is_empty() || wh == b"." || wh == b".." || wh.contains(&0)) {
                    bail!(
                        "refusing archive entry {}: whiteout {} names no file",
                        crate::limits::show(raw),
                        crate::limits::show(name)
                    );
                }
                // Nothing below a missing directory to delete: do not create it.
                let Some(dir) = self.walk_existing(parent, raw)? else {
                    return Ok(());
                };
                if opaque {
                    let node = self.this_layer.find(parent);
                    for child in list_dir(dir.as_raw_fd())? {
                        if !node.is_some_and(|n| self.this_layer.has_child(n, &child)) {
                            remove_at(dir.as_raw_fd(), &child)?;
                        }
                    }
                } else {
                    remove_at(dir.as_raw_fd(), OsStr::from_bytes(wh))?;
                }
                return Ok(());
            }
        }
        let h = e.header().clone();
        let kind = h.entry_type();
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        let uid = h.uid().unwrap_or(0) as libc::uid_t;
        let gid = h.gid().unwrap_or(0) as libc::gid_t;
        let mut xattrs = Vec::new();
        if let Ok(Some(exts)) = e.pax_extensions() {
            for x in exts.flatten() {
                if let Ok(k) = x.key() {
                    if let Some(n) = k.strip_prefix("SCHILY.xattr.") {
                        xattrs.push((n.to_string(), x.value_bytes().to_vec()));
                    }
                }
            }
        }
        let dir = self.walk(parent, true, raw)?;
        let dfd = dir.as_raw_fd();
        let cname = cstr(name)?;
        let existing = lstat_at(dfd, name)?;
        // Implicit parents count as written by this layer too (an opaque whiteout keeps them).
        self.this_layer.insert(&comps);

        use tar::EntryType as T;
        match kind {
            T::Directory => {
                if !existing.as_ref().is_some_and(is_dir) {
                    if existing.is_some() {
                        remove_at(dfd, name)?;
                    }
                    // SAFETY: valid fd and C string.
                    check(unsafe { libc::mkdirat(dfd, cname.as_ptr(), 0o700) }).context("mkdir")?;
                }
                let d = open_dir_at(dfd, name)?;
                self.owner_mode_fd(d.as_raw_fd(), uid, gid, mode)?;
                set_xattrs(d.as_raw_fd(), &xattrs);
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                if existing.is_some() {
                    remove_at(dfd, name)?;
                }
                // SAFETY: valid fd and C string; the fd is owned by `f`.
                let fd = check(unsafe {
                    libc::openat(
                        dfd,
                        cname.as_ptr(),
                        libc::O_WRONLY
                            | libc::O_CREAT
                            | libc::O_EXCL
                            | libc::O_NOFOLLOW
                            | libc::O_CLOEXEC,
                        0o600,
                    )
                })
                .context("creating file")?;
                // SAFETY: fd just opened.
                let mut f = unsafe { File::from_raw_fd(fd) };
                let mut hasher = Sha256::new();
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = match e.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(err) => return Err(err).context("reading entry data"),
                    };
                    self.written += n as u64;
                    if self.written > self.budget {
                        bail!(
                            "layer expands to more than {} bytes (limit: {}x its size, at least {} bytes)",
                            self.budget,
                            crate::limits::MAX_EXPANSION_RATIO,
                            crate::limits::MIN_LAYER_EXPANSION_BYTES
                        );
                    }
                    hasher.update(&buf[..n]);
                    f.write_all(&buf[..n]).context("writing file")?;
                }
                let st = f.metadata()?;
                use std::os::unix::fs::MetadataExt;
                self.hashes
                    .0
                    .insert((st.dev(), st.ino()), hasher.finalize().into());
                self.owner_mode_fd(f.as_raw_fd(), uid, gid, mode)?;
                set_xattrs(f.as_raw_fd(), &xattrs);
                if let Ok(mtime) = h.mtime() {
                    let ts = [
                        libc::timespec {
                            tv_sec: mtime as i64,
                            tv_nsec: 0,
                        },
                        libc::timespec {
                            tv_sec: mtime as i64,
                            tv_nsec: 0,
                        },
                    ];
                    // SAFETY: valid fd and array of two timespecs.
                    unsafe { libc::futimens(f.as_raw_fd(), ts.as_ptr()) };
                }
            }
            T::Symlink => {
                let target = e
                    .link_name()
                    .context("symlink target")?
                    .ok_or_else(|| anyhow!("symlink without a target"))?
                    .into_owned();
                if !symlink_stays_inside(&comps, &target) {
                    bail!("refusing archive entry {raw:?}: symlink target {target:?} escapes the tree");
                }
                if existing.is_some() {
                    remove_at(dfd, name)?;
                }
                let ct = cstr(target.as_os_str())?;
                // SAFETY: valid C strings and fd.
                check(unsafe { libc::symlinkat(ct.as_ptr(), dfd, cname.as_ptr()) })
                    .context("symlink")?;
                if self.privileged {
                    // SAFETY: as above; NOFOLLOW changes the link itself.
                    check(unsafe {
                        libc::fchownat(dfd, cname.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW)
                    })
                    .context("chown symlink")?;
                }
            }
            T::Link => {
                let target = e
                    .link_name()
                    .context("hardlink target")?
                    .ok_or_else(|| anyhow!("hardlink without a target"))?
                    .into_owned();
                let tcomps = clean_path(&target).map_err(|_| {
                    anyhow!("refusing archive entry {raw:?}: hardlink target {target:?} escapes the tree")
                })?;
                let tcomps = self.strip_prefix(tcomps).ok_or_else(|| {
                    anyhow!("refusing archive entry {raw:?}: hardlink target {target:?} is outside rootfs/")
                })?;
                if tcomps.is_empty() {
                    bail!("refusing archive entry {raw:?}: hardlink to the tree root");
                }
                check_path_limits(&target, &tcomps)?;
                let (tp, tn) = tcomps.split_at(tcomps.len() - 1);
                let tdir = self.walk(tp, false, raw)?;
                match lstat_at(tdir.as_raw_fd(), &tn[0])? {
                    None => bail!("hardlink target {target:?} does not exist"),
                    Some(st) if is_dir(&st) => bail!("hardlink target {target:?} is a directory"),
                    _ => {}
                }
                if tcomps == comps {
                    return Ok(());
                }
                if existing.is_some() {
                    remove_at(dfd, name)?;
                }
                let ctn = cstr(&tn[0])?;
                // SAFETY: valid fds and C strings; flags 0 = never follow a symlink target.
                check(unsafe {
                    libc::linkat(tdir.as_raw_fd(), ctn.as_ptr(), dfd, cname.as_ptr(), 0)
                })
                .context("hardlink")?;
            }
            T::Char | T::Block | T::Fifo => {
                let fmt = match kind {
                    T::Char => libc::S_IFCHR,
                    T::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                if existing.is_some() {
                    remove_at(dfd, name)?;
                }
                if fmt != libc::S_IFIFO {
                    // Device nodes from images are never created: a node in the tree store
                    // would open a host device for whoever reaches it, and a pod gets the
                    // devices it may use from its runtime (as rootless podman, which skips
                    // them too). The entry still replaces what lower layers had there.
                    return Ok(());
                }
                let dev = libc::makedev(
                    h.device_major().ok().flatten().unwrap_or(0),
                    h.device_minor().ok().flatten().unwrap_or(0),
                );
                // SAFETY: valid fd and C string.
                check(unsafe { libc::mknodat(dfd, cname.as_ptr(), fmt | mode, dev) })
                    .context("mknod")?;
                if self.privileged {
                    // SAFETY: as above.
                    check(unsafe {
                        libc::fchownat(dfd, cname.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW)
                    })
                    .context("chown")?;
                }
                // SAFETY: the node was just created (not a symlink).
                check(unsafe { libc::fchmodat(dfd, cname.as_ptr(), mode, 0) }).context("chmod")?;
            }
            _ => {} // pax/GNU metadata entries are consumed by the tar reader; others are ignored
        }
        Ok(())
    }

    fn owner_mode_fd(&self, fd: RawFd, uid: u32, gid: u32, mode: u32) -> Result<()> {
        if self.privileged {
            // SAFETY: valid fd.
            check(unsafe { libc::fchown(fd, uid, gid) }).context("chown")?;
        }
        // chmod after chown: chown clears setuid/setgid bits.
        // SAFETY: valid fd.
        check(unsafe { libc::fchmod(fd, mode) }).context("chmod")?;
        Ok(())
    }
}

fn set_xattrs(fd: RawFd, xattrs: &[(String, Vec<u8>)]) {
    for (k, v) in xattrs {
        if let Ok(ck) = CString::new(k.as_str()) {
            // Best effort: the filesystem may not support the namespace (e.g. trusted.* unprivileged).
            // SAFETY: valid fd, C string and buffer.
            unsafe { libc::fsetxattr(fd, ck.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
        }
    }
}

fn join(c: &[OsString]) -> PathBuf {
    c.iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn hdr(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_500_000_000);
        h
    }

    /// Builds a tar from (path, kind, data-or-link) triples, writing names raw (no sanitising).
    fn tar_of(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut h = match kind {
                tar::EntryType::Regular => hdr(*kind, data.len() as u64, 0o644),
                tar::EntryType::Directory => hdr(*kind, 0, 0o755),
                _ => hdr(*kind, 0, 0o777),
            };
            // Write the name bytes directly so hostile names are not normalised by the builder.
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name = [0; 100];
            gnu.name[..path.len()].copy_from_slice(path.as_bytes());
            if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
                gnu.linkname = [0; 100];
                gnu.linkname[..data.len()].copy_from_slice(data.as_bytes());
                h.set_cksum();
                b.append(&h, std::io::empty()).unwrap();
            } else if *kind == tar::EntryType::Regular {
                h.set_cksum();
                b.append(&h, data.as_bytes()).unwrap();
            } else {
                h.set_cksum();
                b.append(&h, std::io::empty()).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let outside = t.path().join("outside");
        std::fs::create_dir(&root).unwrap();
        std::fs::create_dir(&outside).unwrap();
        (t, root, outside)
    }

    fn apply(root: &Path, layers: &[Vec<u8>]) -> Result<()> {
        let mut h = ContentHashes::default();
        let mut x = Extractor::new(root, &mut h)?;
        for l in layers {
            x.apply(&l[..])?;
        }
        Ok(())
    }

    fn assert_refused(root: &Path, outside: &Path, layers: &[Vec<u8>], msg: &str) {
        let err = apply(root, layers).expect_err("hostile archive must be refused");
        let s = format!("{err:#}");
        assert!(s.contains(msg), "error {s:?} should mention {msg:?}");
        assert_eq!(
            std::fs::read_dir(outside).unwrap().count(),
            0,
            "something was written outside the tree"
        );
    }

    use tar::EntryType as T;

    #[test]
    fn refuses_absolute_and_dotdot() {
        let (_t, root, outside) = setup();
        let out = outside.to_str().unwrap().to_string();
        assert_refused(
            &root,
            &outside,
            &[tar_of(&[(&format!("{out}/x"), T::Regular, "x")])],
            "absolute path",
        );
        assert_refused(
            &root,
            &outside,
            &[tar_of(&[("../outside/x", T::Regular, "x")])],
            "\"..\"",
        );
        assert_refused(
            &root,
            &outside,
            &[tar_of(&[("a/../../outside/x", T::Regular, "x")])],
            "\"..\"",
        );
    }

    #[test]
    fn refuses_write_through_symlink_same_layer_and_earlier_layer() {
        let (_t, root, outside) = setup();
        let out = outside.to_str().unwrap().to_string();
        // Absolute symlinks are fine as links (they resolve inside the container) but must never
        // be written through.
        let same = tar_of(&[("evil", T::Symlink, &out), ("evil/pwned", T::Regular, "x")]);
        assert_refused(&root, &outside, &[same], "is a symlink");
        let (_t, root, outside) = setup();
        let out = outside.to_str().unwrap().to_string();
        let l1 = tar_of(&[("evil", T::Symlink, &out)]);
        let l2 = tar_of(&[("evil/pwned", T::Regular, "x")]);
        assert_refused(&root, &outside, &[l1, l2], "is a symlink");
        // A directory replaced by a symlink, then written under.
        let (_t, root, outside) = setup();
        let out = outside.to_str().unwrap().to_string();
        let l = tar_of(&[
            ("d", T::Directory, ""),
            ("d", T::Symlink, &out),
            ("d/f", T::Regular, "x"),
        ]);
        assert_refused(&root, &outside, &[l], "is a symlink");
    }

    #[test]
    fn refuses_escaping_link_targets() {
        let (_t, root, outside) = setup();
        assert_refused(
            &root,
            &outside,
            &[tar_of(&[("a/l", T::Symlink, "../../outside")])],
            "escapes the tree",
        );
        let (_t, root, outside) = setup();
        let out = format!("{}/x", outside.to_str().unwrap());
        std::fs::write(&out, "secret").unwrap();
        let e = apply(&root, &[tar_of(&[("h", T::Link, &out)])]).unwrap_err();
        assert!(format!("{e:#}").contains("escapes the tree"), "{e:#}");
        let e = apply(&root, &[tar_of(&[("h", T::Link, "../outside/x")])]).unwrap_err();
        assert!(format!("{e:#}").contains("escapes the tree"), "{e:#}");
        assert!(std::fs::read_dir(&root).unwrap().next().is_none());
        // Hardlink through a symlinked directory to a file outside.
        let (_t, root, outside) = setup();
        std::fs::write(outside.join("x"), "secret").unwrap();
        let l = tar_of(&[
            ("s", T::Symlink, outside.to_str().unwrap()),
            ("h", T::Link, "s/x"),
        ]);
        let e = apply(&root, &[l]).unwrap_err();
        assert!(format!("{e:#}").contains("is a symlink"), "{e:#}");
        assert!(!root.join("h").exists());
    }

    #[test]
    fn whiteouts_opaque_and_layering() {
        let (_t, root, _o) = setup();
        let l1 = tar_of(&[
            ("etc/", T::Directory, ""),
            ("etc/a", T::Regular, "a"),
            ("etc/b", T::Regular, "b"),
            ("opq/", T::Directory, ""),
            ("opq/old", T::Regular, "old"),
            ("keep", T::Regular, "k1"),
            ("lnk", T::Symlink, "/keep"),
            ("hard", T::Link, "keep"),
        ]);
        let l2 = tar_of(&[
            ("etc/.wh.a", T::Regular, ""),
            ("opq/new", T::Regular, "new"),
            ("opq/implicit/f", T::Regular, "f"),
            ("opq/.wh..wh..opq", T::Regular, ""),
            ("keep", T::Regular, "k2"),
        ]);
        apply(&root, &[l1, l2]).unwrap();
        assert!(!root.join("etc/a").exists());
        assert_eq!(std::fs::read_to_string(root.join("etc/b")).unwrap(), "b");
        assert!(!root.join("etc/.wh.a").exists());
        assert!(!root.join("opq/old").exists());
        assert_eq!(
            std::fs::read_to_string(root.join("opq/new")).unwrap(),
            "new"
        );
        assert!(!root.join("opq/.wh..wh..opq").exists());
        assert_eq!(std::fs::read_to_string(root.join("keep")).unwrap(), "k2");
        assert_eq!(
            std::fs::read_link(root.join("lnk")).unwrap(),
            Path::new("/keep")
        );
        // The hardlink kept the old inode's content.
        assert_eq!(std::fs::read_to_string(root.join("hard")).unwrap(), "k1");
        let m = std::fs::metadata(root.join("etc/b")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o644);
    }

    /// A tar with one entry of any path length (GNU long name), built without the tar crate's
    /// sanitising.
    fn tar_long(path: &str, kind: tar::EntryType, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = hdr(kind, data.len() as u64, 0o644);
        b.append_data(&mut h, path, data).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn deep_paths_are_linear_and_limited() {
        let (_t, root, _o) = setup();
        // 200 levels, one entry per level plus a file: works.
        let mut b = tar::Builder::new(Vec::new());
        let mut p = String::new();
        for _ in 0..200 {
            p.push_str("d/");
            let mut h = hdr(T::Directory, 0, 0o755);
            b.append_data(&mut h, &p, std::io::empty()).unwrap();
        }
        let mut h = hdr(T::Regular, 2, 0o644);
        b.append_data(&mut h, format!("{p}f"), &b"ok"[..]).unwrap();
        apply(&root, &[b.into_inner().unwrap()]).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("d/".repeat(200) + "f")).unwrap(),
            "ok"
        );
        // Depth 4096 (and 30000, as in the report): refused at once, nothing created.
        for depth in [4096, 30000] {
            let (_t, root, _o) = setup();
            let t0 = std::time::Instant::now();
            let e = apply(&root, &[tar_long(&"a/".repeat(depth), T::Directory, b"")]).unwrap_err();
            assert!(format!("{e:#}").contains("limit"), "{e:#}");
            assert!(t0.elapsed().as_secs() < 5);
            assert!(std::fs::read_dir(&root).unwrap().next().is_none());
        }
        // Too many components within the byte limit.
        let (_t, root, _o) = setup();
        let e = apply(&root, &[tar_long(&"a/".repeat(1100), T::Regular, b"x")]).unwrap_err();
        assert!(format!("{e:#}").contains("path components"), "{e:#}");
    }

    #[test]
    fn whiteout_names_are_validated_before_acting() {
        let (t, root, _o) = setup();
        std::fs::write(t.path().join("sibling"), "keep").unwrap();
        std::fs::create_dir(root.join("d")).unwrap();
        std::fs::write(root.join("d/f"), "keep").unwrap();
        for bad in [".wh...", "d/.wh...", ".wh..", ".wh."] {
            let e = apply(&root, &[tar_of(&[(bad, T::Regular, "")])]).unwrap_err();
            assert!(format!("{e:#}").contains("names no file"), "{bad}: {e:#}");
            assert_eq!(std::fs::read_to_string(root.join("d/f")).unwrap(), "keep");
            assert!(t.path().join("sibling").exists());
        }
        // A whiteout in a missing directory creates nothing; aufs metadata is ignored.
        apply(
            &root,
            &[tar_of(&[
                ("missing/.wh.x", T::Regular, ""),
                (".wh..wh.plnk", T::Regular, ""),
            ])],
        )
        .unwrap();
        assert!(!root.join("missing").exists());
        assert!(!root.join(".wh..wh.plnk").exists());
    }

    #[test]
    fn device_nodes_are_not_created() {
        let (_t, root, _o) = setup();
        std::fs::write(root.join("loop0"), "lower").unwrap();
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind) in [("loop0", T::Block), ("mem", T::Char), ("fifo", T::Fifo)] {
            let mut h = hdr(kind, 0, 0o666);
            h.set_device_major(if name == "mem" { 1 } else { 7 })
                .unwrap();
            h.set_device_minor(0).unwrap();
            b.append_data(&mut h, name, std::io::empty()).unwrap();
        }
        apply(&root, &[b.into_inner().unwrap()]).unwrap();
        assert!(std::fs::symlink_metadata(root.join("loop0")).is_err());
        assert!(std::fs::symlink_metadata(root.join("mem")).is_err());
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(root.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
    }

    #[test]
    fn expansion_and_metadata_are_bounded() {
        let (_t, root, _o) = setup();
        let big = vec![0u8; 3 << 20];
        let l = tar_of(&[("a", T::Regular, "x")]);
        let mut h = ContentHashes::default();
        let mut x = Extractor::new(&root, &mut h).unwrap();
        x.set_budget(1 << 20);
        x.apply(&l[..]).unwrap();
        let l = tar_long("big", T::Regular, &big);
        let e = x.apply(&l[..]).unwrap_err();
        assert!(
            format!("{e:#}").contains("layer expands to more than"),
            "{e:#}"
        );
        // A 2 MiB PAX path is refused while the tar reader collects it, not after.
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("path", "a/".repeat(1 << 20).as_bytes())])
            .unwrap();
        let mut hd = hdr(T::Regular, 0, 0o644);
        b.append_data(&mut hd, "x", std::io::empty()).unwrap();
        let (_t, root, _o) = setup();
        let e = apply(&root, &[b.into_inner().unwrap()]).unwrap_err();
        assert!(format!("{e:#}").contains("headers"), "{e:#}");
    }

    #[test]
    fn remove_at_handles_trees_deeper_than_the_fd_limit() {
        let t = tempfile::tempdir().unwrap();
        let top = t.path().join("deep");
        std::fs::create_dir(&top).unwrap();
        // 3000 levels, built relative so no path exceeds PATH_MAX.
        let mut d = File::open(&top).unwrap();
        for i in 0..3000 {
            let n = CString::new("x").unwrap();
            assert_eq!(
                // SAFETY: valid fd and C string.
                unsafe { libc::mkdirat(d.as_raw_fd(), n.as_ptr(), 0o755) },
                0
            );
            if i % 100 == 0 {
                let f = CString::new("f").unwrap();
                // SAFETY: as above.
                let fd = unsafe {
                    libc::openat(
                        d.as_raw_fd(),
                        f.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY,
                        0o644,
                    )
                };
                assert!(fd >= 0);
                // SAFETY: just opened.
                unsafe { libc::close(fd) };
            }
            d = File::from(open_dir_at(d.as_raw_fd(), OsStr::new("x")).unwrap());
        }
        drop(d);
        remove_path(&top).unwrap();
        assert!(!top.exists());
        remove_path(&top).unwrap(); // missing is fine
    }

    #[test]
    fn decompress_sniffs_formats() {
        let data = tar_of(&[("f", T::Regular, "hello")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::encode_all(&data[..], 1).unwrap();
        for blob in [data.clone(), gz, zs] {
            let mut out = Vec::new();
            decompress(&blob[..])
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, data);
        }
    }
}
