//! Authentication (PROTOCOL.md §7): JWTs checked per RFC 8725 with `jsonwebtoken`.
//!
//! The algorithm is fixed by configuration, never taken from the token: HS256 with a shared
//! secret by default, EdDSA or ES256 with a public key. `exp` and `sub` are required; `nbf`
//! is checked when present; `iss` and `aud` when configured. `sub` is the user id, and must be
//! one (PROTOCOL.md §2). A claim `"admin": true` marks an admin token.
//!
//! With no secret configured, a random one lives in `<data-dir>/jwt.secret` (mode 0600):
//! [`dev_secret`] makes it once and reads it after, for the daemon and for
//! `switchboard-ctl token`.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::Path;
use switchboard_store::UserId;

/// Who a valid token speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: UserId,
    pub admin: bool,
    /// Seconds since the epoch.
    pub expires_at: u64,
}

/// Why a token was refused: the connection is closed with 4001 (REST: 401).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthError {
    Expired,
    Invalid(String),
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::Expired => f.write_str("token expired"),
            AuthError::Invalid(why) => write!(f, "invalid token: {why}"),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    admin: bool,
}

/// How far a token issuer's clock may be from this node's (`exp`, `nbf`).
pub const CLOCK_SKEW_S: u64 = 30;

/// Checks tokens with one fixed algorithm and key.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8]) -> Verifier {
        Verifier::new(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    /// EdDSA (Ed25519) with a public key in PEM.
    pub fn ed25519_pem(pem: &[u8]) -> Result<Verifier, AuthError> {
        let key = DecodingKey::from_ed_pem(pem).map_err(|e| AuthError::Invalid(format!("public key: {e}")))?;
        Ok(Verifier::new(key, Algorithm::EdDSA))
    }

    /// ES256 (P-256) with a public key in PEM.
    pub fn es256_pem(pem: &[u8]) -> Result<Verifier, AuthError> {
        let key = DecodingKey::from_ec_pem(pem).map_err(|e| AuthError::Invalid(format!("public key: {e}")))?;
        Ok(Verifier::new(key, Algorithm::ES256))
    }

    fn new(key: DecodingKey, algorithm: Algorithm) -> Verifier {
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp", "sub"]);
        // `exp` and `nbf` are checked in `verify` against the time it is given, not the
        // wall clock, so that a session's time is the time its caller passes in.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        Verifier { key, validation }
    }

    /// Requires `iss` to be this.
    pub fn with_issuer(mut self, issuer: &str) -> Verifier {
        self.validation.set_issuer(&[issuer]);
        self.validation.required_spec_claims.insert("iss".into());
        self
    }

    /// Requires `aud` to name this.
    pub fn with_audience(mut self, audience: &str) -> Verifier {
        self.validation.set_audience(&[audience]);
        self.validation.validate_aud = true;
        self.validation.required_spec_claims.insert("aud".into());
        self
    }

    /// Checks `token`'s signature and claims; `exp` and `nbf` against `now_s` (Unix
    /// seconds), with [`CLOCK_SKEW_S`] either way.
    pub fn verify(&self, token: &str, now_s: u64) -> Result<Identity, AuthError> {
        let data =
            decode::<Claims>(token, &self.key, &self.validation).map_err(|e| AuthError::Invalid(e.to_string()))?;
        if data.claims.exp.saturating_add(CLOCK_SKEW_S) < now_s {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = data.claims.nbf.filter(|&nbf| nbf > now_s.saturating_add(CLOCK_SKEW_S)) {
            return Err(AuthError::Invalid(format!("not valid before {nbf} (now {now_s})")));
        }
        let user = UserId::new(&data.claims.sub).map_err(|e| AuthError::Invalid(format!("sub: {e}")))?;
        Ok(Identity { user, admin: data.claims.admin, expires_at: data.claims.exp })
    }
}

/// Mints an HS256 token for `user`, valid for `ttl_s` seconds from `now_s`.
pub fn mint_hs256(secret: &[u8], user: &UserId, now_s: u64, ttl_s: u64, admin: bool) -> String {
    let claims = Claims { sub: user.as_str().to_string(), exp: now_s + ttl_s, nbf: None, admin };
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret))
        .expect("HS256 signing cannot fail")
}

/// The development secret's file name inside the data folder.
pub const DEV_SECRET_FILE: &str = "jwt.secret";

/// Reads `<data-dir>/jwt.secret`, creating it (32 random bytes, hex, mode 0600) if it does not
/// exist. Returns the secret and whether it was just created.
pub fn dev_secret(data_dir: &Path) -> io::Result<(Vec<u8>, bool)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join(DEV_SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok((s.trim().as_bytes().to_vec(), false)),
        Ok(_) => return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{} is empty", path.display()))),
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    let secret: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
    f.write_all(secret.as_bytes())?;
    f.sync_all()?;
    Ok((secret.into_bytes(), true))
}

