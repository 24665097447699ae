//! What the fuzz targets share: a reader that turns the fuzzer's bytes into the pieces a
//! structured input is made of, round-trip checks, and scratch directories.

use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::Serialize;
use swarmlet::frame::Protocol;

/// Takes pieces off the front of the fuzzer's input; past its end, pieces are empty.
pub struct Input<'a>(pub &'a [u8]);

impl<'a> Input<'a> {
    pub fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }

    /// A piece of up to 255 bytes: its length, then the bytes.
    pub fn short(&mut self) -> &'a [u8] {
        let n = usize::from(self.byte());
        self.bytes(n)
    }

    /// A piece of up to 64 KiB: its length (2 bytes), then the bytes.
    pub fn chunk(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16());
        self.bytes(n)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.0.len())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `v` decoded from a frame: encoding it again and decoding that gives the same bytes
/// (compared as bytes, so a NaN among the fields compares equal to itself).
pub fn frame_round_trip<T: Serialize + DeserializeOwned>(p: &Protocol, v: &T) {
    let frame = p
        .encode(v)
        .expect("a decoded value encodes again within the limit");
    let back: T = p.read(&mut &frame[..]).expect("an encoded frame decodes");
    assert_eq!(
        p.encode(&back).expect("encodes"),
        frame,
        "{} round trip",
        p.name
    );
}

/// `v` decoded from JSON: written and read again, it is the same document.
pub fn json_round_trip<T: Serialize + DeserializeOwned>(v: &T) {
    let a = serde_json::to_value(v).expect("serialises");
    let bytes = serde_json::to_vec(v).expect("serialises");
    let back: T = serde_json::from_slice(&bytes).expect("what was written reads back");
    assert_eq!(serde_json::to_value(&back).expect("serialises"), a);
}

/// A scratch directory of this process for `what`, on tmpfs when there is one (the
/// targets write and remove files on every input).
pub fn scratch(what: &str) -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    base.join(format!("swarmlet-fuzz-{what}-{}", std::process::id()))
}

/// Path components a layer's entries are made of: ordinary names, the ones that try to
/// climb out, whiteouts, and what a symlink may point at.
const COMPONENTS: &[&[u8]] = &[
    b"a",
    b"b",
    b"etc",
    b"..",
    b".",
    b"",
    b".wh.a",
    b".wh..wh..opq",
    b".wh.",
    b"outside",
    b"proc",
];

/// Entry types a layer may hold, the odd ones included.
const KINDS: &[u8] = b"0123456Lx gS7K";

/// A path of a few components from [`COMPONENTS`] (or raw bytes), maybe absolute.
fn path(input: &mut Input<'_>) -> Vec<u8> {
    let how = input.byte();
    if how & 0x80 != 0 {
        return input.short().to_vec();
    }
    let mut p = Vec::new();
    if how & 0x40 != 0 {
        p.push(b'/');
    }
    for i in 0..1 + how % 4 {
        if i > 0 {
            p.push(b'/');
        }
        p.extend_from_slice(COMPONENTS[usize::from(input.byte()) % COMPONENTS.len()]);
    }
    if how & 0x20 != 0 {
        p.push(b'/');
    }
    p
}

/// A tarball of up to 32 entries described by the input: type, path, link target,
/// mode, owner, device numbers and data, each header with a right checksum (so that
/// mutations reach the unpacker, not the tar reader's checksum test). Paths are written
/// as they are, `..` and absolute ones included.
pub fn layer_tar(input: &mut Input<'_>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for _ in 0..32 {
        if input.is_empty() {
            break;
        }
        let mut h = tar::Header::new_gnu();
        let kind = KINDS[usize::from(input.byte()) % KINDS.len()];
        h.set_entry_type(tar::EntryType::new(kind));
        let name = path(input);
        let link = path(input);
        let old = h.as_old_mut();
        let n = name.len().min(old.name.len());
        old.name[..n].copy_from_slice(&name[..n]);
        let n = link.len().min(old.linkname.len());
        old.linkname[..n].copy_from_slice(&link[..n]);
        h.set_mode(u32::from(input.u16()));
        h.set_uid(u64::from(input.byte()));
        h.set_gid(u64::from(input.byte()));
        h.set_mtime(u64::from(input.u16()));
        let _ = h.set_device_major(u32::from(input.byte()));
        let _ = h.set_device_minor(u32::from(input.byte()));
        let data = input.short();
        h.set_size(data.len() as u64);
        h.set_cksum();
        let _ = b.append(&h, data);
    }
    b.into_inner().unwrap_or_default()
}

/// Empties (or makes) a scratch directory.
pub fn fresh(dir: &std::path::Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("a scratch directory");
}
