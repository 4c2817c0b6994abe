//! Shutdown hooks: the application's own steps in a worker's orderly stop.
//!
//! A worker stops in phases (a drain, or an immediate shutdown), and an
//! application can hook into three of them: before the drain begins (stop
//! feeding it work, deregister from a service registry), once no job runs
//! any more (flush what jobs left behind), and at the very end, once the
//! socket is closed (close pools, flush telemetry). Within a phase, hooks run
//! one after the other by their `order`, each bounded by its `timeout`: a
//! hook that hangs is cut off there, a hook that panics is logged, and the
//! shutdown goes on either way.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use crate::handler::BoxFuture;

/// When a shutdown hook runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ShutdownPhase {
    /// As the worker begins to drain (or to shut down): it already reports
    /// itself draining and declines new offers; its jobs still run.
    BeforeDrain,
    /// Once no job runs or waits any more, before the last statuses are
    /// flushed and the socket closed.
    AfterJobs,
    /// After the socket is closed, just before the worker stops.
    Cleanup,
}

/// A step of the application's in a worker's shutdown; see the module docs.
pub struct ShutdownHook {
    pub(crate) name: String,
    pub(crate) order: i32,
    pub(crate) timeout: Duration,
    pub(crate) run: Box<dyn FnOnce() -> BoxFuture<()> + Send>,
}

/// How long a hook may run when it does not say: long enough to flush a
/// buffer, short enough that a hung hook does not hold a deploy up.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(10);

impl ShutdownHook {
    /// A hook named `name` (for the logs) that runs `run`'s future, at order
    /// 0 with [`DEFAULT_HOOK_TIMEOUT`].
    pub fn new<F, Fut>(name: impl Into<String>, run: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self {
            name: name.into(),
            order: 0,
            timeout: DEFAULT_HOOK_TIMEOUT,
            run: Box::new(move || Box::pin(run())),
        }
    }

    /// Runs before hooks of a higher order in the same phase (ties: in the
    /// order they were added).
    pub fn order(mut self, order: i32) -> Self {
        self.order = order;
        self
    }

    /// Cuts the hook off after this long.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The hook's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Debug for ShutdownHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownHook")
            .field("name", &self.name)
            .field("order", &self.order)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The hooks of a worker, by phase, in the order they run.
#[derive(Debug, Default)]
pub(crate) struct ShutdownHooks {
    hooks: Vec<(ShutdownPhase, u64, ShutdownHook)>,
    added: u64,
}

impl ShutdownHooks {
    /// Adds a hook to `phase`.
    pub(crate) fn add(&mut self, phase: ShutdownPhase, hook: ShutdownHook) {
        self.added += 1;
        self.hooks.push((phase, self.added, hook));
    }

    /// Takes out the hooks of `phase`, in the order they run: by `order`,
    /// then as added.
    pub(crate) fn take(&mut self, phase: ShutdownPhase) -> Vec<ShutdownHook> {
        let (mut taken, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.hooks)
            .into_iter()
            .partition(|(p, _, _)| *p == phase);
        self.hooks = kept;
        taken.sort_by_key(|(_, added, hook)| (hook.order, *added));
        taken.into_iter().map(|(_, _, hook)| hook).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(name: &str) -> ShutdownHook {
        ShutdownHook::new(name, || async {})
    }

    #[test]
    fn hooks_run_by_phase_then_order_then_as_added() {
        let mut hooks = ShutdownHooks::default();
        hooks.add(ShutdownPhase::Cleanup, hook("close-pool"));
        hooks.add(ShutdownPhase::BeforeDrain, hook("deregister").order(5));
        hooks.add(ShutdownPhase::BeforeDrain, hook("stop-intake").order(-1));
        hooks.add(ShutdownPhase::BeforeDrain, hook("notify").order(5));
        let names = |hooks: Vec<ShutdownHook>| {
            hooks
                .iter()
                .map(|h| h.name().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(hooks.take(ShutdownPhase::BeforeDrain)),
            ["stop-intake", "deregister", "notify"]
        );
        assert!(
            hooks.take(ShutdownPhase::BeforeDrain).is_empty(),
            "taken once"
        );
        assert!(hooks.take(ShutdownPhase::AfterJobs).is_empty());
        assert_eq!(names(hooks.take(ShutdownPhase::Cleanup)), ["close-pool"]);
    }

    #[test]
    fn a_hook_prints_without_its_closure() {
        let shown = format!("{:?}", hook("x").timeout(Duration::from_secs(3)));
        assert!(shown.contains("\"x\"") && shown.contains("3s"), "{shown}");
    }
}
