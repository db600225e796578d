//! Frames to model input: the same resize, crop and normalisation as the reference
//! `CLIPImageProcessor` (PIL bicubic with antialiasing, centre crop, rescale, normalise), from any
//! supported pixel format and size, into a caller-provided `[3, H, W]` slice.
//!
//! Only the part of the frame that survives the centre crop is resampled: the crop is expressed as
//! a fractional box in source coordinates, which gives the same pixels as resizing the whole frame
//! and cropping afterwards (PIL and `fast_image_resize` both let the filter read source pixels
//! outside the box). YUV frames are resampled plane by plane and converted to RGB at the output
//! size, so a 1080p NV12 frame costs a few small resizes, not a full-size colour conversion.
//! After the first frame of a given size nothing is allocated.
//!
//! Besides the reference's centre crop ([`Preprocessor::run`]), any box of the frame can be
//! letterboxed into the model's input ([`Preprocessor::run_letterbox`]): scaled whole, keeping
//! its aspect ratio, with borders at the model's mean colour (0 after normalisation). That is how
//! the `pad` fit, regions and tiles reach the model (see [`crate::crops`]).

mod config;
mod frame;
mod yuv;

pub use config::{CLIP_MEAN, CLIP_STD, Filter, PreprocessConfig, Resize};
pub use frame::{FrameRef, PixelBox, PixelFormat, YuvColor, YuvMatrix};
pub use yuv::frame_to_rgb8;

use fast_image_resize as fir;
use fir::pixels::{InnerPixel, U8, U8x2, U8x3, U8x4};
use fir::{ImageView, ResizeAlg, ResizeOptions, Resizer};

use crate::error::{Error, Result};

/// A strided, borrowed image for `fast_image_resize`.
struct StridedView<'a, P> {
    data: &'a [u8],
    width: u32,
    height: u32,
    stride: usize,
    _pixel: std::marker::PhantomData<P>,
}

impl<'a, P: InnerPixel> StridedView<'a, P> {
    fn new(data: &'a [u8], width: u32, height: u32, stride: usize) -> Result<Self> {
        let row = width as usize * std::mem::size_of::<P>();
        if height > 0 && (stride < row || data.len() < stride * (height as usize - 1) + row) {
            return Err(Error::invalid(
                "frame",
                "plane too small for its size and stride",
            ));
        }
        Ok(StridedView {
            data,
            width,
            height,
            stride,
            _pixel: std::marker::PhantomData,
        })
    }
}

// SAFETY: every row handed out has exactly `width` pixels (checked in `new`), and the pixel types
// used here are arrays of `u8` (alignment 1), so casting byte rows to pixel rows is sound.
unsafe impl<P: InnerPixel> ImageView for StridedView<'_, P> {
    type Pixel = P;

    fn width(&self) -> u32 {
        self.width
    }

    fn height(&self) -> u32 {
        self.height
    }

    fn iter_rows(&self, start_row: u32) -> impl Iterator<Item = &[P]> {
        debug_assert_eq!(std::mem::align_of::<P>(), 1);
        let width = self.width as usize;
        let row_bytes = width * std::mem::size_of::<P>();
        (start_row as usize..self.height as usize).map(move |y| {
            let row = &self.data[y * self.stride..y * self.stride + row_bytes];
            // SAFETY: see the impl comment.
            unsafe { std::slice::from_raw_parts(row.as_ptr().cast::<P>(), width) }
        })
    }
}

/// The part of the source that becomes the output: a box in source coordinates and the output
/// size, or a full resize followed by padding when the crop is larger than the resized image.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Geometry {
    out_w: u32,
    out_h: u32,
    /// Resized size of the whole frame.
    resized_w: u32,
    resized_h: u32,
    /// Source box that maps onto the output, when the crop lies inside the resized image.
    src_box: Option<[f64; 4]>,
    /// Offset of the resized image in the output when padding (left, top).
    pad: (i64, i64),
}

