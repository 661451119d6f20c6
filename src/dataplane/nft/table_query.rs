//! A table's comment read straight from the kernel: one NFT_MSG_GETTABLE
//! request and its one reply. nft 1.0.6 has no cheaper way: `list table`
//! fetches every element of every set even when told not to print them
//! (terse), which for 50,000 elements costs a third of a second, against
//! tens of microseconds here.

use std::time::Duration;

use super::messages::{gen_reply, get_gen_request, get_table_request, table_reply, TableReply};
use super::socket::NfSocket;
use crate::kernel::firewall::TableId;
use crate::kernel::KernelError;

/// How long the kernel may take to answer (it answers at once; this only
/// bounds a wait that would otherwise be endless).
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// A socket for GETTABLE requests, in the namespace that opened it.
#[derive(Debug)]
pub struct TableQuery {
    socket: NfSocket,
    seq: u32,
    buffer: Vec<u8>,
}

fn query_error(table: &TableId, what: impl std::fmt::Display) -> KernelError {
    KernelError::Observe { what: "nftables table", message: format!("table {table}: {what}") }
}

impl TableQuery {
    /// Opens the socket.
    pub fn open() -> Result<TableQuery, KernelError> {
        let socket = NfSocket::open()
            .map_err(|e| KernelError::Unavailable(format!("nftables: cannot open a netfilter netlink socket: {e}")))?;
        Ok(TableQuery { socket, seq: 0, buffer: vec![0; 64 << 10] })
    }

    /// The table's comment (`Some(None)` when it has none), or None when
    /// the table does not exist.
    pub fn comment(&mut self, table: &TableId) -> Result<Option<Option<String>>, KernelError> {
        self.seq = self.seq.wrapping_add(1);
        self.socket.send(&get_table_request(table, self.seq)).map_err(|e| query_error(table, e))?;
        loop {
            if !self.socket.wait_readable(REPLY_TIMEOUT).map_err(|e| query_error(table, e))? {
                return Err(query_error(table, "the kernel did not answer NFT_MSG_GETTABLE"));
            }
            let n = match self.socket.recv(&mut self.buffer) {
                Ok(n) => n,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) => continue,
                Err(e) => return Err(query_error(table, e)),
            };
            // A reply to an earlier request that timed out is skipped by its
            // sequence number.
            match table_reply(&self.buffer[..n.min(self.buffer.len())], self.seq) {
                None => continue,
                Some(TableReply::Found(comment)) => return Ok(Some(comment)),
                Some(TableReply::Error(libc::ENOENT)) => return Ok(None),
                Some(TableReply::Error(errno)) => {
                    return Err(query_error(table, std::io::Error::from_raw_os_error(errno)));
                }
            }
        }
    }

    /// The ruleset's generation: every committed nftables transaction in
    /// the namespace, anyone's, moves it on.
    pub fn generation(&mut self) -> Result<u32, KernelError> {
        let error = |what: String| KernelError::Observe { what: "nftables generation", message: what };
        self.seq = self.seq.wrapping_add(1);
        self.socket.send(&get_gen_request(self.seq)).map_err(|e| error(e.to_string()))?;
        loop {
            if !self.socket.wait_readable(REPLY_TIMEOUT).map_err(|e| error(e.to_string()))? {
                return Err(error("the kernel did not answer NFT_MSG_GETGEN".into()));
            }
            let n = match self.socket.recv(&mut self.buffer) {
                Ok(n) => n,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) => continue,
                Err(e) => return Err(error(e.to_string())),
            };
            match gen_reply(&self.buffer[..n.min(self.buffer.len())], self.seq) {
                None => continue,
                Some(Ok(generation)) => return Ok(generation),
                Some(Err(errno)) => return Err(error(std::io::Error::from_raw_os_error(errno).to_string())),
            }
        }
    }
}
