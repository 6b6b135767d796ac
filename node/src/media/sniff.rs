//! An upload's media type, named from its first bytes rather than taken from the uploader,
//! since the type decides how browsers treat the file when it is downloaded (an image inline,
//! anything else as an attachment).
//!
//! The rules ([`media_type`]): when the bytes' magic number is known (infer's table), that is
//! the type, and a declared `Content-Type` that disagrees with it is refused when either of the
//! two is an image (a JPEG sent as `image/png`, a PDF sent as `image/png`, an image sent as a
//! document), so that nothing ends up shown inline as something it is not. When the bytes are
//! not recognised, a declared image type is refused (the four image types all have magic
//! numbers), a declared `text/*` becomes `text/plain` if the first block is UTF-8, and
//! anything else is `application/octet-stream`. A declared `application/octet-stream`, or none,
//! says nothing.

/// How many of the first bytes are looked at (and held before anything is written).
pub const SNIFF_BYTES: usize = 8 * 1024;

/// The image types the node decodes, makes thumbnails of and serves inline.
pub const IMAGE_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

/// Why an upload's bytes and its declared type cannot be reconciled (415 `type_mismatch`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypeRefused {
    #[error("the file is {found}, not the declared {declared}")]
    Mismatch { declared: String, found: String },
    #[error("the file is declared {declared}, but its bytes are not an image of a known type")]
    NotAnImage { declared: String },
}

/// The type of an upload whose first bytes are `first` (the whole file when it is shorter than
/// [`SNIFF_BYTES`]; `complete` says whether it is), given the `Content-Type` it was declared
/// with, if any.
pub fn media_type(first: &[u8], complete: bool, declared: Option<&str>) -> Result<String, TypeRefused> {
    let declared = declared.map(essence).filter(|essence| !essence.is_empty() && essence != "application/octet-stream");
    let declared_image = declared.as_deref().is_some_and(|d| d.starts_with("image/"));
    match infer::get(first) {
        Some(kind) => {
            let found = kind.mime_type();
            match declared {
                Some(declared) if declared != found && (declared_image || found.starts_with("image/")) => {
                    Err(TypeRefused::Mismatch { declared, found: found.to_string() })
                }
                _ => Ok(found.to_string()),
            }
        }
        None if declared_image => Err(TypeRefused::NotAnImage { declared: declared.unwrap_or_default() }),
        None if declared.as_deref().is_some_and(|d| d.starts_with("text/")) && utf8(first, complete) => {
            Ok("text/plain".to_string())
        }
        None => Ok("application/octet-stream".to_string()),
    }
}

/// Whether the type is one the node decodes and shows inline.
pub fn is_image(content_type: &str) -> bool {
    IMAGE_TYPES.contains(&content_type)
}

/// A `Content-Type`'s type and subtype, lower case, without parameters; the aliases some
/// clients send are named as the sniffer names them.
fn essence(content_type: &str) -> String {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match essence.as_str() {
        "image/jpg" | "image/pjpeg" => "image/jpeg".into(),
        "image/x-png" => "image/png".into(),
        _ => essence,
    }
}

/// Whether `block` is UTF-8; when it is only the start of the file, a character cut off at its
/// end does not count against it.
fn utf8(block: &[u8], complete: bool) -> bool {
    match std::str::from_utf8(block) {
        Ok(_) => true,
        // `error_len` is `None` when the input ends inside a character.
        Err(err) => !complete && err.error_len().is_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0";
    const JPEG: &[u8] = b"\xFF\xD8\xFF\xE0\0\x10JFIF\0\x01\x01\0\0\x01\0\x01\0\0";
    const PDF: &[u8] = b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n1 0 obj\n";

    #[test]
    fn known_bytes_name_the_type_whatever_is_declared_about_non_images() {
        assert_eq!(media_type(PNG, true, None).unwrap(), "image/png");
        assert_eq!(media_type(PNG, true, Some("application/octet-stream")).unwrap(), "image/png");
        assert_eq!(media_type(JPEG, true, Some("image/jpeg; charset=binary")).unwrap(), "image/jpeg");
        assert_eq!(media_type(JPEG, true, Some("IMAGE/JPG")).unwrap(), "image/jpeg");
        assert_eq!(media_type(PDF, true, Some("application/pdf")).unwrap(), "application/pdf");
        // Neither side an image: the bytes win.
        assert_eq!(media_type(PDF, true, Some("text/plain")).unwrap(), "application/pdf");
    }

    #[test]
    fn a_lying_type_is_refused_when_an_image_is_involved() {
        assert_eq!(
            media_type(JPEG, true, Some("image/png")),
            Err(TypeRefused::Mismatch { declared: "image/png".into(), found: "image/jpeg".into() })
        );
        assert!(matches!(media_type(PDF, true, Some("image/png")), Err(TypeRefused::Mismatch { .. })));
        assert!(matches!(media_type(PNG, true, Some("application/pdf")), Err(TypeRefused::Mismatch { .. })));
        assert!(matches!(media_type(b"just text", true, Some("image/gif")), Err(TypeRefused::NotAnImage { .. })));
    }

    #[test]
    fn unknown_bytes_are_text_or_octets() {
        assert_eq!(media_type("héllo".as_bytes(), true, Some("text/markdown")).unwrap(), "text/plain");
        assert_eq!(media_type(b"hello", true, None).unwrap(), "application/octet-stream");
        assert_eq!(media_type(b"hello", true, Some("application/json")).unwrap(), "application/octet-stream");
        assert_eq!(media_type(b"\xFF\xFEhi\x00\xC3", true, Some("text/plain")).unwrap(), "application/octet-stream");
        // A block cut inside a character is still text; a whole file ending so is not.
        let cut = &"abcé".as_bytes()[..4];
        assert_eq!(media_type(cut, false, Some("text/plain")).unwrap(), "text/plain");
        assert_eq!(media_type(cut, true, Some("text/plain")).unwrap(), "application/octet-stream");
    }

    #[test]
    fn the_image_types() {
        assert!(is_image("image/webp") && is_image("image/gif"));
        assert!(!is_image("image/svg+xml") && !is_image("image/tiff") && !is_image("text/plain"));
    }
}
