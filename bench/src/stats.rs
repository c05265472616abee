//! Results of a run: every sample by (metric, threads, contestant, repetition), and their summaries.
//!
//! Ratios are taken within a repetition (a peer's value against spanalloc's from the same repetition,
//! 2 threads against 1 thread of the same repetition) and only then summarized: machine drift between
//! repetitions cancels out of them.
//!
//! Invariants: at most one value per (metric, threads, contestant, repetition); metrics keep the order in
//! which they were first recorded (the suite's order), contestants the order of [`Id::ALL`].

use std::collections::BTreeMap;

use crate::contestants::Id;
use crate::workloads::{unit_of, Unit};

/// Median, quartiles and extremes of some values.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub q1: f64,
    pub q3: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(values: &[f64]) -> Option<Summary> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Summary {
            n: v.len(),
            median: quantile(&v, 0.5),
            q1: quantile(&v, 0.25),
            q3: quantile(&v, 0.75),
            min: v[0],
            max: v[v.len() - 1],
        })
    }
}

/// Linear interpolation between the closest ranks of sorted `v`.
fn quantile(v: &[f64], q: f64) -> f64 {
    let pos = (v.len() - 1) as f64 * q;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

type Key = (usize, usize, Id); // (metric index, threads, contestant)

/// All samples of a run.
pub struct Results {
    pub reps: usize,
    metrics: Vec<String>,
    values: BTreeMap<Key, Vec<Option<f64>>>,
}

/// One line of the report.
#[derive(Clone, Debug)]
pub struct Row {
    pub metric: String,
    pub unit: Unit,
    pub threads: usize,
    pub id: Id,
    pub value: Summary,
    /// spanalloc's advantage: peer cost / spanalloc cost (> 1: spanalloc is better), per repetition.
    pub advantage: Option<Summary>,
}

impl Results {
    pub fn new(reps: usize) -> Self {
        Results {
            reps,
            metrics: Vec::new(),
            values: BTreeMap::new(),
        }
    }

    pub fn record(&mut self, rep: usize, metric: &str, threads: usize, id: Id, value: f64) {
        let m = match self.metrics.iter().position(|x| x == metric) {
            Some(m) => m,
            None => {
                self.metrics.push(metric.to_owned());
                self.metrics.len() - 1
            }
        };
        let slot = self
            .values
            .entry((m, threads, id))
            .or_insert_with(|| vec![None; self.reps]);
        assert!(
            slot[rep].is_none(),
            "bench: {metric} at {threads} threads for {} recorded twice in repetition {rep}",
            id.name()
        );
        slot[rep] = Some(value);
    }

    fn index(&self, metric: &str) -> Option<usize> {
        self.metrics.iter().position(|x| x == metric)
    }

    /// Per-repetition values (None where a repetition has none).
    pub fn values(&self, metric: &str, threads: usize, id: Id) -> Option<&[Option<f64>]> {
        let m = self.index(metric)?;
        self.values.get(&(m, threads, id)).map(Vec::as_slice)
    }

    /// Summary of `f(a[rep], b[rep])` over the repetitions where both exist.
    pub fn paired(
        &self,
        a: (&str, usize, Id),
        b: (&str, usize, Id),
        f: impl Fn(f64, f64) -> f64,
    ) -> Option<Summary> {
        let (va, vb) = (self.values(a.0, a.1, a.2)?, self.values(b.0, b.1, b.2)?);
        let r: Vec<f64> = va
            .iter()
            .zip(vb)
            .filter_map(|(x, y)| Some(f((*x)?, (*y)?)))
            .collect();
        Summary::of(&r)
    }

    /// Every (metric, threads, contestant) with its summaries, in report order.
    pub fn rows(&self) -> Vec<Row> {
        self.values
            .iter()
            .filter_map(|(&(m, threads, id), vals)| {
                let metric = &self.metrics[m];
                let unit = unit_of(metric);
                let value = Summary::of(&vals.iter().flatten().copied().collect::<Vec<_>>())?;
                let advantage = self.paired(
                    (metric, threads, Id::Spanalloc),
                    (metric, threads, id),
                    |s, p| {
                        if unit.higher_is_better() {
                            s / p
                        } else {
                            p / s
                        }
                    },
                );
                Some(Row {
                    metric: metric.clone(),
                    unit,
                    threads,
                    id,
                    value,
                    advantage,
                })
            })
            .collect()
    }

    pub fn metrics(&self) -> &[String] {
        &self.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_quantiles_interpolate() {
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0, f64::NAN]).unwrap();
        assert_eq!((s.n, s.min, s.max), (4, 1.0, 4.0));
        assert!((s.median - 2.5).abs() < 1e-12, "median {}", s.median);
        assert!((s.q1 - 1.75).abs() < 1e-12, "q1 {}", s.q1);
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn advantage_is_taken_per_repetition_and_oriented() {
        let mut r = Results::new(2);
        // ns: lower is better. spanalloc 10 then 20; talc 20 then 60 -> advantage 2 then 3.
        r.record(0, "pair_16", 1, Id::Spanalloc, 10.0);
        r.record(1, "pair_16", 1, Id::Spanalloc, 20.0);
        r.record(0, "pair_16", 1, Id::Talc, 20.0);
        r.record(1, "pair_16", 1, Id::Talc, 60.0);
        // Mops: higher is better. spanalloc 30, talc 10 -> 3.
        r.record(0, "larson", 2, Id::Spanalloc, 30.0);
        r.record(0, "larson", 2, Id::Talc, 10.0);
        let rows = r.rows();
        let talc_pair = rows
            .iter()
            .find(|x| x.metric == "pair_16" && x.id == Id::Talc)
            .unwrap();
        let adv = talc_pair.advantage.unwrap();
        assert_eq!((adv.min, adv.max, adv.median), (2.0, 3.0, 2.5));
        let talc_larson = rows
            .iter()
            .find(|x| x.metric == "larson" && x.id == Id::Talc)
            .unwrap();
        assert_eq!(talc_larson.advantage.unwrap().median, 3.0);
        let own = rows
            .iter()
            .find(|x| x.metric == "larson" && x.id == Id::Spanalloc)
            .unwrap();
        assert_eq!(own.advantage.unwrap().median, 1.0);
    }
}
