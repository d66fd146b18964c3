//! GenerateVideo: a CreateTask, then a WatchTask stream of the new task, as
//! one call. Both halves are the other RPCs' own paths (`Creator::create`,
//! `TaskHub::subscribe`, `task_stream`); this file only joins them.

use std::pin::Pin;

use futures_util::{Stream, StreamExt, stream};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::{Call, VideoGenerationService, respond, task_stream};
use crate::error::GatewayError;
use crate::pb::{GenerateVideoRequest, GenerateVideoResponse};
use crate::task::{CreateTaskInput, TaskId};

pub type GenerateStream =
    Pin<Box<dyn Stream<Item = Result<GenerateVideoResponse, Status>> + Send + 'static>>;

impl VideoGenerationService {
    pub(super) async fn generate(
        &self,
        request: Request<GenerateVideoRequest>,
    ) -> Result<Response<GenerateStream>, Status> {
        let mut call = Call::start("GenerateVideo", &request, &self.metrics);
        let (metadata, _, message) = request.into_parts();
        let created = async {
            let input = CreateTaskInput::try_from(message.create.unwrap_or_default())?;
            let repeatable = input.request_id.is_some();
            let credential = self.credentials.for_call(&metadata, &call.caller)?;
            let call_id = call.request_id.to_str().unwrap_or_default();
            let task_id = self
                .creator
                .create(
                    call.caller.clone(),
                    credential.clone(),
                    input,
                    call.deadline,
                    call_id,
                )
                .await?;
            Ok::<_, GatewayError>((task_id, credential, repeatable))
        }
        .instrument(call.span.clone())
        .await;
        let (task_id, credential, repeatable) = match created {
            Ok(created) => created,
            Err(e) => return Err(call.fail(&e)),
        };
        call.task_id.clone_from(&task_id);
        // From here on the task exists: without a request_id, calling again
        // would make another, so no error may invite a retry.
        let no_repeat = (!repeatable).then(|| task_id.clone());
        // Subscribed before the first message goes out, so that the first
        // read is already on its way.
        let subscription = TaskId::parse(task_id.clone())
            .map(|id| call.span.in_scope(|| self.hub.subscribe(credential, id)))
            .map_err(GatewayError::from);
        let streamer = self.watch_streamer();
        let shutdown = self.shutdown.clone();
        let request_id = call.request_id.clone();
        let watched = async move {
            let seen = match subscription {
                Ok(rx) => task_stream::first_observation(rx, &shutdown).await,
                Err(e) => Err(e),
            };
            match seen {
                Ok(first_seen) => streamer.stream(call, first_seen, no_repeat),
                Err(e) => {
                    let e = task_stream::for_caller(e, no_repeat.as_deref());
                    Box::pin(stream::once(std::future::ready(Err(call.fail(&e)))))
                }
            }
        };
        let first = GenerateVideoResponse {
            task_id: task_id.clone(),
            task: None,
            heartbeat: false,
        };
        let rest = stream::once(watched).flatten().map(move |item| {
            item.map(|frame| GenerateVideoResponse {
                task_id: task_id.clone(),
                task: Some(frame.task().clone()),
                heartbeat: frame.heartbeat(),
            })
        });
        let stream: GenerateStream =
            Box::pin(stream::once(std::future::ready(Ok(first))).chain(rest));
        Ok(respond(&request_id, stream))
    }
}
