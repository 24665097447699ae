//! Unpacks one layer tarball into a directory that overlayfs will use as a lower layer.
//!
//! Every path is resolved with `openat2(RESOLVE_IN_ROOT)` against the layer directory,
//! so a symlink in the layer (`etc -> /`) resolves inside it as it would in the
//! container, and nothing can be written outside. Entries naming `..` or an absolute
//! path, and hard links that point outside, are refused with an error naming the entry.
//! Docker's whiteouts become overlayfs's: `.wh.NAME` a 0:0 character device, and
//! `.wh..wh..opq` the `trusted.overlay.opaque` attribute on its directory.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{
    self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps,
};
use thiserror::Error;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

#[derive(Debug, Error)]
pub enum UnpackError {
    #[error("layer entry {0:?} would land outside the layer ({1})")]
    Escape(String, &'static str),
    #[error("layer entry {0:?}: {1}")]
    Entry(String, io::Error),
    #[error("layer entry {0:?} has an unsupported type ({1:?})")]
    Unsupported(String, tar::EntryType),
    #[error("reading the layer tarball: {0}")]
    Read(io::Error),
}

/// Totals of one unpack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    pub entries: u64,
    pub bytes: u64,
}

/// Unpacks the tar stream `r` into `dest`, an existing (empty) directory.
pub fn unpack(r: impl Read, dest: &Path) -> Result<Unpacked, UnpackError> {
    let root = rfs::open(
        dest,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::Entry(dest.display().to_string(), e.into()))?;
    let mut ar = tar::Archive::new(r);
    let mut done = Unpacked::default();
    // The last entry read, to say where a broken stream broke.
    let mut last: Option<String> = None;
    for entry in ar.entries().map_err(UnpackError::Read)? {
        let mut entry = entry.map_err(|e| read_error(last.as_deref(), e))?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        last = Some(shown.clone());
        let Some(parts) = normalise(&raw).map_err(|why| UnpackError::Escape(shown.clone(), why))?
        else {
            continue; // the root itself ("/", "./")
        };
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            continue;
        }
        let err = |e: io::Error| UnpackError::Entry(shown.clone(), e);
        let (name, dirs) = parts.split_last().expect("normalise returns non-empty");
        let parent = ensure_dir(&root, dirs).map_err(err)?;
        let name_str = name.to_string_lossy();
        if name_str == OPAQUE_MARKER {
            let dir = reopen_dir(&parent).map_err(err)?;
            rfs::fsetxattr(&dir, OPAQUE_XATTR, b"y", rfs::XattrFlags::empty())
                .map_err(|e| err(e.into()))?;
            done.entries += 1;
            continue;
        }
        if let Some(hidden) = name_str.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(UnpackError::Escape(shown, "a whiteout must name an entry"));
            }
            remove_existing(&parent, hidden).map_err(err)?;
            rfs::mknodat(
                &parent,
                hidden,
                FileType::CharacterDevice,
                Mode::empty(),
                rfs::makedev(0, 0),
            )
            .map_err(|e| err(e.into()))?;
            done.entries += 1;
            continue;
        }
        let xattrs = pax_xattrs(&mut entry);
        let h = entry.header().clone();
        let mode = Mode::from_bits_truncate(h.mode().map_err(err)? & 0o7777);
        let uid = h.uid().map_err(err)?;
        let gid = h.gid().map_err(err)?;
        let mtime = h.mtime().unwrap_or(0);
        let owner = (
            Some(rfs::Uid::from_raw(
                u32::try_from(uid).map_err(|_| err(bad_id()))?,
            )),
            Some(rfs::Gid::from_raw(
                u32::try_from(gid).map_err(|_| err(bad_id()))?,
            )),
        );
        match kind {
            tar::EntryType::Directory => {
                match rfs::mkdirat(&parent, name.as_os_str(), Mode::from_raw_mode(0o755)) {
                    Ok(()) => {}
                    // A directory may be named again (or after its contents): keep it.
                    Err(rustix::io::Errno::EXIST) if is_dir_at(&parent, name) => {}
                    Err(rustix::io::Errno::EXIST) => {
                        remove_existing(&parent, name).map_err(err)?;
                        rfs::mkdirat(&parent, name.as_os_str(), Mode::from_raw_mode(0o755))
                            .map_err(|e| err(e.into()))?;
                    }
                    Err(e) => return Err(err(e.into())),
                }
                let dir = open_beneath(
                    &parent,
                    name,
                    OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW,
                )
                .map_err(err)?;
                rfs::fchown(&dir, owner.0, owner.1).map_err(|e| err(e.into()))?;
                rfs::fchmod(&dir, mode).map_err(|e| err(e.into()))?;
                for (k, v) in &xattrs {
                    rfs::fsetxattr(&dir, k.as_str(), v, rfs::XattrFlags::empty())
                        .map_err(|e| err(e.into()))?;
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                remove_existing(&parent, name).map_err(err)?;
                let fd = rfs::openat(
                    &parent,
                    name.as_os_str(),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| err(e.into()))?;
                let mut file = std::fs::File::from(fd);
                // The size after any PAX record; the tar reader ends an entry quietly
                // where the stream ends, so the count is checked against it.
                let size = entry.size();
                let copied = io::copy(&mut entry, &mut file).map_err(err)?;
                if copied != size {
                    return Err(err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("truncated: the stream ends after {copied} of its {size} bytes"),
                    )));
                }
                done.bytes += copied;
                // Owner before mode: chown clears set-id bits.
                rfs::fchown(&file, owner.0, owner.1).map_err(|e| err(e.into()))?;
                rfs::fchmod(&file, mode).map_err(|e| err(e.into()))?;
                for (k, v) in &xattrs {
                    rfs::fsetxattr(&file, k.as_str(), v, rfs::XattrFlags::empty())
                        .map_err(|e| err(e.into()))?;
                }
                rfs::futimens(&file, &times(mtime)).map_err(|e| err(e.into()))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| err(io::Error::other("symlink without a target")))?
                    .into_owned();
                remove_existing(&parent, name).map_err(err)?;
                rfs::symlinkat(OsStr::from_bytes(&target), &parent, name.as_os_str())
                    .map_err(|e| err(e.into()))?;
                rfs::chownat(
                    &parent,
                    name.as_os_str(),
                    owner.0,
                    owner.1,
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| err(e.into()))?;
                rfs::utimensat(
                    &parent,
                    name.as_os_str(),
                    &times(mtime),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| err(e.into()))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| err(io::Error::other("hard link without a target")))?
                    .into_owned();
                let tparts = normalise(&target)
                    .map_err(|why| UnpackError::Escape(shown.clone(), why))?
                    .ok_or(UnpackError::Escape(
                        shown.clone(),
                        "a hard link to the root",
                    ))?;
                let (tname, tdirs) = tparts.split_last().expect("non-empty");
                let tparent = open_in_root(&root, tdirs).map_err(err)?;
                remove_existing(&parent, name).map_err(err)?;
                rfs::linkat(
                    &tparent,
                    tname.as_os_str(),
                    &parent,
                    name.as_os_str(),
                    AtFlags::empty(),
                )
                .map_err(|e| err(e.into()))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let ft = match kind {
                    tar::EntryType::Char => FileType::CharacterDevice,
                    tar::EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                // A FIFO has no device number (Python's tarfile leaves the fields NUL).
                let dev = if ft == FileType::Fifo {
                    0
                } else {
                    let (major, minor) = device_fields(&h).map_err(err)?;
                    rfs::makedev(major, minor)
                };
                remove_existing(&parent, name).map_err(err)?;
                rfs::mknodat(&parent, name.as_os_str(), ft, mode, dev)
                    .map_err(|e| err(e.into()))?;
                rfs::chownat(
                    &parent,
                    name.as_os_str(),
                    owner.0,
                    owner.1,
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| err(e.into()))?;
                // mknod applied the umask, and chown may clear set-id bits: the mode
                // as the layer gives it, last. The node was just made here, by name,
                // in a directory no one else writes to.
                rfs::chmodat(&parent, name.as_os_str(), mode, AtFlags::empty())
                    .map_err(|e| err(e.into()))?;
            }
            other => return Err(UnpackError::Unsupported(shown, other)),
        }
        done.entries += 1;
    }
    Ok(done)
}

