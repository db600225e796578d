//! Blanking and pixelating frames in place, in every format the element accepts.
//!
//! Works on raw planes with their strides; only the visible `width` bytes of each row are
//! touched, never the padding. A plane can be narrowed to a box of the frame
//! ([`PlaneMut::area`]) so that `action-scope=region` paints the matched crop only.

use clipfilter::preprocess::{PixelBox, PixelFormat};

/// One plane of a frame: its bytes, stride, visible size and bytes per pixel.
pub(super) struct PlaneMut<'a> {
    pub data: &'a mut [u8],
    pub stride: usize,
    /// Visible pixels per row (chroma samples for subsampled planes).
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// Bytes per pixel (1 for Y/U/V and GRAY8, 2 for interleaved chroma, 3 or 4 for RGB).
    pub pstride: usize,
}

impl<'a> PlaneMut<'a> {
    /// The part of a plane (`width` x `height` samples of `pstride` bytes, rows `stride` apart)
    /// under the frame box `area`. On 2x2 subsampled chroma planes the box covers every chroma
    /// sample that touches it (an odd edge takes the neighbouring luma column's chroma too).
    /// `None` when the box misses the plane.
    pub(super) fn area(
        data: &'a mut [u8],
        stride: usize,
        width: usize,
        height: usize,
        pstride: usize,
        area: PixelBox,
        subsampled: bool,
    ) -> Option<Self> {
        let (x0, y0, x1, y1) = if subsampled {
            (
                area.x as usize / 2,
                area.y as usize / 2,
                (area.right() as usize).div_ceil(2),
                (area.bottom() as usize).div_ceil(2),
            )
        } else {
            (
                area.x as usize,
                area.y as usize,
                area.right() as usize,
                area.bottom() as usize,
            )
        };
        let (x1, y1) = (x1.min(width), y1.min(height));
        if x0 >= x1 || y0 >= y1 {
            return None;
        }
        let start = y0 * stride + x0 * pstride;
        Some(PlaneMut {
            data: data.get_mut(start..)?,
            stride,
            width: x1 - x0,
            height: y1 - y0,
            pstride,
        })
    }
}

/// Width, height and bytes per pixel of each plane of a `width` x `height` frame.
pub(super) fn plane_geometry(
    format: PixelFormat,
    width: usize,
    height: usize,
) -> Vec<(usize, usize, usize)> {
    let (cw, ch) = (width.div_ceil(2), height.div_ceil(2));
    match format {
        PixelFormat::I420 | PixelFormat::Yv12 => {
            vec![(width, height, 1), (cw, ch, 1), (cw, ch, 1)]
        }
        PixelFormat::Nv12 | PixelFormat::Nv21 => vec![(width, height, 1), (cw, ch, 2)],
        f => vec![(width, height, f.packed_bytes().unwrap_or(1))],
    }
}

/// The bytes of a black pixel in plane `plane` of `format` (luma 16 in studio range).
fn black(format: PixelFormat, plane: usize, full_range: bool) -> &'static [u8] {
    use PixelFormat::*;
    let luma: &[u8] = if full_range { &[0] } else { &[16] };
    match (format, plane) {
        (I420 | Yv12 | Nv12 | Nv21, 0) => luma,
        (I420 | Yv12, _) => &[128],
        (Nv12 | Nv21, _) => &[128, 128],
        (Rgb | Bgr, _) => &[0, 0, 0],
        (Rgba | Bgra, _) => &[0, 0, 0, 255],
        (Argb | Abgr, _) => &[255, 0, 0, 0],
        (Rgbx | Bgrx | Xrgb | Xbgr, _) => &[0, 0, 0, 0],
        (Gray8, _) => &[0],
    }
}

/// Paints plane `index` of a `format` frame black (opaque where there is alpha).
pub(super) fn blank_plane(
    format: PixelFormat,
    full_range: bool,
    index: usize,
    p: &mut PlaneMut<'_>,
) {
    let px = black(format, index, full_range);
    let row_bytes = p.width * p.pstride;
    for y in 0..p.height {
        let row = &mut p.data[y * p.stride..y * p.stride + row_bytes];
        if px.iter().all(|b| *b == px[0]) {
            row.fill(px[0]);
        } else {
            for chunk in row.chunks_exact_mut(px.len()) {
                chunk.copy_from_slice(px);
            }
        }
    }
}

