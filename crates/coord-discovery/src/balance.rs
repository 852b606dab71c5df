//! Picking one instance of a discovered service: round-robin, random, power-of-two-choices on
//! load, consistent hashing, and a client-side down-instance policy.
//!
//! A [`Balancer`] reads the latest [`ServiceSet`] of a [`Discovery`] on every pick (a `watch`
//! borrow, no etcd request), leaves out the instances this client reported down, and applies its
//! [`Strategy`]. What it returns, a [`Picked`], counts as one request in flight on that instance
//! until it is dropped — the load power-of-two-choices compares.
//!
//! ```no_run
//! # async fn demo(client: coord_core::Client) -> Result<(), coord_discovery::service::ServiceError> {
//! use coord_discovery::balance::{Balancer, Strategy};
//! use coord_discovery::service::{Discovery, Status};
//!
//! let mut api = Discovery::<serde_json::Value>::builder(&client, "api")
//!     .statuses([Status::Healthy])
//!     .start()?;
//! api.wait_ready().await?;
//! let balancer = Balancer::new(&api, Strategy::PowerOfTwoChoices);
//! if let Some(instance) = balancer.pick() {
//!     match call(&instance.addr).await {
//!         Ok(()) => instance.succeeded(),
//!         Err(()) => instance.failed(), // two failures in a row: left out for 30 s
//!     }
//! }
//! # Ok(()) }
//! # async fn call(_addr: &str) -> Result<(), ()> { Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::service::{Discovery, Endpoint, ServiceSet};

/// How a [`Balancer`] chooses among the instances it may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Strategy {
    /// Each instance in turn (in id order), whatever its weight.
    RoundRobin,
    /// A random instance, in proportion to its weight (1 when it announces none; 0 is never
    /// picked unless every instance has weight 0).
    Random,
    /// Two random instances, the less loaded of them: load is the requests in flight through this
    /// balancer ([`Picked`] values alive) plus the last load reported with
    /// [`Balancer::report_load`]. Spreads load better than random, without the herd that "least
    /// loaded of all" causes when many clients see the same numbers.
    PowerOfTwoChoices,
    /// The same key always goes to the same instance while the set does not change, and a change
    /// moves only the keys of the instances that came or went (weighted rendezvous hashing: every
    /// client with the same set agrees, with no ring to build). Use
    /// [`Balancer::pick_by_key`]; [`Balancer::pick`] picks at random.
    ConsistentHash,
}

/// When an instance counts as down for this client, as Curator's `DownInstancePolicy`: after
/// `threshold` errors reported with no more than `period` between consecutive ones, it is left out
/// of picks until `period` after the last error (or until a success is reported).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownPolicy {
    /// Errors in a row that make an instance down (at least 1).
    pub threshold: u32,
    /// How long it stays down after the last error; also how long an error is remembered.
    pub period: Duration,
}

impl Default for DownPolicy {
    /// Curator's defaults: 2 errors, 30 seconds.
    fn default() -> DownPolicy {
        DownPolicy {
            threshold: 2,
            period: Duration::from_secs(30),
        }
    }
}

/// Picks instances of one discovered service; see the [module docs](self).
///
/// Clones share their state (round-robin position, loads, down instances). When every instance
/// that passes the discovery's filters is down, the down ones are used again rather than none:
/// reports are local guesses, an empty answer would turn them into an outage.
pub struct Balancer<T> {
    sets: watch::Receiver<Arc<ServiceSet<T>>>,
    strategy: Strategy,
    shared: Arc<Shared>,
    /// The candidates of the last set picked from, while no instance is down.
    cache: Arc<Mutex<Option<Arc<Candidates<T>>>>>,
}

struct Shared {
    policy: DownPolicy,
    next: AtomicUsize,
    rng: AtomicU64,
    instances: Mutex<HashMap<String, Arc<Health>>>,
    /// How many instances have at least `policy.threshold` errors on record (down, or down until
    /// their period ran out). While there is none, no instance is down and picks use the cached
    /// candidates of the set without looking at any instance's health.
    over_threshold: AtomicUsize,
}

