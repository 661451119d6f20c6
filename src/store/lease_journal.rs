//! The DHCP lease journal of the SQLite store: where a lease is made
//! durable before its ACK, at the cost of one `write` per group commit.
//!
//! Writing leases straight into SQLite cost about a fifth of the DHCP
//! server's CPU under a boot storm: every small transaction rewrote whole
//! 4 KB pages of three B-trees (the table, its key and the by-MAC index)
//! into the WAL, and took SQLite's file locks. The journal is an
//! append-only file of JSON lines instead, written with one system call per
//! batch: in the OS when [`LeaseJournal::append`] returns, so an ACKed
//! lease survives any crash of the daemon. A `lease-sync` thread puts it
//! on disk within [`SYNC_EVERY`] (`fdatasync` of the journal) and folds the
//! journal into the leases table, in one `synchronous=FULL` transaction,
//! once the server is quiet (a whole [`SYNC_EVERY`] without appends), at
//! the latest after [`FOLD_AT_LATEST`] or [`FOLD_AT`] changes; the store
//! folds before anything reads or rewrites the table. The fold is the
//! costly part (SQLite's B-trees: the `lease-sync` thread was 16-22% of
//! the daemon's CPU in profiles at 32,000 exchanges/s), and done during the storm it set the p99 of the
//! replies; after it, it takes CPUs nobody is waiting for.
//!
//! Folding never blocks appends: the journal is moved aside
//! ([`FOLDING`]) and a new one started, under a lock held for two system
//! calls; the moved file is deleted once its changes are committed. A
//! daemon that died in between finds both files at start and replays them
//! in order (an upsert or removal replayed twice ends in the same state).

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::LeaseChange;

/// The journal being appended to, in the state directory.
pub const JOURNAL: &str = "leases.journal";
/// The journal being folded into the database.
pub const FOLDING: &str = "leases.journal.folding";
/// How long a lease written by the DHCP server may wait to be on disk
/// (the journal `fdatasync`'d, or folded into the database).
pub const SYNC_EVERY: Duration = Duration::from_millis(500);
/// The longest the journal goes without a fold while appends go on.
pub const FOLD_AT_LATEST: Duration = Duration::from_secs(10);
/// Changes in the journal that make a fold due even while appends go on:
/// they are kept in memory for the fold (about 150 bytes each) and
/// replayed at a restart.
pub const FOLD_AT: usize = 262_144;

struct Appending {
    file: File,
    /// Bytes of whole records in the file: a failed write is cut back to it.
    len: u64,
    /// Changes appended since the last rotation, in order.
    pending: Vec<LeaseChange>,
    /// Reused encoding buffer.
    buf: Vec<u8>,
    /// Changes appended since the journal was opened.
    appended: u64,
    /// Whether the file was created since the last [`LeaseJournal::sync`]:
    /// its directory entry must be made durable too.
    fresh: bool,
}

/// The journal of one state directory.
pub struct LeaseJournal {
    dir: PathBuf,
    appending: Mutex<Appending>,
    /// Changes moved aside and not yet committed to the database (a fold
    /// that failed keeps them for the next one). Held for a whole fold, so
    /// folds never run side by side.
    folding: Mutex<Vec<LeaseChange>>,
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

/// The changes a journal file holds, in order. A last line cut short (the
/// daemon died inside a write, before any ACK for it) is ignored.
fn read_changes(path: &Path) -> io::Result<Vec<LeaseChange>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for line in io::BufReader::new(file).split(b'\n') {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<LeaseChange>(&line) {
            Ok(c) => out.push(c),
            Err(e) => tracing::warn!("{}: an unreadable lease record skipped: {e}", path.display()),
        }
    }
    Ok(out)
}

impl LeaseJournal {
    /// Opens the journal of `dir`, returning it with the changes earlier
    /// runs left in it (moved-aside journal first), which the caller must
    /// commit to the database and then [`LeaseJournal::recovered`].
    pub fn open(dir: &Path) -> io::Result<(Self, Vec<LeaseChange>)> {
        let mut left = read_changes(&dir.join(FOLDING))?;
        left.extend(read_changes(&dir.join(JOURNAL))?);
        let file = open_append(&dir.join(JOURNAL))?;
        let len = file.metadata()?.len();
        let j = LeaseJournal {
            dir: dir.to_path_buf(),
            appending: Mutex::new(Appending {
                file,
                len,
                pending: Vec::new(),
                buf: Vec::with_capacity(64 * 1024),
                appended: 0,
                fresh: true,
            }),
            folding: Mutex::new(Vec::new()),
        };
        Ok((j, left))
    }

    /// Empties both files once what [`LeaseJournal::open`] returned is
    /// committed to the database.
    pub fn recovered(&self) -> io::Result<()> {
        let mut a = lock(&self.appending);
        remove_if_there(&self.dir.join(FOLDING))?;
        a.file.set_len(0)?;
        a.len = 0;
        a.pending.clear();
        Ok(())
    }

    /// Appends `changes` with one write; they are in the OS (they survive
    /// a crash of the daemon) when this returns. On an error nothing of
    /// them is in the journal.
    pub fn append(&self, changes: &[LeaseChange]) -> io::Result<()> {
        let mut a = lock(&self.appending);
        let a = &mut *a;
        a.buf.clear();
        for c in changes {
            serde_json::to_writer(&mut a.buf, c).map_err(io::Error::other)?;
            a.buf.push(b'\n');
        }
        if let Err(e) = a.file.write_all(&a.buf) {
            // A partial record would spoil the ones after it.
            let _ = a.file.set_len(a.len);
            return Err(e);
        }
        a.len += a.buf.len() as u64;
        a.pending.extend_from_slice(changes);
        a.appended += changes.len() as u64;
        Ok(())
    }