fn geometry(cfg: &PreprocessConfig, w: u32, h: u32) -> Geometry {
    let (rw, rh) = cfg.resized_size(w, h);
    let (out_h, out_w) = cfg.crop.unwrap_or((rh, rw));
    if out_w <= rw && out_h <= rh {
        let left = f64::from((rw - out_w) / 2);
        let top = f64::from((rh - out_h) / 2);
        let sx = f64::from(w) / f64::from(rw);
        let sy = f64::from(h) / f64::from(rh);
        Geometry {
            out_w,
            out_h,
            resized_w: rw,
            resized_h: rh,
            src_box: Some([
                left * sx,
                top * sy,
                f64::from(out_w) * sx,
                f64::from(out_h) * sy,
            ]),
            pad: (0, 0),
        }
    } else {
        // transformers' center_crop pads with zeros, centred, then crops.
        let left = (i64::from(out_w) - i64::from(rw)) / 2;
        let top = (i64::from(out_h) - i64::from(rh)) / 2;
        Geometry {
            out_w,
            out_h,
            resized_w: rw,
            resized_h: rh,
            src_box: None,
            pad: (left.max(0), top.max(0)),
        }
    }
}

/// Where a letterboxed box lands in the model input: its scaled size and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Letterbox {
    /// Size of the scaled box (one side equals the output's).
    pub width: u32,
    pub height: u32,
    /// Offset of the scaled box in the output (floor: an odd border puts the extra pixel right
    /// or bottom).
    pub left: u32,
    pub top: u32,
}

/// Letterboxes a `w` x `h` box into an `out_w` x `out_h` input: scaled to touch the output on its
/// relatively longer side, the other side rounded half up (integer arithmetic, as the `pad`
/// reference of `tests/fixtures/reference/pad.json` does), at least 1, centred.
pub fn letterbox(w: u32, h: u32, out_w: u32, out_h: u32) -> Letterbox {
    let (w, h) = (u64::from(w.max(1)), u64::from(h.max(1)));
    let (ow, oh) = (u64::from(out_w), u64::from(out_h));
    // Wider than the output (w / h >= ow / oh): the width fills it.
    let (nw, nh) = if w * oh >= h * ow {
        (ow, (2 * h * ow + w) / (2 * w))
    } else {
        ((2 * w * oh + h) / (2 * h), oh)
    };
    let (nw, nh) = (nw.clamp(1, ow.max(1)) as u32, nh.clamp(1, oh.max(1)) as u32);
    Letterbox {
        width: nw,
        height: nh,
        left: (out_w - nw) / 2,
        top: (out_h - nh) / 2,
    }
}

/// `fast_image_resize`'s equivalent of a PIL filter.
fn filter_alg(filter: Filter) -> ResizeAlg {
    match filter {
        Filter::Nearest => ResizeAlg::Nearest,
        Filter::Bilinear => ResizeAlg::Convolution(fir::FilterType::Bilinear),
        Filter::Bicubic => ResizeAlg::Convolution(fir::FilterType::CatmullRom),
        Filter::Lanczos => ResizeAlg::Convolution(fir::FilterType::Lanczos3),
        Filter::Box => ResizeAlg::Convolution(fir::FilterType::Box),
        Filter::Hamming => ResizeAlg::Convolution(fir::FilterType::Hamming),
    }
}

/// Separable resampling in PIL's order: a horizontal pass into an 8-bit intermediate, then a
/// vertical pass. (`fast_image_resize` on its own runs the vertical pass first for 8-bit
/// images, which rounds and clips the intermediate differently and moves edge pixels by several
/// levels away from the reference.) Only the source rows the vertical pass needs go through
/// the horizontal one.
struct Resampler {
    resizer: Resizer,
    alg: ResizeAlg,
    temp: Vec<u8>,
}

impl Resampler {
    fn new(alg: ResizeAlg) -> Self {
        Resampler {
            resizer: Resizer::new(),
            alg,
            temp: Vec::new(),
        }
    }