/// Parses a duration like `90s`, `30m`, `1h`, `7d` into seconds.
pub fn parse_ttl(s: &str) -> Option<u64> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = n.parse().ok()?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;

    fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    fn alice() -> UserId {
        UserId::new("alice").unwrap()
    }

    /// A token with any header and claims, signed with HS256 and `secret`.
    fn forge(header: &str, claims: &str, secret: &[u8]) -> String {
        let signing_input = format!("{}.{}", B64.encode(header), B64.encode(claims));
        let sig =
            jsonwebtoken::crypto::sign(signing_input.as_bytes(), &EncodingKey::from_secret(secret), Algorithm::HS256)
                .unwrap();
        format!("{signing_input}.{sig}")
    }

    #[test]
    fn minted_tokens_verify() {
        let v = Verifier::hs256(b"s3cret");
        let id = v.verify(&mint_hs256(b"s3cret", &alice(), now(), 3600, false), now()).unwrap();
        assert_eq!((id.user, id.admin), (alice(), false));
        assert!(v.verify(&mint_hs256(b"s3cret", &alice(), now(), 60, true), now()).unwrap().admin);
    }

    #[test]
    fn every_bad_token_is_refused() {
        let v = Verifier::hs256(b"s3cret");
        let t = now();
        assert_eq!(v.verify(&mint_hs256(b"s3cret", &alice(), t - 7200, 3600, false), now()), Err(AuthError::Expired));
        assert!(v.verify(&mint_hs256(b"other", &alice(), t, 3600, false), now()).is_err(), "wrong secret");
        let good = mint_hs256(b"s3cret", &alice(), t, 3600, false);
        let mut tampered = good.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(v.verify(std::str::from_utf8(&tampered).unwrap(), now()).is_err(), "tampered signature");
        let exp = t + 3600;
        // alg is fixed by configuration: "none" and other algorithms are refused.
        let none = format!(
            "{}.{}.",
            B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            B64.encode(format!(r#"{{"sub":"alice","exp":{exp}}}"#))
        );
        assert!(v.verify(&none, now()).is_err());
        let hs384 = forge(r#"{"alg":"HS384","typ":"JWT"}"#, &format!(r#"{{"sub":"alice","exp":{exp}}}"#), b"s3cret");
        assert!(v.verify(&hs384, now()).is_err());
        // Required claims, a user id as sub, nbf.
        let hs = r#"{"alg":"HS256","typ":"JWT"}"#;
        assert!(v.verify(&forge(hs, r#"{"sub":"alice"}"#, b"s3cret"), now()).is_err(), "no exp");
        assert!(v.verify(&forge(hs, &format!(r#"{{"exp":{exp}}}"#), b"s3cret"), now()).is_err(), "no sub");
        assert!(v.verify(&forge(hs, &format!(r#"{{"sub":"not a user","exp":{exp}}}"#), b"s3cret"), now()).is_err());
        assert!(v
            .verify(&forge(hs, &format!(r#"{{"sub":"alice","exp":{exp},"nbf":{}}}"#, t + 600), b"s3cret"), now())
            .is_err());
        assert!(v
            .verify(&forge(hs, &format!(r#"{{"sub":"alice","exp":{exp},"nbf":{}}}"#, t - 10), b"s3cret"), now())
            .is_ok());
        assert!(v.verify("garbage", now()).is_err());
    }

    /// `exp` and `nbf` are read against the time the caller passes in (a session's time, a
    /// simulated clock), not the wall clock.
    #[test]
    fn exp_and_nbf_are_checked_against_the_time_passed_in() {
        let v = Verifier::hs256(b"s3cret");
        let t = 1_800_000_000;
        let token = mint_hs256(b"s3cret", &alice(), t, 600, false);
        assert!(v.verify(&token, t).is_ok());
        assert!(v.verify(&token, t + 600 + CLOCK_SKEW_S).is_ok(), "within the skew");
        assert_eq!(v.verify(&token, t + 601 + CLOCK_SKEW_S), Err(AuthError::Expired));
        let hs = r#"{"alg":"HS256","typ":"JWT"}"#;
        let later = forge(hs, &format!(r#"{{"sub":"alice","exp":{},"nbf":{}}}"#, t + 7200, t + 3600), b"s3cret");
        assert!(v.verify(&later, t).is_err(), "not valid yet");
        assert!(v.verify(&later, t + 3600).is_ok());
    }

    #[test]
    fn issuer_and_audience_when_configured() {
        let hs = r#"{"alg":"HS256","typ":"JWT"}"#;
        let exp = now() + 600;
        let v = Verifier::hs256(b"k").with_issuer("sb").with_audience("chat");
        let with = |iss: &str, aud: &str| {
            forge(hs, &format!(r#"{{"sub":"a","exp":{exp},"iss":"{iss}","aud":"{aud}"}}"#), b"k")
        };
        assert!(v.verify(&with("sb", "chat"), now()).is_ok());
        assert!(v.verify(&with("evil", "chat"), now()).is_err());
        assert!(v.verify(&with("sb", "other"), now()).is_err());
        assert!(v.verify(&forge(hs, &format!(r#"{{"sub":"a","exp":{exp}}}"#), b"k"), now()).is_err(), "iss missing");
        assert!(
            v.verify(&forge(hs, &format!(r#"{{"sub":"a","exp":{exp},"iss":"sb"}}"#), b"k"), now()).is_err(),
            "aud missing"
        );
    }

    #[test]
    fn dev_secret_is_made_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("sb-auth-{}-{}", std::process::id(), now()));
        let (a, created) = dev_secret(&dir).unwrap();
        assert!(created && a.len() == 64);
        let mode = std::fs::metadata(dir.join(DEV_SECRET_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(dev_secret(&dir).unwrap(), (a, false));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ttl() {
        assert_eq!(parse_ttl("90s"), Some(90));
        assert_eq!(parse_ttl("1h"), Some(3600));
        assert_eq!(parse_ttl("7d"), Some(604_800));
        assert_eq!(parse_ttl("1y"), None);
        assert_eq!(parse_ttl("h"), None);
        assert_eq!(parse_ttl("10"), None);
    }
}