/// Every instance of one set, in id order, with the running sum of their weights: what a pick
/// needs when no instance is down, built once per set.
struct Candidates<T> {
    set: Arc<ServiceSet<T>>,
    all: Vec<Arc<Endpoint<T>>>,
    /// `cumulative[i]` = the weights of `all[..=i]`.
    cumulative: Vec<u64>,
}

/// What this client knows of one instance.
#[derive(Default)]
struct Health {
    in_flight: AtomicU64,
    reported: AtomicU64,
    errors: Mutex<Errors>,
}

#[derive(Default)]
struct Errors {
    count: u32,
    last: Option<Instant>,
    /// Forgotten by the balancer (the instance left the set): errors reported through a
    /// `Picked` still held no longer count.
    departed: bool,
}

impl<T> Clone for Balancer<T> {
    fn clone(&self) -> Balancer<T> {
        Balancer {
            sets: self.sets.clone(),
            strategy: self.strategy,
            shared: self.shared.clone(),
            cache: self.cache.clone(),
        }
    }
}

impl<T> fmt::Debug for Balancer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("strategy", &self.strategy)
            .field("policy", &self.shared.policy)
            .field("revision", &self.sets.borrow().revision)
            .finish_non_exhaustive()
    }
}

impl<T> Balancer<T> {
    /// A balancer over `discovery`'s sets, with the default [`DownPolicy`].
    ///
    /// ```no_run
    /// # fn demo(api: coord_discovery::service::Discovery<()>) {
    /// use coord_discovery::balance::{Balancer, Strategy};
    /// let balancer = Balancer::new(&api, Strategy::RoundRobin);
    /// # let _ = balancer; }
    /// ```
    pub fn new(discovery: &Discovery<T>, strategy: Strategy) -> Balancer<T> {
        Balancer::from_receiver(discovery.receiver(), strategy)
    }

