//! One logging convention for every DCDN binary (the node and the
//! operator): a `RUST_LOG` filter, as every tracing-based Rust service
//! reads it, and `--log-format text|json` (or `DCDN_LOG_FORMAT`). Logs go
//! to standard error; standard output is for what a command prints.

/// The filter when `RUST_LOG` is unset: quinn logs every lost packet at info.
const DEFAULT_FILTER: &str = "info,quinn=warn";

/// How log lines look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The logging flags every binary flattens into its command line.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// Log line format. The filter comes from RUST_LOG (default: info).
    #[arg(long, env = "DCDN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Same as `--log-format json` (kept for configs rendered before it).
    #[arg(long, hide = true)]
    pub log_json: bool,
}

/// Why logging could not start.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("RUST_LOG={value:?} is not a valid filter: {message}")]
    Filter { value: String, message: String },
}

impl LogArgs {
    pub fn format(&self) -> LogFormat {
        if self.log_json {
            LogFormat::Json
        } else {
            self.log_format
        }
    }

    /// Installs the global subscriber. A malformed `RUST_LOG` is an error,
    /// not silently "info": a typo should not hide the debug lines asked for.
    /// `DCDN_LOG` is read when `RUST_LOG` is unset (the node's older name).
    pub fn init(&self) -> Result<(), LogError> {
        let value = std::env::var("RUST_LOG")
            .or_else(|_| std::env::var("DCDN_LOG"))
            .unwrap_or_else(|_| DEFAULT_FILTER.to_owned());
        let filter =
            tracing_subscriber::EnvFilter::try_new(&value).map_err(|e| LogError::Filter {
                value: value.clone(),
                message: e.to_string(),
            })?;
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        // A second init (tests, `up` calling in twice) keeps the first.
        let _ = match self.format() {
            LogFormat::Json => builder.json().try_init(),
            LogFormat::Text => builder.try_init(),
        };
        Ok(())
    }
}
