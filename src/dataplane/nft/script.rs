//! The nft command text of each firewall change: what the driver hands to
//! libnftables as one buffer, that is one transaction. Every command names
//! lanyard's table explicitly, so nothing else in the ruleset can be
//! touched.

use crate::kernel::firewall::TableId;
use crate::kernel::{ElementChange, FirewallChange, Table};

/// Replaces `table` whole, or creates it: declaring it empty first makes
/// the `delete` valid whether or not it exists, and the three commands
/// commit together, so packets meet either the old table or the new one.
/// Conntrack entries are not part of a table and survive.
pub fn replace(table: &Table) -> String {
    format!("{}{}", delete(&table.id), table.render())
}

/// Deletes `id`. Declaring it first makes deleting an absent table a no-op
/// rather than an error: the goal, no table, is reached either way.
pub fn delete(id: &TableId) -> String {
    format!("table {id} {{}}\ndelete table {id}\n")
}

/// `add element`/`delete element` commands for `changes`, in order, each
/// naming its table. Consecutive changes of one kind to one set share a
/// command (`add element inet lanyard bridges { "a", "b" }`), which keeps ten
/// thousand changes to a handful of commands without reordering anything.
pub fn elements(changes: &[ElementChange]) -> String {
    let mut out = String::new();
    for run in changes.chunk_by(|a, b| a.table == b.table && a.set == b.set && a.add == b.add) {
        let Some(first) = run.first() else { continue };
        let verb = if first.add { "add" } else { "delete" };
        out.push_str(&format!("{verb} element {} {} {{ ", first.table, first.set));
        for (i, c) in run.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(&c.element.to_string());
        }
        out.push_str(" }\n");
    }
    out
}

/// The change in a few words, for error messages.
pub fn describe(change: &FirewallChange) -> String {
    match change {
        FirewallChange::None => "nothing".into(),
        FirewallChange::Replace(t) => format!("replacing table {}", t.id),
        FirewallChange::Delete(id) => format!("deleting table {id}"),
        FirewallChange::Elements(v) => {
            let adds = v.iter().filter(|c| c.add).count();
            let table = v.first().map(|c| c.table.to_string()).unwrap_or_default();
            format!("{adds} element additions and {} deletions in table {table}", v.len() - adds)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::firewall::{Family, Value};
    use crate::kernel::Element;

    fn id() -> TableId {
        TableId { family: Family::Inet, name: "lanyard".into() }
    }

    fn change(set: &str, add: bool, name: &str) -> ElementChange {
        ElementChange { table: id(), set: set.into(), add, element: Element::key(vec![Value::Ifname(name.into())]) }
    }

    #[test]
    fn element_changes_are_grouped_in_order() {
        let changes = [
            change("bridges", false, "a"),
            change("bridges", false, "b"),
            change("bridges", true, "c"),
            change("isolated", true, "c"),
            change("bridges", true, "d"),
        ];
        assert_eq!(
            elements(&changes),
            "delete element inet lanyard bridges { \"a\", \"b\" }\n\
             add element inet lanyard bridges { \"c\" }\n\
             add element inet lanyard isolated { \"c\" }\n\
             add element inet lanyard bridges { \"d\" }\n"
        );
        assert_eq!(elements(&[]), "");
    }

    #[test]
    fn replace_declares_deletes_and_renders() {
        let table = Table { id: id(), sets: Vec::new(), chains: Vec::new() };
        let text = replace(&table);
        assert!(text.starts_with("table inet lanyard {}\ndelete table inet lanyard\ntable inet lanyard {\n"), "{text}");
        assert!(text.ends_with(&table.render()));
        assert_eq!(delete(&id()), "table inet lanyard {}\ndelete table inet lanyard\n");
    }

    #[test]
    fn describes_changes() {
        let v = FirewallChange::Elements(vec![change("bridges", true, "a"), change("bridges", false, "b")]);
        assert_eq!(describe(&v), "1 element additions and 1 deletions in table inet lanyard");
        assert_eq!(describe(&FirewallChange::Delete(id())), "deleting table inet lanyard");
    }
}