    /// A balancer over any receiver of sets (for example one you filter further yourself).
    ///
    /// ```no_run
    /// # fn demo(api: coord_discovery::service::Discovery<()>) {
    /// use coord_discovery::balance::{Balancer, Strategy};
    /// let balancer = Balancer::from_receiver(api.receiver(), Strategy::Random);
    /// # let _ = balancer; }
    /// ```
    pub fn from_receiver(
        sets: watch::Receiver<Arc<ServiceSet<T>>>,
        strategy: Strategy,
    ) -> Balancer<T> {
        // A per-process random seed, from the standard library's hasher keys.
        let seed =
            std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0u8);
        Balancer {
            sets,
            strategy,
            shared: Arc::new(Shared {
                policy: DownPolicy::default(),
                next: AtomicUsize::new(0),
                rng: AtomicU64::new(seed | 1),
                instances: Mutex::new(HashMap::new()),
                over_threshold: AtomicUsize::new(0),
            }),
            cache: Arc::new(Mutex::new(None)),
        }
    }

    /// The same balancer with another down-instance policy (a `threshold` of 0 counts as 1).
    /// Call it before cloning: clones made earlier keep the old policy.
    ///
    /// ```no_run
    /// # fn demo(api: coord_discovery::service::Discovery<()>) {
    /// use coord_discovery::balance::{Balancer, DownPolicy, Strategy};
    /// use std::time::Duration;
    /// let balancer = Balancer::new(&api, Strategy::RoundRobin)
    ///     .with_down_policy(DownPolicy { threshold: 1, period: Duration::from_secs(5) });
    /// # let _ = balancer; }
    /// ```
    #[must_use]
    pub fn with_down_policy(self, policy: DownPolicy) -> Balancer<T> {
        let policy = DownPolicy {
            threshold: policy.threshold.max(1),
            ..policy
        };
        Balancer {
            shared: Arc::new(Shared {
                policy,
                next: AtomicUsize::new(self.shared.next.load(Ordering::Relaxed)),
                rng: AtomicU64::new(self.shared.rng.load(Ordering::Relaxed)),
                instances: Mutex::new(HashMap::new()),
                over_threshold: AtomicUsize::new(0),
            }),
            ..self
        }
    }

    /// The strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The set picks are made from now.
    pub fn snapshot(&self) -> Arc<ServiceSet<T>> {
        self.sets.borrow().clone()
    }

    /// One instance by the strategy, or `None` when the service has none (or is not read yet).
    /// With [`Strategy::ConsistentHash`] this picks at random; use
    /// [`pick_by_key`](Balancer::pick_by_key).
    ///
    /// ```no_run
    /// # fn demo(balancer: coord_discovery::balance::Balancer<()>) {
    /// if let Some(instance) = balancer.pick() {
    ///     println!("calling {} at {}", instance.id, instance.addr);
    /// }
    /// # }
    /// ```
    pub fn pick(&self) -> Option<Picked<T>> {
        let set = self.snapshot();
        if let Some(cached) = self.cached(&set) {
            // No instance is down: O(1) (O(log n) weighted) from the set's cached candidates.
            let all = &cached.all;
            let chosen = match self.strategy {
                Strategy::RoundRobin => all.get(self.turn() % all.len().max(1)),
                Strategy::Random | Strategy::ConsistentHash => {
                    let total = cached.cumulative.last().copied().unwrap_or(0);
                    if total == 0 {
                        all.get(self.random_below(all.len() as u64)? as usize)
                    } else {
                        let point = self.random_below(total)?;
                        all.get(cached.cumulative.partition_point(|&sum| sum <= point))
                    }
                }
                Strategy::PowerOfTwoChoices => self.two_choices(all.len(), |i| all.get(i)),
            }?;
            return Some(self.picked(chosen));
        }
        let candidates = self.candidates(&set);
        let chosen = match self.strategy {
            Strategy::RoundRobin => candidates
                .get(self.turn() % candidates.len().max(1))
                .copied(),
            Strategy::Random | Strategy::ConsistentHash => self.weighted_random(&candidates),
            Strategy::PowerOfTwoChoices => {
                self.two_choices(candidates.len(), |i| candidates.get(i).copied())
            }
        }?;
        Some(self.picked(chosen))
    }

    /// The instance for `key`: with [`Strategy::ConsistentHash`], the same one for the same key on
    /// every client that sees the same set; with any other strategy, as [`pick`](Balancer::pick).
    ///
    /// ```no_run
    /// # fn demo(balancer: coord_discovery::balance::Balancer<()>) {
    /// let shard = balancer.pick_by_key(b"customer-42");
    /// # let _ = shard; }
    /// ```
    pub fn pick_by_key(&self, key: &[u8]) -> Option<Picked<T>> {
        if self.strategy != Strategy::ConsistentHash {
            return self.pick();
        }
        let set = self.snapshot();
        let by_score = |a: &&Arc<Endpoint<T>>, b: &&Arc<Endpoint<T>>| {
            rendezvous_score(key, a)
                .total_cmp(&rendezvous_score(key, b))
                .then_with(|| b.id.cmp(&a.id))
        };
        let chosen = match self.cached(&set) {
            Some(cached) => cached.all.iter().max_by(by_score)?.clone(),
            None => (*self.candidates(&set).into_iter().max_by(by_score)?).clone(),
        };
        Some(self.picked(&chosen))
    }

    /// Records an error of the instance `id` (a failed call, a refused connection): after
    /// [`DownPolicy::threshold`] of them it is left out of picks for [`DownPolicy::period`].
    /// [`Picked::failed`] does the same.
    ///
    /// ```no_run
    /// # fn demo(balancer: coord_discovery::balance::Balancer<()>) {
    /// balancer.report_error("api-3");
    /// # }
    /// ```
    pub fn report_error(&self, id: &str) {
        self.health(id).record_error(&self.shared);
    }

    /// Records a success of the instance `id`: it is no longer down and its errors are forgotten.
    /// [`Picked::succeeded`] does the same.
    pub fn report_success(&self, id: &str) {
        if let Some(health) = lock(&self.shared.instances).get(id).cloned() {
            health.reset(&self.shared);
        }
    }

    /// Records the load an instance reports of itself (queue length, CPU per mille…: any measure
    /// where lower is better), added to its requests in flight by
    /// [`Strategy::PowerOfTwoChoices`].
    ///
    /// ```no_run
    /// # fn demo(balancer: coord_discovery::balance::Balancer<()>) {
    /// balancer.report_load("api-1", 12);
    /// # }
    /// ```
    pub fn report_load(&self, id: &str, load: u64) {
        self.health(id).reported.store(load, Ordering::Relaxed);
    }

    /// Whether the instance `id` is down for this client now.
    pub fn is_down(&self, id: &str) -> bool {
        let Some(health) = lock(&self.shared.instances).get(id).cloned() else {
            return false;
        };
        self.down(&health, Instant::now())
    }

    /// The load power-of-two-choices sees for `id`: requests in flight plus the reported load.
    pub fn load(&self, id: &str) -> u64 {
        lock(&self.shared.instances)
            .get(id)
            .map_or(0, |health| health.load())
    }

    fn down(&self, health: &Health, now: Instant) -> bool {
        let errors = lock(&health.errors);
        errors.count >= self.shared.policy.threshold
            && errors
                .last
                .is_some_and(|last| now.duration_since(last) < self.shared.policy.period)
    }

    fn turn(&self) -> usize {
        self.shared.next.fetch_add(1, Ordering::Relaxed)
    }

    /// The cached candidates of `set` when no instance can be down (built on the first pick from
    /// a new set); `None` when some instance has enough errors on record to be down.
    fn cached(&self, set: &Arc<ServiceSet<T>>) -> Option<Arc<Candidates<T>>> {
        if self.shared.over_threshold.load(Ordering::Acquire) > 0 {
            return None;
        }
        let mut cache = lock(&self.cache);
        if let Some(cached) = cache.as_ref().filter(|c| Arc::ptr_eq(&c.set, set)) {
            return Some(cached.clone());
        }
        self.forget_departed(set);
        let all: Vec<_> = set.iter().cloned().collect();
        let cumulative = all
            .iter()
            .scan(0u64, |sum, e| {
                *sum = sum.saturating_add(weight(e));
                Some(*sum)
            })
            .collect();
        let cached = Arc::new(Candidates {
            set: set.clone(),
            all,
            cumulative,
        });
        *cache = Some(cached.clone());
        Some(cached)
    }

    /// Forgets instances that left the set, so the map does not grow for ever.
    fn forget_departed(&self, set: &ServiceSet<T>) {
        let mut instances = lock(&self.shared.instances);
        if instances.len() > 2 * set.len() + 16 {
            instances.retain(|id, health| {
                let keep = set.endpoints.contains_key(id);
                if !keep {
                    // A `Picked` may still hold it: no errors, and none counted from now on.
                    health.depart(&self.shared);
                }
                keep
            });
        }
    }

    /// The instances that are not down, in id order; all of them when every one is down.
    fn candidates<'a>(&self, set: &'a ServiceSet<T>) -> Vec<&'a Arc<Endpoint<T>>> {
        let now = Instant::now();
        self.forget_departed(set);
        let instances = lock(&self.shared.instances);
        // Errors whose period ran out no longer count: once none is left on record, picks take
        // the cached path again.
        for health in instances.values() {
            health.expire(&self.shared, now);
        }
        let up: Vec<_> = set
            .iter()
            .filter(|e| instances.get(&e.id).is_none_or(|h| !self.down(h, now)))
            .collect();
        if up.is_empty() {
            set.iter().collect()
        } else {
            up
        }
    }

    fn weighted_random<'a>(
        &self,
        candidates: &[&'a Arc<Endpoint<T>>],
    ) -> Option<&'a Arc<Endpoint<T>>> {
        let total: u64 = candidates.iter().map(|e| weight(e)).sum();
        if total == 0 {
            let i = self.random_below(candidates.len() as u64)?;
            return candidates.get(i as usize).copied();
        }
        let mut point = self.random_below(total)?;
        for candidate in candidates {
            let w = weight(candidate);
            if point < w {
                return Some(candidate);
            }
            point -= w;
        }
        candidates.last().copied()
    }

    /// The less loaded of two distinct random candidates among `n` (`at(i)` is the `i`-th).
    fn two_choices<'a>(
        &self,
        n: usize,
        at: impl Fn(usize) -> Option<&'a Arc<Endpoint<T>>>,
    ) -> Option<&'a Arc<Endpoint<T>>> {
        let n = n as u64;
        let first = self.random_below(n)?;
        if n == 1 {
            return at(0);
        }
        let second = (first + 1 + self.random_below(n - 1)?) % n;
        let (a, b) = (at(first as usize)?, at(second as usize)?);
        Some(if self.load(&b.id) < self.load(&a.id) {
            b
        } else {
            a
        })
    }

    /// A uniform number below `n` (`None` when `n` is 0).
    fn random_below(&self, n: u64) -> Option<u64> {
        if n == 0 {
            return None;
        }
        // splitmix64 over an atomic counter: cheap, lock-free, good enough to spread picks.
        let mut z = self
            .shared
            .rng
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Some(((u128::from(z) * u128::from(n)) >> 64) as u64)
    }

    fn health(&self, id: &str) -> Arc<Health> {
        lock(&self.shared.instances)
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    fn picked(&self, endpoint: &Arc<Endpoint<T>>) -> Picked<T> {
        let health = self.health(&endpoint.id);
        health.in_flight.fetch_add(1, Ordering::Relaxed);
        Picked {
            endpoint: endpoint.clone(),
            health,
            balancer: self.shared.clone(),
        }
    }
}

