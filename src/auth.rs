//! Who is asking: the admin or one project.
//!
//! A request on the unix socket without a token comes from the socket's
//! owner or group and is the admin's: it sees and changes everything. A
//! request with `Authorization: Bearer TOKEN` is its token's project's,
//! on the unix socket and on the TCP listener alike; the TCP listener never
//! grants admin, so there a request without a valid token is refused (401).
//!
//! [`authenticate`] resolves the [`Caller`] once per request (a layer in
//! front of every route); handlers take it as an extractor and use it to
//! force the project of what they look up or list ([`Caller::project`],
//! [`Caller::scope`]). A project's caller asking for another project's
//! object gets the same 404 as for one that does not exist: the answer
//! never tells that something of another project exists.
//!
//! Tokens are `lyt_` and 64 hex digits (256 random bits); the store keeps
//! only their SHA-256 ([`hash`]).

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::api::{error_response, Shared};
use crate::engine::EngineError;
use crate::model::{Mode, NetworkSpec, PortSpec, DEFAULT_PROJECT};

/// The prefix of every token, so that one pasted in a log or a repository
/// is recognisable (and secret scanners can match it).
pub const TOKEN_PREFIX: &str = "lyt_";

/// A project's access token as stored: never the secret, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Token {
    /// Short random id, to list and delete it by.
    pub id: String,
    /// The project it acts for.
    pub project: String,
    /// A label for people (may be empty).
    pub name: String,
    /// [`hash`] of the secret.
    #[serde(skip_serializing)]
    pub hash: String,
    /// Unix time it was made.
    pub created: u64,
}

/// `POST /v1/projects/{name}/tokens`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "ci"}))]
pub struct TokenSpec {
    /// A label for people.
    #[serde(default)]
    pub name: Option<String>,
}

/// A token just made: the only answer that ever holds its secret.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewToken {
    /// The stored record.
    #[serde(flatten)]
    pub token: Token,
    /// The bearer token itself: shown once, stored nowhere.
    #[serde(rename = "token")]
    pub secret: String,
}

/// The longest token label, in bytes.
pub const LABEL_MAX: usize = 64;

/// A new random token: `lyt_` and 32 bytes from the OS's CSPRNG in hex.
pub fn generate() -> Result<String, EngineError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| EngineError::Internal("the system's random source failed".into()))?;
    Ok(format!("{TOKEN_PREFIX}{}", hex(&bytes)))
}

/// The stored form of a token: SHA-256 in hex.
///
/// A fast, unsalted hash is enough here because every token is 256 random
/// bits made by [`generate`]: there is no dictionary to try and no
/// brute-forcing 2^256 candidates, so a slow password hash (argon2, bcrypt)
/// would only slow down every request. Equal tokens hash alike, which is
/// what lets the store find a token by its hash.
pub fn hash(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `text` has the shape of a token (before any lookup).
pub fn well_formed(text: &str) -> bool {
    text.strip_prefix(TOKEN_PREFIX).is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Checks a token label: at most [`LABEL_MAX`] bytes, no control characters.
pub fn validate_label(label: &str) -> Result<(), crate::model::ModelError> {
    let invalid =
        |why: &str| crate::model::ModelError::Invalid { what: "token name", value: label.into(), why: why.into() };
    if label.len() > LABEL_MAX {
        return Err(invalid(&format!("is longer than {LABEL_MAX} bytes")));
    }
    if label.chars().any(char::is_control) {
        return Err(invalid("contains a control character"));
    }
    Ok(())
}

/// Where a request came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The unix socket: no token means the admin.
    Unix,
    /// The TLS listener: every request needs a project's token.
    Tcp,
}

/// Who a request acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The socket's owner or group: everything.
    Admin,
    /// A token's project: that project's objects only.
    Project(String),
}

/// A request refused for who sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// No token where one is needed, or one that is no token (401).
    #[error("{0}")]
    Unauthorized(String),
    /// An operation for the admin alone (403).
    #[error("{0}")]
    Forbidden(String),
}

impl IntoResponse for AccessError {
    fn into_response(self) -> Response {
        match self {
            AccessError::Unauthorized(m) => {
                let mut r = error_response(StatusCode::UNAUTHORIZED, "unauthorized", &m);
                r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                r
            }
            AccessError::Forbidden(m) => error_response(StatusCode::FORBIDDEN, "forbidden", &m),
        }
    }
}

impl Caller {
    /// The project a request means: `asked` (`?project=` or a body's
    /// `project`), by default the default project, or the token's. A
    /// project's caller naming another project gets exactly the error of a
    /// project that does not exist.
    pub fn project(&self, asked: Option<&str>) -> Result<String, EngineError> {
        match (self, asked) {
            (Caller::Admin, a) => Ok(a.unwrap_or(DEFAULT_PROJECT).to_string()),
            (Caller::Project(own), None) => Ok(own.clone()),
            (Caller::Project(own), Some(a)) if a == own => Ok(own.clone()),
            (Caller::Project(_), Some(a)) => {
                crate::model::validate_project_name(a)?;
                Err(crate::engine::projects::no_such_project(a))
            }
        }
    }

    /// The projects a listing covers: for the admin `asked` (None: all),
    /// for a project its own (naming another is [`Caller::project`]'s 404).
    pub fn scope(&self, asked: Option<&str>) -> Result<Option<String>, EngineError> {
        match self {
            Caller::Admin => Ok(asked.map(String::from)),
            Caller::Project(_) => self.project(asked).map(Some),
        }
    }

