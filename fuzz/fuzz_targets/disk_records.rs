//! The JSON records the daemon, the keeper and the image store read back from disk:
//! a container's record, restart and health state, the keeper's state of a container
//! and its handover file, an image record and the store's names. None panics on any
//! bytes; what reads, writes and reads back as the same document.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use swarmlet::daemon::containers::RestartState;
use swarmlet::image::store::ImageRecord;
use swarmlet::model::container::ContainerRecord;
use swarmlet::model::health::HealthState;
use swarmlet::runtime::keeper::{ContainerState, Handover};
use swarmlet_fuzz::json_round_trip;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the record, so each one gets the whole input's attention.
    let Some((&which, json)) = data.split_first() else {
        return;
    };
    match which % 7 {
        0 => check::<ContainerRecord>(json),
        1 => check::<RestartState>(json),
        2 => check::<HealthState>(json),
        3 => check::<ContainerState>(json),
        4 => check::<Handover>(json),
        5 => check::<ImageRecord>(json),
        _ => check::<BTreeMap<String, String>>(json),
    }
});

fn check<T: serde::Serialize + serde::de::DeserializeOwned>(json: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<T>(json) {
        json_round_trip(&v);
    }
}
