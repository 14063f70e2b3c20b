//! The arbiters segment actors run on: threads, one per core by default, each replaced
//! when it dies. Partitions start segments on them and the router moves segments
//! between them; the pool knows neither.

use std::sync::Mutex;

use actix_rt::{Arbiter, ArbiterHandle};

/// The threads segment actors run on. A dead arbiter (its thread panicked outside the
/// runtime's guards) is replaced the next time it is asked for.
pub struct ArbiterPool {
    arbiters: Mutex<Vec<Arbiter>>,
}

impl ArbiterPool {
    /// `size` arbiters; 0 means one per core.
    pub fn new(size: usize) -> ArbiterPool {
        let size = if size == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            size
        };
        ArbiterPool {
            arbiters: Mutex::new((0..size).map(|_| Arbiter::new()).collect()),
        }
    }

    pub fn len(&self) -> usize {
        self.arbiters.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A live handle to arbiter `i`, replacing it first if its thread is gone.
    pub fn handle(&self, i: usize) -> ArbiterHandle {
        let mut arbiters = self.arbiters.lock().unwrap_or_else(|p| p.into_inner());
        if !arbiters[i].spawn(async {}) {
            tracing::warn!(arbiter = i, "arbiter thread is gone; starting a new one");
            arbiters[i] = Arbiter::new();
        }
        arbiters[i].handle()
    }

    /// Stops every arbiter (at shutdown).
    pub fn stop(&self) {
        for a in self.arbiters.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            a.stop();
        }
    }
}
