//! Linear probes: a multinomial L2-regularised logistic regression on L2-normalised CLIP image
//! embeddings, trained from example pictures (`clipfilterd train-probe`) and used by labels that
//! say `probe = "probe.json"` (their score is the probe's probability).
//!
//! The objective is scikit-learn's `LogisticRegression` (lbfgs, L2, multinomial):
//! `C * sum_i -log softmax(W x_i + b)[y_i] + 0.5 * ||W||^2`, `b` not penalised. It is minimised
//! here by Newton's method with the exact Hessian (K*(D+1) unknowns: 132 for 4 classes of 32-wide
//! embeddings, about 2600 for 5 classes of ViT-B/32's 512) and a backtracking line search, to a
//! gradient below 1e-9 x the problem's size. `b` is defined up to a constant added to every class;
//! it is returned centred (sum 0), as scikit-learn's ends up. C is chosen by
//! stratified k-fold cross-validation over [`c_grid`] (lowest mean held-out log loss, the smallest
//! C on a tie), with scikit-learn's `StratifiedKFold(shuffle=False)` folds ([`stratified_folds`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The C values cross-validation tries: 10^-3 .. 10^3 in half decades, 6 significant digits
/// (the seed's sweep, the same as `tools/clip_tools/digits.py`).
pub fn c_grid() -> Vec<f64> {
    (0..13)
        .map(|i| {
            let c = 10f64.powf(-3.0 + 0.5 * f64::from(i));
            let digits = 5 - c.log10().floor() as i32;
            let m = 10f64.powi(digits);
            (c * m).round() / m
        })
        .collect()
}

/// Softmax of `W x + b` for one row.
fn softmax_row(coef: &[f64], intercept: &[f64], x: &[f64], out: &mut [f64]) {
    let d = x.len();
    for (k, o) in out.iter_mut().enumerate() {
        *o = intercept[k]
            + coef[k * d..(k + 1) * d]
                .iter()
                .zip(x)
                .map(|(w, v)| w * v)
                .sum::<f64>();
    }
    let max = out.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut total = 0.0;
    for o in out.iter_mut() {
        *o = (*o - max).exp();
        total += *o;
    }
    out.iter_mut().for_each(|o| *o /= total);
}

/// A fitted multinomial logistic regression: `coef` is K rows of D, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    pub classes: usize,
    pub dim: usize,
    pub coef: Vec<f64>,
    pub intercept: Vec<f64>,
    pub iterations: usize,
    /// Largest absolute gradient component at the solution.
    pub gradient_max_abs: f64,
}

impl Fit {
    /// Class probabilities of one (normalised) embedding.
    pub fn predict(&self, x: &[f64]) -> Vec<f64> {
        let mut p = vec![0.0; self.classes];
        softmax_row(&self.coef, &self.intercept, x, &mut p);
        p
    }
}

fn objective(x: &[Vec<f64>], y: &[usize], k: usize, c: f64, theta: &[f64]) -> f64 {
    let d = x[0].len();
    let (w, b) = theta.split_at(k * d);
    let mut p = vec![0.0; k];
    let mut loss = 0.0;
    for (xi, yi) in x.iter().zip(y) {
        softmax_row(w, b, xi, &mut p);
        loss -= p[*yi].max(f64::MIN_POSITIVE).ln();
    }
    c * loss + 0.5 * w.iter().map(|v| v * v).sum::<f64>()
}

/// Solves `a z = rhs` for a symmetric positive definite `a` (n x n, row-major) by Cholesky;
/// `None` when `a` is not positive definite.
fn cholesky_solve(mut a: Vec<f64>, n: usize, rhs: &[f64]) -> Option<Vec<f64>> {
    for j in 0..n {
        let mut s = a[j * n + j];
        for k in 0..j {
            s -= a[j * n + k] * a[j * n + k];
        }
        if s <= 0.0 || !s.is_finite() {
            return None;
        }
        let l = s.sqrt();
        a[j * n + j] = l;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / l;
        }
    }
    let mut z = rhs.to_vec();
    for i in 0..n {
        let mut s = z[i];
        for k in 0..i {
            s -= a[i * n + k] * z[k];
        }
        z[i] = s / a[i * n + i];
    }
    for i in (0..n).rev() {
        let mut s = z[i];
        for k in i + 1..n {
            s -= a[k * n + i] * z[k];
        }
        z[i] = s / a[i * n + i];
    }
    Some(z)
}

