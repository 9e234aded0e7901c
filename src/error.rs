//! The one error type of the library. Every fallible public function returns
//! [`Result`]; the CLI prints the chain on one line and exits non-zero.

use std::path::PathBuf;

/// Everything that can go wrong in lesionseg, by the part of the system that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor or buffer does not have the shape an operation needs.
    #[error("{op}: expected {expected}, got {got}")]
    Shape {
        /// The operation or tensor that was checked.
        op: String,
        /// What it needed.
        expected: String,
        /// What it was given.
        got: String,
    },
    /// A weight file is unreadable, incomplete or does not match the model.
    #[error("weights {}: {}{reason}", path.display(), tensor.as_deref().map(|t| format!("tensor `{t}`: ")).unwrap_or_default())]
    Weights {
        /// The file.
        path: PathBuf,
        /// The tensor concerned, when there is one.
        tensor: Option<String>,
        /// What is wrong and, where it helps, what to do.
        reason: String,
    },
    /// A data file (image, mask, tensor input) is unreadable or inconsistent.
    #[error("{}: {reason}", path.display())]
    Data {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A command-line or configuration value that cannot be used.
    #[error("{0}")]
    Config(String),
    /// The CUDA driver or a launch failed.
    #[error("CUDA: {0}")]
    Cuda(String),
    /// NVRTC rejected a kernel source; `log` is the full program log.
    #[error("NVRTC failed to compile {module}:\n{log}")]
    Nvrtc {
        /// The kernel file.
        module: String,
        /// The compiler's log.
        log: String,
    },
    /// An I/O error on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A shape error for `op`.
    pub fn shape(op: impl Into<String>, expected: impl ToString, got: impl ToString) -> Self {
        Error::Shape { op: op.into(), expected: expected.to_string(), got: got.to_string() }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
