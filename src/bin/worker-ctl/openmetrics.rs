//! A worker's counters in the OpenMetrics text format (what node_exporter's textfile collector
//! and Prometheus read).

use std::{collections::HashSet, fmt::Write};

use exsyst_worker::worker::{Counter, WorkerStatus};

/// The metric families of `status`'s counters, each sample labelled with the worker's address
/// and implementation, then `# EOF`.
///
/// - A family is named `prefix` + the counter's name with every character outside
///   `[A-Za-z0-9_]` made `_` (and `_` put first if it would start with a digit); a name taken
///   already (a family's, or a counter's sample name) gets `_2`, `_3`, ...
/// - Unit `c` (the Monitoring Plugins' continuous counter) makes an OpenMetrics counter, its
///   sample suffixed `_total`; any other counter is a gauge.
/// - Units become base units where the conversion is exact (`s`, `ms` and `us` become
///   `seconds`, `B` becomes `bytes`, `%` becomes `percent`); other units are kept, sanitised
///   like names. A family with a unit ends with `_unit`, as OpenMetrics requires.
/// - A counter without a value gets its family's metadata and no sample.
pub(crate) fn render(
    status: &WorkerStatus,
    address: &str,
    implementation: &str,
    prefix: &str,
) -> String {
    let labels = format!(
        "{{address=\"{}\",implementation=\"{}\"}}",
        escape(address),
        escape(implementation)
    );
    let mut taken = HashSet::new();
    let mut out = String::new();
    for counter in status.counters() {
        family(&mut out, counter, prefix, &labels, &mut taken);
    }
    out.push_str("# EOF\n");
    out
}

fn family(
    out: &mut String,
    counter: &Counter,
    prefix: &str,
    labels: &str,
    taken: &mut HashSet<String>,
) {
    let (unit, scale) = match counter.unit() {
        None | Some("") | Some("c") => (None, 1.0),
        Some("s") => (Some("seconds".to_owned()), 1.0),
        Some("ms") => (Some("seconds".to_owned()), 1e-3),
        Some("us") => (Some("seconds".to_owned()), 1e-6),
        Some("B") => (Some("bytes".to_owned()), 1.0),
        Some("%") => (Some("percent".to_owned()), 1.0),
        Some(other) => (Some(sanitise(other)), 1.0),
    };
    let value = counter.value().map(|v| v * scale);
    let is_counter = counter.unit() == Some("c") && value.is_none_or(|v| v >= 0.0);

    let mut stem = sanitise(&format!("{prefix}{}", counter.name()));
    if is_counter {
        if let Some(bare) = stem.strip_suffix("_total").filter(|s| !s.is_empty()) {
            stem = bare.to_owned();
        }
    }
    let suffix = unit.as_ref().map(|u| format!("_{u}")).unwrap_or_default();
    if let Some(bare) = stem.strip_suffix(&suffix).filter(|s| !s.is_empty()) {
        stem = bare.to_owned();
    }
    // A counter's family also takes its sample's name, `_total`: no gauge may have it.
    let claims = |name: &str| {
        let mut claims = vec![name.to_owned()];
        if is_counter {
            claims.push(format!("{name}_total"));
        }
        claims
    };
    let mut name = format!("{stem}{suffix}");
    let mut n = 1;
    while claims(&name).iter().any(|claim| taken.contains(claim)) {
        n += 1;
        name = format!("{stem}_{n}{suffix}");
    }
    taken.extend(claims(&name));

    let kind = if is_counter { "counter" } else { "gauge" };
    let _ = writeln!(out, "# TYPE {name} {kind}");
    if let Some(unit) = &unit {
        let _ = writeln!(out, "# UNIT {name} {unit}");
    }
    let _ = writeln!(
        out,
        "# HELP {name} {}",
        escape(&format!(
            "counter \"{}\" of the shared worker",
            counter.name()
        ))
    );
    if let Some(value) = value {
        let sample = if is_counter {
            format!("{name}_total")
        } else {
            name
        };
        let _ = writeln!(out, "{sample}{labels} {}", number(value));
    }
}

/// Every character outside the metric-name grammar's `[A-Za-z0-9_]` becomes `_` (colons are
/// for recording rules), and a leading digit gets a `_` before it.
fn sanitise(name: &str) -> String {
    let mut clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if clean.is_empty() || clean.starts_with(|c: char| c.is_ascii_digit()) {
        clean.insert(0, '_');
    }
    clean
}

/// Backslash, double quote and line feed escaped, as label values and help texts want them.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_grammar_and_end_with_their_unit() {
        let status = WorkerStatus::new("")
            .with_counter(Counter::new("9 lives", 1.0))
            .with_counter(Counter::new("latency", 250.0).with_unit("ms"))
            .with_counter(Counter::new("requests_total", 7.0).with_unit("c"))
            .with_counter(Counter::new("size_bytes", 3.0).with_unit("B"))
            .with_counter(Counter::new("9-lives", 2.0))
            .with_counter(Counter::undetermined("later").with_unit("s"));
        assert_eq!(
            render(&status, "unix:///w\"\\.sock", "im\npl", ""),
            "# TYPE _9_lives gauge\n\
             # HELP _9_lives counter \\\"9 lives\\\" of the shared worker\n\
             _9_lives{address=\"unix:///w\\\"\\\\.sock\",implementation=\"im\\npl\"} 1\n\
             # TYPE latency_seconds gauge\n\
             # UNIT latency_seconds seconds\n\
             # HELP latency_seconds counter \\\"latency\\\" of the shared worker\n\
             latency_seconds{address=\"unix:///w\\\"\\\\.sock\",implementation=\"im\\npl\"} 0.25\n\
             # TYPE requests counter\n\
             # HELP requests counter \\\"requests_total\\\" of the shared worker\n\
             requests_total{address=\"unix:///w\\\"\\\\.sock\",implementation=\"im\\npl\"} 7\n\
             # TYPE size_bytes gauge\n\
             # UNIT size_bytes bytes\n\
             # HELP size_bytes counter \\\"size_bytes\\\" of the shared worker\n\
             size_bytes{address=\"unix:///w\\\"\\\\.sock\",implementation=\"im\\npl\"} 3\n\
             # TYPE _9_lives_2 gauge\n\
             # HELP _9_lives_2 counter \\\"9-lives\\\" of the shared worker\n\
             _9_lives_2{address=\"unix:///w\\\"\\\\.sock\",implementation=\"im\\npl\"} 2\n\
             # TYPE later_seconds gauge\n\
             # UNIT later_seconds seconds\n\
             # HELP later_seconds counter \\\"later\\\" of the shared worker\n\
             # EOF\n"
        );
    }

    #[test]
    fn a_gauge_never_takes_a_counters_sample_name() {
        let status = WorkerStatus::new("")
            .with_counter(Counter::new("x", 1.0).with_unit("c"))
            .with_counter(Counter::new("x_total", 2.0))
            .with_counter(Counter::new("y_total", 3.0))
            .with_counter(Counter::new("y", 4.0).with_unit("c"))
            .with_counter(Counter::new("z", -1.0).with_unit("c"));
        let samples: Vec<String> = render(&status, "a", "i", "")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.replace("{address=\"a\",implementation=\"i\"}", ""))
            .collect();
        assert_eq!(
            samples,
            [
                "x_total 1",
                "x_total_2 2",
                "y_total 3",
                "y_2_total 4",
                "z -1"
            ]
        );
    }

    #[test]
    fn special_values_are_spelled_as_openmetrics_wants() {
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
        assert_eq!(number(-1.5), "-1.5");
    }
}
