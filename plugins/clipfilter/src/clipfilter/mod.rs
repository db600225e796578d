//! The `clipfilter` GStreamer element.
//!
//! `clipfilter` samples raw video frames, asks the shared CLIP [`Engine`](clipfilter::engine::Engine)
//! how well they match the prompts of a label set, tells the application through the bus, and
//! can drop, blank or pixelate what matches before it reaches an encoder or a viewer.
//!
//! ```text
//! gst-launch-1.0 -m filesrc location=in.mp4 ! decodebin ! videoconvert ! \
//!     clipfilter model=/var/lib/clipfilter/models/clip-vit-base-patch32 \
//!                prompts="a knife;a gun;people talking" threshold=0.6 ! fakesink
//! ```
//!
//! # Behaviour
//! - A `BaseTransform` working in place. It is passthrough unless a label's action is `blank` or
//!   `pixelate` (then buffers are made writable); `drop` works in passthrough too.
//! - Caps: `video/x-raw` in RGB, BGR, RGBA, BGRA, ARGB, ABGR, RGBx, BGRx, xRGB, xBGR, GRAY8,
//!   I420, YV12, NV12 and NV21, any size and framerate, with strides. Caps may change
//!   mid-stream (a new resolution is fine).
//! - Sampling: a frame is sampled when its stream time is at least `interval` past the previous
//!   sample (on a grid anchored at the first sample), so samples follow the media, not the wall
//!   clock. Other frames cost a timestamp check. Only sampled frames are converted and resized,
//!   straight from the mapped frame at the model's input size.
//! - `mode=async` (default): sampled frames go to the engine's inference worker over a bounded
//!   channel; when it is busy the newest frame replaces the waiting one (counted in `stats` as
//!   `dropped`). The streaming thread never waits for inference; verdicts apply from the next
//!   buffer after they arrive. `mode=sync`: each sampled buffer is held until its verdict (at
//!   most `sync-timeout`, then the element posts an error), so a matching frame is never let
//!   through.
//! - What the model sees (`fit`, `tiles`, `regions`, `whole-frame`): by default the whole frame,
//!   letterboxed (`fit=pad`); `fit=crop` is the reference's centre square (a 16:9 frame loses its
//!   sides), `fit=crops` covers the frame with overlapping squares. Tiles and regions add crops,
//!   each letterboxed; all crops of a sample are cut straight from the mapped planes and inferred
//!   together as one job of the shared worker, which serves streams one image at a time in turn,
//!   so a tiled camera does not hold the others up. A label's score is its best crop (labels of
//!   a label set can be limited to regions); messages say which crop won and where it is.
//!   Regions are relative (0..1), so a new resolution keeps them in place.
//! - Hysteresis: a label starts matching after `enter-samples` consecutive samples pass its
//!   threshold and stops after `leave-samples` consecutive samples fail it.
//! - Flushes discard verdicts still in flight and end open episodes; EOS waits (at most
//!   `sync-timeout`) for verdicts in flight, then ends open episodes, so every `start` has an
//!   `end`.
//! - The labels file is watched (its folder, so that editors' atomic replacements are seen) and
//!   reloaded while playing; labels keep their state across reloads when their name stays.
//!
//! # Label sets
//! Either `labels` (a TOML file, see [`clipfilter::labels`]) or `prompts`: labels separated by `;`
//! (or new lines), each named after its prompt, e.g. `prompts="a knife;a gun;people talking"`.
//! Labels without their own rules take `threshold`/`threshold-kind`, `action`, `enter-samples`
//! and `leave-samples`.
//!
//! # Bus messages
//! Element messages (`gst::MessageView::Element`) whose structure is one of:
//!
//! `clipfilter-match`: a label started or stopped matching.
//! - `state` (string): `start` or `end`
//! - `label` (string): the label's name
//! - `score` (double): cosine similarity of the deciding sample with the label
//! - `probability` (double): softmax probability of the label among the set
//! - `pts`, `running-time`, `stream-time` (guint64 clock times, `GST_CLOCK_TIME_NONE` when
//!   unknown): of the deciding sample; for ends forced by EOS, a flush, a reload or a stop, the
//!   end of the last buffer seen
//! - `frame` (guint64): 0-based number of the frame among those the element has seen since it
//!   started
//! - `reason` (string): `sample` (a verdict), `eos`, `flush`, `reload` (the label was removed),
//!   `stop`
//! - `crop` (string), `crop-kind` (string: `frame`, `crop`, `tile` or `region`), `box` (array of
//!   4 guint: x, y, width, height in pixels of the current frame size), `rect` (array of 4
//!   doubles: the same box in fractions of the frame): the crop whose score decided (for ends
//!   that no sample decides, the label's last winning crop); absent before any verdict. With
//!   `fit=crop` the frame crop's box is the centre square the model sees, with `fit=pad` the
//!   whole frame; `fit=crops` names `left`/`right` (`top`/`bottom` for portrait frames)
//! - `snapshot` (GstSample, only on `start` when `snapshot=true`): the frame that started the
//!   match, with its caps
//!
//! `clipfilter-scores` (one per sampled frame when `post-scores=true`):
//! - `pts`, `running-time`, `stream-time`, `frame`: as above
//! - `labels` (array of strings), `scores` (array of doubles, cosine), `probabilities` (array of
//!   doubles), in label-set order: each label's best crop
//! - `crops`, `crop-kinds` (arrays of strings), `boxes` (array of arrays of 4 guint), `rects`
//!   (array of arrays of 4 doubles): each label's winning crop, in label-set order (empty for a
//!   label that may use none of the crops)
//! - `inferred` (guint): crops inferred for this sample (0 when the scene gate found every crop
//!   unchanged and the last verdict stands)
//! - `latency` (guint64 nanoseconds): from submission to verdict
//!
//! `clipfilter-labels-reloaded`: a changed labels file is in use.
//! - `path` (string), `labels` (array of strings: the new set's names)
//!
//! # Remote inference
//! `backend=triton` sends the towers' work to Triton Inference Server: `endpoints`
//! (`grpc://gpu1:8001,grpc://gpu2:8001`), `wire-format` (fp32, fp16 or uint8: 8-bit RGB that the
//! server's model normalises), `image-model-name` / `text-model-name` (default: the names
//! `clipfilterd model export-triton` writes), `remote-timeout`, `connect-timeout`,
//! `start-timeout`, `tls-ca` / `tls-certificate` / `tls-key` / `tls-domain` for `grpcs://`
//! (TLS needs the plugin's `tls` feature; clipfilterd has it). `model` still names the local
//! folder: its tokenizer and preprocessing are used here, and the server's models are checked
//! against it at start. When no endpoint is ready, samples are dropped and counted (`stats`:
//! `unavailable`), unless `fallback=local`.
//!
//! A labels file that fails to reload posts a GStreamer warning message (`GST_MESSAGE_WARNING`)
//! naming the file, line and field; the previous set stays in use.

