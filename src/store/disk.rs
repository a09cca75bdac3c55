//! How full the filesystem under the data directory is: for the status
//! (DESIGN §11) and for the content cache, which never takes the room the
//! store needs for writes (DESIGN §12).

use std::path::Path;

fn statvfs(path: &Path) -> Option<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes only into the struct we pass; the path is a
    // valid NUL-terminated string for the call's duration.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 || stat.f_blocks == 0 {
        return None;
    }
    Some(stat)
}

/// Percent of the filesystem's blocks in use, to one decimal.
pub fn usage_percent(path: &Path) -> Option<f64> {
    let stat = statvfs(path)?;
    let used = stat.f_blocks.saturating_sub(stat.f_bfree) as f64;
    Some((used / stat.f_blocks as f64 * 1000.0).round() / 10.0)
}

/// Bytes an unprivileged writer may still use there.
pub fn available_bytes(path: &Path) -> Option<u64> {
    let stat = statvfs(path)?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_filesystem_is_measured() {
        let pct = usage_percent(Path::new("/")).unwrap();
        assert!((0.0..=100.0).contains(&pct));
        assert!(available_bytes(Path::new("/")).is_some());
        assert!(available_bytes(Path::new("/no/such/dir")).is_none());
    }
}
