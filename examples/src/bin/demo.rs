//! The coord demo: a session, a lock and an election on an embedded etcd.
//!
//! Run it with `cargo xtask demo`. It starts its own etcd (from the `etcd-bin-vendored` crate) unless
//! `COORD_ENDPOINTS` (or `ETCDCTL_ENDPOINTS`) points at one.
//!
//! The lock is coord's `Mutex` and the election coord's `Election` (both wire-compatible with Go's
//! `concurrency` package, and so with `etcdctl lock` / `etcdctl elect`). Writes are guarded with
//! fencing compares.

use std::time::{Duration, Instant};

use anyhow::Context;
use coord_core::etcd_client::{Txn, TxnOp};
use coord_core::{Client, ClientConfig, Ownership, Session};
use coord_leader::Election;
use coord_lock::Mutex;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    coord_examples::init_tracing();

    // Keep the embedded server alive until the end of main; it is killed when dropped.
    let (_embedded, endpoints) = coord_examples::etcd_from_env_or_embedded().await?;
    let client = ClientConfig::new(endpoints.clone())
        .with_namespace(format!("coord-demo/{}/", std::process::id()))
        .connect()
        .await?;
    let info = client.check().await.context("reaching etcd")?;
    println!("connected to etcd {} at {:?}", info.version, endpoints);

    sessions(&client).await?;
    lock_and_fencing(&client).await?;
    election(&client).await?;
    println!("\ndone.");
    Ok(())
}

async fn sessions(client: &Client) -> anyhow::Result<()> {
    println!("\n== sessions ==");
    let session = Session::new(client.clone(), Duration::from_secs(1)).await?;
    println!(
        "asked for a 1 s TTL, etcd granted {:?} (its minimum)",
        session.ttl()
    );
    println!(
        "lease {} is kept alive every {:?}; loss is declared {:?} before the server could expire it",
        session.lease_id(),
        session.ttl() / 3,
        session.loss_margin()
    );
    let key = client.key("presence/demo");
    let lease = coord_core::etcd_client::PutOptions::new().with_lease(session.lease_id().get());
    client.put(key.clone(), "here", Some(lease)).await?;
    session.close().await?;
    let left = client.get(key, None).await?.kvs().len();
    println!("closed the session: {left} presence key(s) left (the lease was revoked)");
    Ok(())
}

async fn lock_and_fencing(client: &Client) -> anyhow::Result<()> {
    println!("\n== a lock (coord_lock::Mutex), and a fenced write ==");
    let alice = Session::new(client.clone(), Duration::from_secs(5)).await?;
    let bob = Session::new(client.clone(), Duration::from_secs(5)).await?;

    let held = Mutex::new(&alice, "locks/report")?.lock().await?;
    let alice_owns = held.ownership().clone();
    println!(
        "alice holds {} (fencing token {})",
        held.key(),
        held.token()
    );

    let bob_mutex = Mutex::new(&bob, "locks/report")?;
    let bob_wait = tokio::spawn(async move {
        let guard = bob_mutex.lock().await;
        guard.map(|g| (g, Instant::now()))
    });

    println!(
        "alice writes, guarded by her ownership: applied = {}",
        fenced_write(client, &alice_owns, "alice").await?
    );
    println!("alice's session is closed (as if it expired during a long pause)…");
    let released = Instant::now();
    std::mem::forget(held); // the session's end, not an unlock, takes the lock away
    alice.close().await?;

    let (bob_guard, acquired) = bob_wait.await??;
    println!(
        "bob got the lock {:?} after alice's lease was revoked: {} (token {})",
        acquired.duration_since(released),
        bob_guard.key(),
        bob_guard.token()
    );
    println!(
        "alice wakes up and writes: applied = {}",
        fenced_write(client, &alice_owns, "alice").await?
    );
    println!(
        "bob writes: applied = {}",
        fenced_write(client, bob_guard.ownership(), "bob").await?
    );
    bob_guard.unlock().await?;
    bob.close().await?;
    Ok(())
}

async fn election(client: &Client) -> anyhow::Result<()> {
    println!("\n== an election (coord_leader::Election) ==");
    let first = Session::new(client.clone(), Duration::from_secs(5)).await?;
    let second = Session::new(client.clone(), Duration::from_secs(5)).await?;
    let node_a = Election::new(&first, "elections/scheduler")?;
    let node_b = Election::new(&second, "elections/scheduler")?;

    let mut observer = node_a.observe().await?;
    let describe = |info: &Option<coord_leader::LeaderInfo>| match info {
        Some(leader) => format!(
            "{} (token {})",
            String::from_utf8_lossy(&leader.value),
            leader.token
        ),
        None => "no leader".to_owned(),
    };
    println!("observer: {}", describe(&observer.borrow_and_update()));

    let leadership = node_a.campaign("node-a").await?;
    observer.changed().await?;
    println!("observer: {}", describe(&observer.borrow_and_update()));

    let standby = tokio::spawn(async move { node_b.campaign("node-b").await });
    let resigned = Instant::now();
    leadership.resign().await?;
    let node_b_leads = standby.await??;
    println!(
        "node-a resigned; node-b leads {:?} later (token {})",
        resigned.elapsed(),
        node_b_leads.token()
    );
    observer.changed().await?;
    println!("observer: {}", describe(&observer.borrow_and_update()));

    node_b_leads.resign().await?;
    observer.changed().await?;
    println!("observer: {}", describe(&observer.borrow_and_update()));
    first.close().await?;
    second.close().await?;
    Ok(())
}

async fn fenced_write(client: &Client, owner: &Ownership, who: &str) -> anyhow::Result<bool> {
    let txn = Txn::new().when([owner.compare()]).and_then([TxnOp::put(
        client.key("report/last-writer"),
        who,
        None,
    )]);
    Ok(client.txn(txn).await?.succeeded())
}
