//! What the model sees of a frame: the crops of one sampled frame (the whole frame as the fit
//! says, tiles, regions), resolved for a frame size.

use std::str::FromStr;

use super::shape::{Rect, Region, Shape};
use crate::error::{Error, Result};
use crate::limits;
use crate::preprocess::{FrameRef, PixelBox, Preprocessor, letterbox};

/// How the whole frame becomes the model's square input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Fit {
    /// The reference's: resize the short side, keep the centre square (CLIPImageProcessor
    /// exactly). A 16:9 frame loses its left and right 22%.
    Crop,
    /// Letterbox: the whole frame scaled into the square, borders at the model's mean colour
    /// (0 after normalisation). One inference, the whole picture, at a smaller scale.
    #[default]
    Pad,
    /// Overlapping squares that together cover the frame (2 for 16:9), one inference each; a
    /// label's score is the best over them and the winning square is reported.
    Crops,
}

impl Fit {
    /// Names accepted by [`FromStr`].
    pub const NAMES: [&'static str; 3] = ["crop", "pad", "crops"];

    /// The name used in files and properties.
    pub fn name(self) -> &'static str {
        match self {
            Fit::Crop => "crop",
            Fit::Pad => "pad",
            Fit::Crops => "crops",
        }
    }
}

impl FromStr for Fit {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "crop" => Ok(Fit::Crop),
            "pad" => Ok(Fit::Pad),
            "crops" => Ok(Fit::Crops),
            other => Err(Error::invalid(
                "fit",
                format!("`{other}`: expected crop, pad or crops"),
            )),
        }
    }
}

/// A grid of overlapping tiles.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tiles {
    pub columns: u32,
    pub rows: u32,
    /// Overlap of neighbouring tiles, as a fraction of a tile's width (height).
    pub overlap: f64,
}

impl Tiles {
    /// A checked grid (see [`limits::TILES`] and [`limits::TILE_OVERLAP`]).
    pub fn new(columns: u32, rows: u32, overlap: f64) -> std::result::Result<Tiles, String> {
        for (what, n) in [("columns", columns), ("rows", rows)] {
            if !limits::TILES.contains(&n) {
                return Err(format!(
                    "{n} {what}: a tile grid has {} {what}",
                    limits::describe(&limits::TILES)
                ));
            }
        }
        if !limits::TILE_OVERLAP.contains(&overlap) {
            return Err(format!(
                "overlap {overlap} is not {}",
                limits::describe(&limits::TILE_OVERLAP)
            ));
        }
        Ok(Tiles {
            columns,
            rows,
            overlap,
        })
    }

    /// Parses `NxM` (columns x rows, e.g. `3x3`) with the given overlap; `none` (or an empty
    /// string) is no grid.
    pub fn parse(text: &str, overlap: f64) -> std::result::Result<Option<Tiles>, String> {
        let t = text.trim();
        if t.is_empty() || t == "none" {
            return Ok(None);
        }
        let (c, r) = t
            .split_once(['x', 'X'])
            .ok_or_else(|| format!("`{t}`: expected columns x rows, such as 3x3, or none"))?;
        let num = |v: &str| {
            v.trim()
                .parse::<u32>()
                .map_err(|_| format!("`{t}`: `{}` is not a whole number", v.trim()))
        };
        Tiles::new(num(c)?, num(r)?, overlap).map(Some)
    }

    /// Relative boxes of the tiles, row by row, with their names (`r1c1` is the top left).
    fn rects(&self) -> Vec<(String, Rect)> {
        let side = |n: u32| {
            let n = f64::from(n);
            let size = 1.0 / (n - (n - 1.0) * self.overlap);
            (size, size * (1.0 - self.overlap))
        };
        let (tw, sx) = side(self.columns);
        let (th, sy) = side(self.rows);
        let mut out = Vec::with_capacity((self.columns * self.rows) as usize);
        for r in 0..self.rows {
            for c in 0..self.columns {
                let x = (f64::from(c) * sx).min(1.0 - tw);
                let y = (f64::from(r) * sy).min(1.0 - th);
                out.push((format!("r{}c{}", r + 1, c + 1), Rect { x, y, w: tw, h: th }));
            }
        }
        out
    }
}

impl std::fmt::Display for Tiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.columns, self.rows)
    }
}

/// What a stream asks the model to look at.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CropSpec {
    pub fit: Fit,
    /// Score the whole frame (as `fit` says) besides the tiles and regions.
    pub whole_frame: bool,
    pub tiles: Option<Tiles>,
    pub regions: Vec<Region>,
}

