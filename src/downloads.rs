//! Fresh download links for a finished task's videos: kie.ai's result URLs
//! typically stop working after 24 hours, its `download-url` gives a link
//! valid 20 minutes. Only URLs of a task the gateway read itself are asked
//! about, never one a caller supplies.

use std::time::{Duration, Instant, SystemTime};

use crate::error::GatewayError;
use crate::hub::TaskHub;
use crate::kie::{Credential, KieClient};
use crate::pb::{DownloadLink, TaskState};
use crate::task::TaskId;

/// kie.ai's documented lifetime of a fresh link.
pub const LINK_LIFETIME: Duration = Duration::from_secs(20 * 60);

pub(crate) async fn fresh_links(
    hub: &TaskHub,
    kie: &KieClient,
    credential: Credential,
    task_id: TaskId,
    deadline: Option<Duration>,
) -> Result<Vec<DownloadLink>, GatewayError> {
    let started = Instant::now();
    let task = hub.get(credential.clone(), task_id, deadline).await?;
    let state = task.state();
    if state != TaskState::Succeeded {
        return Err(GatewayError::TaskNotSucceeded { state });
    }
    let mut links = Vec::with_capacity(task.video_urls.len());
    for video_url in &task.video_urls {
        // Counted from before the ask: the link may be younger, never older.
        let asked = SystemTime::now();
        let left = deadline.map(|d| d.saturating_sub(started.elapsed()));
        let url = kie.fresh_link(&credential, video_url, left).await?;
        links.push(DownloadLink {
            url,
            expire_time: Some((asked + LINK_LIFETIME).into()),
            video_url: video_url.clone(),
        });
    }
    Ok(links)
}
