//! Last lines of a log file, for error messages (a failed start shows what the app said).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// At most this many bytes are read from the end of the file.
const MAX_BYTES: u64 = 8 * 1024;

/// The last `lines` lines of `path`, joined with " | " so they fit in one message;
/// a note instead when the file cannot be read or is empty.
pub fn tail(path: &Path, lines: usize) -> String {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return format!("(no log at {}: {e})", path.display()),
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(MAX_BYTES);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return "(log unreadable)".to_string();
    }
    let mut buf = Vec::new();
    if file.read_to_end(&mut buf).is_err() {
        return "(log unreadable)".to_string();
    }
    tail_of(&String::from_utf8_lossy(&buf), lines)
}

/// The last `lines` non-empty lines of `text`.
pub fn tail_of(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    if all.is_empty() {
        return "(log is empty)".to_string();
    }
    all[all.len().saturating_sub(lines)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_last_lines() {
        assert_eq!(tail_of("a\nb\n\nc\nd\n", 2), "c | d");
        assert_eq!(tail_of("", 3), "(log is empty)");
        assert_eq!(tail_of("only", 3), "only");
    }

    #[test]
    fn missing_file_is_explained() {
        assert!(tail(Path::new("/nonexistent/x.log"), 3).starts_with("(no log at"));
    }
}
