//! Named regions of a picture in relative coordinates (0..1 of the width and height, so that they
//! survive a change of resolution): boxes and polygons, their checks, and the compact text form
//! of the element's `regions` property.

use crate::limits;
use crate::preprocess::PixelBox;

/// A box in relative coordinates: left, top, width, height, each a fraction of the frame's
/// (`[x, y, w, h]` in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(into = "[f64; 4]", from = "[f64; 4]")]
pub struct Rect {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

/// Rounding slack for boxes that end exactly on the frame's edge (0.3 + 0.7 > 1 in floats).
const EDGE: f64 = 1e-9;

impl Rect {
    /// The whole frame.
    pub const FULL: Rect = Rect {
        x: 0.0,
        y: 0.0,
        w: 1.0,
        h: 1.0,
    };

    /// A checked box: finite, positive size, inside 0..1.
    pub fn new(x: f64, y: f64, w: f64, h: f64) -> Result<Rect, String> {
        let r = Rect { x, y, w, h };
        if ![x, y, w, h].iter().all(|v| v.is_finite()) {
            return Err(format!("{r}: every value must be a finite number"));
        }
        if w <= 0.0 || h <= 0.0 {
            return Err(format!("{r}: width and height must be above 0"));
        }
        if x < 0.0 || y < 0.0 || x + w > 1.0 + EDGE || y + h > 1.0 + EDGE {
            return Err(format!(
                "{r} reaches outside the frame: x, y, width and height are fractions of the frame (0..1), and x + width, y + height at most 1"
            ));
        }
        Ok(r)
    }

    /// `[x, y, w, h]`.
    pub fn to_array(self) -> [f64; 4] {
        [self.x, self.y, self.w, self.h]
    }

    /// The box in whole pixels of a `width` x `height` frame: edges rounded to the nearest
    /// pixel, at least one pixel, inside the frame.
    pub fn to_pixels(self, width: u32, height: u32) -> PixelBox {
        let edge = |v: f64, n: u32| ((v * f64::from(n)).round().max(0.0) as u32).min(n);
        let (x0, x1) = (edge(self.x, width), edge(self.x + self.w, width));
        let (y0, y1) = (edge(self.y, height), edge(self.y + self.h, height));
        let x0 = x0.min(width.saturating_sub(1));
        let y0 = y0.min(height.saturating_sub(1));
        PixelBox::new(x0, y0, x1.max(x0 + 1) - x0, y1.max(y0 + 1) - y0)
    }

    /// A pixel box of a `width` x `height` frame in relative coordinates.
    pub fn from_pixels(b: PixelBox, width: u32, height: u32) -> Rect {
        let (w, h) = (f64::from(width.max(1)), f64::from(height.max(1)));
        Rect {
            x: f64::from(b.x) / w,
            y: f64::from(b.y) / h,
            w: f64::from(b.width) / w,
            h: f64::from(b.height) / h,
        }
    }
}

impl From<Rect> for [f64; 4] {
    fn from(r: Rect) -> [f64; 4] {
        r.to_array()
    }
}

impl From<[f64; 4]> for Rect {
    fn from([x, y, w, h]: [f64; 4]) -> Rect {
        Rect { x, y, w, h }
    }
}

impl std::fmt::Display for Rect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}, {}, {}, {}]", self.x, self.y, self.w, self.h)
    }
}

/// The outline of a region.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    Box(Rect),
    /// Corners in order, in relative coordinates; simple (no edge crosses another).
    Polygon(Vec<(f64, f64)>),
}

