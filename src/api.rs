//! The daemon's REST API (JSON over a unix socket).
//!
//! Handlers are thin: they move the request onto a blocking thread, call the
//! [`Engine`] under its lock, and turn [`EngineError`] into a status code and
//! a one-line JSON error the CLI prints as is.
//!
//! Every error the API answers is an [`ErrorBody`] `{"error", "kind"}`,
//! also when the request never reaches a handler: a body that is not JSON,
//! has wrong types or unknown fields, lacks the JSON content type or is
//! larger than [`BODY_LIMIT`] ([`JsonBody`]); an unknown path ([`not_found`]);
//! a wrong method or any other refusal axum makes itself ([`json_errors`]).

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::auth::{Caller, TokenSpec, Transport};
use crate::cloudinit::Format;
use crate::daemon::cluster::Nodes;
use crate::engine::{Engine, EngineError};
use crate::model::floating::{FipPoolSpec, FipSpec};
use crate::model::grants::GrantSpec;
use crate::model::{ModelError, NetworkSpec, PortSpec, ProjectSpec};
use crate::store::StoreError;

/// Shared daemon state.
pub type Shared = Arc<Mutex<Engine>>;

/// The largest request body the API reads: 4 MiB, a `POST /v1/ports/batch`
/// of some 20,000 fully spelt-out port specs. Larger requests are refused
/// with 413 before they are parsed; split such a batch.
pub const BODY_LIMIT: usize = 4 * 1024 * 1024;

/// The body of every error response.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// One line: what was wrong and what to do.
    pub error: String,
    /// invalid | conflict | not_found | internal
    pub kind: String,
}

/// The longest error message, in bytes; longer ones (a message that
/// quotes a 10,000-byte name) lose their middle.
pub const MESSAGE_MAX: usize = 512;

/// An error response: `status` with an [`ErrorBody`] of one line of at
/// most [`MESSAGE_MAX`] bytes.
pub fn error_response(status: StatusCode, kind: &str, message: &str) -> Response {
    let one_line = message.split(['\r', '\n']).map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
    (status, Json(ErrorBody { error: elide(&one_line, MESSAGE_MAX), kind: kind.into() })).into_response()
}

/// `s` if it has at most `max` bytes; else its start and its end (where
/// messages say what to do) around a note of what was left out.
fn elide(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    // " [... N bytes ...] " is 17 bytes and N's digits: under 32 for any N
    // a request can cause.
    let budget = max.saturating_sub(32);
    let head = (0..=budget * 2 / 3).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
    let tail = (s.len() - (budget - budget * 2 / 3)..=s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(s.len());
    format!("{} [... {} bytes ...] {}", &s[..head], tail - head, &s[tail..])
}

/// The error kind of a status the engine did not choose.
fn kind_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::CONFLICT => "conflict",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "invalid",
    }
}

/// An error on its way to the client.
pub struct ApiError(pub EngineError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = match &self.0 {
            EngineError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
            EngineError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            EngineError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            // The cluster store is down: the request may be retried as is.
            EngineError::Store(StoreError::Unavailable { .. }) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            EngineError::Store(StoreError::Exists(_)) => (StatusCode::CONFLICT, "conflict"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("{}", self.0);
        }
        error_response(status, kind, &self.0.to_string())
    }
}

/// A request refused before it reached the engine: status and message,
/// answered as an [`ErrorBody`] of kind `invalid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// 400, 413, 415 or 422.
    pub status: StatusCode,
    /// What was wrong.
    pub message: String,
}

impl Rejection {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Rejection { status, message: message.into() }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        error_response(self.status, "invalid", &self.message)
    }
}

/// A JSON request body, like axum's `Json`, but every refusal is an
/// [`ErrorBody`] whose message says what was wrong: 415 without the JSON
/// content type, 413 over [`BODY_LIMIT`], 400 for text that is not JSON
/// (with line and column), 422 for JSON of the wrong shape (with the path
/// of the field: wrong type, unknown or missing field).
/// Every body but a batch's is one JSON object: serde would also read a
/// struct from an array of its fields in order (`[null, null]` allocated a
/// floating IP, found by schemathesis), which no client means.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Rejection;

    async fn from_request(req: Request, state: &S) -> Result<Self, Rejection> {
        let bytes = body_bytes(req, state).await?;
        check_shape(&bytes, Shape::Object)?;
        decode(&bytes).map(JsonBody)
    }
}

/// A batch body: a JSON array of objects (see [`JsonBody`]).
pub struct JsonBatch<T>(pub Vec<T>);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBatch<T> {
    type Rejection = Rejection;

    async fn from_request(req: Request, state: &S) -> Result<Self, Rejection> {
        let bytes = body_bytes(req, state).await?;
        check_shape(&bytes, Shape::ArrayOfObjects)?;
        decode(&bytes).map(JsonBatch)
    }
}

/// What the top of a request body must be.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Object,
    ArrayOfObjects,
}

/// Refuses (422) a body that is JSON but not of `shape`; text that is not
/// JSON is left to [`decode`], which says where it breaks.
fn check_shape(bytes: &[u8], shape: Shape) -> Result<(), Rejection> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Ok(());
    };
    let wrong =
        |what: &str| Err(Rejection::new(StatusCode::UNPROCESSABLE_ENTITY, format!("invalid request body: {what}")));
    // Other mistakes (a number for an object) serde words well itself.
    match (shape, &value) {
        (Shape::Object, serde_json::Value::Array(_)) => wrong("expected a JSON object, not an array"),
        (Shape::ArrayOfObjects, serde_json::Value::Array(items)) => {
            match items.iter().position(serde_json::Value::is_array) {
                Some(i) => wrong(&format!("[{i}]: expected a JSON object, not an array")),
                None => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

/// The body of a request with the JSON content type, within [`BODY_LIMIT`].
async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, Rejection> {
    check_content_type(req.headers())?;
    let bytes = Bytes::from_request(req, state).await.map_err(|r| {
        let status = r.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!(
                "request body is larger than the API's limit of {} MiB; split a batch into several requests",
                BODY_LIMIT / (1024 * 1024)
            )
        } else {
            format!("cannot read the request body: {}", r.body_text())
        };
        Rejection::new(status, message)
    })?;
    Ok(bytes)
}

fn check_content_type(headers: &HeaderMap) -> Result<(), Rejection> {
    let refuse = |m: String| Err(Rejection::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, m));
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return refuse("missing Content-Type: send the body as application/json".into());
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    let mime = text.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        Ok(())
    } else {
        refuse(format!("Content-Type {:?} is not JSON: send the body as application/json", text.trim()))
    }
}

/// serde_json's message without the " at line L column C" it appends, and
/// with names quoted as JSON does (`unknown field "colour"`) rather than
/// in serde's backticks; values keep no quotes (`integer 5`).
fn bare_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let text = text.strip_suffix(&suffix).unwrap_or(&text);
    if text.starts_with("invalid type") || text.starts_with("invalid value") {
        text.replace('`', "")
    } else {
        text.replace('`', "\"")
    }
}

/// A field path as `ports[2].mac`.
fn path_text(path: &[serde_path_to_error::Segment]) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => out.push_str(if out.is_empty() { "?" } else { ".?" }),
        }
    }
    out
}

/// Parses a request body as `T`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Rejection> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Rejection::new(StatusCode::BAD_REQUEST, "empty request body: send a JSON document"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let (path, e) = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(v) => match de.end() {
            Ok(()) => return Ok(v),
            Err(e) => (Vec::new(), e),
        },
        Err(e) => (e.path().iter().cloned().collect(), e.into_inner()),
    };
    if e.is_data() {
        let message = bare_message(&e);
        // The path of an unknown field ends in the field the message names.
        let keep = if message.starts_with("unknown field") { path.len().saturating_sub(1) } else { path.len() };
        let at = path_text(&path[..keep]);
        let at = if at.is_empty() { at } else { format!("{at}: ") };
        Err(Rejection::new(StatusCode::UNPROCESSABLE_ENTITY, format!("invalid request body: {at}{message}")))
    } else {
        let m = format!("invalid JSON at line {} column {}: {}", e.line(), e.column(), bare_message(&e));
        Err(Rejection::new(StatusCode::BAD_REQUEST, m))
    }
}

/// At most `max` characters of `s`, marked when cut.
fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}... ({} bytes)", &s[..i], s.len()),
        None => s.to_string(),
    }
}

/// The answer for a path no route matches.
pub async fn not_found(method: Method, uri: Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("no API endpoint {method} {} (the API is under /v1/)", shorten(uri.path(), 120)),
    )
}

