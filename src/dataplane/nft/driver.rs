//! [`NftDriver`]: lanyard's table through one long-lived libnftables
//! context. It reads a set's elements and applies a [`FirewallChange`] as
//! one nftables transaction; every command names lanyard's table, so
//! nothing else in the ruleset is read or touched. The table's fingerprint
//! comes from one netlink request instead ([`TableQuery`]).

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

use super::coexist;
use super::elements::parse_listing;
use super::ffi::{CommandError, Context, Output};
use super::script;
use super::table_query::TableQuery;
use crate::kernel::firewall::{TableId, FINGERPRINT_PREFIX};
use crate::kernel::{Coexistence, Element, FirewallChange, KernelError, Set};

/// The in-process nftables driver. Create it in the network namespace it
/// is to manage: its netlink socket stays there.
#[derive(Debug)]
pub struct NftDriver {
    context: Mutex<Context>,
    query: Mutex<TableQuery>,
}

impl NftDriver {
    /// Loads libnftables and opens a context in the calling thread's
    /// network namespace.
    pub fn new() -> Result<NftDriver, KernelError> {
        Ok(NftDriver { context: Mutex::new(Context::new()?), query: Mutex::new(TableQuery::open()?) })
    }

    fn context(&self) -> MutexGuard<'_, Context> {
        // Context::run leaves nothing half-done if a caller panicked while
        // holding the lock (it does not panic itself).
        self.context.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self, commands: &str, output: Output) -> Result<String, CommandError> {
        self.context().run(commands, output)
    }

    /// The fingerprint comment of `table`: `Some("lanyard:…")`, `Some("")`
    /// for a table that exists without lanyard's comment (a fingerprint no
    /// plan has, so it gets replaced), None when there is no such table.
    pub fn fingerprint(&self, table: &TableId) -> Result<Option<String>, KernelError> {
        let comment = self.query.lock().unwrap_or_else(|p| p.into_inner()).comment(table)?;
        Ok(comment.map(|c| c.filter(|c| c.starts_with(FINGERPRINT_PREFIX)).unwrap_or_default()))
    }

    /// The ruleset's generation (see [`TableQuery::generation`]).
    pub fn generation(&self) -> Result<u32, KernelError> {
        self.query.lock().unwrap_or_else(|p| p.into_inner()).generation()
    }

    /// The elements the kernel has in `set` (a map when `set.data` is not
    /// empty) of `table`, typed by the set's declared key and data types.
    pub fn elements(&self, table: &TableId, set: &Set) -> Result<BTreeSet<Element>, KernelError> {
        let kind = if set.data.is_empty() { "set" } else { "map" };
        let what = format!("{kind} {} of table {table}", set.name);
        let json = self
            .run(&format!("list {kind} {table} {}", set.name), Output::Json)
            .map_err(|e| observe_error(&what, &e))?;
        parse_listing(&json, set).map_err(|message| KernelError::Observe {
            what: "nftables set elements",
            message: format!("{what}: {message}"),
        })
    }

    /// Applies `change` in one nftables transaction: all of it or, when
    /// nftables refuses any part, none of it.
    pub fn apply(&self, change: &FirewallChange) -> Result<(), KernelError> {
        if !change.is_transaction() {
            return Ok(());
        }
        let commands = match change {
            FirewallChange::None => return Ok(()),
            FirewallChange::Replace(table) => script::replace(table),
            FirewallChange::Delete(id) => script::delete(id),
            FirewallChange::Elements(changes) => script::elements(changes),
        };
        self.run(&commands, Output::Text)
            .map(drop)
            .map_err(|e| KernelError::Firewall { what: script::describe(change), message: one_line(&e.message) })
    }
}

impl NftDriver {
    fn chains(&self) -> Result<String, KernelError> {
        self.run("list chains", Output::Json).map_err(|e| observe_error("chains", &e))
    }

    /// What other tables do at the forward hook (read only).
    pub fn coexistence(&self, mark: u32) -> Result<Coexistence, KernelError> {
        let chains = self.chains()?;
        let forward_drops = coexist::forward_drops(&chains, crate::planner::NFT_TABLE)
            .map_err(|message| KernelError::Observe { what: "nftables chains", message })?;
        let docker_user = coexist::has_docker_user(&chains);
        let docker_user_rules = docker_user && coexist::repair_commands(&self.our_docker_user_rules()?, mark).is_none();
        Ok(Coexistence { forward_drops, docker_user, docker_user_rules })
    }

    fn our_docker_user_rules(&self) -> Result<Vec<(usize, u64)>, KernelError> {
        let (family, table, chain) = coexist::DOCKER_USER;
        let listing = self
            .run(&format!("list chain {family} {table} {chain}"), Output::Json)
            .map_err(|e| observe_error("DOCKER-USER", &e))?;
        coexist::our_rules(&listing).map_err(|message| KernelError::Observe { what: "DOCKER-USER", message })
    }

    /// Puts lanyard's rules at the top of DOCKER-USER when it exists and
    /// they are not there.
    pub fn ensure_docker_user(&self, mark: u32) -> Result<bool, KernelError> {
        if !coexist::has_docker_user(&self.chains()?) {
            return Ok(false);
        }
        let Some(commands) = coexist::repair_commands(&self.our_docker_user_rules()?, mark) else { return Ok(false) };
        self.run(&commands, Output::Text).map_err(|e| KernelError::Firewall {
            what: "lanyard's rules in DOCKER-USER".into(),
            message: one_line(&e.message),
        })?;
        Ok(true)
    }
}

fn observe_error(what: &str, e: &CommandError) -> KernelError {
    KernelError::Observe { what: "nftables", message: format!("{what}: {}", one_line(&e.message)) }
}

/// nft's error output on one line: its messages and the command they point
/// at, without the `^^^` marker lines, joined with `; `.
pub(crate) fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '^' || c == '~' || c.is_whitespace()))
        .collect();
    if lines.is_empty() {
        "nftables failed without a message".into()
    } else {
        lines.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_driver_can_be_shared_between_threads() {
        // The Kernel trait asks drivers to be Send + Sync.
        fn shareable<T: Send + Sync>() {}
        shareable::<NftDriver>();
        shareable::<super::super::NftMonitor>();
    }

    #[test]
    fn errors_fit_on_one_line() {
        let nft = "Error: Could not process rule: No such file or directory\ndelete element inet lanyard bridges { \"x\" }\n                                      ^^^^^\n";
        assert_eq!(
            one_line(nft),
            "Error: Could not process rule: No such file or directory; delete element inet lanyard bridges { \"x\" }"
        );
        assert_eq!(one_line(""), "nftables failed without a message");
    }
}
