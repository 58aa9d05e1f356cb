//! `results.json` (shared by every command that evaluates) and Markdown/CSV tables.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One evaluated cell group: a method on a modality subset (optionally per setting and seed).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Row {
    /// `mckd`, `baseline`, `lowerb_image`, ...
    pub method: String,
    /// Present modalities, by name, in modality order.
    pub subset: Vec<String>,
    /// Metric name → value (accuracy as a fraction; mean over seeds when `per_seed` is set).
    pub metrics: Map<String, Value>,
    /// A task setting such as `audio_10`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub setting: Option<String>,
    /// Per-seed values of each metric.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub per_seed: Option<Map<String, Value>>,
}

/// The `results.json` document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Results {
    /// Task name (`demo`, `avmnist`, `brats`).
    pub task: String,
    /// Rows.
    pub rows: Vec<Row>,
    /// Normalised importance weights of the MCKD model, by modality name.
    pub iwv: Map<String, Value>,
    /// Anything else a task reports (wall time, settings, t-tests).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Row {
    /// A row with one metric.
    pub fn new(method: &str, subset: Vec<String>, metric: &str, value: f64) -> Self {
        let mut metrics = Map::new();
        metrics.insert(metric.to_string(), json_f64(value));
        Self {
            method: method.to_string(),
            subset,
            metrics,
            setting: None,
            per_seed: None,
        }
    }
}

/// A JSON number, or `null` for NaN/∞ (JSON has no NaN).
pub fn json_f64(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

/// IWV as a name → value map in modality order.
pub fn iwv_map(names: &[String], values: &[f32]) -> Map<String, Value> {
    names
        .iter()
        .zip(values)
        .map(|(n, v)| (n.clone(), json_f64(f64::from(*v))))
        .collect()
}

/// A Markdown table from a header and rows of cells.
pub fn markdown_table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n", header.join(" | "));
    out.push_str(&format!(
        "|{}|\n",
        header.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    ));
    for r in rows {
        out.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    out
}

/// A CSV document from a header and rows (cells with commas or quotes are quoted).
pub fn csv_table(header: &[String], rows: &[Vec<String>]) -> String {
    let esc = |c: &String| {
        if c.contains([',', '"', '\n']) {
            format!("\"{}\"", c.replace('"', "\"\""))
        } else {
            c.clone()
        }
    };
    let mut out = header.iter().map(esc).collect::<Vec<_>>().join(",");
    out.push('\n');
    for r in rows {
        out.push_str(&r.iter().map(esc).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}

/// A subset as a compact label, e.g. `strong+weak`.
pub fn subset_label(names: &[String]) -> String {
    names.join("+")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_json_schema() {
        let r = Results {
            task: "demo".into(),
            rows: vec![Row::new(
                "mckd",
                vec!["strong".into(), "weak".into()],
                "accuracy",
                0.93,
            )],
            iwv: iwv_map(&["strong".into(), "weak".into()], &[0.7, 0.3]),
            extra: Map::new(),
        };
        let v: Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["task"], "demo");
        assert_eq!(v["rows"][0]["method"], "mckd");
        assert_eq!(v["rows"][0]["subset"][1], "weak");
        assert_eq!(v["rows"][0]["metrics"]["accuracy"], 0.93);
        assert!(v["rows"][0].get("setting").is_none());
        let keys: Vec<&String> = v["iwv"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["strong", "weak"], "IWV keys keep modality order");
        assert_eq!(json_f64(f64::NAN), Value::Null);
        let back: Results = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn tables() {
        let h = vec!["a".to_string(), "b".to_string()];
        let rows = vec![vec!["1".to_string(), "x,y".to_string()]];
        assert_eq!(
            markdown_table(&h, &rows),
            "| a | b |\n|---|---|\n| 1 | x,y |\n"
        );
        assert_eq!(csv_table(&h, &rows), "a,b\n1,\"x,y\"\n");
    }
}
