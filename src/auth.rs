//! Who may call the API (API keys, one tenant each) and who may connect (signed tokens).

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A tenant: the owner of the sessions one API key created. Displayed as a short digest
/// of the key, so it can appear in logs without revealing the key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Tenant(Arc<str>);

impl Tenant {
    /// The tenant whose displayed id is `id` (as stored with its profiles).
    pub fn from_id(id: &str) -> Tenant {
        Tenant(Arc::from(id))
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tenant({})", self.0)
    }
}

/// The configured API keys, kept only as SHA-256 digests.
pub struct ApiKeys {
    keys: Vec<([u8; 32], Tenant)>,
}

impl ApiKeys {
    pub fn new(keys: &[String]) -> Self {
        let keys = keys
            .iter()
            .map(|key| {
                let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
                let tenant = Tenant(Arc::from(format!("t_{}", hex(&digest[..8]))));
                (digest, tenant)
            })
            .collect();
        ApiKeys { keys }
    }

    /// Every key's tenant (its label, never the key), in the order configured.
    pub fn tenants(&self) -> impl Iterator<Item = &Tenant> {
        self.keys.iter().map(|(_, tenant)| tenant)
    }

    /// The tenant of the key in `X-API-Key` or `Authorization: Bearer`, if it is one of ours.
    pub fn authenticate(&self, headers: &HeaderMap) -> Option<Tenant> {
        self.authenticate_by(headers, "x-api-key")
    }

    /// The key sent in header `name`, or as a Bearer token, if it is one of these.
    pub fn authenticate_by(&self, headers: &HeaderMap, name: &str) -> Option<Tenant> {
        let presented = headers.get(name).and_then(|v| v.to_str().ok()).or_else(|| {
            let value = headers.get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
            let (scheme, rest) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim())
        })?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Compare against every key without stopping early, each in constant time.
        let mut found = None;
        for (known, tenant) in &self.keys {
            if constant_time_eq(known, &digest) {
                found = Some(tenant.clone());
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a token lets its bearer do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Connect CDP clients to the session's browser.
    Cdp,
    /// Watch and drive the session from the live view page.
    Live,
    /// Watch the session from the live view page, without input.
    LiveReadOnly,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// The session the token is for.
    sid: String,
    /// Its tenant: a token opens the session only while it is that tenant's.
    ten: String,
    scope: Scope,
    iat: u64,
    exp: u64,
}

/// What a valid token grants: one session of one tenant, in one scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub session: String,
    pub tenant: Tenant,
    pub scope: Scope,
}

impl From<Claims> for Grant {
    fn from(claims: Claims) -> Grant {
        Grant {
            session: claims.sid,
            tenant: Tenant::from_id(&claims.ten),
            scope: claims.scope,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("a token is required")]
    Missing,
    #[error("the token is invalid or has expired")]
    Invalid,
    #[error("the token is for another session")]
    WrongSession,
}

/// Signs and checks the tokens carried in `cdp_url` (HS256 JWTs).
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Tokens {
    /// `secret` is never empty: configuration requires 32 characters or generates them.
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        Tokens {
            encoding: EncodingKey::from_secret(secret).expect("a non-empty HMAC secret"),
            decoding: DecodingKey::from_secret(secret).expect("a non-empty HMAC secret"),
            validation,
        }
    }

    /// A token for `session_id`, valid until `expires_at`. The same inputs give the same
    /// token, so a session's `cdp_url` only changes when its expiry does.
    pub fn mint(
        &self,
        session_id: &str,
        tenant: &Tenant,
        scope: Scope,
        issued_at: SystemTime,
        expires_at: SystemTime,
    ) -> String {
        let claims = Claims {
            sid: session_id.to_owned(),
            ten: tenant.to_string(),
            scope,
            iat: unix_secs(issued_at),
            // Round up so the token never dies before the session does.
            exp: unix_secs(expires_at) + 1,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing with an in-memory key cannot fail")
    }

    /// Checks that `token` is ours and unexpired; answers what it grants.
    pub fn decode(&self, token: Option<&str>) -> Result<Grant, TokenError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(TokenError::Missing)?;
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map_err(|_| TokenError::Invalid)?;
        Ok(Grant::from(data.claims))
    }

    /// Checks that `token` is ours, expired or not: a live view link of an ended session
    /// still opens its recording (until the record is swept).
    pub fn decode_expired_too(&self, token: Option<&str>) -> Result<Grant, TokenError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(TokenError::Missing)?;
        let mut validation = self.validation.clone();
        validation.validate_exp = false;
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map_err(|_| TokenError::Invalid)?;
        Ok(Grant::from(data.claims))
    }

