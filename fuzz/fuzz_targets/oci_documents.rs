//! What a registry or a tarball hands the image code: image indexes, manifests and
//! configs (JSON), platforms and references as users type them, digests. A document
//! that reads writes and reads back the same; a reference, a platform or a digest that
//! parses prints as one that parses to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use swarmlet::image::load::pick_platform;
use swarmlet::image::oci::{ImageConfig, Index, Manifest, Platform};
use swarmlet::image::reference::Reference;
use swarmlet::model::Digest;
use swarmlet_fuzz::json_round_trip;

fuzz_target!(|data: &[u8]| {
    if let Ok(i) = serde_json::from_slice::<Index>(data) {
        json_round_trip(&i);
        let _ = pick_platform(&i.manifests, &Platform::host());
        for m in &i.manifests {
            let _ = m.platform.as_ref().map(|p| p.matches(&Platform::host()));
        }
    }
    if let Ok(m) = serde_json::from_slice::<Manifest>(data) {
        json_round_trip(&m);
    }
    if let Ok(c) = serde_json::from_slice::<ImageConfig>(data) {
        json_round_trip(&c);
    }
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = Reference::parse(s) {
        let again = Reference::parse(&r.to_string());
        assert_eq!(again.as_ref(), Ok(&r), "{s:?} prints as {r}");
        let _ = (r.name(), r.api_host(), r.manifest_ref(), r.familiar_name());
    }
    if let Some(p) = Platform::parse(s) {
        assert_eq!(Platform::parse(&p.to_string()), Some(p.clone()), "{s:?}");
    }
    if let Some(d) = Digest::parse(s) {
        assert_eq!(d.to_string(), s);
    }
});
