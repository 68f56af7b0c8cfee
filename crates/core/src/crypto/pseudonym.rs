//! Pseudonyms: what encrypted events store in place of a subject's name.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;

/// Stored in place of the actor's name on encrypted events: the subject's pseudonym.
pub const PSEUDONYM_PREFIX: &str = "subject:";

/// `subject:` and the subject reference in base64url (22 characters, against 36 for the uuid's
/// text): it is stored in every encrypted event.
pub fn actor_pseudonym(subject_ref: &[u8; 16]) -> String {
    format!("{PSEUDONYM_PREFIX}{}", B64.encode(subject_ref))
}

/// The subject reference a stored actor is a pseudonym for, if it is one (in base64url, or as
/// the uuid text that earlier versions stored).
pub fn parse_pseudonym(stored: &str) -> Option<[u8; 16]> {
    let reference = stored.strip_prefix(PSEUDONYM_PREFIX)?;
    if reference.len() == 22 {
        return <[u8; 16]>::try_from(B64.decode(reference).ok()?).ok();
    }
    uuid::Uuid::try_parse(reference).ok().map(|u| *u.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_round_trip_and_names_are_not_pseudonyms() {
        let r = [0x5a; 16];
        assert_eq!(parse_pseudonym(&actor_pseudonym(&r)), Some(r));
        assert_eq!(actor_pseudonym(&r).len(), "subject:".len() + 22);
        let earlier = format!("subject:{}", uuid::Uuid::from_bytes(r));
        assert_eq!(parse_pseudonym(&earlier), Some(r));
        assert_eq!(parse_pseudonym("subject:WlpaWlpaWlpaWlpaWlpaWl"), None);
        assert_eq!(parse_pseudonym("alice@example.com"), None);
        assert_eq!(parse_pseudonym("subject:not-a-uuid"), None);
    }
}
