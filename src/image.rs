//! Image bytes a caller sends (UploadImage, CreateTask's image_data): the
//! format read from the content, never from a name or a declared type, and
//! kie.ai's size limit.

use std::fmt;

use bytes::Bytes;

/// kie.ai's limit for this model's images: 10 MB, read as 10 MiB.
pub const MAX_IMAGE_BYTES: usize = 10 * 1024 * 1024;

/// The formats kie.ai's model takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    Jpeg,
    Png,
    Webp,
}

impl ImageFormat {
    pub fn mime_type(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::Webp => "image/webp",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Jpeg => "jpg",
            Self::Png => "png",
            Self::Webp => "webp",
        }
    }
}

/// What the first bytes of a file say about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    Image(ImageFormat),
    NotAnImage,
    /// Too few bytes yet to tell.
    NeedMore,
}

/// Bytes needed to tell every accepted format (WebP's RIFF header).
const SNIFF_LEN: usize = 12;

/// The format by its magic bytes.
pub fn sniff(head: &[u8]) -> Sniffed {
    const JPEG: &[u8] = &[0xFF, 0xD8, 0xFF];
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
    let starts = |magic: &[u8]| {
        let n = head.len().min(magic.len());
        head[..n] == magic[..n]
    };
    if head.len() >= PNG.len() && head.starts_with(PNG) {
        return Sniffed::Image(ImageFormat::Png);
    }
    if head.len() >= JPEG.len() && head.starts_with(JPEG) {
        return Sniffed::Image(ImageFormat::Jpeg);
    }
    if head.len() >= SNIFF_LEN && head.starts_with(b"RIFF") && &head[8..12] == b"WEBP" {
        return Sniffed::Image(ImageFormat::Webp);
    }
    // A prefix of one of them may still become it.
    let webp_so_far = starts(b"RIFF") && (head.len() <= 8 || b"WEBP".starts_with(&head[8..]));
    if head.len() < SNIFF_LEN && (starts(PNG) || starts(JPEG) || webp_so_far) {
        return Sniffed::NeedMore;
    }
    Sniffed::NotAnImage
}

/// An image that passed the checks: at most `MAX_IMAGE_BYTES`, of a format
/// kie.ai takes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ImageData {
    bytes: Bytes,
    format: ImageFormat,
}

impl ImageData {
    /// The image, or why not; `field` names it in the description.
    pub fn parse(field: &str, bytes: Bytes) -> Result<Self, String> {
        if bytes.is_empty() {
            return Err(format!("{field} is empty"));
        }
        if bytes.len() > MAX_IMAGE_BYTES {
            return Err(too_large(field));
        }
        match sniff(&bytes) {
            Sniffed::Image(format) => Ok(Self { bytes, format }),
            Sniffed::NotAnImage | Sniffed::NeedMore => Err(not_an_image(field)),
        }
    }

    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn format(&self) -> ImageFormat {
        self.format
    }
}

/// Never the bytes themselves: an image in a log line would be megabytes.
impl fmt::Debug for ImageData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ImageData({:?}, {} bytes)",
            self.format,
            self.bytes.len()
        )
    }
}

pub fn too_large(field: &str) -> String {
    format!("{field} must be at most 10 MiB ({MAX_IMAGE_BYTES} bytes)")
}

pub fn not_an_image(field: &str) -> String {
    format!("{field} must be a JPEG, PNG or WebP image (read from its content)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_read_from_magic_bytes() {
        assert_eq!(
            sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"),
            Sniffed::Image(ImageFormat::Png)
        );
        assert_eq!(
            sniff(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10]),
            Sniffed::Image(ImageFormat::Jpeg)
        );
        assert_eq!(
            sniff(b"RIFF\x24\0\0\0WEBPVP8 "),
            Sniffed::Image(ImageFormat::Webp)
        );
        assert_eq!(sniff(b"RIFF\x24\0\0\0WAVEfmt "), Sniffed::NotAnImage);
        assert_eq!(sniff(b"GIF89a\0\0\0\0\0\0"), Sniffed::NotAnImage);
        assert_eq!(sniff(b"<svg xmlns"), Sniffed::NotAnImage);
        assert_eq!(sniff(b"\x89PN"), Sniffed::NeedMore);
        assert_eq!(sniff(b"RIFF\0\0\0\0WE"), Sniffed::NeedMore);
        assert_eq!(sniff(b""), Sniffed::NeedMore);
    }

    #[test]
    fn an_image_is_checked_for_size_and_format() {
        let png = |len: usize| {
            let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
            v.resize(len, 0);
            Bytes::from(v)
        };
        assert!(ImageData::parse("image_data", png(MAX_IMAGE_BYTES)).is_ok());
        assert!(ImageData::parse("image_data", png(MAX_IMAGE_BYTES + 1)).is_err());
        assert!(ImageData::parse("image_data", Bytes::new()).is_err());
        assert!(ImageData::parse("image_data", Bytes::from_static(b"\x89PN")).is_err());
    }
}
