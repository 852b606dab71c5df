//! Randomized check of the semaphore's safety and liveness (docs/design/semaphore.md §5).
//!
//! Many clients acquire, release, cancel, drop permits and lose their sessions at random. At every
//! grant the test checks that the holders that can still pass a fence never exceed the limit — both
//! as counted by the clients and as recorded in etcd — and every blocking acquisition must finish
//! within a generous bound (a missed wake-up would leave it waiting for ever).
//!
//! The seed is printed; set `COORD_RANDOM_SEED` to replay one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{BOUND, shared_client};
use coord_core::{Client, Session};
use coord_lock::{Error, Limit, Semaphore};

const LIMIT: u32 = 3;
const CLIENTS: u64 = 16;
const GRANTS_PER_CLIENT: usize = 25;

/// xorshift64*: a tiny deterministic generator, enough for choosing actions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Shared {
    client: Client,
    limit: Limit,
    /// Holders that may pass a fence, as the clients count them: incremented after a grant,
    /// decremented before the permit is given up (release, drop, session kill).
    valid: AtomicUsize,
    grants: AtomicUsize,
    prefix: String,
}

/// A fixed limit: waiters decide by rank alone, grants at enqueue write no mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_fixed_limit_holders_never_exceed_it_and_everyone_acquires() {
    run(Limit::Fixed(LIMIT), "sem_random_fixed").await;
}

/// A stored limit: every grant is marked and waiters decide by the marks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_stored_limit_holders_never_exceed_it_and_everyone_acquires() {
    run(Limit::Stored { default: LIMIT }, "sem_random_stored").await;
}

async fn run(limit: Limit, label: &str) {
    let seed = std::env::var("COORD_RANDOM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::process::id() as u64 * 0x9e37_79b9 + 1);
    println!("COORD_RANDOM_SEED={seed}");

    let client = shared_client(label).await;
    let probe = Session::new(client.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    let prefix = Semaphore::new(&probe, "slots", limit)
        .unwrap()
        .prefix()
        .to_owned();
    let shared = Arc::new(Shared {
        client: client.clone(),
        limit,
        valid: AtomicUsize::new(0),
        grants: AtomicUsize::new(0),
        prefix,
    });

    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let shared = shared.clone();
        tasks.push(tokio::spawn(run_client(
            shared,
            Rng(seed ^ (i + 1).wrapping_mul(0x1234_5678_9abc_def1)),
        )));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        shared.grants.load(Ordering::SeqCst),
        CLIENTS as usize * GRANTS_PER_CLIENT
    );
}

async fn new_session(shared: &Shared) -> (Session, Semaphore) {
    let session = Session::new(shared.client.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    let sem = Semaphore::new(&session, "slots", shared.limit).unwrap();
    (session, sem)
}

async fn run_client(shared: Arc<Shared>, mut rng: Rng) {
    let (mut session, mut sem) = new_session(&shared).await;
    let mut granted = 0;
    while granted < GRANTS_PER_CLIENT {
        match rng.below(10) {
            // Cancel an acquisition at a random moment (maybe before, maybe after the grant).
            0 | 1 => {
                let within = Duration::from_millis(rng.below(30));
                if let Ok(Ok(permit)) = tokio::time::timeout(within, sem.acquire()).await {
                    on_grant(&shared).await;
                    granted += 1;
                    shared.valid.fetch_sub(1, Ordering::SeqCst);
                    permit.release().await.unwrap();
                }
            }
            // Lose the session while waiting (or just after a grant).
            2 => {
                let waiting = tokio::spawn({
                    let sem = sem.clone();
                    async move { sem.acquire().await }
                });
                tokio::time::sleep(Duration::from_millis(rng.below(20))).await;
                session
                    .client()
                    .lease_revoke(session.lease_id())
                    .await
                    .unwrap();
                match tokio::time::timeout(BOUND, waiting)
                    .await
                    .expect("waiter stuck after its session died")
                    .unwrap()
                {
                    // Granted before the revoke landed: a holder until the revoke, never counted
                    // as valid by this client (it makes no fenced writes); etcd's view counted it.
                    Ok(permit) => drop(permit),
                    Err(e) => assert!(
                        e.is_session_lost() || matches!(e, Error::NotHeld { .. }),
                        "{e:?}"
                    ),
                }
                (session, sem) = new_session(&shared).await;
            }
            // A normal acquisition, held for a moment, then released, dropped, or lost with the session.
            _ => {
                let permit = tokio::time::timeout(BOUND, sem.acquire())
                    .await
                    .expect("missed wake-up: an acquisition never completed")
                    .unwrap();
                on_grant(&shared).await;
                granted += 1;
                tokio::time::sleep(Duration::from_millis(rng.below(15))).await;
                shared.valid.fetch_sub(1, Ordering::SeqCst);
                match rng.below(10) {
                    0 => drop(permit),
                    1 => {
                        session
                            .client()
                            .lease_revoke(session.lease_id())
                            .await
                            .unwrap();
                        drop(permit);
                        (session, sem) = new_session(&shared).await;
                    }
                    _ => permit.release().await.unwrap(),
                }
            }
        }
    }
    let _ = session.close().await;
}

/// Checks both views of the holders at a grant.
async fn on_grant(shared: &Shared) {
    let valid = shared.valid.fetch_add(1, Ordering::SeqCst) + 1;
    assert!(
        valid <= LIMIT as usize,
        "{valid} valid holders with a limit of {LIMIT}"
    );
    shared.grants.fetch_add(1, Ordering::SeqCst);

    let read = shared
        .client
        .get(
            shared.prefix.clone(),
            Some(coord_core::etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let held = read
        .kvs()
        .iter()
        .filter(|kv| {
            serde_json::from_slice::<serde_json::Value>(kv.value()).is_ok_and(|v| v["held"] == true)
        })
        .count();
    assert!(
        held <= LIMIT as usize,
        "{held} keys marked held in etcd with a limit of {LIMIT}"
    );
}