impl Shared {
    /// Keeps [`Shared::over_threshold`] when an instance's error count moves.
    fn recount(&self, before: u32, after: u32) {
        let threshold = self.policy.threshold;
        match (before >= threshold, after >= threshold) {
            (false, true) => {
                self.over_threshold.fetch_add(1, Ordering::AcqRel);
            }
            (true, false) => {
                self.over_threshold.fetch_sub(1, Ordering::AcqRel);
            }
            _ => {}
        }
    }
}

impl Health {
    /// One more error; errors more than the policy's period apart do not add up.
    fn record_error(&self, shared: &Shared) {
        let mut errors = lock(&self.errors);
        if errors.departed {
            return;
        }
        let before = errors.count;
        let now = Instant::now();
        let recent = errors
            .last
            .is_some_and(|last| now.duration_since(last) <= shared.policy.period);
        errors.count = if recent {
            errors.count.saturating_add(1)
        } else {
            1
        };
        errors.last = Some(now);
        shared.recount(before, errors.count);
    }

    /// A success: no errors on record.
    fn reset(&self, shared: &Shared) {
        let mut errors = lock(&self.errors);
        shared.recount(errors.count, 0);
        errors.count = 0;
        errors.last = None;
    }

    /// The instance left the set and its health is forgotten.
    fn depart(&self, shared: &Shared) {
        let mut errors = lock(&self.errors);
        shared.recount(errors.count, 0);
        *errors = Errors {
            departed: true,
            ..Errors::default()
        };
    }

