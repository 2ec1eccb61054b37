//! What a worker reports when it is queried: [`WorkerStatus`], its [`Counter`]s and their
//! [`Threshold`]s.
//!
//! The model is the seed's, shaped for monitoring systems: a text for people, counters for
//! machines.
//! It crosses the wire to clients written in other languages, so the serialized field names are
//! part of the protocol and do not change:
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `text` | string | the human-readable status (may be empty) |
//! | `counters` | array of counters | in the order the worker gave them |
//!
//! and for each counter:
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `name` | string | the counter's name |
//! | `value` | float or nil | its value; nil when it cannot be determined (Nagios `U`) |
//! | `unit` | string or nil | its unit of measure (`B`, `s`, `%`, ...) |
//! | `min`, `max` | float or nil | the smallest and largest values it can take |
//! | `warning`, `critical` | string or nil | thresholds in the Monitoring Plugins range syntax |
//!
//! A reader accepts a missing key as nil (or as empty for `text` and `counters`) and ignores
//! keys it does not know.

use std::{error, fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a worker reports when it is queried (the seed's `WorkerStatus`): a human-readable text
/// and counters, ready for a monitoring system.
///
/// A string converts into a status, so a worker with nothing but a sentence to say returns
/// `"idle".into()`.
///
/// ```
/// use worker_core::{Counter, Threshold, WorkerStatus};
///
/// let status = WorkerStatus::new("3 jobs running")
///     .with_counter(
///         Counter::new("jobs", 3.0)
///             .with_max(8.0)
///             .with_warning(Threshold::above(6.0)?)
///             .with_critical("~:7".parse()?),
///     )
///     .with_counter(Counter::new("queue", 1.5e6).with_unit("B").with_min(0.0));
///
/// assert_eq!(status.counter("jobs").and_then(|c| c.value()), Some(3.0));
/// assert!(status.counter("jobs").unwrap().warning().unwrap().alerts(7.0));
/// assert_eq!(
///     status.to_string(),
///     "3 jobs running\njobs: 3 (max 8, warning ~:6, critical ~:7)\nqueue: 1500000 B (min 0)"
/// );
///
/// let simple: WorkerStatus = "idle".into();
/// assert_eq!(simple.text(), "idle");
/// assert!(simple.counters().is_empty());
/// # Ok::<(), worker_core::ThresholdError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    #[serde(default)]
    text: String,
    #[serde(default)]
    counters: Vec<Counter>,
}

impl WorkerStatus {
    /// A status with a text and no counters.
    pub fn new(text: impl Into<String>) -> Self {
        WorkerStatus {
            text: text.into(),
            counters: Vec::new(),
        }
    }

    /// Adds a counter after those already there.
    pub fn with_counter(mut self, counter: Counter) -> Self {
        self.counters.push(counter);
        self
    }

    /// Adds a counter after those already there, for a status built in a loop.
    pub fn push_counter(&mut self, counter: Counter) {
        self.counters.push(counter);
    }

    /// Adds counters after those already there, in their order: a pool's statistics, say
    /// (`worker_pool::PoolStats::to_counters`), in one call.
    ///
    /// ```
    /// use worker_core::{Counter, WorkerStatus};
    ///
    /// let status = WorkerStatus::new("busy")
    ///     .with_counters([Counter::new("a", 1.0), Counter::new("b", 2.0)]);
    /// assert_eq!(status.counters().len(), 2);
    /// ```
    pub fn with_counters(mut self, counters: impl IntoIterator<Item = Counter>) -> Self {
        self.counters.extend(counters);
        self
    }

    /// The human-readable text; empty when the worker gave only counters.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The counters, in the order the worker gave them.
    pub fn counters(&self) -> &[Counter] {
        &self.counters
    }

    /// The first counter named `name`.
    pub fn counter(&self, name: &str) -> Option<&Counter> {
        self.counters.iter().find(|c| c.name == name)
    }
}

impl From<String> for WorkerStatus {
    fn from(text: String) -> Self {
        WorkerStatus::new(text)
    }
}

impl From<&str> for WorkerStatus {
    fn from(text: &str) -> Self {
        WorkerStatus::new(text)
    }
}

/// The text, then one line per counter.
impl fmt::Display for WorkerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)?;
        let mut first = self.text.is_empty();
        for counter in &self.counters {
            if !std::mem::take(&mut first) {
                f.write_str("\n")?;
            }
            write!(f, "{counter}")?;
        }
        Ok(())
    }
}

