//! Disk use, as tests and benchmarks measure it: the bytes of the files under
//! a directory, and the bytes free on a filesystem; and a file damaged as a
//! failing disk might leave it.

use std::path::Path;

/// Bytes of the regular files under `dir`, recursively (what
/// `du --apparent-size` says); 0 when it does not exist.
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_size(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Bytes available to an unprivileged writer on the filesystem of `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain old data; all zeroes is a valid value.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `stat` a valid,
    // writable statvfs struct for the duration of the call.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    (rc == 0).then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Cuts the file at `path` to half its length, as a failing disk might leave
/// it (a store's database, to see that the damage is found and named).
pub fn cut_in_half(path: &Path) {
    let cut = std::fs::metadata(path).and_then(|meta| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)?
            .set_len(meta.len() / 2)
    });
    cut.unwrap_or_else(|e| panic!("cannot cut {} in half: {e}", path.display()));
}
