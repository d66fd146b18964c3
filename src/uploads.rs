//! Callers' images uploaded to kie.ai's file storage, for UploadImage and
//! for CreateTask's image bytes: a bounded number at once (each holds its
//! image in memory), each under a random, unguessable name, since kie.ai
//! silently replaces a file uploaded again under the same path and name.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::UploadSettings;
use crate::image::{ImageData, ImageFormat};
use crate::kie::{Credential, Endpoint, FileUpload, KieClient, UpstreamError, UpstreamErrorKind};

/// How long an uploaded file is reported usable: kie.ai documents 3 days,
/// files have been reported gone after about 24 h; the shorter holds.
pub const UPLOAD_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Longest wait for a free upload slot when the caller set no shorter
/// deadline: past it the call is shed (a caller should retry, not queue).
const SLOT_WAIT: Duration = Duration::from_secs(10);
const SHED_RETRY: Duration = Duration::from_secs(1);

pub(crate) struct Uploader {
    kie: KieClient,
    path: String,
    slots: Arc<Semaphore>,
}

/// The right to hold one image in memory and upload it.
pub(crate) struct UploadSlot {
    _permit: OwnedSemaphorePermit,
}

/// A file at kie.ai, as UploadImage reports it.
#[derive(Clone, Debug)]
pub struct UploadedImage {
    pub url: String,
    pub size_bytes: usize,
    pub format: ImageFormat,
    pub expire_time: SystemTime,
}

impl Uploader {
    pub(crate) fn new(kie: KieClient, settings: &UploadSettings) -> Self {
        Self {
            kie,
            path: settings.path.clone(),
            slots: Arc::new(Semaphore::new(settings.max_concurrent.max(1))),
        }
    }

    /// Waits for an upload slot within the caller's deadline (and at most
    /// `SLOT_WAIT`); RESOURCE_EXHAUSTED with RetryInfo past it. Taken
    /// before a stream is read, so that at most `max_concurrent` images
    /// are held at once.
    pub(crate) async fn slot(
        &self,
        credential: &Credential,
        deadline: Option<Duration>,
    ) -> Result<UploadSlot, UpstreamError> {
        let wait = deadline.map_or(SLOT_WAIT, |d| d.min(SLOT_WAIT));
        match tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(UploadSlot { _permit: permit }),
            // The semaphore is never closed.
            Ok(Err(_)) | Err(_) => Err({
                self.kie
                    .metrics()
                    .shed(Endpoint::FileUpload.as_str(), "upload_slots");
                UpstreamError {
                    endpoint: Endpoint::FileUpload,
                    key_source: credential.source,
                    retry_after: Some(SHED_RETRY),
                    kind: UpstreamErrorKind::Shed {
                        reason: "upload_slots",
                    },
                }
            }),
        }
    }

    /// Uploads `image` under a fresh random name.
    pub(crate) async fn upload(
        &self,
        _slot: &UploadSlot,
        credential: &Credential,
        image: &ImageData,
        deadline: Option<Duration>,
    ) -> Result<UploadedImage, UpstreamError> {
        let format = image.format();
        let file_name = format!("{:032x}.{}", rand::random::<u128>(), format.extension());
        let upload = FileUpload {
            path: &self.path,
            file_name: &file_name,
            mime: format.mime_type(),
            file: image.bytes().clone(),
        };
        let url = self.kie.upload_file(credential, upload, deadline).await?;
        Ok(UploadedImage {
            url,
            size_bytes: image.bytes().len(),
            format,
            expire_time: SystemTime::now() + UPLOAD_LIFETIME,
        })
    }
}
