//! A `--image` / `--end-image` value: a URL, passed on as it is, or a local
//! file, whose bytes go in CreateTask's `image_data` / `end_image_data`.
//!
//! Bytes rather than an UploadImage call first: the gateway then uploads and
//! creates in the one CreateTask call, so `--request-id` covers the upload
//! too (a repeated command uploads once and creates once, and another image
//! under the same id is ALREADY_EXISTS), and there is no second round trip.

use std::fs::File;
use std::io::Read;

use bytes::Bytes;

use crate::image::MAX_IMAGE_BYTES;

/// One frame of a `generate` command.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Frame {
    Url(String),
    Bytes(Vec<u8>),
}

impl Frame {
    /// A value with a scheme (`https://...`, also `ftp://...`, which the
    /// gateway refuses with its own BadRequest) is a URL; anything else is a
    /// path. The file is read up to one byte past the limit, so a large file
    /// is refused here without being read whole or sent; its format is left
    /// to the gateway, which reads it from the content as for every caller.
    pub(super) fn read(flag: &str, value: &str) -> Result<Self, String> {
        if value.contains("://") {
            return Ok(Self::Url(value.to_string()));
        }
        let file = File::open(value).map_err(|e| format!("{flag} {value}: {e}"))?;
        let mut bytes = Vec::new();
        file.take(MAX_IMAGE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{flag} {value}: {e}"))?;
        if bytes.len() > MAX_IMAGE_BYTES {
            return Err(format!(
                "{flag} {value}: larger than {MAX_IMAGE_BYTES} bytes (10 MiB), the most kie.ai takes"
            ));
        }
        Ok(Self::Bytes(bytes))
    }

    /// The request's (url, data) pair for this frame.
    pub(super) fn into_fields(self) -> (String, Bytes) {
        match self {
            Self::Url(url) => (url, Bytes::new()),
            Self::Bytes(bytes) => (String::new(), bytes.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn temp_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!(
            "hailuo-cli-{}-{:x}-{name}",
            std::process::id(),
            rand::random::<u64>()
        ));
        File::create(&path)
            .and_then(|mut file| file.write_all(bytes))
            .expect("write a temporary file");
        path
    }

    #[test]
    fn a_value_with_a_scheme_is_a_url_even_one_the_gateway_refuses() {
        for url in ["https://example.com/cat.png", "ftp://example.com/cat.png"] {
            assert_eq!(Frame::read("--image", url), Ok(Frame::Url(url.into())));
        }
    }

    #[test]
    fn a_path_is_read_as_bytes() {
        let path = temp_file("first.png", b"\x89PNG\r\n\x1a\nrest");

        let frame = Frame::read("--image", path.to_str().expect("a UTF-8 temporary path"));

        std::fs::remove_file(&path).expect("remove the temporary file");
        assert_eq!(frame, Ok(Frame::Bytes(b"\x89PNG\r\n\x1a\nrest".to_vec())));
    }

    #[test]
    fn a_missing_file_names_the_flag_and_the_path() {
        let err = Frame::read("--end-image", "./no/such/last.png").expect_err("refused");

        assert!(err.starts_with("--end-image ./no/such/last.png: "), "{err}");
    }

    #[test]
    fn a_file_over_ten_mib_is_refused_before_sending() {
        let path = temp_file("big.png", &vec![0; MAX_IMAGE_BYTES + 1]);

        let err = Frame::read("--image", path.to_str().expect("a UTF-8 temporary path"))
            .expect_err("refused");

        std::fs::remove_file(&path).expect("remove the temporary file");
        assert!(err.contains("larger than 10485760 bytes"), "{err}");
    }
}