impl CropSpec {
    /// The whole frame only, fitted as `fit` says.
    pub fn whole(fit: Fit) -> Self {
        CropSpec {
            fit,
            whole_frame: true,
            tiles: None,
            regions: Vec::new(),
        }
    }

    /// Checks that something is looked at and that the region names are unique.
    pub fn check(&self) -> std::result::Result<(), String> {
        if !self.whole_frame && self.tiles.is_none() && self.regions.is_empty() {
            return Err(
                "nothing to look at: the whole frame is turned off and there are no tiles or regions"
                    .into(),
            );
        }
        for (i, r) in self.regions.iter().enumerate() {
            if self.regions[..i].iter().any(|o| o.name == r.name) {
                return Err(format!("region `{}` is defined twice", r.name));
            }
        }
        if self.regions.len() > limits::MAX_REGIONS {
            return Err(format!(
                "{} regions; at most {} are allowed",
                self.regions.len(),
                limits::MAX_REGIONS
            ));
        }
        Ok(())
    }

    /// Model inputs per sampled frame of a `width` x `height` stream.
    pub fn crops_for(&self, width: u32, height: u32) -> usize {
        let frame = match (self.whole_frame, self.fit) {
            (false, _) => 0,
            (true, Fit::Crops) => fit_squares(width, height).len(),
            (true, _) => 1,
        };
        frame + self.tiles.map_or(0, |t| (t.columns * t.rows) as usize) + self.regions.len()
    }
}

/// What a crop is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CropKind {
    /// The whole frame (fit `crop`: its centre square; `pad`: letterboxed).
    Frame,
    /// One of the squares of the `crops` fit (`left`, `right`, `top`, `bottom`...).
    Crop,
    /// A tile of the grid (`r1c1` is the top left).
    Tile,
    /// A named region.
    Region,
}

impl CropKind {
    /// `frame`, `crop`, `tile` or `region`.
    pub fn name(self) -> &'static str {
        match self {
            CropKind::Frame => "frame",
            CropKind::Crop => "crop",
            CropKind::Tile => "tile",
            CropKind::Region => "region",
        }
    }

    /// The kind called `name`.
    pub fn from_name(name: &str) -> Option<CropKind> {
        [
            CropKind::Frame,
            CropKind::Crop,
            CropKind::Tile,
            CropKind::Region,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }
}

/// Which crop: its kind and name (what messages, events and the sample history carry, and what
/// decides which labels may use it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct CropId {
    pub kind: CropKind,
    pub name: String,
}

impl AsRef<CropId> for CropId {
    fn as_ref(&self) -> &CropId {
        self
    }
}

impl std::fmt::Display for CropId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind.name(), self.name)
    }
}

/// Where a crop lies in the frame: which crop, its box in pixels and in fractions of the frame.
/// What messages, events, snapshots and the sample history carry about a match's crop
/// (`{"kind": "tile", "name": "r1c3", "box": [x, y, w, h], "rect": [x, y, w, h]}` in JSON).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Placement {
    #[serde(flatten)]
    pub id: CropId,
    #[serde(rename = "box")]
    pub pixels: PixelBox,
    pub rect: Rect,
}

/// How a crop's pixels become the model input.
#[derive(Debug, Clone, PartialEq)]
enum Fill {
    /// The reference's centre crop of the whole frame.
    Reference,
    /// The box letterboxed; for polygons, the flags of the output pixels inside it.
    Letterbox(Option<Vec<bool>>),
}

/// One crop of a frame of a given size.
#[derive(Debug, Clone, PartialEq)]
pub struct Crop {
    pub id: CropId,
    /// The part of the frame the model sees, in pixels (a polygon's bounding box)...
    pub pixels: PixelBox,
    /// ... and as fractions of the frame.
    pub rect: Rect,
    /// The region's outline, for regions.
    pub shape: Option<Shape>,
    fill: Fill,
}

impl AsRef<CropId> for Crop {
    fn as_ref(&self) -> &CropId {
        &self.id
    }
}

impl Crop {
    /// Where the crop lies.
    pub fn placement(&self) -> Placement {
        Placement {
            id: self.id.clone(),
            pixels: self.pixels,
            rect: self.rect,
        }
    }

