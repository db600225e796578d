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

#[cfg(test)]
mod tests {
    use super::*;

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
