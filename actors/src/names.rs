//! Naming rules and identifiers: which user names, room names and client message ids are valid,
//! how room ids are made, and the clock.
//!
//! The rules are strict on purpose: user names appear in room ids of direct conversations
//! (`dm:alice:bob`) and in store keys, so they exclude `:` and anything that needs escaping.

use rand::RngExt;

/// Longest user name, in bytes (all allowed characters are ASCII).
pub const MAX_USER_NAME_BYTES: usize = 32;
/// Longest room display name, in characters.
pub const MAX_ROOM_NAME_CHARS: usize = 64;
/// Longest client message id, in bytes. Long enough for a UUID with a prefix.
pub const MAX_MESSAGE_ID_BYTES: usize = 64;
/// Longest room id a client may name (generated ids are 14 bytes, direct ones at most 68).
pub const MAX_ROOM_ID_BYTES: usize = 80;

/// Longest reaction, in UTF-8 bytes: an emoji sequence (a family of four with skin tones is
/// about 40) or a short word.
pub const REACTION_MAX_BYTES: usize = 64;

/// Reactions: 1 to [`REACTION_MAX_BYTES`] bytes of visible characters without spaces (an emoji,
/// or a short word like `+1`). The zero-width joiner that glues emoji sequences is allowed; other
/// invisible characters are not, so two reactions that look the same are the same.
pub fn validate_reaction(reaction: &str) -> Result<(), String> {
    if reaction.is_empty() || reaction.len() > REACTION_MAX_BYTES {
        return Err(format!("a reaction has 1 to {REACTION_MAX_BYTES} bytes, not {}", reaction.len()));
    }
    if reaction.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a reaction must not contain spaces or control characters".into());
    }
    if let Some(c) = reaction.chars().filter(|&c| c != '\u{200D}').find(|&c| hidden_char(&c.to_string()).is_some()) {
        return Err(format!("a reaction must not contain invisible characters (found U+{:04X})", u32::from(c)));
    }
    Ok(())
}

/// User names: 2–32 of `a-z 0-9 _ . -`, starting with a letter or digit. Lowercase only, so
/// `Alice` and `alice` cannot be two people.
pub fn validate_user_name(name: &str) -> Result<(), String> {
    let len_ok = (2..=MAX_USER_NAME_BYTES).contains(&name.len());
    let first_ok = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let chars_ok = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'));
    if len_ok && first_ok && chars_ok {
        Ok(())
    } else {
        Err(format!(
            "user name `{}` is invalid: use 2 to {MAX_USER_NAME_BYTES} characters of a-z, 0-9, `_`, `.`, `-`, starting with a letter or digit",
            truncate_for_message(name)
        ))
    }
}

/// Room names are for display: 1–64 characters after trimming, no control characters.
pub fn validate_room_name(name: &str) -> Result<String, String> {
    let trimmed = name.trim();
    let count = trimmed.chars().count();
    if count == 0 || count > MAX_ROOM_NAME_CHARS {
        return Err(format!("room name must have 1 to {MAX_ROOM_NAME_CHARS} characters"));
    }
    if trimmed.chars().any(char::is_control) {
        return Err("room name must not contain control characters".to_string());
    }
    if let Some(c) = hidden_char(trimmed) {
        return Err(format!(
            "room name must not contain invisible or text-direction characters (found U+{:04X})",
            u32::from(c)
        ));
    }
    Ok(trimmed.to_string())
}

/// The first character of `text` that changes how text around it is shown without being seen
/// itself: bidirectional controls (which can make `gnp.exe` show as `exe.png`), zero-width and
/// other invisible formatting characters (which make two names that look the same differ),
/// line and paragraph separators, and the tag characters that can hide a whole text. Names and
/// status texts are shown to other users, so they must look like what they are. Variation
/// selectors (emoji presentation) are allowed: they change a glyph's style only.
pub fn hidden_char(text: &str) -> Option<char> {
    text.chars().find(|&c| {
        matches!(
            c,
            '\u{00AD}'                          // soft hyphen
            | '\u{034F}'                        // combining grapheme joiner
            | '\u{061C}'                        // Arabic letter mark
            | '\u{115F}' | '\u{1160}'           // Hangul fillers
            | '\u{17B4}' | '\u{17B5}'           // Khmer inherent vowels
            | '\u{180B}'..='\u{180F}'           // Mongolian selectors and vowel separator
            | '\u{200B}'..='\u{200F}'           // zero-width space, joiners, LRM, RLM
            | '\u{2028}'..='\u{202E}'           // line/paragraph separators, embeddings, overrides
            | '\u{2060}'..='\u{206F}'           // word joiner, invisible operators, isolates
            | '\u{3164}' | '\u{FFA0}'           // Hangul fillers
            | '\u{FEFF}'                        // zero-width no-break space
            | '\u{FFF9}'..='\u{FFFB}'           // interlinear annotations
            | '\u{1D173}'..='\u{1D17A}'         // musical formatting
            | '\u{E0000}'..='\u{E007F}' // tags
        )
    })
}

