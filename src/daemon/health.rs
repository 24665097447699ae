//! Health checks, as Docker runs them: a command inside the container every interval,
//! killed after the timeout; `starting` until the first success, `healthy` after a
//! success, `unhealthy` after `retries` failures in a row (failures during the start
//! period do not count). The state is kept beside the container
//! (`<id>/health.json`), so `ps` and `inspect` show it and a restarted daemon goes on
//! from it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::containers::{Containers, ExecSpec};
use crate::image::oci::HealthConfig;
use crate::image::store::write_atomic;
use crate::model::container::Status;
use crate::model::health::{HealthFlags, HealthSpec, HealthState, Probe};
use crate::runtime::keeper::now_ms;

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_RETRIES: u32 = 3;
/// Output kept per result.
const OUTPUT_KEEP: usize = 4096;
const FILE: &str = "health.json";
/// How often the monitor looks for probes that are due: the shortest interval allowed
/// (`--health-interval` is at least 100 ms).
const HEALTH_TICK: Duration = Duration::from_millis(100);

/// The image's HEALTHCHECK with the flags on top; None when there is no check.
pub fn resolve(
    image: Option<&HealthConfig>,
    flags: &HealthFlags,
) -> Result<Option<HealthSpec>, String> {
    if flags.disable {
        return Ok(None);
    }
    let ns = |n: u64| (n > 0).then(|| Duration::from_nanos(n));
    let test = match (&flags.cmd, image) {
        (Some(c), _) => vec!["/bin/sh".into(), "-c".into(), c.clone()],
        (None, Some(h)) => match h.test.first().map(String::as_str) {
            None | Some("NONE") => return Ok(None),
            Some("CMD") => h.test[1..].to_vec(),
            Some("CMD-SHELL") => {
                let cmd = h.test.get(1).cloned().unwrap_or_default();
                vec!["/bin/sh".into(), "-c".into(), cmd]
            }
            Some(other) => return Err(format!("image healthcheck: unknown test kind {other:?}")),
        },
        (None, None) => return Ok(None),
    };
    if test.is_empty() {
        return Err("healthcheck: empty command".into());
    }
    let retries = flags
        .retries
        .or_else(|| image.map(|h| h.retries).filter(|r| *r > 0))
        .unwrap_or(DEFAULT_RETRIES);
    Ok(Some(HealthSpec {
        test,
        interval: flags
            .interval
            .or_else(|| image.and_then(|h| ns(h.interval)))
            .unwrap_or(DEFAULT_INTERVAL),
        timeout: flags
            .timeout
            .or_else(|| image.and_then(|h| ns(h.timeout)))
            .unwrap_or(DEFAULT_TIMEOUT),
        start_period: flags
            .start_period
            .or_else(|| image.and_then(|h| ns(h.start_period)))
            .unwrap_or(Duration::ZERO),
        retries,
    }))
}

/// The saved state of a container, if it has one for its current start.
pub fn load(cdir: &Path) -> Option<HealthState> {
    let b = std::fs::read(cdir.join(FILE)).ok()?;
    serde_json::from_slice(&b).ok()
}

fn save(cdir: &Path, st: &HealthState) {
    let json = serde_json::to_vec(st).expect("invariant: state serialises");
    let tmp = cdir.join("tmp");
    let _ = std::fs::create_dir_all(&tmp);
    if let Err(e) = write_atomic(&cdir.join(FILE), &tmp, &json) {
        error!("saving health of {}: {e}", cdir.display());
    }
}

/// Runs health checks for every running container that has one, forever (a thread).
pub fn monitor(containers: Arc<Containers>) {
    // Per container: when its next probe is due (ms) and whether one is running.
    let due: Arc<Mutex<BTreeMap<String, (u64, bool)>>> = Arc::new(Mutex::new(BTreeMap::new()));
    loop {
        std::thread::sleep(HEALTH_TICK);
        if !containers.any_health() {
            continue;
        }
        let Ok(all) = containers.list() else { continue };
        let now = now_ms();
        let mut d = due.lock().unwrap_or_else(|p| p.into_inner());
        d.retain(|id, _| all.iter().any(|v| v.record.id == *id));
        for v in all {
            let (Some(spec), Status::Running { started_at, .. }) =
                (v.record.health.clone(), &v.status)
            else {
                continue;
            };
            let started_at = *started_at;
            let interval = u64::try_from(spec.interval.as_millis()).unwrap_or(u64::MAX);
            let entry = d
                .entry(v.record.id.clone())
                .or_insert((started_at + interval, false));
            if entry.1 || now < entry.0 {
                continue;
            }
            entry.1 = true;
            let id = v.record.id.clone();
            let c = containers.clone();
            let due = due.clone();
            std::thread::spawn(move || {
                let cdir = c.dir().join(&id);
                let output = Mutex::new(Vec::new());
                let start = now_ms();
                let exec = ExecSpec {
                    cmd: spec.test.clone(),
                    timeout: Some(spec.timeout),
                    ..Default::default()
                };
                let code = c
                    .exec(&id, &exec, &|_, bytes| {
                        let mut o = output.lock().unwrap_or_else(|p| p.into_inner());
                        if o.len() < OUTPUT_KEEP {
                            o.extend_from_slice(&bytes);
                        }
                    })
                    .unwrap_or(-1);
                let mut out = output.into_inner().unwrap_or_else(|p| p.into_inner());
                out.truncate(OUTPUT_KEEP);
                let mut st = load(&cdir)
                    .filter(|s| s.started_at == started_at)
                    .unwrap_or_else(|| HealthState::starting(started_at));
                st.record(
                    &spec,
                    Probe {
                        start,
                        end: now_ms(),
                        exit_code: code,
                        output: String::from_utf8_lossy(&out).into_owned(),
                    },
                );
                save(&cdir, &st);
                let mut d = due.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(e) = d.get_mut(&id) {
                    *e = (now_ms() + interval, false);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_and_flags() {
        let img = HealthConfig {
            test: vec!["CMD-SHELL".into(), "wget -q localhost".into()],
            interval: 5_000_000_000,
            timeout: 0,
            start_period: 0,
            retries: 0,
        };
        let h = resolve(Some(&img), &HealthFlags::default())
            .unwrap()
            .unwrap();
        assert_eq!(h.test, ["/bin/sh", "-c", "wget -q localhost"]);
        assert_eq!(
            (h.interval, h.timeout, h.retries),
            (Duration::from_secs(5), DEFAULT_TIMEOUT, 3)
        );
        let f = HealthFlags {
            cmd: Some("true".into()),
            retries: Some(1),
            ..Default::default()
        };
        let h = resolve(Some(&img), &f).unwrap().unwrap();
        assert_eq!(
            (h.test[2].as_str(), h.retries, h.interval),
            ("true", 1, Duration::from_secs(5))
        );
        let none = HealthConfig {
            test: vec!["NONE".into()],
            ..img.clone()
        };
        assert_eq!(resolve(Some(&none), &HealthFlags::default()).unwrap(), None);
        let off = HealthFlags {
            disable: true,
            ..Default::default()
        };
        assert_eq!(resolve(Some(&img), &off).unwrap(), None);
    }
}
