//! The upload host's storage: files kept in memory by path, each served
//! until its retention passes. Like kie.ai, a second upload to the same
//! path and name replaces the first without a word.

use std::collections::HashMap;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::config::FileSettings;

/// kie.ai's limit for a Hailuo image (`input.image_url`, `end_image_url`).
/// Taken as 10 MiB, the more lenient reading of "10 MB".
pub const IMAGE_MAX_BYTES: u64 = 10 * 1024 * 1024;

/// The image types Hailuo takes, by content.
pub const IMAGE_TYPES: [&str; 3] = ["image/jpeg", "image/png", "image/webp"];

/// One stored file.
#[derive(Clone, Debug)]
pub struct StoredFile {
    pub bytes: Bytes,
    pub mime_type: String,
    expires: Instant,
    /// Upload order, to evict the oldest first.
    seq: u64,
}

/// Where an upload lands: `{account}/{uploadPath}/{fileName}`, the key the
/// storage route serves it under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileKey {
    pub account: String,
    pub upload_path: String,
    pub file_name: String,
}

impl FileKey {
    /// `data.filePath` as kie.ai shows it: without the account.
    pub fn file_path(&self) -> String {
        format!("{}/{}", self.upload_path, self.file_name)
    }

    fn storage_path(&self) -> String {
        format!("{}/{}", self.account, self.file_path())
    }

    /// `data.downloadUrl`: the storage route on the upload host, each segment
    /// percent-encoded.
    pub fn download_url(&self, upload_base_url: &url::Url) -> String {
        let mut url = upload_base_url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments
                .pop_if_empty()
                .push("files")
                .push(&self.account)
                .extend(self.upload_path.split('/'))
                .push(&self.file_name);
        }
        url.to_string()
    }
}

/// The storage path a URL on this upload host names (decoded, as the
/// storage route reads it); `None` for any other URL.
pub fn storage_path(upload_base_url: &url::Url, url: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    let same_host = url.scheme() == upload_base_url.scheme()
        && url.host() == upload_base_url.host()
        && url.port_or_known_default() == upload_base_url.port_or_known_default();
    if !same_host {
        return None;
    }
    let mut segments = url.path_segments()?;
    if segments.next() != Some("files") {
        return None;
    }
    let decoded: Vec<String> = segments
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    Some(decoded.join("/"))
}

/// The storage segment for a key, like the opaque prefix of kie.ai's
/// `tempfile.redpandaai.co/xxx/...` URLs: each key's files apart, and the key
/// itself nowhere in a URL.
pub fn account_of(key: &str) -> String {
    let digest = Sha256::digest(format!("kie-simulator-files:{key}").as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// What a stored file can be used for as a Hailuo input image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageCheck {
    Usable,
    /// Not stored, or past its retention.
    Missing,
    NotAnImage,
    TooLarge,
}

#[derive(Default)]
pub struct FileStore {
    files: HashMap<String, StoredFile>,
    total_bytes: u64,
    next_seq: u64,
}

impl FileStore {
    /// Stores (or replaces) a file; drops expired files, then the oldest,
    /// until the new one fits in `settings.storage_bytes`.
    pub fn put(&mut self, key: &FileKey, bytes: Bytes, mime_type: String, settings: &FileSettings) {
        let now = Instant::now();
        self.remove(&key.storage_path());
        self.files.retain(|_, f| f.expires > now);
        self.total_bytes = self.files.values().map(|f| len(&f.bytes)).sum();
        while self.total_bytes + len(&bytes) > settings.storage_bytes {
            let Some(oldest) = self
                .files
                .iter()
                .min_by_key(|(_, f)| f.seq)
                .map(|(path, _)| path.clone())
            else {
                break;
            };
            self.remove(&oldest);
        }
        self.next_seq += 1;
        self.total_bytes += len(&bytes);
        self.files.insert(
            key.storage_path(),
            StoredFile {
                bytes,
                mime_type,
                expires: now + settings.retention,
                seq: self.next_seq,
            },
        );
    }

    /// The file at a storage path (`{account}/{uploadPath}/{fileName}`,
    /// decoded), unless it has expired.
    pub fn get(&self, storage_path: &str) -> Option<StoredFile> {
        self.files
            .get(storage_path)
            .filter(|f| f.expires > Instant::now())
            .cloned()
    }

    /// Whether a storage path holds a usable Hailuo input image.
    pub fn check_image(&self, storage_path: &str) -> ImageCheck {
        match self.get(storage_path) {
            None => ImageCheck::Missing,
            Some(f) if !IMAGE_TYPES.contains(&f.mime_type.as_str()) => ImageCheck::NotAnImage,
            Some(f) if len(&f.bytes) > IMAGE_MAX_BYTES => ImageCheck::TooLarge,
            Some(_) => ImageCheck::Usable,
        }
    }

    pub fn clear(&mut self) {
        self.files.clear();
        self.total_bytes = 0;
    }

    fn remove(&mut self, storage_path: &str) {
        if let Some(old) = self.files.remove(storage_path) {
            self.total_bytes -= len(&old.bytes);
        }
    }
}

fn len(bytes: &Bytes) -> u64 {
    u64::try_from(bytes.len()).unwrap_or(u64::MAX)
}

/// The MIME type of a file by its first bytes (the formats a caller of this
/// API sends), else by its name, else `fallback`, else
/// `application/octet-stream`.
pub fn mime_type(bytes: &[u8], file_name: &str, fallback: Option<&str>) -> String {
    let by_content = if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if bytes.len() >= 8 && &bytes[4..8] == b"ftyp" {
        Some("video/mp4")
    } else {
        None
    };
    let extension = file_name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase());
    let by_name = match extension.as_deref() {
        Some("jpg" | "jpeg") => Some("image/jpeg"),
        Some("png") => Some("image/png"),
        Some("webp") => Some("image/webp"),
        Some("gif") => Some("image/gif"),
        Some("mp4") => Some("video/mp4"),
        Some("txt") => Some("text/plain"),
        Some("json") => Some("application/json"),
        _ => None,
    };
    by_content
        .or(by_name)
        .or(fallback.filter(|f| !f.trim().is_empty()))
        .unwrap_or("application/octet-stream")
        .to_owned()
}