/// Fits the multinomial L2 logistic regression of `y` (class indices below `k`) on rows `x`.
pub fn fit(x: &[Vec<f64>], y: &[usize], k: usize, c: f64) -> Result<Fit> {
    let d = x.first().map_or(0, Vec::len);
    if x.is_empty() || d == 0 || x.len() != y.len() || x.iter().any(|r| r.len() != d) {
        return Err(Error::invalid(
            "probe training data",
            "no examples, or rows of different widths",
        ));
    }
    if k < 2 || y.iter().any(|c| *c >= k) {
        return Err(Error::invalid(
            "probe training data",
            "it needs at least two classes",
        ));
    }
    if !(c > 0.0 && c.is_finite()) {
        return Err(Error::invalid("C", format!("{c} must be above 0")));
    }
    let dp = d + 1;
    let n_par = k * dp;
    // theta = [W (k*d) | b (k)]; index of (class a, feature j) with j == d the intercept.
    let at = |a: usize, j: usize| if j < d { a * d + j } else { k * d + a };
    let mut theta = vec![0.0; n_par];
    let scale = x.len() as f64 * c + 1.0;
    let tolerance = 1e-9 * scale;
    let mut p = vec![0.0; k];
    let mut iterations = 0;
    let mut grad_max;
    loop {
        let (w, b) = theta.split_at(k * d);
        let mut grad = vec![0.0; n_par];
        let mut hess = vec![0.0; n_par * n_par];
        for (xi, yi) in x.iter().zip(y) {
            softmax_row(w, b, xi, &mut p);
            for a in 0..k {
                let r = p[a] - if *yi == a { 1.0 } else { 0.0 };
                for j in 0..dp {
                    let xj = if j < d { xi[j] } else { 1.0 };
                    grad[at(a, j)] += c * r * xj;
                }
            }
            for a in 0..k {
                for bb in 0..k {
                    let h = c * p[a] * (if a == bb { 1.0 } else { 0.0 } - p[bb]);
                    if h == 0.0 {
                        continue;
                    }
                    for j in 0..dp {
                        let xj = if j < d { xi[j] } else { 1.0 };
                        let row = at(a, j) * n_par;
                        let hx = h * xj;
                        for l in 0..dp {
                            let xl = if l < d { xi[l] } else { 1.0 };
                            hess[row + at(bb, l)] += hx * xl;
                        }
                    }
                }
            }
        }
        for i in 0..k * d {
            grad[i] += theta[i];
            hess[i * n_par + i] += 1.0;
        }
        grad_max = grad.iter().fold(0.0f64, |m, g| m.max(g.abs()));
        if grad_max <= tolerance || iterations >= crate::limits::PROBE_MAX_ITERATIONS {
            break;
        }
        iterations += 1;
        // The intercepts' common shift is a flat direction: a tiny ridge keeps the system
        // solvable without moving the solution (the step is then centred).
        let mut ridge = 1e-10 * scale;
        let step = loop {
            let mut h = hess.clone();
            for i in 0..n_par {
                h[i * n_par + i] += if i >= k * d { ridge.max(1e-12) } else { ridge };
            }
            let neg: Vec<f64> = grad.iter().map(|g| -g).collect();
            if let Some(s) = cholesky_solve(h, n_par, &neg) {
                break s;
            }
            ridge = if ridge == 0.0 { 1e-8 } else { ridge * 100.0 };
            if ridge > 1e6 * scale {
                return Err(Error::invalid(
                    "probe training",
                    "the Newton system is singular",
                ));
            }
        };
        let f0 = objective(x, y, k, c, &theta);
        let slope: f64 = grad.iter().zip(&step).map(|(g, s)| g * s).sum();
        let mut t = 1.0;
        loop {
            let cand: Vec<f64> = theta.iter().zip(&step).map(|(v, s)| v + t * s).collect();
            let f = objective(x, y, k, c, &cand);
            if f <= f0 + 1e-4 * t * slope || t < 1e-12 {
                theta = cand;
                break;
            }
            t *= 0.5;
        }
        let mean = theta[k * d..].iter().sum::<f64>() / k as f64;
        theta[k * d..].iter_mut().for_each(|b| *b -= mean);
    }
    let intercept = theta.split_off(k * d);
    Ok(Fit {
        classes: k,
        dim: d,
        coef: theta,
        intercept,
        iterations,
        gradient_max_abs: grad_max,
    })
}