    /// Refuses an operation that only the admin may do.
    pub fn admin_only(&self, what: &str) -> Result<(), AccessError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Project(p) => Err(AccessError::Forbidden(format!(
                "{what} is for the admin only, not for project {p:?}'s token (use the unix socket without a token)"
            ))),
        }
    }

    /// Refuses the network kinds only the admin may create (they reach
    /// the host's own interfaces or leave the firewall to the host): flat
    /// and flatdhcp managers, bridge and open modes, an uplink, a VLAN.
    pub fn check_network_spec(&self, spec: &NetworkSpec) -> Result<(), AccessError> {
        if *self == Caller::Admin {
            return Ok(());
        }
        let kind = if let Some(m) = &spec.manager {
            format!("a --manager {m} network")
        } else if matches!(spec.mode(), Ok(Mode::Bridge)) {
            "a bridge-mode network".into()
        } else if matches!(spec.mode(), Ok(Mode::Open)) {
            "an open-mode network".into()
        } else if spec.uplink.is_some() {
            "a network with an uplink".into()
        } else if spec.vlan.is_some() {
            "a VLAN network".into()
        } else {
            return Ok(());
        };
        self.admin_only(&format!("creating {kind} (flat, flatdhcp, bridge, open, --uplink, --vlan)"))
    }
}

impl Caller {
    /// Refuses the port options only the admin may use: switching
    /// anti-spoofing off (a project's guest could then pose as another
    /// project's) and adopting an existing interface of the host.
    pub fn check_port_spec(&self, spec: &PortSpec) -> Result<(), AccessError> {
        if *self == Caller::Admin {
            return Ok(());
        }
        if spec.spoof_check == Some(false) {
            return self.admin_only("a port without anti-spoofing (--no-spoof-check)");
        }
        if spec.adopt.is_some() {
            return self.admin_only("adopting an existing interface as a port");
        }
        // A PID names any process's namespace, the host's own too.
        if spec.netns.as_deref().is_some_and(|ns| crate::model::netns_is_process(&crate::model::netns_reference(ns))) {
            return self.admin_only("a port in a process's namespace (--netns PID or /proc/PID/ns/net)");
        }
        Ok(())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        // [`authenticate`] runs in front of every route; a request it did
        // not see is nobody's.
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| AccessError::Unauthorized("the request was not authenticated".into()).into_response())
    }
}

/// The layer that resolves the [`Caller`] of every request (state: the
/// engine and where requests come in), refusing with 401 a token that is
/// malformed or unknown and, on TCP, a request without one.
pub async fn authenticate(
    State((shared, transport)): State<(Shared, Transport)>,
    mut req: Request,
    next: Next,
) -> Response {
    match resolve(&shared, transport, req.headers().get(header::AUTHORIZATION)).await {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(r) => r,
    }
}

async fn resolve(shared: &Shared, transport: Transport, value: Option<&HeaderValue>) -> Result<Caller, Response> {
    let unauthorized = |m: &str| AccessError::Unauthorized(m.into()).into_response();
    let Some(value) = value else {
        return match transport {
            Transport::Unix => Ok(Caller::Admin),
            Transport::Tcp => Err(unauthorized(
                "this listener needs a project token: send Authorization: Bearer TOKEN (the CLI: --token or LANYARD_TOKEN)",
            )),
        };
    };
    let text = value.to_str().unwrap_or("");
    let token = match text.split_once(' ') {
        Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
        _ => return Err(unauthorized("the Authorization header is not \"Bearer TOKEN\"")),
    };
    if !well_formed(token) {
        return Err(unauthorized("invalid token: a lanyard token is lyt_ and 64 hex digits"));
    }
    let hashed = hash(token);
    let shared = shared.clone();
    let found = tokio::task::spawn_blocking(move || {
        let engine = shared.lock().unwrap_or_else(|p| p.into_inner());
        engine.token_project(&hashed)
    })
    .await
    .unwrap_or_else(|e| Err(EngineError::Internal(format!("the request did not complete: {e}"))))
    .map_err(|e| crate::api::ApiError(e).into_response())?;
    match found {
        Some(project) => Ok(Caller::Project(project)),
        None => Err(unauthorized("invalid token: it is no project's token (deleted, or never made)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, b) = (generate().unwrap(), generate().unwrap());
        assert_ne!(a, b);
        assert!(well_formed(&a) && well_formed(&b), "{a}");
        assert_eq!(hash(&a), hash(&a));
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(!well_formed("lyt_xyz") && !well_formed(&a[1..]) && !well_formed(&format!("{a}0")));
    }

    #[test]
    fn a_project_names_only_its_own() {
        let red = Caller::Project("red".into());
        assert_eq!(red.project(None).unwrap(), "red");
        assert_eq!(red.project(Some("red")).unwrap(), "red");
        let other = red.project(Some("blue")).unwrap_err().to_string();
        let missing = crate::engine::projects::no_such_project("blue").to_string();
        assert_eq!(other, missing);
        assert!(matches!(red.project(Some("-x")), Err(EngineError::Invalid(_))));
        assert_eq!(Caller::Admin.project(None).unwrap(), DEFAULT_PROJECT);
        assert_eq!(Caller::Admin.scope(None).unwrap(), None);
        assert_eq!(red.scope(None).unwrap(), Some("red".into()));
        assert!(red.admin_only("x").is_err() && Caller::Admin.admin_only("x").is_ok());
    }
}
