//! The flow collector: drains every worker's flow event ring into the API's flow store
//! (enriched there with pods, labels, policy and service names) every `DRAIN_EVERY`.

use anyhow::{Context, Result};
use sluice_control::api::Api;
use sluice_dataplane::flow::{FlowRing, RING};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the rings are drained: flows show up in `sluice observe -f` within this, and a
/// worker's ring (RING events) absorbs RING / 20 ms = 800k events/s before losing any.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// Starts the collector thread; it drains one last time once `done` is set (after the
/// workers stopped), so no event of theirs is lost on exit.
pub fn start_collector(
    api: Arc<Api>,
    rings: Vec<Arc<FlowRing>>,
    done: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sluice-flows".into())
        .spawn(move || {
            let mut events = Vec::with_capacity(RING + sluice_dataplane::flow::HTTP_RING);
            loop {
                let last = done.load(Ordering::Acquire);
                for r in &rings {
                    r.drain_into(&mut events, RING);
                    if !events.is_empty() {
                        api.flows.ingest(&api.store, &api.hub.current(), &events);
                        events.clear();
                    }
                }
                if last {
                    return;
                }
                std::thread::sleep(DRAIN_EVERY);
            }
        })
        .context("spawning the flow collector")
}
