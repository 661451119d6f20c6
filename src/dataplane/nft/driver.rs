//! [`NftDriver`]: lanyard's table through one long-lived libnftables
//! context. It reads the table's fingerprint and a set's elements, and
//! applies a [`FirewallChange`] as one nftables transaction; every command
//! names lanyard's table, so nothing else in the ruleset is read or touched.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

use super::elements::parse_listing;
use super::ffi::{CommandError, Context, Output};
use super::script;
use crate::kernel::firewall::{TableId, FINGERPRINT_PREFIX};
use crate::kernel::{Element, FirewallChange, KernelError, Set};

/// The in-process nftables driver. Create it in the network namespace it
/// is to manage: its netlink socket stays there.
#[derive(Debug)]
pub struct NftDriver {
    context: Mutex<Context>,
}

impl NftDriver {
    /// Loads libnftables and opens a context in the calling thread's
    /// network namespace.
    pub fn new() -> Result<NftDriver, KernelError> {
        Ok(NftDriver { context: Mutex::new(Context::new()?) })
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
        // Terse: the header and declarations without the elements, which
        // may be thousands.
        match self.run(&format!("list table {table}"), Output::Terse) {
            Ok(listing) => Ok(Some(table_comment(&listing).unwrap_or_default())),
            Err(listing_error) => {
                // Rarely taken (first start): tell "no such table" from a
                // real failure by asking which tables exist.
                let tables = self.run("list tables", Output::Text).map_err(|e| observe_error("tables", &e))?;
                let wanted = format!("table {table}");
                if tables.lines().any(|l| l.trim() == wanted) {
                    Err(observe_error(&format!("table {table}"), &listing_error))
                } else {
                    Ok(None)
                }
            }
        }
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
        let elements_of = crate::planner::table_id();
        let commands = match change {
            FirewallChange::None => return Ok(()),
            FirewallChange::Replace(table) => script::replace(table),
            FirewallChange::Delete(id) => script::delete(id),
            FirewallChange::Elements(changes) if changes.is_empty() => return Ok(()),
            FirewallChange::Elements(changes) => script::elements(&elements_of, changes),
        };
        self.run(&commands, Output::Text).map(drop).map_err(|e| KernelError::Firewall {
            what: script::describe(change, &elements_of),
            message: one_line(&e.message),
        })
    }
}

fn observe_error(what: &str, e: &CommandError) -> KernelError {
    KernelError::Observe { what: "nftables", message: format!("{what}: {}", one_line(&e.message)) }
}

/// The table's own comment in a text listing: nft prints it one tab deep
/// right after the `table … {` line (sets, chains and rules indent theirs
/// further), as `comment "…"`.
fn table_comment(listing: &str) -> Option<String> {
    let comment = listing.lines().find_map(|l| l.strip_prefix("\tcomment \""))?;
    let text = &comment[..comment.rfind('"')?];
    text.starts_with(FINGERPRINT_PREFIX).then(|| text.to_string())
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
    fn reads_the_table_comment_only() {
        let listing = "table inet lanyard {\n\tflags dormant\n\tcomment \"lanyard:00112233aabbccdd\"\n\tset s {\n\t\ttype ifname\n\t\tcomment \"lanyard:nope\"\n\t}\n}\n";
        assert_eq!(table_comment(listing).as_deref(), Some("lanyard:00112233aabbccdd"));
        assert_eq!(table_comment("table inet lanyard {\n\tset s {\n\t\tcomment \"lanyard:x\"\n\t}\n}\n"), None);
        assert_eq!(table_comment("table inet lanyard {\n\tcomment \"someone else's\"\n}\n"), None);
        assert_eq!(table_comment("table inet lanyard {\n\tcomment \"lanyard:unterminated\n}"), None);
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
