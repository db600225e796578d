//! Embeddings as stored: int8 with one float scale per row.
//!
//! A normalised embedding `x` is stored as `q = round(x / s)` with `s = max|x| / 127`, so
//! `x ≈ s q`. A query is quantized the same way and a cosine is `s_row s_query (q_row · q_query)`,
//! an integer dot product that AVX2 computes 16 lanes at a time. Why int8 and not fp16: half the
//! bytes (D + 4 per row instead of 2D), so twice the rows per second from memory, and integer
//! arithmetic; the cost is a cosine error of about 1e-3 (`clipfilterd bench --sections history`
//! measures both on the same vectors), small against the 0.05-0.1 that separates a match from
//! the background with ViT-B/32. Backtests do not suffer from it where it matters: labels whose
//! texts did not change reuse the cosines computed live (see `backtest`).

/// Quantizes `x` into `out` (cleared); returns the scale.
pub fn quantize(x: &[f32], out: &mut Vec<i8>) -> f32 {
    out.clear();
    let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    if max.is_nan() || max <= 0.0 || !max.is_finite() {
        out.resize(x.len(), 0);
        return 0.0;
    }
    let scale = max / 127.0;
    let inv = 1.0 / scale;
    out.extend(
        x.iter()
            .map(|v| (v * inv).round().clamp(-127.0, 127.0) as i8),
    );
    scale
}

/// The float vector `q` stands for.
pub fn dequantize(q: &[i8], scale: f32) -> Vec<f32> {
    q.iter().map(|v| f32::from(*v) * scale).collect()
}

/// Integer dot product of two int8 vectors of equal length.
#[inline]
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { dot_i8_avx2(a, b) };
        }
    }
    dot_i8_plain(a, b)
}

#[inline(always)]
fn dot_i8_plain(a: &[i8], b: &[i8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| i32::from(*x) * i32::from(*y))
        .sum()
}

/// The same loop, compiled for AVX2 (the compiler turns it into vpmaddwd on 16 lanes).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_i8_avx2(a: &[i8], b: &[i8]) -> i32 {
    dot_i8_plain(a, b)
}

/// Scores many rows against one quantized query: calls `each(row index, dot)` for every row of
/// `rows` (rows of `stride` bytes whose int8 vector starts at `offset`). One function so that the
/// AVX2 loop is inlined across rows.
pub fn dot_rows(
    rows: &[u8],
    stride: usize,
    offset: usize,
    query: &[i8],
    mut each: impl FnMut(usize, i32),
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            unsafe { dot_rows_avx2(rows, stride, offset, query, &mut each) };
            return;
        }
    }
    dot_rows_plain(rows, stride, offset, query, &mut each);
}

#[inline(always)]
fn dot_rows_plain(
    rows: &[u8],
    stride: usize,
    offset: usize,
    query: &[i8],
    each: &mut impl FnMut(usize, i32),
) {
    let d = query.len();
    for (i, row) in rows.chunks_exact(stride).enumerate() {
        let v = &row[offset..offset + d];
        // SAFETY-free reinterpretation of u8 as i8: same size and alignment.
        let v: &[i8] = bytemuck_i8(v);
        each(i, dot_i8_plain(v, query));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_rows_avx2(
    rows: &[u8],
    stride: usize,
    offset: usize,
    query: &[i8],
    each: &mut impl FnMut(usize, i32),
) {
    dot_rows_plain(rows, stride, offset, query, each)
}

/// `u8` bytes read as `i8` (two's complement, as they were written).
#[inline(always)]
pub fn bytemuck_i8(v: &[u8]) -> &[i8] {
    // SAFETY: u8 and i8 have the same size, alignment and validity (every bit pattern).
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<i8>(), v.len()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_cosines_stay_close() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut unit = |d: usize| {
            let mut v: Vec<f32> = (0..d).map(|_| rng.f32() - 0.5).collect();
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= n);
            v
        };
        let mut worst = 0f32;
        for _ in 0..200 {
            let (a, b) = (unit(512), unit(512));
            let exact: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            let (mut qa, mut qb) = (Vec::new(), Vec::new());
            let (sa, sb) = (quantize(&a, &mut qa), quantize(&b, &mut qb));
            let approx = dot_i8(&qa, &qb) as f32 * sa * sb;
            assert_eq!(dot_i8(&qa, &qb), dot_i8_plain(&qa, &qb));
            worst = worst.max((approx - exact).abs());
            let back = dequantize(&qa, sa);
            assert!(
                a.iter()
                    .zip(&back)
                    .all(|(x, y)| (x - y).abs() <= sa / 2.0 + 1e-7)
            );
        }
        assert!(worst < 5e-3, "{worst}");
        let mut q = Vec::new();
        assert_eq!(quantize(&[0.0, 0.0], &mut q), 0.0);
        assert_eq!(q, vec![0, 0]);
    }

    #[test]
    fn rows_are_scored_in_order() {
        let query: Vec<i8> = vec![1, -2, 3];
        let stride = 8;
        let mut rows = vec![0u8; stride * 2];
        rows[4..7].copy_from_slice(&[1u8, 1, 1]);
        rows[stride + 4..stride + 7].copy_from_slice(&[(-1i8) as u8, 0, 2]);
        let mut got = Vec::new();
        dot_rows(&rows, stride, 4, &query, |i, d| got.push((i, d)));
        assert_eq!(got, vec![(0, 2), (1, 5)]);
    }
}
