//! Who may open `/ws/record` and `/ws/feed`: static bearer tokens and HS256 JWTs.
//!
//! Checked in [`crate::http`] before a WebSocket is upgraded; the identity it yields (the token's name, or
//! the JWT's `sub`) is attached to every log line of the connection. Authentication is off until a token or a
//! JWT key is configured ([`crate::config::AuthConfig`]).
//!
//! A token travels in one of two ways, both out of URLs (and so out of access logs):
//! - as a WebSocket subprotocol `bearer.<token>` next to `soundline.v1`: the only header a browser lets a page
//!   set on a WebSocket (`new WebSocket(url, ["soundline.v1", "bearer." + token])`); the relay answers with
//!   `soundline.v1`, never echoing the token;
//! - as `Authorization: Bearer <token>`, for tools and ingresses.
//!
//! JWTs, verified with the `jsonwebtoken` crate: `alg` must be `HS256` (`none` and every other algorithm are
//! refused), the signature must verify with the configured key, `exp` and `sub` are required, `exp` and `nbf` are
//! checked with [`LEEWAY_S`] of clock skew (against the time the caller passes, so tests can set it), and `sub`
//! names the client. A token is checked when the connection opens; one that expires later does not cut a
//! recording short, but the reconnect after it needs a fresh one.

use std::collections::HashMap;

use axum::http::{HeaderMap, header};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::AuthConfig;

/// The subprotocol Soundline's clients offer and the relay selects.
pub const SUBPROTOCOL: &str = "soundline.v1";
/// The prefix of a subprotocol that carries a token.
pub const BEARER_PREFIX: &str = "bearer.";
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_S: i64 = 30;

/// Why a connection was not let in. The messages name the problem without repeating the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token at all.
    #[error(
        "authentication required: send a token as WebSocket subprotocol bearer.<token> (with {SUBPROTOCOL}) or an Authorization: Bearer header"
    )]
    Missing,
    /// Not one of the static tokens, and not a JWT (or no JWT key is configured).
    #[error("the token is not valid here")]
    Unknown,
    /// A JWT that is malformed, not HS256, or badly signed.
    #[error("the JWT is invalid: {0}")]
    InvalidJwt(&'static str),
    /// A JWT past its `exp`, or before its `nbf`.
    #[error("the JWT has expired or is not yet valid")]
    Expired,
}

/// The configured tokens, ready to check requests against.
pub struct Authenticator {
    /// SHA-256 of each static token -> its name. Looking up a digest keeps the comparison independent of where
    /// a guessed token first differs from a real one.
    tokens: HashMap<[u8; 32], String>,
    jwt: Option<DecodingKey>,
}

#[derive(Deserialize)]
struct JwtClaims {
    sub: Option<String>,
    exp: Option<f64>,
    nbf: Option<f64>,
}

impl Authenticator {
    /// From the configuration.
    pub fn new(config: &AuthConfig) -> Self {
        let tokens = config.tokens.iter().map(|(name, t)| (digest(t.expose()), name.clone())).collect();
        let jwt = config.jwt_secret.as_ref().map(|k| DecodingKey::from_secret(k.expose().as_bytes()));
        Self { tokens, jwt }
    }

    /// Whether requests must bring a token.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty() || self.jwt.is_some()
    }

    /// The identity behind a request's token: `Ok(None)` when authentication is off.
    ///
    /// # Errors
    ///
    /// No token, or one that is not valid now.
    pub fn check(&self, headers: &HeaderMap, now_s: i64) -> Result<Option<String>, AuthError> {
        if !self.enabled() {
            return Ok(None);
        }
        let token = bearer(headers).ok_or(AuthError::Missing)?;
        self.identify(token, now_s).map(Some)
    }

    /// The name of a static token, or the `sub` of a valid JWT.
    ///
    /// # Errors
    ///
    /// Neither.
    pub fn identify(&self, token: &str, now_s: i64) -> Result<String, AuthError> {
        if let Some(name) = self.tokens.get(&digest(token)) {
            return Ok(name.clone());
        }
        match &self.jwt {
            Some(key) if token.bytes().filter(|b| *b == b'.').count() == 2 => verify_jwt(key, token, now_s),
            _ => Err(AuthError::Unknown),
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The token of a request: its `bearer.` subprotocol, else its `Authorization: Bearer` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let from_protocol = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(BEARER_PREFIX));
    from_protocol.or_else(|| {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    })
}

