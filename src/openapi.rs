//! The OpenAPI 3.1 description of the REST API, made from the code.
//!
//! The request and response bodies are the API's own types, described by
//! `utoipa::ToSchema` derives next to their serde attributes, so a field
//! added, renamed or made optional changes the description with it. The
//! routes are closures in [`crate::api::router_for`], which utoipa's path
//! macros cannot annotate, so they are listed here, in [`ROUTES`], once;
//! the tests hold the two lists together (every route of the router is
//! described here and every route described here is served).
//!
//! Served at `GET /v1/openapi.json`, printed by `lanyard openapi` and kept
//! in the repository as `docs/openapi.json` (a test fails when it differs).

use std::borrow::Cow;

use utoipa::openapi::path::{HttpMethod, Operation, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ArrayBuilder, Content, InfoBuilder, LicenseBuilder, ObjectBuilder, OpenApi, PathItem, Paths, Ref, RefOr, Required,
    ResponseBuilder, Schema, Type,
};
use utoipa::ToSchema;

use crate::api::{Associate, Autostart, Egress, ErrorBody};
use crate::auth::{NewToken, Token, TokenSpec};
use crate::cloudinit::Seed;
use crate::daemon::cluster::NodeView;
use crate::engine::floating::{FipPoolView, FipView};
use crate::engine::forwards::ForwardView;
use crate::engine::projects::ProjectView;
use crate::engine::{BridgeView, PortView, StatusView};
use crate::model::floating::{FipPoolSpec, FipSpec};
use crate::model::forwards::PortForwardSpec;
use crate::model::grants::GrantSpec;
use crate::model::hosts::{StaticHost, StaticHostSpec};
use crate::model::{Lease, Network, NetworkPatch, NetworkSpec, PortSpec, ProjectSpec};
use crate::vlan_manager::{VlanManager, VlanManagerSpec};

/// A schema by the name of the type it describes (a function, so that the
/// table below names types, not strings that could drift from them).
type Name = fn() -> Cow<'static, str>;

/// What a request or response body is.
#[derive(Clone, Copy)]
pub enum Body {
    /// One JSON value of the type.
    One(Name),
    /// A JSON array of them.
    List(Name),
    /// Any JSON object (the description itself).
    Object,
    /// Prometheus' text exposition.
    Text,
    /// No body (204).
    Empty,
}

/// A query parameter.
#[derive(Clone, Copy)]
pub struct Param {
    /// Its name in the query string.
    pub name: &'static str,
    /// What it means.
    pub doc: &'static str,
    /// Its values: a string, a boolean, or one of a list.
    pub kind: ParamKind,
    /// Whether the route refuses a request without it.
    pub required: bool,
}

/// The values a query parameter takes.
#[derive(Clone, Copy)]
pub enum ParamKind {
    /// Any string.
    Text,
    /// `true` or `false`.
    Bool,
    /// One of these.
    OneOf(&'static [&'static str]),
}

/// One operation of the API.
pub struct Route {
    /// The HTTP method, upper case.
    pub method: &'static str,
    /// The path as the router has it, `{name}` for a path parameter.
    pub path: &'static str,
    /// One line for people.
    pub summary: &'static str,
    /// Only the admin may call it (a project's token gets 403).
    pub admin: bool,
    /// Its query parameters.
    pub query: &'static [Param],
    /// The request body it takes, if any.
    pub request: Option<Body>,
    /// The status of success.
    pub status: u16,
    /// The body of success.
    pub response: Body,
}

const PROJECT: Param = Param {
    name: "project",
    doc: "The project the network is looked up in (default: the caller's, else the default project).",
    kind: ParamKind::Text,
    required: false,
};

const PROJECT_FILTER: Param = Param {
    name: "project",
    doc: "Only this project's (default: every project the caller sees).",
    kind: ParamKind::Text,
    required: false,
};

const ADDRESS: Param = Param {
    name: "address",
    doc: "The host address of the forward, when the network has the port forwarded on several.",
    kind: ParamKind::Text,
    required: false,
};

const FORCE: Param = Param {
    name: "force",
    doc: "Delete a network that has ports, with its ports.",
    kind: ParamKind::Bool,
    required: false,
};

const VM: Param = Param { name: "vm", doc: "Only this VM's ports.", kind: ParamKind::Text, required: false };

