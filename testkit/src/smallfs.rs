//! A small real filesystem (tmpfs) for disk-full tests. Mounting needs
//! root, as CI has; elsewhere `SmallFs::mount` returns None and the test
//! says it was skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::free_bytes;

pub struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    /// Mounts a tmpfs of `bytes` on a new temp directory.
    pub fn mount(bytes: u64) -> Option<SmallFs> {
        let dir = tempfile::Builder::new().prefix("ferry-test-smallfs-").tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(SmallFs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the filesystem with a file until `leave_bytes` are free.
    pub fn fill_leaving(&self, leave_bytes: u64) -> PathBuf {
        let filler = self.dir.path().join("filler");
        let free = free_bytes(self.dir.path()).unwrap_or(0);
        let size = free.saturating_sub(leave_bytes);
        let data = vec![0u8; 1 << 20];
        let mut f = std::fs::File::create(&filler).unwrap_or_else(|e| panic!("create {}: {e}", filler.display()));
        let mut written = 0u64;
        while written < size {
            let n = (size - written).min(data.len() as u64) as usize;
            if std::io::Write::write_all(&mut f, &data[..n]).is_err() {
                break;
            }
            written += n as u64;
        }
        filler
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}
