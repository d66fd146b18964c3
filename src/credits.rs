//! The kie.ai account's credits as a gauge, refreshed in the background,
//! with a warning below a threshold: operators hear of a low balance before
//! kie.ai refuses creates with 402.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::CreditSettings;
use crate::kie::{Credential, KieClient};
use crate::metrics::Metrics;

/// Reads the balance every `settings.refresh` until `shutdown`; the first
/// read at once. Never with key pass-through: whose account would it be?
pub(crate) fn spawn_refresh(
    kie: KieClient,
    credential: Credential,
    settings: CreditSettings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    if settings.refresh.is_zero() {
        return;
    }
    tokio::spawn(async move {
        let mut every = tokio::time::interval(settings.refresh);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            match kie.credits(&credential, Some(settings.refresh)).await {
                Ok(credits) => {
                    metrics.credits(credits);
                    if credits < settings.warn_below {
                        tracing::warn!(
                            credits,
                            warn_below = settings.warn_below,
                            "kie.ai credits are low: top up before kie.ai refuses new tasks (402)"
                        );
                    }
                }
                Err(error) => tracing::warn!(%error, "could not read kie.ai's credits"),
            }
        }
    });
}