/// Reads every request's whole body (up to [`BODY_LIMIT`]) before any route
/// or check sees the request. A refusal that comes before a route reads
/// the body (405, 415, 401) otherwise leaves it unread, and hyper then
/// closes the keep-alive connection after the response without saying so:
/// the client's next request on it fails with "connection closed" (found
/// by schemathesis). Too large a body is refused here, with `Connection:
/// close`, since the rest of it is not read.
pub async fn read_whole_body(req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(bytes) => next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await,
        Err(e) => {
            let too_large = e.into_inner().downcast_ref::<http_body_util::LengthLimitError>().is_some();
            let mut response = if too_large {
                error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid",
                    &format!(
                        "request body is larger than the API's limit of {} MiB; split a batch into several requests",
                        BODY_LIMIT / (1024 * 1024)
                    ),
                )
            } else {
                error_response(StatusCode::BAD_REQUEST, "invalid", "cannot read the request body")
            };
            response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
            response
        }
    }
}

/// Turns every error response that is not already an [`ErrorBody`] (axum's
/// own: 405 for a wrong method, a path segment that is not UTF-8, a query
/// it cannot parse...) into one, keeping its status and `Allow` header.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), shorten(req.uri().path(), 120));
    let response = next.run(req).await;
    let status = response.status();
    let is_json =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let allow = parts.headers.get(header::ALLOW).cloned();
    let message = if status == StatusCode::METHOD_NOT_ALLOWED {
        let allowed = allow.as_ref().map(|a| String::from_utf8_lossy(a.as_bytes()).replace(',', ", "));
        format!("method {method} is not allowed on {path}; use {}", allowed.as_deref().unwrap_or("another method"))
    } else {
        let text = axum::body::to_bytes(body, 16 * 1024).await.unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let reason = status.canonical_reason().unwrap_or("error");
        if text.trim().is_empty() {
            format!("{reason}: {method} {path}")
        } else {
            shorten(text.trim(), 300)
        }
    };
    let mut out = error_response(status, kind_of(status), &message);
    if let Some(a) = allow {
        out.headers_mut().insert(header::ALLOW, a);
    }
    out
}

async fn with_engine<T: Send + 'static>(
    state: Shared,
    f: impl FnOnce(&mut Engine) -> Result<T, EngineError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || {
        let mut engine = state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut engine)
    })
    .await
    // A panicked request is a bug, reported as one: never as a conflict.
    .unwrap_or_else(|e| Err(EngineError::Internal(format!("the request did not complete: {e}"))))
    .map_err(ApiError)
}

/// The body of `POST /v1/networks/{name}/autostart`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"enabled": true}))]
pub struct Autostart {
    /// Start the network at boot.
    pub enabled: bool,
}

/// The body of `POST /v1/fips/{ip}/associate`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"port": "web1"}))]
pub struct Associate {
    /// A port id, or the name of a VM with one port.
    pub port: String,
}

/// The body of `POST /v1/projects/{name}/egress`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"egress": "deny"}))]
pub struct Egress {
    /// "allow" or "deny".
    #[schema(pattern = r"^(allow|deny)$")]
    pub egress: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortFilter {
    vm: Option<String>,
    net: Option<String>,
    project: Option<String>,
}

/// The `?project=` of the network routes: the project a network name is
/// looked up in (default the default project); on `GET /v1/networks`, the
/// one project to list (default all).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct InProject {
    project: Option<String>,
}

/// The query of `DELETE /v1/networks/{name}`: `?force=true` deletes a
/// network that has ports, with them.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DeleteNetwork {
    project: Option<String>,
    force: Option<bool>,
}

/// The query of `DELETE /v1/networks/{name}/forwards/{proto}/{host_port}`:
/// `?address=A` names the forward on one address when there are several.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DeleteForward {
    project: Option<String>,
    address: Option<String>,
}

/// Parses a route's query string as `T`; a refusal says what was wrong.
fn query<T: DeserializeOwned>(uri: &Uri) -> Result<T, Rejection> {
    Query::<T>::try_from_uri(uri).map(|Query(q)| q).map_err(|e| {
        let text = e.body_text();
        let why = text.strip_prefix("Failed to deserialize query string: ").unwrap_or(&text);
        Rejection::new(StatusCode::BAD_REQUEST, format!("invalid query string: {}", why.replace('`', "\"")))
    })
}

/// Runs `f` on the key of the network `name` names in the request's
/// project (for a project's caller: its own).
async fn on_network<T: Send + 'static>(
    state: Shared,
    caller: Caller,
    uri: &Uri,
    name: String,
    f: impl FnOnce(&mut Engine, String) -> Result<T, EngineError> + Send + 'static,
) -> Result<T, Response> {
    let q: InProject = query(uri).map_err(IntoResponse::into_response)?;
    with_engine(state, move |e| {
        let project = caller.project(q.project.as_deref())?;
        let key = e.network_key(&project, &name)?;
        f(e, key)
    })
    .await
    .map_err(IntoResponse::into_response)
}

/// The query of `GET /v1/ports/{id}/config`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigQuery {
    format: Option<String>,
}

/// The format a config request names; it must name one.
fn config_format(format: Option<&str>) -> Result<Format, EngineError> {
    let format = format.ok_or_else(|| ModelError::Invalid {
        what: "format",
        value: String::new(),
        why: "name one: ?format=cloud-init".into(),
    })?;
    Ok(format.parse()?)
}

/// A query string axum could not parse, as a 400 [`ErrorBody`].
fn query_rejection(e: axum::extract::rejection::QueryRejection) -> Response {
    let text = e.body_text();
    let why = text.strip_prefix("Failed to deserialize query string: ").unwrap_or(&text);
    Rejection::new(StatusCode::BAD_REQUEST, format!("invalid query string: {}", why.replace('`', "\""))).into_response()
}

/// A [`Response`] of an engine error.
fn engine_err(e: EngineError) -> Response {
    ApiError(e).into_response()
}

/// Runs `f` on the engine for an admin-only operation `what`.
async fn admin<T: Send + 'static>(
    state: Shared,
    caller: &Caller,
    what: &str,
    f: impl FnOnce(&mut Engine) -> Result<T, EngineError> + Send + 'static,
) -> Result<T, Response> {
    caller.admin_only(what).map_err(IntoResponse::into_response)?;
    with_engine(state, f).await.map_err(IntoResponse::into_response)
}

/// The exposition of the engine's `gauges` and the process's counters.
fn metrics_response(gauges: crate::metrics::Gauges) -> Response {
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], crate::metrics::render(&gauges)).into_response()
}

/// `daemon --metrics-listen`: plain HTTP for Prometheus, `GET /metrics`
/// only, no token. It reads and changes nothing else, so it can face a
/// monitoring network without exposing the API.
pub fn metrics_router(state: Shared) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(
                |State(s): State<Shared>| async move { with_engine(s, |e| Ok(e.gauges())).await.map(metrics_response) },
            ),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "only /metrics is served here\n") })
        .with_state(state)
}

/// The API routes of the unix socket, where a request without a token is
/// the admin's.
pub fn router(state: Shared) -> Router {
    router_for(state, Transport::Unix)
}

