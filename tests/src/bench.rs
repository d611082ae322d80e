//! The benchmark framework behind `cargo xtask bench <area>`: each measurement is taken next to
//! its baseline in the same run, printed as a table and written to `target/bench/<area>.json`
//! so results can be compared across commits. Benchmarks are never part of the test suite.

use std::{fmt, path::Path};

use serde::Serialize;

/// What a measurement must achieve, relative to its baseline or absolutely.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// value / baseline ≤ x (costs: ns per packet, latency).
    RatioAtMost(f64),
    /// value / baseline ≥ x (throughput).
    RatioAtLeast(f64),
    /// value ≤ x in the measurement's unit.
    ValueAtMost(f64),
    /// value ≥ x in the measurement's unit.
    ValueAtLeast(f64),
    /// Reported for context; no target.
    Informational,
}

impl Target {
    fn met(self, value: f64, ratio: Option<f64>) -> Option<bool> {
        match self {
            Target::RatioAtMost(x) => ratio.map(|r| r <= x),
            Target::RatioAtLeast(x) => ratio.map(|r| r >= x),
            Target::ValueAtMost(x) => Some(value <= x),
            Target::ValueAtLeast(x) => Some(value >= x),
            Target::Informational => None,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::RatioAtMost(x) => write!(f, "ratio <= {x}"),
            Target::RatioAtLeast(x) => write!(f, "ratio >= {x}"),
            Target::ValueAtMost(x) => write!(f, "value <= {x}"),
            Target::ValueAtLeast(x) => write!(f, "value >= {x}"),
            Target::Informational => f.write_str("-"),
        }
    }
}

/// A subject's measured value, beside the baseline it is compared with.
#[derive(Clone, Debug)]
pub struct Measurement {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub baseline: Option<(String, f64)>,
    pub target: Target,
}

impl Measurement {
    pub fn new(name: impl Into<String>, value: f64, unit: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value,
            unit: unit.into(),
            baseline: None,
            target: Target::Informational,
        }
    }

    /// Compares against `baseline_value` (same unit), measured in the same run.
    pub fn against(mut self, baseline_name: impl Into<String>, baseline_value: f64) -> Self {
        self.baseline = Some((baseline_name.into(), baseline_value));
        self
    }

    pub fn target(mut self, target: Target) -> Self {
        self.target = target;
        self
    }

    pub fn ratio(&self) -> Option<f64> {
        self.baseline
            .as_ref()
            .filter(|(_, b)| *b != 0.0)
            .map(|(_, b)| self.value / b)
    }

    pub fn met(&self) -> Option<bool> {
        self.target.met(self.value, self.ratio())
    }
}

/// One row of `target/bench/<area>.json`.
#[derive(Debug, Serialize, PartialEq)]
pub struct Record {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub baseline_name: Option<String>,
    pub baseline_value: Option<f64>,
    pub ratio: Option<f64>,
    pub target: Option<String>,
    pub met: Option<bool>,
}

impl From<&Measurement> for Record {
    fn from(m: &Measurement) -> Self {
        Self {
            name: m.name.clone(),
            value: m.value,
            unit: m.unit.clone(),
            baseline_name: m.baseline.as_ref().map(|(n, _)| n.clone()),
            baseline_value: m.baseline.as_ref().map(|(_, v)| *v),
            ratio: m.ratio(),
            target: (m.target != Target::Informational).then(|| m.target.to_string()),
            met: m.met(),
        }
    }
}

/// All measurements of one area.
#[derive(Debug, Default)]
pub struct Report {
    pub area: String,
    pub measurements: Vec<Measurement>,
}

impl Report {
    pub fn new(area: &str) -> Self {
        Self {
            area: area.to_owned(),
            measurements: Vec::new(),
        }
    }

    pub fn push(&mut self, m: Measurement) {
        self.measurements.push(m);
    }

    pub fn records(&self) -> Vec<Record> {
        self.measurements.iter().map(Record::from).collect()
    }