/// A random name for an upload that gave none, with the extension of its type.
pub fn random_name(mime_type: &str) -> String {
    let extension = match mime_type {
        "image/jpeg" => "jpg",
        "image/png" => "png",
        "image/webp" => "webp",
        "image/gif" => "gif",
        "video/mp4" => "mp4",
        "text/plain" => "txt",
        _ => "bin",
    };
    format!("{:032x}.{extension}", rand::random::<u128>())
}

/// kie.ai's rule for `uploadPath`: required, no leading or trailing slash.
/// The simulator also refuses empty, `.` and `..` segments, which no storage
/// path can hold.
pub fn check_upload_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("uploadPath is required");
    }
    if path.starts_with('/') || path.ends_with('/') {
        return Err("uploadPath must not start or end with a slash");
    }
    if path.contains('\\')
        || path
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err("uploadPath must be segments separated by single slashes");
    }
    Ok(())
}

/// A file name is one path segment.
pub fn check_file_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\']) {
        return Err("fileName must be a file name, without slashes");
    }
    if name.len() > 255 {
        return Err("fileName must be at most 255 bytes");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> FileKey {
        FileKey {
            account: "acct".into(),
            upload_path: "images/in".into(),
            file_name: name.into(),
        }
    }

    #[test]
    fn types_come_from_content_first() {
        assert_eq!(
            mime_type(b"\x89PNG\r\n\x1a\n....", "x.jpg", None),
            "image/png"
        );
        assert_eq!(
            mime_type(&[0xFF, 0xD8, 0xFF, 0xE0], "x", None),
            "image/jpeg"
        );
        assert_eq!(mime_type(b"RIFF\0\0\0\0WEBPVP8 ", "x", None), "image/webp");
        assert_eq!(mime_type(b"hello", "notes.txt", None), "text/plain");
        assert_eq!(mime_type(b"hello", "x", Some("text/csv")), "text/csv");
        assert_eq!(mime_type(b"hello", "x", None), "application/octet-stream");
    }

    #[test]
    fn paths_and_names_follow_kies_rules() {
        assert!(check_upload_path("images/user-uploads").is_ok());
        for bad in ["", "/images", "images/", "a//b", "a/../b", "a\\b"] {
            assert!(check_upload_path(bad).is_err(), "{bad}");
        }
        assert!(check_file_name("cat 1.png").is_ok());
        for bad in ["", "..", "a/b.png", &"x".repeat(256)] {
            assert!(check_file_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn download_urls_encode_each_segment() {
        let key = FileKey {
            file_name: "my cat?.png".into(),
            ..key("")
        };
        assert_eq!(
            key.download_url(&url::Url::parse("http://127.0.0.1:9").expect("a URL")),
            "http://127.0.0.1:9/files/acct/images/in/my%20cat%3F.png"
        );
        assert_eq!(key.file_path(), "images/in/my cat?.png");
        let base = url::Url::parse("http://127.0.0.1:9").expect("a URL");
        let url = key.download_url(&base);
        assert_eq!(
            storage_path(&base, &url).as_deref(),
            Some("acct/images/in/my cat?.png")
        );
        assert_eq!(storage_path(&base, "http://127.0.0.1:10/files/a/b/c"), None);
        assert_eq!(storage_path(&base, "http://127.0.0.1:9/sim/a"), None);
    }

    #[test]
    fn the_oldest_file_makes_room_and_a_reused_name_replaces() {
        let settings = FileSettings {
            storage_bytes: 10,
            ..FileSettings::default()
        };
        let mut store = FileStore::default();
        store.put(
            &key("a"),
            Bytes::from_static(b"12345"),
            "x".into(),
            &settings,
        );
        store.put(
            &key("b"),
            Bytes::from_static(b"12345"),
            "x".into(),
            &settings,
        );
        store.put(
            &key("b"),
            Bytes::from_static(b"1234"),
            "x".into(),
            &settings,
        );
        assert!(
            store.get("acct/images/in/a").is_some(),
            "a replaced b, nothing evicted"
        );
        assert_eq!(store.total_bytes, 9);
        store.put(&key("c"), Bytes::from_static(b"123"), "x".into(), &settings);
        assert!(store.get("acct/images/in/a").is_none(), "the oldest went");
        assert_eq!(store.total_bytes, 7);
    }
}