    /// Checks that `token` is ours, unexpired and of `scope`; answers what it grants.
    pub fn session_of(&self, token: Option<&str>, scope: Scope) -> Result<Grant, TokenError> {
        match self.decode(token)? {
            grant if grant.scope == scope => Ok(grant),
            _ => Err(TokenError::Invalid),
        }
    }

    /// Checks that `token` is valid for `scope` on `session_id`.
    pub fn verify(&self, token: Option<&str>, session_id: &str, scope: Scope) -> Result<(), TokenError> {
        if self.session_of(token, scope)?.session != session_id {
            return Err(TokenError::WrongSession);
        }
        Ok(())
    }
}

/// The `token` parameter of a query string, percent-decoded.
pub fn query_token(query: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `n` bytes from the operating system's generator, as hex.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).expect("the operating system's random generator failed");
    hex(&buf)
}

/// Reads the secret stored at `path`, or creates it (mode 0600) with `n` random bytes.
/// Returns the secret and whether it was just created.
pub fn load_or_create_secret(path: &Path, prefix: &str, n: usize) -> std::io::Result<(String, bool)> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => return Ok((s.trim().to_owned(), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let secret = format!("{prefix}{}", random_hex(n));
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(secret.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok((secret, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        h
    }

    #[test]
    fn keys_map_to_distinct_tenants_and_bearer_works() {
        let keys = ApiKeys::new(&["first-key-0123456789".into(), "second-key-0123456789".into()]);
        let a = keys
            .authenticate(&headers("x-api-key", "first-key-0123456789"))
            .unwrap();
        let b = keys
            .authenticate(&headers("authorization", "Bearer second-key-0123456789"))
            .unwrap();
        assert_ne!(a, b);
        assert_eq!(
            keys.authenticate(&headers("authorization", "bearer first-key-0123456789")),
            Some(a)
        );
        assert_eq!(keys.authenticate(&headers("x-api-key", "first-key-012345678")), None);
        assert_eq!(
            keys.authenticate(&headers("authorization", "Basic first-key-0123456789")),
            None
        );
        assert_eq!(keys.authenticate(&HeaderMap::new()), None);
    }

    #[test]
    fn tokens_are_bound_to_session_scope_and_time() {
        let tokens = Tokens::new(b"0123456789abcdef0123456789abcdef");
        let tenant = Tenant::from_id("t_0123");
        let now = SystemTime::now();
        let t = tokens.mint("sess_a", &tenant, Scope::Cdp, now, now + Duration::from_secs(60));
        assert_eq!(tokens.verify(Some(&t), "sess_a", Scope::Cdp), Ok(()));
        assert_eq!(tokens.decode(Some(&t)).map(|g| g.tenant), Ok(tenant.clone()));
        assert_eq!(
            tokens.verify(Some(&t), "sess_b", Scope::Cdp),
            Err(TokenError::WrongSession)
        );
        assert_eq!(tokens.verify(None, "sess_a", Scope::Cdp), Err(TokenError::Missing));

        // Tampered payload, other secret, expired.
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        let swapped = if parts[1].starts_with("ey") { "fy" } else { "ey" };
        parts[1].replace_range(0..2, swapped);
        assert_eq!(
            tokens.verify(Some(&parts.join(".")), "sess_a", Scope::Cdp),
            Err(TokenError::Invalid)
        );
        let other = Tokens::new(b"another-secret-another-secret-xx");
        let forged = other.mint("sess_a", &tenant, Scope::Cdp, now, now + Duration::from_secs(60));
        assert_eq!(
            tokens.verify(Some(&forged), "sess_a", Scope::Cdp),
            Err(TokenError::Invalid)
        );
        let old = tokens.mint(
            "sess_a",
            &tenant,
            Scope::Cdp,
            now - Duration::from_secs(100),
            now - Duration::from_secs(10),
        );
        assert_eq!(
            tokens.verify(Some(&old), "sess_a", Scope::Cdp),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn secrets_are_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let (a, created) = load_or_create_secret(&path, "k_", 16).unwrap();
        assert!(created && a.starts_with("k_") && a.len() == 34);
        let (b, created) = load_or_create_secret(&path, "k_", 16).unwrap();
        assert!(!created);
        assert_eq!(a, b);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
