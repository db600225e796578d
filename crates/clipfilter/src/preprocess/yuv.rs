//! YUV to RGB conversion, and whole-frame conversion to packed RGB (for snapshots).

use super::frame::{FrameRef, PixelFormat, YuvColor, YuvMatrix};
use crate::error::Result;

/// Fixed-point (16.16) coefficients of one YUV -> RGB conversion.
#[derive(Clone, Copy)]
struct Coeffs {
    y_off: i32,
    y_mul: i32,
    rv: i32,
    gu: i32,
    gv: i32,
    bu: i32,
}

impl Coeffs {
    fn new(color: YuvColor) -> Self {
        let (kr, kb) = match color.matrix {
            YuvMatrix::Bt601 => (0.299, 0.114),
            YuvMatrix::Bt709 => (0.2126, 0.0722),
            YuvMatrix::Bt2020 => (0.2627, 0.0593),
        };
        let kg = 1.0 - kr - kb;
        let (y_off, y_scale, c_scale) = if color.full_range {
            (0, 1.0, 1.0)
        } else {
            (16, 255.0 / 219.0, 255.0 / 224.0)
        };
        let fx = |v: f64| (v * 65536.0).round() as i32;
        Coeffs {
            y_off,
            y_mul: fx(y_scale),
            rv: fx(2.0 * (1.0 - kr) * c_scale),
            gu: fx(2.0 * kb * (1.0 - kb) / kg * c_scale),
            gv: fx(2.0 * kr * (1.0 - kr) / kg * c_scale),
            bu: fx(2.0 * (1.0 - kb) * c_scale),
        }
    }

    #[inline(always)]
    fn rgb(&self, y: u8, u: u8, v: u8) -> [u8; 3] {
        let y = (i32::from(y) - self.y_off) * self.y_mul + 32768;
        let u = i32::from(u) - 128;
        let v = i32::from(v) - 128;
        let clamp = |x: i32| (x >> 16).clamp(0, 255) as u8;
        [
            clamp(y + self.rv * v),
            clamp(y - self.gu * u - self.gv * v),
            clamp(y + self.bu * u),
        ]
    }
}

/// Converts co-sited planes of equal size (already resampled to the output size) to packed RGB.
/// For NV12/NV21 `uv` holds interleaved chroma and `v` is unused; for YV12 `uv` is the V plane.
pub(super) fn planes_to_rgb(
    format: PixelFormat,
    color: YuvColor,
    y: &[u8],
    uv: &[u8],
    v: &[u8],
    rgb: &mut [u8],
) {
    let k = Coeffs::new(color);
    let out = rgb.chunks_exact_mut(3);
    match format {
        PixelFormat::Nv12 | PixelFormat::Nv21 => {
            let swap = format == PixelFormat::Nv21;
            for ((px, &yy), c) in out.zip(y).zip(uv.chunks_exact(2)) {
                let (u, vv) = if swap { (c[1], c[0]) } else { (c[0], c[1]) };
                px.copy_from_slice(&k.rgb(yy, u, vv));
            }
        }
        _ => {
            let (u_plane, v_plane) = if format == PixelFormat::Yv12 {
                (v, uv)
            } else {
                (uv, v)
            };
            for (((px, &yy), &u), &vv) in out.zip(y).zip(u_plane).zip(v_plane) {
                px.copy_from_slice(&k.rgb(yy, u, vv));
            }
        }
    }
}

/// Converts a whole frame to tightly packed 8-bit RGB at its own size (chroma upsampled by
/// repetition). Used for snapshots, not on the inference path.
pub fn frame_to_rgb8(frame: &FrameRef<'_>) -> Result<Vec<u8>> {
    frame.validate()?;
    let (w, h) = (frame.width as usize, frame.height as usize);
    let mut rgb = vec![0u8; w * h * 3];
    match frame.format {
        PixelFormat::I420 | PixelFormat::Yv12 | PixelFormat::Nv12 | PixelFormat::Nv21 => {
            let k = Coeffs::new(frame.color);
            let nv = matches!(frame.format, PixelFormat::Nv12 | PixelFormat::Nv21);
            for yy in 0..h {
                let yrow = &frame.planes[0][yy * frame.strides[0]..];
                let crow = yy / 2;
                for xx in 0..w {
                    let cx = xx / 2;
                    let (u, v) = if nv {
                        let c = &frame.planes[1][crow * frame.strides[1] + cx * 2..];
                        if frame.format == PixelFormat::Nv12 {
                            (c[0], c[1])
                        } else {
                            (c[1], c[0])
                        }
                    } else {
                        let a = frame.planes[1][crow * frame.strides[1] + cx];
                        let b = frame.planes[2][crow * frame.strides[2] + cx];
                        if frame.format == PixelFormat::I420 {
                            (a, b)
                        } else {
                            (b, a)
                        }
                    };
                    rgb[(yy * w + xx) * 3..][..3].copy_from_slice(&k.rgb(yrow[xx], u, v));
                }
            }
        }
        PixelFormat::Gray8 => {
            for yy in 0..h {
                let row = &frame.planes[0][yy * frame.strides[0]..][..w];
                for (xx, &g) in row.iter().enumerate() {
                    rgb[(yy * w + xx) * 3..][..3].copy_from_slice(&[g, g, g]);
                }
            }
        }
        f => {
            let bpp = f.packed_bytes().unwrap_or(3);
            let offs = f.rgb_offsets();
            for yy in 0..h {
                let row = &frame.planes[0][yy * frame.strides[0]..][..w * bpp];
                for (xx, p) in row.chunks_exact(bpp).enumerate() {
                    rgb[(yy * w + xx) * 3..][..3]
                        .copy_from_slice(&[p[offs[0]], p[offs[1]], p[offs[2]]]);
                }
            }
        }
    }
    Ok(rgb)
}

