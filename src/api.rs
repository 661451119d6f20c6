//! The daemon's REST API (JSON over a unix socket).
//!
//! Handlers are thin: they move the request onto a blocking thread, call the
//! [`Engine`] under its lock, and turn [`EngineError`] into a status code and
//! a one-line JSON error the CLI prints as is.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::engine::{Engine, EngineError, PortView};
use crate::model::{NetworkSpec, PortSpec};

/// Shared daemon state.
pub type Shared = Arc<Mutex<Engine>>;

/// The body of every error response.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One line: what was wrong and what to do.
    pub error: String,
    /// invalid | conflict | not_found | internal
    pub kind: String,
}

/// An error on its way to the client.
pub struct ApiError(EngineError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = match &self.0 {
            EngineError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
            EngineError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            EngineError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("{}", self.0);
        }
        let body = ErrorBody { error: self.0.to_string().replace('\n', " "), kind: kind.into() };
        (status, Json(body)).into_response()
    }
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Autostart {
    /// Start the network at boot.
    pub enabled: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortFilter {
    vm: Option<String>,
    net: Option<String>,
}

/// The API routes.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route(
            "/v1/networks",
            get(|State(s): State<Shared>| async move { with_engine(s, |e| Ok(Json(e.networks()))).await }).post(
                |State(s): State<Shared>, Json(spec): Json<NetworkSpec>| async move {
                    with_engine(s, move |e| e.create_network(spec)).await.map(|n| (StatusCode::CREATED, Json(n)))
                },
            ),
        )
        .route(
            "/v1/networks/{name}",
            get(|State(s): State<Shared>, Path(name): Path<String>| async move {
                with_engine(s, move |e| e.network(&name)).await.map(Json)
            })
            .delete(|State(s): State<Shared>, Path(name): Path<String>| async move {
                with_engine(s, move |e| e.delete_network(&name)).await.map(|()| StatusCode::NO_CONTENT)
            }),
        )
        .route(
            "/v1/networks/{name}/start",
            post(|State(s): State<Shared>, Path(name): Path<String>| async move {
                with_engine(s, move |e| e.set_active(&name, true)).await.map(Json)
            }),
        )
        .route(
            "/v1/networks/{name}/stop",
            post(|State(s): State<Shared>, Path(name): Path<String>| async move {
                with_engine(s, move |e| e.set_active(&name, false)).await.map(Json)
            }),
        )
        .route(
            "/v1/networks/{name}/autostart",
            post(|State(s): State<Shared>, Path(name): Path<String>, Json(a): Json<Autostart>| async move {
                with_engine(s, move |e| e.set_autostart(&name, a.enabled)).await.map(Json)
            }),
        )
        .route(
            "/v1/networks/{name}/leases",
            get(|State(s): State<Shared>, Path(name): Path<String>| async move {
                with_engine(s, move |e| e.leases(&name)).await.map(Json)
            }),
        )
        .route(
            "/v1/ports",
            get(|State(s): State<Shared>, Query(f): Query<PortFilter>| async move {
                with_engine(s, move |e| {
                    Ok(Json(
                        e.ports(f.vm.as_deref(), f.net.as_deref()).into_iter().map(PortView::from).collect::<Vec<_>>(),
                    ))
                })
                .await
            })
            .post(|State(s): State<Shared>, Json(spec): Json<PortSpec>| async move {
                with_engine(s, move |e| e.create_port(spec))
                    .await
                    .map(|p| (StatusCode::CREATED, Json(PortView::from(p))))
            }),
        )
        .route(
            "/v1/ports/batch",
            post(|State(s): State<Shared>, Json(specs): Json<Vec<PortSpec>>| async move {
                with_engine(s, move |e| e.create_ports(specs))
                    .await
                    .map(|ports| (StatusCode::CREATED, Json(ports.into_iter().map(PortView::from).collect::<Vec<_>>())))
            }),
        )
        .route(
            "/v1/ports/{id}",
            axum::routing::delete(|State(s): State<Shared>, Path(id): Path<String>| async move {
                with_engine(s, move |e| e.delete_port(&id)).await.map(|()| StatusCode::NO_CONTENT)
            }),
        )
        .route(
            "/v1/status",
            get(|State(s): State<Shared>| async move { with_engine(s, |e| Ok(Json(e.status()))).await }),
        )
        .route(
            "/v1/bridges",
            get(|State(s): State<Shared>| async move { with_engine(s, |e| e.bridges()).await.map(Json) }),
        )
        .with_state(state)
}
