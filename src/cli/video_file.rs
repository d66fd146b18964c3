//! Saving a video from a download link to a file, with a progress bar on
//! stderr when it is a terminal.
//!
//! The bytes go to a `.part` file beside the target, renamed over it only
//! once the whole body has arrived: an interrupted download never leaves a
//! truncated video under the name asked for.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest silence while the body arrives; the whole download has no
/// deadline, since a video's size is not known in advance.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Downloads `url` into `path` and returns the number of bytes saved.
pub(super) async fn save(url: &str, path: &Path) -> Result<u64, String> {
    let client = crate::http_client::builder()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .build()
        .map_err(|e| format!("cannot set up an HTTP client: {e}"))?;
    // The link is a bearer URL for 20 minutes: errors leave it out.
    let failed = |e: reqwest::Error| format!("downloading the video: {}", e.without_url());
    let mut response = client.get(url).send().await.map_err(failed)?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("downloading the video: HTTP {status}"));
    }
    let part = part_path(path);
    let mut file =
        File::create(&part).map_err(|e| format!("cannot create {}: {e}", part.display()))?;
    let bar = progress_bar(response.content_length());
    let copied: Result<u64, String> = async {
        let mut written = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            file.write_all(&chunk)
                .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
            written += chunk.len() as u64;
            bar.set_position(written);
        }
        file.sync_all()
            .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
        Ok(written)
    }
    .await;
    bar.finish_and_clear();
    let renamed = copied.and_then(|written| {
        std::fs::rename(&part, path).map(|()| written).map_err(|e| {
            format!(
                "cannot rename {} to {}: {e}",
                part.display(),
                path.display()
            )
        })
    });
    if renamed.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    renamed
}

/// `dir/.name.part` for `dir/name`.
fn part_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "video".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.part"))
}

/// A byte bar when the size is known, else a byte counter; drawn only on a
/// terminal (indicatif hides it otherwise).
fn progress_bar(length: Option<u64>) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(length, ProgressDrawTarget::stderr());
    let template = if length.is_some() {
        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}"
    } else {
        "{spinner} {bytes} {bytes_per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_part_file_is_a_hidden_sibling() {
        assert_eq!(
            part_path(Path::new("out/video.mp4")),
            PathBuf::from("out/.video.mp4.part")
        );
        assert_eq!(
            part_path(Path::new("video.mp4")),
            PathBuf::from(".video.mp4.part")
        );
    }
}
