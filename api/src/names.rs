//! Names users choose (sites) end up in hostnames, cgroup paths, directory names and
//! volume names, so they are held to DNS-label rules before anything else sees them.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NameError {
    #[error("site name {0:?} is invalid: use 1-40 characters a-z, 0-9 and '-', starting with a letter and not ending with '-' (e.g. \"hello\" or \"my-blog\")")]
    InvalidSite(String),
}

/// Checks a site name: a DNS label of lower-case letters, digits and '-', starting
/// with a letter, at most 40 characters (so `<site>-<n>` instance names stay short).
pub fn validate_site_name(name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name.as_bytes()[0].is_ascii_lowercase()
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(NameError::InvalidSite(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_names() {
        for good in ["a", "hello", "my-blog", "x1", &"a".repeat(40)] {
            assert_eq!(validate_site_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "Hello",
            "1abc",
            "-a",
            "a-",
            "a_b",
            "a.b",
            "a/b",
            "../x",
            "a b",
            "é",
            &"a".repeat(41),
        ] {
            assert!(
                validate_site_name(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }
}
