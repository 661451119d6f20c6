//! The daemon's configuration file (`lanyard daemon --config FILE`, TOML):
//! the daemon's own flags as keys (`state-dir`, `socket-group`, `listen`,
//! `metrics-listen`, `web-listen`, `tls-cert`, `tls-key`, `log-level`,
//! `etcd`, `node`, `underlay`). A flag (or its environment variable) wins
//! over the file, the file over the built-in default. An unknown key or a
//! wrong value refuses the start in one line: a misspelt option must not
//! be ignored. On SIGHUP (`systemctl reload lanyard`) the file is read
//! again: the log level applies at once, the rest at the next start (what
//! differs is named in the log). Networks are not configured here: they
//! are desired state, changed through the API (`lanyard apply -f`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// What a configuration file holds; every key optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// `--socket-group`.
    pub socket_group: Option<String>,
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--metrics-listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// `--web-listen`.
    pub web_listen: Option<SocketAddr>,
    /// `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// `--log-level`.
    pub log_level: Option<String>,
    /// `--etcd`: the client URLs.
    pub etcd: Option<Vec<String>>,
    /// `--node`.
    pub node: Option<String>,
    /// `--underlay`.
    pub underlay: Option<String>,
}

/// Reads and checks the file at `path`; the error is one line naming the
/// file and what is wrong in it.
pub fn load(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        // toml's message spans lines (the offending line, a caret): keep
        // the first and the explanation.
        let message = e.message().replace('\n', " ");
        let at = e.span().map(|s| text[..s.start.min(text.len())].lines().count().max(1));
        match at {
            Some(line) => format!("{} line {line}: {message}", path.display()),
            None => format!("{}: {message}", path.display()),
        }
    })
}

/// The keys of `new` that differ from `old` (but the log level, which a
/// reload applies): what takes effect only at the next start.
pub fn needs_restart(old: &FileConfig, new: &FileConfig) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut check = |differs: bool, key: &'static str| {
        if differs {
            keys.push(key);
        }
    };
    check(old.state_dir != new.state_dir, "state-dir");
    check(old.socket_group != new.socket_group, "socket-group");
    check(old.listen != new.listen, "listen");
    check(old.metrics_listen != new.metrics_listen, "metrics-listen");
    check(old.web_listen != new.web_listen, "web-listen");
    check(old.tls_cert != new.tls_cert, "tls-cert");
    check(old.tls_key != new.tls_key, "tls-key");
    check(old.etcd != new.etcd, "etcd");
    check(old.node != new.node, "node");
    check(old.underlay != new.underlay, "underlay");
    keys
}

/// Reads the file at `path` again on every SIGHUP until the daemon ends:
/// `apply` takes the new log level (false: a flag keeps it); what else
/// differs from the file the daemon `started` with is named as waiting
/// for a restart. A file that does not parse changes nothing. Without a
/// file (`path` None) a SIGHUP is only logged, instead of ending the
/// daemon as its default action would.
pub async fn reload_on_hangup(
    path: Option<PathBuf>,
    started: FileConfig,
    apply: impl Fn(&str) -> Result<bool, String> + Send + 'static,
) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot handle SIGHUP (no reload): {e}");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        let Some(path) = &path else {
            tracing::info!("SIGHUP: no --config file, nothing to reload");
            continue;
        };
        let new = match load(path) {
            Ok(new) => new,
            Err(e) => {
                tracing::error!("reload refused, nothing changed: {e}");
                continue;
            }
        };
        let level = new.log_level.as_deref().unwrap_or("info");
        match apply(level) {
            Ok(true) => tracing::info!(log_level = level, file = %path.display(), "configuration reloaded"),
            Ok(false) => {
                tracing::info!(file = %path.display(), "configuration reloaded; --log-level keeps the log level")
            }
            Err(e) => tracing::error!("reload: log-level {level:?} refused, the old one stays: {e}"),
        }
        let waiting = needs_restart(&started, &new);
        if !waiting.is_empty() {
            tracing::warn!(file = %path.display(), "changed: {}: takes effect at the next start", waiting.join(", "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileConfig, String> {
        let dir = std::env::temp_dir().join(format!("lanyard-config-{}-{}", std::process::id(), text.len()));
        std::fs::write(&dir, text).unwrap();
        let r = load(&dir);
        let _ = std::fs::remove_file(&dir);
        r
    }

    #[test]
    fn keys_are_the_flags() {
        let c = parse(
            "state-dir = \"/var/lib/lanyard\"\nlog-level = \"debug\"\nmetrics-listen = \"127.0.0.1:9477\"\n\
             etcd = [\"http://10.0.0.5:2379\"]\nnode = \"h1\"\nunderlay = \"eth1\"\n",
        )
        .unwrap();
        assert_eq!(c.state_dir.as_deref(), Some(Path::new("/var/lib/lanyard")));
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9477".parse().unwrap()));
        assert_eq!(c.etcd.as_deref(), Some(&["http://10.0.0.5:2379".to_string()][..]));
        assert_eq!(parse("").unwrap(), FileConfig::default());
    }

    #[test]
    fn a_wrong_file_is_one_line_naming_what() {
        for (text, want) in [
            ("log-levle = \"debug\"\n", "unknown field `log-levle`"),
            ("\n\nmetrics-listen = \"nowhere\"\n", "line 3"),
            ("etcd = 5\n", "invalid type"),
            ("[", "line 1"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want) && !e.contains('\n'), "{text:?}: {e}");
        }
        assert!(load(Path::new("/nonexistent/lanyard.toml")).unwrap_err().starts_with("cannot read /nonexistent"));
    }

    #[test]
    fn the_packaged_file_parses_and_so_does_each_example_in_it() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/lanyard.toml"));
        assert_eq!(load(path).unwrap(), FileConfig::default(), "everything in it is commented out");
        let text = std::fs::read_to_string(path).unwrap();
        let examples: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.contains(" = "))
            .map(|l| format!("{}\n", l.split("  #").next().unwrap()))
            .collect();
        let all = parse(&examples).unwrap_or_else(|e| panic!("{e}\n{examples}"));
        assert_eq!(all.node.as_deref(), Some("host1"));
        assert_eq!(all.web_listen, Some("127.0.0.1:9478".parse().unwrap()));
    }

    #[test]
    fn a_reload_names_what_waits_for_a_restart() {
        let old = FileConfig { log_level: Some("info".into()), node: Some("a".into()), ..Default::default() };
        let new = FileConfig { log_level: Some("debug".into()), node: Some("b".into()), ..Default::default() };
        assert_eq!(needs_restart(&old, &new), ["node"]);
        assert!(needs_restart(&old, &old).is_empty());
    }
}
