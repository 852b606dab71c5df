//! The nemesis: a seeded random schedule of faults, in two independent loops so member and
//! client faults overlap. Each loop waits a random 0.3–4 s between faults and draws the next
//! from a shuffled round (a deck), so every kind shows up, in fixed proportions, even in a short
//! run; which client or member, and for how long, is random too.
//!
//! | loop | faults |
//! |---|---|
//! | members | SIGKILL a random member or the raft leader, restart it after 0.5 s … 2·TTL + 1 s; SIGSTOP a random member or the leader for as long, then SIGCONT it (one member down or paused at a time: quorum is kept); compact at the current revision |
//! | clients | reset every connection of a client; partition a client for 0.3 s … 2·TTL; delay a client's traffic by 20–300 ms for 1–4 s; freeze a client process (all its tasks, as under `SIGSTOP`) for 0.3 s … 2·TTL; ask a client to "GC-pause" while holding (see [`crate::actors`]) |
//!
//! When stopped, each loop ends its fault in progress (restarts the member, heals the proxy).

use std::sync::Arc;
use std::time::Duration;

use coord_core::etcd_client::CompactionOptions;
use coord_testkit::EtcdCluster;
use tokio_util::sync::CancellationToken;

use crate::history::{FaultKind, History};
use crate::lab::Lab;
use crate::rng::Rng;

/// Faults drawn without replacement from a shuffled round, so that even a short run sees every
/// kind in the proportions given.
#[derive(Debug)]
struct Deck {
    cards: Vec<u8>,
    left: Vec<u8>,
}

impl Deck {
    fn new(cards: &[u8]) -> Deck {
        Deck {
            cards: cards.to_vec(),
            left: Vec::new(),
        }
    }

    fn draw(&mut self, rng: &mut Rng) -> u8 {
        if self.left.is_empty() {
            self.left = self.cards.clone();
        }
        let i = rng.below(self.left.len() as u64) as usize;
        self.left.swap_remove(i)
    }
}

/// Sleeps `d`; false if stopped first.
async fn pass(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        () = stop.cancelled() => false,
        () = tokio::time::sleep(d) => true,
    }
}

/// The member a member fault hits: the raft leader, or a random member; `None` (logged) when no
/// leader can be found.
async fn target(cluster: &EtcdCluster, rng: &mut Rng, leader: bool) -> Option<usize> {
    if !leader {
        return Some(rng.below(cluster.len() as u64) as usize);
    }
    match cluster.leader().await {
        Ok(leader) => Some(leader),
        Err(e) => {
            tracing::warn!(error = %e, "nemesis: no leader to hit");
            None
        }
    }
}

