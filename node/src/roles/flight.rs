//! One upstream fetch per chunk, however many ask at once.
//!
//! The first caller for a key runs the fetch; callers that arrive while it is
//! in flight wait for its result instead of fetching again. The number of
//! fetches in flight is bounded: past the bound a caller gets
//! [`FlightError::Busy`] at once rather than queueing without limit. If the
//! leading caller is cancelled (its HTTP client went away), waiters are told
//! so and may try again; nobody waits forever.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use tokio::sync::broadcast;

/// Why a flight gave no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlightError<E> {
    #[error("too many fetches in flight ({0})")]
    Busy(usize),
    #[error("the fetch this request joined was cancelled")]
    Cancelled,
    #[error(transparent)]
    Failed(E),
}

/// Deduplicates concurrent fetches of the same key.
#[derive(Debug)]
pub struct SingleFlight<K, V, E> {
    inflight: Mutex<HashMap<K, broadcast::Sender<Result<V, E>>>>,
    max_inflight: usize,
}

impl<K, V, E> SingleFlight<K, V, E>
where
    K: Hash + Eq + Clone,
    V: Clone,
    E: Clone,
{
    pub fn new(max_inflight: usize) -> Self {
        Self {
            inflight: Mutex::new(HashMap::new()),
            max_inflight,
        }
    }

    /// Fetches currently in flight.
    pub fn len(&self) -> usize {
        self.inflight.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `fetch` for `key` unless a fetch for it is already in flight, in
    /// which case waits for that one's result.
    pub async fn run<F, Fut>(&self, key: K, fetch: F) -> Result<V, FlightError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let joined = {
            let mut map = self.inflight.lock();
            match map.get(&key) {
                Some(tx) => Some(tx.subscribe()),
                None => {
                    if map.len() >= self.max_inflight {
                        return Err(FlightError::Busy(self.max_inflight));
                    }
                    let (tx, _) = broadcast::channel(1);
                    map.insert(key.clone(), tx);
                    None
                }
            }
        };
        if let Some(mut rx) = joined {
            return match rx.recv().await {
                Ok(result) => result.map_err(FlightError::Failed),
                Err(_) => Err(FlightError::Cancelled),
            };
        }
        // Removing the entry on drop (also on cancellation) closes the
        // channel, which wakes every waiter with `Cancelled`.
        let guard = Leader { flight: self, key };
        let result = fetch().await;
        if let Some(tx) = guard.finish() {
            let _ = tx.send(result.clone());
        }
        result.map_err(FlightError::Failed)
    }
}

struct Leader<'a, K: Hash + Eq, V, E> {
    flight: &'a SingleFlight<K, V, E>,
    key: K,
}

impl<K: Hash + Eq, V, E> Leader<'_, K, V, E> {
    fn finish(self) -> Option<broadcast::Sender<Result<V, E>>> {
        let tx = self.flight.inflight.lock().remove(&self.key);
        std::mem::forget(self);
        tx
    }
}

impl<K: Hash + Eq, V, E> Drop for Leader<'_, K, V, E> {
    fn drop(&mut self) {
        self.flight.inflight.lock().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch() {
        let flight = Arc::new(SingleFlight::<u32, u64, String>::new(16));
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (flight, calls) = (flight.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                flight
                    .run(7, || async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(42)
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(42));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(flight.is_empty());
    }

    #[tokio::test]
    async fn failures_reach_every_waiter_and_are_not_cached() {
        let flight = Arc::new(SingleFlight::<u32, u64, String>::new(16));
        let a = {
            let flight = flight.clone();
            tokio::spawn(async move {
                flight
                    .run(1, || async {
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        Err("upstream gone".to_owned())
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        let b = flight.run(1, || async { Ok(9) }).await;
        assert_eq!(b, Err(FlightError::Failed("upstream gone".to_owned())));
        assert_eq!(
            a.await.unwrap(),
            Err(FlightError::Failed("upstream gone".to_owned()))
        );
        assert_eq!(flight.run(1, || async { Ok(9) }).await, Ok(9));
    }

    #[tokio::test]
    async fn cancelled_leader_releases_waiters() {
        let flight = Arc::new(SingleFlight::<u32, u64, String>::new(16));
        let leader = {
            let flight = flight.clone();
            tokio::spawn(async move {
                flight
                    .run(3, || async {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        Ok(1)
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let waiter = {
            let flight = flight.clone();
            tokio::spawn(async move { flight.run(3, || async { Ok(2) }).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        leader.abort();
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, Err(FlightError::Cancelled));
        assert!(flight.is_empty());
    }

    #[tokio::test]
    async fn bound_on_flights_refuses_rather_than_queues() {
        let flight = Arc::new(SingleFlight::<u32, u64, String>::new(1));
        let busy = {
            let flight = flight.clone();
            tokio::spawn(async move {
                flight
                    .run(1, || async {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok(1)
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            flight.run(2, || async { Ok(2) }).await,
            Err(FlightError::Busy(1))
        );
        assert_eq!(busy.await.unwrap(), Ok(1));
    }
}
