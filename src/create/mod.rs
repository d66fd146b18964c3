//! Creating tasks: once per request_id, with this gateway's callback URL
//! when the caller has none, and never twice for one that may exist.
//!
//! Each attempt runs on its own task and belongs to the gateway, not to the
//! caller: once sent, it waits for kie.ai's answer up to the upstream
//! timeout whether or not the caller is still there, because only that
//! answer says whether a video is being paid for. A caller whose deadline
//! ends first is told the outcome is unknown; with a request_id its retry
//! waits for the same attempt.
//!
//! Frames sent as bytes are uploaded by the attempt before it creates: the
//! upload is part of the one attempt a request_id makes, and an upload that
//! fails is a certain "not created" (uploads are free and make no task).

pub mod attempts;
pub mod idempotency;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::callers::Caller;
use crate::callers::quota::{self, QuotaBook};
use crate::error::{GatewayError, OutcomeUnknown, Prospect};
use crate::hub::TaskHub;
use crate::kie::{
    CreateOutcome, Credential, Endpoint, KieClient, UpstreamError, UpstreamErrorKind,
};
use crate::metrics::{CreateTally, IdempotencyTally, Metrics};
use crate::task::{CreateTaskInput, ImageSource, TaskId};
use crate::uploads::Uploader;
use attempts::{Attempts, Ticket};
use idempotency::{
    Fingerprint, IdempotencyKey, IdempotencyStore, Lease, Reservation, Settlement, fingerprint,
    scope_for,
};

pub(crate) struct Creator {
    pub(crate) kie: KieClient,
    pub(crate) hub: TaskHub,
    pub(crate) idempotency: Arc<dyn IdempotencyStore>,
    /// Callback URLs per attempt, to learn the task of a lost answer.
    pub(crate) attempts: Arc<Attempts>,
    pub(crate) metrics: Arc<Metrics>,
    /// Uploads the frames sent as bytes.
    pub(crate) uploads: Arc<Uploader>,
    /// Each caller's quotas, counted before anything goes upstream.
    pub(crate) quotas: Arc<QuotaBook>,
}

/// One attempt's inputs, moved onto its own task.
struct Attempt {
    caller: Caller,
    credential: Credential,
    input: CreateTaskInput,
    /// Bounds the wait for the gateway's own limits, not kie.ai's answer.
    admit_by: Option<Duration>,
    lease: Option<Lease>,
    /// The call's x-request-id, for log lines.
    call_id: String,
}

impl Creator {
    /// Creates the task; a repeat of a request_id with the same parameters
    /// gets the first task id, with no second upstream call. `deadline` is
    /// the caller's; `call_id` its x-request-id.
    pub(crate) async fn create(
        self: &Arc<Self>,
        caller: Caller,
        credential: Credential,
        input: CreateTaskInput,
        deadline: Option<Duration>,
        call_id: &str,
    ) -> Result<String, GatewayError> {
        let request_id = input.request_id.clone();
        let attempt = Attempt {
            caller,
            credential,
            input,
            admit_by: deadline,
            lease: None,
            call_id: call_id.to_owned(),
        };
        let work = self.clone().reserve_and_run(attempt);
        let Some(deadline) = deadline else {
            return work.await;
        };
        tokio::time::timeout(deadline, work)
            .await
            .unwrap_or_else(|_elapsed| {
                Err(GatewayError::CreateOutcomeUnknown(OutcomeUnknown {
                    prospect: if request_id.is_some() {
                        Prospect::Answer
                    } else {
                        Prospect::NoRequestId
                    },
                    request_id,
                    cause: "kie.ai had not answered when the call's deadline ended".into(),
                    timed_out: true,
                }))
            })
    }

