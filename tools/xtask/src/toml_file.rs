//! Reading the project's TOML files (system manifests, scenarios) with errors that name the file,
//! the line and the column.

use std::ops::Range;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use serde::de::DeserializeOwned;

/// A TOML file's text and the name to use for it in messages.
pub struct Source {
    pub name: String,
    pub text: String,
}

impl Source {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", crate::layout::show(path)))?;
        Ok(Self {
            name: crate::layout::show(path),
            text,
        })
    }

    /// Deserializes the whole file; errors read `file:line:column: message`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        toml::from_str(&self.text).map_err(|err| self.error(err.span(), err.message().trim_end()))
    }

    /// An error about the bytes at `span` (or the whole file when there is none).
    pub fn error(
        &self,
        span: Option<Range<usize>>,
        message: impl std::fmt::Display,
    ) -> anyhow::Error {
        anyhow!("{}", self.message(span, message))
    }

    /// `file:line:column: message` (or `file: message` without a span).
    pub fn message(&self, span: Option<Range<usize>>, message: impl std::fmt::Display) -> String {
        match span {
            Some(span) => {
                let (line, column) = line_column(&self.text, span.start);
                format!("{}:{line}:{column}: {message}", self.name)
            }
            None => format!("{}: {message}", self.name),
        }
    }

    /// The line of byte `offset`.
    pub fn line(&self, offset: usize) -> usize {
        line_column(&self.text, offset).0
    }
}

/// One-based line and column of byte `offset` in `text` (columns count characters).
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_from_one() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, 8), (2, 3));
        assert_eq!(line_column(text, 999), (3, 1));
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Small {
        a: u32,
    }

    #[test]
    fn parse_errors_name_file_and_line() {
        let source = Source {
            name: "x.toml".into(),
            text: "a = 1\nb = 2\n".into(),
        };
        let err = source.parse::<Small>().unwrap_err().to_string();
        assert!(err.starts_with("x.toml:2:1: unknown field `b`"), "{err}");
    }
}