    /// Changes appended since the journal was opened, and how many of them
    /// wait for a fold.
    pub fn counts(&self) -> (u64, usize) {
        let (appended, pending) = {
            let a = lock(&self.appending);
            (a.appended, a.pending.len())
        };
        // What a failed fold left; a fold under way is not waited for (and
        // the locks are never held together in this order: begin_fold
        // takes them the other way round).
        let left = match self.folding.try_lock() {
            Ok(f) => f.len(),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().len(),
            Err(std::sync::TryLockError::WouldBlock) => 0,
        };
        (appended, pending + left)
    }

    /// Puts what was appended so far on disk (`fdatasync`, and the
    /// directory's entry of a new file), without holding up appends.
    pub fn sync(&self) -> io::Result<()> {
        let (file, fresh) = {
            let mut a = lock(&self.appending);
            (a.file.try_clone()?, std::mem::take(&mut a.fresh))
        };
        let synced = file.sync_data().and_then(|()| match fresh {
            true => File::open(&self.dir).and_then(|d| d.sync_all()),
            false => Ok(()),
        });
        if synced.is_err() {
            // The next sync tries the directory again too.
            lock(&self.appending).fresh |= fresh;
        }
        synced
    }

    /// Starts a fold: returns the guard of the changes to commit (those a
    /// failed fold left, or else the journal's, which is moved aside and
    /// started anew). Empty when there is nothing to fold.
    pub fn begin_fold(&self) -> io::Result<MutexGuard<'_, Vec<LeaseChange>>> {
        let mut folding = lock(&self.folding);
        if folding.is_empty() {
            let mut a = lock(&self.appending);
            if !a.pending.is_empty() {
                std::fs::rename(self.dir.join(JOURNAL), self.dir.join(FOLDING))?;
                match open_append(&self.dir.join(JOURNAL)) {
                    Ok(f) => {
                        a.file = f;
                        a.len = 0;
                        a.fresh = true;
                        *folding = std::mem::take(&mut a.pending);
                    }
                    Err(e) => {
                        // Keep appending to the moved file: nothing is lost.
                        std::fs::rename(self.dir.join(FOLDING), self.dir.join(JOURNAL))?;
                        return Err(e);
                    }
                }
            }
        }
        Ok(folding)
    }

    /// Ends a fold whose changes are committed: forgets them and deletes
    /// the moved-aside journal.
    pub fn end_fold(&self, mut folding: MutexGuard<'_, Vec<LeaseChange>>) -> io::Result<()> {
        remove_if_there(&self.dir.join(FOLDING))?;
        folding.clear();
        Ok(())
    }
}

fn remove_if_there(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing holding these locks leaves the data half-changed on a panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Lease, LeaseKind, Mac};

    fn upsert(i: u8) -> LeaseChange {
        LeaseChange::Upsert(Lease {
            net: "default".into(),
            expiry: 100,
            mac: Mac([0x52, 0x54, 0, 0, 0, i]),
            ip: std::net::Ipv4Addr::new(10, 0, 0, i),
            hostname: Some(format!("h {i}\n\"")),
            client_id: None,
            kind: LeaseKind::Dynamic,
        })
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lanyard-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn what_was_appended_and_not_folded_comes_back_in_order() {
        let d = dir("order");
        let (j, left) = LeaseJournal::open(&d).unwrap();
        assert!(left.is_empty());
        j.append(&[upsert(1), upsert(2)]).unwrap();
        let folding = j.begin_fold().unwrap();
        assert_eq!(*folding, vec![upsert(1), upsert(2)]);
        // Appends go on while a fold runs; the daemon dies before it ends.
        j.append(&[upsert(3)]).unwrap();
        j.append(&[LeaseChange::Remove { net: "default".into(), ip: std::net::Ipv4Addr::new(10, 0, 0, 1) }]).unwrap();
        drop(folding);
        drop(j);
        let (j, left) = LeaseJournal::open(&d).unwrap();
        assert_eq!(left.len(), 4);
        assert_eq!(left[..3], [upsert(1), upsert(2), upsert(3)]);
        j.recovered().unwrap();
        drop(j);
        let (_, left) = LeaseJournal::open(&d).unwrap();
        assert!(left.is_empty(), "nothing is replayed twice");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_finished_fold_leaves_only_what_came_after_it() {
        let d = dir("fold");
        let (j, _) = LeaseJournal::open(&d).unwrap();
        j.append(&[upsert(1)]).unwrap();
        let folding = j.begin_fold().unwrap();
        j.append(&[upsert(2)]).unwrap();
        j.end_fold(folding).unwrap();
        assert!(j.begin_fold().unwrap().len() == 1, "the next fold takes the later change");
        drop(j);
        let (_, left) = LeaseJournal::open(&d).unwrap();
        assert_eq!(left, vec![upsert(2)]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_record_cut_short_is_ignored() {
        let d = dir("torn");
        let (j, _) = LeaseJournal::open(&d).unwrap();
        j.append(&[upsert(1)]).unwrap();
        drop(j);
        let mut f = OpenOptions::new().append(true).open(d.join(JOURNAL)).unwrap();
        f.write_all(b"{\"Upsert\":{\"net\":\"def").unwrap();
        drop(f);
        let (_, left) = LeaseJournal::open(&d).unwrap();
        assert_eq!(left, vec![upsert(1)]);
        let _ = std::fs::remove_dir_all(&d);
    }
}