/// scikit-learn's `StratifiedKFold(n_splits, shuffle=False)`: the fold that tests each example.
/// Classes are numbered by first appearance; the examples of each class, in their order, fill
/// the folds in contiguous blocks whose sizes are the class counts of every `n_splits`-th entry
/// of the sorted class numbers.
pub fn stratified_folds(y: &[usize], k: usize, n_splits: usize) -> Vec<usize> {
    let mut first_seen: Vec<usize> = Vec::with_capacity(k);
    for c in y {
        if !first_seen.contains(c) {
            first_seen.push(*c);
        }
    }
    let k = first_seen.len();
    let y: Vec<usize> = y
        .iter()
        .map(|c| first_seen.iter().position(|f| f == c).unwrap_or(0))
        .collect();
    let y = &y[..];
    let mut sorted = y.to_vec();
    sorted.sort_unstable();
    let mut allocation = vec![vec![0usize; k]; n_splits];
    for (i, cls) in sorted.iter().enumerate() {
        allocation[i % n_splits][*cls] += 1;
    }
    let mut folds = vec![0; y.len()];
    // `cls` indexes the inner vectors of `allocation`, not the loop's own range.
    #[allow(clippy::needless_range_loop)]
    for cls in 0..k {
        let mut order = (0..n_splits).flat_map(|f| std::iter::repeat_n(f, allocation[f][cls]));
        for (i, _) in y.iter().enumerate().filter(|(_, c)| **c == cls) {
            folds[i] = order.next().unwrap_or(0);
        }
    }
    folds
}

/// Cross-validation of one C.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CvPoint {
    #[serde(rename = "C")]
    pub c: f64,
    pub mean_log_loss: f64,
    pub mean_accuracy: f64,
}

/// Mean held-out log loss and accuracy of each C over the folds.
pub fn cross_validate(
    x: &[Vec<f64>],
    y: &[usize],
    k: usize,
    folds: &[usize],
    grid: &[f64],
    mut progress: impl FnMut(),
) -> Result<Vec<CvPoint>> {
    let n_folds = folds.iter().copied().max().map_or(0, |m| m + 1);
    let mut out = Vec::with_capacity(grid.len());
    for &c in grid {
        let (mut ll, mut acc) = (0.0, 0.0);
        for f in 0..n_folds {
            let (mut xt, mut yt) = (Vec::new(), Vec::new());
            for ((xi, yi), fi) in x.iter().zip(y).zip(folds) {
                if *fi != f {
                    xt.push(xi.clone());
                    yt.push(*yi);
                }
            }
            let m = fit(&xt, &yt, k, c)?;
            let (mut l, mut a, mut n) = (0.0, 0.0, 0.0);
            for ((xi, yi), fi) in x.iter().zip(y).zip(folds) {
                if *fi == f {
                    let p = m.predict(xi);
                    l -= p[*yi].max(f64::MIN_POSITIVE).ln();
                    a += f64::from(u8::from(argmax(&p) == *yi));
                    n += 1.0;
                }
            }
            ll += l / n;
            acc += a / n;
            progress();
        }
        out.push(CvPoint {
            c,
            mean_log_loss: ll / n_folds as f64,
            mean_accuracy: acc / n_folds as f64,
        });
    }
    Ok(out)
}

/// Index of the largest value (the first on ties).
pub fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// The C with the lowest mean log loss (the smallest C on a tie).
pub fn best_c(cv: &[CvPoint]) -> Option<f64> {
    let mut best: Option<CvPoint> = None;
    for p in cv {
        if best.is_none_or(|b| p.mean_log_loss < b.mean_log_loss) {
            best = Some(*p);
        }
    }
    best.map(|b| b.c)
}

/// The model a probe was trained on: its embeddings mean nothing to another model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeModel {
    /// The model folder's name, for messages.
    pub name: String,
    /// sha256 of the image tower that made the embeddings (`onnx/vision_model*.onnx`).
    pub vision_sha256: String,
    /// Embedding width.
    pub dim: usize,
}

impl ProbeModel {
    /// The identity of the image tower in `onnx_file` (of the model folder `dir`).
    pub fn of(dir: &Path, onnx_file: &Path, dim: usize) -> Result<Self> {
        use sha2::Digest;
        let bytes = std::fs::read(onnx_file).map_err(|e| Error::io(onnx_file, e))?;
        let hash = sha2::Sha256::digest(&bytes);
        Ok(ProbeModel {
            name: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            vision_sha256: hash.iter().map(|b| format!("{b:02x}")).collect(),
            dim,
        })
    }
}

/// A probe file (`probe.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// What the file is, for people who open it.
    pub format: String,
    pub model: ProbeModel,
    /// Class names: label folders, `none` last.
    pub classes: Vec<String>,
    #[serde(rename = "C")]
    pub c: f64,
    /// K rows of D.
    pub coef: Vec<Vec<f64>>,
    pub intercept: Vec<f64>,
    /// Examples per class it was trained on.
    pub examples: Vec<usize>,
    pub train_accuracy: f64,
    /// The cross-validation that chose C.
    pub cv: Vec<CvPoint>,
}

/// The value of [`Probe::format`].
pub const PROBE_FORMAT: &str =
    "clipfilter linear probe: softmax(coef . l2normalize(image_embeds) + intercept) over classes";

