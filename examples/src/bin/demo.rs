//! The coord demo: a session, a lock and an election on an embedded etcd.
//!
//! Run it with `cargo xtask demo`. It starts its own etcd (from the `etcd-bin-vendored` crate) unless
//! `COORD_ENDPOINTS` (or `ETCDCTL_ENDPOINTS`) points at one.
//!
//! coord's own Mutex and Election are not written yet; until then the demo takes the lock and runs
//! the election through the etcd server's Lock and Campaign RPCs — Go's `concurrency` package running
//! inside etcd — bound to coord sessions, and guards its writes with coord's fencing compares. The key
//! layout they produce is the one coord's primitives will share (docs/wire-format.md).

use std::time::{Duration, Instant};

use anyhow::Context;
use coord_core::etcd_client::{LockOptions, Txn, TxnOp};
use coord_core::{Client, ClientConfig, Ownership, Session};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    coord_examples::init_tracing();

    // Keep the embedded server alive until the end of main; it is killed when dropped.
    let (_embedded, endpoints) = match coord_examples::endpoints_from_env() {
        Some(endpoints) => (None, endpoints),
        None => {
            println!("starting an embedded etcd…");
            let etcd = coord_testkit::Etcd::start()
                .await
                .context("starting the embedded etcd")?;
            let endpoints = etcd.endpoints();
            (Some(etcd), endpoints)
        }
    };
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
    println!("\n== a lock, and a fenced write ==");
    let alice = Session::new(client.clone(), Duration::from_secs(5)).await?;
    let bob = Session::new(client.clone(), Duration::from_secs(5)).await?;
    let name = client.key("locks/report");

    let mut locks = client.etcd().lock_client();
    let held = locks
        .lock(
            name.clone(),
            Some(LockOptions::new().with_lease(alice.lease_id().get())),
        )
        .await?;
    let alice_key = String::from_utf8_lossy(held.key()).into_owned();
    let alice_owns = ownership(client, &alice_key).await?;
    println!(
        "alice holds {alice_key} (fencing token {})",
        alice_owns.token()
    );

    let mut bob_locks = client.etcd().lock_client();
    let bob_lease = bob.lease_id().get();
    let bob_wait = tokio::spawn(async move {
        let started = Instant::now();
        let resp = bob_locks
            .lock(name, Some(LockOptions::new().with_lease(bob_lease)))
            .await;
        resp.map(|r| {
            (
                String::from_utf8_lossy(r.key()).into_owned(),
                started.elapsed(),
            )
        })
    });

    println!(
        "alice writes, guarded by her ownership: applied = {}",
        fenced_write(client, &alice_owns, "alice").await?
    );
    println!("alice's session ends (think: a long GC pause past the TTL)…");
    alice.close().await?;

    let (bob_key, waited) = bob_wait.await??;
    let bob_owns = ownership(client, &bob_key).await?;
    println!(
        "bob got the lock after {waited:?}: {bob_key} (token {})",
        bob_owns.token()
    );
    println!(
        "alice wakes up and writes: applied = {}",
        fenced_write(client, &alice_owns, "alice").await?
    );
    println!(
        "bob writes: applied = {}",
        fenced_write(client, &bob_owns, "bob").await?
    );
    bob.close().await?;
    Ok(())
}

async fn election(client: &Client) -> anyhow::Result<()> {
    println!("\n== an election ==");
    let name = client.key("elections/scheduler");
    let first = Session::new(client.clone(), Duration::from_secs(5)).await?;
    let second = Session::new(client.clone(), Duration::from_secs(5)).await?;

    let mut elections = client.etcd().election_client();
    let won = elections
        .campaign(name.clone(), "node-a", first.lease_id().get())
        .await?;
    let leader_key = won.leader().map(|l| l.key().to_vec()).unwrap_or_default();
    println!("node-a is leader: {}", String::from_utf8_lossy(&leader_key));

    let mut standby = client.etcd().election_client();
    let lease = second.lease_id().get();
    let campaign_name = name.clone();
    let waiting =
        tokio::spawn(async move { standby.campaign(campaign_name, "node-b", lease).await });

    let resign = coord_core::etcd_client::ResignOptions::new()
        .with_leader(won.leader().cloned().unwrap_or_default());
    let started = Instant::now();
    elections.resign(Some(resign)).await?;
    waiting.await??;
    let leader = elections.leader(name).await?;
    let value = leader
        .kv()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
        .unwrap_or_default();
    println!(
        "node-a resigned; {value} took over {:?} later",
        started.elapsed()
    );
    first.close().await?;
    second.close().await?;
    Ok(())
}

async fn ownership(client: &Client, key: &str) -> anyhow::Result<Ownership> {
    let resp = client.get(key, None).await?;
    let kv = resp.kvs().first().context("lock key vanished")?;
    Ok(Ownership::new(key, kv.create_revision()))
}

async fn fenced_write(client: &Client, owner: &Ownership, who: &str) -> anyhow::Result<bool> {
    let txn = Txn::new().when([owner.compare()]).and_then([TxnOp::put(
        client.key("report/last-writer"),
        who,
        None,
    )]);
    Ok(client.txn(txn).await?.succeeded())
}
