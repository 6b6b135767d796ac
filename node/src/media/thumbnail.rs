//! Checking an uploaded image and making its thumbnail: the image's size is read from its
//! header first, and an image of more than `media.max_image_pixels` pixels is refused before
//! anything is decoded (a decompression bomb: a small file that would decode to gigabytes);
//! the decoder's allocations are bounded too (`image::Limits::max_alloc`). Then the image is
//! decoded (a corrupt one is refused), scaled down to fit `media.thumbnail_max_px` (never up),
//! turned as its EXIF orientation says, and encoded as JPEG (quality 80), or as PNG when it has
//! transparent pixels.
//!
//! [`examine`] is CPU work: the upload runs it on the blocking pool, under the media service's
//! semaphore (`media.thumbnail_concurrency`), which bounds the memory images take.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits};

/// JPEG quality of thumbnails: small files, no visible blocks at thumbnail size.
const JPEG_QUALITY: u8 = 80;

/// Bytes a decoder may hold besides the pixels (tables, a GIF's palette, a row buffer).
const ALLOC_SLACK_BYTES: u64 = 16 * 1024 * 1024;

/// What an image upload turned out to be.
#[derive(Debug)]
pub struct ImageFacts {
    /// The image's size as shown, its EXIF orientation applied.
    pub width: u32,
    pub height: u32,
    pub thumbnail: Thumbnail,
}

/// An encoded thumbnail.
#[derive(Debug)]
pub struct Thumbnail {
    pub bytes: Vec<u8>,
    /// `image/jpeg` or `image/png`.
    pub content_type: &'static str,
    pub width: u32,
    pub height: u32,
}

/// Why an image upload is refused (422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefused {
    /// `image_too_large`: more pixels than allowed, or more memory than they may take.
    #[error("the image is {width}×{height} pixels; at most {max} pixels are accepted")]
    TooLarge { width: u32, height: u32, max: u64 },
    /// `invalid_image`: its bytes do not decode.
    #[error("the image cannot be decoded: {0}")]
    Invalid(String),
}

/// Check the image `bytes` of type `content_type` (one of [`super::sniff::IMAGE_TYPES`]) and
/// make its thumbnail, fitting a square of `thumbnail_max_px`.
pub fn examine(
    bytes: &[u8],
    content_type: &str,
    max_pixels: u64,
    thumbnail_max_px: u32,
) -> Result<ImageFacts, ImageRefused> {
    let format = match content_type {
        "image/png" => ImageFormat::Png,
        "image/jpeg" => ImageFormat::Jpeg,
        "image/gif" => ImageFormat::Gif,
        "image/webp" => ImageFormat::WebP,
        other => return Err(ImageRefused::Invalid(format!("{other} is not an image type the node decodes"))),
    };
    let max_alloc = max_pixels.saturating_mul(8).saturating_add(ALLOC_SLACK_BYTES);
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_alloc);
    let too_large = |(width, height)| ImageRefused::TooLarge { width, height, max: max_pixels };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits);
    // Reads the header only.
    let mut decoder = reader.into_decoder().map_err(|err| refusal(err, (0, 0), max_pixels))?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > max_pixels || decoder.total_bytes() > max_alloc {
        return Err(too_large((width, height)));
    }
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let image = DynamicImage::from_decoder(decoder).map_err(|err| refusal(err, (width, height), max_pixels))?;
    let (thumb_width, thumb_height) = fit(width, height, thumbnail_max_px);
    let mut thumb = match (thumb_width, thumb_height) == (width, height) {
        true => image,
        false => image.thumbnail_exact(thumb_width, thumb_height),
    };
    // Turned after scaling: turning the whole image would cost a second copy of its pixels.
    thumb.apply_orientation(orientation);
    let (width, height) = match orientation {
        Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH => {
            (height, width)
        }
        _ => (width, height),
    };
    let thumbnail = encode(&thumb).map_err(|err| ImageRefused::Invalid(err.to_string()))?;
    Ok(ImageFacts { width, height, thumbnail })
}

/// The size of a thumbnail of a `width`×`height` image fitting a square of `max` pixels,
/// aspect ratio kept, never larger than the image, at least 1×1.
pub fn fit(width: u32, height: u32, max: u32) -> (u32, u32) {
    let longest = width.max(height);
    if longest <= max {
        return (width.max(1), height.max(1));
    }
    let scale = |side: u32| ((u64::from(side) * u64::from(max) + u64::from(longest) / 2) / u64::from(longest)) as u32;
    (scale(width).max(1), scale(height).max(1))
}

/// PNG when any pixel is not opaque, JPEG otherwise.
fn encode(thumb: &DynamicImage) -> Result<Thumbnail, ImageError> {
    let (width, height) = (thumb.width(), thumb.height());
    let mut bytes = Vec::new();
    let transparent = thumb.color().has_alpha() && thumb.to_rgba8().pixels().any(|pixel| pixel.0[3] < u8::MAX);
    let content_type = if transparent {
        thumb.to_rgba8().write_with_encoder(PngEncoder::new(&mut bytes))?;
        "image/png"
    } else {
        thumb.to_rgb8().write_with_encoder(JpegEncoder::new_with_quality(&mut bytes, JPEG_QUALITY))?;
        "image/jpeg"
    };
    Ok(Thumbnail { bytes, content_type, width, height })
}

