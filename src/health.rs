//! The gRPC health service (grpc.health.v1) as a drain needs it: one switch
//! that turns "" and the gateway's service NOT_SERVING, and Watch streams
//! that end with UNAVAILABLE when the gateway stops serving, so that they
//! neither hold the drain open nor leave a watcher waiting on a closed
//! server.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::{Stream, StreamExt, stream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

use crate::error::GatewayError;

/// The services the health service reports on: the whole server ("") and
/// the gateway's own.
const SERVICES: [&str; 2] = ["", crate::pb::video_generation_server::SERVICE_NAME];

/// Writes the statuses the service reads.
pub struct HealthSwitch {
    reporter: HealthReporter,
    /// Set before the reporter's statuses change, so that a Check answers
    /// NOT_SERVING for "" and the service together: the reporter updates
    /// them one after the other, and a probe reading between would see the
    /// two disagree.
    draining: Arc<AtomicBool>,
}

impl HealthSwitch {
    /// A switch showing SERVING, and the service that answers from it;
    /// its Watch streams end when `stopped` is cancelled.
    pub async fn serving(stopped: CancellationToken) -> (Self, HealthServer<DrainingHealth>) {
        let reporter = HealthReporter::new();
        let switch = Self {
            reporter,
            draining: Arc::new(AtomicBool::new(false)),
        };
        switch.set(ServingStatus::Serving).await;
        let service = DrainingHealth {
            inner: HealthService::from_health_reporter(switch.reporter.clone()),
            draining: switch.draining.clone(),
            stopped,
        };
        (switch, HealthServer::new(service))
    }

    pub async fn not_serving(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.set(ServingStatus::NotServing).await;
    }

    async fn set(&self, status: ServingStatus) {
        for service in SERVICES {
            self.reporter.set_service_status(service, status).await;
        }
    }
}

/// tonic-health's service, with Watch streams that end on shutdown.
pub struct DrainingHealth {
    inner: HealthService,
    draining: Arc<AtomicBool>,
    stopped: CancellationToken,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for DrainingHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        if self.draining.load(Ordering::SeqCst)
            && SERVICES.contains(&request.get_ref().service.as_str())
        {
            return Ok(Response::new(HealthCheckResponse {
                status: tonic_health::pb::health_check_response::ServingStatus::NotServing as i32,
            }));
        }
        self.inner.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let statuses = self.inner.watch(request).await?.into_inner();
        let stopped = self.stopped.clone();
        let stream = stream::unfold(Some(statuses), move |statuses| {
            let stopped = stopped.clone();
            async move {
                let mut statuses = statuses?;
                tokio::select! {
                    // A change not yet sent (the NOT_SERVING of a drain with
                    // no delay) goes out before the end.
                    biased;
                    Some(status) = statuses.next() => Some((status, Some(statuses))),
                    // The same end as a WatchTask stream's: reconnect elsewhere.
                    () = stopped.cancelled() => {
                        Some((Err(GatewayError::ShuttingDown.to_status()), None))
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
