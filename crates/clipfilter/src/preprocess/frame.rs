//! Borrowed views of video frames in the pixel formats clipfilter accepts.

use crate::error::{Error, Result};

/// Pixel layouts of incoming frames. Packed formats name their bytes in memory order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    Rgb,
    Bgr,
    Rgba,
    Bgra,
    Argb,
    Abgr,
    Rgbx,
    Bgrx,
    Xrgb,
    Xbgr,
    Gray8,
    /// Planar Y, U, V with 2x2 subsampled chroma.
    I420,
    /// Planar Y, V, U with 2x2 subsampled chroma.
    Yv12,
    /// Y plane, then interleaved U/V at 2x2 subsampling.
    Nv12,
    /// Y plane, then interleaved V/U at 2x2 subsampling.
    Nv21,
}

impl PixelFormat {
    /// Bytes per pixel of a packed format, or `None` for planar YUV.
    pub fn packed_bytes(self) -> Option<usize> {
        use PixelFormat::*;
        match self {
            Rgb | Bgr => Some(3),
            Rgba | Bgra | Argb | Abgr | Rgbx | Bgrx | Xrgb | Xbgr => Some(4),
            Gray8 => Some(1),
            I420 | Yv12 | Nv12 | Nv21 => None,
        }
    }

    /// Byte offsets of R, G and B inside a packed pixel.
    pub(crate) fn rgb_offsets(self) -> [usize; 3] {
        use PixelFormat::*;
        match self {
            Rgb | Rgba | Rgbx => [0, 1, 2],
            Bgr | Bgra | Bgrx => [2, 1, 0],
            Argb | Xrgb => [1, 2, 3],
            Abgr | Xbgr => [3, 2, 1],
            Gray8 | I420 | Yv12 | Nv12 | Nv21 => [0, 0, 0],
        }
    }

    /// Number of planes.
    pub fn planes(self) -> usize {
        use PixelFormat::*;
        match self {
            I420 | Yv12 => 3,
            Nv12 | Nv21 => 2,
            _ => 1,
        }
    }

    /// Parses GStreamer's format names (`RGB`, `BGRx`, `I420`, `NV12`...).
    pub fn from_gst_name(name: &str) -> Option<Self> {
        use PixelFormat::*;
        Some(match name {
            "RGB" => Rgb,
            "BGR" => Bgr,
            "RGBA" => Rgba,
            "BGRA" => Bgra,
            "ARGB" => Argb,
            "ABGR" => Abgr,
            "RGBx" => Rgbx,
            "BGRx" => Bgrx,
            "xRGB" => Xrgb,
            "xBGR" => Xbgr,
            "GRAY8" => Gray8,
            "I420" => I420,
            "YV12" => Yv12,
            "NV12" => Nv12,
            "NV21" => Nv21,
            _ => return None,
        })
    }

    /// GStreamer's name for the format.
    pub fn gst_name(self) -> &'static str {
        use PixelFormat::*;
        match self {
            Rgb => "RGB",
            Bgr => "BGR",
            Rgba => "RGBA",
            Bgra => "BGRA",
            Argb => "ARGB",
            Abgr => "ABGR",
            Rgbx => "RGBx",
            Bgrx => "BGRx",
            Xrgb => "xRGB",
            Xbgr => "xBGR",
            Gray8 => "GRAY8",
            I420 => "I420",
            Yv12 => "YV12",
            Nv12 => "NV12",
            Nv21 => "NV21",
        }
    }

    /// Every supported format.
    pub const ALL: [PixelFormat; 15] = {
        use PixelFormat::*;
        [
            Rgb, Bgr, Rgba, Bgra, Argb, Abgr, Rgbx, Bgrx, Xrgb, Xbgr, Gray8, I420, Yv12, Nv12, Nv21,
        ]
    };
}

/// The YUV -> RGB matrix of a YUV frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum YuvMatrix {
    /// ITU-R BT.601 (standard definition, most webcams and JPEG).
    #[default]
    Bt601,
    /// ITU-R BT.709 (HD video).
    Bt709,
    /// ITU-R BT.2020.
    Bt2020,
}

