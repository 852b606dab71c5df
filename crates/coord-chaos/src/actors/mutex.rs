//! The Mutex actor: lock, one to three fenced increments of `counter` (read, then a write of the
//! read value + 1 guarded only by ownership — so a second holder at the same time would lose an
//! increment), unlock.

use std::time::Duration;

use coord_core::etcd_client::TxnOp;
use coord_lock::{Error as LockError, Mutex};

use super::{Ctx, LogRecord, Written, maybe_timeout, session};
use crate::history::{OpKind, Outcome};

/// The mutex's name.
pub const NAME: &str = "mutex";
/// The counter every holder increments.
pub const COUNTER: &str = "counter";
/// The prefix of the increments' log keys.
pub const LOG: &str = "mutex-log/";

/// Runs until stopped.
pub async fn run(mut ctx: Ctx) {
    let mut seq = 0u64;
    while let Some(session) = session(&mut ctx).await {
        let mutex = match Mutex::new(&session, NAME) {
            Ok(mutex) => mutex,
            Err(e) => {
                tracing::error!(error = %e, "bad mutex name");
                return;
            }
        };
        let bound = maybe_timeout(&mut ctx.rng);
        let locked = tokio::select! {
            () = ctx.stop.cancelled() => break, // a dropped wait: its key is removed
            r = async { match bound { Some(b) => mutex.lock_timeout(b).await, None => mutex.lock().await } } => r,
        };
        let guard = match locked {
            Ok(guard) => {
                ctx.history
                    .op(ctx.client(), OpKind::MutexLock, Outcome::Ok, None);
                guard
            }
            Err(LockError::TimedOut { .. }) => {
                ctx.history
                    .op(ctx.client(), OpKind::MutexLock, Outcome::Cancelled, None);
                continue;
            }
            Err(e) => {
                ctx.history
                    .failed(ctx.client(), OpKind::MutexLock, None, &e);
                ctx.work(Duration::from_millis(50)).await;
                continue;
            }
        };
        let increments = 1 + ctx.rng.below(3);
        for _ in 0..increments {
            seq += 1;
            let log_key = format!("{LOG}c{}-{seq:07}", ctx.client());
            let client = ctx.node.client.clone();
            let counter_key = client.key(COUNTER);
            let current = match client.get(counter_key.clone(), None).await {
                Ok(read) => read
                    .kvs()
                    .first()
                    .and_then(|kv| std::str::from_utf8(kv.value()).ok()?.parse::<u64>().ok())
                    .unwrap_or(0),
                Err(e) => {
                    ctx.history
                        .failed(ctx.client(), OpKind::MutexIncrement, None, &e);
                    break;
                }
            };
            let next = current + 1;
            let record = LogRecord {
                client: ctx.client(),
                token: guard.token().revision(),
                value: Some(next),
            };
            let written = ctx
                .fenced_write(
                    OpKind::MutexIncrement,
                    guard.ownership(),
                    log_key,
                    &record,
                    vec![TxnOp::put(counter_key, next.to_string(), None)],
                )
                .await;
            if written != Written::Accepted {
                break;
            }
            let work = ctx
                .rng
                .duration(Duration::from_millis(5), Duration::from_millis(80));
            if !ctx.work(work).await {
                break;
            }
        }
        match guard.unlock().await {
            Ok(()) => ctx
                .history
                .op(ctx.client(), OpKind::MutexUnlock, Outcome::Ok, None),
            Err(LockError::NotHeld { .. }) => {
                ctx.history
                    .op(ctx.client(), OpKind::MutexUnlock, Outcome::Rejected, None);
            }
            Err(e) => ctx
                .history
                .failed(ctx.client(), OpKind::MutexUnlock, None, &e),
        }
        let pause = ctx.rng.duration(Duration::ZERO, Duration::from_millis(150));
        if !ctx.work(pause).await {
            break;
        }
    }
}