    /// Resamples the `src_box` (left, top, width, height in source pixels) of a plane of pixel
    /// type `P` into `dst` (`dst_w` x `dst_h` pixels).
    #[allow(clippy::too_many_arguments)]
    fn run<P: InnerPixel + fir::PixelTrait>(
        &mut self,
        src: &[u8],
        src_w: u32,
        src_h: u32,
        stride: usize,
        src_box: [f64; 4],
        dst: &mut Vec<u8>,
        dst_w: u32,
        dst_h: u32,
    ) -> Result<()> {
        let [left, top, box_w, box_h] = src_box;
        let err = |e: &dyn std::fmt::Display| Error::invalid("frame", format!("resize: {e}"));
        // Rows the vertical pass reads: the box plus the filter's reach (support 3 at most,
        // widened by the scale when downscaling), and one for rounding.
        let reach = 3.0 * (box_h / f64::from(dst_h.max(1))).max(1.0) + 1.0;
        let y0 = (top - reach).floor().max(0.0) as u32;
        let y1 = ((top + box_h + reach).ceil() as u32).min(src_h);
        let rows = y1 - y0;
        let px = std::mem::size_of::<P>();
        let view = StridedView::<P>::new(&src[y0 as usize * stride..], src_w, rows, stride)?;

        // Horizontal pass: the box's columns, every needed row.
        self.temp.resize(dst_w as usize * rows as usize * px, 0);
        let mut temp = fir::images::TypedImage::<P>::from_buffer(dst_w, rows, &mut self.temp)
            .map_err(|e| err(&e))?;
        let opts = ResizeOptions::new()
            .resize_alg(self.alg)
            .use_alpha(false)
            .crop(left, 0.0, box_w, f64::from(rows));
        self.resizer
            .resize_typed(&view, &mut temp, &opts)
            .map_err(|e| err(&e))?;

        // Vertical pass.
        dst.resize(dst_w as usize * dst_h as usize * px, 0);
        let temp_view = StridedView::<P>::new(&self.temp, dst_w, rows, dst_w as usize * px)?;
        let mut out =
            fir::images::TypedImage::<P>::from_buffer(dst_w, dst_h, dst).map_err(|e| err(&e))?;
        let opts = ResizeOptions::new()
            .resize_alg(self.alg)
            .use_alpha(false)
            .crop(0.0, top - f64::from(y0), f64::from(dst_w), box_h);
        self.resizer
            .resize_typed(&temp_view, &mut out, &opts)
            .map_err(|e| err(&e))
    }
}

/// Per channel: each 8-bit value as the model's input, rescaled and normalised as `cfg` says,
/// computed exactly as transformers does (rescale in float64, cast to float32, then
/// `(x - mean) / std` in float32). Without rescale and normalisation the values stay 0..=255.
pub fn value_table(cfg: &PreprocessConfig) -> [[f32; 256]; 3] {
    let mut lut = [[0f32; 256]; 3];
    for (c, table) in lut.iter_mut().enumerate() {
        for (v, out) in table.iter_mut().enumerate() {
            let x = match cfg.rescale {
                Some(scale) => (v as f64 * scale) as f32,
                None => v as f32,
            };
            *out = match cfg.normalize {
                Some((mean, std)) => (x - mean[c]) / std[c],
                None => x,
            };
        }
    }
    lut
}

/// Turns frames into normalised `[3, H, W]` float tensors. Keep one per thread and reuse it.
pub struct Preprocessor {
    cfg: PreprocessConfig,
    /// Per channel: 8-bit value -> normalised float, computed exactly as transformers does.
    lut: [[f32; 256]; 3],
    resampler: Resampler,
    /// Resampled pixels at the output size (packed, or the Y plane).
    scratch: Vec<u8>,
    /// Resampled chroma at the output size.
    scratch_uv: Vec<u8>,
    scratch_v: Vec<u8>,
    /// RGB at the output size, for the YUV and padding paths.
    rgb: Vec<u8>,
}

