//! Building one GStreamer pipeline from a `[[pipeline]]` table:
//!
//! ```text
//! <source part> ! videoconvert ! clipfilter ! <sink part, default: fakesink>
//! ```
//!
//! The source part comes from [`crate::daemon::source::build`]; `clipfilter` gets the
//! model, labels and rules as properties, with `post-scores` on (for the score histograms) and
//! `snapshot` on when snapshots are kept.

use gst::prelude::*;

use std::path::PathBuf;

use clipfilter::engine::Backend;
use clipfilter::remote::RemoteConfig;
use gstclipfilter::clipfilter::properties as props;
use gstclipfilter::clipfilter::{
    ClipFilterAction, ClipFilterBackend, ClipFilterFallback, ClipFilterThresholdKind,
    ClipFilterVariant, ClipFilterWireFormat,
};

use crate::daemon::config::source::SourceKind;
use crate::daemon::config::{LabelSource, PipelineConfig};
use crate::daemon::model::ElementModel;
use crate::daemon::source::{self, make};
use clipfilter::error::{Error, Result};

/// A built (not yet started) pipeline.
#[derive(Debug)]
pub struct Built {
    pub pipeline: gst::Pipeline,
    /// The `clipfilter` element.
    pub filter: gst::Element,
    /// Whether a sink part was configured (it may need an EOS to finish its file).
    pub custom_sink: bool,
}

fn err(name: &str, message: impl std::fmt::Display) -> Error {
    Error::invalid(format!("pipeline {name}"), message.to_string())
}

/// Sets `clipfilter`'s properties for `cfg`.
pub fn configure_filter(filter: &gst::Element, cfg: &PipelineConfig, model: &ElementModel) {
    filter.set_property(props::MODEL, model.dir.display().to_string());
    filter.set_property(
        props::VARIANT,
        ClipFilterVariant::from(model.config.variant),
    );
    filter.set_property(props::EXECUTION_PROVIDER, model.providers());
    filter.set_property(props::REQUIRE_PROVIDER, model.config.require_provider);
    filter.set_property(props::MAX_BATCH, model.config.max_batch);
    filter.set_property(props::THREADS, model.config.threads);
    if let Some(cache) = &model.config.tensorrt_cache {
        filter.set_property(props::TENSORRT_CACHE, cache.display().to_string());
    }
    if let Backend::Triton(remote) = &model.config.backend {
        configure_remote(filter, remote);
    }
    match &cfg.labels {
        LabelSource::File(path) => filter.set_property(props::LABELS, path.display().to_string()),
        LabelSource::Prompts(prompts) => filter.set_property(props::PROMPTS, prompts.join(";")),
    }
    if let Some(t) = &cfg.templates {
        filter.set_property(props::TEMPLATES, t);
    }
    filter.set_property(
        props::INTERVAL,
        u64::try_from(cfg.interval.as_nanos())
            .unwrap_or(u64::MAX)
            .min(*clipfilter::limits::INTERVAL_NS.end()),
    );
    if let Some(threshold) = cfg.threshold {
        let (kind, value) = ClipFilterThresholdKind::of(threshold);
        filter.set_property(props::THRESHOLD_KIND, kind);
        filter.set_property(props::THRESHOLD, value);
    }
    if let Some(action) = cfg.action {
        filter.set_property(props::ACTION, ClipFilterAction::from(action));
    }
    if let Some(n) = cfg.enter {
        filter.set_property(props::ENTER_SAMPLES, n);
    }
    if let Some(n) = cfg.leave {
        filter.set_property(props::LEAVE_SAMPLES, n);
    }
    filter.set_property(props::MODE, cfg.mode);
    if let Some(g) = cfg.scene_gate {
        filter.set_property(props::SCENE_GATE, g);
    }
    if let Some(n) = cfg.max_frame_pixels {
        filter.set_property(props::MAX_FRAME_PIXELS, n);
    }
    filter.set_property(props::POST_SCORES, true);
    filter.set_property(props::SNAPSHOT, cfg.snapshots);
    cfg.view.configure(filter);
}

/// Sets the properties of `backend=triton`: the element builds the same [`RemoteConfig`] from
/// them, so that every element shares the daemon's engine.
fn configure_remote(filter: &gst::Element, remote: &RemoteConfig) {
    // Nanoseconds, within the properties' range (the configuration refuses less than 1 ms).
    let clock = |d: std::time::Duration| {
        u64::try_from(d.as_nanos()).map_or(u64::MAX - 1, |n| n.min(u64::MAX - 1))
    };
    filter.set_property(props::BACKEND, ClipFilterBackend::Triton);
    filter.set_property(props::ENDPOINTS, remote.endpoints.join(","));
    filter.set_property(props::WIRE_FORMAT, ClipFilterWireFormat::from(remote.wire));
    filter.set_property(props::IMAGE_MODEL_NAME, &remote.image_model);
    filter.set_property(props::TEXT_MODEL_NAME, &remote.text_model);
    filter.set_property(props::REMOTE_TIMEOUT, clock(remote.timeout));
    filter.set_property(props::CONNECT_TIMEOUT, clock(remote.connect_timeout));
    filter.set_property(props::START_TIMEOUT, clock(remote.start_timeout));
    filter.set_property(props::FALLBACK, ClipFilterFallback::from(remote.fallback));
    if let Some(tls) = &remote.tls {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        filter.set_property(props::TLS_CA, path(&tls.ca_certificate));
        filter.set_property(props::TLS_CERTIFICATE, path(&tls.client_certificate));
        filter.set_property(props::TLS_KEY, path(&tls.client_key));
        filter.set_property(props::TLS_DOMAIN, tls.domain.clone());
    }
}

