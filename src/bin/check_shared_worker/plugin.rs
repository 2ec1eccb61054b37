//! The Monitoring Plugins side of the check: states, the verdict on a status, performance data,
//! and the output's layout.

use std::{fmt, str::FromStr};

use exsyst_worker::worker::{Counter, Threshold, WorkerStatus};

/// A plugin's state, ordered by priority: a check reports the highest of its findings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum State {
    Ok,
    Warning,
    Critical,
    Unknown,
}

impl State {
    /// The exit code: 0, 1, 2 or 3.
    pub(crate) fn code(self) -> i32 {
        self as i32
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Ok => "OK",
            State::Warning => "WARNING",
            State::Critical => "CRITICAL",
            State::Unknown => "UNKNOWN",
        })
    }
}

/// A state by name (any case) or by code, as `-t 10:UNKNOWN` gives it.
impl FromStr for State {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_uppercase().as_str() {
            "OK" | "0" => Ok(State::Ok),
            "WARNING" | "1" => Ok(State::Warning),
            "CRITICAL" | "2" => Ok(State::Critical),
            "UNKNOWN" | "3" => Ok(State::Unknown),
            _ => Err(format!(
                "unknown state {text:?} (expected OK, WARNING, CRITICAL or UNKNOWN)"
            )),
        }
    }
}

/// A counter named with `-m`, and the ranges given for it with `-w` and `-c`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Asked {
    pub name: String,
    pub warning: Option<Threshold>,
    pub critical: Option<Threshold>,
}

/// What the plugin prints, and its state.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Report {
    pub state: State,
    pub lines: Vec<String>,
}

impl Report {
    /// A one-line report: a failure to check, or a bad argument.
    pub(crate) fn failure(state: State, message: &str) -> Report {
        Report {
            state,
            lines: vec![status_line(state, &clean_text(message))],
        }
    }
}

/// `SHARED-WORKER STATE - summary`, without the dash when there is nothing to say.
fn status_line(state: State, summary: &str) -> String {
    if summary.is_empty() {
        format!("SHARED-WORKER {state}")
    } else {
        format!("SHARED-WORKER {state} - {summary}")
    }
}

/// Text fit for the output: no `|` (it starts performance data), one line.
fn clean_text(text: &str) -> String {
    text.replace('|', "").replace(['\n', '\r'], " ")
}

/// The verdict on a worker's status.
///
/// Each counter of the reply is checked against the ranges given on the command line for it,
/// or else against the worker's own; the worst finding wins. A counter asked for that the reply
/// lacks, or that has no value, is UNKNOWN. Findings come first on the status line, worst
/// first, then the first line of the worker's text; the rest of its text follows on the next
/// lines, and the performance data of every counter, as the plugin guidelines lay them out.
pub(crate) fn assess(status: &WorkerStatus, asked: &[Asked]) -> Report {
    let mut findings: Vec<(State, String)> = Vec::new();
    for wanted in asked {
        if status.counter(&wanted.name).is_none() {
            findings.push((
                State::Unknown,
                format!("counter '{}' missing from the reply", wanted.name),
            ));
        }
    }
    let mut perfdata = Vec::new();
    for counter in status.counters() {
        let wanted = asked.iter().find(|a| a.name == counter.name());
        let warning = wanted.and_then(|a| a.warning).or(counter.warning());
        let critical = wanted.and_then(|a| a.critical).or(counter.critical());
        let value = counter.value().filter(|v| !v.is_nan());
        match value {
            None if wanted.is_some() => findings.push((
                State::Unknown,
                format!("counter '{}' has no value", counter.name()),
            )),
            None => {}
            Some(v) => {
                let shown = || format!("{}={v}{}", counter.name(), counter.unit().unwrap_or(""));
                if let Some(range) = critical.filter(|t| t.alerts(v)) {
                    findings.push((State::Critical, format!("{} (critical {range})", shown())));
                } else if let Some(range) = warning.filter(|t| t.alerts(v)) {
                    findings.push((State::Warning, format!("{} (warning {range})", shown())));
                }
            }
        }
        perfdata.push(perfdatum(counter, value, warning, critical));
    }
    // Worst first; a stable sort keeps the reply's order within a state.
    findings.sort_by_key(|f| std::cmp::Reverse(f.0));
    let state = findings.first().map_or(State::Ok, |f| f.0);

    let text = status.text().replace('|', "");
    let mut text_lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let findings: Vec<String> = findings.into_iter().map(|(_, f)| clean_text(&f)).collect();
    let summary: Vec<String> = [findings.join(", "), text_lines.next().unwrap_or("").into()]
        .into_iter()
        .filter(|part| !part.is_empty())
        .collect();
    let mut lines = vec![status_line(state, &summary.join("; "))];
    lines.extend(text_lines.map(str::to_owned));
    Report {
        state,
        lines: lay_out(lines, perfdata),
    }
}

