//! A bounded, expiring map of finished tasks: a task that succeeded or
//! failed never changes again, so it is answered without asking kie.ai.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

pub struct TerminalCache<K, V> {
    capacity: usize,
    ttl: Duration,
    inner: Mutex<Inner<K, V>>,
}

struct Inner<K, V> {
    entries: HashMap<K, (V, Instant)>,
    /// Insertion order, for evicting the oldest when full.
    order: VecDeque<(K, Instant)>,
}

impl<K: Clone + Eq + Hash, V: Clone> TerminalCache<K, V> {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            capacity,
            ttl,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    pub fn get(&self, key: &K) -> Option<V> {
        let mut inner = self.inner.lock();
        let (value, stored) = inner.entries.get(key)?;
        if stored.elapsed() < self.ttl {
            return Some(value.clone());
        }
        inner.entries.remove(key);
        None
    }

    pub fn insert(&self, key: K, value: V) {
        if self.capacity == 0 {
            return;
        }
        let now = Instant::now();
        let mut inner = self.inner.lock();
        inner.entries.insert(key.clone(), (value, now));
        inner.order.push_back((key, now));
        while inner.entries.len() > self.capacity || inner.order.len() > 2 * self.capacity {
            let Some((old, at)) = inner.order.pop_front() else {
                break;
            };
            // Only the entry this order slot was written for: a key stored
            // again later has a newer slot further back.
            if inner.entries.get(&old).is_some_and(|(_, t)| *t == at) {
                inner.entries.remove(&old);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_at_most_capacity_evicting_the_oldest() {
        let cache = TerminalCache::new(2, Duration::from_secs(60));
        cache.insert("a", 1);
        cache.insert("b", 2);
        cache.insert("c", 3);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&"a"), None);
        assert_eq!(cache.get(&"c"), Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_the_ttl() {
        let cache = TerminalCache::new(10, Duration::from_secs(5));
        cache.insert("a", 1);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(cache.get(&"a"), Some(1));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(cache.get(&"a"), None);
    }
}
