//! A writer of small ISO 9660 images: a handful of files in the root
//! directory, as a NoCloud `cidata` seed needs, with their exact names.
//!
//! ISO 9660 itself allows only upper-case 8.3 names (`USER_DAT.;1`), so
//! each file also carries its real name in two extensions, as
//! `genisoimage -joliet -rock` (cloud-localds) writes them:
//! - Rock Ridge (RRIP 1.10, `RRIP_1991A`): an `NM` entry with the name and
//!   a `PX` entry (mode 0444, directories 0555, owner root) in each
//!   directory record. Linux's isofs prefers Rock Ridge when the root's
//!   `.` record has the SUSP `SP` entry and an `ER` entry; the `ER` text is
//!   too long for a directory record, so it sits in a continuation area
//!   (`CE`) of its own sector.
//! - Joliet (UCS-2 level 3): a supplementary volume descriptor with a
//!   second root directory whose records name the same extents in UCS-2.
//!   Readers without Rock Ridge (Windows, cloudbase-init, `mount -o
//!   norock`) see the same names there.
//!
//! The volume label is written as given (`cidata` stays lower case, as
//! genisoimage writes it and blkid and cloud-init look for it). The image
//! is a pure function of its input: every date is fixed (1970-01-01
//! 00:00:00 UTC). It ends with 150 empty sectors, as genisoimage pads by
//! default, so a guest's read-ahead at the end of a virtual CD reads
//! zeros, not errors.
//!
//! Layout (2048-byte sectors): 0-15 system area, 16 primary volume
//! descriptor, 17 Joliet descriptor, 18 terminator, 19-22 the two path
//! tables (L and M) of each, 23 primary root, 24 Joliet root, 25 Rock
//! Ridge continuation area, then the files' data.

/// A logical sector (and block) of the image.
pub const SECTOR: usize = 2048;

/// Empty sectors at the end of the image.
pub const PADDING_SECTORS: usize = 150;

const PVD: usize = 16;
const JOLIET_VD: usize = 17;
const TERMINATOR: usize = 18;
const PATH_L: usize = 19;
const PATH_M: usize = 20;
const JOLIET_PATH_L: usize = 21;
const JOLIET_PATH_M: usize = 22;
const ROOT: usize = 23;
const JOLIET_ROOT: usize = 24;
const CONTINUATION: usize = 25;
const FIRST_DATA: usize = 26;

/// The longest file name (Joliet's limit, in characters).
pub const NAME_MAX: usize = 64;
/// The longest volume label (a Joliet volume id holds 16 UCS-2 characters).
pub const LABEL_MAX: usize = 16;

/// Why an image cannot be written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IsoError {
    /// invalid volume label {0:?}: ...
    #[error("invalid volume label {0:?}: use 1-{LABEL_MAX} letters, digits, '-' or '_'")]
    Label(String),
    /// invalid file name {0:?}: ...
    #[error("invalid file name {0:?}: use 1-{NAME_MAX} letters, digits, '.', '-' or '_', not beginning with '.'")]
    Name(String),
    /// file {0:?} is named twice
    #[error("file {0:?} is named twice")]
    Duplicate(String),
    /// file {name:?} is {size} bytes; ...
    #[error("file {name:?} is {size} bytes; an ISO 9660 file holds less than 4 GiB")]
    TooLarge {
        /// The file.
        name: String,
        /// Its size.
        size: usize,
    },
    /// {0} files do not fit ...
    #[error("{0} files do not fit the one root directory sector this writer makes")]
    TooManyFiles(usize),
}

/// Recording date of every directory record: 1970-01-01 00:00:00 UTC
/// (years since 1900, month, day, hour, minute, second, UTC offset).
const DATE: [u8; 7] = [70, 1, 1, 0, 0, 0, 0];
/// The same date in a volume descriptor's 17-byte form.
const VD_DATE: &[u8; 17] = b"1970010100000000\0";
/// A date a volume descriptor leaves unspecified.
const NO_DATE: &[u8; 17] = b"0000000000000000\0";

const RRIP_ID: &str = "RRIP_1991A";
const RRIP_DESCRIPTOR: &str = "THE ROCK RIDGE INTERCHANGE PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS";
const RRIP_SOURCE: &str = "PLEASE CONTACT DISC PUBLISHER FOR SPECIFICATION SOURCE.  SEE PUBLISHER IDENTIFIER IN PRIMARY VOLUME DESCRIPTOR FOR CONTACT INFORMATION.";