/// A broken stream, named after the last entry read whole.
fn read_error(last: Option<&str>, e: io::Error) -> UnpackError {
    match last {
        Some(name) => UnpackError::Read(io::Error::new(
            e.kind(),
            format!("after entry {name:?}: {e}"),
        )),
        None => UnpackError::Read(e),
    }
}

/// The device major and minor of a character or block device entry. Empty fields
/// (all NUL or spaces, as some writers leave them) are 0, as GNU tar reads them.
fn device_fields(h: &tar::Header) -> io::Result<(u32, u32)> {
    // The ustar and GNU layouts both keep them at these offsets.
    let empty = |r: std::ops::Range<usize>| h.as_bytes()[r].iter().all(|c| matches!(c, 0 | b' '));
    let major = if empty(329..337) {
        0
    } else {
        h.device_major()?.unwrap_or(0)
    };
    let minor = if empty(337..345) {
        0
    } else {
        h.device_minor()?.unwrap_or(0)
    };
    Ok((major, minor))
}

fn bad_id() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "uid or gid above 2^32")
}

fn times(mtime: u64) -> Timestamps {
    let t = Timespec {
        tv_sec: i64::try_from(mtime).unwrap_or(0),
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// The entry's components, or `None` for the root itself. `..` anywhere and absolute
/// paths (other than `/` itself) are refused.
fn normalise(raw: &[u8]) -> Result<Option<Vec<PathBuf>>, &'static str> {
    if raw.contains(&0) {
        return Err("a NUL byte in the name");
    }
    let absolute = raw.first() == Some(&b'/');
    let mut parts = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("a '..' component"),
            c => parts.push(PathBuf::from(OsStr::from_bytes(c))),
        }
    }
    if parts.is_empty() {
        return Ok(None);
    }
    if absolute {
        return Err("an absolute path");
    }
    Ok(Some(parts))
}

