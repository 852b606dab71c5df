//! The Semaphore actors: acquire a permit (fixed limit; or, in [`run_stored`], a stored limit that
//! changes at run time, as a permit or a durable slot), two or three fenced writes spread over the
//! hold, release. The checker bounds how many holders' write intervals overlap.

use std::time::Duration;

use coord_core::Ownership;
use coord_lock::{Durability, Error as LockError, Limit, Semaphore};

use super::{Ctx, maybe_timeout, session};
use crate::history::{OpKind, Outcome};

/// The semaphore's name.
pub const NAME: &str = "sem";
/// The prefix of the permits' log keys.
pub const LOG: &str = "sem-log/";

/// Runs until stopped.
pub async fn run(mut ctx: Ctx, limit: u32) {
    let mut seq = 0u64;
    while let Some(session) = session(&mut ctx).await {
        let semaphore = match Semaphore::new(&session, NAME, Limit::Fixed(limit)) {
            Ok(semaphore) => semaphore,
            Err(e) => {
                tracing::error!(error = %e, "bad semaphore");
                return;
            }
        };
        let bound = maybe_timeout(&mut ctx.rng);
        let acquired = tokio::select! {
            () = ctx.stop.cancelled() => break,
            r = async { match bound { Some(b) => semaphore.acquire_timeout(b).await, None => semaphore.acquire().await } } => r,
        };
        let permit = match acquired {
            Ok(permit) => {
                ctx.history
                    .op(ctx.client(), OpKind::SemaphoreAcquire, Outcome::Ok, None);
                permit
            }
            Err(LockError::TimedOut { .. }) => {
                ctx.history.op(
                    ctx.client(),
                    OpKind::SemaphoreAcquire,
                    Outcome::Cancelled,
                    None,
                );
                continue;
            }
            Err(e) => {
                ctx.history
                    .failed(ctx.client(), OpKind::SemaphoreAcquire, None, &e);
                ctx.work(Duration::from_millis(50)).await;
                continue;
            }
        };
        hold(&mut ctx, permit.ownership(), LOG, &mut seq).await;
        let released = permit.release().await;
        if !released_then_pause(&mut ctx, released).await {
            break;
        }
    }
}

/// The stored-limit semaphore's name.
pub const STORED_NAME: &str = "sem-stored";
/// The prefix of its holders' log keys.
pub const STORED_LOG: &str = "sem-stored-log/";

/// A holder of the stored-limit semaphore: a session-bound permit or a durable slot.
enum Holding {
    Permit(coord_lock::Permit),
    Durable(coord_lock::DurableSlot),
}

impl Holding {
    fn ownership(&self) -> Ownership {
        match self {
            Holding::Permit(permit) => permit.ownership().clone(),
            Holding::Durable(slot) => Ownership::new(slot.key(), slot.token().revision()),
        }
    }
}