const DIRECTORY: u8 = 0x02;
const MODE_DIR: u32 = 0o040_555;
const MODE_FILE: u32 = 0o100_444;

fn both16(v: u16) -> [u8; 4] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], b[0], b[1]]
}

fn both32(v: u32) -> [u8; 8] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], l[2], l[3], b[0], b[1], b[2], b[3]]
}

/// `n` as a 32-bit field; every value passed is bounded by the image's
/// size, which [`write`] keeps under 4 GiB sectors.
fn u32_of(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn ucs2(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

/// `text` in a field of `len` bytes, padded with spaces (ASCII or UCS-2).
fn field(text: &str, len: usize, joliet: bool) -> Vec<u8> {
    let mut out = if joliet { ucs2(text) } else { text.as_bytes().to_vec() };
    let pad: &[u8] = if joliet { &[0, b' '] } else { b" " };
    while out.len() < len {
        out.extend_from_slice(pad);
    }
    out.truncate(len);
    out
}

/// A System Use entry: signature, length, version 1, data.
fn susp(sig: &[u8; 2], data: &[u8]) -> Vec<u8> {
    let mut e = vec![sig[0], sig[1], u8::try_from(4 + data.len()).unwrap_or(u8::MAX), 1];
    e.extend_from_slice(data);
    e
}

/// Rock Ridge `PX`: mode, links, uid 0, gid 0 (RRIP 1.10: 36 bytes).
fn px(mode: u32, links: u32) -> Vec<u8> {
    let mut d = Vec::with_capacity(32);
    for v in [mode, links, 0, 0] {
        d.extend_from_slice(&both32(v));
    }
    susp(b"PX", &d)
}

/// Rock Ridge `NM`: the file's real name.
fn nm(name: &str) -> Vec<u8> {
    let mut d = vec![0u8];
    d.extend_from_slice(name.as_bytes());
    susp(b"NM", &d)
}

/// The SUSP `ER` entry that declares Rock Ridge.
fn er() -> Vec<u8> {
    let mut d = vec![
        u8::try_from(RRIP_ID.len()).unwrap_or(0),
        u8::try_from(RRIP_DESCRIPTOR.len()).unwrap_or(0),
        u8::try_from(RRIP_SOURCE.len()).unwrap_or(0),
        1,
    ];
    d.extend_from_slice(RRIP_ID.as_bytes());
    d.extend_from_slice(RRIP_DESCRIPTOR.as_bytes());
    d.extend_from_slice(RRIP_SOURCE.as_bytes());
    susp(b"ER", &d)
}

/// A directory record (ECMA-119 9.1), padded to an even length.
fn record(extent: usize, size: usize, flags: u8, id: &[u8], system_use: &[u8]) -> Vec<u8> {
    let mut r = vec![0u8; 33];
    r[2..10].copy_from_slice(&both32(u32_of(extent)));
    r[10..18].copy_from_slice(&both32(u32_of(size)));
    r[18..25].copy_from_slice(&DATE);
    r[25] = flags;
    r[28..32].copy_from_slice(&both16(1));
    r[32] = u8::try_from(id.len()).unwrap_or(u8::MAX);
    r.extend_from_slice(id);
    if id.len() % 2 == 0 {
        r.push(0);
    }
    r.extend_from_slice(system_use);
    if r.len() % 2 == 1 {
        r.push(0);
    }
    r[0] = u8::try_from(r.len()).unwrap_or(u8::MAX);
    r
}

/// A path table of the root alone: little-endian (L) or big-endian (M).
fn path_table(root: usize, big_endian: bool) -> Vec<u8> {
    let extent = u32_of(root);
    let mut t = vec![1u8, 0];
    t.extend_from_slice(&if big_endian { extent.to_be_bytes() } else { extent.to_le_bytes() });
    t.extend_from_slice(&if big_endian { 1u16.to_be_bytes() } else { 1u16.to_le_bytes() });
    t.extend_from_slice(&[0, 0]);
    t
}

/// A primary (type 1) or Joliet (type 2) volume descriptor.
fn volume_descriptor(label: &str, sectors: usize, joliet: bool) -> Vec<u8> {
    let mut d = vec![0u8; SECTOR];
    d[0] = if joliet { 2 } else { 1 };
    d[1..6].copy_from_slice(b"CD001");
    d[6] = 1;
    d[8..40].copy_from_slice(&field("LINUX", 32, joliet));
    d[40..72].copy_from_slice(&field(label, 32, joliet));
    d[80..88].copy_from_slice(&both32(u32_of(sectors)));
    if joliet {
        // UCS-2 level 3.
        d[88..91].copy_from_slice(b"%/E");
    }
    d[120..124].copy_from_slice(&both16(1));
    d[124..128].copy_from_slice(&both16(1));
    d[128..132].copy_from_slice(&both16(u16::try_from(SECTOR).unwrap_or(0)));
    let table_size = path_table(0, false).len();
    d[132..140].copy_from_slice(&both32(u32_of(table_size)));
    let (l, m, root) = if joliet { (JOLIET_PATH_L, JOLIET_PATH_M, JOLIET_ROOT) } else { (PATH_L, PATH_M, ROOT) };
    d[140..144].copy_from_slice(&u32_of(l).to_le_bytes());
    d[148..152].copy_from_slice(&u32_of(m).to_be_bytes());
    d[156..190].copy_from_slice(&record(root, SECTOR, DIRECTORY, &[0], &[]));
    for (start, len, text) in [
        (190, 128, ""),
        (318, 128, ""),
        (446, 128, ""),
        (574, 128, "LANYARD"),
        (702, 37, ""),
        (739, 37, ""),
        (776, 37, ""),
    ] {
        d[start..start + len].copy_from_slice(&field(text, len, joliet));
    }
    d[813..830].copy_from_slice(VD_DATE);
    d[830..847].copy_from_slice(VD_DATE);
    d[847..864].copy_from_slice(NO_DATE);
    d[864..881].copy_from_slice(NO_DATE);
    d[881] = 1;
    d
}

fn valid_name(name: &str) -> bool {
    (1..=NAME_MAX).contains(&name.len())
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// ISO 9660 level 1 names (`NAME.EXT;1`, d-characters, 8.3) for `names`,
/// unique: a clash gets a number at the end of its name part.
fn iso_names(names: &[&str]) -> Vec<String> {
    let d_chars = |s: &str, max: usize| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).take(max).collect()
    };
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for name in names {
        let (base, ext) = name.rsplit_once('.').unwrap_or((name, ""));
        let (base, ext) = (d_chars(base, 8), d_chars(ext, 3));
        let mut candidate = format!("{base}.{ext};1");
        let mut n = 1usize;
        while out.contains(&candidate) {
            let digits = n.to_string();
            let keep: String = base.chars().take(8 - digits.len().min(8)).collect();
            candidate = format!("{keep}{digits}.{ext};1");
            n += 1;
        }
        out.push(candidate);
    }
    out
}

/// An image with volume label `label` and `files` (name, content) in its
/// root directory, named exactly so through Rock Ridge and Joliet.
pub fn write(label: &str, files: &[(&str, &[u8])]) -> Result<Vec<u8>, IsoError> {
    if !(1..=LABEL_MAX).contains(&label.len())
        || !label.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    {
        return Err(IsoError::Label(label.to_string()));
    }
    let mut files: Vec<(&str, &[u8])> = files.to_vec();
    files.sort_by(|a, b| a.0.cmp(b.0));
    for (i, (name, data)) in files.iter().enumerate() {
        if !valid_name(name) {
            return Err(IsoError::Name(name.to_string()));
        }
        if i > 0 && files[i - 1].0 == *name {
            return Err(IsoError::Duplicate(name.to_string()));
        }
        if u32::try_from(data.len()).is_err() {
            return Err(IsoError::TooLarge { name: name.to_string(), size: data.len() });
        }
    }
    // Each file's first sector.
    let mut extents = Vec::with_capacity(files.len());
    let mut next = FIRST_DATA;
    for (_, data) in &files {
        extents.push(next);
        next += data.len().div_ceil(SECTOR);
    }
    let sectors = next + PADDING_SECTORS;
    if u32::try_from(sectors).is_err() {
        let (name, data) = files.iter().max_by_key(|(_, d)| d.len()).copied().unwrap_or(("", &[]));
        return Err(IsoError::TooLarge { name: name.to_string(), size: data.len() });
    }

    // The primary root: `.` carries SP, CE (to the ER) and PX.
    let er = er();
    let mut dot_su = susp(b"SP", &[0xbe, 0xef, 0]);
    let mut ce = Vec::with_capacity(24);
    ce.extend_from_slice(&both32(u32_of(CONTINUATION)));
    ce.extend_from_slice(&both32(0));
    ce.extend_from_slice(&both32(u32_of(er.len())));
    dot_su.extend_from_slice(&susp(b"CE", &ce));
    dot_su.extend_from_slice(&px(MODE_DIR, 2));
    let mut primary = record(ROOT, SECTOR, DIRECTORY, &[0], &dot_su);
    primary.extend_from_slice(&record(ROOT, SECTOR, DIRECTORY, &[1], &px(MODE_DIR, 2)));
    let mut joliet = record(JOLIET_ROOT, SECTOR, DIRECTORY, &[0], &[]);
    joliet.extend_from_slice(&record(JOLIET_ROOT, SECTOR, DIRECTORY, &[1], &[]));

    let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    let mut by_iso: Vec<(String, usize)> = iso_names(&names).into_iter().zip(0..).collect();
    by_iso.sort();
    for (iso_name, i) in &by_iso {
        let (name, data) = files[*i];
        let mut su = px(MODE_FILE, 1);
        su.extend_from_slice(&nm(name));
        primary.extend_from_slice(&record(extents[*i], data.len(), 0, iso_name.as_bytes(), &su));
    }
    for (i, (name, data)) in files.iter().enumerate() {
        joliet.extend_from_slice(&record(extents[i], data.len(), 0, &ucs2(name), &[]));
    }
    if primary.len() > SECTOR || joliet.len() > SECTOR {
        return Err(IsoError::TooManyFiles(files.len()));
    }

    let mut image = vec![0u8; sectors * SECTOR];
    let mut put = |sector: usize, bytes: &[u8]| {
        image[sector * SECTOR..sector * SECTOR + bytes.len()].copy_from_slice(bytes);
    };
    put(PVD, &volume_descriptor(label, sectors, false));
    put(JOLIET_VD, &volume_descriptor(label, sectors, true));
    put(TERMINATOR, &[255, b'C', b'D', b'0', b'0', b'1', 1]);
    for (sector, root, big) in [
        (PATH_L, ROOT, false),
        (PATH_M, ROOT, true),
        (JOLIET_PATH_L, JOLIET_ROOT, false),
        (JOLIET_PATH_M, JOLIET_ROOT, true),
    ] {
        put(sector, &path_table(root, big));
    }
    put(ROOT, &primary);
    put(JOLIET_ROOT, &joliet);
    put(CONTINUATION, &er);
    for (i, (_, data)) in files.iter().enumerate() {
        put(extents[i], data);
    }
    Ok(image)
}

/// A reader of what [`write`] writes, for the tests: it checks the
/// structure as it goes and panics on anything unexpected.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn le32(b: &[u8]) -> usize {
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
    }

    /// Checks a both-endian 32-bit field and returns its value.
    fn both(b: &[u8]) -> usize {
        let be = u32::from_be_bytes([b[4], b[5], b[6], b[7]]) as usize;
        assert_eq!(le32(b), be, "both-endian field disagrees with itself");
        be
    }

    /// A directory record as read back.
    #[derive(Debug)]
    pub(crate) struct Record {
        pub extent: usize,
        pub size: usize,
        pub flags: u8,
        pub id: Vec<u8>,
        pub system_use: Vec<u8>,
    }

    fn records(image: &[u8], extent: usize, size: usize) -> Vec<Record> {
        let dir = &image[extent * SECTOR..extent * SECTOR + size];
        let mut out = Vec::new();
        let mut at = 0;
        while at < dir.len() && dir[at] != 0 {
            let r = &dir[at..at + dir[at] as usize];
            assert_eq!(r.len() % 2, 0, "odd record length");
            assert_eq!(r[1], 0, "extended attribute length");
            assert_eq!(&r[18..25], &DATE);
            let id_len = r[32] as usize;
            let su_start = 33 + id_len + usize::from(id_len % 2 == 0);
            out.push(Record {
                extent: both(&r[2..10]),
                size: both(&r[10..18]),
                flags: r[25],
                id: r[33..33 + id_len].to_vec(),
                system_use: r[su_start..].to_vec(),
            });
            at += r.len();
        }
        out
    }

    /// The SUSP entries of a system use area, by signature.
    fn entries(su: &[u8]) -> Vec<([u8; 2], Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at + 4 <= su.len() && su[at + 2] >= 4 {
            let len = su[at + 2] as usize;
            assert_eq!(su[at + 3], 1, "SUSP entry version");
            out.push(([su[at], su[at + 1]], su[at + 4..at + len].to_vec()));
            at += len;
        }
        out
    }

    /// Checks a volume descriptor and returns its root's extent and size.
    fn descriptor(image: &[u8], sector: usize, kind: u8, label: &str) -> (usize, usize) {
        let d = &image[sector * SECTOR..(sector + 1) * SECTOR];
        assert_eq!((d[0], &d[1..6], d[6]), (kind, &b"CD001"[..], 1));
        let joliet = kind == 2;
        assert_eq!(&d[40..72], field(label, 32, joliet).as_slice(), "volume id");
        assert_eq!(both(&d[80..88]) * SECTOR, image.len(), "volume space size");
        assert_eq!(&d[128..130], &2048u16.to_le_bytes());
        if joliet {
            assert_eq!(&d[88..91], b"%/E");
        }
        let table = both(&d[132..140]);
        let (l, m) = (le32(&d[140..144]), u32::from_be_bytes([d[148], d[149], d[150], d[151]]) as usize);
        let root = &d[156..190];
        assert_eq!((root[0], root[25], root[32], root[33]), (34, DIRECTORY, 1, 0));
        let (extent, size) = (both(&root[2..10]), both(&root[10..18]));
        // Both path tables name the root, in their byte orders.
        let lt = &image[l * SECTOR..l * SECTOR + table];
        let mt = &image[m * SECTOR..m * SECTOR + table];
        assert_eq!((lt[0], le32(&lt[2..6]), u16::from_le_bytes([lt[6], lt[7]])), (1, extent, 1));
        assert_eq!((mt[0], u32::from_be_bytes([mt[2], mt[3], mt[4], mt[5]]) as usize), (1, extent));
        (extent, size)
    }

    fn content(image: &[u8], r: &Record) -> Vec<u8> {
        image[r.extent * SECTOR..r.extent * SECTOR + r.size].to_vec()
    }

    /// The files of the primary volume by their Rock Ridge names, after
    /// checking the descriptors, the SUSP/Rock Ridge entries and the
    /// ISO 9660 names.
    pub(crate) fn read_rock_ridge(image: &[u8]) -> Vec<(String, Vec<u8>)> {
        assert_eq!(image.len() % SECTOR, 0);
        assert!(image[..16 * SECTOR].iter().all(|b| *b == 0), "system area");
        let label = String::from_utf8(image[16 * SECTOR + 40..16 * SECTOR + 72].to_vec()).unwrap();
        let label = label.trim_end();
        let (extent, size) = descriptor(image, PVD, 1, label);
        assert_eq!(image[TERMINATOR * SECTOR], 255);
        let rs = records(image, extent, size);
        assert_eq!((rs[0].id.as_slice(), rs[1].id.as_slice()), (&[0u8][..], &[1u8][..]));
        // `.`: SP first, then CE pointing at the ER.
        let dot = entries(&rs[0].system_use);
        assert_eq!(dot[0], (*b"SP", vec![0xbe, 0xef, 0]));
        let ce = dot.iter().find(|(s, _)| s == b"CE").expect("CE in the root's `.`");
        let (block, offset, len) = (both(&ce.1[0..8]), both(&ce.1[8..16]), both(&ce.1[16..24]));
        let cont = &image[block * SECTOR + offset..block * SECTOR + offset + len];
        let er = entries(cont);
        assert_eq!(&er[0].0, b"ER");
        assert_eq!(&er[0].1[4..4 + er[0].1[0] as usize], RRIP_ID.as_bytes());
        let mut files = Vec::new();
        for r in &rs[2..] {
            assert_eq!(r.flags, 0);
            let id = String::from_utf8(r.id.clone()).unwrap();
            let (name83, version) = id.split_once(';').expect("a version number");
            assert_eq!(version, "1");
            let (base, ext) = name83.split_once('.').expect("a dot");
            assert!(base.len() <= 8 && ext.len() <= 3, "{id} is not 8.3");
            assert!(
                name83.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'.'),
                "{id} has other than d-characters"
            );
            let e = entries(&r.system_use);
            let px = &e.iter().find(|(s, _)| s == b"PX").expect("PX").1;
            assert_eq!(both(&px[0..8]) as u32, MODE_FILE);
            let name = &e.iter().find(|(s, _)| s == b"NM").expect("NM").1;
            assert_eq!(name[0], 0, "NM flags");
            files.push((String::from_utf8(name[1..].to_vec()).unwrap(), content(image, r)));
        }
        files.sort();
        files
    }

    /// The files of the Joliet volume by their UCS-2 names.
    pub(crate) fn read_joliet(image: &[u8]) -> Vec<(String, Vec<u8>)> {
        let raw = &image[JOLIET_VD * SECTOR + 40..JOLIET_VD * SECTOR + 72];
        let units: Vec<u16> = raw.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
        let label = String::from_utf16(&units).unwrap();
        let (extent, size) = descriptor(image, JOLIET_VD, 2, label.trim_end());
        let rs = records(image, extent, size);
        assert_eq!((rs[0].id.as_slice(), rs[1].id.as_slice()), (&[0u8][..], &[1u8][..]));
        rs[2..]
            .iter()
            .map(|r| {
                assert!(r.system_use.is_empty());
                let units: Vec<u16> = r.id.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
                (String::from_utf16(&units).unwrap(), content(image, r))
            })
            .collect()
    }

    /// The primary volume descriptor's volume id.
    pub(crate) fn label_of(image: &[u8]) -> String {
        String::from_utf8(image[PVD * SECTOR + 40..PVD * SECTOR + 72].to_vec()).unwrap().trim_end().to_string()
    }

    #[test]
    fn names_and_contents_read_back_both_ways() {
        let big = vec![b'x'; 5000];
        let files: [(&str, &[u8]); 4] =
            [("user-data", b"#cloud-config\n"), ("meta-data", b"a: 1\n"), ("network-config", &big), ("empty", b"")];
        let image = write("cidata", &files).unwrap();
        assert_eq!(label_of(&image), "cidata");
        let mut want: Vec<(String, Vec<u8>)> = files.iter().map(|(n, d)| (n.to_string(), d.to_vec())).collect();
        want.sort();
        assert_eq!(read_rock_ridge(&image), want);
        assert_eq!(read_joliet(&image), want);
        // Data starts after the fixed sectors; 5000 bytes take 3 sectors.
        assert_eq!(image.len(), (FIRST_DATA + 1 + 1 + 3 + PADDING_SECTORS) * SECTOR);
        assert!(image[image.len() - PADDING_SECTORS * SECTOR..].iter().all(|b| *b == 0));
        assert_eq!(write("cidata", &files).unwrap(), image, "deterministic");
    }

    #[test]
    fn primary_names_are_8_3_and_unique() {
        assert_eq!(
            iso_names(&["user-data", "meta-data", "network-config", "a.tar.gz", "network-configs", "x"]),
            ["USER_DAT.;1", "META_DAT.;1", "NETWORK_.;1", "A_TAR.GZ;1", "NETWORK1.;1", "X.;1"]
        );
        let image = write("cidata", &[("network-config", b"1"), ("network-configs", b"2")]).unwrap();
        let names: Vec<String> = read_rock_ridge(&image).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["network-config", "network-configs"]);
    }

    #[test]
    fn bad_input_is_refused() {
        assert_eq!(write("", &[]), Err(IsoError::Label(String::new())));
        assert!(matches!(write("a label", &[]), Err(IsoError::Label(_))));
        assert!(matches!(write(&"a".repeat(17), &[]), Err(IsoError::Label(_))));
        for bad in ["", ".hidden", "a/b", "a b", "é", &"n".repeat(65)] {
            assert_eq!(write("cidata", &[(bad, b"")]), Err(IsoError::Name(bad.to_string())), "{bad:?}");
        }
        assert_eq!(write("cidata", &[("a", b""), ("a", b"")]), Err(IsoError::Duplicate("a".into())));
        let many: Vec<String> = (0..40).map(|i| format!("file-number-{i:02}-with-a-long-name")).collect();
        let files: Vec<(&str, &[u8])> = many.iter().map(|n| (n.as_str(), &b""[..])).collect();
        assert_eq!(write("cidata", &files), Err(IsoError::TooManyFiles(40)));
    }
}