fn verify_jwt(key: &DecodingKey, token: &str, now_s: i64) -> Result<String, AuthError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    // The times are checked below against `now_s` (the crate reads the system clock itself).
    validation.validate_exp = false;
    validation.validate_nbf = false;
    let claims = jsonwebtoken::decode::<JwtClaims>(token, key, &validation)
        .map_err(|e| {
            AuthError::InvalidJwt(match e.kind() {
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => "alg must be HS256",
                ErrorKind::InvalidSignature => "the signature does not match",
                ErrorKind::MissingRequiredClaim(c) if c == "exp" => "exp is required",
                ErrorKind::MissingRequiredClaim(_) => "sub (the client's identity) is required",
                // A header naming an algorithm the crate does not know (`none`, say) fails to parse as JSON.
                ErrorKind::Json(_) if jsonwebtoken::decode_header(token).is_err() => "alg must be HS256",
                ErrorKind::Json(_) => "the payload is not a JSON object of claims",
                _ => "expected header.payload.signature in base64url",
            })
        })?
        .claims;
    let now = now_s as f64;
    let exp = claims.exp.ok_or(AuthError::InvalidJwt("exp is required"))?;
    if now > exp + LEEWAY_S as f64 || claims.nbf.is_some_and(|nbf| now + (LEEWAY_S as f64) < nbf) {
        return Err(AuthError::Expired);
    }
    match claims.sub {
        Some(sub) if !sub.is_empty() && sub.len() <= 256 => Ok(sub),
        _ => Err(AuthError::InvalidJwt("sub (the client's identity) is required")),
    }
}

/// Signs an HS256 JWT (`soundline-relay token`, and tests).
pub fn sign_jwt(key: &[u8], claims: &serde_json::Value) -> String {
    // HS256 over claims that are already JSON has no failure mode (any key length is a valid HMAC key).
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(key))
        .expect("signing JSON claims with HS256 cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    const KEY: &str = "0123456789abcdef0123456789abcdef";
    const NOW: i64 = 1_764_000_000;

    fn auth() -> Authenticator {
        Authenticator::new(&AuthConfig {
            tokens: vec![("depot-7".into(), Secret::new("s3cret-token-for-depot-7"))],
            jwt_secret: Some(Secret::new(KEY)),
        })
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn off_until_configured() {
        let a = Authenticator::new(&AuthConfig::default());
        assert_eq!(a.check(&HeaderMap::new(), NOW), Ok(None));
    }

    #[test]
    fn static_tokens_by_subprotocol_or_header() {
        let a = auth();
        let via_protocol = headers(&[("sec-websocket-protocol", "soundline.v1, bearer.s3cret-token-for-depot-7")]);
        assert_eq!(a.check(&via_protocol, NOW), Ok(Some("depot-7".into())));
        let via_header = headers(&[("authorization", "Bearer s3cret-token-for-depot-7")]);
        assert_eq!(a.check(&via_header, NOW), Ok(Some("depot-7".into())));
        assert_eq!(a.check(&HeaderMap::new(), NOW), Err(AuthError::Missing));
        assert_eq!(a.check(&headers(&[("authorization", "Bearer nope")]), NOW), Err(AuthError::Unknown));
    }

    #[test]
    fn jwts_need_hs256_a_good_signature_exp_and_sub() {
        let a = auth();
        let good = sign_jwt(KEY.as_bytes(), &serde_json::json!({"sub": "tech-42", "exp": NOW + 60}));
        assert_eq!(a.identify(&good, NOW), Ok("tech-42".into()));
        let expired = sign_jwt(KEY.as_bytes(), &serde_json::json!({"sub": "tech-42", "exp": NOW - LEEWAY_S - 1}));
        assert_eq!(a.identify(&expired, NOW), Err(AuthError::Expired));
        let early = sign_jwt(KEY.as_bytes(), &serde_json::json!({"sub": "t", "exp": NOW + 900, "nbf": NOW + 600}));
        assert_eq!(a.identify(&early, NOW), Err(AuthError::Expired));
        let other_key =
            sign_jwt(b"another key, also 32 bytes long!", &serde_json::json!({"sub": "x", "exp": NOW + 60}));
        assert_eq!(a.identify(&other_key, NOW), Err(AuthError::InvalidJwt("the signature does not match")));
        let no_exp = sign_jwt(KEY.as_bytes(), &serde_json::json!({"sub": "x"}));
        assert_eq!(a.identify(&no_exp, NOW), Err(AuthError::InvalidJwt("exp is required")));
        let no_sub = sign_jwt(KEY.as_bytes(), &serde_json::json!({"exp": NOW + 60}));
        assert!(matches!(a.identify(&no_sub, NOW), Err(AuthError::InvalidJwt(_))));
        // alg none: a forged token without a signature.
        use base64::Engine as _;
        let b64 = |s: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(br#"{"sub":"admin","exp":9999999999}"#));
        assert_eq!(a.identify(&none, NOW), Err(AuthError::InvalidJwt("alg must be HS256")));
        let hs512 = format!("{}.{}.c2ln", b64(br#"{"alg":"HS512"}"#), b64(br#"{"sub":"admin","exp":9999999999}"#));
        assert_eq!(a.identify(&hs512, NOW), Err(AuthError::InvalidJwt("alg must be HS256")));
        for garbage in ["a.b.c", "..", "x.y.z.w", "\u{0}.\u{1}.\u{2}"] {
            assert!(a.identify(garbage, NOW).is_err(), "{garbage}");
        }
    }
}
