//! What a pipeline's model sees of its frames: the `fit`, `tiles`, `tile_overlap`,
//! `whole_frame`, `action_scope` keys and the `[[pipeline.region]]` tables of a `[[pipeline]]`,
//! checked (errors name the file, line and field), and the `clipfilter` properties they become.
//!
//! ```toml
//! [[pipeline]]
//! fit = "pad"                     # crop | pad | crops (default pad: the whole frame)
//! tiles = "3x3"                   # a grid scored besides the frame (default none)
//! tile_overlap = 0.1              # fraction of a tile
//! whole_frame = true              # score the whole frame too
//! action_scope = "region"         # blank/pixelate only the matched crop (default frame)
//!
//! [[pipeline.region]]
//! name = "gate"
//! box = [0.62, 0.40, 0.30, 0.35]  # x, y, width, height: fractions of the frame
//! # polygon = [[0.1, 0.9], [0.4, 0.5], [0.6, 0.9]]
//! ```

use std::ops::Range;

use gst::prelude::*;
use serde::Deserialize;
use toml::Spanned;

use clipfilter::crops::{Fit, Region, Tiles, regions_to_compact};
use clipfilter::error::Error;
use clipfilter::limits;
use gstclipfilter::clipfilter::properties as props;
use gstclipfilter::clipfilter::{ClipFilterActionScope, ClipFilterFit, from_nick, nicks};

/// A `[[pipeline.region]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegion {
    name: Spanned<String>,
    #[serde(rename = "box")]
    rect: Option<Spanned<Vec<f64>>>,
    polygon: Option<Spanned<Vec<Vec<f64>>>>,
}

/// The keys of a `[[pipeline]]` this module reads, as written.
pub struct RawView<'a> {
    pub fit: &'a Option<Spanned<String>>,
    pub tiles: &'a Option<Spanned<String>>,
    pub tile_overlap: &'a Option<Spanned<f64>>,
    pub whole_frame: Option<bool>,
    pub action_scope: &'a Option<Spanned<String>>,
    pub regions: &'a [RawRegion],
}

/// A pipeline's view, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub fit: Fit,
    pub tiles: Option<Tiles>,
    pub whole_frame: bool,
    pub regions: Vec<Region>,
    pub action_scope: ClipFilterActionScope,
}

impl Default for View {
    fn default() -> Self {
        View {
            fit: Fit::Pad,
            tiles: None,
            whole_frame: true,
            regions: Vec::new(),
            action_scope: ClipFilterActionScope::Frame,
        }
    }
}

/// Reports a problem at a span under a field name (`tiles`, `region[1].box`, relative to the
/// pipeline), for the config parser to place in its file.
pub type Report<'a> = &'a dyn Fn(Option<Range<usize>>, &str, String) -> Error;

impl View {
    /// Checks the raw keys; `err` turns a problem into the config's error.
    pub fn parse(raw: &RawView<'_>, err: Report<'_>) -> Result<View, Error> {
        let fit = match raw.fit {
            Some(f) => f.get_ref().parse::<Fit>().map_err(|_| {
                err(
                    Some(f.span()),
                    "fit",
                    format!("`{}`: expected {}", f.get_ref(), Fit::NAMES.join(", ")),
                )
            })?,
            None => Fit::Pad,
        };
        let overlap = match raw.tile_overlap {
            Some(o) => *o.get_ref(),
            None => 0.1,
        };
        let tiles = match raw.tiles {
            Some(t) => Tiles::parse(t.get_ref(), overlap).map_err(|m| {
                let on_overlap = m.starts_with("overlap");
                match (on_overlap, raw.tile_overlap) {
                    (true, Some(o)) => err(Some(o.span()), "tile_overlap", m),
                    _ => err(Some(t.span()), "tiles", m),
                }
            })?,
            None => None,
        };
        if let (None, Some(o)) = (tiles, raw.tile_overlap) {
            return Err(err(
                Some(o.span()),
                "tile_overlap",
                "there are no tiles: set `tiles` (such as \"3x3\") too".into(),
            ));
        }
        let action_scope = match raw.action_scope {
            Some(s) => from_nick::<ClipFilterActionScope>(s.get_ref()).ok_or_else(|| {
                err(
                    Some(s.span()),
                    "action_scope",
                    format!(
                        "`{}`: expected {}",
                        s.get_ref(),
                        nicks::<ClipFilterActionScope>().join(" or ")
                    ),
                )
            })?,
            None => ClipFilterActionScope::Frame,
        };
        let mut regions: Vec<Region> = Vec::with_capacity(raw.regions.len());
        for (i, r) in raw.regions.iter().enumerate() {
            let name = r.name.get_ref();
            if regions.iter().any(|o| o.name == *name) {
                return Err(err(
                    Some(r.name.span()),
                    &format!("region[{i}].name"),
                    format!("duplicate region name `{name}`"),
                ));
            }
            let region = Region::from_parts(
                name,
                r.rect.as_ref().map(|b| b.get_ref().as_slice()),
                r.polygon.as_ref().map(|p| p.get_ref().as_slice()),
            )
            .map_err(|(part, message)| {
                let span = match part {
                    "box" => r.rect.as_ref().map(Spanned::span),
                    "polygon" => r.polygon.as_ref().map(Spanned::span),
                    _ => None,
                };
                err(
                    Some(span.unwrap_or_else(|| r.name.span())),
                    &format!("region[{i}].{part}"),
                    message,
                )
            })?;
            regions.push(region);
        }
        if regions.len() > limits::MAX_REGIONS {
            return Err(err(
                raw.regions.get(limits::MAX_REGIONS).map(|r| r.name.span()),
                &format!("region[{}]", limits::MAX_REGIONS),
                format!("at most {} regions are allowed", limits::MAX_REGIONS),
            ));
        }
        let whole_frame = raw.whole_frame.unwrap_or(true);
        if !whole_frame && tiles.is_none() && regions.is_empty() {
            return Err(err(
                None,
                "whole_frame",
                "nothing to look at: whole_frame = false needs tiles or regions".into(),
            ));
        }
        Ok(View {
            fit,
            tiles,
            whole_frame,
            regions,
            action_scope,
        })
    }

    /// Sets the `clipfilter` properties of this view.
    pub fn configure(&self, filter: &gst::Element) {
        filter.set_property(props::FIT, ClipFilterFit::from(self.fit));
        match self.tiles {
            Some(t) => {
                filter.set_property(props::TILES, format!("{}x{}", t.columns, t.rows));
                filter.set_property(props::TILE_OVERLAP, t.overlap);
            }
            None => filter.set_property(props::TILES, "none"),
        }
        filter.set_property(props::WHOLE_FRAME, self.whole_frame);
        if !self.regions.is_empty() {
            filter.set_property(props::REGIONS, regions_to_compact(&self.regions));
        }
        filter.set_property(props::ACTION_SCOPE, self.action_scope);
    }
}