/// Runs until stopped: the semaphore [`STORED_NAME`] with a limit stored in etcd that every
/// actor moves between `limit` and `limit + 1` now and then (`set_limit`, which never evicts),
/// taken half the time as a session-bound permit and half the time as a durable slot under the
/// client's own id (`acquire_as` / `release_as`) — a third of those expiring on their own after
/// 2–5 s (`Durability::Expires`, a lease nobody renews, so a paused holder outlives its slot);
/// fenced writes as [`run`]'s. The checker bounds the overlap by `limit + 1`.
pub async fn run_stored(mut ctx: Ctx, limit: u32) {
    let mut seq = 0u64;
    let id = format!("c{}", ctx.client());
    while let Some(session) = session(&mut ctx).await {
        let semaphore =
            match Semaphore::new(&session, STORED_NAME, Limit::Stored { default: limit }) {
                Ok(semaphore) => semaphore,
                Err(e) => {
                    tracing::error!(error = %e, "bad semaphore");
                    return;
                }
            };
        if ctx.rng.below(6) == 0 {
            let to = limit + ctx.rng.below(2) as u32;
            if let Err(e) = semaphore.set_limit(to).await {
                tracing::debug!(error = %e, "set_limit");
            }
        }
        let durable = ctx.rng.below(2) == 0;
        let durability = if ctx.rng.below(3) == 0 {
            Durability::Expires(Duration::from_secs(2 + ctx.rng.below(4)))
        } else {
            Durability::UntilReleased
        };
        let bound = maybe_timeout(&mut ctx.rng);
        let acquire = async {
            if durable {
                let slot = semaphore.acquire_as(&id, durability);
                match bound {
                    Some(b) => tokio::time::timeout(b, slot)
                        .await
                        .unwrap_or(Err(LockError::TimedOut {
                            name: STORED_NAME.to_owned(),
                            after: b,
                        }))
                        .map(Holding::Durable),
                    None => slot.await.map(Holding::Durable),
                }
            } else {
                match bound {
                    Some(b) => semaphore.acquire_timeout(b).await,
                    None => semaphore.acquire().await,
                }
                .map(Holding::Permit)
            }
        };
        let acquired = tokio::select! {
            () = ctx.stop.cancelled() => break,
            r = acquire => r,
        };
        let holding = match acquired {
            Ok(holding) => {
                ctx.history
                    .op(ctx.client(), OpKind::SemaphoreAcquire, Outcome::Ok, None);
                holding
            }
            Err(e) => {
                match e {
                    LockError::TimedOut { .. } => ctx.history.op(
                        ctx.client(),
                        OpKind::SemaphoreAcquire,
                        Outcome::Cancelled,
                        None,
                    ),
                    e => ctx
                        .history
                        .failed(ctx.client(), OpKind::SemaphoreAcquire, None, &e),
                }
                // A durable grant may have been written before the failure: give it back.
                if durable {
                    let _ = semaphore.release_as(&id).await;
                }
                ctx.work(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ownership = holding.ownership();
        hold(&mut ctx, &ownership, STORED_LOG, &mut seq).await;
        let released = match holding {
            Holding::Permit(permit) => permit.release().await,
            Holding::Durable(_) => semaphore.release_as(&id).await,
        };
        if !released_then_pause(&mut ctx, released).await {
            break;
        }
    }
    // A durable slot outlives sessions: never leave one behind.
    let admin = coord_lock::SemaphoreAdmin::new(
        &ctx.node.client,
        STORED_NAME,
        Limit::Stored { default: limit },
    );
    if let Ok(admin) = admin {
        let _ = admin.release_as(&id).await;
    }
}

/// The hold: 2–3 fenced writes of `log` + `<client>-<seq>`, 10–150 ms apart, until one is not
/// accepted or the actor is stopped.
async fn hold(ctx: &mut Ctx, ownership: &Ownership, log: &str, seq: &mut u64) {
    let writes = 2 + ctx.rng.below(2);
    ctx.log_writes(
        OpKind::SemaphoreWrite,
        ownership,
        log,
        writes,
        seq,
        Duration::from_millis(150),
    )
    .await;
}

/// Records a release's outcome, then pauses 0–150 ms; `false` once the actor is stopped.
async fn released_then_pause(ctx: &mut Ctx, released: Result<(), LockError>) -> bool {
    match released {
        Ok(()) => ctx
            .history
            .op(ctx.client(), OpKind::SemaphoreRelease, Outcome::Ok, None),
        Err(LockError::NotHeld { .. }) => ctx.history.op(
            ctx.client(),
            OpKind::SemaphoreRelease,
            Outcome::Rejected,
            None,
        ),
        Err(e) => ctx
            .history
            .failed(ctx.client(), OpKind::SemaphoreRelease, None, &e),
    }
    let pause = ctx.rng.duration(Duration::ZERO, Duration::from_millis(150));
    ctx.work(pause).await
}