impl Shape {
    /// A checked polygon: 3 to 64 points inside 0..1, an area, no crossing edges.
    pub fn polygon(points: Vec<(f64, f64)>) -> Result<Shape, String> {
        let n = points.len();
        if !limits::POLYGON_POINTS.contains(&n) {
            return Err(format!(
                "a polygon needs {} points, found {n}",
                limits::describe(&limits::POLYGON_POINTS)
            ));
        }
        if let Some((i, p)) = points.iter().enumerate().find(|(_, (x, y))| {
            !(x.is_finite() && y.is_finite() && (0.0..=1.0).contains(x) && (0.0..=1.0).contains(y))
        }) {
            return Err(format!(
                "point {} ({}, {}) is outside the frame: coordinates are fractions of the frame (0..1)",
                i + 1,
                p.0,
                p.1
            ));
        }
        if area(&points).abs() < 1e-9 {
            return Err("the polygon is empty (its points enclose no area)".into());
        }
        if let Some((a, b)) = crossing(&points) {
            return Err(format!(
                "the polygon crosses itself: edge {} ({} -> {}) meets edge {} ({} -> {})",
                a + 1,
                a + 1,
                (a + 1) % n + 1,
                b + 1,
                b + 1,
                (b + 1) % n + 1
            ));
        }
        Ok(Shape::Polygon(points))
    }

    /// The smallest box around the shape.
    pub fn bounds(&self) -> Rect {
        match self {
            Shape::Box(r) => *r,
            Shape::Polygon(points) => {
                let (mut x0, mut y0, mut x1, mut y1) = (1.0f64, 1.0f64, 0.0f64, 0.0f64);
                for (x, y) in points {
                    x0 = x0.min(*x);
                    y0 = y0.min(*y);
                    x1 = x1.max(*x);
                    y1 = y1.max(*y);
                }
                Rect {
                    x: x0,
                    y: y0,
                    w: (x1 - x0).max(0.0),
                    h: (y1 - y0).max(0.0),
                }
            }
        }
    }

    /// Whether the point (relative coordinates) is inside (even-odd rule).
    pub fn contains(&self, x: f64, y: f64) -> bool {
        match self {
            Shape::Box(r) => x >= r.x && x < r.x + r.w && y >= r.y && y < r.y + r.h,
            Shape::Polygon(p) => {
                let mut inside = false;
                let mut j = p.len() - 1;
                for i in 0..p.len() {
                    let ((xi, yi), (xj, yj)) = (p[i], p[j]);
                    if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
                        inside = !inside;
                    }
                    j = i;
                }
                inside
            }
        }
    }
}

/// Twice the signed area (shoelace).
fn area(p: &[(f64, f64)]) -> f64 {
    (0..p.len())
        .map(|i| {
            let (a, b) = (p[i], p[(i + 1) % p.len()]);
            a.0 * b.1 - b.0 * a.1
        })
        .sum()
}

/// The first pair of edges (by index of their first point) that touch or cross, other than
/// neighbours sharing their corner.
fn crossing(p: &[(f64, f64)]) -> Option<(usize, usize)> {
    let n = p.len();
    let edge = |i: usize| (p[i], p[(i + 1) % n]);
    for a in 0..n {
        for b in a + 1..n {
            let adjacent = b == a + 1 || (a == 0 && b == n - 1);
            let (e, f) = (edge(a), edge(b));
            if adjacent {
                // Neighbours share one corner; they only fold back on themselves if collinear
                // and overlapping.
                if folds_back(e, f) {
                    return Some((a, b));
                }
            } else if segments_meet(e, f) {
                return Some((a, b));
            }
        }
    }
    None
}

type Seg = ((f64, f64), (f64, f64));

fn orient(a: (f64, f64), b: (f64, f64), c: (f64, f64)) -> f64 {
    (b.0 - a.0) * (c.1 - a.1) - (b.1 - a.1) * (c.0 - a.0)
}

fn on_segment(a: (f64, f64), b: (f64, f64), c: (f64, f64)) -> bool {
    c.0 >= a.0.min(b.0) && c.0 <= a.0.max(b.0) && c.1 >= a.1.min(b.1) && c.1 <= a.1.max(b.1)
}