    /// Preprocesses this crop of `frame` into `out` (one model input).
    pub fn preprocess(
        &self,
        pre: &mut Preprocessor,
        frame: &FrameRef<'_>,
        out: &mut [f32],
    ) -> Result<()> {
        match &self.fill {
            Fill::Reference => pre.run(frame, out),
            Fill::Letterbox(keep) => pre.run_letterbox(frame, self.pixels, keep.as_deref(), out),
        }
    }
}

/// Names of the squares of the `crops` fit, by count and orientation.
fn square_names(n: usize, landscape: bool) -> Vec<String> {
    let names: &[&str] = match (n, landscape) {
        (1, _) => &["frame"],
        (2, true) => &["left", "right"],
        (2, false) => &["top", "bottom"],
        (3, true) => &["left", "centre", "right"],
        (3, false) => &["top", "middle", "bottom"],
        (_, true) => &["left", "centre-left", "centre-right", "right"],
        (_, false) => &["top", "upper-middle", "lower-middle", "bottom"],
    };
    names.iter().map(|s| s.to_string()).collect()
}

/// The boxes of the `crops` fit: as few squares of the short side as cover the long side
/// (spread evenly, so neighbours overlap), at most [`limits::MAX_FIT_CROPS`].
fn fit_squares(width: u32, height: u32) -> Vec<(String, PixelBox)> {
    let landscape = width >= height;
    let (long, short) = if landscape {
        (width, height)
    } else {
        (height, width)
    };
    let short = short.max(1);
    let n = long.div_ceil(short).clamp(1, limits::MAX_FIT_CROPS);
    // Beyond 4:1 the parts get longer than square (and are letterboxed).
    let side = short.max(long.div_ceil(n));
    let names = square_names(n as usize, landscape);
    (0..n)
        .zip(names)
        .map(|(i, name)| {
            let start = if n == 1 {
                (long - side) / 2
            } else {
                // Round to the nearest pixel; the last one ends exactly at the edge.
                ((u64::from(i) * u64::from(long - side) * 2 + u64::from(n - 1))
                    / (2 * u64::from(n - 1))) as u32
            };
            let b = if landscape {
                PixelBox::new(start, 0, side, height)
            } else {
                PixelBox::new(0, start, width, side)
            };
            (name, b)
        })
        .collect()
}

/// The crops of every sampled frame of one size.
#[derive(Debug, Clone, PartialEq)]
pub struct CropPlan {
    pub width: u32,
    pub height: u32,
    pub crops: Vec<Crop>,
}

impl CropPlan {
    /// Resolves `spec` for `width` x `height` frames and the model input of `pre`.
    pub fn new(spec: &CropSpec, pre: &Preprocessor, width: u32, height: u32) -> Result<CropPlan> {
        spec.check()
            .map_err(|message| Error::invalid("crops", message))?;
        if width == 0 || height == 0 {
            return Err(Error::invalid(
                "crops",
                format!("empty frame {width}x{height}"),
            ));
        }
        let mut crops = Vec::new();
        let letterboxed = |id: CropId, pixels: PixelBox, shape: Option<&Shape>| {
            let keep = match shape {
                Some(s @ Shape::Polygon(_)) => Some(polygon_flags(s, pixels, pre, width, height)),
                _ => None,
            };
            Crop {
                id,
                rect: Rect::from_pixels(pixels, width, height),
                pixels,
                shape: shape.cloned(),
                fill: Fill::Letterbox(keep),
            }
        };
        if spec.whole_frame {
            match spec.fit {
                Fit::Crop => {
                    let pixels = pre.reference_box(width, height);
                    crops.push(Crop {
                        id: CropId {
                            kind: CropKind::Frame,
                            name: "frame".into(),
                        },
                        rect: Rect::from_pixels(pixels, width, height),
                        pixels,
                        shape: None,
                        fill: Fill::Reference,
                    });
                }
                Fit::Pad => crops.push(letterboxed(
                    CropId {
                        kind: CropKind::Frame,
                        name: "frame".into(),
                    },
                    PixelBox::new(0, 0, width, height),
                    None,
                )),
                Fit::Crops => {
                    let squares = fit_squares(width, height);
                    let kind = if squares.len() == 1 {
                        CropKind::Frame
                    } else {
                        CropKind::Crop
                    };
                    for (name, pixels) in squares {
                        crops.push(letterboxed(CropId { kind, name }, pixels, None));
                    }
                }
            }
        }
        if let Some(tiles) = spec.tiles {
            for (name, rect) in tiles.rects() {
                crops.push(letterboxed(
                    CropId {
                        kind: CropKind::Tile,
                        name,
                    },
                    rect.to_pixels(width, height),
                    None,
                ));
            }
        }
        for region in &spec.regions {
            crops.push(letterboxed(
                CropId {
                    kind: CropKind::Region,
                    name: region.name.clone(),
                },
                region.shape.bounds().to_pixels(width, height),
                Some(&region.shape),
            ));
        }
        if crops.len() > limits::MAX_CROPS {
            return Err(Error::invalid(
                "crops",
                format!(
                    "{} crops per frame; at most {} are allowed",
                    crops.len(),
                    limits::MAX_CROPS
                ),
            ));
        }
        Ok(CropPlan {
            width,
            height,
            crops,
        })
    }