    async fn reserve_and_run(
        self: Arc<Self>,
        mut attempt: Attempt,
    ) -> Result<String, GatewayError> {
        let Some(request_id) = attempt.input.request_id.clone() else {
            return self.spawn(attempt).await;
        };
        let key = IdempotencyKey {
            scope: scope_for(&attempt.caller, attempt.credential.key.expose()),
            request_id,
        };
        let fingerprint = fingerprint_of(&attempt.input).await;
        let reservation = self
            .idempotency
            .clone()
            .reserve(key.clone(), fingerprint)
            .await;
        self.metrics.idempotency(match &reservation {
            Reservation::Reserved(_) => IdempotencyTally::Miss,
            Reservation::Known(_) => IdempotencyTally::Hit,
            Reservation::Failed(_) => IdempotencyTally::HitFailed,
            Reservation::Unknown(_) => IdempotencyTally::HitUnknown,
            Reservation::Mismatch => IdempotencyTally::Mismatch,
            Reservation::Unreachable => IdempotencyTally::Unavailable,
        });
        match reservation {
            Reservation::Reserved(lease) => {
                attempt.lease = Some(lease);
                self.spawn(attempt).await
            }
            Reservation::Known(task_id) => Ok(task_id),
            Reservation::Failed(e) => Err(e),
            Reservation::Unknown(unknown) => Err(GatewayError::CreateOutcomeUnknown(unknown)),
            Reservation::Mismatch => Err(GatewayError::IdempotencyKeyReused {
                request_id: key.request_id,
            }),
            // Without the shared store a duplicate on another replica could
            // not be seen: refuse rather than risk a second video.
            Reservation::Unreachable => Err(GatewayError::CoordinationUnavailable),
        }
    }

    /// Runs the attempt on its own task: the caller leaving (or its
    /// deadline ending) does not cut it.
    async fn spawn(self: Arc<Self>, attempt: Attempt) -> Result<String, GatewayError> {
        // The attempt's upstream calls stay beneath the caller's RPC span.
        let run = async move { self.run(attempt).await }.instrument(crate::otel::current());
        tokio::spawn(run)
            .await
            .unwrap_or(Err(GatewayError::Internal("the create attempt panicked")))
    }

    /// The attempt within its caller's quotas: counted first (a refusal
    /// frees the request_id, as nothing was sent), handed back when kie.ai
    /// certainly made no task, kept when it made one or may have.
    async fn run(&self, mut attempt: Attempt) -> Result<String, GatewayError> {
        let price = quota::price(attempt.input.duration, attempt.input.resolution);
        let hold = match self.quotas.reserve(&attempt.caller, price).await {
            Ok(hold) => hold,
            Err(error) => {
                if let Some(lease) = attempt.lease.take() {
                    lease.settle(Settlement::NotCreated(&error));
                }
                return Err(error);
            }
        };
        let result = self.attempt(attempt).await;
        match (hold, &result) {
            // Settled against kie.ai's charge when the hub sees it end.
            (Some(hold), Ok(task_id)) => hold.bind(task_id).await,
            (Some(hold), Err(e)) if !matches!(e, GatewayError::CreateOutcomeUnknown(_)) => {
                hold.release().await;
            }
            _ => {}
        }
        result
    }

    async fn attempt(&self, attempt: Attempt) -> Result<String, GatewayError> {
        let Attempt {
            caller: _,
            credential,
            mut input,
            admit_by,
            lease,
            call_id,
        } = attempt;
        let started = Instant::now();
        let uploaded = match self.upload_images(&credential, &mut input, admit_by).await {
            Ok(uploaded) => uploaded,
            Err(error) => return Err(self.not_created(error, None, lease)),
        };
        let admit_by = admit_by.map(|d| d.saturating_sub(started.elapsed()));
        if uploaded && admit_by == Some(Duration::ZERO) {
            // The caller's deadline ended during the upload: a task now
            // would be paid for with nobody told its id.
            self.metrics.shed(
                Endpoint::CreateTask.as_str(),
                "deadline_passed_during_upload",
            );
            let error = UpstreamError {
                endpoint: Endpoint::CreateTask,
                key_source: credential.source,
                retry_after: None,
                kind: UpstreamErrorKind::Shed {
                    reason: "deadline_passed_during_upload",
                },
            };
            return Err(self.not_created(error, None, lease));
        }
        // Our own callback URL carries a token that can name the task
        // should the answer be lost; a caller's URL is left as it is.
        let ticket = match input.callback_url {
            Some(_) => None,
            None => self.attempts.begin(
                lease.as_ref().map(|l| l.key().clone()),
                &credential,
                &call_id,
            ),
        };
        let call_back_url = match &ticket {
            Some(ticket) => Some(ticket.url.as_str()),
            None => input.callback_url.as_deref(),
        };
        let error = match self
            .kie
            .create_task(&credential, &input, call_back_url, admit_by)
            .await
        {
            Ok(task_id) => return Ok(self.created(task_id, ticket.as_ref(), lease)),
            Err(error) => error,
        };
        match error.create_outcome() {
            CreateOutcome::NotCreated => Err(self.not_created(error, ticket.as_ref(), lease)),
            CreateOutcome::MaybeCreated => {
                self.metrics.create_attempt(CreateTally::MaybeCreated);
                self.maybe_created(&error, &input, ticket, lease, &call_id)
            }
        }
    }

