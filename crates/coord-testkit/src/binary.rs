//! Finding the etcd and etcdctl programs.

use std::{
    env,
    ffi::OsStr,
    path::{Path, PathBuf},
};

use crate::Error;

/// Environment variable naming the etcd binary to run (a path, or a bare name looked up on `PATH`).
pub const ETCD_BIN_ENV: &str = "COORD_ETCD_BIN";

/// Environment variable naming the etcdctl binary (a path, or a bare name looked up on `PATH`).
pub const ETCDCTL_BIN_ENV: &str = "COORD_ETCDCTL_BIN";

/// The etcd binary the testkit runs when a builder does not name one.
///
/// The order is:
///
/// 1. `$COORD_ETCD_BIN`, if set and not empty: a path (anything containing a path
///    separator, e.g. `./bin/etcd` or `/usr/local/bin/etcd`), or a bare name looked
///    up on `PATH` (e.g. `COORD_ETCD_BIN=etcd` for the system etcd). If it names
///    nothing runnable this is an error, not a silent fallback.
/// 2. The etcd shipped by the `etcd-bin-vendored` crate (etcd 3.7).
///
/// # Errors
///
/// [`Error::BinaryNotFound`] when `$COORD_ETCD_BIN` names no file;
/// [`Error::UnsupportedPlatform`] when it is unset and no vendored etcd exists for this platform.
///
/// # Examples
///
/// ```
/// let etcd = coord_testkit::etcd_binary()?;
/// assert!(etcd.exists());
/// # Ok::<(), coord_testkit::Error>(())
/// ```
pub fn etcd_binary() -> Result<PathBuf, Error> {
    match env::var_os(ETCD_BIN_ENV).filter(|v| !v.is_empty()) {
        Some(name) => resolve(&name).ok_or_else(|| Error::BinaryNotFound {
            reason: format!(
                "{ETCD_BIN_ENV}={} is neither an existing file nor a program on PATH",
                Path::new(&name).display()
            ),
        }),
        None => etcd_bin_vendored::etcd_bin_path()
            .map(Path::to_path_buf)
            .map_err(Error::UnsupportedPlatform),
    }
}

/// The etcdctl binary for optional interop tests, if there is one.
///
/// `$COORD_ETCDCTL_BIN` (a path or a bare name looked up on `PATH`) if set and not
/// empty, else `etcdctl` on `PATH`, else `None`. The vendored etcd comes without
/// etcdctl, so tests that need it should skip when this returns `None`.
///
/// # Examples
///
/// ```
/// if let Some(etcdctl) = coord_testkit::etcdctl_binary() {
///     println!("interop tests will use {}", etcdctl.display());
/// }
/// ```
pub fn etcdctl_binary() -> Option<PathBuf> {
    match env::var_os(ETCDCTL_BIN_ENV).filter(|v| !v.is_empty()) {
        Some(name) => resolve(&name),
        None => resolve(OsStr::new("etcdctl")),
    }
}

/// A path is taken as is; a bare name is searched on `PATH`.
fn resolve(name: &OsStr) -> Option<PathBuf> {
    let path = Path::new(name);
    if path.components().count() > 1 {
        return is_runnable(path).then(|| path.to_path_buf());
    }
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|candidate| is_runnable(candidate))
}

fn is_runnable(path: &Path) -> bool {
    let Ok(meta) = path.metadata() else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        meta.is_file()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_name_is_looked_up_on_path() {
        // `sh` is on PATH on every unix the testkit targets.
        #[cfg(unix)]
        assert!(resolve(OsStr::new("sh")).is_some_and(|p| p.is_absolute()));
    }

    #[test]
    fn a_missing_path_resolves_to_nothing() {
        assert!(resolve(OsStr::new("/nonexistent/coord-testkit/etcd")).is_none());
        assert!(resolve(OsStr::new("coord-testkit-no-such-program")).is_none());
    }
}
