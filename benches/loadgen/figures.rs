//! Every figure of a run and the statistics taken over repetitions.

use std::collections::BTreeMap;

/// Every figure of the run, one value per repetition, in insertion order.
#[derive(Default)]
pub struct Figures {
    order: Vec<String>,
    pub values: BTreeMap<String, Vec<f64>>,
}

impl Figures {
    pub fn push(&mut self, key: impl Into<String>, value: f64) {
        let key = key.into();
        if !self.values.contains_key(&key) {
            self.order.push(key.clone());
        }
        self.values.entry(key).or_default().push(value);
    }

    pub fn get(&self, key: &str) -> &[f64] {
        self.values.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn median(&self, key: &str) -> f64 {
        mmm(self.get(key)).1
    }

    /// "min / median / max" with `digits` decimals.
    pub fn show(&self, key: &str, digits: usize) -> String {
        let values = self.get(key);
        if values.is_empty() {
            return "n/a".into();
        }
        let (min, med, max) = mmm(values);
        format!("{min:.digits$} / **{med:.digits$}** / {max:.digits$}")
    }
}

pub fn mmm(values: &[f64]) -> (f64, f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    (sorted[0], median, sorted[n - 1])
}

/// The `p` quantile (0..=1) of sorted values.
pub fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