/// The API routes for requests that come in over `transport`: every
/// request's [`Caller`] is resolved first ([`crate::auth::authenticate`]).
pub fn router_for(state: Shared, transport: Transport) -> Router {
    let auth_state = (state.clone(), transport);
    let routes =
        Router::new()
            .route(
                "/v1/projects",
                get(|State(s): State<Shared>, caller: Caller| async move {
                    with_engine(s, move |e| {
                        Ok(Json(
                            e.projects()
                                .into_iter()
                                .filter(|p| caller.scope(None).ok().flatten().is_none_or(|own| p.project.name == own))
                                .collect::<Vec<_>>(),
                        ))
                    })
                    .await
                })
                .post(
                    |State(s): State<Shared>, caller: Caller, JsonBody(spec): JsonBody<ProjectSpec>| async move {
                        admin(s, &caller, "creating a project", move |e| e.create_project(spec))
                            .await
                            .map(|p| (StatusCode::CREATED, Json(p)))
                    },
                ),
            )
            .route(
                "/v1/projects/{name}",
                get(|State(s): State<Shared>, caller: Caller, Path(name): Path<String>| async move {
                    with_engine(s, move |e| e.project(&caller.project(Some(&name))?)).await.map(Json)
                })
                .delete(
                    |State(s): State<Shared>, caller: Caller, Path(name): Path<String>| async move {
                        admin(s, &caller, "deleting a project", move |e| e.delete_project(&name))
                            .await
                            .map(|()| StatusCode::NO_CONTENT)
                    },
                ),
            )
            .route(
                "/v1/projects/{name}/egress",
                post(
                    |State(s): State<Shared>,
                     caller: Caller,
                     Path(name): Path<String>,
                     JsonBody(b): JsonBody<Egress>| async move {
                        with_engine(s, move |e| e.set_project_egress(&caller.project(Some(&name))?, &b.egress))
                            .await
                            .map(Json)
                    },
                ),
            )
            .route(
                "/v1/projects/{name}/allow",
                post(
                    |State(s): State<Shared>,
                     caller: Caller,
                     Path(name): Path<String>,
                     JsonBody(spec): JsonBody<GrantSpec>| async move {
                        admin(s, &caller, "granting access between projects", move |e| e.allow_project(&name, spec))
                            .await
                            .map(Json)
                    },
                ),
            )
            .route(
                "/v1/projects/{name}/deny",
                post(
                    |State(s): State<Shared>,
                     caller: Caller,
                     Path(name): Path<String>,
                     JsonBody(spec): JsonBody<GrantSpec>| async move {
                        admin(s, &caller, "taking back access between projects", move |e| e.deny_project(&name, spec))
                            .await
                            .map(Json)
                    },
                ),
            )
            .route(
                "/v1/projects/{name}/tokens",
                get(|State(s): State<Shared>, caller: Caller, Path(name): Path<String>| async move {
                    admin(s, &caller, "listing tokens", move |e| e.tokens_of(&name)).await.map(Json)
                })
                .post(
                    |State(s): State<Shared>,
                     caller: Caller,
                     Path(name): Path<String>,
                     JsonBody(spec): JsonBody<TokenSpec>| async move {
                        admin(s, &caller, "creating a token", move |e| e.create_token(&name, spec))
                            .await
                            .map(|t| (StatusCode::CREATED, Json(t)))
                    },
                ),
            )
            .route(
                "/v1/projects/{name}/tokens/{id}",
                axum::routing::delete(
                    |State(s): State<Shared>, caller: Caller, Path((name, id)): Path<(String, String)>| async move {
                        admin(s, &caller, "deleting a token", move |e| e.delete_token(&name, &id))
                            .await
                            .map(|()| StatusCode::NO_CONTENT)
                    },
                ),
            )
            .route(
                "/v1/networks",
                get(|State(s): State<Shared>, caller: Caller, uri: Uri| async move {
                    let q: InProject = query(&uri).map_err(IntoResponse::into_response)?;
                    with_engine(s, move |e| e.networks_of(caller.scope(q.project.as_deref())?.as_deref()))
                        .await
                        .map(Json)
                        .map_err(IntoResponse::into_response)
                })
                .post(
                    |State(s): State<Shared>, caller: Caller, JsonBody(mut spec): JsonBody<NetworkSpec>| async move {
                        caller.check_network_spec(&spec).map_err(IntoResponse::into_response)?;
                        spec.project = Some(caller.project(spec.project.as_deref()).map_err(engine_err)?);
                        with_engine(s, move |e| e.create_network(spec))
                            .await
                            .map(|n| (StatusCode::CREATED, Json(n)))
                            .map_err(IntoResponse::into_response)
                    },
                ),
            )
            .route(
                "/v1/networks/{name}",
                get(|State(s): State<Shared>, caller: Caller, Path(name): Path<String>, uri: Uri| async move {
                    on_network(s, caller, &uri, name, |e, key| e.network(&key)).await.map(Json)
                })
                .patch(
                    |State(s): State<Shared>,
                     caller: Caller,
                     Path(name): Path<String>,
                     uri: Uri,
                     JsonBody(patch): JsonBody<crate::model::NetworkPatch>| async move {
                        on_network(s, caller, &uri, name, move |e, key| e.edit_network(&key, &patch)).await.map(Json)
                    },
                )
                .delete(
                    |State(s): State<Shared>, caller: Caller, Path(name): Path<String>, uri: Uri| async move {
                        let q: DeleteNetwork = query(&uri).map_err(IntoResponse::into_response)?;
                        with_engine(s, move |e| {
                            let key = e.network_key(&caller.project(q.project.as_deref())?, &name)?;
                            e.delete_network_checked(&key, q.force.unwrap_or(false))
                        })
                        .await
                        .map(|()| StatusCode::NO_CONTENT)
                        .map_err(IntoResponse::into_response)
                    },
                ),
            )
            .route(
                "/v1/networks/{name}/start",
                post(|State(s): State<Shared>, caller: Caller, Path(name): Path<String>, uri: Uri| async move {
                    on_network(s, caller, &uri, name, |e, key| e.set_active(&key, true)).await.map(Json)
                }),
            )
            .route(
                "/v1/networks/{name}/stop",
                post(|State(s): State<Shared>, caller: Caller, Path(name): Path<String>, uri: Uri| async move {
                    on_network(s, caller, &uri, name, |e, key| e.set_active(&key, false)).await.map(Json)
                }),
            )
            .route(
                "/v1/networks/{name}/autostart",
                post(
                    |State(s): State<Shared>,
                     caller: Caller,
                     Path(name): Path<String>,
                     uri: Uri,
                     JsonBody(a): JsonBody<Autostart>| async move {
                        on_network(s, caller, &uri, name, move |e, key| e.set_autostart(&key, a.enabled))
                            .await
                            .map(Json)
                    },
                ),
            )
            .route(
                "/v1/networks/{name}/leases",
                get(|State(s): State<Shared>, caller: Caller, Path(name): Path<String>, uri: Uri| async move {
                    let shown = name.clone();
                    on_network(s, caller, &uri, name, move |e, key| {
                        // Leases name their network as the user does.
                        let mut leases = e.leases(&key)?;
                        leases.iter_mut().for_each(|l| l.net.clone_from(&shown));
                        Ok(leases)
                    })
                    .await
                    .map(Json)
                }),
            )
            .route(
                "/v1/networks/{name}/hosts",
                get(|State(s): State<Shared>, caller: Caller, Path(name): Path<String>, uri: Uri| async move {
                    on_network(s, caller, &uri, name, |e, key| e.hosts(&key)).await.map(Json)
                })
                .post(
                    |State(s): State<Shared>,
                     caller: Caller,
                     Path(name): Path<String>,
                     uri: Uri,
                     JsonBody(spec): JsonBody<crate::model::hosts::StaticHostSpec>| async move {
                        on_network(s, caller, &uri, name, move |e, key| e.add_host(&key, spec))
                            .await
                            .map(|h| (StatusCode::CREATED, Json(h)))
                    },
                ),
            )
            .route(
                "/v1/networks/{name}/hosts/{mac}",
                axum::routing::delete(
                    |State(s): State<Shared>,
                     caller: Caller,
                     Path((name, mac)): Path<(String, String)>,
                     uri: Uri| async move {
                        on_network(s, caller, &uri, name, move |e, key| e.delete_host(&key, &mac))
                            .await
                            .map(|_| StatusCode::NO_CONTENT)
                    },
                ),
            )
            .route(
                "/v1/networks/{name}/forwards",
                get(|State(s): State<Shared>, caller: Caller, Path(name): Path<String>, uri: Uri| async move {
                    on_network(s, caller, &uri, name, |e, key| e.forwards(&key)).await.map(Json)
                })
                .post(
                    |State(s): State<Shared>,
                     caller: Caller,
                     Path(name): Path<String>,
                     uri: Uri,
                     JsonBody(spec): JsonBody<crate::model::forwards::PortForwardSpec>| async move {
                        on_network(s, caller, &uri, name, move |e, key| e.add_forward(&key, spec))
                            .await
                            .map(|f| (StatusCode::CREATED, Json(f)))
                    },
                ),
            )
            .route(
                "/v1/networks/{name}/forwards/{proto}/{host_port}",
                axum::routing::delete(
                    |State(s): State<Shared>,
                     caller: Caller,
                     Path((name, proto, host_port)): Path<(String, String, String)>,
                     uri: Uri| async move {
                        let q: DeleteForward = query(&uri).map_err(IntoResponse::into_response)?;
                        with_engine(s, move |e| {
                            let key = e.network_key(&caller.project(q.project.as_deref())?, &name)?;
                            e.delete_forward(&key, &proto, &host_port, q.address.as_deref())
                        })
                        .await
                        .map(|()| StatusCode::NO_CONTENT)
                        .map_err(IntoResponse::into_response)
                    },
                ),
            )
            .route(
                "/v1/networks/{name}/leases/{lease}",
                axum::routing::delete(
                    |State(s): State<Shared>,
                     caller: Caller,
                     Path((name, lease)): Path<(String, String)>,
                     uri: Uri| async move {
                        on_network(s, caller, &uri, name, move |e, key| e.delete_lease(&key, &lease))
                            .await
                            .map(|_| StatusCode::NO_CONTENT)
                    },
                ),
            )
            .route(
                "/v1/ports",
                get(|State(s): State<Shared>, caller: Caller, uri: Uri| async move {
                    let f: PortFilter = query(&uri).map_err(IntoResponse::into_response)?;
                    with_engine(s, move |e| {
                        let scope = caller.scope(f.project.as_deref())?;
                        if let Some(p) = &scope {
                            e.check_project(p)?;
                        }
                        // A network is named in the project asked for (default
                        // the caller's); without one, ports of all projects.
                        let project = caller.project(scope.as_deref())?;
                        // A network that does not exist is an error, not an empty list.
                        let key = f.net.as_deref().map(|n| e.network_key(&project, n)).transpose()?;
                        Ok(Json(
                            e.ports_of(scope.as_deref(), f.vm.as_deref(), key.as_deref())
                                .into_iter()
                                .map(|p| e.port_view(p))
                                .collect::<Vec<_>>(),
                        ))
                    })
                    .await
                    .map_err(IntoResponse::into_response)
                })
                .post(
                    |State(s): State<Shared>, caller: Caller, JsonBody(mut spec): JsonBody<PortSpec>| async move {
                        caller.check_port_spec(&spec).map_err(IntoResponse::into_response)?;
                        spec.project = Some(caller.project(spec.project.as_deref()).map_err(engine_err)?);
                        with_engine(s, move |e| e.create_port(spec).map(|p| e.port_view(p)))
                            .await
                            .map(|p| (StatusCode::CREATED, Json(p)))
                            .map_err(IntoResponse::into_response)
                    },
                ),
            )
            .route(
                "/v1/managers/vlan",
                get(|State(s): State<Shared>, caller: Caller| async move {
                    admin(s, &caller, "the VLAN manager's configuration", |e| e.vlan_manager()).await.map(Json)
                })
                .put(
                    |State(s): State<Shared>,
                     caller: Caller,
                     JsonBody(spec): JsonBody<crate::vlan_manager::VlanManagerSpec>| async move {
                        admin(s, &caller, "configuring the VLAN manager", move |e| e.set_vlan_manager(spec))
                            .await
                            .map(Json)
                    },
                ),
            )
            .route(
                "/v1/fip-pools",
                get(|State(s): State<Shared>| async move { with_engine(s, |e| Ok(Json(e.fip_pools()))).await }).post(
                    |State(s): State<Shared>, caller: Caller, JsonBody(spec): JsonBody<FipPoolSpec>| async move {
                        admin(s, &caller, "creating a floating IP pool", move |e| e.create_fip_pool(spec))
                            .await
                            .map(|p| (StatusCode::CREATED, Json(p)))
                    },
                ),
            )
            .route(
                "/v1/fip-pools/{name}",
                axum::routing::delete(|State(s): State<Shared>, caller: Caller, Path(name): Path<String>| async move {
                    admin(s, &caller, "deleting a floating IP pool", move |e| e.delete_fip_pool(&name))
                        .await
                        .map(|()| StatusCode::NO_CONTENT)
                }),
            )
            .route(
                "/v1/fips",
                get(|State(s): State<Shared>, caller: Caller, uri: Uri| async move {
                    let q: InProject = query(&uri).map_err(IntoResponse::into_response)?;
                    with_engine(s, move |e| e.floating_ips(caller.scope(q.project.as_deref())?.as_deref()))
                        .await
                        .map(Json)
                        .map_err(IntoResponse::into_response)
                })
                .post(
                    |State(s): State<Shared>, caller: Caller, JsonBody(mut spec): JsonBody<FipSpec>| async move {
                        spec.project = Some(caller.project(spec.project.as_deref()).map_err(engine_err)?);
                        with_engine(s, move |e| e.create_floating_ip(spec))
                            .await
                            .map(|f| (StatusCode::CREATED, Json(f)))
                            .map_err(IntoResponse::into_response)
                    },
                ),
            )
            .route(
                "/v1/fips/{ip}",
                get(|State(s): State<Shared>, caller: Caller, Path(ip): Path<String>| async move {
                    with_engine(s, move |e| e.floating_ip(&ip, caller.scope(None)?.as_deref())).await.map(Json)
                })
                .delete(
                    |State(s): State<Shared>, caller: Caller, Path(ip): Path<String>| async move {
                        with_engine(s, move |e| e.delete_floating_ip(&ip, caller.scope(None)?.as_deref()))
                            .await
                            .map(|()| StatusCode::NO_CONTENT)
                    },
                ),
            )
            .route(
                "/v1/fips/{ip}/associate",
                post(
                    |State(s): State<Shared>,
                     caller: Caller,
                     Path(ip): Path<String>,
                     JsonBody(b): JsonBody<Associate>| async move {
                        with_engine(s, move |e| e.associate_floating_ip(&ip, &b.port, caller.scope(None)?.as_deref()))
                            .await
                            .map(Json)
                    },
                ),
            )
            .route(
                "/v1/fips/{ip}/disassociate",
                post(|State(s): State<Shared>, caller: Caller, Path(ip): Path<String>| async move {
                    with_engine(s, move |e| e.disassociate_floating_ip(&ip, caller.scope(None)?.as_deref()))
                        .await
                        .map(Json)
                }),
            )
            .route(
                "/v1/ports/batch",
                post(
                    |State(s): State<Shared>, caller: Caller, JsonBatch(mut specs): JsonBatch<PortSpec>| async move {
                        for spec in &mut specs {
                            caller.check_port_spec(spec).map_err(IntoResponse::into_response)?;
                            spec.project = Some(caller.project(spec.project.as_deref()).map_err(engine_err)?);
                        }
                        with_engine(s, move |e| {
                            e.create_ports(specs).map(|v| v.into_iter().map(|p| e.port_view(p)).collect::<Vec<_>>())
                        })
                        .await
                        .map(|ports| (StatusCode::CREATED, Json(ports)))
                        .map_err(IntoResponse::into_response)
                    },
                ),
            )
            .route(
                "/v1/ports/{id}",
                get(|State(s): State<Shared>, caller: Caller, Path(id): Path<String>| async move {
                    with_engine(s, move |e| {
                        e.check_port(&id, caller.scope(None)?.as_deref())?;
                        let port = e.ports(None, None).into_iter().find(|p| p.id == id);
                        let port = port.ok_or_else(|| EngineError::Internal(format!("port {id} went")))?;
                        Ok(Json(e.port_view(port)))
                    })
                    .await
                })
                .delete(
                    |State(s): State<Shared>, caller: Caller, Path(id): Path<String>| async move {
                        with_engine(s, move |e| {
                            e.check_port(&id, caller.scope(None)?.as_deref())?;
                            e.delete_port(&id)
                        })
                        .await
                        .map(|()| StatusCode::NO_CONTENT)
                    },
                ),
            )
            .route(
                "/v1/ports/{id}/config",
                get(|State(s): State<Shared>, caller: Caller, Path(id): Path<String>, uri: Uri| async move {
                    let Query(q) = Query::<ConfigQuery>::try_from_uri(&uri).map_err(query_rejection)?;
                    let format = config_format(q.format.as_deref()).map_err(|e| ApiError(e).into_response())?;
                    with_engine(s, move |e| {
                        e.check_port(&id, caller.scope(None)?.as_deref())?;
                        e.port_config(&id, format)
                    })
                    .await
                    .map(Json)
                    .map_err(IntoResponse::into_response)
                }),
            )
            .route(
                "/v1/status",
                get(|State(s): State<Shared>, caller: Caller| async move {
                    admin(s, &caller, "the daemon's status", |e| Ok(Json(e.status()))).await
                }),
            )
            .route(
                // Admin only, like /v1/status: it names every project's
                // networks. Prometheus scrapes --metrics-listen instead.
                "/metrics",
                get(|State(s): State<Shared>, caller: Caller| async move {
                    admin(s, &caller, "the daemon's metrics", |e| Ok(e.gauges())).await.map(metrics_response)
                }),
            )
            .route(
                "/v1/bridges",
                get(|State(s): State<Shared>, caller: Caller| async move {
                    admin(s, &caller, "the host's bridges", |e| e.bridges()).await.map(Json)
                }),
            )
            .route(
                "/v1/nodes",
                get(|State(s): State<Shared>, caller: Caller, nodes: Option<axum::Extension<Arc<Nodes>>>| async move {
                    caller.admin_only("the cluster's nodes").map_err(IntoResponse::into_response)?;
                    // The daemon adds the node list; a router without one
                    // (tests) has none to show.
                    let Some(axum::Extension(nodes)) = nodes else {
                        return Err(error_response(
                            StatusCode::NOT_FOUND,
                            "not_found",
                            "this daemon keeps no node list",
                        ));
                    };
                    tokio::task::spawn_blocking(move || {
                        let mut list = nodes.list()?;
                        // Port counts from the engine, which knows every
                        // host's ports (its mirror follows them).
                        let counts = s.lock().unwrap_or_else(|p| p.into_inner()).ports_per_node();
                        for n in &mut list {
                            n.ports = counts.get(&Some(n.record.name.clone())).copied().unwrap_or(0)
                                + if n.local { counts.get(&None).copied().unwrap_or(0) } else { 0 };
                        }
                        Ok(list)
                    })
                    .await
                    .unwrap_or_else(|e| Err(StoreError::Etcd(format!("the node list did not complete: {e}"))))
                    .map(Json)
                    .map_err(|e| engine_err(EngineError::Store(e)))
                }),
            )
            .route(
                // The description of these routes (src/openapi.rs), for any
                // caller the layer let in.
                "/v1/openapi.json",
                get(|| async { ([(header::CONTENT_TYPE, "application/json")], crate::openapi::document_json()) }),
            )
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(BODY_LIMIT))
            .with_state(state);
    // Outside the routes, so that it sees their finished responses (a 405
    // gets its Allow header only on its way out of the route); inside it,
    // who is asking is known before any route runs.
    Router::new()
        .fallback_service(routes)
        .layer(axum::middleware::from_fn_with_state(auth_state, crate::auth::authenticate))
        .layer(axum::middleware::from_fn(json_errors))
        .layer(axum::middleware::from_fn(read_whole_body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::fake::FakeKernel;
    use crate::engine::host::FakeHost;
    use crate::engine::services::FakeServices;
    use crate::engine::Parts;
    use crate::store::sqlite::SqliteStore;
    use serde_json::Value;
    use tower::ServiceExt;

    fn app() -> Router {
        router(shared())
    }

    /// Sends one request; the status, the JSON body (Null if none) and the Allow header.
    async fn send(app: &Router, method: &str, uri: &str, ctype: Option<&str>, body: &[u8]) -> (u16, Value, String) {
        let mut req = axum::http::Request::builder().method(method).uri(uri);
        if let Some(c) = ctype {
            req = req.header(header::CONTENT_TYPE, c);
        }
        let resp = app.clone().oneshot(req.body(axum::body::Body::from(body.to_vec())).unwrap()).await.unwrap();
        let status = resp.status().as_u16();
        let allow = resp.headers().get(header::ALLOW).map(|a| a.to_str().unwrap().to_string()).unwrap_or_default();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{method} {uri}: body is not JSON ({e}): {bytes:?}"))
        };
        (status, v, allow)
    }

    const JSON: Option<&str> = Some("application/json");
    /// Method, URI, content type, body; the status, kind and part of the message wanted.
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, &'a [u8], u16, &'a str, &'a str);
    const NET: &str = r#"{"name":"n1","mode":"nat","subnet":"10.9.0.0/24"}"#;

    /// The description is served as `lanyard openapi` prints it, and every
    /// operation it describes is routed: a request reaches the route (no
    /// 405, no "no API endpoint" 404), whatever the route then answers.
    #[tokio::test]
    async fn the_openapi_description_is_served_and_every_operation_is_routed() {
        let app = app();
        let (status, served, _) = send(&app, "GET", "/v1/openapi.json", None, b"").await;
        assert_eq!(status, 200);
        assert_eq!(served, serde_json::from_str::<Value>(&crate::openapi::document_json()).unwrap());
        for r in crate::openapi::ROUTES {
            let uri = r.path.replace(['{', '}'], "");
            let req =
                axum::http::Request::builder().method(r.method).uri(&uri).body(axum::body::Body::empty()).unwrap();
            let resp = app.clone().oneshot(req).await.unwrap();
            let status = resp.status().as_u16();
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                status != 405 && !text.contains("no API endpoint"),
                "{} {uri} is described but not routed: {status} {text}",
                r.method
            );
        }
    }

    /// A request refused before its body is read (405, 415) leaves the
    /// keep-alive connection usable: the next request on it is answered.
    /// Found by schemathesis: hyper closed such a connection silently.
    #[tokio::test]
    async fn a_refused_request_with_a_large_body_keeps_the_connection() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = std::env::temp_dir().join(format!("lanyard-keepalive-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("api.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app()).await });
        let body = "x".repeat(300_000);
        for (method, ctype) in [("QUERY", "application/json"), ("POST", "text/plain")] {
            let mut c = tokio::net::UnixStream::connect(&path).await.unwrap();
            let head = format!(
                "{method} /v1/networks HTTP/1.1\r\nHost: lanyard\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            c.write_all(head.as_bytes()).await.unwrap();
            c.write_all(body.as_bytes()).await.unwrap();
            c.write_all(b"GET /v1/projects HTTP/1.1\r\nHost: lanyard\r\n\r\n").await.unwrap();
            let mut answers = Vec::new();
            let mut buf = vec![0u8; 65536];
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            while !String::from_utf8_lossy(&answers).contains("HTTP/1.1 200") && tokio::time::Instant::now() < deadline
            {
                match tokio::time::timeout(std::time::Duration::from_secs(1), c.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => answers.extend_from_slice(&buf[..n]),
                    Err(_) => {}
                }
            }
            let text = String::from_utf8_lossy(&answers);
            assert!(text.starts_with("HTTP/1.1 4") && text.contains("HTTP/1.1 200 OK"), "{method}: {text}");
        }
        server.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn metrics_are_the_text_exposition_of_every_network() {
        let app = app();
        assert_eq!(send(&app, "POST", "/v1/networks", JSON, NET.as_bytes()).await.0, 201);
        let req = axum::http::Request::builder().uri("/metrics").body(axum::body::Body::empty()).unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], crate::metrics::CONTENT_TYPE);
        let text =
            String::from_utf8(axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap().to_vec()).unwrap();
        assert!(text.contains("lanyard_network_active{network=\"n1\"} 1\n"), "{text}");
        assert!(text.contains("lanyard_dhcp_addresses_free{network=\"n1\"} "), "{text}");
        assert!(text.contains("# TYPE lanyard_kernel_apply_seconds histogram\n"), "{text}");
    }

    #[tokio::test]
    async fn every_refusal_is_an_error_body() {
        let app = app();
        let long_path = format!("/v1/networks/{}", "a".repeat(10_000));
        let big = format!("[{}]", vec![r#"{"net":"n1","vm":"vm1"}"#; BODY_LIMIT / 20].join(","));
        // (method, uri, content type, body, status, kind, the message contains)
        let cases: Vec<Case> = vec![
            ("POST", "/v1/networks", JSON, br#"{"name":"#, 400, "invalid", "invalid JSON at line 1 column 8: EOF"),
            (
                "POST",
                "/v1/networks",
                JSON,
                b"{'name': 1}",
                400,
                "invalid",
                "invalid JSON at line 1 column 2: key must be a string",
            ),
            ("POST", "/v1/networks", JSON, b"", 400, "invalid", "empty request body"),
            // Found by schemathesis: serde reads a struct from an array of
            // its fields, so this allocated a floating IP.
            (
                "POST",
                "/v1/fips",
                JSON,
                b"[null, null]",
                422,
                "invalid",
                "invalid request body: expected a JSON object, not an array",
            ),
            (
                "POST",
                "/v1/ports/batch",
                JSON,
                br#"[["n1", null, "vm1"]]"#,
                422,
                "invalid",
                "[0]: expected a JSON object, not an array",
            ),
            (
                "POST",
                "/v1/ports/batch",
                JSON,
                br#"{"vm":"vm1"}"#,
                422,
                "invalid",
                "invalid type: map, expected a sequence",
            ),
            (
                "POST",
                "/v1/networks",
                JSON,
                br#"{"name":"n1","mode":"nat","subnet":"10.9.0.0/24"} x"#,
                400,
                "invalid",
                "trailing characters",
            ),
            (
                "POST",
                "/v1/networks",
                JSON,
                br#"{"name":"n1","mode":"nat","subnet":"10.9.0.0/24","mtu":"big"}"#,
                422,
                "invalid",
                r#"invalid request body: mtu: invalid type: string "big", expected u32"#,
            ),
            (
                "POST",
                "/v1/networks",
                JSON,
                br#"{"name":"n1","mode":"nat","subnet":"10.9.0.0/24","colour":"red"}"#,
                422,
                "invalid",
                r#"unknown field "colour", expected one of "name", "mode""#,
            ),
            ("POST", "/v1/networks", JSON, br#"{"name":"n1"}"#, 422, "invalid", r#"missing field "mode""#),
            (
                "POST",
                "/v1/networks",
                JSON,
                b"1",
                422,
                "invalid",
                "invalid type: integer 1, expected struct NetworkSpec",
            ),
            ("POST", "/v1/networks", None, NET.as_bytes(), 415, "invalid", "missing Content-Type"),
            (
                "POST",
                "/v1/networks",
                Some("text/plain"),
                NET.as_bytes(),
                415,
                "invalid",
                r#"Content-Type "text/plain" is not JSON"#,
            ),
            ("POST", "/v1/ports/batch", JSON, big.as_bytes(), 413, "invalid", "larger than the API's limit of 4 MiB"),
            (
                "POST",
                "/v1/ports/batch",
                JSON,
                br#"[{"net":"n1","vm":"v"},{"net":"n1","vm":"v","colour":1}]"#,
                422,
                "invalid",
                r#"[1]: unknown field "colour""#,
            ),
            (
                "POST",
                "/v1/ports",
                JSON,
                br#"{"net":"n1","vm":"v","mac":5}"#,
                422,
                "invalid",
                "mac: invalid type: integer 5, expected a string",
            ),
            (
                "POST",
                "/v1/networks/n1/autostart",
                JSON,
                br#"{"enabled":"yes"}"#,
                422,
                "invalid",
                "enabled: invalid type",
            ),
            (
                "POST",
                "/v1/networks/n1/autostart",
                JSON,
                br#"{"enabled":true,"x":1}"#,
                422,
                "invalid",
                r#"unknown field "x""#,
            ),
            (
                "GET",
                "/v1/ports?colour=red",
                None,
                b"",
                400,
                "invalid",
                r#"invalid query string: colour: unknown field "colour", expected one of "vm", "net", "project""#,
            ),
            ("GET", &long_path, None, b"", 404, "not_found", "(see `lanyard net list`)"),
            ("GET", "/v1/nope", None, b"", 404, "not_found", "no API endpoint GET /v1/nope"),
            ("GET", "/", None, b"", 404, "not_found", "no API endpoint GET /"),
            ("GET", "//v1//networks", None, b"", 404, "not_found", "no API endpoint"),
            ("GET", "/v1/networks/..%2f..", None, b"", 404, "not_found", r#"no network named "../..""#),
            ("DELETE", "/v1/networks/%00", None, b"", 404, "not_found", r#"no network named "\0""#),
            ("GET", "/v1/networks/%ff", None, b"", 400, "invalid", ""),
            (
                "PUT",
                "/v1/networks",
                JSON,
                NET.as_bytes(),
                405,
                "invalid",
                "method PUT is not allowed on /v1/networks; use GET, HEAD, POST",
            ),
            ("DELETE", "/v1/ports", None, b"", 405, "invalid", "method DELETE is not allowed on /v1/ports"),
            ("GET", "/v1/networks/n1/start", None, b"", 405, "invalid", "use POST"),
        ];
        for (method, uri, ctype, body, status, kind, says) in cases {
            let (got, v, allow) = send(&app, method, uri, ctype, body).await;
            let what = format!("{method} {uri} {:?}", String::from_utf8_lossy(&body[..body.len().min(80)]));
            assert_eq!(got, status, "{what}: {v}");
            assert_eq!(v["kind"], kind, "{what}: {v}");
            let error = v["error"].as_str().unwrap_or_else(|| panic!("{what}: no error message: {v}"));
            assert!(error.contains(says), "{what}: {error:?} does not say {says:?}");
            assert!(!error.contains('\n') && !error.is_empty() && error.len() <= MESSAGE_MAX, "{what}: {error:?}");
            assert_eq!(v.as_object().map(|o| o.len()), Some(2), "{what}: {v}");
            if status == 405 {
                assert!(!allow.is_empty(), "{what}: no Allow header");
            }
        }
        let (_, nets, _) = send(&app, "GET", "/v1/networks", None, b"").await;
        assert_eq!(nets, Value::Array(vec![]), "a refused request changed the state");
        // A charset parameter is still JSON.
        let (got, v, _) =
            send(&app, "POST", "/v1/networks", Some("application/json; charset=utf-8"), NET.as_bytes()).await;
        assert_eq!(got, 201, "{v}");
    }

    #[tokio::test]
    async fn a_ports_cloud_init_config() {
        let app = app();
        let (got, _, _) = send(&app, "POST", "/v1/networks", JSON, NET.as_bytes()).await;
        assert_eq!(got, 201);
        let body = br#"{"net":"n1","vm":"web1","ip":"10.9.0.5","mac":"52:54:00:00:00:05"}"#;
        let (got, port, _) = send(&app, "POST", "/v1/ports", JSON, body).await;
        assert_eq!(got, 201, "{port}");
        let id = port["id"].as_str().unwrap();
        let (got, v, _) = send(&app, "GET", &format!("/v1/ports/{id}/config?format=cloud-init"), None, b"").await;
        assert_eq!(got, 200, "{v}");
        assert_eq!(v.as_object().map(|o| o.len()), Some(3), "{v}");
        let net = v["network_config"].as_str().unwrap();
        assert!(
            net.starts_with("version: 2\n") && net.contains("\"10.9.0.5/24\"") && net.contains("\"52:54:00:00:00:05\"")
        );
        assert_eq!(v["meta_data"], format!("instance-id: \"lanyard-{id}\"\nlocal-hostname: \"web1\"\n"));
        assert_eq!(v["user_data"], "#cloud-config\n{}\n");
        let cases: Vec<(String, u16, &str, &str)> = vec![
            ("/v1/ports/nope/config?format=cloud-init".into(), 404, "not_found", r#"no port with id "nope""#),
            (
                format!("/v1/ports/{id}/config?format=ignition"),
                400,
                "invalid",
                r#"invalid format "ignition": the supported format is cloud-init"#,
            ),
            (format!("/v1/ports/{id}/config"), 400, "invalid", "?format=cloud-init"),
            (format!("/v1/ports/{id}/config?format=cloud-init&x=1"), 400, "invalid", r#"unknown field "x""#),
        ];
        for (uri, status, kind, says) in cases {
            let (got, v, _) = send(&app, "GET", &uri, None, b"").await;
            assert_eq!((got, v["kind"].as_str()), (status, Some(kind)), "{uri}: {v}");
            assert!(v["error"].as_str().unwrap().contains(says), "{uri}: {v}");
        }
        let (got, v, _) = send(&app, "POST", &format!("/v1/ports/{id}/config?format=cloud-init"), JSON, b"{}").await;
        assert_eq!(got, 405, "{v}");
    }

    #[tokio::test]
    async fn one_port_is_shown_by_its_id() {
        let app = app();
        assert_eq!(send(&app, "POST", "/v1/networks", JSON, NET.as_bytes()).await.0, 201);
        let body = br#"{"net":"n1","vm":"web1","mac":"52:54:00:00:00:05"}"#;
        let (_, made, _) = send(&app, "POST", "/v1/ports", JSON, body).await;
        let id = made["id"].as_str().unwrap();
        let (got, shown, _) = send(&app, "GET", &format!("/v1/ports/{id}"), None, b"").await;
        assert_eq!(got, 200, "{shown}");
        assert_eq!(shown, made, "the port as it was created, QEMU arguments and all");
        assert!(shown["qemu_args"].as_str().unwrap().contains("mac=52:54:00:00:00:05"), "{shown}");
        let (got, v, _) = send(&app, "GET", "/v1/ports/nope", None, b"").await;
        assert_eq!((got, v["kind"].as_str()), (404, Some("not_found")), "{v}");
    }

    #[test]
    fn long_messages_lose_their_middle() {
        assert_eq!(elide("short", 512), "short");
        let long = format!("no network named \"{}\" (see `lanyard net list`)", "a".repeat(10_000));
        let e = elide(&long, MESSAGE_MAX);
        assert!(e.len() <= MESSAGE_MAX, "{} bytes", e.len());
        assert!(e.starts_with("no network named \"aaa") && e.ends_with("aaa\" (see `lanyard net list`)"), "{e}");
        assert!(e.contains(" [... "), "{e}");
        let e = elide(&"é".repeat(1000), 100);
        assert!(e.len() <= 100 && e.starts_with('é') && e.ends_with('é'), "{e}");
    }

    #[test]
    fn decode_messages() {
        let e = decode::<NetworkSpec>(b"{\n  \"name\": \"n1\",\n  \"mtu\": 1500,,\n}").unwrap_err();
        assert_eq!(
            (e.status, e.message.as_str()),
            (StatusCode::BAD_REQUEST, "invalid JSON at line 3 column 15: key must be a string")
        );
        let e = decode::<Vec<PortSpec>>(br#"[{"net":"n","vm":"v","ip":[1]}]"#).unwrap_err();
        assert_eq!(e.message, "invalid request body: [0].ip: invalid type: sequence, expected a string");
    }

    #[tokio::test]
    async fn networks_are_addressed_in_their_project() {
        let app = app();
        let (st, v, _) = send(&app, "POST", "/v1/projects", JSON, br#"{"name":"blue","description":"b"}"#).await;
        assert_eq!((st, v["name"].as_str(), v["networks"].as_u64()), (201, Some("blue"), Some(0)), "{v}");
        let blue = br#"{"name":"n1","mode":"nat","subnet":"10.8.0.0/24","project":"blue"}"#;
        assert_eq!(send(&app, "POST", "/v1/networks", JSON, blue).await.0, 201);
        assert_eq!(send(&app, "POST", "/v1/networks", JSON, NET.as_bytes()).await.0, 201);
        // Without ?project= the default project's, as before projects.
        let (_, v, _) = send(&app, "GET", "/v1/networks/n1", None, b"").await;
        assert_eq!((v["project"].as_str(), v["subnet"].as_str()), (Some("default"), Some("10.9.0.0/24")), "{v}");
        let (_, v, _) = send(&app, "GET", "/v1/networks/n1?project=blue", None, b"").await;
        assert_eq!((v["project"].as_str(), v["subnet"].as_str()), (Some("blue"), Some("10.8.0.0/24")), "{v}");
        let (_, v, _) = send(&app, "GET", "/v1/networks", None, b"").await;
        assert_eq!(v.as_array().map(Vec::len), Some(2), "all projects: {v}");
        let (_, v, _) = send(&app, "GET", "/v1/networks?project=blue", None, b"").await;
        assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
        let port = br#"{"net":"n1","vm":"v","project":"blue"}"#;
        let (st, v, _) = send(&app, "POST", "/v1/ports", JSON, port).await;
        assert_eq!((st, v["project"].as_str(), v["net"].as_str()), (201, Some("blue"), Some("n1")), "{v}");
        let (_, v, _) = send(&app, "GET", "/v1/ports?project=blue&net=n1", None, b"").await;
        assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
        let (_, v, _) = send(&app, "GET", "/v1/ports?net=n1", None, b"").await;
        assert_eq!(v, Value::Array(vec![]), "n1 of the default project has no ports");
        let (_, v, _) = send(&app, "GET", "/v1/projects/blue", None, b"").await;
        assert_eq!((v["networks"].as_u64(), v["ports"].as_u64()), (Some(1), Some(1)), "{v}");
        let cases: Vec<Case> = vec![
            ("GET", "/v1/networks?project=nope", None, b"", 404, "not_found", "no project named \"nope\""),
            ("GET", "/v1/networks/n1?project=nope", None, b"", 404, "not_found", "lanyard project create nope"),
            ("GET", "/v1/networks/n2?project=blue", None, b"", 404, "not_found", "in project \"blue\""),
            ("GET", "/v1/networks?colour=red", None, b"", 400, "invalid", "unknown field \"colour\""),
            ("GET", "/v1/ports?project=-x", None, b"", 400, "invalid", "invalid project name"),
            ("DELETE", "/v1/projects/blue", None, b"", 409, "conflict", "owns 1 network (n1) and 1 port"),
            ("DELETE", "/v1/projects/default", None, b"", 400, "invalid", "cannot be deleted"),
            ("POST", "/v1/projects", JSON, br#"{"name":"blue"}"#, 409, "conflict", "already exists"),
            ("POST", "/v1/projects", JSON, br#"{"name":"a/b"}"#, 400, "invalid", "invalid project name"),
        ];
        for (method, uri, ctype, body, status, kind, says) in cases {
            let (got, v, _) = send(&app, method, uri, ctype, body).await;
            assert_eq!((got, v["kind"].as_str()), (status, Some(kind)), "{method} {uri}: {v}");
            assert!(v["error"].as_str().unwrap().contains(says), "{method} {uri}: {v}");
        }
        // n1 of blue has a port: deleted with it only when forced.
        let (st, v, _) = send(&app, "DELETE", "/v1/networks/n1?project=blue", None, b"").await;
        assert_eq!((st, v["kind"].as_str()), (409, Some("conflict")), "{v}");
        assert!(v["error"].as_str().unwrap().contains("has 1 port ("), "{v}");
        let (st, v, _) = send(&app, "DELETE", "/v1/networks/n1?project=blue&force=yes", None, b"").await;
        assert_eq!((st, v["kind"].as_str()), (400, Some("invalid")), "{v}");
        assert_eq!(send(&app, "DELETE", "/v1/networks/n1?project=blue&force=true", None, b"").await.0, 204);
        assert_eq!(send(&app, "GET", "/v1/networks/n1", None, b"").await.0, 200, "the default project's n1 stays");
        assert_eq!(send(&app, "DELETE", "/v1/projects/blue", None, b"").await.0, 204);
        let (_, v, _) = send(&app, "GET", "/v1/projects", None, b"").await;
        assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    }

    fn shared() -> Shared {
        let engine = Engine::start(Parts {
            store: Arc::new(SqliteStore::in_memory().unwrap()),
            kernel: Arc::new(FakeKernel::default()),
            services: Box::<FakeServices>::default(),
            host: Arc::new(FakeHost::default()),
            node: None,
        })
        .unwrap();
        Arc::new(Mutex::new(engine))
    }

    /// Sends one request with `Authorization: Bearer TOKEN` (none for the
    /// admin); the status, the JSON body and the WWW-Authenticate header.
    async fn send_as(app: &Router, token: Option<&str>, method: &str, uri: &str, body: &[u8]) -> (u16, Value, String) {
        let mut req =
            axum::http::Request::builder().method(method).uri(uri).header(header::CONTENT_TYPE, "application/json");
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let resp = app.clone().oneshot(req.body(axum::body::Body::from(body.to_vec())).unwrap()).await.unwrap();
        let status = resp.status().as_u16();
        let challenge =
            resp.headers().get(header::WWW_AUTHENTICATE).map(|a| a.to_str().unwrap().to_string()).unwrap_or_default();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        let v = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        (status, v, challenge)
    }

    fn names(v: &Value, field: &str) -> Vec<String> {
        let mut out: Vec<String> =
            v.as_array().into_iter().flatten().map(|x| x[field].as_str().unwrap_or("?").to_string()).collect();
        out.sort();
        out
    }

    #[tokio::test]
    async fn a_project_token_sees_and_changes_only_its_project() {
        let state = shared();
        let app = router(state.clone());
        let tcp = router_for(state, Transport::Tcp);
        let admin = None;
        for p in ["blue", "red"] {
            let (st, v, _) =
                send_as(&app, admin, "POST", "/v1/projects", format!(r#"{{"name":"{p}"}}"#).as_bytes()).await;
            assert_eq!(st, 201, "{v}");
        }
        let mut port_ids = Vec::new();
        for (p, net, subnet) in [("blue", "b1", "10.31.0.0/24"), ("red", "r1", "10.32.0.0/24")] {
            let body = format!(r#"{{"name":"{net}","mode":"nat","subnet":"{subnet}","project":"{p}"}}"#);
            assert_eq!(send_as(&app, admin, "POST", "/v1/networks", body.as_bytes()).await.0, 201);
            let body = format!(r#"{{"net":"{net}","vm":"vm-{p}","project":"{p}"}}"#);
            let (st, v, _) = send_as(&app, admin, "POST", "/v1/ports", body.as_bytes()).await;
            assert_eq!(st, 201, "{v}");
            port_ids.push(v["id"].as_str().unwrap().to_string());
        }
        let (blue_port, red_port) = (port_ids[0].clone(), port_ids[1].clone());
        let (st, made, _) = send_as(&app, admin, "POST", "/v1/projects/blue/tokens", br#"{"name":"ci"}"#).await;
        assert_eq!((st, made["project"].as_str(), made["name"].as_str()), (201, Some("blue"), Some("ci")), "{made}");
        let token = made["token"].as_str().unwrap().to_string();
        assert!(crate::auth::well_formed(&token), "{token}");
        let blue = Some(token.as_str());
        let (_, listed, _) = send_as(&app, admin, "GET", "/v1/projects/blue/tokens", b"").await;
        assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
        assert!(listed[0].get("token").is_none() && listed[0].get("hash").is_none(), "no secret listed: {listed}");
        assert!(!listed.to_string().contains(&crate::auth::hash(&token)), "{listed}");

        // The admin sees both projects; the token only its own.
        let (_, v, _) = send_as(&app, admin, "GET", "/v1/networks", b"").await;
        assert_eq!(names(&v, "name"), ["b1", "r1"], "{v}");
        let (_, v, _) = send_as(&app, admin, "GET", "/v1/ports", b"").await;
        assert_eq!(names(&v, "project"), ["blue", "red"], "{v}");
        for app in [&app, &tcp] {
            let (st, v, _) = send_as(app, blue, "GET", "/v1/networks", b"").await;
            assert_eq!((st, names(&v, "name")), (200, vec!["b1".to_string()]), "{v}");
            let (_, v, _) = send_as(app, blue, "GET", "/v1/ports", b"").await;
            assert_eq!(names(&v, "id"), std::slice::from_ref(&blue_port), "{v}");
            let (_, v, _) = send_as(app, blue, "GET", "/v1/projects", b"").await;
            assert_eq!(names(&v, "name"), ["blue"], "{v}");
            let (st, v, _) = send_as(app, blue, "GET", "/v1/networks/b1", b"").await;
            assert_eq!((st, v["project"].as_str()), (200, Some("blue")), "its own project by default: {v}");
        }

        // Another project's objects are exactly as missing as missing ones.
        let same_404 = |a: &(u16, Value, String), b: &(u16, Value, String), from: &str, to: &str, what: &str| {
            assert_eq!(a.0, 404, "{what}: {}", a.1);
            assert_eq!(a.1.to_string(), b.1.to_string().replace(from, to), "{what}");
        };
        let uris = [
            ("GET", "/v1/networks/NAME"),
            ("DELETE", "/v1/networks/NAME"),
            ("POST", "/v1/networks/NAME/stop"),
            ("GET", "/v1/networks/NAME/leases"),
        ];
        for (method, uri) in uris {
            let theirs = send_as(&app, blue, method, &uri.replace("NAME", "r1"), b"").await;
            let missing = send_as(&app, blue, method, &uri.replace("NAME", "zz"), b"").await;
            same_404(&theirs, &missing, "zz", "r1", uri);
            let theirs = send_as(&app, blue, method, &format!("{}?project=red", uri.replace("NAME", "r1")), b"").await;
            let missing =
                send_as(&app, blue, method, &format!("{}?project=nosuch", uri.replace("NAME", "r1")), b"").await;
            same_404(&theirs, &missing, "nosuch", "red", &format!("{uri}?project=red"));
        }
        for (uri, method) in
            [("/v1/networks?project=red", "GET"), ("/v1/ports?project=red", "GET"), ("/v1/projects/red", "GET")]
        {
            let theirs = send_as(&app, blue, method, uri, b"").await;
            let missing = send_as(&app, blue, method, &uri.replace("red", "nosuch"), b"").await;
            same_404(&theirs, &missing, "nosuch", "red", uri);
        }
        let fake = "0000beef";
        for (method, uri) in
            [("DELETE", "/v1/ports/ID"), ("GET", "/v1/ports/ID"), ("GET", "/v1/ports/ID/config?format=cloud-init")]
        {
            let theirs = send_as(&app, blue, method, &uri.replace("ID", &red_port), b"").await;
            let missing = send_as(&app, blue, method, &uri.replace("ID", fake), b"").await;
            same_404(&theirs, &missing, fake, &red_port, uri);
        }
        let body = br#"{"net":"r1","vm":"x","project":"red"}"#;
        assert_eq!(send_as(&app, blue, "POST", "/v1/ports", body).await.0, 404);
        let body = br#"{"name":"x1","mode":"nat","subnet":"10.33.0.0/24","project":"red"}"#;
        assert_eq!(send_as(&app, blue, "POST", "/v1/networks", body).await.0, 404);

        // Admin-only kinds and operations: 403, one line, nothing changes.
        let before = send_as(&app, admin, "GET", "/v1/networks", b"").await.1;
        let refused: Vec<(&str, &str, &[u8])> = vec![
            ("POST", "/v1/networks", br#"{"name":"f","mode":"","manager":"flat","subnet":"10.40.0.0/24"}"#),
            ("POST", "/v1/networks", br#"{"name":"f","mode":"","manager":"flatdhcp","subnet":"10.40.0.0/24"}"#),
            ("POST", "/v1/networks", br#"{"name":"f","mode":"bridge","subnet":"","uplink":"eth0"}"#),
            ("POST", "/v1/networks", br#"{"name":"f","mode":"open","subnet":"10.40.0.0/24"}"#),
            ("POST", "/v1/networks", br#"{"name":"f","mode":"nat","subnet":"10.40.0.0/24","uplink":"eth0"}"#),
            ("POST", "/v1/networks", br#"{"name":"f","mode":"nat","subnet":"10.40.0.0/24","vlan":7}"#),
            (
                "PUT",
                "/v1/managers/vlan",
                br#"{"uplink":"eth0","vlans":"100-199","supernet":"10.0.0.0/16","prefix":24}"#,
            ),
            ("GET", "/v1/managers/vlan", b""),
            ("POST", "/v1/projects", br#"{"name":"green"}"#),
            ("DELETE", "/v1/projects/red", b""),
            ("DELETE", "/v1/projects/blue", b""),
            ("POST", "/v1/projects/blue/tokens", b"{}"),
            ("GET", "/v1/projects/blue/tokens", b""),
            ("GET", "/v1/bridges", b""),
            ("GET", "/v1/status", b""),
            ("GET", "/metrics", b""),
            ("GET", "/v1/nodes", b""),
        ];
        for (method, uri, body) in refused {
            let (st, v, _) = send_as(&app, blue, method, uri, body).await;
            assert_eq!((st, v["kind"].as_str()), (403, Some("forbidden")), "{method} {uri}: {v}");
            let e = v["error"].as_str().unwrap();
            assert!(e.contains("admin only") && !e.contains('\n'), "{e}");
        }
        assert_eq!(send_as(&app, admin, "GET", "/v1/networks", b"").await.1, before, "a refusal changed something");
        let (_, v, _) = send_as(&app, admin, "GET", "/v1/projects", b"").await;
        assert_eq!(names(&v, "name"), ["blue", "default", "red"], "{v}");

        // What it may do lands in its project.
        let (st, v, _) =
            send_as(&app, blue, "POST", "/v1/networks", br#"{"name":"b2","mode":"nat","subnet":"10.34.0.0/24"}"#).await;
        assert_eq!((st, v["project"].as_str()), (201, Some("blue")), "{v}");
        let (st, v, _) = send_as(&app, blue, "POST", "/v1/ports", br#"{"net":"b2","vm":"v2"}"#).await;
        assert_eq!((st, v["project"].as_str()), (201, Some("blue")), "{v}");
        let id = v["id"].as_str().unwrap().to_string();
        assert_eq!(send_as(&app, blue, "GET", &format!("/v1/ports/{id}/config?format=cloud-init"), b"").await.0, 200);
        assert_eq!(send_as(&app, blue, "DELETE", &format!("/v1/ports/{id}"), b"").await.0, 204);
        assert_eq!(send_as(&app, blue, "DELETE", "/v1/networks/b2", b"").await.0, 204);

        // Bad tokens: 401 with one line, on both transports; TCP needs one.
        let unknown = format!("lyt_{}", "0".repeat(64));
        for app in [&app, &tcp] {
            for t in [unknown.as_str(), "lyt_short", "nonsense"] {
                let (st, v, challenge) = send_as(app, Some(t), "GET", "/v1/networks", b"").await;
                assert_eq!(
                    (st, v["kind"].as_str(), challenge.as_str()),
                    (401, Some("unauthorized"), "Bearer"),
                    "{t}: {v}"
                );
                assert!(v["error"].as_str().unwrap().starts_with("invalid token"), "{v}");
            }
        }
        let (st, v, _) = send_as(&tcp, None, "GET", "/v1/networks", b"").await;
        assert_eq!((st, v["kind"].as_str()), (401, Some("unauthorized")), "{v}");
        let (st, _, _) = send_as(&tcp, None, "GET", "/v1/nope", b"").await;
        assert_eq!(st, 401, "TCP without a token learns nothing, not even the routes");

        // A deleted token, or one of a deleted project, is no token.
        let (_, red_made, _) = send_as(&app, admin, "POST", "/v1/projects/red/tokens", b"{}").await;
        let red = red_made["token"].as_str().unwrap().to_string();
        assert_eq!(send_as(&app, Some(&red), "GET", "/v1/networks", b"").await.0, 200);
        assert_eq!(send_as(&app, admin, "DELETE", "/v1/networks/r1?project=red&force=true", b"").await.0, 204);
        assert_eq!(send_as(&app, admin, "DELETE", "/v1/projects/red", b"").await.0, 204);
        assert_eq!(send_as(&app, Some(&red), "GET", "/v1/networks", b"").await.0, 401);
        let tid = made["id"].as_str().unwrap();
        let (st, v, _) = send_as(&app, admin, "DELETE", "/v1/projects/red/tokens/nope", b"").await;
        assert_eq!(st, 404, "{v}");
        assert_eq!(send_as(&app, admin, "DELETE", &format!("/v1/projects/blue/tokens/{tid}"), b"").await.0, 204);
        assert_eq!(send_as(&app, blue, "GET", "/v1/networks", b"").await.0, 401);
    }

    #[tokio::test]
    async fn the_node_list_is_the_daemons() {
        use crate::daemon::cluster::NodeRecord;
        let record = NodeRecord { name: "h1".into(), underlay_ip: None, started: 5, version: "0.1.0".into() };
        let with_nodes = router(shared()).layer(axum::Extension(Arc::new(Nodes::Single(record))));
        let (st, v, _) = send(&with_nodes, "GET", "/v1/nodes", None, b"").await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(
            v,
            serde_json::json!([{"name": "h1", "underlay_ip": null, "started": 5, "version": "0.1.0", "state": "up", "local": true, "ports": 0}])
        );
        let (st, v, _) = send(&app(), "GET", "/v1/nodes", None, b"").await;
        assert_eq!((st, v["kind"].as_str()), (404, Some("not_found")), "{v}");
    }

    #[test]
    fn an_unreachable_cluster_store_is_503() {
        let e = ApiError(EngineError::Store(StoreError::Unavailable { endpoints: "http://10.0.0.1:2379".into() }));
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(kind_of(StatusCode::SERVICE_UNAVAILABLE), "unavailable");
        let r = ApiError(EngineError::Store(StoreError::Exists("token t1".into()))).into_response();
        assert_eq!(r.status(), StatusCode::CONFLICT);
    }
}
