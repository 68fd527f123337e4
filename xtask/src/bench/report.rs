//! The side-by-side results as a markdown table and as JSON.

use std::fmt::Write as _;

use serde_json::json;

use super::contenders::Contender;
use super::tunnels::Samples;

/// One row of the table.
pub(crate) struct Metric {
    pub(crate) id: &'static str,
    label: String,
    contenders: &'static [Contender],
    higher_is_better: bool,
    /// A loss percentage: shown, not compared.
    is_loss: bool,
    /// A figure some machines cannot take (system call counts need perf): a missing cell
    /// does not fail the run.
    optional: bool,
    target: Option<Target>,
}

/// What streamproxy should reach against the Go peer (the targets).
#[derive(Clone, Copy)]
pub(crate) enum Target {
    /// streamproxy / Go at least this.
    Ratio(f64),
    /// streamproxy / Go at least the first, and streamproxy / the other contender (haproxy with
    /// mutual TLS, the plain UDP relay) at least the last.
    RatioAnd(f64, Contender, f64),
    /// streamproxy's figure is zero (datagrams lost, sessions refused).
    Zero,
    /// streamproxy / Go at most this (lower is better).
    RatioAtMost(f64),
    /// streamproxy at most Go (lower is better).
    NoWorse,
}

impl Metric {
    pub(crate) fn new(
        id: &'static str,
        label: impl Into<String>,
        contenders: &'static [Contender],
    ) -> Metric {
        Metric {
            id,
            label: label.into(),
            contenders,
            higher_is_better: true,
            is_loss: false,
            optional: false,
            target: None,
        }
    }

    pub(crate) fn lower(mut self) -> Metric {
        self.higher_is_better = false;
        self
    }

    pub(crate) fn loss(mut self) -> Metric {
        self.is_loss = true;
        self.higher_is_better = false;
        self
    }

    pub(crate) fn optional(mut self) -> Metric {
        self.optional = true;
        self
    }

    pub(crate) fn target(mut self, target: Target) -> Metric {
        self.target = Some(target);
        self
    }

    fn median(&self, samples: &Samples, c: Contender) -> Option<f64> {
        median(samples.values.get(&(self.id, c))?)
    }

    /// streamproxy's median divided by `other`'s.
    fn ratio(&self, samples: &Samples, other: Contender) -> Option<f64> {
        if self.is_loss || !self.contenders.contains(&other) {
            return None;
        }
        let ours = self.median(samples, Contender::Streamproxy)?;
        let theirs = self.median(samples, other)?;
        (theirs > 0.0).then(|| ours / theirs)
    }

    fn target_text(&self) -> Option<String> {
        Some(match self.target? {
            Target::Ratio(x) => format!("≥ {x}× Go"),
            Target::RatioAnd(x, other, y) => format!("≥ {x}× Go, ≥ {y}× {}", other.title()),
            Target::Zero => "0".to_owned(),
            Target::NoWorse => "≤ Go".to_owned(),
            Target::RatioAtMost(x) => format!("≤ {x:.2}× Go"),
        })
    }

    fn target_met(&self, samples: &Samples) -> Option<bool> {
        let go = || self.ratio(samples, Contender::Go);
        Some(match self.target? {
            Target::Zero => self.median(samples, Contender::Streamproxy)? == 0.0,
            Target::Ratio(x) => go()? >= x,
            Target::RatioAnd(x, other, y) => go()? >= x && self.ratio(samples, other)? >= y,
            Target::RatioAtMost(x) => go()? <= x,
            Target::NoWorse => go()? <= 1.0,
        })
    }
}

fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// A figure with as many digits as it deserves.
pub(crate) fn number(v: f64) -> String {
    if !v.is_finite() {
        return "—".into();
    }
    let a = v.abs();
    if a >= 1000.0 {
        // Thousands separated by a thin space.
        let digits = format!("{:.0}", a);
        let mut out = String::new();
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push('\u{2009}');
            }
            out.push(ch);
        }
        if v < 0.0 { format!("-{out}") } else { out }
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// What the run was.
pub(crate) struct Context {
    pub(crate) quick: bool,
    pub(crate) runs: usize,
    pub(crate) machine: String,
    pub(crate) load_before: String,
    pub(crate) load_after: String,
    pub(crate) seconds: f64,
    /// Only some scenarios ran (`--only`): rows of the others are left out.
    pub(crate) partial: bool,
}

const RATIO_TO: [Contender; 6] = [
    Contender::Go,
    Contender::Stunnel,
    Contender::HaproxyTls,
    Contender::HaproxySplice,
    Contender::UdpRelay,
    Contender::Loopback,
];