    /// Number of crops.
    pub fn len(&self) -> usize {
        self.crops.len()
    }

    /// Never true for a built plan.
    pub fn is_empty(&self) -> bool {
        self.crops.is_empty()
    }

    /// Preprocesses the crops `indices` of `frame` into `out` (`indices.len()` model inputs,
    /// one after the other; `out` grows if needed and is otherwise reused).
    pub fn preprocess(
        &self,
        pre: &mut Preprocessor,
        frame: &FrameRef<'_>,
        indices: &[usize],
        out: &mut Vec<f32>,
    ) -> Result<()> {
        if frame.width != self.width || frame.height != self.height {
            return Err(Error::invalid(
                "frame",
                format!(
                    "{}x{} frame for crops planned for {}x{}",
                    frame.width, frame.height, self.width, self.height
                ),
            ));
        }
        let len = pre.output_len();
        out.resize(indices.len() * len, 0.0);
        for (&i, chunk) in indices.iter().zip(out.chunks_exact_mut(len)) {
            let crop = self.crops.get(i).ok_or_else(|| {
                Error::invalid("crops", format!("crop {i} of {}", self.crops.len()))
            })?;
            let _span = tracing::trace_span!("preprocess_crop", crop = %crop.id).entered();
            crop.preprocess(pre, frame, chunk)?;
        }
        Ok(())
    }
}