const NET: Param = Param {
    name: "net",
    doc: "Only the ports of this network (a name in `project`); an unknown network is 404.",
    kind: ParamKind::Text,
    required: false,
};

const FORMAT: Param =
    Param { name: "format", doc: "The configuration format.", kind: ParamKind::OneOf(&["cloud-init"]), required: true };

/// Shorthand for the table: a route that is not admin-only.
const fn route(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    query: &'static [Param],
    request: Option<Body>,
    status: u16,
    response: Body,
) -> Route {
    Route { method, path, summary, admin: false, query, request, status, response }
}

/// [`route`], admin-only.
const fn admin(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    request: Option<Body>,
    status: u16,
    response: Body,
) -> Route {
    Route { method, path, summary, admin: true, query: &[], request, status, response }
}

use Body::{Empty, List, One};

/// Every route of [`crate::api::router_for`].
pub const ROUTES: &[Route] = &[
    route(
        "GET",
        "/v1/projects",
        "List projects (a project's token sees its own).",
        &[],
        None,
        200,
        List(ProjectView::name),
    ),
    admin("POST", "/v1/projects", "Create a project.", Some(One(ProjectSpec::name)), 201, One(ProjectView::name)),
    route("GET", "/v1/projects/{name}", "Show a project.", &[], None, 200, One(ProjectView::name)),
    admin("DELETE", "/v1/projects/{name}", "Delete an empty project.", None, 204, Empty),
    route(
        "POST",
        "/v1/projects/{name}/egress",
        "Allow or deny the project's guests connections beyond their networks.",
        &[],
        Some(One(Egress::name)),
        200,
        One(ProjectView::name),
    ),
    admin(
        "POST",
        "/v1/projects/{name}/allow",
        "Let the project's guests reach another project's.",
        Some(One(GrantSpec::name)),
        200,
        One(ProjectView::name),
    ),
    admin(
        "POST",
        "/v1/projects/{name}/deny",
        "Take back a grant.",
        Some(One(GrantSpec::name)),
        200,
        One(ProjectView::name),
    ),
    admin(
        "GET",
        "/v1/projects/{name}/tokens",
        "List the project's tokens (never their secrets).",
        None,
        200,
        List(Token::name),
    ),
    admin(
        "POST",
        "/v1/projects/{name}/tokens",
        "Make a token for the project; the answer is the only one that holds its secret.",
        Some(One(TokenSpec::name)),
        201,
        One(NewToken::name),
    ),
    admin("DELETE", "/v1/projects/{name}/tokens/{id}", "Delete a token.", None, 204, Empty),
    route("GET", "/v1/networks", "List networks.", &[PROJECT_FILTER], None, 200, List(Network::name)),
    route(
        "POST",
        "/v1/networks",
        "Define and start a network.",
        &[],
        Some(One(NetworkSpec::name)),
        201,
        One(Network::name),
    ),
    route("GET", "/v1/networks/{name}", "Show a network.", &[PROJECT], None, 200, One(Network::name)),
    route(
        "PATCH",
        "/v1/networks/{name}",
        "Change what a running network can change (autostart, domain, DHCP range, lease time).",
        &[PROJECT],
        Some(One(NetworkPatch::name)),
        200,
        One(Network::name),
    ),
    route("DELETE", "/v1/networks/{name}", "Delete a network.", &[PROJECT, FORCE], None, 204, Empty),
    route("POST", "/v1/networks/{name}/start", "Start a network.", &[PROJECT], None, 200, One(Network::name)),
    route(
        "POST",
        "/v1/networks/{name}/stop",
        "Stop a network (its definition stays).",
        &[PROJECT],
        None,
        200,
        One(Network::name),
    ),
    route(
        "POST",
        "/v1/networks/{name}/autostart",
        "Start the network, or not, when the daemon starts.",
        &[PROJECT],
        Some(One(Autostart::name)),
        200,
        One(Network::name),
    ),
    route(
        "GET",
        "/v1/networks/{name}/leases",
        "List the network's DHCP leases.",
        &[PROJECT],
        None,
        200,
        List(Lease::name),
    ),
    route(
        "DELETE",
        "/v1/networks/{name}/leases/{lease}",
        "Delete a dynamic lease, by IP or MAC.",
        &[PROJECT],
        None,
        204,
        Empty,
    ),
    route(
        "GET",
        "/v1/networks/{name}/hosts",
        "List the network's static DHCP hosts.",
        &[PROJECT],
        None,
        200,
        List(StaticHost::name),
    ),
    route(
        "POST",
        "/v1/networks/{name}/hosts",
        "Add a static DHCP host (a MAC that is not a port).",
        &[PROJECT],
        Some(One(StaticHostSpec::name)),
        201,
        One(StaticHost::name),
    ),
    route("DELETE", "/v1/networks/{name}/hosts/{mac}", "Delete a static DHCP host.", &[PROJECT], None, 204, Empty),
    route(
        "GET",
        "/v1/networks/{name}/forwards",
        "List the port forwards into the network.",
        &[PROJECT],
        None,
        200,
        List(ForwardView::name),
    ),
    route(
        "POST",
        "/v1/networks/{name}/forwards",
        "Forward a host port (TCP or UDP) to a port of one of the network's guests.",
        &[PROJECT],
        Some(One(PortForwardSpec::name)),
        201,
        One(ForwardView::name),
    ),
    route(
        "DELETE",
        "/v1/networks/{name}/forwards/{proto}/{host_port}",
        "Delete a port forward.",
        &[PROJECT, ADDRESS],
        None,
        204,
        Empty,
    ),
    route("GET", "/v1/ports", "List ports.", &[VM, NET, PROJECT_FILTER], None, 200, List(PortView::name)),
    route(
        "POST",
        "/v1/ports",
        "Create a port (a TAP or a veth pair).",
        &[],
        Some(One(PortSpec::name)),
        201,
        One(PortView::name),
    ),
    route(
        "POST",
        "/v1/ports/batch",
        "Create several ports at once: all or none.",
        &[],
        Some(List(PortSpec::name)),
        201,
        List(PortView::name),
    ),
    route("GET", "/v1/ports/{id}", "Show a port.", &[], None, 200, One(PortView::name)),
    route("DELETE", "/v1/ports/{id}", "Delete a port.", &[], None, 204, Empty),
    route(
        "GET",
        "/v1/ports/{id}/config",
        "The port's guest configuration (a NoCloud seed).",
        &[FORMAT],
        None,
        200,
        One(Seed::name),
    ),
    admin("GET", "/v1/managers/vlan", "The VLAN manager's configuration.", None, 200, One(VlanManager::name)),
    admin(
        "PUT",
        "/v1/managers/vlan",
        "Configure the VLAN manager.",
        Some(One(VlanManagerSpec::name)),
        200,
        One(VlanManager::name),
    ),
    route("GET", "/v1/fip-pools", "List floating IP pools.", &[], None, 200, List(FipPoolView::name)),
    admin(
        "POST",
        "/v1/fip-pools",
        "Create a floating IP pool.",
        Some(One(FipPoolSpec::name)),
        201,
        One(FipPoolView::name),
    ),
    admin(
        "DELETE",
        "/v1/fip-pools/{name}",
        "Delete a floating IP pool none of whose addresses is held.",
        None,
        204,
        Empty,
    ),
    route("GET", "/v1/fips", "List floating IPs.", &[PROJECT_FILTER], None, 200, List(FipView::name)),
    route("POST", "/v1/fips", "Allocate a floating IP.", &[], Some(One(FipSpec::name)), 201, One(FipView::name)),
    route("GET", "/v1/fips/{ip}", "Show a floating IP.", &[], None, 200, One(FipView::name)),
    route("DELETE", "/v1/fips/{ip}", "Release a floating IP.", &[], None, 204, Empty),
    route(
        "POST",
        "/v1/fips/{ip}/associate",
        "Associate a floating IP with a port.",
        &[],
        Some(One(Associate::name)),
        200,
        One(FipView::name),
    ),
    route("POST", "/v1/fips/{ip}/disassociate", "Disassociate a floating IP.", &[], None, 200, One(FipView::name)),
    admin(
        "GET",
        "/v1/status",
        "The daemon in one screen: version, uptime, store, counts, self-healing.",
        None,
        200,
        One(StatusView::name),
    ),
    admin("GET", "/v1/bridges", "lanyard's bridges, as `brctl show` prints them.", None, 200, List(BridgeView::name)),
    admin("GET", "/v1/nodes", "The cluster's nodes (a single host: itself).", None, 200, List(NodeView::name)),
    admin("GET", "/metrics", "Prometheus metrics (text exposition format 0.0.4).", None, 200, Body::Text),
    route("GET", "/v1/openapi.json", "This description.", &[], None, 200, Body::Object),
];

