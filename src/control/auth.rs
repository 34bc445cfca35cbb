//! Bearer tokens and roles. Tokens come from the environment or files (or, for local use
//! only, the YAML itself), are resolved again whenever the config version changes, and are
//! held only as SHA-256 digests: a presented token is hashed and compared with every
//! principal's digest in constant time, so neither its value nor its length leaks through
//! timing.

use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::config::{Config, RawToken};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "viewer" => Some(Self::Viewer),
            "operator" => Some(Self::Operator),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// Who made a call: a token's name and role, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

struct Principal {
    caller: Caller,
    digest: [u8; 32],
}

/// The principals of one config version.
#[derive(Default)]
pub struct Tokens {
    resolved: Mutex<Option<(u64, Arc<[Principal]>)>>,
}

/// Why a call was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization: Bearer` header, or a token nobody has: 401.
    Unknown,
    /// A known token with too low a role: 403.
    Forbidden,
}

impl Tokens {
    /// The caller presenting `authorization` (the value of the `Authorization` header).
    pub fn authenticate(&self, config: &Config, version: u64, authorization: Option<&[u8]>) -> Result<Caller, Denied> {
        let token = authorization.and_then(bearer);
        let token = token.ok_or(Denied::Unknown)?;
        let digest: [u8; 32] = Sha256::digest(token).into();
        let principals = self.principals(config, version);
        // Every digest is compared, whatever matched before it.
        let mut found = None;
        for principal in principals.iter() {
            if constant_time_eq(&principal.digest, &digest) {
                found = Some(principal.caller.clone());
            }
        }
        found.ok_or(Denied::Unknown)
    }

    fn principals(&self, config: &Config, version: u64) -> Arc<[Principal]> {
        let mut resolved = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        match &*resolved {
            Some((v, principals)) if *v == version => principals.clone(),
            _ => {
                let tokens = config.raw.admin.as_ref().map_or(&[][..], |a| &a.tokens[..]);
                let principals: Arc<[Principal]> = tokens.iter().filter_map(resolve).collect();
                *resolved = Some((version, principals.clone()));
                principals
            }
        }
    }
}

impl Caller {
    pub fn require(&self, needed: Role) -> Result<(), Denied> {
        if self.role >= needed {
            Ok(())
        } else {
            Err(Denied::Forbidden)
        }
    }
}

/// Reads one token from where the config says it is. Failures are logged by name and
/// source, never with a value.
fn resolve(raw: &RawToken) -> Option<Principal> {
    let role = Role::parse(&raw.role)?;
    let value = match crate::config::tokens::read(raw) {
        Ok(value) => value,
        Err(why) => {
            tracing::error!(token = %raw.name, problem = %why, "token cannot be read: this principal cannot call the API");
            return None;
        }
    };
    if raw.token.is_some() {
        tracing::warn!(token = %raw.name, "token written in the config file: fine for local use, use token_env or token_file elsewhere");
    }
    Some(Principal { caller: Caller { name: raw.name.clone(), role }, digest: Sha256::digest(value.as_bytes()).into() })
}

/// The token of an `Authorization: Bearer TOKEN` value. The scheme is case-insensitive
/// (RFC 9110 §11.1) and may be followed by more than one space.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(tokens: &str) -> Config {
        crate::config::parse(&format!(
            "service: s\nlisten: 127.0.0.1:0\nupstream: http://127.0.0.1:1\nadmin:\n  tokens:\n{tokens}"
        ))
        .unwrap()
    }

    #[test]
    fn tokens_from_env_file_and_yaml_with_roles() {
        let dir = std::env::temp_dir().join(format!("sluice-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("viewer.token");
        std::fs::write(&file, "view-secret\n").unwrap();
        std::env::set_var("SLUICE_TEST_AUTH_ADMIN", "admin-secret");
        let config = config(&format!(
            "    - {{ name: cp, role: admin, token_env: SLUICE_TEST_AUTH_ADMIN }}\n    - {{ name: graf, role: viewer, token_file: {} }}\n    - {{ name: ops, role: operator, token: op-secret }}\n    - {{ name: nobody, role: admin, token_env: SLUICE_TEST_AUTH_UNSET }}\n",
            file.display()
        ));
        let tokens = Tokens::default();
        let auth = |h: &str| tokens.authenticate(&config, 1, Some(h.as_bytes()));
        assert_eq!(auth("Bearer admin-secret"), Ok(Caller { name: "cp".into(), role: Role::Admin }));
        for scheme in ["bearer admin-secret", "BEARER admin-secret", "Bearer  admin-secret", "bEaReR admin-secret "] {
            assert_eq!(auth(scheme).map(|c| c.name), Ok("cp".into()), "{scheme}");
        }
        assert_eq!(auth("Bearer view-secret"), Ok(Caller { name: "graf".into(), role: Role::Viewer }));
        assert_eq!(auth("Bearer op-secret").unwrap().role, Role::Operator);
        for bad in [
            "Bearer nope",
            "Bearer ",
            "admin-secret",
            "Basic admin-secret",
            "Bearer admin-secret2",
            "Beareradmin-secret",
            "Bearer",
        ] {
            assert_eq!(auth(bad), Err(Denied::Unknown), "{bad}");
        }
        assert_eq!(tokens.authenticate(&config, 1, None), Err(Denied::Unknown));
        let viewer = auth("Bearer view-secret").unwrap();
        assert_eq!(viewer.require(Role::Viewer), Ok(()));
        assert_eq!(viewer.require(Role::Operator), Err(Denied::Forbidden));
        assert_eq!(auth("Bearer op-secret").unwrap().require(Role::Admin), Err(Denied::Forbidden));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