mod actions;
mod imp;
pub mod messages;
pub mod properties;
mod sampler;
mod state;
mod stats;

use gst::glib;
use gst::prelude::*;

use clipfilter::crops::Fit;
use clipfilter::labels::{Action, Threshold};
use clipfilter::model::Variant;
use clipfilter::remote::{Fallback, WireFormat};

glib::wrapper! {
    /// The `clipfilter` element.
    pub struct ClipFilter(ObjectSubclass<imp::ClipFilter>)
        @extends gst_base::BaseTransform, gst::Element, gst::Object;
}

/// What happens to frames while a label that asks for it matches.
#[derive(Debug, Default, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstClipFilterAction")]
pub enum ClipFilterAction {
    /// Report only.
    #[default]
    #[enum_value(name = "None: report matches only", nick = "none")]
    None = 0,
    /// Drop the frames.
    #[enum_value(name = "Drop: drop the frames", nick = "drop")]
    Drop = 1,
    /// Paint the frames black.
    #[enum_value(name = "Blank: paint the frames black", nick = "blank")]
    Blank = 2,
    /// Replace the picture with coarse blocks.
    #[enum_value(
        name = "Pixelate: replace the picture with coarse blocks",
        nick = "pixelate"
    )]
    Pixelate = 3,
}

impl From<ClipFilterAction> for Action {
    fn from(a: ClipFilterAction) -> Action {
        match a {
            ClipFilterAction::None => Action::None,
            ClipFilterAction::Drop => Action::Drop,
            ClipFilterAction::Blank => Action::Blank,
            ClipFilterAction::Pixelate => Action::Pixelate,
        }
    }
}

impl From<Action> for ClipFilterAction {
    fn from(a: Action) -> ClipFilterAction {
        match a {
            Action::None => ClipFilterAction::None,
            Action::Drop => ClipFilterAction::Drop,
            Action::Blank => ClipFilterAction::Blank,
            Action::Pixelate => ClipFilterAction::Pixelate,
        }
    }
}

