//! The fleet's view (`WorkerBuilder::fleet_view`): at every
//! `fleet_view_interval` the worker publishes its load and jobs, reads the
//! fleet's back, runs the `AutoScaler` over them and exports the replica
//! count the fleet should have (`livekit_agent_recommended_replicas`, and
//! `GetState::recommended_replicas`). One round at a time; a failing store
//! is logged and the next interval tries again.

use std::sync::Arc;
use std::time::Instant;

use actix::fut::wrap_future;
use tracing::{debug, info, warn};

use super::*;
use crate::fleet::{FleetLoad, FleetView};
use crate::scaling::{AutoScaler, ScaleDecision};

/// How many intervals a published load lasts: one missed round (a slow
/// store, a busy worker) does not drop a live worker from the fleet.
const LOAD_TTL_INTERVALS: u32 = 3;

/// The worker's part in the fleet's scaling decision.
pub(crate) struct FleetScaling {
    view: Arc<dyn FleetView>,
    scaler: AutoScaler,
    /// The scaler's clock starts here.
    since: Instant,
    /// A round is in flight.
    pending: bool,
    /// The last decision, once there is one.
    pub(super) recommended: Option<u32>,
}

impl FleetScaling {
    pub(crate) fn new(view: Arc<dyn FleetView>, scaler: AutoScaler) -> Self {
        Self {
            view,
            scaler,
            since: Instant::now(),
            pending: false,
            recommended: None,
        }
    }
}

impl WorkerActor {
    /// One round: publish, read, decide.
    pub(super) fn fleet_view_round(&mut self, ctx: &mut Context<Self>) {
        let counts = self.table.counts();
        let load = FleetLoad {
            worker: self.options.instance_id.clone(),
            load: self.load.load,
            // queued jobs are demand too: the replicas should cover them
            jobs: counts.queued + counts.starting + counts.running,
            max_jobs: self.options.max_jobs,
            draining: self.shutting_down(),
        };
        let ttl = self.options.fleet_view_interval * LOAD_TTL_INTERVALS;
        let Some(scaling) = &mut self.scaling else {
            return;
        };
        if scaling.pending {
            return;
        }
        scaling.pending = true;
        let view = scaling.view.clone();
        let round = async move {
            view.publish(&load, ttl).await?;
            view.loads().await
        };
        ctx.spawn(wrap_future(round).map(|loads, act: &mut Self, _ctx| {
            let Some(scaling) = &mut act.scaling else {
                return;
            };
            scaling.pending = false;
            let loads = match loads {
                Ok(loads) => loads,
                Err(err) => return warn!(%err, "cannot reach the fleet's view"),
            };
            let sample = crate::fleet::fleet_sample(&loads);
            let decision = scaling.scaler.observe(scaling.since.elapsed(), sample);
            let replicas = decision.replicas();
            match decision {
                ScaleDecision::Hold { .. } => debug!(%decision, "fleet scaling"),
                _ => info!(%decision, ?sample, "the fleet should scale"),
            }
            scaling.recommended = Some(replicas);
            act.metrics.recommended_replicas(replicas);
        }));
    }

    /// Withdraws the worker's load from the fleet's view as it stops.
    pub(super) fn retire_from_fleet_view(&self) {
        let Some(scaling) = &self.scaling else {
            return;
        };
        // its last recommendation must not pin a `max` across the fleet
        self.metrics.recommended_replicas(0);
        let retire = scaling.view.retire(&self.options.instance_id);
        actix_rt::spawn(async move {
            if let Err(err) = retire.await {
                warn!(%err, "could not withdraw the worker's load from the fleet's view");
            }
        });
    }
}