/// Side of the pixelation blocks on the luma (or packed) plane of a `width` x `height` frame:
/// about 20 blocks across the longer side, even so that 2x2 subsampled chroma blocks line up.
pub(super) fn block_size(width: usize, height: usize) -> usize {
    let b = width.max(height).div_ceil(20).max(4);
    b + (b % 2)
}

/// Replaces each block of a plane with its mean, blocks starting at the plane's top left.
/// `block` is the block side on the luma (or packed) plane; `subsampled` (2x2 chroma) planes use
/// half of it. `sums` is scratch space.
pub(super) fn pixelate_plane(
    p: &mut PlaneMut<'_>,
    block: usize,
    subsampled: bool,
    sums: &mut Vec<u32>,
) {
    let b = if subsampled {
        (block / 2).max(1)
    } else {
        block.max(1)
    };
    let ps = p.pstride;
    let blocks_x = p.width.div_ceil(b);
    for by in (0..p.height).step_by(b) {
        let rows = b.min(p.height - by);
        sums.clear();
        sums.resize(blocks_x * ps, 0);
        for y in by..by + rows {
            let row = &p.data[y * p.stride..y * p.stride + p.width * ps];
            for (x, px) in row.chunks_exact(ps).enumerate() {
                let s = &mut sums[(x / b) * ps..(x / b) * ps + ps];
                for (acc, v) in s.iter_mut().zip(px) {
                    *acc += u32::from(*v);
                }
            }
        }
        for bx in 0..blocks_x {
            let cols = b.min(p.width - bx * b);
            let n = (cols * rows) as u32;
            let mut mean = [0u8; 4];
            for (c, m) in mean.iter_mut().enumerate().take(ps) {
                *m = ((sums[bx * ps + c] + n / 2) / n) as u8;
            }
            for y in by..by + rows {
                let start = y * p.stride + bx * b * ps;
                for px in p.data[start..start + cols * ps].chunks_exact_mut(ps) {
                    px.copy_from_slice(&mean[..ps]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(format: PixelFormat, w: usize, h: usize, stride_pad: usize) -> Vec<(Vec<u8>, usize)> {
        plane_geometry(format, w, h)
            .into_iter()
            .map(|(pw, ph, ps)| {
                let stride = pw * ps + stride_pad;
                let data: Vec<u8> = (0..stride * ph).map(|i| (i * 7 % 251) as u8).collect();
                (data, stride)
            })
            .collect()
    }

    fn planes<'a>(
        format: PixelFormat,
        w: usize,
        h: usize,
        bufs: &'a mut [(Vec<u8>, usize)],
    ) -> Vec<PlaneMut<'a>> {
        bufs.iter_mut()
            .zip(plane_geometry(format, w, h))
            .map(|((data, stride), (pw, ph, ps))| PlaneMut {
                data,
                stride: *stride,
                width: pw,
                height: ph,
                pstride: ps,
            })
            .collect()
    }

    #[test]
    fn blank_touches_visible_bytes_only() {
        for format in PixelFormat::ALL {
            let (w, h) = (13, 7);
            let mut bufs = frame(format, w, h, 5);
            let before = bufs.clone();
            for (i, p) in planes(format, w, h, &mut bufs).iter_mut().enumerate() {
                blank_plane(format, false, i, p);
            }
            for (i, ((data, stride), (pw, ph, ps))) in
                bufs.iter().zip(plane_geometry(format, w, h)).enumerate()
            {
                let px = black(format, i, false);
                for y in 0..ph {
                    let row = &data[y * stride..(y + 1) * stride];
                    for (x, b) in row.iter().enumerate() {
                        if x < pw * ps {
                            assert_eq!(*b, px[x % px.len()], "{format:?} plane {i} ({x},{y})");
                        } else {
                            assert_eq!(*b, before[i].0[y * stride + x], "{format:?} padding");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn pixelate_makes_uniform_blocks_with_block_means() {
        let format = PixelFormat::Nv12;
        let (w, h) = (40, 22);
        let mut bufs = frame(format, w, h, 3);
        let before = bufs.clone();
        let block = 8;
        for p in planes(format, w, h, &mut bufs).iter_mut() {
            let subsampled = p.width < w;
            pixelate_plane(p, block, subsampled, &mut Vec::new());
        }
        // Luma block (0,0): 8x8 mean of the original values.
        let (orig, stride) = &before[0];
        let mean = (0..8)
            .flat_map(|y| (0..8).map(move |x| u32::from(orig[y * stride + x])))
            .sum::<u32>() as f64
            / 64.0;
        let (data, stride) = &bufs[0];
        for y in 0..8 {
            for x in 0..8 {
                assert_eq!(data[y * stride + x], mean.round() as u8);
            }
        }
        // The last, partial block row (rows 16..22) is uniform too.
        assert!((16..22).all(|y| data[y * stride + 39] == data[16 * stride + 32]));
        // Chroma: 4x4 blocks of interleaved U/V pairs, U and V averaged separately.
        let (uv, stride) = &bufs[1];
        assert!((0..4).all(|y| (0..4).all(|x| uv[y * stride + 2 * x..][..2] == uv[..2])));
        // Padding untouched.
        assert_eq!(bufs[0].0[40], before[0].0[40]);
        assert_eq!(block_size(1920, 1080), 96);
        assert_eq!(block_size(64, 48), 4);
    }

    #[test]
    fn an_area_paints_inside_its_box_only() {
        for format in [PixelFormat::Rgb, PixelFormat::I420, PixelFormat::Nv12] {
            let (w, h) = (40, 30);
            let area = PixelBox::new(10, 6, 16, 12);
            let mut bufs = frame(format, w, h, 3);
            let before = bufs.clone();
            for (i, ((data, stride), (pw, ph, ps))) in bufs
                .iter_mut()
                .zip(plane_geometry(format, w, h))
                .enumerate()
            {
                let sub = pw < w;
                let mut p = PlaneMut::area(data, *stride, pw, ph, ps, area, sub).unwrap();
                if i == 0 {
                    pixelate_plane(&mut p, 4, sub, &mut Vec::new());
                } else {
                    blank_plane(format, false, i, &mut p);
                }
            }
            // Luma (or RGB): inside changed blockwise, outside untouched.
            let (data, stride) = &bufs[0];
            let ps = plane_geometry(format, w, h)[0].2;
            for y in 0..h {
                for x in 0..w {
                    let inside = area.contains(x as u32, y as u32);
                    let i = y * stride + x * ps;
                    if !inside {
                        assert_eq!(
                            data[i..i + ps],
                            before[0].0[i..i + ps],
                            "{format:?} ({x},{y})"
                        );
                    }
                }
            }
            // Each 4x4 block of the box is uniform.
            let px = |x: usize, y: usize| &data[y * stride + x * ps..][..ps];
            assert!((10..14).all(|x| (6..10).all(|y| px(x, y) == px(10, 6))));
            assert_ne!(px(10, 6), px(14, 6));
            if format != PixelFormat::Rgb {
                // Chroma: the box's even edges map to chroma samples 5..13 x 3..9.
                let (uv, stride) = &bufs[1];
                let ps = plane_geometry(format, w, h)[1].2;
                assert_eq!(uv[3 * stride + 5 * ps], 128);
                assert_eq!(uv[3 * stride + 4 * ps], before[1].0[3 * stride + 4 * ps]);
                assert_eq!(uv[9 * stride + 5 * ps], before[1].0[9 * stride + 5 * ps]);
            }
        }
        let mut tiny = vec![0u8; 10];
        assert!(
            PlaneMut::area(&mut tiny, 10, 10, 1, 1, PixelBox::new(20, 0, 4, 1), false).is_none()
        );
    }
}
