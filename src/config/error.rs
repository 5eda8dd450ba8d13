//! [`ConfigError`], what the operator sees of a bad config file, and
//! [`Problem`], what validation collects before it knows the line: a byte
//! offset into the file, turned into `line:column` once.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A configuration error, displayed as `path:line:column: message`, or
/// `path: message` when it belongs to no single place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub(super) path: PathBuf,
    pub(super) position: Option<(usize, usize)>,
    pub(super) message: String,
}

// Read by the config_parse fuzz target (src/fuzzing.rs) only.
#[cfg_attr(not(feature = "fuzzing"), allow(dead_code))]
impl ConfigError {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The 1-based line the error points at, if any.
    pub fn line(&self) -> Option<usize> {
        self.position.map(|(line, _)| line)
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => {
                write!(f, "{}:{line}:{column}: {}", self.path.display(), self.message)
            }
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// One thing wrong with the file, at a byte offset when it has a place.
#[derive(Debug)]
pub(super) struct Problem {
    pub(super) offset: Option<usize>,
    pub(super) message: String,
}

impl Problem {
    pub(super) fn at(span: Range<usize>, message: impl Into<String>) -> Problem {
        Problem {
            offset: Some(span.start),
            message: message.into(),
        }
    }

    pub(super) fn nowhere(message: impl Into<String>) -> Problem {
        Problem {
            offset: None,
            message: message.into(),
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

pub(super) fn line_of(text: &str, span: &Range<usize>) -> usize {
    line_and_column(text, span.start).0
}