/// One measured quantity of a [`WorkerStatus`]: a name and a value, with an optional unit,
/// range, and warning and critical thresholds (the fields of a Monitoring Plugins performance
/// datum).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Counter {
    name: String,
    #[serde(default)]
    value: Option<f64>,
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    min: Option<f64>,
    #[serde(default)]
    max: Option<f64>,
    #[serde(default)]
    warning: Option<Threshold>,
    #[serde(default)]
    critical: Option<Threshold>,
}

impl Counter {
    /// A counter with a value.
    pub fn new(name: impl Into<String>, value: f64) -> Self {
        Counter {
            value: Some(value),
            ..Counter::undetermined(name)
        }
    }

    /// A counter whose value cannot be determined now (a monitoring system shows `U`), such as
    /// the duration of the last job before the first one ran.
    pub fn undetermined(name: impl Into<String>) -> Self {
        Counter {
            name: name.into(),
            value: None,
            unit: None,
            min: None,
            max: None,
            warning: None,
            critical: None,
        }
    }

    /// Sets the unit of measure (`B`, `s`, `%`, `c` for a continuous counter, ...).
    pub fn with_unit(mut self, unit: impl Into<String>) -> Self {
        self.unit = Some(unit.into());
        self
    }

    /// Sets the smallest value the counter can take.
    pub fn with_min(mut self, min: f64) -> Self {
        self.min = Some(min);
        self
    }

    /// Sets the largest value the counter can take.
    pub fn with_max(mut self, max: f64) -> Self {
        self.max = Some(max);
        self
    }

    /// Sets the range of values that raises a warning.
    pub fn with_warning(mut self, threshold: Threshold) -> Self {
        self.warning = Some(threshold);
        self
    }

    /// Sets the range of values that is critical.
    pub fn with_critical(mut self, threshold: Threshold) -> Self {
        self.critical = Some(threshold);
        self
    }

    /// The counter's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value, or `None` when it cannot be determined.
    pub fn value(&self) -> Option<f64> {
        self.value
    }

    /// The unit of measure.
    pub fn unit(&self) -> Option<&str> {
        self.unit.as_deref()
    }

    /// The smallest value the counter can take.
    pub fn min(&self) -> Option<f64> {
        self.min
    }

    /// The largest value the counter can take.
    pub fn max(&self) -> Option<f64> {
        self.max
    }

    /// The warning threshold.
    pub fn warning(&self) -> Option<Threshold> {
        self.warning
    }

    /// The critical threshold.
    pub fn critical(&self) -> Option<Threshold> {
        self.critical
    }
}

