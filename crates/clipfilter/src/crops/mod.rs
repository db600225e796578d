//! What the model looks at in a frame, and how a label's score comes from several looks.
//!
//! CLIP sees one small square (224 pixels for ViT-B/32). A frame can reach it as:
//! - the whole frame, as [`Fit`] says: `crop` (the reference's centre square: exact parity with
//!   `CLIPImageProcessor`, but a 16:9 frame loses its left and right 22%), `pad` (letterboxed:
//!   the whole picture, one inference, borders at the model's mean colour) or `crops` (overlapping
//!   squares covering the frame, 2 for 16:9, one inference each);
//! - [`Tiles`]: a grid (`3x3`) of overlapping boxes, each letterboxed, so that small things get
//!   more of the model's pixels;
//! - named [`Region`]s: boxes or polygons in relative coordinates (0..1), each letterboxed (a
//!   polygon's bounding box, with what lies outside the polygon set to the mean colour).
//!
//! A [`CropSpec`] says which; a [`CropPlan`] resolves it for a frame size (relative coordinates,
//! so a new resolution keeps every region in place). Every crop is cut and resized straight from
//! the frame's planes ([`Crop::preprocess`]), and a sample's crops go through the shared worker
//! together. [`score_crops`] turns their embeddings into one score per label: the best over the
//! crops the label may use, with the winning crop, which messages and events report.

mod plan;
mod score;
mod shape;

pub use plan::{Crop, CropId, CropKind, CropPlan, CropSpec, Fit, Placement, Tiles};
pub use score::{CropScores, may_use, score_crops};
pub use shape::{Rect, Region, Shape, parse_regions, regions_to_compact};