fn segments_meet((a, b): Seg, (c, d): Seg) -> bool {
    let (o1, o2, o3, o4) = (
        orient(a, b, c),
        orient(a, b, d),
        orient(c, d, a),
        orient(c, d, b),
    );
    if o1 * o2 < 0.0 && o3 * o4 < 0.0 {
        return true;
    }
    (o1 == 0.0 && on_segment(a, b, c))
        || (o2 == 0.0 && on_segment(a, b, d))
        || (o3 == 0.0 && on_segment(c, d, a))
        || (o4 == 0.0 && on_segment(c, d, b))
}

/// Two consecutive edges a->b, b->c that run back over each other (or a zero-length edge).
fn folds_back((a, b): Seg, (c, d): Seg) -> bool {
    // Whichever order the pair comes in, find the shared corner and the two far ends.
    let (far1, shared, far2) = if b == c {
        (a, b, d)
    } else if d == a {
        (c, a, b)
    } else {
        return false;
    };
    if far1 == shared || far2 == shared {
        return true;
    }
    let cross = orient(far1, shared, far2);
    let dot = (far1.0 - shared.0) * (far2.0 - shared.0) + (far1.1 - shared.1) * (far2.1 - shared.1);
    cross == 0.0 && dot > 0.0
}

/// A named region.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    pub name: String,
    pub shape: Shape,
}

impl Region {
    /// Checks a region name: not empty, no surrounding blanks, none of `;` `:` `,` `=` (the
    /// compact form's separators).
    pub fn check_name(name: &str) -> Result<(), String> {
        if name.is_empty() {
            return Err("the region name is empty".into());
        }
        if name.trim() != name {
            return Err(format!("region name `{name}` has blanks around it"));
        }
        if let Some(c) = name.chars().find(|c| matches!(c, ';' | ':' | ',' | '=')) {
            return Err(format!("region name `{name}` contains `{c}`"));
        }
        Ok(())
    }
}

impl Region {
    /// A region from the parts a configuration file gives: a name and either a box
    /// (`[x, y, w, h]`) or a polygon (`[[x, y], ...]`). Errors name the part that is wrong
    /// (`name`, `box` or `polygon`) and why, for the caller to locate in its file.
    pub fn from_parts(
        name: &str,
        rect: Option<&[f64]>,
        polygon: Option<&[Vec<f64>]>,
    ) -> Result<Region, (&'static str, String)> {
        Region::check_name(name).map_err(|m| ("name", m))?;
        let shape = match (rect, polygon) {
            (Some(b), None) => match *b {
                [x, y, w, h] => Shape::Box(Rect::new(x, y, w, h).map_err(|m| ("box", m))?),
                _ => {
                    return Err((
                        "box",
                        format!(
                            "a box takes 4 numbers (x, y, width, height), found {}",
                            b.len()
                        ),
                    ));
                }
            },
            (None, Some(p)) => {
                let points: Option<Vec<(f64, f64)>> = p
                    .iter()
                    .map(|xy| match xy[..] {
                        [x, y] => Some((x, y)),
                        _ => None,
                    })
                    .collect();
                let points = points.ok_or(("polygon", "each point is [x, y]".to_string()))?;
                Shape::polygon(points).map_err(|m| ("polygon", m))?
            }
            (Some(_), Some(_)) => return Err(("box", "give box or polygon, not both".into())),
            (None, None) => {
                return Err((
                    "box",
                    "a region needs a box = [x, y, width, height] or a polygon = [[x, y], ...]"
                        .into(),
                ));
            }
        };
        Ok(Region {
            name: name.to_string(),
            shape,
        })
    }

    /// The region in the compact form [`parse_regions`] reads.
    pub fn to_compact(&self) -> String {
        let numbers = |v: &[f64]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        match &self.shape {
            Shape::Box(r) => format!("{}:{}", self.name, numbers(&r.to_array())),
            Shape::Polygon(p) => {
                let flat: Vec<f64> = p.iter().flat_map(|(x, y)| [*x, *y]).collect();
                format!("{}:polygon:{}", self.name, numbers(&flat))
            }
        }
    }
}

