//! One error type for the whole engine.
//!
//! Every failure a user can cause (bad SQL, a wrong option, a malformed file in
//! `fail_fast` mode, a checkpoint that belongs to another query) must reach them as
//! a message that names the problem and what to do about it, never as a panic. The
//! variants say *where* the problem is, so front ends can print them as they are.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;

/// The result type used throughout millrace.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in millrace, grouped by who has to act on it.
#[derive(Debug)]
pub enum Error {
    /// The SQL text or a statement's shape is wrong (the user fixes the statement).
    Sql(String),
    /// An option name or value is wrong (the user fixes the `OPTIONS (...)` list).
    Option(String),
    /// The query is valid SQL but cannot run as a streaming query yet.
    Unsupported(String),
    /// Input data does not match its declaration (malformed record in `fail_fast` mode, schema mismatch).
    Data(String),
    /// The checkpoint directory is missing, damaged or belongs to another query.
    Checkpoint(String),
    /// An I/O error on a named path.
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// An I/O error that is not tied to one path (sockets, stdin).
    Network(String),
    /// An error raised by DataFusion while planning or running a batch.
    DataFusion(Box<DataFusionError>),
    /// An error raised by Arrow while reading or writing data.
    Arrow(ArrowError),
    /// The query was stopped while the caller waited for it.
    Stopped(String),
    /// Code inside a running query panicked: a user-defined function (for example a
    /// `flat_map_groups_with_state` closure) or a bug in millrace. The panic ends the
    /// query with this error instead of leaving it hung; the message is the panic's.
    Panic(String),
    /// A running streaming query failed (Spark's `StreamingQueryException`): `cause`
    /// is the error that ended it, with its own variant, so a caller of
    /// `await_termination` can tell a checkpoint problem from bad data or a full disk.
    Query {
        /// The query's name.
        name: String,
        /// The error that ended the query.
        cause: Arc<Error>,
    },
}

impl Error {
    /// Shorthand for an I/O error on `path`, so call sites read `.map_err(Error::io(path))`.
    pub fn io(path: impl AsRef<Path>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.as_ref().to_path_buf();
        move |source| Error::Io { path, source }
    }

    /// The error behind this one: the cause of a failed query, otherwise itself.
    pub fn root_cause(&self) -> &Error {
        match self {
            Error::Query { cause, .. } => cause.root_cause(),
            other => other,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Sql(m) => write!(f, "SQL error: {m}"),
            Error::Option(m) => write!(f, "option error: {m}"),
            Error::Unsupported(m) => write!(f, "not supported: {m}"),
            Error::Data(m) => write!(f, "data error: {m}"),
            Error::Checkpoint(m) => write!(f, "checkpoint error: {m}"),
            Error::Io { path, source } => write!(
                f,
                "I/O error on {}: {source}{}",
                path.display(),
                io_hint(source.kind())
            ),
            Error::Network(m) => write!(f, "network error: {m}"),
            Error::DataFusion(e) => write!(f, "{e}"),
            Error::Arrow(e) => write!(f, "Arrow error: {e}"),
            Error::Stopped(m) => write!(f, "query stopped: {m}"),
            Error::Panic(m) => write!(
                f,
                "panic inside the query: {m}; nothing of the batch it was in was committed: \
                 fix the function that panicked (or report the bug), then start the query \
                 again: it resumes from its last committed batch"
            ),
            Error::Query { name, cause } => write!(f, "streaming query '{name}' failed: {cause}"),
        }
    }
}

/// What to do about an I/O error of a kind a user can fix. A query stopped by one
/// resumes from its last committed batch when started again: nothing committed is
/// lost, and the interrupted batch is run again.
fn io_hint(kind: std::io::ErrorKind) -> &'static str {
    use std::io::ErrorKind;
    match kind {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
            "; free space on that file system, then start the query again: it resumes \
             from its last committed batch"
        }
        ErrorKind::ReadOnlyFilesystem => {
            "; the file system is read-only: remount it read-write (or move the checkpoint \
             to a writable directory), then start the query again: it resumes from its \
             last committed batch"
        }
        ErrorKind::PermissionDenied => {
            "; give the user running millrace read and write access to it, then start the \
             query again: it resumes from its last committed batch"
        }
        _ => "",
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::DataFusion(e) => Some(e.as_ref()),
            Error::Arrow(e) => Some(e),
            Error::Query { cause, .. } => Some(cause.as_ref()),
            _ => None,
        }
    }
}

impl From<DataFusionError> for Error {
    fn from(e: DataFusionError) -> Self {
        // Unwrap errors of our own that travelled through DataFusion (e.g. from a
        // TableProvider), so the user sees the original message.
        match e {
            DataFusionError::External(inner) => match inner.downcast::<Error>() {
                Ok(ours) => *ours,
                Err(other) => Error::DataFusion(Box::new(DataFusionError::External(other))),
            },
            DataFusionError::ArrowError(a, _) => Error::Arrow(*a),
            other => Error::DataFusion(Box::new(other)),
        }
    }
}

impl From<ArrowError> for Error {
    fn from(e: ArrowError) -> Self {
        Error::Arrow(e)
    }
}

impl From<datafusion::parquet::errors::ParquetError> for Error {
    fn from(e: datafusion::parquet::errors::ParquetError) -> Self {
        Error::Data(format!("Parquet: {e}"))
    }
}

impl From<sqlparser::parser::ParserError> for Error {
    fn from(e: sqlparser::parser::ParserError) -> Self {
        Error::Sql(e.to_string())
    }
}

impl From<sqlparser::tokenizer::TokenizerError> for Error {
    fn from(e: sqlparser::tokenizer::TokenizerError) -> Self {
        Error::Sql(e.to_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Checkpoint(format!("cannot decode JSON: {e}"))
    }
}

impl From<Error> for DataFusionError {
    fn from(e: Error) -> Self {
        DataFusionError::External(Box::new(e))
    }
}
