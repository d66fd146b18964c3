//! A bounded map whose entries expire a fixed time after they were last
//! written, the oldest forgotten first when it is full. The hub keeps
//! finished tasks in one (and, as a set, the tasks kie.ai will call back
//! about); the idempotency store keeps its request_ids in one, with entries
//! that must not be forgotten early (see `Retention`). Not synchronised: its
//! owner holds it under its own lock, with whatever else that lock guards.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

/// How long an entry must be kept. Both default to "like any cache entry".
pub(crate) trait Retention {
    /// Whether the entry may be forgotten before its TTL to make room. One
    /// that may not can hold the map above its capacity.
    fn evictable(&self) -> bool {
        true
    }

    /// Whether the entry is forgotten once its TTL has passed.
    fn expires(&self) -> bool {
        true
    }
}

impl Retention for () {}

pub(crate) struct ExpiringMap<K, V> {
    capacity: usize,
    ttl: Duration,
    entries: HashMap<K, Slot<V>>,
    /// Write order, to forget the oldest first when full. A key written
    /// again has a newer slot further back; its older slots are skipped.
    order: VecDeque<(K, Instant)>,
}

struct Slot<V> {
    value: V,
    written: Instant,
}

impl<K: Clone + Eq + Hash, V: Retention> ExpiringMap<K, V> {
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            capacity,
            ttl,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The entry, unless its TTL has passed (it is then forgotten).
    pub(crate) fn live(&mut self, key: &K) -> Option<&mut V> {
        let expired = self
            .entries
            .get(key)
            .is_some_and(|slot| slot.value.expires() && slot.written.elapsed() >= self.ttl);
        if expired {
            self.entries.remove(key);
            return None;
        }
        self.get_mut(key)
    }

    /// The entry as stored, whether or not its TTL has passed.
    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.entries.get_mut(key).map(|slot| &mut slot.value)
    }

    /// Stores `value`; its TTL starts now.
    pub(crate) fn insert(&mut self, key: K, value: V) {
        let written = Instant::now();
        self.entries.insert(key.clone(), Slot { value, written });
        self.order.push_back((key, written));
        self.evict();
    }

    /// The entry was rewritten in place (through `get_mut`): its TTL starts
    /// again now.
    pub(crate) fn touch(&mut self, key: &K) {
        let Some(slot) = self.entries.get_mut(key) else {
            return;
        };
        let written = Instant::now();
        slot.written = written;
        self.order.push_back((key.clone(), written));
        self.evict();
    }

    pub(crate) fn remove(&mut self, key: &K) {
        self.entries.remove(key);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn evict(&mut self) {
        // The order queue is bounded too: rewrites of the same keys leave
        // stale slots behind.
        while self.entries.len() > self.capacity || self.order.len() > 2 * self.capacity.max(1) {
            let Some((key, written)) = self.order.pop_front() else {
                return;
            };
            // Only the entry this slot was written for, and only one that
            // may go early.
            let stale = self
                .entries
                .get(&key)
                .is_some_and(|slot| slot.written == written && slot.value.evictable());
            if stale {
                self.entries.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Retention for i32 {}

    /// Odd values are pinned: never evicted, never expired.
    #[derive(Clone, Copy, Debug, PartialEq)]
    struct Pinned(i32);

    impl Retention for Pinned {
        fn evictable(&self) -> bool {
            self.0 % 2 == 0
        }
        fn expires(&self) -> bool {
            self.0 % 2 == 0
        }
    }

    #[test]
    fn keeps_at_most_capacity_evicting_the_oldest() {
        let mut map = ExpiringMap::new(2, Duration::from_secs(60));
        map.insert("a", 1);
        map.insert("b", 2);
        map.insert("c", 3);
        assert_eq!(map.len(), 2);
        assert_eq!(map.live(&"a"), None);
        assert_eq!(map.live(&"c").copied(), Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_the_ttl() {
        let mut map = ExpiringMap::new(10, Duration::from_secs(5));
        map.insert("a", 1);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(map.live(&"a").copied(), Some(1));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(map.live(&"a"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn pinned_entries_are_neither_evicted_nor_expired_and_touch_restarts_the_ttl() {
        let mut map = ExpiringMap::new(2, Duration::from_secs(5));
        map.insert("pinned", Pinned(1));
        map.insert("b", Pinned(2));
        map.insert("c", Pinned(4));
        assert_eq!(map.live(&"b"), None, "the oldest evictable entry made room");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(map.live(&"c"), None, "expired");
        assert_eq!(map.live(&"pinned").copied(), Some(Pinned(1)));
        if let Some(value) = map.get_mut(&"pinned") {
            *value = Pinned(6);
        }
        map.touch(&"pinned");
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(map.live(&"pinned").copied(), Some(Pinned(6)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(map.live(&"pinned"), None, "no longer pinned, so it expires");
    }
}
