//! Readiness: the gateway is ready when its listeners are bound, every
//! start-up dependency (a JWKS fetch, a discovery document, ...) has
//! reported in, and it is not draining. `/readyz` reads this.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Default)]
pub struct Readiness {
    serving: AtomicBool,
    draining: AtomicBool,
    /// Dependencies that have not succeeded yet.
    waiting: AtomicUsize,
}

/// One start-up dependency. `open` it once it has succeeded; dropping it
/// unopened keeps the gateway not ready (the dependency never came up).
pub struct Gate {
    readiness: Arc<Readiness>,
    open: AtomicBool,
}

impl Readiness {
    pub fn new() -> Arc<Self> {
        Arc::new(Readiness::default())
    }

    /// Registers a dependency that must succeed before the gateway is ready.
    pub fn gate(self: &Arc<Self>) -> Gate {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        Gate { readiness: self.clone(), open: AtomicBool::new(false) }
    }

    pub fn set_serving(&self) {
        self.serving.store(true, Ordering::Release);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.serving.load(Ordering::Acquire)
            && !self.draining.load(Ordering::Acquire)
            && self.waiting.load(Ordering::Acquire) == 0
    }
}

impl Gate {
    /// Marks this dependency as up. Idempotent.
    pub fn open(&self) {
        if !self.open.swap(true, Ordering::AcqRel) {
            self.readiness.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_serving_with_all_gates_open_and_not_draining() {
        let r = Readiness::new();
        let a = r.gate();
        let b = r.gate();
        assert!(!r.is_ready());
        r.set_serving();
        assert!(!r.is_ready());
        a.open();
        a.open();
        assert!(!r.is_ready());
        b.open();
        assert!(r.is_ready());
        r.set_draining();
        assert!(!r.is_ready());
    }
}