    /// A fixed-width table for the terminal.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<44} {:>14} {:<10} {:<32} {:>14} {:>8} {:<16} {}\n",
            "benchmark", "value", "unit", "baseline", "baseline", "ratio", "target", "met"
        );
        for m in &self.measurements {
            let (baseline_name, baseline_value) = match &m.baseline {
                Some((n, v)) => (n.as_str(), format!("{v:.2}")),
                None => ("-", "-".to_owned()),
            };
            let ratio = m.ratio().map_or("-".to_owned(), |r| format!("{r:.2}x"));
            let met = match m.met() {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            };
            out.push_str(&format!(
                "{:<44} {:>14.2} {:<10} {:<32} {:>14} {:>8} {:<16} {}\n",
                m.name,
                m.value,
                m.unit,
                baseline_name,
                baseline_value,
                ratio,
                m.target.to_string(),
                met
            ));
        }
        out
    }

    /// Writes `<dir>/<area>.json` and returns its path.
    pub fn write_json(&self, dir: &Path) -> std::io::Result<std::path::PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{}.json", self.area));
        let json = serde_json::to_string_pretty(&self.records()).map_err(std::io::Error::other)?;
        std::fs::write(&path, json + "\n")?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_and_target_are_computed_against_the_baseline() {
        let m = Measurement::new("arp reply", 36.0, "ns/pkt")
            .against("empty xdp", 24.0)
            .target(Target::RatioAtMost(2.0));
        assert_eq!(m.ratio(), Some(1.5));
        assert_eq!(m.met(), Some(true));
        let slow = Measurement::new("arp reply", 60.0, "ns/pkt")
            .against("empty xdp", 24.0)
            .target(Target::RatioAtMost(2.0));
        assert_eq!(slow.met(), Some(false));
        let fast = Measurement::new("replies", 500.0, "k/s")
            .against("kernel", 100.0)
            .target(Target::RatioAtLeast(5.0));
        assert_eq!(fast.met(), Some(true));
    }

    #[test]
    fn absolute_targets_ignore_the_baseline() {
        let m = Measurement::new("rss", 120.0, "MiB").target(Target::ValueAtMost(150.0));
        assert_eq!(m.ratio(), None);
        assert_eq!(m.met(), Some(true));
        let none = Measurement::new("p50", 1.0, "ms");
        assert_eq!(none.met(), None);
    }

    #[test]
    fn json_has_the_documented_fields() {
        let dir = tempfile::tempdir().unwrap();
        let mut report = Report::new("demo");
        report.push(
            Measurement::new("a", 3.0, "ns")
                .against("b", 2.0)
                .target(Target::RatioAtMost(1.3)),
        );
        report.push(Measurement::new("c", 1.0, "ms"));
        let path = report.write_json(dir.path()).unwrap();
        assert_eq!(path, dir.path().join("demo.json"));
        let value: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let rows = value.as_array().unwrap();
        assert_eq!(rows.len(), 2);
        let keys: Vec<&str> = rows[0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for key in [
            "name",
            "value",
            "unit",
            "baseline_name",
            "baseline_value",
            "ratio",
            "target",
            "met",
        ] {
            assert!(keys.contains(&key), "missing {key} in {keys:?}");
        }
        assert_eq!(rows[0]["ratio"], 1.5);
        assert_eq!(rows[0]["met"], false);
        assert_eq!(rows[0]["target"], "ratio <= 1.3");
        assert!(rows[1]["baseline_name"].is_null());
        assert!(rows[1]["met"].is_null());
    }

    #[test]
    fn table_lists_every_measurement() {
        let mut report = Report::new("demo");
        report.push(
            Measurement::new("first", 1.0, "ns")
                .against("base", 1.0)
                .target(Target::RatioAtMost(1.3)),
        );
        report.push(Measurement::new("second", 2.0, "ns"));
        let table = report.table();
        assert_eq!(table.lines().count(), 3);
        assert!(table.contains("first") && table.contains("1.00x") && table.contains("yes"));
    }
}
