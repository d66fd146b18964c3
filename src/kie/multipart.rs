//! The multipart/form-data body of kie.ai's file-stream upload, streamed
//! from the caller's buffer: the image is never copied into the body.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// A body of fixed parts, sent in order; its length is known up front.
pub struct Multipart {
    parts: VecDeque<Bytes>,
    boundary: String,
    len: u64,
}

impl Multipart {
    /// The form kie.ai documents: `uploadPath`, `fileName`, then `file`.
    pub fn upload(upload_path: &str, file_name: &str, mime: &str, file: Bytes) -> Self {
        // Random, so that it cannot occur in the image by design.
        let boundary = format!("hailuo-gateway-{:032x}", rand::random::<u128>());
        let text = |name: &str, value: &str| {
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
        };
        let head = format!(
            "{}{}--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
             filename=\"{file_name}\"\r\nContent-Type: {mime}\r\n\r\n",
            text("uploadPath", upload_path),
            text("fileName", file_name),
        );
        let tail = format!("\r\n--{boundary}--\r\n");
        let parts = VecDeque::from([Bytes::from(head), file, Bytes::from(tail)]);
        let len = parts.iter().map(|p| p.len() as u64).sum();
        Self {
            parts,
            boundary,
            len,
        }
    }

    pub fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }

    pub fn content_length(&self) -> u64 {
        self.len
    }
}

impl Body for Multipart {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.parts.pop_front().map(|part| Ok(Frame::data(part))))
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.parts.iter().map(|p| p.len() as u64).sum())
    }
}