/// Regions in the compact form, `;`-separated (what [`parse_regions`] reads back).
pub fn regions_to_compact(regions: &[Region]) -> String {
    regions
        .iter()
        .map(Region::to_compact)
        .collect::<Vec<_>>()
        .join(";")
}

/// Parses the element's compact form: regions separated by `;`, each `name:x,y,w,h` (a box) or
/// `name:polygon:x1,y1,x2,y2,x3,y3,...` (a polygon), all in relative coordinates. Errors say which
/// item is wrong and why.
pub fn parse_regions(text: &str) -> Result<Vec<Region>, String> {
    let mut out: Vec<Region> = Vec::new();
    for (i, item) in text
        .split([';', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .enumerate()
    {
        let at = |message: String| format!("region {} (`{item}`): {message}", i + 1);
        let (name, rest) = item
            .split_once(':')
            .ok_or_else(|| at("expected `name:x,y,w,h` or `name:polygon:x1,y1,...`".into()))?;
        let name = name.trim();
        Region::check_name(name).map_err(at)?;
        if out.iter().any(|r| r.name == name) {
            return Err(at(format!("region `{name}` is given twice")));
        }
        let (polygon, numbers) = match rest.trim().strip_prefix("polygon:") {
            Some(n) => (true, n),
            None => (false, rest),
        };
        let values: Vec<f64> = numbers
            .split(',')
            .map(|v| {
                v.trim()
                    .parse::<f64>()
                    .map_err(|_| at(format!("`{}` is not a number", v.trim())))
            })
            .collect::<Result<_, _>>()?;
        let shape = if polygon {
            if !values.len().is_multiple_of(2) {
                return Err(at(format!(
                    "a polygon takes x,y pairs; found {} numbers",
                    values.len()
                )));
            }
            Shape::polygon(values.chunks_exact(2).map(|p| (p[0], p[1])).collect()).map_err(at)?
        } else {
            let [x, y, w, h] = values[..] else {
                return Err(at(format!(
                    "a box takes 4 numbers (x, y, width, height), found {}",
                    values.len()
                )));
            };
            Shape::Box(Rect::new(x, y, w, h).map_err(at)?)
        };
        out.push(Region {
            name: name.to_string(),
            shape,
        });
    }
    if out.len() > limits::MAX_REGIONS {
        return Err(format!(
            "{} regions; at most {} are allowed",
            out.len(),
            limits::MAX_REGIONS
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_are_checked_and_map_to_pixels() {
        assert!(Rect::new(0.3, 0.2, 0.7, 0.8).is_ok());
        assert!(
            Rect::new(0.5, 0.0, 0.6, 0.5)
                .unwrap_err()
                .contains("outside")
        );
        assert!(Rect::new(-0.1, 0.0, 0.5, 0.5).is_err());
        assert!(
            Rect::new(0.0, 0.0, 0.0, 0.5)
                .unwrap_err()
                .contains("above 0")
        );
        assert!(Rect::new(f64::NAN, 0.0, 0.1, 0.5).is_err());
        let r = Rect::new(0.62, 0.40, 0.30, 0.35).unwrap();
        assert_eq!(r.to_pixels(1920, 1080), PixelBox::new(1190, 432, 576, 378));
        assert_eq!(r.to_pixels(640, 360), PixelBox::new(397, 144, 192, 126));
        // A sliver still gets a pixel, at the frame's edge too.
        let edge = Rect::new(0.9999, 0.0, 0.0001, 1.0).unwrap();
        assert_eq!(edge.to_pixels(100, 10), PixelBox::new(99, 0, 1, 10));
    }

    #[test]
    fn polygons_are_checked() {
        let square = vec![(0.1, 0.1), (0.5, 0.1), (0.5, 0.5), (0.1, 0.5)];
        let shape = Shape::polygon(square).unwrap();
        assert!(shape.contains(0.3, 0.3) && !shape.contains(0.6, 0.3));
        let b = shape.bounds();
        assert!((b.w - 0.4).abs() < 1e-12 && (b.x - 0.1).abs() < 1e-12);
        // A bow tie crosses itself.
        let bow = vec![(0.1, 0.1), (0.7, 0.6), (0.5, 0.1), (0.1, 0.5)];
        assert!(Shape::polygon(bow).unwrap_err().contains("crosses itself"));
        // Collinear points enclose nothing.
        let flat = vec![(0.1, 0.1), (0.2, 0.2), (0.3, 0.3)];
        assert!(Shape::polygon(flat).unwrap_err().contains("empty"));
        assert!(Shape::polygon(vec![(0.1, 0.1), (0.2, 0.2)]).is_err());
        let out = vec![(0.1, 0.1), (1.2, 0.1), (0.5, 0.5)];
        assert!(Shape::polygon(out).unwrap_err().contains("point 2"));
        // A spike that runs back along its own edge.
        let spike = vec![(0.1, 0.1), (0.5, 0.1), (0.3, 0.1), (0.3, 0.5)];
        assert!(Shape::polygon(spike).is_err());
        // A concave (L-shaped) polygon is fine.
        let l = vec![
            (0.0, 0.0),
            (0.6, 0.0),
            (0.6, 0.2),
            (0.2, 0.2),
            (0.2, 0.6),
            (0.0, 0.6),
        ];
        let l = Shape::polygon(l).unwrap();
        assert!(l.contains(0.1, 0.5) && !l.contains(0.4, 0.4));
    }

    #[test]
    fn compact_form() {
        let r = parse_regions("gate:0.62,0.40,0.30,0.35; door:polygon:0.1,0.1,0.3,0.1,0.2,0.4")
            .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].name, "gate");
        assert_eq!(
            r[0].shape,
            Shape::Box(Rect::new(0.62, 0.40, 0.30, 0.35).unwrap())
        );
        assert!(matches!(&r[1].shape, Shape::Polygon(p) if p.len() == 3));
        assert!(parse_regions("").unwrap().is_empty());
        assert_eq!(parse_regions(&regions_to_compact(&r)).unwrap(), r);
        let e = Region::from_parts("g", Some(&[0.5, 0.5, 0.6, 0.1]), None).unwrap_err();
        assert_eq!(e.0, "box");
        let e = Region::from_parts("g", None, Some(&[vec![0.1, 0.1], vec![0.2]])).unwrap_err();
        assert_eq!(e, ("polygon", "each point is [x, y]".to_string()));
        assert_eq!(Region::from_parts("g", None, None).unwrap_err().0, "box");
        assert_eq!(
            Region::from_parts("a;b", Some(&[0.0, 0.0, 1.0, 1.0]), None)
                .unwrap_err()
                .0,
            "name"
        );
        let e = parse_regions("gate:0.7,0.4,0.5,0.35").unwrap_err();
        assert!(
            e.starts_with("region 1 (`gate:0.7,0.4,0.5,0.35`)") && e.contains("outside"),
            "{e}"
        );
        let e = parse_regions("a:0,0,1,1;a:0,0,0.5,0.5").unwrap_err();
        assert!(e.contains("twice"), "{e}");
        let e = parse_regions("a:0,0,1").unwrap_err();
        assert!(e.contains("4 numbers"), "{e}");
        let e = parse_regions("a:0,0,x,1").unwrap_err();
        assert!(e.contains("`x` is not a number"), "{e}");
        let e = parse_regions("0,0,1,1").unwrap_err();
        assert!(e.contains("expected"), "{e}");
        let e = parse_regions("b:polygon:0.1,0.1,0.7,0.6,0.5,0.1,0.1,0.5").unwrap_err();
        assert!(e.starts_with("region 1") && e.contains("crosses"), "{e}");
    }
}