/// `name: value unit (min .., max .., warning .., critical ..)`, for people.
impl fmt::Display for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.name)?;
        match self.value {
            Some(value) => write!(f, "{value}")?,
            None => f.write_str("undetermined")?,
        }
        if let Some(unit) = &self.unit {
            write!(f, " {unit}")?;
        }
        let details = [
            ("min", self.min.map(|v| v.to_string())),
            ("max", self.max.map(|v| v.to_string())),
            ("warning", self.warning.map(|t| t.to_string())),
            ("critical", self.critical.map(|t| t.to_string())),
        ];
        let mut open = false;
        for (label, detail) in details {
            let Some(detail) = detail else { continue };
            f.write_str(if std::mem::replace(&mut open, true) {
                ", "
            } else {
                " ("
            })?;
            write!(f, "{label} {detail}")?;
        }
        if open {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// A warning or critical threshold: a range in the Monitoring Plugins syntax, `[@]start:end`.
///
/// A value alerts when it is outside `start..=end`, or, with `@`, inside it.
/// `start` may be omitted (with its colon) when it is 0, and is `~` for no lower bound; `end`
/// may be omitted, after the colon, for no upper bound:
///
/// | range | alerts when the value is |
/// |---|---|
/// | `10` | below 0 or above 10 |
/// | `10:` | below 10 |
/// | `~:10` | above 10 |
/// | `10:20` | below 10 or above 20 |
/// | `@10:20` | from 10 to 20, both included |
///
/// On the wire a threshold is this text, so that every language reads it the same way.
///
/// ```
/// use worker_core::Threshold;
///
/// let busy: Threshold = "@10:20".parse()?;
/// assert!(busy.alerts(10.0) && busy.alerts(20.0) && !busy.alerts(21.0));
/// assert_eq!(Threshold::below(5.0)?.to_string(), "5:");
/// assert!("20:10".parse::<Threshold>().is_err());
/// # Ok::<(), worker_core::ThresholdError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Threshold {
    start: Option<f64>,
    end: Option<f64>,
    inside: bool,
}

impl Threshold {
    /// Alerts when the value is above `limit` (`~:limit`).
    pub fn above(limit: f64) -> Result<Self, ThresholdError> {
        Self::build(None, Some(limit), false)
    }

    /// Alerts when the value is below `limit` (`limit:`).
    pub fn below(limit: f64) -> Result<Self, ThresholdError> {
        Self::build(Some(limit), None, false)
    }

    /// Alerts when the value is below `start` or above `end` (`start:end`).
    pub fn outside(start: f64, end: f64) -> Result<Self, ThresholdError> {
        Self::build(Some(start), Some(end), false)
    }

    /// Alerts when the value is from `start` to `end`, both included (`@start:end`).
    pub fn inside(start: f64, end: f64) -> Result<Self, ThresholdError> {
        Self::build(Some(start), Some(end), true)
    }

    /// Refuses what no text form can carry: a NaN bound, or a start above the end.
    fn build(start: Option<f64>, end: Option<f64>, inside: bool) -> Result<Self, ThresholdError> {
        if start.is_some_and(f64::is_nan) || end.is_some_and(f64::is_nan) {
            return Err(ThresholdError::NotANumber);
        }
        if let (Some(s), Some(e)) = (start, end) {
            if s > e {
                return Err(ThresholdError::StartAboveEnd);
            }
        }
        Ok(Threshold { start, end, inside })
    }

    /// The lower bound of the range; `None` for none (`~`).
    pub fn start(&self) -> Option<f64> {
        self.start
    }

    /// The upper bound of the range; `None` for none.
    pub fn end(&self) -> Option<f64> {
        self.end
    }

    /// Whether values inside the range alert (`@`), rather than values outside it.
    pub fn is_inside(&self) -> bool {
        self.inside
    }

    /// Whether `value` raises this threshold's alert.
    pub fn alerts(&self, value: f64) -> bool {
        let within = self.start.is_none_or(|s| value >= s) && self.end.is_none_or(|e| value <= e);
        within == self.inside
    }
}

/// The shortest text in the range syntax: `10` for `0:10`, `5:` for no upper bound.
impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.inside {
            f.write_str("@")?;
        }
        match self.start {
            Some(s) if s == 0.0 && self.end.is_some() => {}
            Some(s) => write!(f, "{s}:")?,
            None => f.write_str("~:")?,
        }
        if let Some(e) = self.end {
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl FromStr for Threshold {
    type Err = ThresholdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (inside, range) = match text.strip_prefix('@') {
            Some(range) => (true, range),
            None => (false, text),
        };
        if range.is_empty() {
            return Err(ThresholdError::Empty);
        }
        let number = |s: &str| s.parse::<f64>().map_err(|_| ThresholdError::NotANumber);
        let (start, end) = match range.split_once(':') {
            None => (Some(0.0), Some(number(range)?)),
            Some((start, end)) => {
                let start = match start {
                    "~" => None,
                    // `:10` is `0:10`, as the plugins' own parser reads it.
                    "" => Some(0.0),
                    s => Some(number(s)?),
                };
                let end = if end.is_empty() {
                    None
                } else {
                    Some(number(end)?)
                };
                (start, end)
            }
        };
        Self::build(start, end, inside)
    }
}

