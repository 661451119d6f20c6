//! The read-only web view (`lanyard daemon --web-listen ADDR:PORT`): one
//! page with the topology picture (`lanyard topo`'s SVG) and the network,
//! port and lease tables, reloading itself every few seconds. It shows
//! every project's networks, so it is the admin's, opt-in like the metrics
//! listener: listen on loopback or a management address. Nothing on it
//! changes anything; every guest-chosen string is HTML-escaped.

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde_json::Value;

use crate::api::Shared;
use crate::cli::topo;
use crate::engine::Engine;

/// Seconds between the page's reloads.
pub const REFRESH_SECS: u32 = 5;

/// The web view's routes: the page at `/`, its topology alone at
/// `/topology.svg`.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(|axum::extract::State(s): axum::extract::State<Shared>| async move { page(s).await }))
        .route(
            "/topology.svg",
            get(|axum::extract::State(s): axum::extract::State<Shared>| async move {
                match snapshot(s).await {
                    Ok(t) => ([(header::CONTENT_TYPE, "image/svg+xml")], topo::svg(&t)).into_response(),
                    Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
                }
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "only / and /topology.svg are served here\n") })
        .with_state(state)
}

/// The topology as the API would describe it, read under the engine's
/// lock once.
async fn snapshot(state: Shared) -> Result<topo::Topology, String> {
    tokio::task::spawn_blocking(move || {
        let engine = state.lock().unwrap_or_else(|p| p.into_inner());
        topology_of(&engine)
    })
    .await
    .map_err(|e| format!("the page could not be made: {e}"))
}

fn topology_of(engine: &Engine) -> topo::Topology {
    let networks = serde_json::to_value(engine.networks()).unwrap_or(Value::Null);
    let ports = serde_json::to_value(engine.ports(None, None)).unwrap_or(Value::Null);
    let leases = |key: &str| engine.leases(key).ok().and_then(|l| serde_json::to_value(l).ok()).unwrap_or(Value::Null);
    topo::build(&networks, &ports, &leases)
}

fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut o = String::from("<table><tr>");
    for h in head {
        o.push_str(&format!("<th>{}</th>", topo::xml(h)));
    }
    o.push_str("</tr>");
    for r in rows {
        o.push_str("<tr>");
        for c in r {
            o.push_str(&format!("<td>{}</td>", topo::xml(c)));
        }
        o.push_str("</tr>");
    }
    o.push_str("</table>");
    o
}

/// The page for `t`.
pub fn render(t: &topo::Topology) -> String {
    let nets: Vec<Vec<String>> = t
        .networks
        .iter()
        .map(|n| {
            vec![
                n.key.clone(),
                n.mode.clone(),
                n.state.clone(),
                n.bridge.clone(),
                n.subnet.clone(),
                n.gateway.clone(),
                n.uplink.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let ports: Vec<Vec<String>> = t
        .networks
        .iter()
        .flat_map(|n| {
            n.ports.iter().map(|p| {
                vec![
                    p.vm.clone(),
                    p.ifname.clone(),
                    n.key.clone(),
                    p.mac.clone(),
                    p.ip.clone().unwrap_or_default(),
                    p.node.clone().unwrap_or_default(),
                ]
            })
        })
        .collect();
    let clients: Vec<Vec<String>> = t
        .networks
        .iter()
        .flat_map(|n| {
            n.clients
                .iter()
                .map(|c| vec![n.key.clone(), c.mac.clone(), c.ip.clone(), c.hostname.clone().unwrap_or_default()])
        })
        .collect();
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <title>lanyard</title><style>body{{font-family:sans-serif}} table{{border-collapse:collapse;margin:1em 0}} \
         td,th{{border:1px solid #999;padding:2px 8px;font-family:monospace}}</style></head><body>\n\
         <h1>lanyard</h1>\n<h2>Topology</h2>\n{}\n<h2>Networks</h2>\n{}\n<h2>Ports</h2>\n{}\n\
         <h2>Dynamic leases</h2>\n{}\n</body></html>\n",
        topo::svg(t),
        table(&["Network", "Mode", "State", "Bridge", "Subnet", "Gateway", "Uplink"], &nets),
        table(&["VM", "Interface", "Network", "MAC", "IP", "Node"], &ports),
        table(&["Network", "MAC", "IP", "Hostname"], &clients),
    )
}

async fn page(state: Shared) -> axum::response::Response {
    match snapshot(state).await {
        Ok(t) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], render(&t)).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_escapes_what_guests_chose() {
        let t = topo::Topology {
            networks: vec![topo::NetView {
                key: "default".into(),
                ports: vec![topo::PortView { vm: "<script>alert(1)</script>".into(), ..Default::default() }],
                clients: vec![topo::ClientView { hostname: Some("\"><img src=x>".into()), ..Default::default() }],
                ..Default::default()
            }],
        };
        let page = render(&t);
        assert!(!page.contains("<script>") && !page.contains("<img"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{page}");
        assert!(page.contains(&format!("content=\"{REFRESH_SECS}\"")));
    }
}
