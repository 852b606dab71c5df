//! Project tasks, so that a fresh machine needs nothing but the Rust toolchain.
//!
//! * `cargo xtask test`  — every test of the workspace (unit, integration, doc tests; all features)
//!   against real etcd.
//! * `cargo xtask demo`  — the reboot-coordination demo (`coord-reboot demo`: a FleetLock server
//!   and simulated nodes in two groups) on an embedded etcd; arguments are passed on (`--fast`).
//! * `cargo xtask lint`  — `cargo fmt --check`, `cargo clippy --all-targets -D warnings`, `cargo doc`.
//! * `cargo xtask protoc` — only install protoc (see below).
//!
//! etcd-client's build script runs `protoc`. We install the binary shipped by the
//! `protoc-bin-vendored` crate (and its `.proto` includes) into `target/coord-tools/`,
//! which `.cargo/config.toml` exports as `PROTOC`/`PROTOC_INCLUDE` to every cargo invocation in this
//! workspace (unless they are already set).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = match args.split_first() {
        Some((t, rest)) => (t.as_str(), rest.to_vec()),
        None => {
            eprintln!("usage: cargo xtask <test|demo|lint|protoc> [args...]");
            return ExitCode::from(2);
        }
    };
    match run(task, &rest) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("xtask {task}: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: &str, rest: &[String]) -> Result<(), String> {
    let root = workspace_root();
    install_protoc(&root)?;
    match task {
        "protoc" => Ok(()),
        "test" => cargo(
            &root,
            &["test", "--workspace", "--all-features", "--locked"],
            rest,
        ),
        "demo" => cargo(
            &root,
            &[
                "run",
                "--locked",
                "--package",
                "coord-reboot",
                "--bin",
                "coord-reboot",
                "--",
                "demo",
            ],
            rest,
        ),
        "lint" => {
            cargo(&root, &["fmt", "--all", "--", "--check"], &[])?;
            cargo(
                &root,
                &[
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--all-features",
                    "--locked",
                    "--",
                    "-D",
                    "warnings",
                ],
                &[],
            )?;
            cargo_env(
                &root,
                &[
                    "doc",
                    "--workspace",
                    "--all-features",
                    "--no-deps",
                    "--locked",
                ],
                &[],
                &[("RUSTDOCFLAGS", "-D warnings")],
            )
        }
        other => Err(format!(
            "unknown task `{other}` (expected test, demo, lint or protoc)"
        )),
    }
}

fn workspace_root() -> PathBuf {
    // xtask lives in <root>/xtask; CARGO_MANIFEST_DIR is set by cargo at compile time.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn install_protoc(root: &Path) -> Result<(), String> {
    let bin = protoc_bin_vendored::protoc_bin_path()
        .map_err(|e| format!("protoc-bin-vendored has no protoc for this platform: {e}"))?;
    let include = protoc_bin_vendored::include_path()
        .map_err(|e| format!("protoc-bin-vendored has no include files: {e}"))?;
    let tools = root.join("target").join("coord-tools");
    copy_if_changed(&bin, &tools.join("bin").join("protoc"))?;
    copy_tree(&include, &tools.join("include"))
}

/// Copies `src` to `dst` through a temporary file (so a concurrent build never sees half a binary),
/// skipping the copy when `dst` already has the same size.
fn copy_if_changed(src: &Path, dst: &Path) -> Result<(), String> {
    let same = match (std::fs::metadata(src), std::fs::metadata(dst)) {
        (Ok(a), Ok(b)) => a.len() == b.len(),
        _ => false,
    };
    if same {
        return Ok(());
    }
    let dir = dst
        .parent()
        .ok_or_else(|| format!("{} has no parent", dst.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let tmp = dst.with_extension("tmp");
    std::fs::copy(src, &tmp)
        .map_err(|e| format!("copy {} → {}: {e}", src.display(), tmp.display()))?;
    std::fs::rename(&tmp, dst).map_err(|e| format!("install {}: {e}", dst.display()))
}

fn copy_tree(src: &Path, dst: &Path) -> Result<(), String> {
    let entries = std::fs::read_dir(src).map_err(|e| format!("read {}: {e}", src.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("read {}: {e}", src.display()))?;
        let path = entry.path();
        let target = dst.join(entry.file_name());
        if path.is_dir() {
            copy_tree(&path, &target)?;
        } else {
            copy_if_changed(&path, &target)?;
        }
    }
    Ok(())
}

fn cargo(root: &Path, args: &[&str], rest: &[String]) -> Result<(), String> {
    cargo_env(root, args, rest, &[])
}

fn cargo_env(
    root: &Path,
    args: &[&str],
    rest: &[String],
    env: &[(&str, &str)],
) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root).args(args).args(rest);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let status = cmd
        .status()
        .map_err(|e| format!("could not run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}
