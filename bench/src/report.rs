//! Figures: printed as a table and written as JSON to `target/bench/<scenario>.json`.

use std::path::Path;

use anyhow::Result;
use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

pub struct Report {
    scenario: String,
    params: Map<String, Value>,
    rows: Vec<(String, f64, &'static str)>,
    notes: Vec<String>,
}

impl Report {
    pub fn new(scenario: &str) -> Report {
        Report {
            scenario: scenario.to_owned(),
            params: Map::new(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn param(&mut self, name: &str, value: impl Into<Value>) {
        self.params.insert(name.to_owned(), value.into());
    }

    pub fn figure(&mut self, name: impl Into<String>, value: f64, unit: &'static str) {
        self.rows.push((name.into(), value, unit));
    }

    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// p50 / p99 / p99.9 / max of a histogram of microseconds, as ms.
    pub fn latency(&mut self, prefix: &str, h: &Histogram<u64>) {
        for (label, q) in [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)] {
            self.figure(
                format!("{prefix} {label}"),
                h.value_at_quantile(q) as f64 / 1000.0,
                "ms",
            );
        }
        self.figure(format!("{prefix} max"), h.max() as f64 / 1000.0, "ms");
    }

    pub fn finish(&self, out_dir: &Path) -> Result<()> {
        println!(
            "\n== {} ({})",
            self.scenario,
            Value::Object(self.params.clone())
        );
        let width = self.rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        for (name, value, unit) in &self.rows {
            let shown = if value.abs() >= 100.0 {
                format!("{value:.0}")
            } else {
                format!("{value:.3}")
            };
            println!("  {name:<width$}  {shown:>12} {unit}");
        }
        for note in &self.notes {
            println!("  {note}");
        }
        std::fs::create_dir_all(out_dir)?;
        let figures: Map<String, Value> = self
            .rows
            .iter()
            .map(|(n, v, u)| (n.clone(), json!({ "value": v, "unit": u })))
            .collect();
        let doc = json!({
            "scenario": self.scenario,
            "params": self.params,
            "figures": figures,
            "notes": self.notes,
        });
        let path = out_dir.join(format!("{}.json", self.scenario));
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?)?;
        println!("  (written to {})", path.display());
        Ok(())
    }
}

pub fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}