impl Probe {
    /// A probe from a fit.
    pub fn new(
        model: ProbeModel,
        classes: Vec<String>,
        c: f64,
        fit: &Fit,
        examples: Vec<usize>,
        train_accuracy: f64,
        cv: Vec<CvPoint>,
    ) -> Self {
        Probe {
            format: PROBE_FORMAT.into(),
            model,
            classes,
            c,
            coef: fit.coef.chunks(fit.dim).map(<[f64]>::to_vec).collect(),
            intercept: fit.intercept.clone(),
            examples,
            train_accuracy,
            cv,
        }
    }

    /// Reads a probe file and checks its shape.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let p: Probe = serde_json::from_str(&text).map_err(|e| Error::json(path, &e))?;
        let k = p.classes.len();
        if k < 2
            || p.coef.len() != k
            || p.intercept.len() != k
            || p.coef.iter().any(|r| r.len() != p.model.dim)
        {
            return Err(Error::config(
                path,
                Default::default(),
                "classes, coef and intercept do not agree in size",
            ));
        }
        Ok(p)
    }

    /// Writes the probe as JSON.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::invalid("probe", e.to_string()))?;
        std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
    }

    /// Checks that the probe belongs to `model` (an error naming both otherwise); a `model.dim`
    /// of 0 (not known) is not compared.
    pub fn check_model(&self, path: &Path, model: &ProbeModel) -> Result<()> {
        let dim_differs = model.dim != 0 && self.model.dim != model.dim;
        if self.model.vision_sha256 != model.vision_sha256 || dim_differs {
            return Err(Error::config(
                path,
                crate::error::Location::field("model"),
                format!(
                    "this probe was trained on model `{}` (image tower sha256 {}), not on `{}` (sha256 {}): train it again with this model (clipfilterd train-probe)",
                    self.model.name,
                    short(&self.model.vision_sha256),
                    model.name,
                    short(&model.vision_sha256)
                ),
            ));
        }
        Ok(())
    }

    /// Class probabilities of a normalised embedding.
    pub fn predict(&self, embedding: &[f32]) -> Vec<f64> {
        let x: Vec<f64> = embedding.iter().map(|v| f64::from(*v)).collect();
        let coef: Vec<f64> = self.coef.concat();
        let mut p = vec![0.0; self.classes.len()];
        softmax_row(&coef, &self.intercept, &x, &mut p);
        p
    }
}

fn short(h: &str) -> &str {
    h.get(..12).unwrap_or(h)
}

/// L2-normalised f64 copy of an embedding (the probe's features).
pub fn features(embedding: &[f32]) -> Vec<f64> {
    let x: Vec<f64> = embedding.iter().map(|v| f64::from(*v)).collect();
    let n = x.iter().map(|v| v * v).sum::<f64>().sqrt();
    if n > 0.0 {
        x.iter().map(|v| v / n).collect()
    } else {
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_is_half_decades() {
        let g = c_grid();
        assert_eq!(g.len(), 13);
        assert_eq!(
            (g[0], g[1], g[6], g[8], g[12]),
            (0.001, 0.00316228, 1.0, 10.0, 1000.0)
        );
    }

    #[test]
    fn folds_as_sklearn() {
        // sklearn: StratifiedKFold(3).split(X, [0,0,0,0,1,1,1,0,1]) tests [0,1,4], [2,3,5], [6,7,8].
        let f = stratified_folds(&[0, 0, 0, 0, 1, 1, 1, 0, 1], 2, 3);
        assert_eq!(f, vec![0, 0, 1, 1, 0, 1, 2, 2, 2]);
        // Classes numbered by first appearance: the same split with the names swapped.
        let g = stratified_folds(&[1, 1, 1, 1, 0, 0, 0, 1, 0], 2, 3);
        assert_eq!(g, f);
    }

    #[test]
    fn separable_classes_are_learnt_and_the_gradient_vanishes() {
        let x: Vec<Vec<f64>> = (0..30)
            .map(|i| {
                let a = i as f64 * 0.2;
                features(&[
                    (a.cos() + if i % 3 == 0 { 2.0 } else { -2.0 }) as f32,
                    a.sin() as f32,
                ])
            })
            .collect();
        let y: Vec<usize> = (0..30).map(|i| usize::from(i % 3 == 0)).collect();
        let m = fit(&x, &y, 2, 1.0).unwrap();
        assert!(m.gradient_max_abs < 1e-6, "{m:?}");
        assert!(m.intercept.iter().sum::<f64>().abs() < 1e-9);
        let right = x
            .iter()
            .zip(&y)
            .filter(|(xi, yi)| argmax(&m.predict(xi)) == **yi)
            .count();
        assert!(right >= 27, "{right}");
    }
}
