//! Bearer-token authentication and authorisation of every route but `/health` and `/ready`.
//!
//! A token is configured by its SHA-256 only. A request's token is hashed and compared with
//! every configured hash in constant time (no early exit, whatever matches or not), and
//! neither the token nor its hash is ever logged: logs name the token by its configured name.
//! Each route needs one scope (ingest, read or admin) and, when it names a partition,
//! that partition among the token's.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, Error};
use sha2::{Digest, Sha256};

use super::problem::Problem;
use crate::config::{AuthConfig, Scope, Token};

/// What a route requires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement<'a> {
    pub scope: Scope,
    /// The partition the route names, if any; `None` on routes that span partitions.
    pub partition: Option<&'a str>,
}

/// `path` with every `%XX` escape decoded. The router decodes most escapes before it
/// matches, so the decision must be taken on the decoded path, or `/v1/%61dmin/…` would
/// pass as a read route.
pub fn decode(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains('%') {
        return std::borrow::Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    std::borrow::Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The scope and partition a request needs; `None` for the open routes. Anything that
/// is not a read needs the admin scope, unless it is ingest into a named partition.
pub fn requirement<'a>(method: &Method, path: &'a str) -> Option<Requirement<'a>> {
    if path == "/health" || path == "/ready" {
        return None;
    }
    let partition = path
        .strip_prefix("/v1/partitions/")
        .and_then(|rest| rest.split('/').next())
        .filter(|p| !p.is_empty());
    let scope = if path.starts_with("/v1/admin/") {
        Scope::Admin
    } else if *method == Method::POST && partition.is_some() && path.ends_with("/usage") {
        Scope::Ingest
    } else if *method == Method::GET || *method == Method::HEAD {
        Scope::Read
    } else {
        Scope::Admin
    };
    Some(Requirement { scope, partition })
}

/// Equality of two hashes that takes the same time wherever they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The configured token whose hash is the hash of `presented`, looked up in constant time.
pub fn find<'t>(auth: &'t AuthConfig, presented: &str) -> Option<&'t Token> {
    let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let mut found = None;
    for token in &auth.tokens {
        if same(&token.hash, &hash) {
            found = Some(token);
        }
    }
    found
}

/// Whether `token` may do what `need` requires.
pub fn allows(token: &Token, need: &Requirement<'_>) -> Result<(), String> {
    if !token.scopes.contains(&need.scope) {
        return Err(format!(
            "token {:?} lacks the {:?} scope this route needs",
            token.name, need.scope
        ));
    }
    match (&token.partitions, need.partition) {
        (None, _) => Ok(()),
        (Some(_), None) if need.scope == Scope::Admin => Err(format!(
            "token {:?} is limited to some partitions; this route spans them all",
            token.name
        )),
        (Some(_), None) => Ok(()),
        (Some(allowed), Some(p)) if allowed.iter().any(|a| a == p) => Ok(()),
        (Some(_), Some(p)) => Err(format!("token {:?} may not touch partition {p:?}", token.name)),
    }
}

/// The middleware.
pub async fn check(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let auth = req.app_data::<web::Data<AuthConfig>>().cloned();
    if let Some(auth) = auth.filter(|a| a.enabled) {
        let path = decode(req.path()).into_owned();
        if let Some(need) = requirement(req.method(), &path) {
            let presented = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim());
            let Some(presented) = presented else {
                return Err(Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "Unauthorized",
                    "send a token: Authorization: Bearer <token>",
                )
                .into());
            };
            let Some(token) = find(&auth, presented) else {
                tracing::warn!(path = req.path(), "request with an unknown token refused");
                return Err(Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "Unauthorized",
                    "the token is not known",
                )
                .into());
            };
            if let Err(why) = allows(token, &need) {
                tracing::warn!(token = %token.name, path = req.path(), "request outside the token's grant refused");
                return Err(Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", why).into());
            }
        }
    }
    next.call(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(scopes: &[Scope], partitions: Option<&[&str]>) -> Token {
        Token {
            name: "t".into(),
            hash: Sha256::digest(b"secret").into(),
            scopes: scopes.to_vec(),
            partitions: partitions.map(|p| p.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn routes_need_the_right_scope() {
        let need = |m: Method, p: &'static str| requirement(&m, p).map(|r| (r.scope, r.partition));
        assert_eq!(need(Method::GET, "/health"), None);
        assert_eq!(
            need(Method::POST, "/v1/partitions/aws/usage"),
            Some((Scope::Ingest, Some("aws")))
        );
        assert_eq!(
            need(Method::GET, "/v1/partitions/aws/customers/acme/bill"),
            Some((Scope::Read, Some("aws")))
        );
        assert_eq!(
            need(Method::PUT, "/v1/partitions/aws/catalog"),
            Some((Scope::Admin, Some("aws")))
        );
        assert_eq!(
            need(Method::GET, "/v1/admin/segments"),
            Some((Scope::Admin, None))
        );
        assert_eq!(need(Method::GET, "/metrics"), Some((Scope::Read, None)));
    }

    #[test]
    fn escaped_paths_are_judged_as_the_router_sees_them() {
        let decoded = decode("/v1/%61dmin/dead-letters");
        assert_eq!(decoded, "/v1/admin/dead-letters");
        let need = requirement(&Method::GET, &decoded).unwrap();
        assert_eq!(need.scope, Scope::Admin);
        let decoded = decode("/v1/p%61rtitions/aws-cn/customers/acme/bill");
        let need = requirement(&Method::GET, &decoded).unwrap();
        assert_eq!(need.partition, Some("aws-cn"));
        assert_eq!(decode("/a%2"), "/a%2", "a truncated escape stays as it is");
    }

    #[test]
    fn tokens_are_found_by_hash_and_checked_by_scope_and_partition() {
        let auth = AuthConfig {
            enabled: true,
            tokens: vec![token(&[Scope::Ingest], Some(&["aws"]))],
        };
        assert!(find(&auth, "secret").is_some());
        assert!(find(&auth, "secreT").is_none());
        let t = &auth.tokens[0];
        let ingest_aws = Requirement {
            scope: Scope::Ingest,
            partition: Some("aws"),
        };
        assert!(allows(t, &ingest_aws).is_ok());
        let ingest_cn = Requirement {
            scope: Scope::Ingest,
            partition: Some("aws-cn"),
        };
        assert!(allows(t, &ingest_cn).unwrap_err().contains("aws-cn"));
        let read = Requirement {
            scope: Scope::Read,
            partition: Some("aws"),
        };
        assert!(allows(t, &read).unwrap_err().contains("Read"));
    }
}