fn resolve_in_root() -> ResolveFlags {
    ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV
}

fn join(parts: &[PathBuf]) -> PathBuf {
    if parts.is_empty() {
        PathBuf::from(".")
    } else {
        parts.iter().collect()
    }
}

/// Opens `parts` (a directory) resolved inside `root`.
fn open_in_root(root: &OwnedFd, parts: &[PathBuf]) -> io::Result<OwnedFd> {
    rfs::openat2(
        root,
        join(parts),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        resolve_in_root(),
    )
    .map_err(no_openat2)
}

/// ENOSYS from openat2 means a kernel before 5.6 (or an emulator without it): say so
/// rather than "function not implemented".
pub fn no_openat2(e: rustix::io::Errno) -> io::Error {
    if e == rustix::io::Errno::NOSYS {
        io::Error::other(
            "this kernel has no openat2 (Linux 5.6 or later is needed to resolve paths inside an image safely)",
        )
    } else {
        e.into()
    }
}

/// Opens (creating as needed, like `mkdir -p`) the directory `parts` inside `root`.
fn ensure_dir(root: &OwnedFd, parts: &[PathBuf]) -> io::Result<OwnedFd> {
    match open_in_root(root, parts) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut dir = open_in_root(root, &[])?;
    for (i, p) in parts.iter().enumerate() {
        match open_in_root(root, &parts[..=i]) {
            Ok(fd) => dir = fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match rfs::mkdirat(&dir, p.as_os_str(), Mode::from_raw_mode(0o755)) {
                    Ok(()) => {}
                    Err(rustix::io::Errno::EXIST) => {
                        return Err(io::Error::other(format!(
                            "parent {} is a symlink to a missing directory",
                            join(&parts[..=i]).display()
                        )))
                    }
                    Err(e) => return Err(e.into()),
                }
                dir = open_in_root(root, &parts[..=i])?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(dir)
}

/// Opens `name` directly in `dir`, following no symlink at all.
fn open_beneath(dir: &OwnedFd, name: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    rfs::openat2(
        dir,
        name,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    )
    .map_err(no_openat2)
}

/// An `O_PATH` directory fd reopened for reading (xattrs need a real fd).
fn reopen_dir(dir: &OwnedFd) -> io::Result<OwnedFd> {
    open_beneath(dir, Path::new("."), OFlags::DIRECTORY | OFlags::RDONLY)
}

fn is_dir_at(dir: &OwnedFd, name: &Path) -> bool {
    rfs::statat(dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)
}

/// Removes whatever `name` is in `dir` (a directory with everything in it), so an
/// entry later in the stream replaces one earlier, as tar does.
fn remove_existing(dir: &OwnedFd, name: impl AsRef<Path>) -> io::Result<()> {
    let name = name.as_ref();
    match rfs::unlinkat(dir, name.as_os_str(), AtFlags::empty()) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(rustix::io::Errno::ISDIR) | Err(rustix::io::Errno::PERM) if is_dir_at(dir, name) => {
            let sub = open_beneath(dir, name, OFlags::DIRECTORY | OFlags::RDONLY)?;
            remove_tree(&sub)?;
            rfs::unlinkat(dir, name.as_os_str(), AtFlags::REMOVEDIR)?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn remove_tree(dir: &OwnedFd) -> io::Result<()> {
    let mut names = Vec::new();
    for e in rfs::Dir::read_from(dir.as_fd())? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(PathBuf::from(OsStr::from_bytes(n)));
        }
    }
    for n in names {
        remove_existing(dir, &n)?;
    }
    Ok(())
}

/// Extended attributes carried as PAX `SCHILY.xattr.*` records (file capabilities, for
/// one). Only the `security.` and `user.` namespaces are restored; `trusted.` ones
/// could forge overlay metadata.
fn pax_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    if let Ok(Some(exts)) = entry.pax_extensions() {
        for ext in exts.flatten() {
            if let Ok(key) = ext.key() {
                if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                    if name.starts_with("security.") || name.starts_with("user.") {
                        out.push((name.to_string(), ext.value_bytes().to_vec()));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    struct Tmp(PathBuf);
    impl Tmp {
        fn new(tag: &str) -> Tmp {
            let p =
                std::env::temp_dir().join(format!("swarmlet-unpack-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Tmp(p)
        }
    }
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Appends an entry with a raw name (the tar crate's setters refuse `..`, which is
    /// what these tests need to write).
    fn raw(
        b: &mut tar::Builder<Vec<u8>>,
        name: &[u8],
        kind: tar::EntryType,
        data: &[u8],
        link: &[u8],
    ) {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        h.as_gnu_mut().unwrap().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(1000);
        h.set_gid(1000);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    #[test]
    #[ignore = "needs root: chown, mknod, trusted xattrs"]
    fn unpacks_files_links_and_whiteouts() {
        let t = Tmp::new("ok");
        let mut b = tar::Builder::new(Vec::new());
        use tar::EntryType as E;
        raw(&mut b, b"./", E::Directory, b"", b"");
        raw(&mut b, b"bin/", E::Directory, b"", b"");
        raw(&mut b, b"bin/busybox", E::Regular, b"ELF...", b"");
        raw(&mut b, b"bin/sh", E::Symlink, b"", b"/bin/busybox");
        raw(&mut b, b"bin/ash", E::Link, b"", b"bin/busybox");
        raw(&mut b, b"etc/motd", E::Regular, b"hello\n", b""); // no dir entry for etc
        raw(&mut b, b"etc/.wh.gone", E::Regular, b"", b"");
        raw(&mut b, b"var/.wh..wh..opq", E::Regular, b"", b"");
        raw(&mut b, b"etc/motd", E::Regular, b"again\n", b""); // replaced later in the stream
        let tar = b.into_inner().unwrap();
        let n = unpack(&tar[..], &t.0).unwrap();
        assert_eq!(n.entries, 8);
        let d = &t.0;
        assert_eq!(std::fs::read(d.join("bin/busybox")).unwrap(), b"ELF...");
        assert_eq!(
            std::fs::read_link(d.join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
        let a = std::fs::metadata(d.join("bin/ash")).unwrap();
        let bb = std::fs::metadata(d.join("bin/busybox")).unwrap();
        assert_eq!(a.ino(), bb.ino(), "a hard link");
        assert_eq!(bb.uid(), 1000);
        assert_eq!(bb.permissions().mode() & 0o7777, 0o644);
        assert_eq!(bb.mtime(), 1_600_000_000);
        assert_eq!(std::fs::read(d.join("etc/motd")).unwrap(), b"again\n");
        let wh = std::fs::symlink_metadata(d.join("etc/gone")).unwrap();
        assert!(
            wh.file_type().is_char_device() && wh.rdev() == 0,
            "overlay whiteout"
        );
        let mut buf = [0u8; 4];
        let n = rfs::getxattr(d.join("var"), OPAQUE_XATTR, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"y");
    }

    #[test]
    #[ignore = "needs root"]
    fn special_files_keep_their_mode_and_take_nul_device_fields() {
        use tar::EntryType as E;
        let t = Tmp::new("special");
        let mut b = tar::Builder::new(Vec::new());
        // As Python's tarfile writes a FIFO: device fields all NUL.
        for (name, kind, mode, dev) in [
            (&b"fifo"[..], E::Fifo, 0o666, None),
            (b"null", E::Char, 0o666, Some((1, 3))),
            (b"loop", E::Block, 0o640, Some((7, 0))),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_path(std::str::from_utf8(name).unwrap()).unwrap();
            h.set_entry_type(kind);
            h.set_size(0);
            h.set_mode(mode);
            h.set_uid(0);
            h.set_gid(0);
            match dev {
                Some((major, minor)) => {
                    h.set_device_major(major).unwrap();
                    h.set_device_minor(minor).unwrap();
                }
                None => {
                    let u = h.as_ustar_mut().unwrap();
                    u.dev_major = [0; 8];
                    u.dev_minor = [0; 8];
                }
            }
            h.set_cksum();
            b.append(&h, &[][..]).unwrap();
        }
        unpack(&b.into_inner().unwrap()[..], &t.0).unwrap();
        let m = |n: &str| std::fs::symlink_metadata(t.0.join(n)).unwrap();
        assert!(m("fifo").file_type().is_fifo());
        assert_eq!(m("fifo").permissions().mode() & 0o7777, 0o666);
        assert!(m("null").file_type().is_char_device());
        assert_eq!(m("null").rdev(), rustix::fs::makedev(1, 3));
        assert_eq!(m("null").permissions().mode() & 0o7777, 0o666);
        assert!(m("loop").file_type().is_block_device());
        assert_eq!(m("loop").permissions().mode() & 0o7777, 0o640);
    }

    #[test]
    #[ignore = "needs root"]
    fn a_truncated_entry_is_named() {
        let t = Tmp::new("trunc");
        let mut b = tar::Builder::new(Vec::new());
        raw(&mut b, b"first", tar::EntryType::Regular, b"ok", b"");
        raw(
            &mut b,
            b"bin/cut-short",
            tar::EntryType::Regular,
            &[7u8; 5000],
            b"",
        );
        let tar = b.into_inner().unwrap();
        // The second entry's header and 1,000 of its 5,000 bytes.
        let err = unpack(&tar[..512 * 3 + 1000], &t.0).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"bin/cut-short\""), "{msg}");
        assert!(msg.contains("truncated"), "{msg}");
    }

    #[test]
    fn refuses_entries_that_escape() {
        use tar::EntryType as E;
        type Entry<'a> = (&'a [u8], E, &'a [u8]);
        let cases: Vec<(&str, Vec<Entry>)> = vec![
            ("dotdot", vec![(b"../outside", E::Regular, b"")]),
            ("nested dotdot", vec![(b"a/../../outside", E::Regular, b"")]),
            ("absolute", vec![(b"/etc/outside", E::Regular, b"")]),
            ("hard link out", vec![(b"x", E::Link, b"../../etc/passwd")]),
            ("whiteout of dotdot", vec![(b"a/.wh...", E::Regular, b"")]),
        ];
        for (what, entries) in cases {
            let t = Tmp::new("esc");
            let layer = t.0.join("layer");
            std::fs::create_dir(&layer).unwrap();
            let mut b = tar::Builder::new(Vec::new());
            for (name, kind, link) in entries {
                raw(&mut b, name, kind, b"", link);
            }
            let err = unpack(&b.into_inner().unwrap()[..], &layer).unwrap_err();
            assert!(matches!(err, UnpackError::Escape(..)), "{what}: {err}");
            assert!(
                err.to_string().contains("outside the layer"),
                "{what}: {err}"
            );
            assert!(!t.0.join("outside").exists(), "{what}");
        }
    }

    #[test]
    #[ignore = "needs root"]
    fn symlinks_resolve_inside_the_layer() {
        use tar::EntryType as E;
        let t = Tmp::new("sym");
        let layer = t.0.join("layer");
        let outside = t.0.join("outside");
        std::fs::create_dir(&layer).unwrap();
        std::fs::create_dir(&outside).unwrap();
        // A symlink to the host directory (which is missing inside the layer): writing
        // through it is refused.
        let abs = outside.to_str().unwrap().as_bytes().to_vec();
        let mut b = tar::Builder::new(Vec::new());
        raw(&mut b, b"abs", E::Symlink, b"", &abs);
        raw(&mut b, b"abs/pwned", E::Regular, b"x", b"");
        let err = unpack(&b.into_inner().unwrap()[..], &layer).unwrap_err();
        assert!(err.to_string().contains("missing directory"), "{err}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // With the same directories inside the layer, the write lands there; a relative
        // symlink climbing far up resolves to the layer root.
        let layer2 = t.0.join("layer2");
        std::fs::create_dir(&layer2).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut dir = Vec::new();
        for c in outside.strip_prefix("/").unwrap().components() {
            dir.extend_from_slice(c.as_os_str().as_bytes());
            dir.push(b'/');
            raw(&mut b, &dir, E::Directory, b"", b"");
        }
        raw(&mut b, b"abs", E::Symlink, b"", &abs);
        raw(&mut b, b"abs/pwned", E::Regular, b"x", b"");
        raw(&mut b, b"rel", E::Symlink, b"", b"../../../../../../../..");
        raw(&mut b, b"rel/pwned2", E::Regular, b"x", b"");
        unpack(&b.into_inner().unwrap()[..], &layer2).unwrap();
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        let inside = layer2
            .join(outside.strip_prefix("/").unwrap())
            .join("pwned");
        assert!(inside.exists(), "written inside the layer instead");
        assert!(
            layer2.join("pwned2").exists(),
            "rel resolves to the layer root"
        );
    }
}
