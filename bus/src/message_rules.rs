//! The rules SNS and SQS apply to every message, checked before a message is sent: by the aws adapter, so a
//! refusal costs no call (and emulators, which enforce few of them, behave like AWS), and by the embedded bus,
//! so local runs and tests see what production sees.

use std::collections::BTreeMap;

use crate::{BusError, MAX_MESSAGE_BYTES, OutgoingMessage};

/// SNS and SQS accept at most ten message attributes per message.
const MAX_MESSAGE_ATTRIBUTES: usize = 10;

/// Longest message attribute name SNS and SQS accept.
const MAX_ATTRIBUTE_NAME_LEN: usize = 256;

/// Checks a message against the SNS/SQS rules that emulators do not enforce: a non-empty body of characters SQS
/// can store, at most [`MAX_MESSAGE_BYTES`], and at most ten non-empty string attributes with valid names.
pub fn check_message(message: &OutgoingMessage) -> Result<(), BusError> {
    let size = message.size_bytes();
    if size > MAX_MESSAGE_BYTES {
        return Err(BusError::MessageTooLarge { size, limit: MAX_MESSAGE_BYTES });
    }
    if message.body.is_empty() {
        return Err(BusError::InvalidParameter("message body must not be empty".into()));
    }
    if let Some(bad) = message.body.chars().find(|c| !is_sqs_character(*c)) {
        return Err(BusError::InvalidParameter(format!(
            "message body contains U+{:04X}, which SQS does not accept",
            u32::from(bad)
        )));
    }
    check_attributes(&message.attributes)
}

/// The characters SQS accepts in a message body (its documented XML character range).
pub fn is_sqs_character(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

fn check_attributes(attributes: &BTreeMap<String, String>) -> Result<(), BusError> {
    if attributes.len() > MAX_MESSAGE_ATTRIBUTES {
        return Err(BusError::InvalidParameter(format!(
            "{} message attributes; SNS and SQS accept at most {MAX_MESSAGE_ATTRIBUTES}",
            attributes.len()
        )));
    }
    for (name, value) in attributes {
        let valid_name = !name.is_empty()
            && name.len() <= MAX_ATTRIBUTE_NAME_LEN
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            && !name.starts_with('.')
            && !name.ends_with('.')
            && !name.contains("..")
            && !name.to_ascii_lowercase().starts_with("aws.")
            && !name.to_ascii_lowercase().starts_with("amazon.");
        if !valid_name {
            return Err(BusError::InvalidParameter(format!("invalid message attribute name {name:?}")));
        }
        if value.is_empty() {
            return Err(BusError::InvalidParameter(format!("message attribute {name:?} has an empty value")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_an_ordinary_message() {
        let message = OutgoingMessage::new(r#"{"v":1}"#).with_attribute(crate::ATTR_SCHEMA_VERSION, "1");
        assert_eq!(check_message(&message), Ok(()));
    }

    #[test]
    fn rejects_what_aws_rejects_and_emulators_accept() {
        assert!(matches!(check_message(&OutgoingMessage::new("")), Err(BusError::InvalidParameter(_))));
        let too_big = OutgoingMessage::new("x".repeat(MAX_MESSAGE_BYTES + 1));
        assert!(matches!(check_message(&too_big), Err(BusError::MessageTooLarge { .. })));
        assert!(matches!(
            check_message(&OutgoingMessage::new("a\u{0}b")),
            Err(BusError::InvalidParameter(_))
        ));
        let mut many = OutgoingMessage::new("x");
        for i in 0..=MAX_MESSAGE_ATTRIBUTES {
            many = many.with_attribute(format!("a{i}"), "v");
        }
        assert!(matches!(check_message(&many), Err(BusError::InvalidParameter(_))));
        for name in ["", "AWS.trace", "a..b", ".a", "sp ace"] {
            let message = OutgoingMessage::new("x").with_attribute(name, "v");
            assert!(matches!(check_message(&message), Err(BusError::InvalidParameter(_))), "{name:?}");
        }
        let empty_value = OutgoingMessage::new("x").with_attribute("a", "");
        assert!(matches!(check_message(&empty_value), Err(BusError::InvalidParameter(_))));
    }

    #[test]
    fn the_size_limit_counts_attributes_too() {
        let body = "x".repeat(MAX_MESSAGE_BYTES - 10);
        let message = OutgoingMessage::new(body).with_attribute("name", "value");
        assert_eq!(message.size_bytes(), MAX_MESSAGE_BYTES - 10 + 4 + 6 + 5);
        assert!(matches!(check_message(&message), Err(BusError::MessageTooLarge { .. })));
    }
}