/// A decoder's error as a refusal: its limits are the image being too large.
fn refusal(err: ImageError, (width, height): (u32, u32), max: u64) -> ImageRefused {
    match err {
        ImageError::Limits(_) => ImageRefused::TooLarge { width, height, max },
        err => ImageRefused::Invalid(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use image::{ImageBuffer, Rgb, RgbImage, Rgba, RgbaImage};

    use super::*;

    fn png(image: DynamicImage) -> Vec<u8> {
        let mut bytes = Vec::new();
        image.write_to(Cursor::new(&mut bytes), ImageFormat::Png).unwrap();
        bytes
    }

    /// A PNG chunk with its length and CRC.
    fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let mut crc = !0u32;
        for &byte in kind.iter().chain(data) {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        out.extend_from_slice(&(!crc).to_be_bytes());
        out
    }

    #[test]
    fn a_thumbnail_fits_the_box_and_keeps_the_aspect_ratio() {
        let image: RgbImage = ImageBuffer::from_fn(640, 480, |x, y| Rgb([(x % 256) as u8, (y % 256) as u8, 90]));
        let facts = examine(&png(image.into()), "image/png", 50_000_000, 320).unwrap();
        assert_eq!((facts.width, facts.height), (640, 480));
        let thumb = &facts.thumbnail;
        assert_eq!((thumb.width, thumb.height, thumb.content_type), (320, 240, "image/jpeg"));
        let decoded = image::load_from_memory_with_format(&thumb.bytes, ImageFormat::Jpeg).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (320, 240));
    }

    #[test]
    fn transparent_images_get_png_thumbnails_and_small_ones_keep_their_size() {
        let image: RgbaImage = ImageBuffer::from_fn(40, 10, |x, _| Rgba([200, 10, 10, if x < 20 { 0 } else { 255 }]));
        let facts = examine(&png(image.into()), "image/png", 50_000_000, 320).unwrap();
        assert_eq!((facts.thumbnail.width, facts.thumbnail.height), (40, 10));
        assert_eq!(facts.thumbnail.content_type, "image/png");
        assert!(facts.thumbnail.bytes.starts_with(b"\x89PNG"));
        // An alpha channel with every pixel opaque is a JPEG.
        let opaque: RgbaImage = ImageBuffer::from_pixel(30, 30, Rgba([1, 2, 3, 255]));
        assert_eq!(examine(&png(opaque.into()), "image/png", 1_000, 320).unwrap().thumbnail.content_type, "image/jpeg");
    }

    #[test]
    fn fitting() {
        assert_eq!(fit(1000, 10, 320), (320, 3));
        assert_eq!(fit(10, 100_000, 320), (1, 320));
        assert_eq!(fit(320, 320, 320), (320, 320));
        assert_eq!(fit(100, 50, 320), (100, 50));
    }

    #[test]
    fn a_decompression_bomb_is_refused_from_its_header() {
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
        let mut bomb = b"\x89PNG\r\n\x1a\n".to_vec();
        bomb.extend(chunk(b"IHDR", &ihdr));
        // A zlib stream of a few zero bytes: what little a bomb carries.
        bomb.extend(chunk(b"IDAT", &[0x78, 0x9C, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01]));
        bomb.extend(chunk(b"IEND", &[]));
        assert_eq!(
            examine(&bomb, "image/png", 50_000_000, 320).unwrap_err(),
            ImageRefused::TooLarge { width: 100_000, height: 100_000, max: 50_000_000 }
        );
        // Within the pixel count, the count itself is the limit.
        let image: RgbImage = ImageBuffer::from_pixel(100, 100, Rgb([0, 0, 0]));
        assert!(matches!(examine(&png(image.into()), "image/png", 9_999, 320), Err(ImageRefused::TooLarge { .. })));
    }

    #[test]
    fn a_corrupt_image_is_refused() {
        let image: RgbImage = ImageBuffer::from_pixel(64, 64, Rgb([9, 9, 9]));
        let mut bytes = png(image.into());
        // Keep the header, spoil the pixel data.
        let half = bytes.len() / 2;
        bytes.truncate(half);
        bytes.extend_from_slice(&[0x55; 64]);
        assert!(matches!(examine(&bytes, "image/png", 50_000_000, 320), Err(ImageRefused::Invalid(_))));
        // Everything after the header garbage (chunk lengths included).
        let mut garbage = png(DynamicImage::ImageRgb8(ImageBuffer::from_pixel(64, 64, Rgb([9, 9, 9]))));
        for (i, byte) in garbage.iter_mut().enumerate().skip(33) {
            *byte = (i * 7 % 251) as u8;
        }
        assert!(matches!(examine(&garbage, "image/png", 50_000_000, 320), Err(ImageRefused::Invalid(_))));
        assert!(matches!(
            examine(b"\xFF\xD8\xFF\xE0 not really a jpeg", "image/jpeg", 50_000_000, 320),
            Err(ImageRefused::Invalid(_))
        ));
        assert!(matches!(examine(b"GIF89a", "image/gif", 50_000_000, 320), Err(ImageRefused::Invalid(_))));
    }
}