/// For each pixel of the model input: whether the frame point it shows lies inside `shape`
/// (pixels outside the letterboxed box are outside).
fn polygon_flags(
    shape: &Shape,
    pixels: PixelBox,
    pre: &Preprocessor,
    width: u32,
    height: u32,
) -> Vec<bool> {
    let (oh, ow) = pre.output_size();
    let lb = letterbox(pixels.width, pixels.height, ow, oh);
    let mut keep = vec![false; (ow * oh) as usize];
    let (sx, sy) = (
        f64::from(pixels.width) / f64::from(lb.width),
        f64::from(pixels.height) / f64::from(lb.height),
    );
    for y in 0..lb.height {
        let fy = (f64::from(pixels.y) + (f64::from(y) + 0.5) * sy) / f64::from(height);
        for x in 0..lb.width {
            let fx = (f64::from(pixels.x) + (f64::from(x) + 0.5) * sx) / f64::from(width);
            keep[((lb.top + y) * ow + lb.left + x) as usize] = shape.contains(fx, fy);
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::PreprocessConfig;

    fn pre() -> Preprocessor {
        Preprocessor::new(PreprocessConfig::default()).unwrap()
    }

    fn names(plan: &CropPlan) -> Vec<String> {
        plan.crops.iter().map(|c| c.id.name.clone()).collect()
    }

    #[test]
    fn crops_fit_covers_the_frame_with_overlapping_squares() {
        let q = fit_squares(1920, 1080);
        assert_eq!(
            q,
            vec![
                ("left".into(), PixelBox::new(0, 0, 1080, 1080)),
                ("right".into(), PixelBox::new(840, 0, 1080, 1080)),
            ]
        );
        let p = fit_squares(1080, 1920);
        assert_eq!(p[1], ("bottom".into(), PixelBox::new(0, 840, 1080, 1080)));
        assert_eq!(fit_squares(640, 480).len(), 2);
        assert_eq!(
            fit_squares(500, 500),
            vec![("frame".into(), PixelBox::new(0, 0, 500, 500))]
        );
        let wide = fit_squares(2100, 900);
        assert_eq!(wide.len(), 3);
        assert_eq!(wide[1].1, PixelBox::new(600, 0, 900, 900));
        assert_eq!(wide[2].1.right(), 2100);
        // Beyond 4:1: four wider parts that still cover everything.
        let strip = fit_squares(1000, 100);
        assert_eq!(strip.len(), 4);
        assert_eq!(strip[0].1.width, 250);
        assert_eq!(strip[3].1.right(), 1000);
    }

    #[test]
    fn plans_list_frame_tiles_and_regions_in_order() {
        let spec = CropSpec {
            fit: Fit::Crops,
            whole_frame: true,
            tiles: Some(Tiles::new(3, 3, 0.1).unwrap()),
            regions: vec![Region {
                name: "gate".into(),
                shape: Shape::Box(Rect::new(0.62, 0.40, 0.30, 0.35).unwrap()),
            }],
        };
        let plan = CropPlan::new(&spec, &pre(), 1920, 1080).unwrap();
        assert_eq!(plan.len(), 2 + 9 + 1);
        assert_eq!(spec.crops_for(1920, 1080), plan.len());
        assert_eq!(&names(&plan)[..4], ["left", "right", "r1c1", "r1c2"]);
        assert_eq!(plan.crops[11].id.kind, CropKind::Region);
        assert_eq!(plan.crops[11].pixels, PixelBox::new(1190, 432, 576, 378));
        // Tiles: 3 across with 10% overlap cover the width exactly.
        let tiles: Vec<&Crop> = plan
            .crops
            .iter()
            .filter(|c| c.id.kind == CropKind::Tile)
            .collect();
        assert_eq!(tiles[0].pixels.x, 0);
        assert_eq!(tiles[2].pixels.right(), 1920);
        assert_eq!(tiles[8].pixels.bottom(), 1080);
        assert!(tiles[1].pixels.x < tiles[0].pixels.right(), "tiles overlap");
        let w = tiles[0].pixels.width;
        assert!((i64::from(w) - 1920 * 10 / 28).abs() <= 1, "{w}");

        // Pad: one letterboxed frame; crop: the centre square.
        let pad = CropPlan::new(&CropSpec::whole(Fit::Pad), &pre(), 1920, 1080).unwrap();
        assert_eq!(pad.crops[0].pixels, PixelBox::new(0, 0, 1920, 1080));
        let crop = CropPlan::new(&CropSpec::whole(Fit::Crop), &pre(), 1920, 1080).unwrap();
        let b = crop.crops[0].pixels;
        assert!(
            b.width.abs_diff(1080) <= 2 && b.x.abs_diff(420) <= 2,
            "{b:?}"
        );

        let none = CropSpec {
            whole_frame: false,
            ..CropSpec::default()
        };
        assert!(CropPlan::new(&none, &pre(), 64, 64).is_err());
    }

    #[test]
    fn polygon_crops_mask_what_lies_outside() {
        // A triangle over the left half: its bounding box is letterboxed, the part of the box
        // outside the triangle is 0 like the borders.
        let spec = CropSpec {
            fit: Fit::Pad,
            whole_frame: false,
            tiles: None,
            regions: vec![Region {
                name: "t".into(),
                shape: Shape::polygon(vec![(0.0, 0.0), (0.5, 0.0), (0.0, 1.0)]).unwrap(),
            }],
        };
        let mut p = pre();
        let plan = CropPlan::new(&spec, &p, 200, 100).unwrap();
        let white = vec![255u8; 200 * 100 * 3];
        let frame =
            FrameRef::packed(crate::preprocess::PixelFormat::Rgb, 200, 100, &white).unwrap();
        let mut out = Vec::new();
        plan.preprocess(&mut p, &frame, &[0], &mut out).unwrap();
        // Top-left corner is inside, bottom-right corner of the box outside.
        let at = |x: usize, y: usize| out[y * 224 + x];
        assert!(at(2, 2) > 1.0, "{}", at(2, 2));
        assert_eq!(at(221, 221), 0.0);
    }

    #[test]
    fn tiles_parse_and_check() {
        assert_eq!(Tiles::parse("none", 0.1).unwrap(), None);
        let t = Tiles::parse("3x2", 0.25).unwrap().unwrap();
        assert_eq!((t.columns, t.rows, t.overlap), (3, 2, 0.25));
        assert!(
            Tiles::parse("0x3", 0.0)
                .unwrap_err()
                .contains("between 1 and 8")
        );
        assert!(Tiles::parse("9x1", 0.0).unwrap_err().contains("columns"));
        assert!(
            Tiles::parse("3", 0.0)
                .unwrap_err()
                .contains("columns x rows")
        );
        assert!(Tiles::parse("2x2", 0.7).unwrap_err().contains("overlap"));
        assert!("crops".parse::<Fit>().is_ok() && "squash".parse::<Fit>().is_err());
    }
}