/// The colour of the pixel at (`x`, `y`) (chroma of the 2x2 block it belongs to).
#[inline]
fn pixel_at(frame: &FrameRef<'_>, k: &Coeffs, x: usize, y: usize) -> [u8; 3] {
    let p = &frame.planes;
    let s = &frame.strides;
    match frame.format {
        PixelFormat::I420 | PixelFormat::Yv12 => {
            let (a, b) = (p[1][(y / 2) * s[1] + x / 2], p[2][(y / 2) * s[2] + x / 2]);
            let (u, v) = if frame.format == PixelFormat::I420 {
                (a, b)
            } else {
                (b, a)
            };
            k.rgb(p[0][y * s[0] + x], u, v)
        }
        PixelFormat::Nv12 | PixelFormat::Nv21 => {
            let c = &p[1][(y / 2) * s[1] + (x / 2) * 2..];
            let (u, v) = if frame.format == PixelFormat::Nv12 {
                (c[0], c[1])
            } else {
                (c[1], c[0])
            };
            k.rgb(p[0][y * s[0] + x], u, v)
        }
        PixelFormat::Gray8 => {
            let g = p[0][y * s[0] + x];
            [g, g, g]
        }
        f => {
            let bpp = f.packed_bytes().unwrap_or(3);
            let o = f.rgb_offsets();
            let px = &p[0][y * s[0] + x * bpp..];
            [px[o[0]], px[o[1]], px[o[2]]]
        }
    }
}

/// A small packed-RGB picture of the frame, `long_side` pixels on its longer side (aspect kept,
/// never enlarged): each pixel is the mean of a 4x4 grid of points in its source area, so only
/// a few hundred thousand pixels of a large frame are read. For thumbnails, not for inference.
/// Returns (pixels, width, height).
pub fn thumbnail_rgb8(frame: &FrameRef<'_>, long_side: u32) -> Result<(Vec<u8>, u32, u32)> {
    frame.validate()?;
    let (w, h) = (frame.width.max(1), frame.height.max(1));
    let scale = (f64::from(long_side.max(1)) / f64::from(w.max(h))).min(1.0);
    let tw = ((f64::from(w) * scale).round() as u32).max(1);
    let th = ((f64::from(h) * scale).round() as u32).max(1);
    let k = Coeffs::new(frame.color);
    const GRID: usize = 4;
    let mut out = Vec::with_capacity(tw as usize * th as usize * 3);
    let (w, h, tw_, th_) = (w as usize, h as usize, tw as usize, th as usize);
    for oy in 0..th_ {
        let (y0, y1) = (oy * h / th_, ((oy + 1) * h / th_).max(oy * h / th_ + 1));
        for ox in 0..tw_ {
            let (x0, x1) = (ox * w / tw_, ((ox + 1) * w / tw_).max(ox * w / tw_ + 1));
            let mut sum = [0u32; 3];
            let mut n = 0u32;
            for gy in 0..GRID {
                let y = (y0 + (y1 - y0) * (2 * gy + 1) / (2 * GRID)).min(h - 1);
                for gx in 0..GRID {
                    let x = (x0 + (x1 - x0) * (2 * gx + 1) / (2 * GRID)).min(w - 1);
                    let px = pixel_at(frame, &k, x, y);
                    for c in 0..3 {
                        sum[c] += u32::from(px[c]);
                    }
                    n += 1;
                }
            }
            out.extend(sum.iter().map(|s| ((s + n / 2) / n) as u8));
        }
    }
    Ok((out, tw, th))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnails_keep_the_aspect_and_the_colour() {
        let (w, h) = (320usize, 180usize);
        let mut y = vec![81u8; w * h];
        let mut uv = vec![0u8; w * h / 2];
        for c in uv.chunks_exact_mut(2) {
            c.copy_from_slice(&[90, 240]);
        }
        // The right half is black.
        for row in y.chunks_exact_mut(w) {
            row[w / 2..].fill(16);
        }
        for row in uv.chunks_exact_mut(w) {
            for c in row[w / 2..].chunks_exact_mut(2) {
                c.copy_from_slice(&[128, 128]);
            }
        }
        let frame = FrameRef {
            format: PixelFormat::Nv12,
            width: w as u32,
            height: h as u32,
            planes: [&y, &uv, &[]],
            strides: [w, w, 0],
            color: YuvColor::default(),
        };
        let (rgb, tw, th) = thumbnail_rgb8(&frame, 160).unwrap();
        assert_eq!((tw, th, rgb.len()), (160, 90, 160 * 90 * 3));
        let at = |x: usize, y: usize| &rgb[(y * 160 + x) * 3..][..3];
        assert!(
            at(10, 45)[0] > 240 && at(10, 45)[1] < 10,
            "{:?}",
            at(10, 45)
        );
        assert_eq!(at(150, 45), [0, 0, 0]);
        let (_, tw, th) = thumbnail_rgb8(&frame, 1000).unwrap();
        assert_eq!((tw, th), (320, 180), "never enlarged");
    }

    #[test]
    fn studio_range_primaries() {
        let k = Coeffs::new(YuvColor::default());
        assert_eq!(k.rgb(16, 128, 128), [0, 0, 0]);
        assert_eq!(k.rgb(235, 128, 128), [255, 255, 255]);
        let [r, g, b] = k.rgb(81, 90, 240);
        assert!(r >= 253 && g <= 2 && b <= 2, "{r} {g} {b}");
        let full = Coeffs::new(YuvColor {
            matrix: YuvMatrix::Bt709,
            full_range: true,
        });
        assert_eq!(full.rgb(0, 128, 128), [0, 0, 0]);
        assert_eq!(full.rgb(255, 128, 128), [255, 255, 255]);
    }
}
