//! What a SIGHUP reload changed, for its one log line: the effective configuration before and
//! after (as `server --check` prints it), compared line by line.
//!
//! The keys a running server takes over are listed in [`LIVE`]; a change to any other key
//! (the listen address, the certificate paths, limits sized at start) is reported as needing
//! a restart.

/// The keys a reload puts in force for new tunnels. The certificate, key and CA files are
/// read again on every reload; their paths are not.
const LIVE: &[&str] = &[
    "allow",
    "deny",
    "identity",
    "proxy_protocol",
    "header_timeout",
    "dial_timeout",
];

/// The lines that differ between two descriptions.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    applied: Vec<String>,
    restart: Vec<String>,
}

impl Changes {
    /// What the reload put in force: `+key value` and `-key value`, or `none`.
    pub(crate) fn applied(&self) -> String {
        list(&self.applied)
    }

    /// What changed in the file but takes a restart, or `none`.
    pub(crate) fn needs_restart(&self) -> String {
        list(&self.restart)
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join("; ")
    }
}

/// `key value` with the padding between them collapsed.
fn lines(description: &str) -> Vec<(String, String)> {
    description
        .lines()
        .filter_map(|line| {
            let (key, value) = line.trim().split_once(char::is_whitespace)?;
            Some((key.to_owned(), value.trim().to_owned()))
        })
        .collect()
}

/// The changes from `before` to `after`, removals first.
pub(crate) fn changes(before: &str, after: &str) -> Changes {
    let (old, new) = (lines(before), lines(after));
    let mut changes = Changes::default();
    let removed = old.iter().filter(|l| !new.contains(l)).map(|l| ('-', l));
    let added = new.iter().filter(|l| !old.contains(l)).map(|l| ('+', l));
    for (sign, (key, value)) in removed.chain(added) {
        let text = format!("{sign}{key} {value}");
        if LIVE.contains(&key.as_str()) {
            changes.applied.push(text);
        } else {
            changes.restart.push(text);
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_added_and_removed_lines_and_what_needs_a_restart() {
        let before = "configuration is valid\nlisten                 127.0.0.1:1\nallow                  10.0.0.0/8\nmax_tcp_tunnels        10\n";
        let after = "configuration is valid\nlisten                 127.0.0.1:1\nallow                  192.168.0.0/16\nidentity               ci: cn=a -> allow *\nmax_tcp_tunnels        20\n";
        let changes = changes(before, after);
        assert_eq!(
            changes.applied(),
            "-allow 10.0.0.0/8; +allow 192.168.0.0/16; +identity ci: cn=a -> allow *"
        );
        assert_eq!(
            changes.needs_restart(),
            "-max_tcp_tunnels 10; +max_tcp_tunnels 20"
        );
    }

    #[test]
    fn nothing_changed_says_none() {
        let text = "configuration is valid\nallow                  *\n";
        let changes = changes(text, text);
        assert_eq!(changes.applied(), "none");
        assert_eq!(changes.needs_restart(), "none");
    }
}
