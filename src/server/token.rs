//! The shared secret a server may require, compared in constant time.

use std::fmt;

use rand::RngCore;

/// A server token. `Debug` hides it so it never lands in a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A token from text the user gave (trimmed).
    pub fn new(text: &str) -> Option<Token> {
        let text = text.trim();
        (!text.is_empty()).then(|| Token(text.to_owned()))
    }

    /// A fresh random token: 128 bits as 32 hex digits.
    pub fn generate() -> Token {
        let mut bytes = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Token(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The token's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` equals the token, taking the same time wherever they differ.
    pub fn matches(&self, candidate: &str) -> bool {
        constant_time_eq(self.0.as_bytes(), candidate.as_bytes())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(…)")
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = u8::from(a.len() != b.len());
    // Walk the expected length whatever the candidate's, so timing does not reveal a prefix.
    for (index, &expected) in a.iter().enumerate() {
        let got = b.get(index).copied().unwrap_or(!expected);
        difference |= expected ^ got;
    }
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_exact_token() {
        let token = Token::new(" secret ").expect("non-empty");
        assert!(token.matches("secret"));
        assert!(!token.matches("secreT"));
        assert!(!token.matches("secret2"));
        assert!(!token.matches("secre"));
        assert!(!token.matches(""));
        assert_eq!(Token::new("  "), None);
        assert_eq!(format!("{token:?}"), "Token(…)");
    }

    #[test]
    fn generated_tokens_are_long_and_differ() {
        let a = Token::generate();
        assert_eq!(a.as_str().len(), 32);
        assert_ne!(a, Token::generate());
    }
}
