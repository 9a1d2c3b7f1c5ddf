//! Bearer tokens on the ingest and admin APIs.
//!
//! A node only ever checks tokens, so it keeps only their SHA-256: a token
//! file may hold the token itself or `sha256:<64 hex>`, and in memory the
//! node holds the digest alone. A presented token is hashed and the digests
//! are compared with `subtle`, so neither the comparison's timing nor the
//! token's length tells a guesser anything, and a leaked pod filesystem or
//! core dump holds nothing that can be presented to another node.
//!
//! The scheme name is matched case-insensitively (RFC 7235 §2.1), and every
//! refusal carries `WWW-Authenticate: Bearer …` (RFC 6750 §3).

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token file or variable says when it holds only the digest.
pub const HASH_PREFIX: &str = "sha256:";

/// A token, known by its SHA-256 alone.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    digest: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is empty")]
    Empty,
    #[error("{HASH_PREFIX} must be followed by 64 hex digits (the SHA-256 of the token)")]
    BadDigest,
}

impl Token {
    /// The token a client presents, hashed at once.
    pub fn from_secret(secret: &str) -> Result<Self, TokenError> {
        if secret.is_empty() {
            return Err(TokenError::Empty);
        }
        Ok(Self {
            digest: Sha256::digest(secret.as_bytes()).into(),
        })
    }

    /// What a token file or variable holds: `sha256:<hex>` or the token.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let text = text.trim();
        match text.strip_prefix(HASH_PREFIX) {
            Some(hex_digest) => {
                let mut digest = [0u8; 32];
                hex::decode_to_slice(hex_digest, &mut digest).map_err(|_| TokenError::BadDigest)?;
                Ok(Self { digest })
            }
            None => Self::from_secret(text),
        }
    }

    /// `sha256:<hex>`: what to store where the token only needs checking.
    pub fn hashed(&self) -> String {
        format!("{HASH_PREFIX}{}", hex::encode(self.digest))
    }

    /// Whether `presented` is this token. Hashing first makes every
    /// comparison 32 bytes long whatever was presented.
    pub fn matches(&self, presented: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        bool::from(d.ct_eq(&self.digest))
    }
}

/// Why a request was not let in; `as_str` is its metric label and JSON code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization` header.
    Missing,
    /// A header that is not `Bearer <token>`.
    Malformed,
    /// A well-formed bearer token that is not one of ours.
    BadToken,
    /// A token that may read but not change.
    Forbidden,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "no_token",
            Self::Malformed => "malformed_authorization",
            Self::BadToken => "bad_token",
            Self::Forbidden => "forbidden",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::Forbidden => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The `WWW-Authenticate` challenge for `realm` (RFC 6750 §3: no error
    /// attribute when no credentials were sent).
    pub fn challenge(self, realm: &'static str) -> HeaderValue {
        let error = match self {
            Self::Missing => None,
            Self::Malformed => Some("invalid_request"),
            Self::BadToken => Some("invalid_token"),
            Self::Forbidden => Some("insufficient_scope"),
        };
        let text = match error {
            Some(e) => format!("Bearer realm=\"{realm}\", error=\"{e}\""),
            None => format!("Bearer realm=\"{realm}\""),
        };
        HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("Bearer"))
    }
}

/// The token in `Authorization: Bearer <token>`. The scheme is
/// case-insensitive and may be followed by more than one space (RFC 7235
/// §2.1); the token is a token68, so it has no inner whitespace.
pub fn bearer(headers: &HeaderMap) -> Result<&str, Refusal> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(Refusal::Missing)?
        .to_str()
        .map_err(|_| Refusal::Malformed)?;
    let (scheme, rest) = value
        .trim()
        .split_once([' ', '\t'])
        .ok_or(Refusal::Malformed)?;
    let token = rest.trim_start_matches([' ', '\t']);
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains([' ', '\t']) {
        return Err(Refusal::Malformed);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn the_scheme_is_case_insensitive_and_malformed_headers_are_named() {
        for v in ["Bearer abc", "bearer abc", "BEARER abc", "bEaReR   abc"] {
            assert_eq!(bearer(&headers(v)), Ok("abc"), "{v}");
        }
        for v in [
            "Basic abc",
            "Bearer",
            "Bearer ",
            "Bearerabc",
            "Bearer a b",
            "abc",
        ] {
            assert_eq!(bearer(&headers(v)), Err(Refusal::Malformed), "{v}");
        }
        assert_eq!(bearer(&HeaderMap::new()), Err(Refusal::Missing));
    }

    #[test]
    fn a_token_matches_itself_only_and_its_digest_stands_for_it() {
        let t = Token::parse("s3cret").unwrap();
        assert!(t.matches("s3cret"));
        for wrong in ["s3creT", "s3cre", "s3cret ", "s3crets3cret", ""] {
            assert!(!t.matches(wrong), "{wrong:?}");
        }
        let at_rest = t.hashed();
        assert!(!at_rest.contains("s3cret"));
        let from_digest = Token::parse(&at_rest).unwrap();
        assert!(from_digest.matches("s3cret"));
        assert!(!from_digest.matches(&at_rest), "the digest is not a token");
        assert_eq!(Token::parse("sha256:abc"), Err(TokenError::BadDigest));
        assert_eq!(Token::parse("  "), Err(TokenError::Empty));
        assert!(!format!("{t:?}").contains("s3cret"));
    }
}