impl Preprocessor {
    /// A preprocessor for `cfg`. The config must fix the output size (a crop or an exact resize).
    pub fn new(cfg: PreprocessConfig) -> Result<Self> {
        if cfg.output_size().is_none() {
            return Err(Error::invalid(
                "preprocessor config",
                "the output size is not fixed: set do_center_crop with crop_size, or size as {height, width}",
            ));
        }
        let lut = value_table(&cfg);
        let resampler = Resampler::new(filter_alg(cfg.filter));
        Ok(Preprocessor {
            cfg,
            lut,
            resampler,
            scratch: Vec::new(),
            scratch_uv: Vec::new(),
            scratch_v: Vec::new(),
            rgb: Vec::new(),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &PreprocessConfig {
        &self.cfg
    }

    /// Output (height, width).
    pub fn output_size(&self) -> (u32, u32) {
        self.cfg.output_size().unwrap_or((0, 0))
    }

    /// Number of floats written per image: 3 x H x W.
    pub fn output_len(&self) -> usize {
        let (h, w) = self.output_size();
        3 * h as usize * w as usize
    }

    /// Checks the frame and the output buffer.
    fn check(&self, frame: &FrameRef<'_>, out: &[f32]) -> Result<()> {
        frame.validate()?;
        if out.len() != self.output_len() {
            return Err(Error::invalid(
                "preprocess output",
                format!(
                    "buffer holds {} floats, needs {}",
                    out.len(),
                    self.output_len()
                ),
            ));
        }
        Ok(())
    }

    /// Preprocesses `frame` into `out`, which must hold [`Self::output_len`] floats, exactly as
    /// the reference does (resize the short side, centre crop).
    pub fn run(&mut self, frame: &FrameRef<'_>, out: &mut [f32]) -> Result<()> {
        self.check(frame, out)?;
        let g = geometry(&self.cfg, frame.width, frame.height);
        let (dw, dh) = match g.src_box {
            Some(_) => (g.out_w, g.out_h),
            None => (g.resized_w, g.resized_h),
        };
        let luma_box =
            g.src_box
                .unwrap_or([0.0, 0.0, f64::from(frame.width), f64::from(frame.height)]);
        let (format, bpp) = self.resample(frame, luma_box, dw, dh)?;
        self.finish_packed(format, bpp, &g, out);
        Ok(())
    }

    /// The box of the frame that [`Self::run`] shows the model (the centre crop), in frame
    /// pixels, rounded outwards; the whole frame when the crop is larger than the resized frame.
    pub fn reference_box(&self, width: u32, height: u32) -> PixelBox {
        let g = geometry(&self.cfg, width, height);
        match g.src_box {
            Some([l, t, w, h]) => {
                let x0 = (l.floor().max(0.0) as u32).min(width.saturating_sub(1));
                let y0 = (t.floor().max(0.0) as u32).min(height.saturating_sub(1));
                let x1 = ((l + w).ceil() as u32).clamp(x0 + 1, width.max(x0 + 1));
                let y1 = ((t + h).ceil() as u32).clamp(y0 + 1, height.max(y0 + 1));
                PixelBox::new(x0, y0, x1 - x0, y1 - y0)
            }
            None => PixelBox::new(0, 0, width, height),
        }
    }

    /// Letterboxes `area` (a box inside the frame; the whole frame for the `pad` fit) into
    /// `out`: scaled whole with PIL-order resampling (see [`letterbox`]), borders at the model's
    /// mean colour, which normalises to exactly 0. Where `keep` is given (one flag per output
    /// pixel, row-major), pixels whose flag is false are set to 0 too (the outside of a polygon).
    pub fn run_letterbox(
        &mut self,
        frame: &FrameRef<'_>,
        area: PixelBox,
        keep: Option<&[bool]>,
        out: &mut [f32],
    ) -> Result<()> {
        self.check(frame, out)?;
        if area.width == 0
            || area.height == 0
            || u64::from(area.x) + u64::from(area.width) > u64::from(frame.width)
            || u64::from(area.y) + u64::from(area.height) > u64::from(frame.height)
        {
            return Err(Error::invalid(
                "crop box",
                format!(
                    "{area} is not inside the {}x{} frame",
                    frame.width, frame.height
                ),
            ));
        }
        let (oh, ow) = self.output_size();
        if keep.is_some_and(|k| k.len() != (ow * oh) as usize) {
            return Err(Error::invalid(
                "crop mask",
                format!(
                    "{} flags for a {ow}x{oh} input",
                    keep.map_or(0, <[bool]>::len)
                ),
            ));
        }
        let lb = letterbox(area.width, area.height, ow, oh);
        let src = [
            f64::from(area.x),
            f64::from(area.y),
            f64::from(area.width),
            f64::from(area.height),
        ];
        let (format, bpp) = self.resample(frame, src, lb.width, lb.height)?;
        self.finish_placed(format, bpp, &lb, keep, out);
        Ok(())
    }

    /// Resamples `luma_box` of the frame to `dw` x `dh` packed pixels in `self.scratch` (RGB for
    /// YUV frames, converted at the output size); returns their format and bytes per pixel.
    fn resample(
        &mut self,
        frame: &FrameRef<'_>,
        luma_box: [f64; 4],
        dw: u32,
        dh: u32,
    ) -> Result<(PixelFormat, usize)> {
        let (w, h) = (frame.width, frame.height);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        // Chroma box: the luma box scaled to the chroma plane, which covers the same picture.
        let chroma_box = {
            let [l, t, bw, bh] = luma_box;
            let (sx, sy) = (f64::from(cw) / f64::from(w), f64::from(ch) / f64::from(h));
            [l * sx, t * sy, bw * sx, bh * sy]
        };

        Ok(match frame.format {
            PixelFormat::Rgb | PixelFormat::Bgr => {
                self.resampler.run::<U8x3>(
                    frame.planes[0],
                    w,
                    h,
                    frame.strides[0],
                    luma_box,
                    &mut self.scratch,
                    dw,
                    dh,
                )?;
                (frame.format, 3)
            }
            PixelFormat::Gray8 => {
                self.resampler.run::<U8>(
                    frame.planes[0],
                    w,
                    h,
                    frame.strides[0],
                    luma_box,
                    &mut self.scratch,
                    dw,
                    dh,
                )?;
                (frame.format, 1)
            }
            PixelFormat::I420 | PixelFormat::Yv12 | PixelFormat::Nv12 | PixelFormat::Nv21 => {
                self.resampler.run::<U8>(
                    frame.planes[0],
                    w,
                    h,
                    frame.strides[0],
                    luma_box,
                    &mut self.scratch,
                    dw,
                    dh,
                )?;
                if matches!(frame.format, PixelFormat::Nv12 | PixelFormat::Nv21) {
                    self.resampler.run::<U8x2>(
                        frame.planes[1],
                        cw,
                        ch,
                        frame.strides[1],
                        chroma_box,
                        &mut self.scratch_uv,
                        dw,
                        dh,
                    )?;
                } else {
                    self.resampler.run::<U8>(
                        frame.planes[1],
                        cw,
                        ch,
                        frame.strides[1],
                        chroma_box,
                        &mut self.scratch_uv,
                        dw,
                        dh,
                    )?;
                    self.resampler.run::<U8>(
                        frame.planes[2],
                        cw,
                        ch,
                        frame.strides[2],
                        chroma_box,
                        &mut self.scratch_v,
                        dw,
                        dh,
                    )?;
                }
                self.rgb.resize(dw as usize * dh as usize * 3, 0);
                yuv::planes_to_rgb(
                    frame.format,
                    frame.color,
                    &self.scratch,
                    &self.scratch_uv,
                    &self.scratch_v,
                    &mut self.rgb,
                );
                std::mem::swap(&mut self.rgb, &mut self.scratch);
                (PixelFormat::Rgb, 3)
            }
            f => {
                self.resampler.run::<U8x4>(
                    frame.planes[0],
                    w,
                    h,
                    frame.strides[0],
                    luma_box,
                    &mut self.scratch,
                    dw,
                    dh,
                )?;
                (f, 4)
            }
        })
    }

    /// Normalises the resampled packed pixels in `self.scratch` (`lb.width` x `lb.height`) into
    /// planar `out` at the letterbox offset; everything else, and pixels `keep` drops, is 0.
    fn finish_placed(
        &self,
        format: PixelFormat,
        bpp: usize,
        lb: &Letterbox,
        keep: Option<&[bool]>,
        out: &mut [f32],
    ) {
        let (oh, ow) = self.output_size();
        let (ow, oh) = (ow as usize, oh as usize);
        let plane = ow * oh;
        out.fill(0.0);
        let (r_out, rest) = out.split_at_mut(plane);
        let (g_out, b_out) = rest.split_at_mut(plane);
        let offs = format.rgb_offsets();
        let [lr, lg, lb_] = &self.lut;
        let (w, left, top) = (lb.width as usize, lb.left as usize, lb.top as usize);
        for (y, row) in self.scratch.chunks_exact(w * bpp).enumerate() {
            let start = (top + y) * ow + left;
            for (x, p) in row.chunks_exact(bpp).enumerate() {
                let i = start + x;
                if keep.is_some_and(|k| !k[i]) {
                    continue;
                }
                r_out[i] = lr[p[offs[0]] as usize];
                g_out[i] = lg[p[offs[1]] as usize];
                b_out[i] = lb_[p[offs[2]] as usize];
            }
        }
    }

    /// Normalises the resampled packed pixels in `self.scratch` into planar `out`, padding if
    /// the crop is larger than the resized image.
    fn finish_packed(&self, format: PixelFormat, bpp: usize, g: &Geometry, out: &mut [f32]) {
        let plane = g.out_w as usize * g.out_h as usize;
        let (r_out, rest) = out.split_at_mut(plane);
        let (g_out, b_out) = rest.split_at_mut(plane);
        let offs = format.rgb_offsets();
        let [lr, lg, lb] = &self.lut;
        if g.src_box.is_some() {
            let px = self.scratch.chunks_exact(bpp);
            for (((p, r), gg), b) in px
                .zip(r_out.iter_mut())
                .zip(g_out.iter_mut())
                .zip(b_out.iter_mut())
            {
                *r = lr[p[offs[0]] as usize];
                *gg = lg[p[offs[1]] as usize];
                *b = lb[p[offs[2]] as usize];
            }
            return;
        }
        // Padding path: zeros (black before normalisation) around the resized image.
        r_out.fill(lr[0]);
        g_out.fill(lg[0]);
        b_out.fill(lb[0]);
        let (ow, oh) = (g.out_w as i64, g.out_h as i64);
        let (rw, rh) = (g.resized_w as i64, g.resized_h as i64);
        // Crop offset inside the resized image when it is larger on one axis.
        let crop_left = ((rw - ow) / 2).max(0);
        let crop_top = ((rh - oh) / 2).max(0);
        for oy in 0..oh {
            let ry = oy - g.pad.1 + crop_top;
            if ry < 0 || ry >= rh {
                continue;
            }
            for ox in 0..ow {
                let rx = ox - g.pad.0 + crop_left;
                if rx < 0 || rx >= rw {
                    continue;
                }
                let p = &self.scratch[(ry * rw + rx) as usize * bpp..][..bpp];
                let i = (oy * ow + ox) as usize;
                r_out[i] = lr[p[offs[0]] as usize];
                g_out[i] = lg[p[offs[1]] as usize];
                b_out[i] = lb[p[offs[2]] as usize];
            }
        }
    }

    /// Decodes nothing: preprocesses tightly packed 8-bit RGB.
    pub fn run_rgb8(&mut self, rgb: &[u8], width: u32, height: u32, out: &mut [f32]) -> Result<()> {
        let frame = FrameRef::packed(PixelFormat::Rgb, width, height, rgb)?;
        self.run(&frame, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(w: u32, h: u32, bpp: usize, seed: u64) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..w as usize * h as usize * bpp)
            .map(|_| rng.u8(..))
            .collect()
    }

    #[test]
    fn crop_box_equals_resize_then_crop() {
        // Resampling only the cropped box must give the pixels of a full resize followed by the
        // centre crop, which is what the reference does.
        let cfg = PreprocessConfig::default();
        for (w, h) in [(640, 480), (333, 517), (1920, 1080), (225, 224)] {
            let src = noise(w, h, 3, u64::from(w));
            let mut p = Preprocessor::new(cfg.clone()).unwrap();
            let mut fast = vec![0f32; p.output_len()];
            p.run_rgb8(&src, w, h, &mut fast).unwrap();

            let (rw, rh) = cfg.resized_size(w, h);
            let mut full = Vec::new();
            p.resampler
                .run::<U8x3>(
                    &src,
                    w,
                    h,
                    w as usize * 3,
                    [0.0, 0.0, f64::from(w), f64::from(h)],
                    &mut full,
                    rw,
                    rh,
                )
                .unwrap();
            let (left, top) = ((rw - 224) / 2, (rh - 224) / 2);
            let mut worst = 0f32;
            for y in 0..224usize {
                for x in 0..224usize {
                    for c in 0..3usize {
                        let v =
                            full[((y + top as usize) * rw as usize + x + left as usize) * 3 + c];
                        let want = p.lut[c][v as usize];
                        worst = worst.max((fast[c * 224 * 224 + y * 224 + x] - want).abs());
                    }
                }
            }
            // One 8-bit step is 1/255/0.26 = 0.015 after normalisation.
            assert_eq!(worst, 0.0, "{w}x{h}: max difference {worst}");
        }
    }

    #[test]
    fn formats_agree_with_rgb() {
        let cfg = PreprocessConfig::default();
        let (w, h) = (300u32, 200u32);
        let rgb = noise(w, h, 3, 7);
        let mut p = Preprocessor::new(cfg).unwrap();
        let mut want = vec![0f32; p.output_len()];
        p.run_rgb8(&rgb, w, h, &mut want).unwrap();
        let px = |i: usize| [rgb[i * 3], rgb[i * 3 + 1], rgb[i * 3 + 2]];
        let n = (w * h) as usize;
        let cases: Vec<(PixelFormat, Vec<u8>)> = vec![
            (
                PixelFormat::Bgr,
                (0..n)
                    .flat_map(|i| {
                        let [r, g, b] = px(i);
                        [b, g, r]
                    })
                    .collect(),
            ),
            (
                PixelFormat::Rgba,
                (0..n)
                    .flat_map(|i| {
                        let [r, g, b] = px(i);
                        [r, g, b, 7]
                    })
                    .collect(),
            ),
            (
                PixelFormat::Bgrx,
                (0..n)
                    .flat_map(|i| {
                        let [r, g, b] = px(i);
                        [b, g, r, 0]
                    })
                    .collect(),
            ),
            (
                PixelFormat::Argb,
                (0..n)
                    .flat_map(|i| {
                        let [r, g, b] = px(i);
                        [255, r, g, b]
                    })
                    .collect(),
            ),
            (
                PixelFormat::Xbgr,
                (0..n)
                    .flat_map(|i| {
                        let [r, g, b] = px(i);
                        [0, b, g, r]
                    })
                    .collect(),
            ),
        ];
        for (format, data) in cases {
            let frame = FrameRef::packed(format, w, h, &data).unwrap();
            let mut got = vec![0f32; want.len()];
            p.run(&frame, &mut got).unwrap();
            assert_eq!(got, want, "{format:?}");
        }
    }

    #[test]
    fn strided_rows_are_read_by_stride() {
        let (w, h) = (101u32, 67u32);
        let rgb = noise(w, h, 3, 3);
        let stride = 101 * 3 + 5;
        let mut padded = vec![0xAAu8; stride * h as usize];
        for y in 0..h as usize {
            padded[y * stride..y * stride + 303].copy_from_slice(&rgb[y * 303..(y + 1) * 303]);
        }
        let mut p = Preprocessor::new(PreprocessConfig::default()).unwrap();
        let mut want = vec![0f32; p.output_len()];
        p.run_rgb8(&rgb, w, h, &mut want).unwrap();
        let frame = FrameRef {
            format: PixelFormat::Rgb,
            width: w,
            height: h,
            planes: [&padded, &[], &[]],
            strides: [stride, 0, 0],
            color: YuvColor::default(),
        };
        let mut got = vec![0f32; want.len()];
        p.run(&frame, &mut got).unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn solid_yuv_colours_come_out_as_rgb() {
        // Studio-range BT.601 red is Y=81, U=90, V=240.
        let (w, h) = (64u32, 48u32);
        let y = vec![81u8; 64 * 48];
        let u = vec![90u8; 32 * 24];
        let v = vec![240u8; 32 * 24];
        let frame = FrameRef {
            format: PixelFormat::I420,
            width: w,
            height: h,
            planes: [&y, &u, &v],
            strides: [64, 32, 32],
            color: YuvColor::default(),
        };
        let mut p = Preprocessor::new(PreprocessConfig::default()).unwrap();
        let mut out = vec![0f32; p.output_len()];
        p.run(&frame, &mut out).unwrap();
        let plane = 224 * 224;
        let red = p.lut[0][255];
        let green = p.lut[1][0];
        assert!(
            (out[plane / 2] - red).abs() < 0.05,
            "R {} vs {red}",
            out[plane / 2]
        );
        assert!(
            (out[plane + plane / 2] - green).abs() < 0.05,
            "G {} vs {green}",
            out[plane + plane / 2]
        );

        let uv: Vec<u8> = (0..32 * 24).flat_map(|_| [90u8, 240u8]).collect();
        let nv12 = FrameRef {
            format: PixelFormat::Nv12,
            planes: [&y, &uv, &[]],
            strides: [64, 64, 0],
            ..frame
        };
        let mut out2 = vec![0f32; p.output_len()];
        p.run(&nv12, &mut out2).unwrap();
        assert_eq!(out, out2);
    }

    #[test]
    fn small_images_are_padded_like_transformers() {
        // Exact resize to 100x100 then a 224 crop pads with zeros.
        let cfg = PreprocessConfig {
            resize: Resize::Exact {
                height: 100,
                width: 100,
            },
            ..PreprocessConfig::default()
        };
        let mut p = Preprocessor::new(cfg).unwrap();
        let white = vec![255u8; 50 * 50 * 3];
        let mut out = vec![0f32; p.output_len()];
        p.run_rgb8(&white, 50, 50, &mut out).unwrap();
        assert_eq!(out[0], p.lut[0][0]);
        assert_eq!(out[112 * 224 + 112], p.lut[0][255]);
    }

    #[test]
    fn rejects_short_buffers() {
        let mut p = Preprocessor::new(PreprocessConfig::default()).unwrap();
        let mut out = vec![0f32; p.output_len()];
        assert!(FrameRef::packed(PixelFormat::Rgb, 10, 10, &[0u8; 299]).is_err());
        let err = p.run_rgb8(&[0u8; 300], 10, 10, &mut out[..10]).unwrap_err();
        assert!(err.to_string().contains("needs"), "{err}");
    }
}