/// The schemas the routes name, with every schema they refer to.
#[derive(utoipa::OpenApi)]
#[openapi(components(schemas(
    ErrorBody,
    ProjectView,
    ProjectSpec,
    Egress,
    GrantSpec,
    Token,
    TokenSpec,
    NewToken,
    Network,
    NetworkSpec,
    NetworkPatch,
    Autostart,
    Lease,
    StaticHost,
    StaticHostSpec,
    ForwardView,
    PortForwardSpec,
    PortView,
    PortSpec,
    Seed,
    VlanManager,
    VlanManagerSpec,
    FipPoolView,
    FipPoolSpec,
    FipView,
    FipSpec,
    Associate,
    StatusView,
    BridgeView,
    NodeView,
)))]
struct Schemas;

/// The name of the bearer-token security scheme.
const BEARER: &str = "token";

/// The description, as `GET /v1/openapi.json` serves it.
pub fn document() -> OpenApi {
    let mut doc = <Schemas as utoipa::OpenApi>::openapi();
    doc.info = InfoBuilder::new()
        .title("lanyard")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Virtual networks for virtual machines on Linux hosts. The API is served on the daemon's unix \
             socket (a request without a token is the admin's) and, with `--listen`, over TLS (a project's \
             bearer token is required). Every error is an `ErrorBody`.",
        ))
        .license(Some(LicenseBuilder::new().name("Apache-2.0").identifier(Some("Apache-2.0")).build()))
        .build();
    let mut paths = Paths::new();
    for r in ROUTES {
        paths
            .paths
            .entry(r.path.to_string())
            .or_default()
            .merge_operations(PathItem::new(method(r.method), operation(r)));
    }
    doc.paths = paths;
    if let Some(components) = doc.components.as_mut() {
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                utoipa::openapi::security::HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("lyt_ and 64 hex digits")
                    .description(Some("A project's token (`lanyard token create`); on the unix socket, optional."))
                    .build(),
            ),
        );
    }
    // On the unix socket no token is needed (the admin); with one, the
    // request is its project's.
    doc.security = Some(vec![SecurityRequirement::default(), SecurityRequirement::new(BEARER, Vec::<String>::new())]);
    doc
}

