//! Per-host DHCP blocks of a cluster member: each host leases dynamic
//! addresses (clients that are no port) only from blocks of the network's
//! DHCP range it has claimed in the store (`claims/dhcp-block/NET/FIRST`,
//! owner the node), so two hosts never lease one address and a DISCOVER
//! never waits on the cluster: blocks are claimed ahead, off the DHCP
//! path, by [`top_up`] (the daemon runs it every second), when a host has
//! none or its free addresses run low. A single host leases from the
//! whole range and claims nothing.
//!
//! Three steps, so the store is asked without the engine's lock (an etcd
//! that does not answer must not hold up the API): [`Engine::block_needs`]
//! under the lock, [`claim_blocks`] without it, [`Engine::set_blocks`]
//! under it again.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use super::{lock, Engine, EngineError};
use crate::model::NetState;
use crate::store::{Store, StoreError};

/// The claim kind of a DHCP block: value `NET/FIRST-ADDRESS`.
pub const CLAIM_BLOCK: &str = "dhcp-block";

/// Addresses per block.
pub const BLOCK_SIZE: u32 = 16;

/// A host claims one more block when fewer of its addresses than this are
/// free: a burst of new clients finds one ready.
pub const LOW_WATER: usize = BLOCK_SIZE as usize / 2;

/// What one served network needs: its key and DHCP range, the blocks its
/// address book has, and whether they run low.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockNeed {
    /// The network's key.
    pub net: String,
    /// Its DHCP range.
    pub range: (Ipv4Addr, Ipv4Addr),
    /// The blocks its book leases from now (their first addresses).
    pub have: Vec<Ipv4Addr>,
    /// Fewer than [`LOW_WATER`] of them are free.
    pub low: bool,
}

/// The blocks of `range`: first and last address of each.
pub fn blocks_of(range: (Ipv4Addr, Ipv4Addr)) -> impl Iterator<Item = (Ipv4Addr, Ipv4Addr)> {
    let (first, last) = (u32::from(range.0), u32::from(range.1));
    (first..=last)
        .step_by(BLOCK_SIZE as usize)
        .map(move |b| (Ipv4Addr::from(b), Ipv4Addr::from(b.saturating_add(BLOCK_SIZE - 1).min(last))))
}

impl Engine {
    /// Step 1: the served networks of a cluster member and what their
    /// books have; None on a single host.
    pub fn block_needs(&self, now: u64) -> Option<(Arc<dyn Store>, String, Vec<BlockNeed>)> {
        let node = self.node.clone()?;
        let needs = self
            .networks
            .iter()
            .filter(|n| n.state == NetState::Active && n.serves_dhcp())
            .filter_map(|n| {
                let key = n.key().into_owned();
                let book = lock(self.books.get(&key)?);
                let have: Vec<Ipv4Addr> = book.blocks().unwrap_or_default().iter().map(|b| b.0).collect();
                let low = book.free_in_blocks(now).is_none_or(|free| free < LOW_WATER);
                Some(BlockNeed { net: key, range: (n.dhcp_range.first, n.dhcp_range.last), have, low })
            })
            .collect();
        Some((self.store.clone(), node, needs))
    }

    /// Step 3: each network's book leases from the blocks its host holds.
    pub fn set_blocks(&mut self, held: Vec<(String, Vec<Ipv4Addr>)>) {
        for (net, firsts) in held {
            let Some(book) = self.books.get(&net) else { continue };
            let mut book = lock(book);
            let range = (book.network().dhcp_range.first, book.network().dhcp_range.last);
            let blocks = blocks_of(range).filter(|b| firsts.contains(&b.0)).collect();
            book.set_blocks(Some(blocks));
        }
    }

    /// Gives back the DHCP blocks of the deleted network `key`, every
    /// host's (a block's owner is the node; the network is gone for all).
    /// A failure leaves orphan claims, which hold addresses of a network
    /// that no longer exists: only a new network of the same key sees them.
    pub(crate) fn release_blocks(&self, key: &str) {
        if self.node.is_none() {
            return;
        }
        let prefix = format!("{key}/");
        let released = self.store.claims(CLAIM_BLOCK).and_then(|claims| {
            for c in claims.iter().filter(|c| c.value.strip_prefix(&prefix).is_some_and(|ip| !ip.contains('/'))) {
                self.store.release_claim(CLAIM_BLOCK, &c.value, &c.owner)?;
            }
            Ok(())
        });
        if let Err(e) = released {
            tracing::warn!(net = key, "cannot release the network's DHCP blocks: {e}");
        }
    }
}

/// Step 2: reads the block claims and claims one more block for each
/// network that has none or runs low (the first nobody holds); returns the
/// blocks this node holds, per network.
pub fn claim_blocks(
    store: &dyn Store,
    node: &str,
    needs: &[BlockNeed],
) -> Result<Vec<(String, Vec<Ipv4Addr>)>, StoreError> {
    let claims = store.claims(CLAIM_BLOCK)?;
    let mut out = Vec::new();
    for need in needs {
        let prefix = format!("{}/", need.net);
        let first_of = |value: &str| value.strip_prefix(&prefix).and_then(|ip| ip.parse::<Ipv4Addr>().ok());
        let mut mine: Vec<Ipv4Addr> =
            claims.iter().filter(|c| c.owner == node).filter_map(|c| first_of(&c.value)).collect();
        mine.sort();
        // Blocks held here that the book does not lease from yet (a
        // restart): take them first, and look again at the next round.
        let known = mine.iter().all(|b| need.have.contains(b));
        if mine.is_empty() || (known && need.low) {
            let taken: Vec<Ipv4Addr> = claims.iter().filter_map(|c| first_of(&c.value)).collect();
            for (first, _) in blocks_of(need.range).filter(|(first, _)| !taken.contains(first)) {
                if store.claim(CLAIM_BLOCK, &format!("{prefix}{first}"), node)? {
                    tracing::info!(net = need.net, block = %first, "claimed a DHCP block");
                    mine.push(first);
                    break;
                }
            }
        }
        out.push((need.net.clone(), mine));
    }
    Ok(out)
}

/// One round of the three steps for the engine behind `shared`.
pub fn top_up(shared: &Mutex<Engine>) -> Result<(), EngineError> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let Some((store, node, needs)) = shared.lock().unwrap_or_else(|p| p.into_inner()).block_needs(now) else {
        return Ok(());
    };
    if needs.iter().all(|n| !n.have.is_empty() && !n.low) {
        return Ok(());
    }
    let held = claim_blocks(store.as_ref(), &node, &needs)?;
    shared.lock().unwrap_or_else(|p| p.into_inner()).set_blocks(held);
    Ok(())
}
