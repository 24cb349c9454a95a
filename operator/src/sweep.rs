//! Every ImageFlux channel accounted for. A create whose answer was lost (a crash, a timeout, a
//! status write that failed) can leave a channel that bills while no session records it. The
//! sweep lists each ImageFlux account the sessions use, calls a channel no session records a
//! stray on its second sighting, reports it (log, metric, a Warning event on the session whose
//! request was interrupted) and, when the operator is told it owns the account
//! (`--delete-orphan-channels`), deletes it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::events::EventType;
use kube::runtime::reflector::Store;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::controller::{Context, delete_with_retries, provider, read_secret};
use crate::crd::LiveFilterSession;

/// What one look at one account decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Unrecorded now and at the previous look: strays.
    pub strays: Vec<String>,
    /// Unrecorded now: strays if still so at the next look.
    pub suspects: HashSet<String>,
}

/// Judges the channels `listed` in an account against those sessions record (`claimed`) and
/// those unrecorded at the previous look (`suspects`). A channel is a stray only on its second
/// unrecorded sighting, so that a create answered between the listing and the recording is
/// never taken for one.
pub fn judge(listed: &[String], claimed: &HashSet<String>, suspects: &HashSet<String>) -> Verdict {
    let unclaimed: HashSet<String> = listed.iter().filter(|id| !claimed.contains(*id)).cloned().collect();
    let mut strays: Vec<String> = unclaimed.intersection(suspects).cloned().collect();
    strays.sort();
    Verdict {
        strays,
        suspects: unclaimed,
    }
}

/// The channel ids sessions record (any account: a superset is safe).
fn claimed_by(sessions: &[Arc<LiveFilterSession>], ctx: &Context) -> HashSet<String> {
    let mut claimed: HashSet<String> = sessions
        .iter()
        .filter_map(|s| s.status.as_ref()?.channel.as_ref())
        .filter(|c| c.provider == provider::IMAGEFLUX)
        .filter_map(|c| c.id.clone())
        .collect();
    claimed.extend(ctx.live_created_channels());
    claimed
}

/// Logs a stray once, with a Warning event on each session of its account whose channel request
/// was interrupted (the likely creator).
async fn report(ctx: &Context, id: &str, users: &[Arc<LiveFilterSession>], interrupted: &HashSet<String>) {
    let deleting = ctx.settings.delete_orphan_channels;
    warn!(channel = %id, deleting, "ImageFlux channel that no session records");
    let what = if deleting {
        "deleting it"
    } else {
        "delete it, or run the operator with --delete-orphan-channels if it owns the account"
    };
    for s in users
        .iter()
        .filter(|s| s.uid().is_some_and(|u| interrupted.contains(&u)))
    {
        ctx.event(
            s,
            EventType::Warning,
            "StrayChannel",
            format!("ImageFlux channel {id} is recorded by no session, likely created by an interrupted request of this one; {what}"),
        )
        .await;
    }
}

/// The sweep's memory between looks.
#[derive(Default)]
struct Ledger {
    /// Per account (its token), the channels unrecorded at the last look.
    suspects: HashMap<String, HashSet<String>>,
    /// Per account, the strays already reported (each once, for as long as it stays a stray).
    reported: HashMap<String, HashSet<String>>,
    /// Strays per account at the last look, for the gauge.
    strays: HashMap<String, usize>,
}

/// Runs the sweep every `ctx.settings.channel_sweep_interval` until `token` is cancelled.
pub async fn run(ctx: Arc<Context>, sessions: Store<LiveFilterSession>, token: CancellationToken) {
    let every = ctx.settings.channel_sweep_interval;
    // The first look waits one interval, so the session store has listed everything (a look
    // at a half-filled store would only suspect, never convict: a stray takes two looks).
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ledger = Ledger::default();
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            _ = tick.tick() => {}
        }
        sweep_once(&ctx, &sessions.state(), &mut ledger).await;
    }
    info!("channel sweep stopped");
}