    /// Forgets errors whose period ran out (they would not add up with the next one anyway).
    fn expire(&self, shared: &Shared, now: Instant) {
        let mut errors = lock(&self.errors);
        if errors
            .last
            .is_some_and(|last| now.duration_since(last) >= shared.policy.period)
        {
            shared.recount(errors.count, 0);
            errors.count = 0;
            errors.last = None;
        }
    }

    fn load(&self) -> u64 {
        self.in_flight
            .load(Ordering::Relaxed)
            .saturating_add(self.reported.load(Ordering::Relaxed))
    }
}

/// One picked instance: derefs to its [`Endpoint`], and counts as a request in flight on it until
/// dropped. Report the outcome with [`succeeded`](Picked::succeeded) or
/// [`failed`](Picked::failed) (dropping it reports nothing).
pub struct Picked<T> {
    endpoint: Arc<Endpoint<T>>,
    health: Arc<Health>,
    balancer: Arc<Shared>,
}

impl<T> fmt::Debug for Picked<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Picked")
            .field("id", &self.endpoint.id)
            .field("addr", &self.endpoint.addr)
            .finish_non_exhaustive()
    }
}

impl<T> Deref for Picked<T> {
    type Target = Endpoint<T>;

    fn deref(&self) -> &Endpoint<T> {
        &self.endpoint
    }
}

