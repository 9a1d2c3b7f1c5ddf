//! What the `dcdn` command line shares across subcommands: exit codes that
//! say what went wrong, progress bars that appear only on a terminal, and the
//! client-side commands (`publish`, `fetch`, `admin`, `status`).
//!
//! Argument parsing stays in `main.rs`; the node's own parts never call in
//! here.

pub mod admin;
pub mod progress;
pub mod transfer;

use crate::client::ClientError;
use hyper::StatusCode;

/// The process exit status of a `dcdn` command. Scripts branch on these, so
/// the numbers are part of the interface: never reuse one for a new meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything worked.
    Ok = 0,
    /// Any failure not listed below (I/O on local files, a bad reply, ...).
    Error = 1,
    /// The command line is wrong (clap uses 2 for its own usage errors too).
    Usage = 2,
    /// A check ran and found a problem (`check`, `up --check`, `config check`).
    CheckFailed = 3,
    /// A server could not be reached: connection refused, DNS, timeout.
    Unreachable = 4,
    /// A server refused the request: 401 or 403 (token missing or wrong).
    Refused = 5,
    /// Bytes arrived but do not match their digest (BLAKE3 vs ETag).
    VerificationFailed = 6,
}

impl Exit {
    /// Every code with its meaning, in order; `--help` and the README print it.
    pub const ALL: [(Exit, &'static str); 7] = [
        (Exit::Ok, "success"),
        (Exit::Error, "any other error"),
        (Exit::Usage, "usage: bad arguments or flags"),
        (
            Exit::CheckFailed,
            "check failed: check, up --check or config check found a problem",
        ),
        (
            Exit::Unreachable,
            "unreachable: connection refused, DNS failure or timeout",
        ),
        (Exit::Refused, "refused: the server answered 401 or 403"),
        (
            Exit::VerificationFailed,
            "verification failed: the bytes do not match their digest",
        ),
    ];

    pub fn code(self) -> u8 {
        self as u8
    }
}

/// The exit-code table for `--help`.
pub fn exit_codes_help() -> String {
    let mut out = String::from("Exit codes:\n");
    for (exit, meaning) in Exit::ALL {
        out.push_str(&format!("  {}  {meaning}\n", exit.code()));
    }
    out
}

/// A failure the command itself detects, carrying the exit code it means.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    CheckFailed(String),
    #[error("{0}")]
    Verification(String),
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Refused(String),
}

impl Failure {
    /// A failure with the meaning of `exit` (`Ok` and `Error` become a plain error).
    pub fn error(exit: Exit, message: String) -> anyhow::Error {
        match exit {
            Exit::Usage => Self::Usage(message).into(),
            Exit::CheckFailed => Self::CheckFailed(message).into(),
            Exit::VerificationFailed => Self::Verification(message).into(),
            Exit::Unreachable => Self::Unreachable(message).into(),
            Exit::Refused => Self::Refused(message).into(),
            Exit::Ok | Exit::Error => anyhow::Error::msg(message),
        }
    }
}

/// The exit code a failed HTTP call means.
pub fn client_exit(e: &ClientError) -> Exit {
    match e {
        ClientError::Url(_) | ClientError::CaFile { .. } => Exit::Usage,
        ClientError::Transport { .. }
        | ClientError::Timeout { .. }
        | ClientError::Stalled { .. } => Exit::Unreachable,
        ClientError::Status { status, .. }
            if *status == StatusCode::UNAUTHORIZED || *status == StatusCode::FORBIDDEN =>
        {
            Exit::Refused
        }
        ClientError::Status { .. } => Exit::Error,
    }
}

/// The exit code an error means: the first cause in its chain that says
/// more than "an error" decides.
pub fn exit_for(err: &anyhow::Error) -> Exit {
    for cause in err.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return match f {
                Failure::Usage(_) => Exit::Usage,
                Failure::CheckFailed(_) => Exit::CheckFailed,
                Failure::Verification(_) => Exit::VerificationFailed,
                Failure::Unreachable(_) => Exit::Unreachable,
                Failure::Refused(_) => Exit::Refused,
            };
        }
        if let Some(c) = cause.downcast_ref::<ClientError>() {
            return client_exit(c);
        }
        if cause.downcast_ref::<crate::config::ConfigError>().is_some() {
            return Exit::CheckFailed;
        }
        // Counts `dcdn up` refuses are bad flags.
        if let Some(crate::up::plan::PlanError::TooMany { .. }) = cause.downcast_ref() {
            return Exit::Usage;
        }
    }
    Exit::Error
}

/// Joins a base URL and a path without doubling the slash.
pub fn join(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_map_to_their_exit_codes() {
        let status = |s: u16| {
            anyhow::Error::new(ClientError::Status {
                method: hyper::Method::GET,
                url: "http://x/".into(),
                status: StatusCode::from_u16(s).unwrap(),
                body: String::new(),
            })
        };
        assert_eq!(exit_for(&status(401)), Exit::Refused);
        assert_eq!(exit_for(&status(403)), Exit::Refused);
        assert_eq!(exit_for(&status(404)), Exit::Error);
        let unreachable = anyhow::Error::new(ClientError::Transport {
            method: hyper::Method::GET,
            url: "http://x/".into(),
            message: "refused".into(),
        })
        .context("fetching");
        assert_eq!(exit_for(&unreachable), Exit::Unreachable);
        let verify = anyhow::Error::new(Failure::Verification("x".into()));
        assert_eq!(exit_for(&verify), Exit::VerificationFailed);
        assert_eq!(exit_for(&anyhow::anyhow!("other")), Exit::Error);
    }

    #[test]
    fn every_code_is_listed_once_in_order() {
        for (i, (exit, _)) in Exit::ALL.iter().enumerate() {
            assert_eq!(usize::from(exit.code()), i);
        }
        assert!(exit_codes_help().contains("  4  unreachable"));
    }
}
