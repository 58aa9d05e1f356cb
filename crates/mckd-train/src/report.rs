//! `results.json` (shared by every command that evaluates) and Markdown/CSV tables.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A modality subset by the names of its present modalities, in modality order; displayed
/// (and used in file names) as `flair+t1c`. Serialised as the list of names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Subset(pub Vec<String>);

impl Subset {
    /// The subset of a presence mask over `names`.
    pub fn of<S: AsRef<str>>(names: &[S], mask: &[bool]) -> Self {
        Self(mckd_core::present_names(names, mask))
    }

    /// The presence mask over `names` (unknown names are ignored).
    pub fn mask<S: AsRef<str>>(&self, names: &[S]) -> Vec<bool> {
        names
            .iter()
            .map(|n| self.0.iter().any(|p| p == n.as_ref()))
            .collect()
    }

    /// Whether the subset contains `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|n| n == name)
    }
}

impl std::fmt::Display for Subset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("+"))
    }
}

/// Named metric values in insertion order, serialised as a JSON object (NaN as `null`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics(pub Vec<(String, f64)>);

impl Metrics {
    /// Sets `name` (replacing an earlier value).
    pub fn set(&mut self, name: &str, value: f64) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name.to_string(), value)),
        }
    }

    /// The value of `name` (NaN if absent or null).
    pub fn get(&self, name: &str) -> f64 {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map_or(f64::NAN, |(_, v)| *v)
    }

    /// The metric names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| n.as_str())
    }
}

impl Serialize for Metrics {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, &(!v.is_nan()).then_some(*v))?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Metrics {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = Map::<String, Value>::deserialize(d)?;
        m.into_iter()
            .map(|(k, v)| match v {
                Value::Null => Ok((k, f64::NAN)),
                Value::Number(n) => Ok((k, n.as_f64().unwrap_or(f64::NAN))),
                other => Err(serde::de::Error::custom(format!(
                    "metric `{k}` must be a number or null, got {other}"
                ))),
            })
            .collect::<Result<_, _>>()
            .map(Metrics)
    }
}

/// Per-seed values of a row's metrics (`seed` → the seeds, metric → one value per seed).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PerSeed {
    /// The seeds, in the order of the values.
    pub seed: Vec<u64>,
    /// Metric name → one value per seed (NaN as `null`).
    #[serde(flatten)]
    pub values: std::collections::BTreeMap<String, Vec<Option<f64>>>,
}

/// One evaluated cell group: a method on a modality subset (optionally per setting and seed).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Row {
    /// `mckd`, `baseline`, `lowerb_image`, ...
    pub method: String,
    /// Present modalities, by name, in modality order.
    pub subset: Subset,
    /// Metric name → value (accuracy as a fraction; mean over seeds when `per_seed` is set).
    pub metrics: Metrics,
    /// A task setting such as `audio_10`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub setting: Option<String>,
    /// Whether this subset is the setting's headline (the subset the row is judged on).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub headline: Option<bool>,
    /// Per-seed values of each metric.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub per_seed: Option<PerSeed>,
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
        let mut metrics = Metrics::default();
        metrics.set(metric, value);
        Self {
            method: method.to_string(),
            subset: Subset(subset),
            metrics,
            setting: None,
            headline: None,
            per_seed: None,
        }
    }
}

impl Results {
    /// Reads a `results.json`; errors name the file.
    pub fn load(path: &std::path::Path) -> Result<Self, crate::config::ConfigError> {
        crate::config::read_json(path)
    }

    /// The rows of `method`.
    pub fn rows_of<'a>(&'a self, method: &'a str) -> impl Iterator<Item = &'a Row> + 'a {
        self.rows.iter().filter(move |r| r.method == method)
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
        assert_eq!(r.rows[0].subset.to_string(), "strong+weak");
        assert_eq!(
            r.rows[0].subset.mask(&["weak", "mid", "strong"]),
            [true, false, true]
        );
        let keys: Vec<&String> = v["iwv"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["strong", "weak"], "IWV keys keep modality order");
        assert_eq!(json_f64(f64::NAN), Value::Null);
        let back: Results = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        // NaN metrics are null in JSON and NaN again when read back.
        let mut m = Metrics::default();
        m.set("dice_et", f64::NAN);
        m.set("dice_wt", 0.5);
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(text, r#"{"dice_et":null,"dice_wt":0.5}"#);
        let back: Metrics = serde_json::from_str(&text).unwrap();
        assert!(back.get("dice_et").is_nan() && back.get("dice_wt") == 0.5);
        assert!(serde_json::from_str::<Metrics>(r#"{"a":"x"}"#).is_err());
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
