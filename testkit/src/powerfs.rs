//! powerfs: an in-memory FUSE filesystem that can lose power.
//!
//! It keeps two copies of the tree: what was written (`live`) and what was
//! synced (`durable`). `fsync`/`fdatasync` of a file copies its data, size
//! and mode to `durable`; `fsync` of a directory copies its entries (a
//! child created but never synced then exists empty). [`PowerFs::cut_power`]
//! throws `live` away: every write, file creation, rename, removal and size
//! change not synced is gone, as after a power failure. Everything else
//! (`sync_file_range` included, which is no FUSE operation) persists
//! nothing. Files are opened with `direct_io` and attributes are never
//! cached, so the kernel holds no copy of its own; after a cut every
//! operation fails with EIO until [`PowerFs::remount`].
//!
//! Needs root, `/dev/fuse` and `fusermount3`; [`PowerFs::mount`] returns
//! None elsewhere, and the test says it was skipped.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};

const CHUNK: u64 = 64 * 1024;
const ROOT: u64 = 1;
const TTL: Duration = Duration::ZERO;

#[derive(Clone)]
enum Body {
    File {
        size: u64,
        /// CHUNK-sized pieces; a missing one reads as zeros.
        chunks: BTreeMap<u64, Arc<Vec<u8>>>,
    },
    Dir {
        entries: BTreeMap<OsString, u64>,
    },
}

#[derive(Clone)]
struct Node {
    body: Body,
    perm: u16,
    mtime: SystemTime,
}

impl Node {
    fn empty_like(&self) -> Node {
        let body = match self.body {
            Body::File { .. } => Body::File {
                size: 0,
                chunks: BTreeMap::new(),
            },
            Body::Dir { .. } => Body::Dir {
                entries: BTreeMap::new(),
            },
        };
        Node {
            body,
            perm: self.perm,
            mtime: self.mtime,
        }
    }
}

type Tree = HashMap<u64, Node>;

struct State {
    live: Tree,
    durable: Tree,
    next_ino: u64,
    /// After a cut, until the remount.
    dead: bool,
    syncs: u64,
}