/// The description as pretty JSON with a final newline, as
/// `docs/openapi.json` holds it.
pub fn document_json() -> String {
    let mut text = serde_json::to_string_pretty(&document()).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

fn method(m: &str) -> HttpMethod {
    match m {
        "GET" => HttpMethod::Get,
        "POST" => HttpMethod::Post,
        "PUT" => HttpMethod::Put,
        "PATCH" => HttpMethod::Patch,
        "DELETE" => HttpMethod::Delete,
        _ => HttpMethod::Head,
    }
}

/// `#/components/schemas/NAME`, or an array of them.
fn schema_of(body: Body) -> Option<RefOr<Schema>> {
    match body {
        Body::One(name) => Some(Ref::from_schema_name(name()).into()),
        Body::List(name) => Some(ArrayBuilder::new().items(Ref::from_schema_name(name())).into()),
        Body::Object => Some(ObjectBuilder::new().schema_type(Type::Object).into()),
        Body::Text => Some(ObjectBuilder::new().schema_type(Type::String).into()),
        Body::Empty => None,
    }
}

fn operation(r: &Route) -> Operation {
    let mut op = OperationBuilder::new()
        .summary(Some(r.summary))
        .operation_id(Some(operation_id(r)))
        .tag(r.path.split('/').nth(2).filter(|_| r.path.starts_with("/v1/")).unwrap_or("metrics"));
    if r.admin {
        op = op.description(Some("Admin only: a project's token gets 403."));
    }
    for name in path_params(r.path) {
        op = op.parameter(
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                .example(Some(path_example(name).into())),
        );
    }
    for q in r.query {
        let schema = match q.kind {
            ParamKind::Text => ObjectBuilder::new().schema_type(Type::String),
            ParamKind::Bool => ObjectBuilder::new().schema_type(Type::Boolean),
            ParamKind::OneOf(values) => {
                ObjectBuilder::new().schema_type(Type::String).enum_values(Some(values.iter().copied()))
            }
        };
        op = op.parameter(
            ParameterBuilder::new()
                .name(q.name)
                .parameter_in(ParameterIn::Query)
                .description(Some(q.doc))
                .required(if q.required { Required::True } else { Required::False })
                .schema(Some(schema)),
        );
    }
    if let Some(body) = r.request {
        op = op.request_body(Some(
            RequestBodyBuilder::new()
                .required(Some(Required::True))
                .content("application/json", Content::new(schema_of(body)))
                .build(),
        ));
    }
    let success = match r.response {
        Body::Empty => ResponseBuilder::new().description("Done."),
        Body::Text => ResponseBuilder::new()
            .description("The metrics.")
            .content("text/plain; version=0.0.4", Content::new(schema_of(Body::Text))),
        body => ResponseBuilder::new().description("Done.").content("application/json", Content::new(schema_of(body))),
    };
    op.response(r.status.to_string(), success)
        .response(
            "default",
            ResponseBuilder::new()
                .description("Refused: 400 invalid, 401/403 not allowed, 404 not found, 409 conflict, ...")
                .content("application/json", Content::new(Some(Ref::from_schema_name(ErrorBody::name())))),
        )
        .build()
}

/// An example of a path parameter, for readers and for fuzzers (which
/// then reach existing objects, not only 404s).
fn path_example(name: &str) -> &'static str {
    match name {
        "mac" => "52:54:00:aa:bb:cc",
        "ip" => "203.0.113.10",
        "lease" => "192.168.122.10",
        "id" => "1a2b3c4d",
        "proto" => "tcp",
        "host_port" => "8080",
        _ => "default",
    }
}

