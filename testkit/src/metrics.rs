//! Reading ferry's Prometheus metrics: one scrape parsed into samples.
//!
//! Parses the Prometheus text exposition format (what `/metrics` serves):
//! `name{label="value",...} value [timestamp]`, with `#` comment lines.
//! Histograms appear as their `_bucket`, `_sum` and `_count` samples.

use std::collections::BTreeMap;

/// One line of the exposition: a metric name, its labels and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// True when every `(label, value)` in `wanted` is among this sample's labels.
    pub fn has_labels(&self, wanted: &[(&str, &str)]) -> bool {
        wanted
            .iter()
            .all(|(key, value)| self.labels.iter().any(|(k, v)| k == key && v == value))
    }

    /// `name{a="x",b="y"}`, labels in the order they were served; `name` alone without labels.
    pub fn key(&self) -> String {
        if self.labels.is_empty() {
            return self.name.clone();
        }
        let labels: Vec<String> = self.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        format!("{}{{{}}}", self.name, labels.join(","))
    }
}

/// One scrape of `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    /// `"name{labels}"` (see [`Sample::key`]) -> value.
    pub values: BTreeMap<String, f64>,
    /// The text as served, for failure messages.
    pub text: String,
}

impl Metrics {
    /// Parses Prometheus text; an error names the line that is not understood.
    pub fn parse(text: &str) -> Result<Metrics, String> {
        let mut metrics = Metrics {
            text: text.to_string(),
            ..Metrics::default()
        };
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let sample = parse_sample(line).map_err(|e| format!("metrics line {}: {e}: {line}", index + 1))?;
            metrics.values.insert(sample.key(), sample.value);
            metrics.samples.push(sample);
        }
        Ok(metrics)
    }

    /// The sum of the values of all samples called `name` that carry (at least)
    /// the given labels; `None` when no sample matches. With all of a sample's
    /// labels given this is that sample's value; with fewer, the total, e.g.
    /// `get("ferry_messages_dropped_total", &[("link", "edge1")])` adds up
    /// every reason and direction.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut matching = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.has_labels(labels))
            .peekable();
        matching.peek()?;
        Some(matching.map(|s| s.value).sum())
    }

    /// Like [`Metrics::get`], 0 when no sample matches (a counter not yet incremented).
    pub fn get_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// All samples called `name` that carry the given labels.
    pub fn matching(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name && s.has_labels(labels))
            .collect()
    }

    /// The served lines that mention `name`, for assertion messages.
    pub fn lines_for(&self, name: &str) -> String {
        self.text
            .lines()
            .filter(|line| !line.starts_with('#') && line.contains(name))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace()).ok_or("no value")?;
    let name = line[..name_end].to_string();
    if name.is_empty() {
        return Err("no metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let (parsed, after_labels) = parse_labels(after_brace)?;
        labels = parsed;
        rest = after_labels;
    }
    let value_text = rest.split_whitespace().next().ok_or("no value")?;
    let value = parse_value(value_text)?;
    Ok(Sample { name, labels, value })
}

type Labels = Vec<(String, String)>;

/// Parses `a="x",b="y"}` (the text after `{`), returning the labels and the text after `}`.
fn parse_labels(text: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without '='")?;
        let key = rest[..eq].trim().to_string();
        let after_eq = rest[eq + 1..].trim_start();
        let quoted = after_eq.strip_prefix('"').ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let close = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => return Err("unterminated escape".into()),
                },
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        labels.push((key, value));
        rest = quoted[close + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text.parse::<f64>().map_err(|e| format!("bad value {text:?}: {e}")),
    }
}