/// Colour description of a YUV frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct YuvColor {
    pub matrix: YuvMatrix,
    /// Full range (0..255) rather than studio range (16..235 / 16..240).
    pub full_range: bool,
}

/// A borrowed frame: up to three planes with their strides.
#[derive(Debug, Clone, Copy)]
pub struct FrameRef<'a> {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    pub planes: [&'a [u8]; 3],
    pub strides: [usize; 3],
    pub color: YuvColor,
}

impl<'a> FrameRef<'a> {
    /// A tightly packed single-plane frame (RGB, BGRA, GRAY8...).
    pub fn packed(format: PixelFormat, width: u32, height: u32, data: &'a [u8]) -> Result<Self> {
        let bpp = format.packed_bytes().ok_or_else(|| {
            Error::invalid(
                "frame",
                format!("{} is not a packed format", format.gst_name()),
            )
        })?;
        let frame = FrameRef {
            format,
            width,
            height,
            planes: [data, &[], &[]],
            strides: [width as usize * bpp, 0, 0],
            color: YuvColor::default(),
        };
        frame.validate()?;
        Ok(frame)
    }

    /// Checks that every plane is large enough for the size and strides.
    pub fn validate(&self) -> Result<()> {
        if self.width == 0 || self.height == 0 {
            return Err(Error::invalid(
                "frame",
                format!("empty frame {}x{}", self.width, self.height),
            ));
        }
        let (w, h) = (self.width as usize, self.height as usize);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let needs: [(usize, usize); 3] = match self.format {
            PixelFormat::I420 | PixelFormat::Yv12 => [(w, h), (cw, ch), (cw, ch)],
            PixelFormat::Nv12 | PixelFormat::Nv21 => [(w, h), (cw * 2, ch), (0, 0)],
            f => [(w * f.packed_bytes().unwrap_or(1), h), (0, 0), (0, 0)],
        };
        for (i, (row_bytes, rows)) in needs.iter().enumerate() {
            if *rows == 0 {
                continue;
            }
            let stride = self.strides[i];
            if stride < *row_bytes {
                return Err(Error::invalid(
                    "frame",
                    format!(
                        "plane {i}: stride {stride} is smaller than a row of {row_bytes} bytes"
                    ),
                ));
            }
            let need = stride * (rows - 1) + row_bytes;
            if self.planes[i].len() < need {
                return Err(Error::invalid(
                    "frame",
                    format!(
                        "plane {i} of a {}x{} {} frame has {} bytes, needs {need}",
                        self.width,
                        self.height,
                        self.format.gst_name(),
                        self.planes[i].len()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A box of a frame in whole pixels: left, top, width, height (`[x, y, width, height]` in JSON).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(into = "[u32; 4]", from = "[u32; 4]")]
pub struct PixelBox {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl PixelBox {
    pub const fn new(x: u32, y: u32, width: u32, height: u32) -> Self {
        PixelBox {
            x,
            y,
            width,
            height,
        }
    }

    /// Right edge (exclusive).
    pub fn right(&self) -> u32 {
        self.x + self.width
    }

    /// Bottom edge (exclusive).
    pub fn bottom(&self) -> u32 {
        self.y + self.height
    }

    /// Whether the pixel at (`x`, `y`) lies inside.
    pub fn contains(&self, x: u32, y: u32) -> bool {
        x >= self.x && x < self.right() && y >= self.y && y < self.bottom()
    }

    /// `[x, y, width, height]`.
    pub fn to_array(self) -> [u32; 4] {
        [self.x, self.y, self.width, self.height]
    }
}

impl From<PixelBox> for [u32; 4] {
    fn from(b: PixelBox) -> [u32; 4] {
        b.to_array()
    }
}

impl From<[u32; 4]> for PixelBox {
    fn from([x, y, width, height]: [u32; 4]) -> PixelBox {
        PixelBox::new(x, y, width, height)
    }
}

impl std::fmt::Display for PixelBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}x{} at ({}, {})",
            self.width, self.height, self.x, self.y
        )
    }
}
