//! What a run does: its length, seed, number of clients and timing.

use std::time::Duration;

/// The parameters of one chaos run.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long the nemesis injects faults. The run then heals, lets the clients recover and
    /// converge, and checks; that adds tens of seconds.
    pub duration: Duration,
    /// The seed of every random choice (nemesis schedule, workload mix, pauses).
    pub seed: u64,
    /// How many client "processes" (each its own `Client`, sessions and fault proxies).
    pub clients: usize,
    /// The session TTL of every client. etcd's minimum is 2 s.
    pub ttl: Duration,
    /// The semaphore's limit.
    pub semaphore_limit: u32,
    /// How long, after the nemesis stopped and everything was healed, each actor of each client
    /// may take to complete a fenced write again (a liveness bound), and caches to converge.
    pub recovery_bound: Duration,
    /// Whether holders guard their writes with `owns()` (true). False is a negative control:
    /// the checkers must then report violations (stale writes after pauses get applied).
    pub fencing: bool,
}

impl Options {
    /// A run of `duration` with `seed`, 4 clients, TTL 3 s, semaphore limit 2.
    pub fn new(duration: Duration, seed: u64) -> Options {
        Options {
            duration,
            seed,
            clients: 4,
            ttl: Duration::from_secs(3),
            semaphore_limit: 2,
            recovery_bound: Duration::from_secs(60),
            fencing: true,
        }
    }
}

/// Parses `90s`, `10m`, `1h30m`, `1500ms` or a bare number of seconds.
///
/// # Errors
///
/// A message naming what could not be read.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(coord_chaos::parse_duration("10m"), Ok(Duration::from_secs(600)));
/// assert_eq!(coord_chaos::parse_duration("1m30s"), Ok(Duration::from_secs(90)));
/// assert_eq!(coord_chaos::parse_duration("45"), Ok(Duration::from_secs(45)));
/// assert!(coord_chaos::parse_duration("ten").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return Err("empty duration".to_owned());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("{text:?}: expected a number at {rest:?}"));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|e| format!("{text:?}: {e}"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number * 60),
            "h" => Duration::from_secs(number * 3600),
            other => return Err(format!("{text:?}: unknown unit {other:?} (ms, s, m, h)")),
        };
        total += unit;
        rest = &rest[unit_len..];
    }
    Ok(total)
}
