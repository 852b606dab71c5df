//! The Semaphore actor: acquire a permit (fixed limit), two or three fenced writes spread over
//! the hold, release. The checker bounds how many permits' write intervals overlap.

use std::time::Duration;

use coord_lock::{Error as LockError, Limit, Semaphore};

use super::{Ctx, LogRecord, Written, maybe_timeout, session};
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
        let writes = 2 + ctx.rng.below(2);
        for i in 0..writes {
            seq += 1;
            let log_key = format!("{LOG}c{}-{seq:07}", ctx.client());
            let record = LogRecord {
                client: ctx.client(),
                token: permit.token().revision(),
                value: None,
            };
            let written = ctx
                .fenced_write(
                    OpKind::SemaphoreWrite,
                    permit.ownership(),
                    log_key,
                    &record,
                    Vec::new(),
                )
                .await;
            if written != Written::Accepted || i + 1 == writes {
                break;
            }
            let work = ctx
                .rng
                .duration(Duration::from_millis(10), Duration::from_millis(150));
            if !ctx.work(work).await {
                break;
            }
        }
        match permit.release().await {
            Ok(()) => ctx
                .history
                .op(ctx.client(), OpKind::SemaphoreRelease, Outcome::Ok, None),
            Err(LockError::NotHeld { .. }) => {
                ctx.history.op(
                    ctx.client(),
                    OpKind::SemaphoreRelease,
                    Outcome::Rejected,
                    None,
                );
            }
            Err(e) => ctx
                .history
                .failed(ctx.client(), OpKind::SemaphoreRelease, None, &e),
        }
        let pause = ctx.rng.duration(Duration::ZERO, Duration::from_millis(150));
        if !ctx.work(pause).await {
            break;
        }
    }
}
