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
    /// A command-line argument (or the library option behind it) outside what it
    /// accepts; `arg` is the flag, e.g. `--size`.
    #[error("{arg}: {reason}")]
    Argument {
        /// The flag or option.
        arg: String,
        /// The value given and what is accepted.
        reason: String,
    },
    /// An output that would destroy something: an input of the same command, or a
    /// run or dataset already in the folder.
    #[error("{}: {reason}", path.display())]
    Output {
        /// The output path.
        path: PathBuf,
        /// What is there and what to do.
        reason: String,
    },
    /// `--resume` cannot continue the checkpoint as asked (missing, not a training
    /// checkpoint, or options that disagree with it).
    #[error("--resume {}: {reason}", path.display())]
    Resume {
        /// The checkpoint.
        path: PathBuf,
        /// What disagrees.
        reason: String,
    },
    /// Not enough memory or disk for the work asked: what it needs and what there is.
    #[error("{0}")]
    Resources(String),
    /// Training diverged: the loss became non-finite.
    #[error(
        "training stopped: the loss became {loss} at step {step} (epoch {epoch}, batch {batch}); {}",
        match checkpoint {
            Some(p) => format!("the last good checkpoint is {} — resume from it (--resume) with a lower --lr", p.display()),
            None => "no checkpoint was written before it; start again with a lower --lr".to_string(),
        }
    )]
    Diverged {
        /// The non-finite loss.
        loss: f64,
        /// Optimizer steps taken before it.
        step: u64,
        /// Epoch (1-based).
        epoch: u32,
        /// Batch within the epoch (1-based).
        batch: usize,
        /// The last checkpoint on disk, when one was written.
        checkpoint: Option<PathBuf>,
    },
    /// The device asked for is not usable (`--device cuda` without a GPU).
    #[error("{0}")]
    Device(String),
    /// The performance model (`profile --predict`) met counters it cannot use.
    #[error("profile --predict: {0}")]
    Predict(String),
    /// The NVTX tool named by the environment could not be loaded.
    #[error("NVTX: {0}")]
    Nvtx(String),
    /// A data-parallel group could not complete a collective: a rank died, failed,
    /// or did not arrive in time; or NCCL could not be loaded.
    #[error("replica {rank}: {reason}")]
    Collective {
        /// The rank that reports it.
        rank: usize,
        /// What happened, naming the rank at fault when known.
        reason: String,
    },
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

    /// An argument error for flag `arg`.
    pub fn argument(arg: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Argument { arg: arg.into(), reason: reason.into() }
    }
}