/// How the whole frame becomes the model's square input.
#[derive(Debug, Default, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstClipFilterFit")]
pub enum ClipFilterFit {
    /// The reference's centre crop.
    #[enum_value(
        name = "Crop: CLIP's own centre square (exact CLIPImageProcessor parity); a 16:9 frame loses its left and right 22%",
        nick = "crop"
    )]
    Crop = 0,
    /// Letterbox.
    #[default]
    #[enum_value(
        name = "Pad: the whole frame letterboxed into the square (borders at the model's mean colour), one inference, smaller scale",
        nick = "pad"
    )]
    Pad = 1,
    /// Overlapping squares covering the frame.
    #[enum_value(
        name = "Crops: overlapping squares covering the whole frame (2 for 16:9), one inference each, best score over them, the winning square reported",
        nick = "crops"
    )]
    Crops = 2,
}

impl From<ClipFilterFit> for Fit {
    fn from(f: ClipFilterFit) -> Fit {
        match f {
            ClipFilterFit::Crop => Fit::Crop,
            ClipFilterFit::Pad => Fit::Pad,
            ClipFilterFit::Crops => Fit::Crops,
        }
    }
}

impl From<Fit> for ClipFilterFit {
    fn from(f: Fit) -> ClipFilterFit {
        match f {
            Fit::Crop => ClipFilterFit::Crop,
            Fit::Pad => ClipFilterFit::Pad,
            Fit::Crops => ClipFilterFit::Crops,
        }
    }
}

/// What `blank` and `pixelate` cover.
#[derive(Debug, Default, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstClipFilterActionScope")]
pub enum ClipFilterActionScope {
    /// The whole frame.
    #[default]
    #[enum_value(name = "Frame: the whole frame", nick = "frame")]
    Frame = 0,
    /// The crop that matched.
    #[enum_value(
        name = "Region: only the box of the crop (region, tile or frame square) that made each label match",
        nick = "region"
    )]
    Region = 1,
}

/// Whether the streaming thread waits for verdicts.
#[derive(Debug, Default, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstClipFilterMode")]
pub enum ClipFilterMode {
    /// Never wait: verdicts apply from the next buffer after they arrive.
    #[default]
    #[enum_value(
        name = "Async: never block the streaming thread; verdicts apply from the next buffer",
        nick = "async"
    )]
    Async = 0,
    /// Hold each sampled buffer until its verdict.
    #[enum_value(
        name = "Sync: hold each sampled buffer until its verdict (strict moderation)",
        nick = "sync"
    )]
    Sync = 1,
}

/// What the `threshold` property is compared with.
#[derive(Debug, Default, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstClipFilterThresholdKind")]
pub enum ClipFilterThresholdKind {
    /// Softmax probability of the label among the set.
    #[default]
    #[enum_value(
        name = "Probability: softmax probability of the label among the set, in (0, 1]",
        nick = "probability"
    )]
    Probability = 0,
    /// Raw cosine similarity between the frame and the label.
    #[enum_value(
        name = "Cosine: cosine similarity between frame and label, in [-1, 1]",
        nick = "cosine"
    )]
    Cosine = 1,
}

impl ClipFilterThresholdKind {
    /// The library's threshold of this kind at `value`.
    pub fn threshold(self, value: f64) -> Threshold {
        match self {
            ClipFilterThresholdKind::Probability => Threshold::Probability(value as f32),
            ClipFilterThresholdKind::Cosine => Threshold::Cosine(value as f32),
        }
    }

    /// The `threshold-kind` and `threshold` property values of `threshold`.
    pub fn of(threshold: Threshold) -> (ClipFilterThresholdKind, f64) {
        match threshold {
            Threshold::Probability(v) => (ClipFilterThresholdKind::Probability, f64::from(v)),
            Threshold::Cosine(v) => (ClipFilterThresholdKind::Cosine, f64::from(v)),
        }
    }
}

/// Which weights of the model folder to load.
#[derive(Debug, Default, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstClipFilterVariant")]
pub enum ClipFilterVariant {
    /// `*_model.onnx`: float32.
    #[default]
    #[enum_value(name = "fp32: onnx/*_model.onnx, float32 weights", nick = "fp32")]
    Fp32 = 0,
    /// `*_model_fp16.onnx`: half precision (GPUs).
    #[enum_value(
        name = "fp16: onnx/*_model_fp16.onnx, half precision (GPUs)",
        nick = "fp16"
    )]
    Fp16 = 1,
    /// `*_model_quantized.onnx`: int8 (fast on CPUs).
    #[enum_value(
        name = "quantized: onnx/*_model_quantized.onnx, int8 (fast on CPUs)",
        nick = "quantized"
    )]
    Quantized = 2,
}

impl From<Variant> for ClipFilterVariant {
    fn from(v: Variant) -> ClipFilterVariant {
        match v {
            Variant::Fp32 => ClipFilterVariant::Fp32,
            Variant::Fp16 => ClipFilterVariant::Fp16,
            Variant::Quantized => ClipFilterVariant::Quantized,
        }
    }
}

