//! Layer tarballs into the confined unpacker, as a registry or a `load`ed tarball hands
//! them over: raw bytes, and tarballs built from the input with right header checksums
//! (names with `..`, absolute paths, symlinks and hard links that point out, whiteouts,
//! devices, PAX headers). Never a panic, and nothing lands outside the layer: a sibling
//! directory stays empty and nothing appears beside the two. Runs as root (the
//! unpacker sets owners and makes device nodes, as it does in the daemon).
#![no_main]

use libfuzzer_sys::fuzz_target;
use swarmlet::image::unpack::unpack;
use swarmlet_fuzz::{fresh, layer_tar, scratch, Input};

fuzz_target!(|data: &[u8]| {
    let root = scratch("unpack");
    let (dest, outside) = (root.join("layer"), root.join("outside"));
    fresh(&root);
    std::fs::create_dir(&dest).unwrap();
    std::fs::create_dir(&outside).unwrap();
    let mut input = Input(data);
    let tar = match input.byte() % 4 {
        0 => input.rest().to_vec(),
        _ => layer_tar(&mut input),
    };
    let _ = unpack(&tar[..], &dest);
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "the unpacker wrote outside the layer"
    );
    let mut beside: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    beside.sort();
    assert_eq!(
        beside,
        ["layer", "outside"],
        "the unpacker wrote beside the layer"
    );
});
