//! Who may call the API (API keys, one tenant each) and who may connect (signed tokens).

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Origin;

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

/// HMAC-SHA256 (RFC 2104) over `parts`, each ended by a newline so that no two lists of
/// parts sign the same bytes.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut message = Vec::new();
    for part in parts {
        message.extend_from_slice(part);
        message.push(b'\n');
    }
    hmac(key, &message)
}

/// HMAC-SHA256 of `message` (RFC 2104; the `hmac` crate would pull a second `sha2`).
fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The key of a Standard Webhooks secret (`whsec_` and base64 of at least 24 bytes).
pub fn webhook_key(secret: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(secret.strip_prefix("whsec_")?.trim_end_matches('='))
        .ok()?;
    (key.len() >= 24).then_some(key)
}

/// The `webhook-signature` header of a delivery (Standard Webhooks): `v1,` and the base64
/// HMAC-SHA256 of `id.timestamp.body`.
pub fn sign_webhook(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    use base64::Engine;
    let mut message = format!("{id}.{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(hmac(key, &message))
    )
}

/// How long a hop header is good for, either side of its time (the nodes' clocks may
/// differ a little): a header seen later is refused.
pub const HOP_VALIDITY: Duration = Duration::from_secs(15);

/// What a checked hop header says: another node of the cluster sent the request on, for
/// this tenant (`None`: the client sent no valid API key; a token in the URL may still
/// open a session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub tenant: Option<Tenant>,
}

/// The cluster secret (`cluster_secret`): the nodes prove with it that a node record in
/// Redis, or a request sent on from another node, is a node's of this cluster. It never
/// leaves the nodes' configuration.
pub struct ClusterKey {
    secret: Vec<u8>,
}

impl ClusterKey {
    pub fn new(secret: &str) -> ClusterKey {
        ClusterKey {
            secret: secret.as_bytes().to_vec(),
        }
    }

    /// The secret that signs connection tokens, derived from the cluster secret: the same
    /// on every node, and not kept anywhere.
    pub fn token_secret(&self) -> String {
        hex(&hmac_sha256(&self.secret, &[b"cdpgate token secret v1"]))
    }

    /// An MCP session id that every node of the cluster takes for `tenant`'s: a random
    /// part and its signature (hex), so that a client behind a load balancer without
    /// sticky sessions keeps its MCP session whichever node it reaches.
    pub fn mcp_session_id(&self, tenant: &Tenant) -> String {
        let nonce = random_hex(8);
        let mac = self.mcp_mac(tenant, &nonce);
        format!("{nonce}{mac}")
    }

    /// Whether `id` is an [`Self::mcp_session_id`] of `tenant`'s.
    pub fn is_mcp_session_id(&self, tenant: &Tenant, id: &str) -> bool {
        id.len() == 48 && id.is_char_boundary(16) && constant_time_eq_str(&self.mcp_mac(tenant, &id[..16]), &id[16..])
    }

    fn mcp_mac(&self, tenant: &Tenant, nonce: &str) -> String {
        let mac = hmac_sha256(
            &self.secret,
            &[b"cdpgate mcp session v1", tenant.0.as_bytes(), nonce.as_bytes()],
        );
        hex(&mac[..16])
    }

    /// The signature of a node's record: its id, address, load and heartbeat time.
    pub fn sign_node(&self, fields: &[&str]) -> String {
        let mut parts: Vec<&[u8]> = vec![b"cdpgate node v1"];
        parts.extend(fields.iter().map(|f| f.as_bytes()));
        hex(&hmac_sha256(&self.secret, &parts))
    }

    /// Whether `signature` is [`Self::sign_node`]'s for `fields`.
    pub fn verify_node(&self, fields: &[&str], signature: &str) -> bool {
        constant_time_eq_str(&self.sign_node(fields), signature)
    }

    /// The `x-cdpgate-hop` header of a request sent on to another node: the method, path
    /// and query, tenant and time, signed.
    pub fn sign_hop(&self, method: &str, target: &str, tenant: Option<&Tenant>, at: SystemTime) -> String {
        let tenant = tenant.map_or_else(|| "-".to_owned(), Tenant::to_string);
        let ms = unix_millis(at).to_string();
        let mac = hmac_sha256(
            &self.secret,
            &[
                b"cdpgate hop v1",
                method.as_bytes(),
                target.as_bytes(),
                tenant.as_bytes(),
                ms.as_bytes(),
            ],
        );
        format!("v1.{ms}.{tenant}.{}", hex(&mac))
    }

