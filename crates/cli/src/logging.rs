//! Log output: text or JSON lines on stderr, the level from `-v`/`-q` or `RUST_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::{LogArgs, LogFormat};

/// Our own log targets: `-v` and `-q` move these; libraries stay at warnings.
const OUR_TARGETS: [&str; 6] = [
    "streamproxy",
    "streamproxy_proxy",
    "streamproxy_tls",
    "streamproxy_dtls",
    "streamproxy_connmgr",
    "streamproxy_proto",
];

/// The filter for `level` on our targets; other crates (rustls, hyper, ...) log warnings and
/// errors only, unless the level is quieter still.
fn directives(level: &str) -> String {
    let others = if level == "error" { "error" } else { "warn" };
    let mut spec = others.to_owned();
    for target in OUR_TARGETS {
        spec.push_str(&format!(",{target}={level}"));
    }
    spec
}

/// Installs the global subscriber. `RUST_LOG`, when set, decides the filter; otherwise
/// `-v`/`-q` move our own targets' level up or down from `default`.
pub(crate) fn init(args: &LogArgs, default: &str) {
    let levels = ["error", "warn", "info", "debug", "trace"];
    let base = levels.iter().position(|l| *l == default).unwrap_or(2) as i32;
    let index = (base + i32::from(args.verbose) - i32::from(args.quiet)).clamp(0, 4) as usize;
    let level = levels[index];
    let ours = || EnvFilter::new(directives(level));
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("streamproxy: warning: ignoring RUST_LOG={spec:?}: {e}");
            ours()
        }),
        _ => ours(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = match args.log_format {
        LogFormat::Text => {
            let ansi = std::io::stderr().is_terminal();
            builder
                .with_writer(move || OneLine { ansi })
                .with_ansi(ansi)
                .try_init()
        }
        LogFormat::Json => builder
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .try_init(),
    };
}

/// Stderr for the text format, where one event is one line whatever its fields hold: control
/// characters (but the event's final newline, and escape sequences of our own colours),
/// C1 controls and the Unicode line and paragraph separators are written as `\u{..}`, so
/// peer-controlled text (a requested host, an error quoting it) cannot start a forged line.
/// Fields a peer controls are also quoted by the code that logs them.
struct OneLine {
    ansi: bool,
}

impl std::io::Write for OneLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // The formatter hands over each event whole, as UTF-8.
        let line = escape_line(&String::from_utf8_lossy(buf), self.ansi);
        std::io::stderr().lock().write_all(line.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// `text` with every character that could end or corrupt a line escaped, but a final newline.
fn escape_line(text: &str, ansi: bool) -> String {
    let (body, end) = match text.strip_suffix('\n') {
        Some(body) => (body, "\n"),
        None => (text, ""),
    };
    let mut out = String::with_capacity(text.len() + end.len());
    for c in body.chars() {
        let breaks =
            (c.is_control() && !(ansi && c == '\u{1b}')) || matches!(c, '\u{2028}' | '\u{2029}');
        if breaks {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out.push_str(end);
    out
}

#[cfg(test)]
mod tests {
    use super::escape_line;

    #[test]
    fn escapes_what_could_break_a_line_and_nothing_else() {
        assert_eq!(escape_line("a=1 b=\"x y\"\n", false), "a=1 b=\"x y\"\n");
        assert_eq!(
            escape_line("h=a\u{2028}b\u{2029}c\u{85}d\re\nf\n", false),
            "h=a\\u{2028}b\\u{2029}c\\u{85}d\\u{d}e\\u{a}f\n"
        );
        assert_eq!(escape_line("\u{1b}[2m x\n", true), "\u{1b}[2m x\n");
        assert_eq!(escape_line("\u{1b}[2m x\n", false), "\\u{1b}[2m x\n");
        assert_eq!(escape_line("über ✓", false), "über ✓");
    }
}