/// Builds the pipeline for `cfg`. Failures name the pipeline and what is missing or wrong.
pub fn build(cfg: &PipelineConfig, model: &ElementModel) -> Result<Built> {
    let name = &cfg.name;
    let pipeline = gst::Pipeline::with_name(name);
    let source = source::build(&cfg.source, &pipeline).map_err(|e| err(name, e))?;
    let convert = make("videoconvert", "convert").map_err(|e| err(name, e))?;
    let filter = make("clipfilter", "clipfilter").map_err(|e| err(name, e))?;
    configure_filter(&filter, cfg, model);
    let (sink, custom_sink): (gst::Element, bool) = match &cfg.sink {
        Some(description) => {
            let bin = sink_bin(description)
                .map_err(|m| err(name, format!("sink `{description}`: {m}")))?;
            bin.set_property("name", "sink");
            (bin.upcast(), true)
        }
        None => {
            let sink = make("fakesink", "sink").map_err(|e| err(name, e))?;
            sink.set_property("sync", cfg.source.sync());
            sink.set_property("enable-last-sample", false);
            (sink, false)
        }
    };
    pipeline
        .add_many([&filter, &sink])
        .map_err(|e| err(name, e))?;
    filter.link(&sink).map_err(|e| err(name, e))?;
    if cfg.source.kind() != SourceKind::Launch {
        pipeline.add(&convert).map_err(|e| err(name, e))?;
        convert.link(&filter).map_err(|e| err(name, e))?;
    }

    if cfg.source.options.keyframes_only {
        keyframes_only(&pipeline);
    }

    match cfg.source.kind() {
        // The launch bin ends in its own videoconvert.
        SourceKind::Launch => source.link(&filter).map_err(|e| {
            err(
                name,
                format!("cannot link the launch description to clipfilter: {e}"),
            )
        })?,
        _ => link_decoded_video(&source, &convert),
    }
    Ok(Built {
        pipeline,
        filter,
        custom_sink,
    })
}

/// The bin of a `sink` description, with the free sink pad clipfilter feeds. The error says what
/// is wrong with the description.
pub fn sink_bin(description: &str) -> std::result::Result<gst::Bin, String> {
    let bin = gst::parse::bin_from_description(description, true).map_err(|e| e.to_string())?;
    if bin.static_pad("sink").is_none() {
        return Err("its first element has no free sink pad for clipfilter to feed".into());
    }
    Ok(bin)
}

/// Links the first video pad `uridecodebin` exposes to `convert`; posts an error when the
/// source turns out to have no video at all.
fn link_decoded_video(decode: &gst::Element, convert: &gst::Element) {
    let weak = convert.downgrade();
    decode.connect_pad_added(move |_, pad| {
        let Some(convert) = weak.upgrade() else {
            return;
        };
        let Some(sink) = convert.static_pad("sink") else {
            return;
        };
        if sink.is_linked() {
            return;
        }
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let video = caps
            .structure(0)
            .is_some_and(|s| s.name().starts_with("video/"));
        if video && let Err(e) = pad.link(&sink) {
            tracing::warn!(error = ?e, "cannot link the decoded video");
        }
    });
    let weak = convert.downgrade();
    decode.connect_no_more_pads(move |decode| {
        let Some(convert) = weak.upgrade() else {
            return;
        };
        let linked = convert.static_pad("sink").is_some_and(|p| p.is_linked());
        if !linked {
            let msg = gst::message::Error::builder(
                gst::StreamError::WrongType,
                "the source has no video stream",
            )
            .src(decode)
            .build();
            let _ = decode.post_message(msg);
        }
    });
}

/// Drops every frame that is not a key frame before each video decoder of `pipeline` (the
/// decoders are added later by `decodebin`, or are in a launch description).
fn keyframes_only(pipeline: &gst::Pipeline) {
    pipeline.connect_deep_element_added(|_, _, element| {
        let Some(factory) = element.factory() else {
            return;
        };
        let klass = factory.klass();
        if !(klass.contains("Decoder") && klass.contains("Video")) {
            return;
        }
        let Some(sink) = element.static_pad("sink") else {
            return;
        };
        tracing::debug!(decoder = %factory.name(), "decoding key frames only");
        sink.add_probe(gst::PadProbeType::BUFFER, |_, info| match info.buffer() {
            Some(buf) if buf.flags().contains(gst::BufferFlags::DELTA_UNIT) => {
                gst::PadProbeReturn::Drop
            }
            _ => gst::PadProbeReturn::Ok,
        });
    });
}
