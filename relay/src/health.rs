//! Supervision of the media stages: each stage (`decoder`, `filter`, `encoder`, one per
//! publisher) holds a [`Heartbeat`] and beats when it makes progress. [`Health::check`] is the
//! pure decision `/healthz` serves: unhealthy when a stage died, or when the browser is sending
//! and a stage of the spine made no progress for [`HealthConfig::stall_after`].
//!
//! A panic in a media thread must not leave a silent relay: threads started with
//! [`Health::spawn_thread`] report the panic (with its message) here, and [`Health::died`]
//! resolves, so the binary can log it and exit non-zero for Kubernetes to restart it.

use std::any::Any;
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::watch;

/// Stage name of the decoder thread.
pub const DECODER: &str = "decoder";
/// Stage name of the filter.
pub const FILTER: &str = "filter";
/// Stage name of the encoder.
pub const ENCODER: &str = "encoder";

/// The spine's stages in frame order: a stall is blamed on the first one that stopped.
const SPINE: [&str; 3] = [DECODER, FILTER, ENCODER];

/// The stage name of a publisher (`publisher:sora`).
pub fn publisher_stage(name: &str) -> String {
    format!("publisher:{name}")
}

/// Supervision settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// A spine stage without progress for this long while the browser sends is stalled.
    pub stall_after: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            stall_after: Duration::from_secs(5),
        }
    }
}

/// Why the relay is unhealthy: which stage, and what happened to it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("stage {stage} is unhealthy: {why}")]
pub struct Unhealthy {
    /// The stage's name.
    pub stage: String,
    /// What went wrong.
    pub why: String,
}

#[derive(Clone, Debug)]
enum Status {
    Alive,
    Died,
}

#[derive(Clone, Debug)]
struct Stage {
    /// Registrations of this name still alive (a stage may be hosted by several threads).
    holders: usize,
    registered: Instant,
    last_beat: Instant,
    thread: Option<String>,
    status: Status,
}

#[derive(Debug, Default)]
struct Registry {
    stages: BTreeMap<String, Stage>,
    /// The first death, kept even after its stage is gone.
    first_death: Option<Unhealthy>,
}

/// The registry of stages. Cheap to clone; every clone is the same registry.
#[derive(Clone, Debug)]
pub struct Health {
    config: HealthConfig,
    registry: Arc<Mutex<Registry>>,
    death: watch::Sender<Option<Unhealthy>>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new(HealthConfig::default())
    }
}

