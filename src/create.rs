//! Creating tasks: once per request_id, with this gateway's callback URL
//! when the caller has none.

use std::sync::Arc;
use std::time::Duration;

use crate::error::GatewayError;
use crate::hub::TaskHub;
use crate::idempotency::{IdempotencyKey, IdempotencyStore, Reservation, fingerprint, scope_of};
use crate::kie::{Credential, KieClient};
use crate::task::{CreateTaskInput, TaskId};

pub struct Creator {
    pub kie: KieClient,
    pub hub: TaskHub,
    pub idempotency: Arc<dyn IdempotencyStore>,
    /// Sent as `callBackUrl` when the caller gives none.
    pub public_callback_url: Option<String>,
}

impl Creator {
    /// Creates the task; a repeat of a request_id with the same parameters
    /// gets the first task id, with no second upstream call.
    pub async fn create(
        self: &Arc<Self>,
        credential: Credential,
        input: CreateTaskInput,
        deadline: Option<Duration>,
    ) -> Result<String, GatewayError> {
        let Some(request_id) = input.request_id.clone() else {
            return self.create_upstream(&credential, &input, deadline).await;
        };
        let key = IdempotencyKey {
            scope: scope_of(credential.key.expose()),
            request_id,
        };
        let reservation = self
            .idempotency
            .clone()
            .reserve(key.clone(), fingerprint(&input))
            .await;
        let lease = match reservation {
            Reservation::Reserved(lease) => lease,
            Reservation::Known(task_id) => return Ok(task_id),
            Reservation::Failed(e) => return Err(e),
            Reservation::Mismatch => {
                return Err(GatewayError::IdempotencyKeyReused {
                    request_id: key.request_id,
                });
            }
        };
        // The attempt runs on its own: if the caller leaves, the task kie.ai
        // creates is still recorded, and a retry with this request_id gets
        // it instead of a second one.
        let this = self.clone();
        let attempt = tokio::spawn(async move {
            let created = this.create_upstream(&credential, &input, deadline).await;
            lease.settle(created.as_deref());
            created
        });
        attempt
            .await
            .unwrap_or(Err(GatewayError::Internal("the create attempt panicked")))
    }

    async fn create_upstream(
        &self,
        credential: &Credential,
        input: &CreateTaskInput,
        deadline: Option<Duration>,
    ) -> Result<String, GatewayError> {
        let ours = input.callback_url.is_none() && self.public_callback_url.is_some();
        let call_back_url = input
            .callback_url
            .as_deref()
            .or(self.public_callback_url.as_deref());
        let task_id = self
            .kie
            .create_task(credential, input, call_back_url, deadline)
            .await?;
        if ours && let Ok(id) = TaskId::parse(task_id.clone()) {
            self.hub.expect_callback(id);
        }
        Ok(task_id)
    }
}
