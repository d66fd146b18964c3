//! The VideoGeneration service as mounted: the generated server for every
//! method but WatchTask, which is served here with a codec that sends the
//! bytes `task_stream::Frame::encode` made. A state change is then encoded
//! once for all its watchers instead of once per stream; the messages and
//! their bytes are exactly the generated server's (the generated code fixes
//! prost's codec for every method, hence the route of our own).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http;
use bytes::{BufMut, Bytes};
use futures_util::StreamExt;
use tonic::codec::{
    BufferSettings, Codec, CompressionEncoding, EnabledCompressionEncodings, EncodeBuf, Encoder,
};
use tonic::server::{Grpc, NamedService, ServerStreamingService};
use tonic::{Request, Response, Status};

use super::VideoGenerationService;
use crate::pb::WatchTaskRequest;
use crate::pb::video_generation_server::VideoGenerationServer;

/// The generated server's route for WatchTask (`/package.Service/Method`).
const WATCH_TASK: &str = "/hailuo.v1.VideoGeneration/WatchTask";

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

/// `VideoGenerationServer` with WatchTask's shared encoding; built and
/// configured the same way.
#[derive(Clone)]
pub(crate) struct VideoGenerationRoutes {
    service: Arc<VideoGenerationService>,
    generated: VideoGenerationServer<VideoGenerationService>,
    accept: EnabledCompressionEncodings,
    send: EnabledCompressionEncodings,
    max_decoding: Option<usize>,
}

impl VideoGenerationRoutes {
    pub(crate) fn new(service: VideoGenerationService) -> Self {
        let service = Arc::new(service);
        Self {
            generated: VideoGenerationServer::from_arc(service.clone()),
            service,
            accept: EnabledCompressionEncodings::default(),
            send: EnabledCompressionEncodings::default(),
            max_decoding: None,
        }
    }

    #[must_use]
    pub(crate) fn max_decoding_message_size(mut self, limit: usize) -> Self {
        self.generated = self.generated.max_decoding_message_size(limit);
        self.max_decoding = Some(limit);
        self
    }

    #[must_use]
    pub(crate) fn accept_compressed(mut self, encoding: CompressionEncoding) -> Self {
        self.generated = self.generated.accept_compressed(encoding);
        self.accept.enable(encoding);
        self
    }

    #[must_use]
    pub(crate) fn send_compressed(mut self, encoding: CompressionEncoding) -> Self {
        self.generated = self.generated.send_compressed(encoding);
        self.send.enable(encoding);
        self
    }
}

impl NamedService for VideoGenerationRoutes {
    const NAME: &'static str =
        <VideoGenerationServer<VideoGenerationService> as NamedService>::NAME;
}

impl<B> tower::Service<http::Request<B>> for VideoGenerationRoutes
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != WATCH_TASK {
            return self.generated.call(request);
        }
        let mut grpc = Grpc::new(SharedEncodingCodec)
            .apply_compression_config(self.accept, self.send)
            .apply_max_message_size_config(self.max_decoding, None);
        let method = WatchTask(self.service.clone());
        Box::pin(async move { Ok(grpc.server_streaming(method, request).await) })
    }
}

/// WatchTask's handler, its frames encoded (once per state change).
struct WatchTask(Arc<VideoGenerationService>);

type EncodedStream = Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, Status>> + Send>>;

impl ServerStreamingService<WatchTaskRequest> for WatchTask {
    type Response = Bytes;
    type ResponseStream = EncodedStream;
    type Future = BoxFuture<Result<Response<EncodedStream>, Status>>;

    fn call(&mut self, request: Request<WatchTaskRequest>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move {
            let response = service.watch(request).await?;
            Ok(response.map(|frames| -> EncodedStream {
                Box::pin(frames.map(|frame| frame.map(|frame| frame.encode())))
            }))
        })
    }
}

/// Requests decoded by prost as usual; answers are already encoded.
#[derive(Clone, Copy, Default)]
struct SharedEncodingCodec;

impl Codec for SharedEncodingCodec {
    type Encode = Bytes;
    type Decode = WatchTaskRequest;
    type Encoder = EncodedBytes;
    type Decoder = tonic_prost::ProstDecoder<WatchTaskRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        EncodedBytes
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::new(BufferSettings::default())
    }
}

/// Writes a message's bytes as they are.
struct EncodedBytes;

impl Encoder for EncodedBytes {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}
