//! An UploadImage request stream read into one image, refused as soon as it
//! is known to be bad (past the size limit, or not an image by its first
//! bytes) without reading the rest.

use tonic::Streaming;

use super::message_size::request_stream_failed;
use crate::error::GatewayError;
use crate::image::{ImageData, MAX_IMAGE_BYTES, Sniffed, not_an_image, sniff, too_large};
use crate::pb::upload_image_request::Content;
use crate::pb::{UploadImageMetadata, UploadImageRequest};
use crate::task::FieldViolation;

/// Longest file name or content type accepted in the metadata.
const MAX_METADATA_CHARS: usize = 255;

pub(super) async fn read_image(
    mut stream: Streaming<UploadImageRequest>,
) -> Result<ImageData, GatewayError> {
    // Grown by hand, never past the limit: Vec's doubling would hold up to
    // twice the image.
    let mut image: Vec<u8> = Vec::new();
    let mut first = true;
    let mut recognised = false;
    while let Some(message) = stream
        .message()
        .await
        .map_err(|status| request_stream_failed(&status))?
    {
        match message.content {
            Some(Content::Metadata(metadata)) if first => check_metadata(&metadata)?,
            Some(Content::Metadata(_)) => {
                return Err(invalid(
                    "metadata",
                    "only the first message may carry metadata".into(),
                ));
            }
            Some(Content::Chunk(chunk)) => {
                let len = image.len() + chunk.len();
                if len > MAX_IMAGE_BYTES {
                    return Err(invalid("chunk", too_large("the image")));
                }
                if len > image.capacity() {
                    let capacity = (image.capacity() * 2).clamp(len, MAX_IMAGE_BYTES);
                    image.reserve_exact(capacity - image.len());
                }
                image.extend_from_slice(&chunk);
                if !recognised {
                    match sniff(&image) {
                        Sniffed::Image(_) => recognised = true,
                        Sniffed::NotAnImage => {
                            return Err(invalid("chunk", not_an_image("the image")));
                        }
                        Sniffed::NeedMore => {}
                    }
                }
            }
            None => {}
        }
        first = false;
    }
    if image.is_empty() {
        return Err(invalid("chunk", "no image bytes were sent".into()));
    }
    ImageData::parse("the image", image.into()).map_err(|why| invalid("chunk", why))
}

fn check_metadata(metadata: &UploadImageMetadata) -> Result<(), GatewayError> {
    let mut bad = Vec::new();
    for (field, value) in [
        ("metadata.file_name", &metadata.file_name),
        ("metadata.content_type", &metadata.content_type),
    ] {
        if value.chars().take(MAX_METADATA_CHARS + 1).count() > MAX_METADATA_CHARS {
            bad.push(FieldViolation::new(
                field,
                format!("{field} must be at most {MAX_METADATA_CHARS} characters"),
            ));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(GatewayError::InvalidArgument(bad))
    }
}

fn invalid(field: &'static str, description: String) -> GatewayError {
    GatewayError::InvalidArgument(vec![FieldViolation::new(field, description)])
}
