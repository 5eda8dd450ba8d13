//! [`Secret`]: a value that must never reach a log line or an error message,
//! such as a broker password from the config.
//!
//! Its `Debug` and `Display` print `***`, so a struct holding one can derive
//! `Debug` and be logged whole. The value comes out only through
//! [`Secret::expose`], which makes every place that hands it on easy to find.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself: only for handing it to where it is needed (the
    /// MQTT CONNECT), never for showing.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` is this secret, in time that depends only on the
    /// lengths (for checking a token a client sent without telling it, by
    /// how fast the answer comes, how much of it was right).
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let secret = self.0.as_bytes();
        if secret.len() != candidate.len() {
            return false;
        }
        let difference = secret
            .iter()
            .zip(candidate)
            .fold(0u8, |acc, (a, b)| std::hint::black_box(acc | (a ^ b)));
        difference == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_as_stars_and_exposed_only_on_request() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?} {secret} {:?}", Some(&secret)), "*** *** Some(***)");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn matches_only_the_same_bytes() {
        let secret = Secret::new("s3cret-token");
        assert!(secret.matches(b"s3cret-token"));
        assert!(!secret.matches(b"s3cret-tokeN"));
        assert!(!secret.matches(b"s3cret-toke"));
        assert!(!secret.matches(b"s3cret-token "));
        assert!(!secret.matches(b""));
    }
}
