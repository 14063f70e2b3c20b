//! API authentication: the tokens as configured (by their SHA-256) and as checked.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError, Settings};

/// What a bearer token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Send usage.
    Ingest,
    /// Read partitions, catalogs, customers, bills, metrics.
    Read,
    /// Change catalogs and customers; the admin routes.
    Admin,
}

/// API authentication: bearer tokens, configured by the SHA-256 of the token.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// With auth off every request is allowed; tallyd then refuses a non-loopback address.
    pub enabled: bool,
    #[serde(default)]
    pub tokens: Vec<TokenSettings>,
}

/// One token: never the token itself, only its SHA-256 (hex), what it may do and where.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSettings {
    /// A name for logs (the token itself is never logged).
    pub name: String,
    /// `sha256sum` of the token, 64 hex digits: `printf %s "$TOKEN" | sha256sum`.
    pub sha256: String,
    pub scopes: Vec<Scope>,
    /// Partitions it may touch; `["*"]` for all.
    pub partitions: Vec<String>,
}

/// A checked token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub name: String,
    pub hash: [u8; 32],
    pub scopes: Vec<Scope>,
    /// `None`: every partition.
    pub partitions: Option<Vec<String>>,
}

/// Checked authentication settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthConfig {
    pub enabled: bool,
    pub tokens: Vec<Token>,
}

impl Settings {
    pub(super) fn validate_auth(&self, listen: &SocketAddr) -> Result<AuthConfig, ConfigError> {
        let a = &self.auth;
        if !a.enabled && !listen.ip().is_loopback() {
            return Err(invalid(
                "auth.enabled",
                format!(
                    "is false, but server.listen {listen} is not a loopback address: refusing to serve \
                     an unauthenticated API to the network; enable auth and configure tokens"
                ),
            ));
        }
        if a.enabled && a.tokens.is_empty() {
            return Err(invalid(
                "auth.tokens",
                "auth is enabled but no token is configured",
            ));
        }
        let known: Vec<&str> = self.partitions.iter().map(|p| p.id.as_str()).collect();
        let mut tokens = Vec::with_capacity(a.tokens.len());
        for (i, t) in a.tokens.iter().enumerate() {
            let key = |f: &str| format!("auth.tokens[{i}].{f}");
            let hex = t.sha256.trim();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(
                    key("sha256"),
                    "must be the 64 hex digits of the token's SHA-256 (printf %s \"$TOKEN\" | sha256sum), never the token itself",
                ));
            }
            let mut hash = [0u8; 32];
            for (j, byte) in hash.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&hex[2 * j..2 * j + 2], 16).expect("checked hex");
            }
            if tokens.iter().any(|o: &Token| o.hash == hash) {
                return Err(invalid(key("sha256"), "the same token is configured twice"));
            }
            if t.scopes.is_empty() {
                return Err(invalid(
                    key("scopes"),
                    "must list at least one of ingest, read, admin",
                ));
            }
            let partitions = if t.partitions.iter().any(|p| p == "*") {
                None
            } else {
                for p in &t.partitions {
                    if !known.contains(&p.as_str()) {
                        return Err(invalid(key("partitions"), format!("unknown partition {p:?}")));
                    }
                }
                if t.partitions.is_empty() {
                    return Err(invalid(
                        key("partitions"),
                        "must list partitions, or [\"*\"] for all",
                    ));
                }
                Some(t.partitions.clone())
            };
            tokens.push(Token {
                name: t.name.clone(),
                hash,
                scopes: t.scopes.clone(),
                partitions,
            });
        }
        Ok(AuthConfig {
            enabled: a.enabled,
            tokens,
        })
    }
}