/// Room ids as a client names them: bounded and printable; existence is the store's question.
pub fn validate_room_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ROOM_ID_BYTES || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("room id `{}` is invalid", truncate_for_message(id)));
    }
    Ok(())
}

/// Client message ids: 1–64 of `A-Z a-z 0-9 _ . : -` (UUIDs, ULIDs and counters all fit).
pub fn validate_message_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_MESSAGE_ID_BYTES
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "message id `{}` is invalid: use 1 to {MAX_MESSAGE_ID_BYTES} characters of A-Z, a-z, 0-9, `_`, `.`, `:`, `-`",
            truncate_for_message(id)
        ))
    }
}

/// A fresh group room id: `r_` and 12 random base-32 characters (60 bits; collisions are
/// caught by the store's create-if-absent and retried).
pub fn new_room_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let mut rng = rand::rng();
    let tail: String = (0..12).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect();
    format!("r_{tail}")
}

/// A fresh media id: `md_` and 22 random URL-safe characters (132 bits: an id is not a secret,
/// but nobody should find uploads by guessing).
pub fn new_media_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    let tail: String = (0..22).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect();
    format!("md_{tail}")
}

/// Whether `id` has the shape of a media id (so a bad one is refused before the store is asked).
pub fn validate_media_id(id: &str) -> Result<(), String> {
    let tail = id.strip_prefix("md_").unwrap_or_default();
    if tail.len() == 22 && tail.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_')) {
        Ok(())
    } else {
        Err(format!("`{}` is not a media id (`md_` and 22 characters)", truncate_for_message(id)))
    }
}

/// The other user of the direct conversation `room`, if it is one of `user`'s.
pub fn direct_peer<'a>(room: &'a str, user: &str) -> Option<&'a str> {
    let (first, second) = room.strip_prefix("dm:")?.split_once(':')?;
    match (first == user, second == user) {
        (true, false) => Some(second),
        (false, true) => Some(first),
        _ => None,
    }
}

/// The stable id of the direct conversation between two users: `dm:` and both names sorted,
/// so either side finds the same room.
pub fn direct_room_id(a: &str, b: &str) -> String {
    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    format!("dm:{first}:{second}")
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Echo at most 40 characters of client input in an error message.
fn truncate_for_message(text: &str) -> String {
    let mut out: String = text.chars().take(40).filter(|c| !c.is_control()).collect();
    if text.chars().count() > 40 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn media_ids_are_fresh_and_well_formed() {
        let (a, b) = (new_media_id(), new_media_id());
        assert!(validate_media_id(&a).is_ok() && validate_media_id(&b).is_ok() && a != b, "{a} {b}");
        assert_eq!(a.len(), 25);
        assert!(validate_media_id("md_../../../etc/passwd.....").is_err());
        assert!(validate_media_id("md_short").is_err());
        assert!(validate_media_id(&format!("xx_{}", &a[3..])).is_err());
    }

    use super::*;

    #[test]
    fn user_names() {
        for ok in ["al", "alice", "bob_2", "x.y-z", "0day"] {
            assert!(validate_user_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a", "Alice", "al:ice", "_x", "a b", &"a".repeat(33), "ünï"] {
            assert!(validate_user_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn room_names_are_trimmed_and_bounded() {
        assert_eq!(validate_room_name("  general ").unwrap(), "general");
        assert!(validate_room_name("   ").is_err());
        assert!(validate_room_name(&"x".repeat(65)).is_err());
        assert!(validate_room_name("a\u{0}b").is_err());
        assert!(validate_room_name("café ☕").is_ok());
    }

    #[test]
    fn room_names_refuse_hidden_characters() {
        for bad in ["gen\u{200B}eral", "\u{202E}gnp.exe", "a\u{2066}b\u{2069}", "x\u{FEFF}", "a\u{E0041}", "a\u{2028}b"]
        {
            let err = validate_room_name(bad).unwrap_err();
            assert!(err.contains("invisible or text-direction"), "{bad:?}: {err}");
        }
        for ok in ["שלום עולם", "مرحبا", "☕\u{FE0F} corner", "日本語"] {
            assert!(validate_room_name(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn message_ids() {
        assert!(validate_message_id("0b7c5e1e-3f7e-4a59-9b7a-1f1d5c0f8a11").is_ok());
        assert!(validate_message_id("").is_err());
        assert!(validate_message_id("a b").is_err());
        assert!(validate_message_id(&"x".repeat(65)).is_err());
    }

    #[test]
    fn direct_ids_are_symmetric() {
        assert_eq!(direct_room_id("bob", "alice"), direct_room_id("alice", "bob"));
        assert_eq!(direct_room_id("bob", "alice"), "dm:alice:bob");
    }

    #[test]
    fn room_ids_are_valid_room_ids() {
        let id = new_room_id();
        assert!(validate_room_id(&id).is_ok());
        assert_eq!(id.len(), 14);
        assert_ne!(new_room_id(), id);
    }
}