impl Health {
    /// An empty registry.
    pub fn new(config: HealthConfig) -> Self {
        Self {
            config,
            registry: Arc::default(),
            death: watch::Sender::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // Every update is a single assignment, so a poisoned lock holds consistent data.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a stage as alive now; it stays registered while the returned heartbeat lives.
    pub fn register(&self, stage: impl Into<String>) -> Heartbeat {
        let stage = stage.into();
        let now = Instant::now();
        let thread = std::thread::current().name().map(str::to_owned);
        let mut registry = self.lock();
        let entry = registry.stages.entry(stage.clone()).or_insert(Stage {
            holders: 0,
            registered: now,
            last_beat: now,
            thread: thread.clone(),
            status: Status::Alive,
        });
        entry.holders += 1;
        if matches!(entry.status, Status::Alive) && entry.holders == 1 {
            entry.registered = now;
            entry.last_beat = now;
            entry.thread = thread;
        }
        Heartbeat {
            health: self.clone(),
            stage,
        }
    }

    fn beat(&self, stage: &str, now: Instant) {
        if let Some(s) = self.lock().stages.get_mut(stage) {
            s.last_beat = s.last_beat.max(now);
        }
    }

    /// Records that `stage` died; the first death is what [`Health::died`] resolves with (a
    /// later, more precise report about the same stage refines it).
    pub fn report_death(&self, stage: &str, why: impl Into<String>) {
        let why = why.into();
        tracing::error!(stage, %why, "media stage died");
        let mut registry = self.lock();
        let now = Instant::now();
        let entry = registry.stages.entry(stage.to_owned()).or_insert(Stage {
            holders: 0,
            registered: now,
            last_beat: now,
            thread: None,
            status: Status::Alive,
        });
        entry.status = Status::Died;
        let first = registry.first_death.as_ref();
        if first.is_none_or(|d| d.stage == stage) {
            let death = Unhealthy {
                stage: stage.to_owned(),
                why,
            };
            registry.first_death = Some(death.clone());
            drop(registry);
            self.death.send_replace(Some(death));
        }
    }

    /// A panic in `thread`: every stage registered from that thread died of it (or the thread
    /// itself, when it hosted none).
    fn report_panic(&self, thread: &str, message: &str) {
        let why = format!("thread '{thread}' panicked: {message}");
        let stages: Vec<String> = self
            .lock()
            .stages
            .iter()
            .filter(|(_, s)| s.thread.as_deref() == Some(thread))
            .map(|(name, _)| name.clone())
            .collect();
        if stages.is_empty() {
            self.report_death(thread, why.clone());
        }
        for stage in stages {
            self.report_death(&stage, why.clone());
        }
    }

    fn release(&self, stage: &str) {
        let mut registry = self.lock();
        if let Some(s) = registry.stages.get_mut(stage) {
            s.holders = s.holders.saturating_sub(1);
            if s.holders == 0 && matches!(s.status, Status::Alive) {
                registry.stages.remove(stage);
            }
        }
    }

    /// Whether the relay is healthy at `now`. Fails when a stage died, or when the browser is
    /// sending and a stage of the spine (decoder → filter → encoder) made no progress for
    /// `stall_after` since the later of its last beat and the start of the browser's stream
    /// (when its decoder registered); the first stalled stage in frame order is named.
    pub fn check(&self, now: Instant, browser_sending: bool) -> Result<(), Unhealthy> {
        let registry = self.lock();
        if let Some(death) = &registry.first_death {
            return Err(death.clone());
        }
        if !browser_sending {
            return Ok(());
        }
        // Without a decoder the stream has not started: nothing can be late yet.
        let Some(stream_start) = registry.stages.get(DECODER).map(|d| d.registered) else {
            return Ok(());
        };
        for name in SPINE {
            let Some(stage) = registry.stages.get(name) else {
                continue;
            };
            let since = stage.last_beat.max(stream_start);
            let idle = now.saturating_duration_since(since);
            if idle > self.config.stall_after {
                return Err(Unhealthy {
                    stage: name.to_owned(),
                    why: format!(
                        "no frame for {:.1} s while the browser is sending (limit {:.1} s)",
                        idle.as_secs_f64(),
                        self.config.stall_after.as_secs_f64()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Resolves with the first stage death (at once if one already happened).
    pub async fn died(&self) -> Unhealthy {
        let mut rx = self.death.subscribe();
        loop {
            if let Some(death) = rx.borrow_and_update().clone() {
                return death;
            }
            if rx.changed().await.is_err() {
                // The sender lives in `self`, so this cannot happen while we borrow it.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Starts a named thread whose panic is caught, logged and reported as the death of the
    /// stages it registered (or of the thread's name), instead of vanishing silently.
    pub fn spawn_thread<F>(&self, name: &str, f: F) -> std::io::Result<JoinHandle<()>>
    where
        F: FnOnce() + Send + 'static,
    {
        let health = self.clone();
        let thread = name.to_owned();
        std::thread::Builder::new().name(name.to_owned()).spawn(move || {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(f)) {
                health.report_panic(&thread, &panic_message(payload.as_ref()));
            }
        })
    }
}

/// Runs the async task of `stage` (a publisher); a panic is reported as the stage's death (so
/// `/healthz` names it and the relay exits to be restarted) instead of vanishing with the task.
pub async fn supervise(health: Health, stage: String, task: impl Future<Output = ()>) {
    if let Err(payload) = AssertUnwindSafe(task).catch_unwind().await {
        health.report_death(&stage, format!("task panicked: {}", panic_message(payload.as_ref())));
    }
}

/// The text of a panic payload (`panic!("...")` gives a `&str` or a `String`).
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// A stage's registration: beat on progress; dropping it ends the stage (or, while its thread
/// unwinds from a panic, reports the stage as died).
#[derive(Debug)]
pub struct Heartbeat {
    health: Health,
    stage: String,
}

impl Heartbeat {
    /// The stage made progress now.
    pub fn beat(&self) {
        self.beat_at(Instant::now());
    }

    /// The stage made progress at `now`.
    pub fn beat_at(&self, now: Instant) {
        self.health.beat(&self.stage, now);
    }

    /// The stage's name.
    pub fn stage(&self) -> &str {
        &self.stage
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let thread = std::thread::current().name().unwrap_or("unnamed").to_owned();
            self.health
                .report_death(&self.stage, format!("thread '{thread}' panicked"));
        }
        self.health.release(&self.stage);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[tokio::test]
    async fn a_publisher_task_that_panics_is_a_dead_stage_named_after_it() {
        let health = Health::default();

        supervise(health.clone(), publisher_stage("sora"), async {
            panic!("signaling state corrupt");
        })
        .await;

        let death = health.check(Instant::now(), false).unwrap_err();
        assert_eq!(death.stage, "publisher:sora");
        assert!(death.why.contains("signaling state corrupt"), "{}", death.why);
        assert_eq!(health.died().await, death);
    }

    #[tokio::test]
    async fn a_publisher_task_that_ends_normally_is_no_death() {
        let health = Health::default();
        supervise(health.clone(), publisher_stage("whip"), async {}).await;
        assert_eq!(health.check(Instant::now(), true), Ok(()));
    }

    #[test]
    fn an_idle_relay_without_a_browser_is_healthy() {
        let health = Health::default();
        let _filter = health.register(FILTER);
        let _encoder = health.register(ENCODER);

        assert_eq!(health.check(Instant::now() + secs(3600), false), Ok(()));
    }

    #[test]
    fn a_stall_while_the_browser_sends_names_the_first_stalled_stage() {
        let health = Health::default();
        let filter = health.register(FILTER);
        let encoder = health.register(ENCODER);
        let decoder = health.register(DECODER);
        let t0 = Instant::now();

        decoder.beat_at(t0 + secs(6));
        filter.beat_at(t0 + secs(6));
        encoder.beat_at(t0 + secs(1));
        let err = health.check(t0 + secs(7), true).unwrap_err();

        assert_eq!(err.stage, ENCODER);
        assert!(err.why.contains("no frame for"), "{}", err.why);
        assert_eq!(health.check(t0 + secs(7), false), Ok(()), "not sending: no stall");
        encoder.beat_at(t0 + secs(7));
        assert_eq!(health.check(t0 + secs(8), true), Ok(()));
    }

    #[test]
    fn stages_idle_before_the_stream_started_get_the_full_grace_period() {
        let health = Health::default();
        let _encoder = health.register(ENCODER);
        let t0 = Instant::now();

        // The browser starts long after the encoder last worked.
        let decoder = health.register(DECODER);
        let started = Instant::now();

        assert_eq!(health.check(started + secs(4), true), Ok(()));
        decoder.beat_at(started + secs(5));
        let err = health.check(started + secs(6), true).unwrap_err();
        assert_eq!(err.stage, ENCODER);
        assert!(t0 <= started);
    }

    #[test]
    fn a_panicking_thread_reports_its_stages_as_died_with_the_message() {
        let health = Health::default();
        let inner = health.clone();

        let thread = health
            .spawn_thread("filter", move || {
                let _filter = inner.register(FILTER);
                let _encoder = inner.register(ENCODER);
                panic!("model exploded");
            })
            .unwrap();
        thread.join().unwrap();

        let err = health.check(Instant::now(), false).unwrap_err();
        assert!(err.stage == FILTER || err.stage == ENCODER, "{err}");
        assert_eq!(err.why, "thread 'filter' panicked: model exploded");
        let died = futures_util::FutureExt::now_or_never(health.died()).expect("resolved");
        assert_eq!(died, err);
    }

    #[test]
    fn a_stage_that_ends_normally_is_not_a_death() {
        let health = Health::default();
        let inner = health.clone();

        health
            .spawn_thread("decode", move || {
                let beat = inner.register(DECODER);
                beat.beat();
            })
            .unwrap()
            .join()
            .unwrap();

        assert_eq!(health.check(Instant::now() + secs(60), true), Ok(()));
        assert!(futures_util::FutureExt::now_or_never(health.died()).is_none());
    }

    #[test]
    fn a_panic_in_a_thread_without_stages_is_reported_under_the_thread_name() {
        let health = Health::default();

        health
            .spawn_thread("test-pattern", || panic!("{}", String::from("owned message")))
            .unwrap()
            .join()
            .unwrap();

        let err = health.check(Instant::now(), false).unwrap_err();
        assert_eq!(err.stage, "test-pattern");
        assert_eq!(err.why, "thread 'test-pattern' panicked: owned message");
    }

    #[test]
    fn publisher_stages_are_named_after_the_publisher() {
        assert_eq!(publisher_stage("sora"), "publisher:sora");
    }
}