/// One look at every account the sessions use.
async fn sweep_once(ctx: &Context, sessions: &[Arc<LiveFilterSession>], ledger: &mut Ledger) {
    if ctx.creating_channels() {
        // A channel may exist that no one could record yet; look again next time.
        return;
    }
    // Accounts by token; each with the sessions that use it.
    let mut accounts: BTreeMap<String, Vec<Arc<LiveFilterSession>>> = BTreeMap::new();
    // Sessions mostly share a Secret: each is read once per look.
    let mut tokens: HashMap<(String, String, Option<String>), Option<String>> = HashMap::new();
    for s in sessions {
        let Some(flux) = s.spec.output.imageflux.as_ref() else {
            continue;
        };
        let ns = s.namespace().unwrap_or_default();
        let secret = ctx.settings.imageflux_token_ref(flux);
        let key = (ns.clone(), secret.name.clone(), secret.key.clone());
        let token = match tokens.get(&key) {
            Some(known) => known.clone(),
            None => {
                let read = read_secret(ctx, &ns, &secret, "token").await;
                // The reconcile reports a missing Secret on the session itself.
                if let Err(e) = &read {
                    tracing::debug!(session = %s.name_any(), error = %e, "no token for the sweep");
                }
                let token = read.ok();
                tokens.insert(key, token.clone());
                token
            }
        };
        if let Some(token) = token {
            accounts.entry(token).or_default().push(s.clone());
        }
    }
    let claimed = claimed_by(sessions, ctx);
    ledger.suspects.retain(|token, _| accounts.contains_key(token));
    ledger.reported.retain(|token, _| accounts.contains_key(token));
    ledger.strays.retain(|token, _| accounts.contains_key(token));
    for (token, users) in &accounts {
        let listed = match ctx.imageflux.list_channel_ids(token).await {
            Ok(ids) => ids,
            Err(e) => {
                warn!(error = %e, "channel sweep: cannot list the account's channels");
                continue;
            }
        };
        let previous = ledger.suspects.remove(token).unwrap_or_default();
        let verdict = judge(&listed, &claimed, &previous);
        let uids: HashSet<String> = users.iter().filter_map(|s| s.uid()).collect();
        let reported = ledger.reported.remove(token).unwrap_or_default();
        // An interrupted request is settled by the first new stray (its likely channel) or by
        // an account with nothing unrecorded (it created none).
        let settles = verdict.strays.iter().any(|id| !reported.contains(id)) || verdict.suspects.is_empty();
        let interrupted = if settles {
            ctx.take_interrupted(&uids)
        } else {
            HashSet::new()
        };
        let mut deleted = HashSet::new();
        for id in &verdict.strays {
            if !reported.contains(id) {
                report(ctx, id, users, &interrupted).await;
            }
            if ctx.settings.delete_orphan_channels {
                match delete_with_retries(&ctx.imageflux, token, id).await {
                    Ok(_) => {
                        info!(channel = %id, "stray ImageFlux channel deleted");
                        ctx.metrics.stray_channels_deleted.inc();
                        deleted.insert(id.clone());
                    }
                    Err(e) => warn!(channel = %id, error = %e, "cannot delete the stray ImageFlux channel"),
                }
            }
        }
        let still: HashSet<String> = verdict
            .strays
            .iter()
            .filter(|id| !deleted.contains(*id))
            .cloned()
            .collect();
        ledger.strays.insert(token.clone(), still.len());
        ledger.reported.insert(token.clone(), still);
        let suspects: HashSet<String> = verdict.suspects.difference(&deleted).cloned().collect();
        ledger.suspects.insert(token.clone(), suspects);
    }
    ctx.metrics
        .stray_channels
        .set(ledger.strays.values().sum::<usize>() as i64);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn set(v: &[&str]) -> HashSet<String> {
        ids(v).into_iter().collect()
    }

    #[test]
    fn an_unrecorded_channel_is_only_a_suspect_on_its_first_sighting() {
        let v = judge(&ids(&["a", "b"]), &set(&["a"]), &set(&[]));
        assert!(v.strays.is_empty());
        assert_eq!(v.suspects, set(&["b"]));
    }

    #[test]
    fn an_unrecorded_channel_seen_twice_is_a_stray() {
        let v = judge(&ids(&["a", "b", "c"]), &set(&["a"]), &set(&["b"]));
        assert_eq!(v.strays, ids(&["b"]));
        assert_eq!(v.suspects, set(&["b", "c"]));
    }

    #[test]
    fn a_suspect_recorded_since_is_no_stray() {
        let v = judge(&ids(&["a", "b"]), &set(&["a", "b"]), &set(&["b"]));
        assert!(v.strays.is_empty());
        assert!(v.suspects.is_empty());
    }

    #[test]
    fn a_suspect_gone_from_the_account_is_forgotten() {
        let v = judge(&ids(&["a"]), &set(&["a"]), &set(&["b"]));
        assert_eq!(v, Verdict::default());
    }
}