/// Kills, pauses and restarts members and compacts, until `stop`.
pub async fn members(
    lab: Arc<Lab>,
    history: History,
    mut rng: Rng,
    stop: CancellationToken,
    ttl: Duration,
) {
    // Kill a member x2, kill the leader, compact x2, pause a member, pause the leader, shuffled
    // per round.
    let mut deck = Deck::new(&[0, 0, 1, 2, 2, 3, 4]);
    while pass(
        &stop,
        rng.duration(Duration::from_millis(800), Duration::from_secs(4)),
    )
    .await
    {
        match deck.draw(&mut rng) {
            choice @ (0 | 1) => {
                let mut cluster = lab.cluster.lock().await;
                let Some(member) = target(&cluster, &mut rng, choice == 1).await else {
                    continue;
                };
                let kind = [FaultKind::KillMember, FaultKind::KillLeader][usize::from(choice)];
                if let Err(e) = cluster.kill(member) {
                    tracing::warn!(error = %e, "nemesis: kill");
                    continue;
                }
                let fault = history.fault(kind, None, Some(member));
                let down =
                    rng.duration(Duration::from_millis(500), ttl * 2 + Duration::from_secs(1));
                pass(&stop, down).await;
                // Restart even when stopped: the run heals everything it broke.
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    match cluster.restart(member).await {
                        Ok(()) => break,
                        Err(e) if attempts < 5 => {
                            tracing::warn!(error = %e, member, "nemesis: restart failed, again")
                        }
                        Err(e) => {
                            tracing::error!(error = %e, member, "nemesis: member does not come back");
                            break;
                        }
                    }
                }
                history.healed(fault);
            }
            choice @ (3 | 4) => {
                let mut cluster = lab.cluster.lock().await;
                let Some(member) = target(&cluster, &mut rng, choice == 4).await else {
                    continue;
                };
                let kind =
                    [FaultKind::PauseMember, FaultKind::PauseLeader][usize::from(choice - 3)];
                if let Err(e) = cluster.pause(member) {
                    tracing::warn!(error = %e, "nemesis: pause");
                    continue;
                }
                let fault = history.fault(kind, None, Some(member));
                let paused =
                    rng.duration(Duration::from_millis(500), ttl * 2 + Duration::from_secs(1));
                pass(&stop, paused).await;
                // Resume even when stopped: the run heals everything it broke.
                if let Err(e) = cluster.resume(member).await {
                    tracing::error!(error = %e, member, "nemesis: resume failed; restarting the member");
                    if let Err(e) = cluster.restart(member).await {
                        tracing::error!(error = %e, member, "nemesis: member does not come back");
                    }
                }
                history.healed(fault);
            }
            _ => {
                let mut etcd = lab.observer.etcd().clone();
                let revision = match lab.observer.get(lab.observer.key("counter"), None).await {
                    Ok(read) => read.header().map_or(0, |h| h.revision()),
                    Err(e) => {
                        tracing::debug!(error = %e, "nemesis: no revision to compact");
                        continue;
                    }
                };
                match etcd
                    .compact(revision, Some(CompactionOptions::new().with_physical()))
                    .await
                {
                    Ok(_) => {
                        history.fault(FaultKind::Compact, None, None);
                    }
                    Err(e) => tracing::debug!(error = %e, "nemesis: compact"),
                }
            }
        }
    }
}

/// Cuts, partitions, delays and pauses clients, until `stop`.
pub async fn clients(
    lab: Arc<Lab>,
    history: History,
    mut rng: Rng,
    stop: CancellationToken,
    ttl: Duration,
) {
    // Cut x3, blackhole x3, delay x2, freeze x2, pause x2, shuffled per round.
    let mut deck = Deck::new(&[0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 4]);
    while pass(
        &stop,
        rng.duration(Duration::from_millis(300), Duration::from_millis(2500)),
    )
    .await
    {
        let node = Arc::clone(&lab.nodes[rng.below(lab.nodes.len() as u64) as usize]);
        match deck.draw(&mut rng) {
            0 => {
                let fault = history.fault(FaultKind::CutClient, Some(node.index), None);
                // `cut` blocks until the connections are closed.
                let cutting = Arc::clone(&node);
                if let Err(e) = tokio::task::spawn_blocking(move || cutting.cut()).await {
                    tracing::warn!(error = %e, "nemesis: cut");
                }
                // Nothing to heal: recovery counts from the reset.
                history.healed(fault);
            }
            1 => {
                node.partition();
                let fault = history.fault(FaultKind::BlackholeClient, Some(node.index), None);
                pass(&stop, rng.duration(Duration::from_millis(300), ttl * 2)).await;
                node.end_partition();
                history.healed(fault);
            }
            2 => {
                node.delay(rng.duration(Duration::from_millis(20), Duration::from_millis(300)));
                let fault = history.fault(FaultKind::DelayClient, Some(node.index), None);
                pass(
                    &stop,
                    rng.duration(Duration::from_secs(1), Duration::from_secs(4)),
                )
                .await;
                node.end_delay();
                history.healed(fault);
            }
            3 => {
                let d = rng.duration(Duration::from_millis(300), ttl * 2);
                node.freeze(d);
                let fault = history.fault(FaultKind::FreezeClient, Some(node.index), None);
                pass(&stop, d).await;
                node.thaw();
                history.healed(fault);
            }
            _ => node.request_pause(),
        }
    }
}