    /// Checks a hop header for this method and target at `now`: signed with this cluster's
    /// secret, and within [`HOP_VALIDITY`] of its time.
    pub fn verify_hop(&self, header: &str, method: &str, target: &str, now: SystemTime) -> Option<Hop> {
        let mut fields = header.split('.');
        let (Some("v1"), Some(ms), Some(tenant), Some(mac), None) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return None;
        };
        let at: u64 = ms.parse().ok()?;
        let expected = hex(&hmac_sha256(
            &self.secret,
            &[
                b"cdpgate hop v1",
                method.as_bytes(),
                target.as_bytes(),
                tenant.as_bytes(),
                ms.as_bytes(),
            ],
        ));
        if !constant_time_eq_str(&expected, mac) {
            return None;
        }
        let now = unix_millis(now);
        if now.abs_diff(at) > HOP_VALIDITY.as_millis() as u64 {
            return None;
        }
        Some(Hop {
            tenant: (tenant != "-").then(|| Tenant::from_id(tenant)),
        })
    }
}

fn constant_time_eq_str(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
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

impl TokenError {
    /// A missing, bad or misused token is the client's.
    pub fn origin(&self) -> Origin {
        Origin::Client
    }
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

    #[test]
    fn hop_headers_node_records_and_the_derived_token_secret() {
        let key = ClusterKey::new("a-cluster-secret-of-32-characters!!");
        let now = SystemTime::now();
        let tenant = Tenant::from_id("t_0011223344556677");
        let header = key.sign_hop("POST", "/public/sessions?x=1", Some(&tenant), now);
        assert_eq!(
            key.verify_hop(&header, "POST", "/public/sessions?x=1", now),
            Some(Hop {
                tenant: Some(tenant.clone())
            })
        );
        // Another method or path, another secret, a late or early header, a changed tenant: refused.
        assert_eq!(key.verify_hop(&header, "DELETE", "/public/sessions?x=1", now), None);
        assert_eq!(key.verify_hop(&header, "POST", "/public/sessions", now), None);
        let other = ClusterKey::new("another-secret-of-32-characters!!!!");
        assert_eq!(other.verify_hop(&header, "POST", "/public/sessions?x=1", now), None);
        assert_eq!(
            key.verify_hop(
                &header,
                "POST",
                "/public/sessions?x=1",
                now + HOP_VALIDITY + Duration::from_secs(1)
            ),
            None
        );
        let early = key.sign_hop("POST", "/p", None, now + Duration::from_secs(60));
        assert_eq!(key.verify_hop(&early, "POST", "/p", now), None);
        let swapped = header.replace("t_0011223344556677", "t_ffffffffffffffff");
        assert_eq!(key.verify_hop(&swapped, "POST", "/public/sessions?x=1", now), None);
        assert_eq!(key.verify_hop("1", "POST", "/public/sessions?x=1", now), None);
        let anonymous = key.sign_hop("GET", "/devtools/browser/s", None, now);
        assert_eq!(
            key.verify_hop(&anonymous, "GET", "/devtools/browser/s", now),
            Some(Hop { tenant: None })
        );
        // Node records and the derived token secret.
        let sig = key.sign_node(&["node-a", "http://10.0.0.1:3000", "5"]);
        assert!(key.verify_node(&["node-a", "http://10.0.0.1:3000", "5"], &sig));
        assert!(!key.verify_node(&["node-a", "http://10.0.0.9:3000", "5"], &sig));
        assert!(!other.verify_node(&["node-a", "http://10.0.0.1:3000", "5"], &sig));
        assert_eq!(
            key.token_secret(),
            ClusterKey::new("a-cluster-secret-of-32-characters!!").token_secret()
        );
        assert_ne!(key.token_secret(), other.token_secret());
        assert!(!key.token_secret().contains("a-cluster-secret"));
    }

    #[test]
    fn an_mcp_session_id_is_the_tenants_of_this_cluster_only() {
        let key = ClusterKey::new("a-cluster-secret-of-32-characters!!");
        let (a, b) = (Tenant::from_id("a"), Tenant::from_id("b"));
        let id = key.mcp_session_id(&a);
        assert!(key.is_mcp_session_id(&a, &id));
        assert_ne!(id, key.mcp_session_id(&a), "each is new");
        assert!(!key.is_mcp_session_id(&b, &id));
        assert!(!ClusterKey::new("another-cluster-secret-32-chars!!!").is_mcp_session_id(&a, &id));
        for bad in [&id[..47], "", "é".repeat(24).as_str(), &format!("{}0", &id[..47])] {
            assert!(bad == id || !key.is_mcp_session_id(&a, bad), "{bad}");
        }
    }

    #[test]
    fn hmac_sha256_known_answers() {
        // RFC 4231, test cases 2 and 6 (a key longer than a block).
        assert_eq!(
            hex(&hmac(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let long_key = [0xaau8; 131];
        assert_eq!(
            hex(&hmac(
                &long_key,
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
        assert_eq!(hmac_sha256(b"Jefe", &[b"a", b"b"]), hmac(b"Jefe", b"a\nb\n"));
    }

    #[test]
    fn webhook_signatures_are_the_standard_ones() {
        // The example of the Standard Webhooks specification.
        let key = webhook_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign_webhook(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(webhook_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_none());
        assert!(webhook_key("whsec_c2hvcnQ=").is_none());
    }
}
