//! The Election actor: campaign, one to four fenced leader writes, resign. The checker wants the
//! terms (tokens) of accepted writes to strictly increase, each term's writes contiguous.

use std::time::Duration;

use coord_leader::{Election, Error as LeaderError};

use super::{Ctx, maybe_timeout, session};
use crate::history::{OpKind, Outcome};

/// The election's name.
pub const NAME: &str = "leader";
/// The prefix of the leaders' log keys.
pub const LOG: &str = "leader-log/";

/// Runs until stopped.
pub async fn run(mut ctx: Ctx) {
    let mut seq = 0u64;
    while let Some(session) = session(&mut ctx).await {
        let election = match Election::new(&session, NAME) {
            Ok(election) => election,
            Err(e) => {
                tracing::error!(error = %e, "bad election name");
                return;
            }
        };
        let bound = maybe_timeout(&mut ctx.rng);
        let value = format!("c{}", ctx.client());
        let campaign = async {
            match bound {
                Some(b) => tokio::time::timeout(b, election.campaign(value)).await.ok(),
                None => Some(election.campaign(value).await),
            }
        };
        let campaigned = tokio::select! {
            () = ctx.stop.cancelled() => break,
            r = campaign => r,
        };
        let leadership = match campaigned {
            Some(Ok(leadership)) => {
                ctx.history
                    .op(ctx.client(), OpKind::Campaign, Outcome::Ok, None);
                leadership
            }
            None => {
                ctx.history
                    .op(ctx.client(), OpKind::Campaign, Outcome::Cancelled, None);
                continue;
            }
            Some(Err(e)) => {
                ctx.history.failed(ctx.client(), OpKind::Campaign, None, &e);
                ctx.work(Duration::from_millis(50)).await;
                continue;
            }
        };
        let writes = 1 + ctx.rng.below(4);
        ctx.log_writes(
            OpKind::LeaderWrite,
            leadership.ownership(),
            LOG,
            writes,
            &mut seq,
            Duration::from_millis(120),
        )
        .await;
        match leadership.resign().await {
            Ok(()) => ctx
                .history
                .op(ctx.client(), OpKind::Resign, Outcome::Ok, None),
            Err(LeaderError::NotLeader { .. }) => {
                ctx.history
                    .op(ctx.client(), OpKind::Resign, Outcome::Rejected, None);
            }
            Err(e) => ctx.history.failed(ctx.client(), OpKind::Resign, None, &e),
        }
        let pause = ctx.rng.duration(Duration::ZERO, Duration::from_millis(150));
        if !ctx.work(pause).await {
            break;
        }
    }
}
