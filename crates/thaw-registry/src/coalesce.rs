//! Single-flight for small upstream calls (manifest fetches, access probes): concurrent callers
//! with the same key share one call and its result.
//!
//! Blobs have their own, streaming single-flight (`flight.rs`); these calls return whole values,
//! so one `OnceCell` per key is enough. The entry is dropped once its value is in, so a later call
//! asks again (by then a manifest is usually cached and never gets here). If the caller running
//! the call is cancelled (its client went away), the next waiter runs it instead.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::OnceCell;

pub struct Coalesce<K, V> {
    calls: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K, V> Default for Coalesce<K, V> {
    fn default() -> Self {
        Coalesce { calls: Mutex::new(HashMap::new()) }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Coalesce<K, V> {
    /// Runs `call` for `key`, or waits for the run already in progress and returns its value.
    pub async fn run<F, Fut>(&self, key: K, call: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let cell = self.calls.lock().entry(key.clone()).or_default().clone();
        let value = cell.get_or_init(call).await.clone();
        let mut calls = self.calls.lock();
        if calls.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            calls.remove(&key);
        }
        value
    }

    /// Calls in progress (for tests).
    pub fn in_flight(&self) -> usize {
        self.calls.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_call_and_later_ones_call_again() {
        let c: Arc<Coalesce<&'static str, usize>> = Arc::new(Coalesce::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (c, calls) = (c.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                c.run("k", || async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    calls.fetch_add(1, Ordering::SeqCst) + 1
                })
                .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 1, "every caller gets the one call's value");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(c.in_flight(), 0);
        let again = c.run("k", || async { calls.fetch_add(1, Ordering::SeqCst) + 1 }).await;
        assert_eq!(again, 2, "a call after the first finished runs anew");
    }

    #[tokio::test]
    async fn a_cancelled_caller_hands_the_call_to_the_next() {
        let c: Arc<Coalesce<u8, u8>> = Arc::new(Coalesce::default());
        let c2 = c.clone();
        let first = tokio::spawn(async move { c2.run(1, || async { std::future::pending::<u8>().await }).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        first.abort();
        let _ = first.await;
        assert_eq!(tokio::time::timeout(Duration::from_secs(2), c.run(1, || async { 7 })).await.unwrap(), 7);
    }
}
