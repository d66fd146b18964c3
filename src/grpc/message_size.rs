//! The request message size limit, and tonic's refusals of a message above
//! it as the gateway answers them.

use tonic::{Code, Status};

use crate::error::GatewayError;
use crate::image::MAX_IMAGE_BYTES;

/// Largest request message accepted: a CreateTask with two images of
/// `MAX_IMAGE_BYTES` and the rest of its fields. A larger one is refused
/// before it is read, RESOURCE_EXHAUSTED (`too_large`).
pub(crate) const MAX_MESSAGE_SIZE: usize = 2 * MAX_IMAGE_BYTES + 1024 * 1024;

/// While it reads a request, tonic answers OUT_OF_RANGE only for a message
/// above `MAX_MESSAGE_SIZE` (its other OUT_OF_RANGE is for our own answers)
/// and RESOURCE_EXHAUSTED only for one that decompresses past it: both
/// become our RESOURCE_EXHAUSTED, with details.
pub(super) fn too_large(status: &Status) -> Option<GatewayError> {
    matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted).then_some(
        GatewayError::MessageTooLarge {
            limit: MAX_MESSAGE_SIZE,
        },
    )
}

/// The error of a request stream that failed to give its next message.
pub(super) fn request_stream_failed(status: &Status) -> GatewayError {
    too_large(status).unwrap_or_else(|| GatewayError::RequestStream {
        code: status.code(),
        message: status.message().to_owned(),
    })
}
