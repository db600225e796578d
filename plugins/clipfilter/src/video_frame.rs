//! GStreamer raw video frames as preprocessing input, shared by the element (sampled frames)
//! and the daemon (snapshots).

use gst_video::VideoFrameExt;
use gst_video::{VideoColorMatrix, VideoColorRange};

use clipfilter::error::{Error, Result};
use clipfilter::preprocess::{FrameRef, PixelFormat, YuvColor, YuvMatrix};

/// The pixel format and YUV colour of negotiated raw video, or `None` when the format is not
/// one the preprocessor reads.
pub fn format_of(info: &gst_video::VideoInfo) -> Option<(PixelFormat, YuvColor)> {
    let format = PixelFormat::from_gst_name(info.format().to_str())?;
    let colorimetry = info.colorimetry();
    let color = YuvColor {
        matrix: match colorimetry.matrix() {
            VideoColorMatrix::Bt709 => YuvMatrix::Bt709,
            VideoColorMatrix::Bt2020 => YuvMatrix::Bt2020,
            _ => YuvMatrix::Bt601,
        },
        full_range: colorimetry.range() == VideoColorRange::Range0_255,
    };
    Some((format, color))
}

/// The planes of a mapped frame, with the format and colour from [`format_of`].
pub fn frame_ref<'a>(
    frame: &'a gst_video::VideoFrameRef<&gst::BufferRef>,
    format: PixelFormat,
    color: YuvColor,
) -> Result<FrameRef<'a>> {
    let mut planes: [&[u8]; 3] = [&[], &[], &[]];
    let mut strides = [0usize; 3];
    for i in 0..(frame.n_planes() as usize).min(3) {
        planes[i] = frame
            .plane_data(i as u32)
            .map_err(|e| Error::invalid("frame", format!("plane {i}: {e}")))?;
        strides[i] = usize::try_from(frame.plane_stride()[i])
            .map_err(|_| Error::invalid("frame", "negative stride"))?;
    }
    Ok(FrameRef {
        format,
        width: frame.width(),
        height: frame.height(),
        planes,
        strides,
        color,
    })
}