    /// Uploads the frames sent as bytes and puts their URLs in their place,
    /// within the caller's deadline; whether there were any.
    async fn upload_images(
        &self,
        credential: &Credential,
        input: &mut CreateTaskInput,
        deadline: Option<Duration>,
    ) -> Result<bool, UpstreamError> {
        let started = Instant::now();
        let mut any = false;
        for source in std::iter::once(&mut input.image).chain(input.end_image.as_mut()) {
            let ImageSource::Data(image) = source else {
                continue;
            };
            let left = deadline.map(|d| d.saturating_sub(started.elapsed()));
            let slot = self.uploads.slot(credential, left).await?;
            let file = self.uploads.upload(&slot, credential, image, left).await?;
            *source = ImageSource::Url(file.url);
            any = true;
        }
        Ok(any)
    }

    /// Certainly no task: the key (if any) is free again.
    fn not_created(
        &self,
        error: UpstreamError,
        ticket: Option<&Ticket>,
        lease: Option<Lease>,
    ) -> GatewayError {
        self.metrics.create_attempt(CreateTally::NotCreated);
        if let Some(ticket) = ticket {
            self.attempts.answered(ticket);
        }
        let error = GatewayError::Upstream(error);
        if let Some(lease) = lease {
            lease.settle(Settlement::NotCreated(&error));
        }
        error
    }

    fn created(&self, task_id: String, ticket: Option<&Ticket>, lease: Option<Lease>) -> String {
        self.metrics.create_attempt(CreateTally::Created);
        if let Some(ticket) = ticket {
            self.attempts.answered(ticket);
            // kie.ai will call back when it ends: poll it only as a safety
            // net.
            if let Ok(id) = TaskId::parse(task_id.clone()) {
                self.hub.expect_callback(id);
            }
        }
        if let Some(lease) = lease {
            lease.settle(Settlement::Created(&task_id));
        }
        task_id
    }

    /// The request went out and no readable answer came back: the key (if
    /// any) stays bound, never to create again, until the task is learned.
    fn maybe_created(
        &self,
        error: &UpstreamError,
        input: &CreateTaskInput,
        ticket: Option<Ticket>,
        lease: Option<Lease>,
        call_id: &str,
    ) -> Result<String, GatewayError> {
        // kie.ai's callback may already have named the task.
        if let Some(task_id) = ticket.as_ref().and_then(|t| self.attempts.take_learned(t)) {
            self.metrics.create_attempt(CreateTally::ResolvedLater);
            tracing::warn!(
                request_id = call_id,
                create_request_id = input.request_id.as_deref(),
                task_id,
                %error,
                "createTask answer lost, but kie.ai's callback had already named the task"
            );
            if let Some(lease) = lease {
                lease.settle(Settlement::Created(&task_id));
            }
            return Ok(task_id);
        }
        let prospect = match (&input.request_id, &ticket) {
            (None, _) => Prospect::NoRequestId,
            (Some(_), Some(_)) => Prospect::Callback,
            (Some(_), None) => Prospect::Never,
        };
        let unknown = OutcomeUnknown {
            request_id: input.request_id.clone(),
            cause: error.to_string(),
            timed_out: error.is_timeout(),
            prospect,
        };
        tracing::warn!(
            request_id = call_id,
            create_request_id = input.request_id.as_deref(),
            %error,
            learnable = ticket.is_some(),
            "createTask outcome unknown: kie.ai may have made a task"
        );
        if let Some(lease) = lease {
            lease.settle(Settlement::Unknown(&unknown));
        }
        // After the key is settled as unknown, so that a callback from now
        // on finds it waiting.
        if let Some(ticket) = ticket {
            self.attempts.lost(ticket);
        }
        Err(GatewayError::CreateOutcomeUnknown(unknown))
    }
}

/// The input's fingerprint. Hashing up to 20 MiB of image bytes would hold
/// a runtime thread for tens of milliseconds: that goes to the blocking pool.
async fn fingerprint_of(input: &CreateTaskInput) -> Fingerprint {
    let carries_bytes = |source: Option<&ImageSource>| matches!(source, Some(ImageSource::Data(_)));
    if !carries_bytes(Some(&input.image)) && !carries_bytes(input.end_image.as_ref()) {
        return fingerprint(input);
    }
    let owned = input.clone();
    match tokio::task::spawn_blocking(move || fingerprint(&owned)).await {
        Ok(fingerprint) => fingerprint,
        // Only if the blocking pool is gone (the runtime shutting down).
        Err(_) => fingerprint(input),
    }
}
