//! Records the commit the binary is built from, for `--version` and the
//! `dcdn_build_info` metric. `GIT_COMMIT` wins (image builds have no `.git`);
//! otherwise `git` is asked; otherwise it is `unknown`. Neither name starts
//! with `DCDN_`: cargo also sets the variable when it runs the binary, and
//! the node reads every `DCDN_*` variable as a config override.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=GIT_COMMIT");
    let commit = std::env::var("GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    // Rebuild when HEAD moves: HEAD itself (branch switches) and the ref it
    // names (commits). Paths come from git, so worktrees work too.
    for path in [
        git(&["rev-parse", "--git-path", "HEAD"]),
        git(&["symbolic-ref", "-q", "HEAD"]).and_then(|r| git(&["rev-parse", "--git-path", &r])),
    ]
    .into_iter()
    .flatten()
    // A ref packed away has no file; a missing path would rerun every build.
    .filter(|p| std::path::Path::new(p).exists())
    {
        println!("cargo:rerun-if-changed={path}");
    }
    println!("cargo:rustc-env=BUILD_GIT_COMMIT={commit}");
}