impl From<ClipFilterVariant> for Variant {
    fn from(v: ClipFilterVariant) -> Variant {
        match v {
            ClipFilterVariant::Fp32 => Variant::Fp32,
            ClipFilterVariant::Fp16 => Variant::Fp16,
            ClipFilterVariant::Quantized => Variant::Quantized,
        }
    }
}

/// Where the CLIP towers run.
#[derive(Debug, Default, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstClipFilterBackend")]
pub enum ClipFilterBackend {
    /// ONNX Runtime in this process.
    #[default]
    #[enum_value(name = "local: ONNX Runtime in this process", nick = "local")]
    Local = 0,
    /// Triton Inference Server endpoints (KServe v2 gRPC).
    #[enum_value(
        name = "triton: models on Triton Inference Server endpoints (see endpoints)",
        nick = "triton"
    )]
    Triton = 1,
}

/// How image batches travel to a Triton server.
#[derive(Debug, Default, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstClipFilterWireFormat")]
pub enum ClipFilterWireFormat {
    /// Normalised float32 (602 KB per 224x224 sample).
    #[default]
    #[enum_value(name = "fp32: normalised float32, 4 bytes a value", nick = "fp32")]
    Fp32 = 0,
    /// Normalised float16.
    #[enum_value(name = "fp16: normalised float16, 2 bytes a value", nick = "fp16")]
    Fp16 = 1,
    /// 8-bit RGB; the server's model normalises (`clipfilterd model export-triton`).
    #[enum_value(
        name = "uint8: 8-bit RGB, normalised by the server's model, 1 byte a value",
        nick = "uint8"
    )]
    Uint8 = 2,
}

impl From<WireFormat> for ClipFilterWireFormat {
    fn from(w: WireFormat) -> Self {
        match w {
            WireFormat::Fp32 => ClipFilterWireFormat::Fp32,
            WireFormat::Fp16 => ClipFilterWireFormat::Fp16,
            WireFormat::Uint8 => ClipFilterWireFormat::Uint8,
        }
    }
}

impl From<ClipFilterWireFormat> for WireFormat {
    fn from(w: ClipFilterWireFormat) -> Self {
        match w {
            ClipFilterWireFormat::Fp32 => WireFormat::Fp32,
            ClipFilterWireFormat::Fp16 => WireFormat::Fp16,
            ClipFilterWireFormat::Uint8 => WireFormat::Uint8,
        }
    }
}

/// What a Triton backend does when no endpoint is ready.
#[derive(Debug, Default, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstClipFilterFallback")]
pub enum ClipFilterFallback {
    /// Drop the samples (counted in stats as unavailable).
    #[default]
    #[enum_value(name = "none: drop the samples and count them", nick = "none")]
    None = 0,
    /// Run them on the local model folder.
    #[enum_value(name = "local: run them on the local model folder", nick = "local")]
    Local = 1,
}

impl From<ClipFilterFallback> for Fallback {
    fn from(f: ClipFilterFallback) -> Self {
        match f {
            ClipFilterFallback::None => Fallback::None,
            ClipFilterFallback::Local => Fallback::Local,
        }
    }
}

impl From<Fallback> for ClipFilterFallback {
    fn from(f: Fallback) -> Self {
        match f {
            Fallback::None => ClipFilterFallback::None,
            Fallback::Local => ClipFilterFallback::Local,
        }
    }
}

/// The value of the element's enum `T` whose nick (as in gst-launch) is `nick`.
pub fn from_nick<T>(nick: &str) -> Option<T>
where
    T: glib::types::StaticType + for<'a> glib::value::FromValue<'a>,
{
    glib::EnumClass::with_type(T::static_type())?
        .to_value_by_nick(nick)?
        .get::<T>()
        .ok()
}

/// The nicks of the element's enum `T`, for messages that list the choices.
pub fn nicks<T: glib::types::StaticType>() -> Vec<String> {
    glib::EnumClass::with_type(T::static_type())
        .map(|c| c.values().iter().map(|v| v.nick().to_string()).collect())
        .unwrap_or_default()
}

/// Registers `clipfilter` with `plugin`. Loads neither ONNX Runtime nor a model. (Programs
/// that link the crate register the plugin with [`crate::plugin_register_static`].)
pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    ClipFilterAction::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    ClipFilterMode::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    ClipFilterThresholdKind::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    ClipFilterVariant::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    ClipFilterFit::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    ClipFilterActionScope::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "clipfilter",
        gst::Rank::NONE,
        ClipFilter::static_type(),
    )
}