impl Serialize for Threshold {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Threshold {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a [`Threshold`] could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ThresholdError {
    /// The text was empty (or only `@`).
    Empty,
    /// A bound is not a number, or is NaN.
    NotANumber,
    /// The start of the range is above its end.
    StartAboveEnd,
}

impl fmt::Display for ThresholdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ThresholdError::Empty => "empty threshold range",
            ThresholdError::NotANumber => "threshold bound is not a number",
            ThresholdError::StartAboveEnd => "threshold range starts above its end",
        })
    }
}

impl error::Error for ThresholdError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(text: &str) -> Threshold {
        text.parse().unwrap()
    }

    /// The Monitoring Plugins guidelines' table, boundaries included.
    #[test]
    fn ranges_alert_as_the_guidelines_say() {
        let cases: &[(&str, &[f64], &[f64])] = &[
            ("10", &[-0.5, 10.5, 11.0], &[0.0, 5.0, 10.0]),
            ("10:", &[9.99, -1.0], &[10.0, 1e9]),
            ("~:10", &[10.01, 1e9], &[10.0, -1e9]),
            ("10:20", &[9.0, 21.0], &[10.0, 15.0, 20.0]),
            ("@10:20", &[10.0, 15.0, 20.0], &[9.99, 20.01]),
            (":5", &[-1.0, 6.0], &[0.0, 5.0]),
        ];
        for (range, alerting, quiet) in cases {
            for v in *alerting {
                assert!(t(range).alerts(*v), "{range} should alert for {v}");
            }
            for v in *quiet {
                assert!(!t(range).alerts(*v), "{range} should not alert for {v}");
            }
        }
    }

    #[test]
    fn ranges_print_in_their_shortest_form_and_read_back() {
        for (given, printed) in [
            ("10", "10"),
            ("0:10", "10"),
            (":10", "10"),
            ("10:", "10:"),
            ("~:10", "~:10"),
            ("~:", "~:"),
            ("-5:2.5", "-5:2.5"),
            ("@10:20", "@10:20"),
            ("@0:3", "@3"),
        ] {
            assert_eq!(t(given).to_string(), printed, "{given}");
            assert_eq!(t(printed), t(given), "{printed}");
        }
    }

    #[test]
    fn bad_ranges_are_refused_with_the_reason() {
        assert_eq!("".parse::<Threshold>(), Err(ThresholdError::Empty));
        assert_eq!("@".parse::<Threshold>(), Err(ThresholdError::Empty));
        assert_eq!("x".parse::<Threshold>(), Err(ThresholdError::NotANumber));
        assert_eq!("1:y".parse::<Threshold>(), Err(ThresholdError::NotANumber));
        assert_eq!("NaN".parse::<Threshold>(), Err(ThresholdError::NotANumber));
        assert_eq!(
            "20:10".parse::<Threshold>(),
            Err(ThresholdError::StartAboveEnd)
        );
        assert_eq!(Threshold::above(f64::NAN), Err(ThresholdError::NotANumber));
        assert_eq!(
            Threshold::outside(3.0, 1.0),
            Err(ThresholdError::StartAboveEnd)
        );
    }

    #[test]
    fn constructors_match_the_syntax() {
        assert_eq!(Threshold::above(80.0).unwrap(), t("~:80"));
        assert_eq!(Threshold::below(5.0).unwrap(), t("5:"));
        assert_eq!(Threshold::outside(1.0, 2.0).unwrap(), t("1:2"));
        assert_eq!(Threshold::inside(1.0, 2.0).unwrap(), t("@1:2"));
        let range = t("@1:2");
        assert_eq!(
            (range.start(), range.end(), range.is_inside()),
            (Some(1.0), Some(2.0), true)
        );
    }

    fn sample() -> WorkerStatus {
        WorkerStatus::new("busy")
            .with_counter(
                Counter::new("jobs", 3.0)
                    .with_unit("c")
                    .with_min(0.0)
                    .with_max(8.0)
                    .with_warning(t("~:6"))
                    .with_critical(t("@7:8")),
            )
            .with_counter(Counter::undetermined("last run").with_unit("s"))
    }

    #[test]
    fn the_field_names_on_the_wire_are_stable() {
        let json = serde_json_like(&sample());
        assert_eq!(
            json,
            r#"{"text":"busy","counters":[{"name":"jobs","value":3.0,"unit":"c","min":0.0,"max":8.0,"warning":"~:6","critical":"@7:8"},{"name":"last run","value":null,"unit":"s","min":null,"max":null,"warning":null,"critical":null}]}"#
        );
    }

    /// JSON through the channel's codec, so this crate needs no JSON dependency of its own.
    fn serde_json_like(status: &WorkerStatus) -> String {
        String::from_utf8(worker_channel::Codec::Json.encode(status).unwrap()).unwrap()
    }

    #[test]
    fn a_status_round_trips_through_both_codecs() {
        for codec in [
            worker_channel::Codec::MessagePack,
            worker_channel::Codec::Json,
        ] {
            let bytes = codec.encode(&sample()).unwrap();
            assert_eq!(codec.decode::<WorkerStatus>(&bytes).unwrap(), sample());
        }
    }

    #[test]
    fn missing_keys_read_as_absent_and_unknown_keys_are_ignored() {
        let codec = worker_channel::Codec::Json;
        let status: WorkerStatus = codec
            .decode(br#"{"counters":[{"name":"n","value":1,"colour":"red"}],"extra":true}"#)
            .unwrap();
        assert_eq!(status.text(), "");
        assert_eq!(status.counters(), [Counter::new("n", 1.0)]);
        assert_eq!(codec.decode::<WorkerStatus>(b"{}").unwrap(), "".into());
        assert!(
            codec
                .decode::<WorkerStatus>(br#"{"counters":[{"name":"n","warning":"9:1"}]}"#)
                .is_err()
        );
    }

    #[test]
    fn strings_convert_into_statuses() {
        assert_eq!(WorkerStatus::from("idle"), WorkerStatus::new("idle"));
        assert_eq!(WorkerStatus::from(String::from("idle")).text(), "idle");
    }

    #[test]
    fn display_shows_the_text_then_one_line_per_counter() {
        assert_eq!(
            sample().to_string(),
            "busy\njobs: 3 c (min 0, max 8, warning ~:6, critical @7:8)\nlast run: undetermined s"
        );
        let only_counters = WorkerStatus::default().with_counter(Counter::new("n", 0.5));
        assert_eq!(only_counters.to_string(), "n: 0.5");
        assert_eq!(WorkerStatus::default().to_string(), "");
    }

    #[test]
    fn counters_are_found_by_name() {
        let status = sample();
        assert_eq!(status.counter("jobs").unwrap().max(), Some(8.0));
        assert_eq!(status.counter("last run").unwrap().value(), None);
        assert!(status.counter("nope").is_none());
        let mut built = WorkerStatus::new("x");
        built.push_counter(Counter::new("a", 1.0));
        assert_eq!(built.counters().len(), 1);
        let built = built.with_counters([Counter::new("b", 2.0), Counter::new("c", 3.0)]);
        let names: Vec<&str> = built.counters().iter().map(Counter::name).collect();
        assert_eq!(names, ["a", "b", "c"]);
    }
}