/// The markdown table.
pub(crate) fn table(metrics: &[Metric], samples: &Samples, ctx: &Context) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{} run{}: medians of {} run{} per cell; machine: {}; load average {} before, {} after; {:.0} s.\n",
        if ctx.quick { "Quick (smoke)" } else { "Full" },
        if ctx.quick {
            ", figures not meaningful"
        } else {
            ""
        },
        ctx.runs,
        if ctx.runs == 1 { "" } else { "s" },
        ctx.machine,
        ctx.load_before,
        ctx.load_after,
        ctx.seconds
    );
    out.push_str("| scenario |");
    for c in Contender::ALL {
        let _ = write!(out, " {} |", c.title());
    }
    for c in RATIO_TO {
        let _ = write!(out, " ÷ {} |", c.title());
    }
    out.push_str(" target |\n|---|");
    for _ in 0..Contender::ALL.len() + RATIO_TO.len() {
        out.push_str("---:|");
    }
    out.push_str("---|\n");
    for m in metrics {
        let ran = m.contenders.iter().any(|&c| m.median(samples, c).is_some());
        if ctx.partial && !ran {
            continue;
        }
        let _ = write!(out, "| {} |", m.label);
        for c in Contender::ALL {
            let cell = if m.contenders.contains(&c) {
                m.median(samples, c).map_or("**failed**".into(), number)
            } else {
                "n/a".into()
            };
            let _ = write!(out, " {cell} |");
        }
        for c in RATIO_TO {
            let cell = m
                .ratio(samples, c)
                .map_or("".into(), |r| format!("{r:.2}×"));
            let _ = write!(out, " {cell} |");
        }
        let target = match (m.target_text(), m.target_met(samples)) {
            (Some(t), Some(true)) => format!("{t}: met"),
            (Some(t), Some(false)) => format!("{t}: **missed**"),
            (Some(t), None) => t,
            (None, _) => String::new(),
        };
        let _ = writeln!(out, " {target} |");
    }
    out.push_str(
        "\nRatios are streamproxy's median divided by the other's: above 1 is better for rates, \
         below 1 is better for times and memory.\n",
    );
    out
}

/// Cells that should have a figure and have none.
pub(crate) fn missing_cells(metrics: &[Metric], samples: &Samples) -> Vec<String> {
    let mut missing = Vec::new();
    for m in metrics.iter().filter(|m| !m.optional) {
        for &c in m.contenders {
            match m.median(samples, c) {
                Some(v) if v >= 0.0 => {}
                _ => missing.push(format!("{} / {}", m.label, c.title())),
            }
        }
    }
    missing
}

/// The results as JSON: every run's figure, the medians, the ratios and the targets.
/// Non-finite numbers become `null`.
pub(crate) fn json(metrics: &[Metric], samples: &Samples, ctx: &Context) -> String {
    let num = |x: f64| serde_json::Value::from(x);
    let mut rows = Vec::new();
    for m in metrics {
        let mut figures = serde_json::Map::new();
        for &c in m.contenders {
            let runs: Vec<serde_json::Value> = samples
                .values
                .get(&(m.id, c))
                .map(|v| v.iter().map(|&x| num(x)).collect())
                .unwrap_or_default();
            figures.insert(
                c.key().to_owned(),
                json!({ "median": m.median(samples, c).map(num), "runs": runs }),
            );
        }
        let ratios: serde_json::Map<String, serde_json::Value> = RATIO_TO
            .iter()
            .filter_map(|&c| Some((c.key().to_owned(), num(m.ratio(samples, c)?))))
            .collect();
        rows.push(json!({
            "id": m.id,
            "label": m.label,
            "higher_is_better": m.higher_is_better,
            "figures": figures,
            "streamproxy_ratio_to": ratios,
            "target": m.target_text(),
            "target_met": m.target_met(samples),
        }));
    }
    let doc = json!({
        "quick": ctx.quick,
        "runs": ctx.runs,
        "machine": ctx.machine,
        "load_average_before": ctx.load_before,
        "load_average_after": ctx.load_after,
        "seconds": num(ctx.seconds),
        "rows": rows,
        "errors": samples.errors,
    });
    let mut out = serde_json::to_string(&doc).unwrap_or_else(|_| "{}".to_owned());
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_numbers_become_null() {
        assert_eq!(serde_json::Value::from(f64::NAN), serde_json::Value::Null);
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn numbers_keep_three_significant_digits() {
        assert_eq!(number(1234.4), "1\u{2009}234");
        assert_eq!(number(123.4), "123");
        assert_eq!(number(12.34), "12.3");
        assert_eq!(number(1.234), "1.23");
    }
}
