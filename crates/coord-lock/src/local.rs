//! Process-local exclusion for holders that share a session.
//!
//! Two holders on one session and one name would write the same key (`name/<lease hex>`), and in
//! Go's recipe both would then believe they hold the lock. coord serialises them inside the process
//! instead: every acquisition of a key first takes a local async mutex for that key, held until the
//! etcd key is deleted again.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex as StdMutex, PoisonError, Weak};

type Slot = Arc<tokio::sync::Mutex<()>>;

static SLOTS: LazyLock<StdMutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(|| StdMutex::new(HashMap::new()));

/// The local mutex for a full etcd key; every caller asking for the same key gets the same one
/// while any of them is alive.
pub(crate) fn slot(key: &str) -> Slot {
    let mut slots = SLOTS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(slot) = slots.get(key).and_then(Weak::upgrade) {
        return slot;
    }
    if slots.len() >= 64 {
        slots.retain(|_, slot| slot.strong_count() > 0);
    }
    let slot = Slot::default();
    slots.insert(key.to_owned(), Arc::downgrade(&slot));
    slot
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_key_shares_one_slot() {
        let a = slot("k/1");
        let b = slot("k/1");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &slot("k/2")));
    }

    #[test]
    fn unused_slots_are_forgotten() {
        let first = Arc::downgrade(&slot("gone/1"));
        assert!(first.upgrade().is_none());
    }
}
