//! `image load` of a tarball, as a user hands one over: raw bytes; a `docker save`
//! tarball whose manifest.json and config come from the input; and whole `docker save`
//! and OCI layout tarballs built from the input (documents that agree with each other,
//! layers built from the input, then maybe one byte of one file changed), so that the
//! load reaches its checks, the unpacker and the store. Never a panic; afterwards the
//! store lists what it holds and resolves every name it lists.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use swarmlet::image::load::load;
use swarmlet::image::oci::Platform;
use swarmlet::image::store::Store;
use swarmlet::model::Digest;
use swarmlet_fuzz::{fresh, layer_tar, scratch, Input};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

fuzz_target!(|data: &[u8]| {
    let root = scratch("load");
    fresh(&root);
    let store = Store::open(&root).unwrap();
    let mut input = Input(data);
    let mut files = match input.byte() % 4 {
        0 => {
            let _ = load(&store, input.rest(), &Platform::host());
            return check(&store);
        }
        1 => vec![
            ("manifest.json".to_string(), input.chunk().to_vec()),
            ("config.json".to_string(), input.chunk().to_vec()),
            ("layer.tar".to_string(), layer_tar(&mut input)),
        ],
        2 => docker_save(&mut input),
        _ => oci_layout(&mut input),
    };
    // Maybe one byte of one file changed: a document or a layer that no longer matches.
    let change = input.byte();
    if change & 1 != 0 && !files.is_empty() {
        let which = usize::from(change >> 1) % files.len();
        let f = &mut files[which].1;
        if !f.is_empty() {
            let at = usize::from(input.u16()) % f.len();
            f[at] ^= input.byte() | 1;
        }
    }
    let mut b = tar::Builder::new(Vec::new());
    for (name, bytes) in &files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(bytes.len() as u64);
        let _ = b.append_data(&mut h, name, &bytes[..]);
    }
    let tar = b.into_inner().unwrap();
    let _ = load(&store, &tar[..], &Platform::host());
    check(&store);
});

/// What the store holds after a load, good or bad, is consistent.
fn check(store: &Store) {
    if let Ok(list) = store.list() {
        for (rec, names) in list {
            for n in names {
                let got = store.resolve(&n).expect("a listed name resolves");
                assert_eq!(got.id, rec.id, "{n}");
            }
        }
    }
}

/// A tag from the input: printable ASCII, often a valid reference.
fn tag(input: &mut Input<'_>) -> String {
    let raw: String = input
        .short()
        .iter()
        .map(|b| char::from(b'!' + b % 94))
        .collect();
    if raw.is_empty() {
        "fuzz:1".into()
    } else {
        raw
    }
}

/// Layers from the input and an image config naming their digests.
fn layers_and_config(input: &mut Input<'_>) -> (Vec<Vec<u8>>, Vec<u8>) {
    let layers: Vec<Vec<u8>> = (0..1 + input.byte() % 3)
        .map(|_| layer_tar(input))
        .collect();
    let diff_ids: Vec<String> = layers.iter().map(|l| Digest::of(l).to_string()).collect();
    let host = Platform::host();
    let run = serde_json::from_slice::<Value>(input.short()).unwrap_or(json!({}));
    let config = json!({
        "architecture": host.architecture,
        "os": host.os,
        "config": run,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    (layers, serde_json::to_vec(&config).unwrap())
}

fn docker_save(input: &mut Input<'_>) -> Vec<(String, Vec<u8>)> {
    let (layers, config) = layers_and_config(input);
    let names: Vec<String> = (0..layers.len())
        .map(|i| format!("l{i}/layer.tar"))
        .collect();
    let manifest = json!([{
        "Config": "config.json",
        "RepoTags": [tag(input)],
        "Layers": names,
    }]);
    let mut files = vec![
        (
            "manifest.json".to_string(),
            serde_json::to_vec(&manifest).unwrap(),
        ),
        ("config.json".to_string(), config),
    ];
    files.extend(names.into_iter().zip(layers));
    files
}

fn blob(files: &mut Vec<(String, Vec<u8>)>, bytes: Vec<u8>, media_type: &str) -> Value {
    let d = Digest::of(&bytes);
    let desc = json!({"mediaType": media_type, "digest": d.to_string(), "size": bytes.len()});
    files.push((format!("blobs/sha256/{}", d.hex()), bytes));
    desc
}

fn oci_layout(input: &mut Input<'_>) -> Vec<(String, Vec<u8>)> {
    let (layers, config) = layers_and_config(input);
    let mut files = vec![(
        "oci-layout".to_string(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    )];
    let config = blob(&mut files, config, OCI_CONFIG);
    let layers: Vec<Value> = layers
        .into_iter()
        .map(|l| blob(&mut files, l, OCI_LAYER))
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": layers,
    });
    let mut desc = blob(
        &mut files,
        serde_json::to_vec(&manifest).unwrap(),
        OCI_MANIFEST,
    );
    if input.byte() % 2 == 1 {
        // Behind a nested index with a platform, as multi-platform images are.
        desc["platform"] = serde_json::to_value(Platform::host()).unwrap();
        let nested = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [desc]});
        desc = blob(&mut files, serde_json::to_vec(&nested).unwrap(), OCI_INDEX);
    }
    desc["annotations"] = json!({"io.containerd.image.name": tag(input)});
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [desc]});
    files.push((
        "index.json".to_string(),
        serde_json::to_vec(&index).unwrap(),
    ));
    files
}