/// Puts performance data where the plugin guidelines want it: all of it after the status
/// line when the text has one line; otherwise the first datum there, the second after the last
/// line of text, and the others on lines of their own.
fn lay_out(mut lines: Vec<String>, perfdata: Vec<String>) -> Vec<String> {
    let mut perfdata = perfdata.into_iter();
    let Some(first) = perfdata.next() else {
        return lines;
    };
    if lines.len() == 1 {
        let rest: Vec<String> = std::iter::once(first).chain(perfdata).collect();
        lines[0] = format!("{} | {}", lines[0], rest.join(" "));
        return lines;
    }
    lines[0] = format!("{} | {first}", lines[0]);
    if let Some(second) = perfdata.next() {
        let last = lines.len() - 1;
        lines[last] = format!("{} | {second}", lines[last]);
        lines.extend(perfdata);
    }
    lines
}

/// `'label'=value[unit];warn;crit;min;max`, trailing semicolons trimmed.
///
/// Quotes and `=` cannot be in a label, `;` cannot be in a unit; `|` and whitespace (which
/// separate data) are in neither. A missing (or infinite) value is `U`, without a unit.
fn perfdatum(
    counter: &Counter,
    value: Option<f64>,
    warning: Option<Threshold>,
    critical: Option<Threshold>,
) -> String {
    let label: String = counter
        .name()
        .chars()
        .filter(|c| !matches!(c, '\'' | '=' | '|') && !c.is_control())
        .collect();
    let unit: String = counter
        .unit()
        .unwrap_or("")
        .chars()
        .filter(|c| !matches!(c, ';' | '|') && !c.is_whitespace() && !c.is_control())
        .collect();
    let number = |v: Option<f64>| v.filter(|v| v.is_finite()).map(|v| v.to_string());
    let value = match number(value) {
        Some(value) => value + &unit,
        // A unit after `U` would only confuse the graphers.
        None => "U".to_owned(),
    };
    let datum = format!(
        "'{label}'={value};{};{};{};{}",
        warning.map(|t| t.to_string()).unwrap_or_default(),
        critical.map(|t| t.to_string()).unwrap_or_default(),
        number(counter.min()).unwrap_or_default(),
        number(counter.max()).unwrap_or_default(),
    );
    datum.trim_end_matches(';').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(text: &str) -> Threshold {
        text.parse().unwrap()
    }

    fn asked(name: &str, warning: Option<&str>, critical: Option<&str>) -> Asked {
        Asked {
            name: name.to_owned(),
            warning: warning.map(range),
            critical: critical.map(range),
        }
    }

    #[test]
    fn states_order_by_priority_and_parse_by_name_or_code() {
        assert!(State::Unknown > State::Critical);
        assert!(State::Critical > State::Warning);
        assert!(State::Warning > State::Ok);
        assert_eq!("unknown".parse(), Ok(State::Unknown));
        assert_eq!("1".parse(), Ok(State::Warning));
        assert!("bad".parse::<State>().is_err());
        assert_eq!(State::Critical.code(), 2);
    }

    #[test]
    fn perfdata_strips_what_would_break_it() {
        let counter = Counter::new("it's=a|b", 1.5)
            .with_unit("m;s|")
            .with_min(0.0);
        assert_eq!(
            perfdatum(&counter, Some(1.5), None, None),
            "'itsab'=1.5ms;;;0"
        );
        let bare = Counter::undetermined("x");
        assert_eq!(perfdatum(&bare, None, None, None), "'x'=U");
        assert_eq!(perfdatum(&bare, None, Some(range("5")), None), "'x'=U;5");
        let infinite = Counter::new("y", f64::INFINITY).with_max(f64::NAN);
        assert_eq!(
            perfdatum(&infinite, Some(f64::INFINITY), None, None),
            "'y'=U"
        );
    }

    #[test]
    fn a_multi_line_text_is_laid_out_as_the_guidelines_say() {
        let status = WorkerStatus::new("three jobs\n  job a | 1\n\njob b\n")
            .with_counter(Counter::new("a", 1.0))
            .with_counter(Counter::new("b", 2.0))
            .with_counter(Counter::new("c", 3.0));
        assert_eq!(
            assess(&status, &[]).lines,
            [
                "SHARED-WORKER OK - three jobs | 'a'=1",
                "job a  1",
                "job b | 'b'=2",
                "'c'=3",
            ]
        );
        let one_line = WorkerStatus::new("idle")
            .with_counter(Counter::new("a", 1.0))
            .with_counter(Counter::new("b", 2.0));
        assert_eq!(
            assess(&one_line, &[]).lines,
            ["SHARED-WORKER OK - idle | 'a'=1 'b'=2"]
        );
        assert_eq!(
            assess(&WorkerStatus::default(), &[]).lines,
            ["SHARED-WORKER OK"]
        );
    }

    #[test]
    fn the_worst_finding_wins_and_comes_first() {
        let status = WorkerStatus::new("busy")
            .with_counter(Counter::new("w", 7.0).with_warning(range("~:6")))
            .with_counter(Counter::new("c", 9.0).with_unit("B"))
            .with_counter(Counter::undetermined("u"));
        let report = assess(
            &status,
            &[asked("c", None, Some("@5:10")), asked("u", None, None)],
        );
        assert_eq!(report.state, State::Unknown);
        assert_eq!(
            report.lines,
            [
                "SHARED-WORKER UNKNOWN - counter 'u' has no value, c=9B (critical @5:10), \
                 w=7 (warning ~:6); busy | 'w'=7;~:6 'c'=9B;;@5:10 'u'=U"
            ]
        );
    }

    #[test]
    fn ranges_on_the_command_line_replace_the_workers_own() {
        let status = WorkerStatus::new("").with_counter(
            Counter::new("n", 5.0)
                .with_warning(range("3"))
                .with_critical(range("4")),
        );
        let report = assess(&status, &[asked("n", Some("10"), None)]);
        assert_eq!(report.state, State::Critical);
        assert_eq!(
            report.lines,
            ["SHARED-WORKER CRITICAL - n=5 (critical 4) | 'n'=5;10;4"]
        );
        let calm = assess(&status, &[asked("n", Some("10"), Some("20"))]);
        assert_eq!(calm.lines, ["SHARED-WORKER OK | 'n'=5;10;20"]);
    }

    #[test]
    fn a_missing_counter_is_unknown() {
        let report = assess(&WorkerStatus::new("idle"), &[asked("gone", None, None)]);
        assert_eq!(report.state, State::Unknown);
        assert_eq!(
            report.lines,
            ["SHARED-WORKER UNKNOWN - counter 'gone' missing from the reply; idle"]
        );
    }

    #[test]
    fn failures_are_one_line_without_pipes() {
        assert_eq!(
            Report::failure(State::Critical, "a | b\nc").lines,
            ["SHARED-WORKER CRITICAL - a  b c"]
        );
    }
}
