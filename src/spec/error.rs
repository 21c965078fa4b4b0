//! `SpecError`: a problem in a file the user wrote, with the file, line, column and field
//! it concerns, and a "did you mean" hint where one helps. Validation collects many of them.

use std::fmt;
use std::path::{Path, PathBuf};

/// A position in a user's file (1-based line and column).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
}

impl Location {
    /// A location naming only the file.
    pub fn file(file: &Path) -> Location {
        Location {
            file: file.to_path_buf(),
            line: None,
            column: None,
        }
    }

    /// A location from a YAML marker.
    pub fn at(file: &Path, mark: Option<&marked_yaml::Marker>) -> Location {
        Location {
            file: file.to_path_buf(),
            line: mark.map(|m| m.line()),
            column: mark.map(|m| m.column()),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
            if let Some(c) = self.column {
                write!(f, ":{c}")?;
            }
        }
        Ok(())
    }
}

/// One problem found in a pipeline, project or config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// Where it is.
    pub location: Location,
    /// The field path, like `tasks.load.retries`, when there is one.
    pub field: Option<String>,
    /// What is wrong, said so that the user can fix it.
    pub message: String,
}

impl SpecError {
    /// A new error.
    pub fn new(location: Location, field: Option<String>, message: impl Into<String>) -> Self {
        SpecError {
            location,
            field,
            message: message.into(),
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.location)?;
        if let Some(field) = &self.field {
            write!(f, "`{field}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for SpecError {}

/// Every problem found, in file order; `cauce validate` prints them all.
#[derive(Debug, Clone, Default)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

impl From<SpecError> for SpecErrors {
    fn from(e: SpecError) -> Self {
        SpecErrors(vec![e])
    }
}

/// The closest candidate to a misspelt name, if one is close enough to suggest.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| {
            let score =
                strsim::jaro_winkler(word, c).max(strsim::normalized_damerau_levenshtein(word, c));
            (score, c)
        })
        .filter(|(score, _)| *score > 0.66)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// " (did you mean `x`?)" or "".
pub fn suggestion<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    match did_you_mean(word, candidates) {
        Some(c) => format!(" (did you mean `{c}`?)"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            did_you_mean("retires", ["retries", "timeout"]),
            Some("retries")
        );
        assert_eq!(
            did_you_mean("depends", ["depends_on", "env"]),
            Some("depends_on")
        );
        assert_eq!(did_you_mean("zzz", ["retries", "timeout"]), None);
        assert_eq!(did_you_mean("dya", ["day", "n"]), Some("day"));
    }

    #[test]
    fn displays_file_line_column_and_field() {
        let e = SpecError::new(
            Location {
                file: "p.yaml".into(),
                line: Some(3),
                column: Some(5),
            },
            Some("tasks.a.retries".into()),
            "bad",
        );
        assert_eq!(e.to_string(), "p.yaml:3:5: `tasks.a.retries`: bad");
    }
}