/// The names of `{...}` segments of a path.
fn path_params(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
}

/// A stable id from method and path: `get_v1_networks_name_leases`.
fn operation_id(r: &Route) -> String {
    let path: Vec<&str> =
        r.path.split('/').filter(|s| !s.is_empty()).map(|s| s.trim_start_matches('{').trim_end_matches('}')).collect();
    format!("{}_{}", r.method.to_lowercase(), path.join("_").replace(['-', '.'], "_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` of the document names a schema it has.
    #[test]
    fn every_reference_resolves() {
        let doc = serde_json::to_value(document()).unwrap();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(refs.len() > 40, "{refs:?}");
        for r in refs {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("odd $ref {r}"));
            assert!(schemas.contains_key(name), "$ref {r} names no schema");
        }
        assert_eq!(doc["openapi"], "3.1.0");
    }

    fn collect_refs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|v| collect_refs(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }

    /// docs/openapi.json is this description. After a change to the API:
    /// `cargo run -- openapi > docs/openapi.json`, or run this test with
    /// LANYARD_UPDATE_OPENAPI=1.
    #[test]
    fn the_checked_in_description_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
        let current = document_json();
        if std::env::var_os("LANYARD_UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &current).unwrap();
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == current,
            "docs/openapi.json is not the API's description; regenerate it: \
             `cargo run -- openapi > docs/openapi.json` (or LANYARD_UPDATE_OPENAPI=1 cargo test --lib openapi)"
        );
    }

    /// Operation ids are unique (clients generate method names from them).
    #[test]
    fn operation_ids_are_unique() {
        let mut ids: Vec<String> = ROUTES.iter().map(operation_id).collect();
        ids.sort();
        let n = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), n);
    }

    /// Every `.route("PATH"` of api.rs is described, and every described
    /// path is one of them: a route added without a line in [`ROUTES`]
    /// fails here.
    #[test]
    fn every_route_of_the_router_is_described() {
        let source = include_str!("api.rs");
        let router = source.split("pub fn router_for").nth(1).unwrap().split("#[cfg(test)]").next().unwrap();
        let mut served: Vec<&str> = router.split(".route(").skip(1).filter_map(|s| s.split('"').nth(1)).collect();
        served.sort();
        served.dedup();
        let mut described: Vec<&str> = ROUTES.iter().map(|r| r.path).collect();
        described.sort();
        described.dedup();
        assert_eq!(served, described);
    }
}