impl<T> Picked<T> {
    /// The instance, to keep after the request.
    pub fn endpoint(&self) -> &Arc<Endpoint<T>> {
        &self.endpoint
    }

    /// The request succeeded: the instance is not down.
    pub fn succeeded(self) {
        self.health.reset(&self.balancer);
    }

    /// The request failed because of the instance: one error towards [`DownPolicy::threshold`].
    pub fn failed(self) {
        self.health.record_error(&self.balancer);
    }
}

impl<T> Drop for Picked<T> {
    fn drop(&mut self) {
        self.health.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn weight<T>(endpoint: &Endpoint<T>) -> u64 {
    u64::from(endpoint.weight.unwrap_or(1))
}

/// Weighted rendezvous score of `endpoint` for `key`: `-weight / ln(u)` with `u` in (0, 1) from a
/// stable hash of key and id, so every process computes the same (FNV-1a, then a mixer).
fn rendezvous_score<T>(key: &[u8], endpoint: &Endpoint<T>) -> f64 {
    let w = weight(endpoint);
    if w == 0 {
        return f64::NEG_INFINITY;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.iter().chain(&[0xff]).chain(endpoint.id.as_bytes()) {
        h ^= u64::from(*byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    h = (h ^ (h >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    // 53 random bits → u in (0, 1).
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -(w as f64) / u.ln()
}

fn lock<V>(mutex: &Mutex<V>) -> MutexGuard<'_, V> {
    // The guarded values stay consistent even if a holder panicked.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::collections::{BTreeMap, HashMap};

    use coord_core::LeaseId;

    use super::*;
    use crate::service::{Origin, Status};

    fn endpoint(id: &str, weight: Option<u32>) -> Arc<Endpoint<()>> {
        Arc::new(Endpoint {
            id: id.to_owned(),
            key: format!("svc/{id}"),
            addr: format!("{id}:80"),
            origin: Origin::Coord,
            status: Status::Healthy,
            zone: None,
            weight,
            version: None,
            metadata: Some(()),
            raw_metadata: None,
            lease: LeaseId::new(0),
            create_revision: 1,
            mod_revision: 1,
        })
    }

    fn set(endpoints: &[Arc<Endpoint<()>>]) -> Arc<ServiceSet<()>> {
        Arc::new(ServiceSet {
            revision: 1,
            endpoints: endpoints
                .iter()
                .map(|e| (e.id.clone(), e.clone()))
                .collect(),
            malformed: Vec::new(),
            error: None,
            seq: 1,
            delta: None,
        })
    }

    fn balancer(
        endpoints: &[Arc<Endpoint<()>>],
        strategy: Strategy,
    ) -> (Balancer<()>, watch::Sender<Arc<ServiceSet<()>>>) {
        let (sender, receiver) = watch::channel(set(endpoints));
        (Balancer::from_receiver(receiver, strategy), sender)
    }

    fn ids(n: usize) -> Vec<Arc<Endpoint<()>>> {
        (0..n).map(|i| endpoint(&format!("i{i}"), None)).collect()
    }

    fn counts(balancer: &Balancer<()>, picks: usize) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for _ in 0..picks {
            *counts
                .entry(balancer.pick().unwrap().id.clone())
                .or_default() += 1;
        }
        counts
    }

    #[test]
    fn an_empty_set_picks_nothing() {
        for strategy in [
            Strategy::RoundRobin,
            Strategy::Random,
            Strategy::PowerOfTwoChoices,
            Strategy::ConsistentHash,
        ] {
            let (b, _s) = balancer(&[], strategy);
            assert!(b.pick().is_none());
            assert!(b.pick_by_key(b"k").is_none());
        }
    }

    #[test]
    fn round_robin_takes_each_instance_in_turn() {
        let (b, _s) = balancer(&ids(3), Strategy::RoundRobin);
        let picked: Vec<String> = (0..6).map(|_| b.pick().unwrap().id.clone()).collect();
        assert_eq!(picked, ["i0", "i1", "i2", "i0", "i1", "i2"]);
    }

    #[test]
    fn random_follows_the_weights() {
        let endpoints = [
            endpoint("heavy", Some(3)),
            endpoint("light", Some(1)),
            endpoint("off", Some(0)),
        ];
        let (b, _s) = balancer(&endpoints, Strategy::Random);
        let counts = counts(&b, 4000);
        assert!(!counts.contains_key("off"), "{counts:?}");
        let ratio = counts["heavy"] as f64 / counts["light"] as f64;
        assert!((2.4..3.8).contains(&ratio), "{counts:?}");
    }

    #[test]
    fn two_choices_avoid_the_loaded_instance() {
        let (b, _s) = balancer(&ids(2), Strategy::PowerOfTwoChoices);
        b.report_load("i0", 100);
        // With two instances both are always compared: the unloaded one wins every time.
        let counts = counts(&b, 200);
        assert_eq!(counts.get("i1"), Some(&200), "{counts:?}");
        // Requests in flight count as load too.
        b.report_load("i0", 0);
        let held: Vec<_> = (0..3).map(|_| b.pick().unwrap()).collect();
        let loads: HashMap<&str, u64> = [("i0", b.load("i0")), ("i1", b.load("i1"))].into();
        assert_eq!(loads["i0"] + loads["i1"], 3, "{loads:?}");
        assert!(loads["i0"].abs_diff(loads["i1"]) <= 1, "{loads:?}");
        drop(held);
        assert_eq!(b.load("i0") + b.load("i1"), 0);
    }

    #[test]
    fn consistent_hashing_moves_only_the_keys_of_a_leaving_instance() {
        let endpoints = ids(5);
        let (b, sender) = balancer(&endpoints, Strategy::ConsistentHash);
        let keys: Vec<String> = (0..1000).map(|k| format!("key-{k}")).collect();
        let before: Vec<String> = keys
            .iter()
            .map(|k| b.pick_by_key(k.as_bytes()).unwrap().id.clone())
            .collect();
        // Every instance gets a fair share.
        for e in &endpoints {
            let share = before.iter().filter(|id| **id == e.id).count();
            assert!((120..280).contains(&share), "{} has {share} keys", e.id);
        }
        // The same on another balancer (another client) with the same set.
        let (other, _s) = balancer(&endpoints, Strategy::ConsistentHash);
        assert!(
            keys.iter()
                .zip(&before)
                .all(|(k, id)| other.pick_by_key(k.as_bytes()).unwrap().id == *id)
        );

        sender.send_replace(set(&endpoints[1..]));
        for (k, old) in keys.iter().zip(&before) {
            let new = b.pick_by_key(k.as_bytes()).unwrap().id.clone();
            if old != "i0" {
                assert_eq!(&new, old, "{k} moved although its instance stayed");
            } else {
                assert_ne!(new, "i0");
            }
        }
    }

    #[test]
    fn a_reported_down_instance_is_left_out_until_its_period_ends_or_it_succeeds() {
        let (b, _s) = balancer(&ids(2), Strategy::RoundRobin);
        let b = b.with_down_policy(DownPolicy {
            threshold: 2,
            period: Duration::from_secs(3600),
        });
        b.report_error("i0");
        assert!(!b.is_down("i0"), "one error is below the threshold");
        b.pick().unwrap().failed(); // round robin: i0 again
        assert!(b.is_down("i0"));
        assert!((0..10).all(|_| b.pick().unwrap().id == "i1"));

        b.report_success("i0");
        assert!(!b.is_down("i0"));

        // Errors further apart than the period do not add up; a down instance comes back after it.
        let quick = balancer(&ids(2), Strategy::RoundRobin)
            .0
            .with_down_policy(DownPolicy {
                threshold: 1,
                period: Duration::ZERO,
            });
        quick.report_error("i0");
        assert!(!quick.is_down("i0"));
    }

    #[test]
    fn when_every_instance_is_down_they_are_all_used_again() {
        let (b, _s) = balancer(&ids(2), Strategy::RoundRobin);
        let b = b.with_down_policy(DownPolicy {
            threshold: 1,
            period: Duration::from_secs(3600),
        });
        b.report_error("i0");
        b.report_error("i1");
        assert!(b.is_down("i0") && b.is_down("i1"));
        assert!(b.pick().is_some());
    }

    /// Picks from the cached candidates (no instance down) and from the filtered ones (some
    /// instance has errors on record, none down) are the same picks: the same random draws give
    /// the same instances.
    #[test]
    fn cached_and_filtered_picks_agree() {
        let endpoints: Vec<_> = (0..50)
            .map(|i| endpoint(&format!("i{i:02}"), Some(i % 4)))
            .collect();
        for strategy in [
            Strategy::RoundRobin,
            Strategy::Random,
            Strategy::PowerOfTwoChoices,
        ] {
            let (fast, _s) = balancer(&endpoints, strategy);
            let (slow, _t) = balancer(&endpoints, strategy);
            let slow = slow.with_down_policy(DownPolicy {
                threshold: 1,
                period: Duration::from_secs(3600),
            });
            // An instance that is not in the set, down: `slow` filters every pick.
            slow.report_error("gone");
            assert!(slow.cached(&slow.snapshot()).is_none());
            assert!(fast.cached(&fast.snapshot()).is_some());
            slow.shared.rng.store(7, Ordering::Relaxed);
            fast.shared.rng.store(7, Ordering::Relaxed);
            let a: Vec<String> = (0..500).map(|_| fast.pick().unwrap().id.clone()).collect();
            let b: Vec<String> = (0..500).map(|_| slow.pick().unwrap().id.clone()).collect();
            assert_eq!(a, b, "{strategy:?}");
            for key in ["a", "b", "c"] {
                assert_eq!(
                    fast.pick_by_key(key.as_bytes()).unwrap().id,
                    slow.pick_by_key(key.as_bytes()).unwrap().id
                );
            }
        }
    }

    #[test]
    fn a_new_set_replaces_the_cached_candidates() {
        let (b, sender) = balancer(&ids(2), Strategy::RoundRobin);
        assert_eq!(counts(&b, 4).len(), 2);
        sender.send_replace(set(&[endpoint("new", None)]));
        assert_eq!(counts(&b, 4).keys().collect::<Vec<_>>(), ["new"]);
    }

    /// Errors whose period ran out stop counting, and picks use the cache again; errors reported
    /// through a `Picked` of an instance the balancer forgot do not count at all.
    #[test]
    fn errors_that_no_longer_count_leave_the_cached_path_open() {
        let (b, sender) = balancer(&ids(2), Strategy::RoundRobin);
        let b = b.with_down_policy(DownPolicy {
            threshold: 1,
            period: Duration::from_millis(1),
        });
        b.report_error("i0");
        assert!(b.cached(&b.snapshot()).is_none());
        let after = Instant::now() + Duration::from_millis(2);
        while Instant::now() < after {
            std::hint::spin_loop();
        }
        assert!(!b.is_down("i0"));
        b.pick().unwrap(); // filtered: forgets the expired error
        assert!(b.cached(&b.snapshot()).is_some());

        let b = b.with_down_policy(DownPolicy {
            threshold: 1,
            period: Duration::from_secs(3600),
        });
        let held = b.pick().unwrap();
        let departed = held.id.clone();
        // Enough other instances seen for the balancer to forget the ones that left the set.
        for i in 0..20 {
            b.report_load(&format!("other{i}"), 1);
        }
        sender.send_replace(set(&[endpoint("next", None)]));
        assert_eq!(b.pick().unwrap().id, "next");
        held.failed();
        assert!(!b.is_down(&departed));
        assert_eq!(b.shared.over_threshold.load(Ordering::Relaxed), 0);
        assert!(b.cached(&b.snapshot()).is_some());
    }
}