/// What a test can ask of the mounted filesystem.
#[derive(Clone)]
struct Shared(Arc<Mutex<State>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct PowerFs {
    dir: tempfile::TempDir,
    state: Shared,
    session: Option<fuser::BackgroundSession>,
}

impl PowerFs {
    /// Mounts an empty powerfs on a new temp directory; None when FUSE is
    /// not available here.
    pub fn mount() -> Option<PowerFs> {
        if !Path::new("/dev/fuse").exists() || unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let dir = tempfile::Builder::new().prefix("ferry-test-powerfs-").tempdir().ok()?;
        let root = Node {
            body: Body::Dir {
                entries: BTreeMap::new(),
            },
            perm: 0o755,
            mtime: SystemTime::now(),
        };
        let tree: Tree = [(ROOT, root)].into_iter().collect();
        let state = Shared(Arc::new(Mutex::new(State {
            live: tree.clone(),
            durable: tree,
            next_ino: ROOT + 1,
            dead: false,
            syncs: 0,
        })));
        let mut fs = PowerFs {
            dir,
            state,
            session: None,
        };
        fs.session = Some(fs.spawn().ok()?);
        Some(fs)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// fsync and fdatasync calls served so far.
    pub fn syncs(&self) -> u64 {
        self.state.lock().syncs
    }

    /// The power fails: everything not synced is lost, and every operation
    /// fails (EIO) until [`PowerFs::remount`].
    pub fn cut_power(&self) {
        let mut st = self.state.lock();
        // Keep what the durable root still reaches.
        let mut reachable = Tree::new();
        let mut todo = vec![ROOT];
        while let Some(ino) = todo.pop() {
            if let Some(node) = st.durable.get(&ino) {
                if let Body::Dir { entries } = &node.body {
                    todo.extend(entries.values().copied());
                }
                reachable.insert(ino, node.clone());
            }
        }
        st.durable = reachable;
        st.live = st.durable.clone();
        st.dead = true;
    }

    /// Unmounts (the kernel forgets everything it knew) and mounts the
    /// surviving tree again.
    pub fn remount(&mut self) {
        self.unmount();
        self.state.lock().dead = false;
        let session = self
            .spawn()
            .unwrap_or_else(|e| panic!("powerfs: cannot mount {} again: {e}", self.path().display()));
        self.session = Some(session);
    }

    fn spawn(&self) -> std::io::Result<fuser::BackgroundSession> {
        let mut config = fuser::Config::default();
        config.mount_options = vec![fuser::MountOption::FSName("powerfs".into()), fuser::MountOption::RW];
        fuser::spawn_mount(Fs(self.state.clone()), self.dir.path(), &config)
    }

    fn unmount(&mut self) {
        if let Some(session) = self.session.take() {
            if session.umount_and_join().is_err() {
                let _ = std::process::Command::new("fusermount3")
                    .arg("-uz")
                    .arg(self.dir.path())
                    .status();
            }
        }
    }
}

impl Drop for PowerFs {
    fn drop(&mut self) {
        self.unmount();
    }
}

struct Fs(Shared);

fn attr(ino: u64, node: &Node) -> FileAttr {
    let (kind, size, nlink) = match &node.body {
        Body::File { size, .. } => (FileType::RegularFile, *size, 1),
        Body::Dir { .. } => (FileType::Directory, 0, 2),
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: node.mtime,
        mtime: node.mtime,
        ctime: node.mtime,
        crtime: node.mtime,
        kind,
        perm: node.perm,
        nlink,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn read_file(chunks: &BTreeMap<u64, Arc<Vec<u8>>>, size: u64, offset: u64, len: u64) -> Vec<u8> {
    let end = size.min(offset.saturating_add(len));
    let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
    let mut at = offset;
    while at < end {
        let (index, within) = (at / CHUNK, at % CHUNK);
        let n = (CHUNK - within).min(end - at);
        match chunks.get(&index) {
            Some(c) => out.extend_from_slice(&c[within as usize..(within + n) as usize]),
            None => out.resize(out.len() + n as usize, 0),
        }
        at += n;
    }
    out
}

fn write_file(chunks: &mut BTreeMap<u64, Arc<Vec<u8>>>, size: &mut u64, offset: u64, data: &[u8]) {
    let mut done = 0usize;
    while done < data.len() {
        let at = offset + done as u64;
        let (index, within) = (at / CHUNK, (at % CHUNK) as usize);
        let n = (CHUNK as usize - within).min(data.len() - done);
        let chunk = Arc::make_mut(chunks.entry(index).or_insert_with(|| Arc::new(vec![0; CHUNK as usize])));
        chunk[within..within + n].copy_from_slice(&data[done..done + n]);
        done += n;
    }
    *size = (*size).max(offset + data.len() as u64);
}

fn truncate(chunks: &mut BTreeMap<u64, Arc<Vec<u8>>>, size: &mut u64, new_size: u64) {
    if new_size < *size {
        chunks.retain(|index, _| index * CHUNK < new_size);
        let within = (new_size % CHUNK) as usize;
        if within > 0 {
            if let Some(c) = chunks.get_mut(&(new_size / CHUNK)) {
                Arc::make_mut(c)[within..].fill(0);
            }
        }
    }
    *size = new_size;
}

impl Fs {
    /// The state, or EIO after a power cut.
    fn state(&self) -> Result<MutexGuard<'_, State>, Errno> {
        let st = self.0.lock();
        if st.dead {
            Err(Errno::EIO)
        } else {
            Ok(st)
        }
    }

    fn child(st: &State, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        match st.live.get(&parent).map(|n| &n.body) {
            Some(Body::Dir { entries }) => entries.get(name).copied().ok_or(Errno::ENOENT),
            Some(_) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn entries(st: &mut State, ino: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match st.live.get_mut(&ino).map(|n| &mut n.body) {
            Some(Body::Dir { entries }) => Ok(entries),
            Some(_) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn make(&self, parent: u64, name: &OsStr, body: Body, perm: u16) -> Result<(u64, FileAttr), Errno> {
        let mut st = self.state()?;
        if Self::child(&st, parent, name).is_ok() {
            return Err(Errno::EEXIST);
        }
        Self::entries(&mut st, parent)?;
        let ino = st.next_ino;
        st.next_ino += 1;
        let node = Node {
            body,
            perm,
            mtime: SystemTime::now(),
        };
        let a = attr(ino, &node);
        st.live.insert(ino, node);
        Self::entries(&mut st, parent)?.insert(name.to_os_string(), ino);
        Ok((ino, a))
    }

    fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let mut st = self.state()?;
        let ino = Self::child(&st, parent, name)?;
        match st.live.get(&ino).map(|n| &n.body) {
            Some(Body::Dir { entries }) if dir && !entries.is_empty() => return Err(Errno::ENOTEMPTY),
            Some(Body::Dir { .. }) if !dir => return Err(Errno::EISDIR),
            Some(Body::File { .. }) if dir => return Err(Errno::ENOTDIR),
            _ => {}
        }
        Self::entries(&mut st, parent)?.remove(name);
        st.live.remove(&ino);
        Ok(())
    }
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = self.state().and_then(|st| {
            let ino = Self::child(&st, parent.0, name)?;
            st.live.get(&ino).map(|n| attr(ino, n)).ok_or(Errno::ENOENT)
        });
        match found {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let found = self
            .state()
            .and_then(|st| st.live.get(&ino.0).map(|n| attr(ino.0, n)).ok_or(Errno::ENOENT));
        match found {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let done = self.state().and_then(|mut st| {
            let node = st.live.get_mut(&ino.0).ok_or(Errno::ENOENT)?;
            if let Some(mode) = mode {
                node.perm = (mode & 0o7777) as u16;
            }
            if let Some(new_size) = size {
                match &mut node.body {
                    Body::File { size, chunks } => truncate(chunks, size, new_size),
                    Body::Dir { .. } => return Err(Errno::EISDIR),
                }
                node.mtime = SystemTime::now();
            }
            Ok(attr(ino.0, node))
        });
        match done {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let body = Body::Dir {
            entries: BTreeMap::new(),
        };
        match self.make(parent.0, name, body, (mode & !umask & 0o7777) as u16) {
            Ok((_, a)) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let body = Body::File {
            size: 0,
            chunks: BTreeMap::new(),
        };
        match self.make(parent.0, name, body, (mode & !umask & 0o7777) as u16) {
            Ok((_, a)) => reply.created(&TTL, &a, Generation(0), FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let done = self.state().and_then(|mut st| {
            let ino = Self::child(&st, parent.0, name)?;
            Self::entries(&mut st, newparent.0)?;
            if let Ok(old) = Self::child(&st, newparent.0, newname) {
                if old == ino {
                    return Ok(());
                }
                if let Some(Body::Dir { entries }) = st.live.get(&old).map(|n| &n.body) {
                    if !entries.is_empty() {
                        return Err(Errno::ENOTEMPTY);
                    }
                }
                st.live.remove(&old);
            }
            Self::entries(&mut st, parent.0)?.remove(name);
            Self::entries(&mut st, newparent.0)?.insert(newname.to_os_string(), ino);
            Ok(())
        });
        match done {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self
            .state()
            .and_then(|st| st.live.get(&ino.0).map(|_| ()).ok_or(Errno::ENOENT))
        {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let data = self.state().and_then(|st| match st.live.get(&ino.0).map(|n| &n.body) {
            Some(Body::File { size: len, chunks }) => Ok(read_file(chunks, *len, offset, u64::from(size))),
            Some(Body::Dir { .. }) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        });
        match data {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let done = self.state().and_then(|mut st| {
            let node = st.live.get_mut(&ino.0).ok_or(Errno::ENOENT)?;
            match &mut node.body {
                Body::File { size, chunks } => write_file(chunks, size, offset, data),
                Body::Dir { .. } => return Err(Errno::EISDIR),
            }
            node.mtime = SystemTime::now();
            Ok(())
        });
        match done {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        match self.state() {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let done = self.state().and_then(|mut st| {
            let node = st.live.get(&ino.0).ok_or(Errno::ENOENT)?.clone();
            let keep = match (&node.body, st.durable.get(&ino.0).map(|n| &n.body)) {
                // A directory's entries are synced by fsyncdir only.
                (Body::Dir { .. }, Some(Body::Dir { entries })) => Node {
                    body: Body::Dir {
                        entries: entries.clone(),
                    },
                    ..node
                },
                (Body::Dir { .. }, _) => node.empty_like(),
                _ => node,
            };
            st.durable.insert(ino.0, keep);
            st.syncs += 1;
            Ok(())
        });
        match done {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let done = self.state().and_then(|mut st| {
            let node = st.live.get(&ino.0).ok_or(Errno::ENOENT)?.clone();
            let Body::Dir { entries } = &node.body else {
                return Err(Errno::ENOTDIR);
            };
            // Children not synced themselves exist empty.
            for child in entries.values() {
                if !st.durable.contains_key(child) {
                    let empty = st.live.get(child).map(Node::empty_like);
                    if let Some(empty) = empty {
                        st.durable.insert(*child, empty);
                    }
                }
            }
            st.durable.insert(ino.0, node);
            st.syncs += 1;
            Ok(())
        });
        match done {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let listed = self.state().and_then(|st| {
            let Some(Body::Dir { entries }) = st.live.get(&ino.0).map(|n| &n.body) else {
                return Err(Errno::ENOTDIR);
            };
            let mut all = vec![
                (ino.0, FileType::Directory, OsString::from(".")),
                (ino.0, FileType::Directory, OsString::from("..")),
            ];
            for (name, child) in entries {
                let kind = match st.live.get(child).map(|n| &n.body) {
                    Some(Body::Dir { .. }) => FileType::Directory,
                    _ => FileType::RegularFile,
                };
                all.push((*child, kind, name.clone()));
            }
            Ok(all)
        });
        match listed {
            Ok(all) => {
                for (i, (child, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(child), (i + 1) as u64, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // 16 GiB, nearly all free: room is not what this filesystem tests.
        let blocks = 4 << 20;
        reply.statfs(blocks, blocks - 1024, blocks - 1024, 1 << 20, 1 << 20, 4096, 255, 4096);
    }
}
