//! Label sets: what to look for, and what counts as a match.
//!
//! A label set is a TOML file shared by the element, the daemon and the CLI:
//!
//! ```toml
//! [defaults]                  # optional; applies to every label that does not say otherwise
//! templates = "none"          # none | single | ensemble7 | imagenet80 | ["a photo of {}.", ...]
//! min_probability = 0.5       # the softmax probability over the set must be above this...
//! # min_cosine = 0.26         # ...or on the raw cosine similarity (one of the two)
//! action = "none"             # none | drop | blank | pixelate, applied while the label matches
//! enter = 1                   # consecutive samples above the threshold to start a match
//! leave = 1                   # consecutive samples below it to end the match
//!
//! [[label]]
//! name = "knife"              # unique; what events carry
//! prompts = ["a person holding a knife", "a knife in someone's hand"]   # default: [name]
//! min_cosine = 0.24
//! action = "blank"
//!
//! [[label]]
//! name = "background"
//! prompts = ["an empty street", "people walking"]
//! negative = true             # competes in the softmax, never fires
//!
//! [[region]]                  # optional: a named part of the picture, scored on its own
//! name = "gate"
//! box = [0.62, 0.40, 0.30, 0.35]          # x, y, width, height: fractions of the frame
//! # polygon = [[0.1, 0.9], [0.4, 0.5], [0.6, 0.9]]   # or corners (x, y), in order
//!
//! [[label]]
//! name = "parcel"
//! regions = ["gate"]          # only the crops of these regions (of this file or the pipeline)
//!
//! [[label]]
//! name = "van"
//! images = ["examples/van/*.jpg"]   # example pictures (globs relative to this file), alone or
//!                                   # with prompts: the label's embedding is the normalised mean
//!                                   # of its image and text embeddings
//!
//! [[label]]
//! name = "seven"
//! probe = "probe.json"        # a linear probe (clipfilterd train-probe): the score is the probe's
//!                             # probability of the class named like the label
//! min_probability = 0.8
//! ```
//!
//! Parsing goes in two steps, like ripgrep's flags: raw serde structs that keep source spans,
//! then a validated [`LabelSet`] whose errors name the file, line and field. [`CompiledLabels`]
//! holds the set's text embeddings, ready to score frames.

mod compile;
pub mod edit;
mod info;

pub use compile::{CompiledLabel, CompiledLabels, Embedder, LabelDefaults};
pub use info::{LabelSetInfo, texts_key};

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use toml::Spanned;

use crate::crops::Region;
use crate::error::{Error, Location, Result};
use crate::limits;
use crate::zeroshot::Templates;

/// What decides that a label matches a sampled frame (`{"cosine": 0.24}` as JSON).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Threshold {
    /// Cosine similarity between the frame and the label's (ensembled) text embedding.
    Cosine(f32),
    /// Softmax probability of the label among all labels of the set (negatives included).
    Probability(f32),
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Threshold::Cosine(v) => write!(f, "cosine >= {v}"),
            Threshold::Probability(v) => write!(f, "probability > {v}"),
        }
    }
}

/// What happens to frames while a label matches (the element applies it).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Nothing: report only.
    #[default]
    None,
    /// Drop the frames.
    Drop,
    /// Replace the picture with black.
    Blank,
    /// Replace the picture with coarse blocks.
    Pixelate,
}

impl Action {
    /// The name used in TOML and properties.
    pub fn name(self) -> &'static str {
        match self {
            Action::None => "none",
            Action::Drop => "drop",
            Action::Blank => "blank",
            Action::Pixelate => "pixelate",
        }
    }
}

impl FromStr for Action {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Action::None),
            "drop" => Ok(Action::Drop),
            "blank" => Ok(Action::Blank),
            "pixelate" => Ok(Action::Pixelate),
            other => Err(Error::invalid(
                "action",
                format!("`{other}`: expected none, drop, blank or pixelate"),
            )),
        }
    }
}

/// One validated label.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    pub name: String,
    /// Prompts, each expanded with `templates`; all of them are ensembled into one embedding.
    pub prompts: Vec<String>,
    pub templates: Templates,
    /// `None`: the caller's default (the element's `threshold` property).
    pub threshold: Option<Threshold>,
    /// `None`: the caller's default (the element's `action` property).
    pub action: Option<Action>,
    pub negative: bool,
    pub enter: Option<u32>,
    pub leave: Option<u32>,
    /// Regions whose crops the label is limited to (empty: every crop).
    pub regions: Vec<String>,
    /// Where `regions` is written, for errors about unknown names.
    pub regions_location: Option<Location>,
    /// Glob patterns of example pictures (relative ones already joined to the label file's
    /// folder); their embeddings join the prompts' in the label's mean.
    pub images: Vec<String>,
    /// A linear probe file (relative paths joined to the label file's folder): the label's
    /// score is the probe's probability of the class named like the label.
    pub probe: Option<PathBuf>,
    /// Matches only when its cosine is this many standard deviations above the pipeline's
    /// recent cosines of the label (see [`crate::matcher`]).
    pub min_zscore: Option<f32>,
    /// Samples in that baseline (`None`: the set's default, else
    /// [`limits::DEFAULT_ZSCORE_WINDOW`]).
    pub zscore_window: Option<u32>,
}

impl Label {
    /// Every text to embed for this label.
    pub fn texts(&self) -> Vec<String> {
        self.prompts
            .iter()
            .flat_map(|p| self.templates.expand(p))
            .collect()
    }

    /// The key of this label's texts ([`texts_key`]): equal keys, equal class embeddings
    /// (with one model).
    pub fn key(&self) -> String {
        texts_key(&self.texts())
    }
}

/// A validated label set.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelSet {
    pub labels: Vec<Label>,
    /// Regions the set defines (`[[region]]`).
    pub regions: Vec<Region>,
    /// The file it came from, if any.
    pub source: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawTemplates {
    Name(String),
    List(Vec<String>),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    templates: Option<Spanned<RawTemplates>>,
    min_probability: Option<Spanned<f32>>,
    min_cosine: Option<Spanned<f32>>,
    action: Option<Spanned<String>>,
    enter: Option<Spanned<u32>>,
    leave: Option<Spanned<u32>>,
    zscore_window: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLabel {
    name: Spanned<String>,
    prompts: Option<Spanned<Vec<String>>>,
    templates: Option<Spanned<RawTemplates>>,
    min_probability: Option<Spanned<f32>>,
    min_cosine: Option<Spanned<f32>>,
    action: Option<Spanned<String>>,
    #[serde(default)]
    negative: bool,
    enter: Option<Spanned<u32>>,
    leave: Option<Spanned<u32>>,
    regions: Option<Spanned<Vec<String>>>,
    images: Option<Spanned<Vec<String>>>,
    probe: Option<Spanned<String>>,
    min_zscore: Option<Spanned<f32>>,
    zscore_window: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    name: Spanned<String>,
    #[serde(rename = "box")]
    rect: Option<Spanned<Vec<f64>>>,
    polygon: Option<Spanned<Vec<Vec<f64>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLabelSet {
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    label: Vec<RawLabel>,
    #[serde(default)]
    region: Vec<RawRegion>,
}

struct Ctx<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Ctx<'_> {
    fn err<T>(
        &self,
        span: Option<std::ops::Range<usize>>,
        field: String,
        message: impl Into<String>,
    ) -> Result<T> {
        let location = match span {
            Some(s) => Location::from_offset(self.text, s.start, Some(field)),
            None => Location::field(field),
        };
        Err(Error::config(self.path, location, message))
    }

    /// A list of texts (`prompts`, `images` patterns): not empty, no blank entry, no NUL byte.
    fn texts<'r>(
        &self,
        raw: &'r Spanned<Vec<String>>,
        field: String,
        what: &str,
    ) -> Result<&'r [String]> {
        let list = raw.get_ref();
        if list.is_empty() {
            return self.err(Some(raw.span()), field, "must not be empty");
        }
        if list.iter().any(|s| s.trim().is_empty()) {
            return self.err(Some(raw.span()), field, format!("{what} must not be blank"));
        }
        if list.iter().any(|s| s.contains('\0')) {
            return self.err(Some(raw.span()), field, NUL_BYTE);
        }
        Ok(list)
    }

    fn templates(&self, raw: &Spanned<RawTemplates>, field: String) -> Result<Templates> {
        let parsed = match raw.get_ref() {
            RawTemplates::Name(n) => n.parse::<Templates>(),
            RawTemplates::List(l) => Templates::custom(l.clone()),
        };
        parsed.or_else(|e| {
            let message = match e {
                Error::InvalidInput { message, .. } => message,
                other => other.to_string(),
            };
            self.err(Some(raw.span()), field, message)
        })
    }

    fn threshold(
        &self,
        prob: &Option<Spanned<f32>>,
        cos: &Option<Spanned<f32>>,
        at: &str,
    ) -> Result<Option<Threshold>> {
        match (prob, cos) {
            (Some(p), Some(_)) => self.err(
                Some(p.span()),
                format!("{at}min_probability"),
                "give min_probability or min_cosine, not both",
            ),
            (Some(p), None) => {
                let v = *p.get_ref();
                if !(v > 0.0 && v <= 1.0) {
                    return self.err(
                        Some(p.span()),
                        format!("{at}min_probability"),
                        format!("{v} is outside (0, 1]"),
                    );
                }
                Ok(Some(Threshold::Probability(v)))
            }
            (None, Some(c)) => {
                let v = *c.get_ref();
                if !(-1.0..=1.0).contains(&v) {
                    return self.err(
                        Some(c.span()),
                        format!("{at}min_cosine"),
                        format!("{v} is outside [-1, 1]"),
                    );
                }
                Ok(Some(Threshold::Cosine(v)))
            }
            (None, None) => Ok(None),
        }
    }

    fn action(&self, raw: &Option<Spanned<String>>, field: String) -> Result<Option<Action>> {
        match raw {
            None => Ok(None),
            Some(a) => match a.get_ref().parse::<Action>() {
                Ok(v) => Ok(Some(v)),
                Err(_) => self.err(
                    Some(a.span()),
                    field,
                    format!("`{}`: expected none, drop, blank or pixelate", a.get_ref()),
                ),
            },
        }
    }

    fn region(&self, i: usize, raw: &RawRegion, known: &[Region]) -> Result<Region> {
        let at = format!("region[{i}].");
        let name = raw.name.get_ref();
        if known.iter().any(|r| r.name == *name) {
            return self.err(
                Some(raw.name.span()),
                format!("{at}name"),
                format!("duplicate region name `{name}`"),
            );
        }
        Region::from_parts(
            name,
            raw.rect.as_ref().map(|b| b.get_ref().as_slice()),
            raw.polygon.as_ref().map(|p| p.get_ref().as_slice()),
        )
        .or_else(|(part, message)| {
            let span = match part {
                "box" => raw.rect.as_ref().map(|b| b.span()),
                "polygon" => raw.polygon.as_ref().map(|p| p.span()),
                _ => None,
            };
            self.err(
                Some(span.unwrap_or_else(|| raw.name.span())),
                format!("{at}{part}"),
                message,
            )
        })
    }

    fn zscore_window(&self, raw: &Option<Spanned<u32>>, field: String) -> Result<Option<u32>> {
        match raw {
            Some(n) if !limits::ZSCORE_WINDOW.contains(n.get_ref()) => self.err(
                Some(n.span()),
                field,
                format!(
                    "{} samples: must be {}",
                    n.get_ref(),
                    limits::describe(&limits::ZSCORE_WINDOW)
                ),
            ),
            Some(n) => Ok(Some(*n.get_ref())),
            None => Ok(None),
        }
    }

    fn count(&self, raw: &Option<Spanned<u32>>, field: String) -> Result<Option<u32>> {
        match raw {
            Some(n) if *n.get_ref() == 0 => self.err(Some(n.span()), field, "must be at least 1"),
            Some(n) => Ok(Some(*n.get_ref())),
            None => Ok(None),
        }
    }
}

/// Why a label name or prompt with a NUL byte is refused.
const NUL_BYTE: &str =
    "must not contain a NUL byte (GStreamer properties and messages end a string at it)";

impl LabelSet {
    /// Reads and validates a label-set file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::input::read_to_string(path)?;
        Self::from_toml_str(&text, path)
    }

    /// Parses and validates label-set TOML; `path` names it in errors.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self> {
        let raw: RawLabelSet = toml::from_str(text).map_err(|e| Error::toml(path, text, &e))?;
        let cx = Ctx { text, path };
        let d = &raw.defaults;
        let default_templates = match &d.templates {
            Some(t) => cx.templates(t, "defaults.templates".into())?,
            None => Templates::None,
        };
        let default_threshold = cx.threshold(&d.min_probability, &d.min_cosine, "defaults.")?;
        let default_action = cx.action(&d.action, "defaults.action".into())?;
        let default_enter = cx.count(&d.enter, "defaults.enter".into())?;
        let default_leave = cx.count(&d.leave, "defaults.leave".into())?;
        let default_window = cx.zscore_window(&d.zscore_window, "defaults.zscore_window".into())?;

        let mut regions: Vec<Region> = Vec::with_capacity(raw.region.len());
        for (i, r) in raw.region.iter().enumerate() {
            let region = cx.region(i, r, &regions)?;
            regions.push(region);
        }
        if regions.len() > limits::MAX_REGIONS {
            return cx.err(
                raw.region.get(limits::MAX_REGIONS).map(|r| r.name.span()),
                format!("region[{}]", limits::MAX_REGIONS),
                format!("at most {} regions are allowed", limits::MAX_REGIONS),
            );
        }

        if raw.label.is_empty() {
            return cx.err(
                None,
                "label".into(),
                "the label set is empty: add at least one [[label]] table",
            );
        }
        let mut labels: Vec<Label> = Vec::with_capacity(raw.label.len());
        // Linear in the size of the set (a 10 MB file has over 100,000 labels): names are
        // looked up in a set, line numbers found by bisecting the line starts.
        let mut names: std::collections::HashSet<String> =
            std::collections::HashSet::with_capacity(raw.label.len());
        let line_starts: Vec<usize> = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        let locate = |offset: usize, field: String| {
            let offset = offset.min(text.len());
            let line = line_starts.partition_point(|&start| start <= offset);
            let start = line_starts[line.saturating_sub(1)];
            Location {
                line: Some(line),
                column: Some(offset - start + 1),
                field: Some(field),
            }
        };
        for (i, l) in raw.label.iter().enumerate() {
            let at = format!("label[{i}].");
            let name = l.name.get_ref().trim().to_string();
            if name.is_empty() {
                return cx.err(
                    Some(l.name.span()),
                    format!("{at}name"),
                    "must not be empty",
                );
            }
            if !names.insert(name.clone()) {
                return cx.err(
                    Some(l.name.span()),
                    format!("{at}name"),
                    format!("duplicate label name `{name}`"),
                );
            }
            if name.contains('\0') {
                return cx.err(Some(l.name.span()), format!("{at}name"), NUL_BYTE);
            }
            let base = path.parent().unwrap_or(Path::new(""));
            let images = match &l.images {
                Some(i) => cx
                    .texts(i, format!("{at}images"), "image patterns")?
                    .iter()
                    .map(|pattern| {
                        let p = Path::new(pattern.trim());
                        let joined = if p.is_absolute() {
                            p.to_path_buf()
                        } else {
                            base.join(p)
                        };
                        let joined = joined.to_string_lossy().into_owned();
                        glob::Pattern::new(&joined).map(|_| joined).or_else(|e| {
                            cx.err(
                                Some(i.span()),
                                format!("{at}images"),
                                format!("`{pattern}` is not a valid glob pattern: {e}"),
                            )
                        })
                    })
                    .collect::<Result<Vec<String>>>()?,
                None => Vec::new(),
            };
            let probe = l.probe.as_ref().map(|p| base.join(p.get_ref().trim()));
            if let Some(p) = &l.probe {
                let clash = [
                    ("prompts", l.prompts.as_ref().map(|v| v.span())),
                    ("images", l.images.as_ref().map(|v| v.span())),
                    ("templates", l.templates.as_ref().map(|v| v.span())),
                    ("min_cosine", l.min_cosine.as_ref().map(|v| v.span())),
                ]
                .into_iter()
                .find_map(|(f, s)| s.map(|s| (f, s)));
                if let Some((field, span)) = clash {
                    return cx.err(
                        Some(span),
                        format!("{at}{field}"),
                        "a label with a probe is scored by the probe's probability alone: it takes no prompts, images, templates or min_cosine",
                    );
                }
                if l.negative {
                    return cx.err(
                        Some(p.span()),
                        format!("{at}probe"),
                        "a negative label only competes in the zero-shot softmax, which a probe label is not part of",
                    );
                }
                if p.get_ref().trim().is_empty() {
                    return cx.err(Some(p.span()), format!("{at}probe"), "must not be empty");
                }
            }
            let prompts = match &l.prompts {
                Some(p) => cx.texts(p, format!("{at}prompts"), "prompts")?.to_vec(),
                // Pictures alone, or a probe: no text.
                None if !images.is_empty() || probe.is_some() => Vec::new(),
                None => vec![name.clone()],
            };
            let templates = match &l.templates {
                Some(t) => cx.templates(t, format!("{at}templates"))?,
                None => default_templates.clone(),
            };
            let threshold = cx.threshold(&l.min_probability, &l.min_cosine, &at)?;
            let min_zscore = match &l.min_zscore {
                Some(z) => {
                    let v = *z.get_ref();
                    let why = if l.negative {
                        Some("a negative label never fires, so it takes no min_zscore".to_string())
                    } else if probe.is_some() {
                        Some("a probe's probability is already calibrated on examples: threshold it with min_probability, not relative to the scene".to_string())
                    } else if !(v.is_finite()
                        && v > *limits::MIN_ZSCORE.start()
                        && v <= *limits::MIN_ZSCORE.end())
                    {
                        Some(format!(
                            "{v}: must be above {} and at most {} (standard deviations)",
                            limits::MIN_ZSCORE.start(),
                            limits::MIN_ZSCORE.end()
                        ))
                    } else {
                        None
                    };
                    if let Some(why) = why {
                        return cx.err(Some(z.span()), format!("{at}min_zscore"), why);
                    }
                    Some(v)
                }
                None => None,
            };
            let zscore_window = cx.zscore_window(&l.zscore_window, format!("{at}zscore_window"))?;
            if let (Some(w), None) = (&l.zscore_window, min_zscore) {
                return cx.err(
                    Some(w.span()),
                    format!("{at}zscore_window"),
                    "only a label with min_zscore has a baseline window",
                );
            }
            let action = cx.action(&l.action, format!("{at}action"))?;
            let (label_regions, regions_location) = match &l.regions {
                Some(r) if r.get_ref().is_empty() => {
                    return cx.err(
                        Some(r.span()),
                        format!("{at}regions"),
                        "must not be empty (leave it out to use every crop)",
                    );
                }
                Some(r) => (
                    r.get_ref().iter().map(|n| n.trim().to_string()).collect(),
                    Some(locate(r.span().start, format!("{at}regions"))),
                ),
                None => (Vec::new(), None),
            };
            if l.negative {
                if let Some(a) = l
                    .action
                    .as_ref()
                    .filter(|_| !matches!(action, Some(Action::None)))
                {
                    return cx.err(
                        Some(a.span()),
                        format!("{at}action"),
                        "a negative label never fires, so it cannot have an action",
                    );
                }
                if let Some(t) = l.min_probability.as_ref().or(l.min_cosine.as_ref()) {
                    return cx.err(
                        Some(t.span()),
                        format!("{at}threshold"),
                        "a negative label never fires, so it takes no threshold",
                    );
                }
            }
            labels.push(Label {
                name,
                prompts,
                templates,
                threshold: if l.negative {
                    None
                } else if min_zscore.is_some() {
                    // Relative alone, unless the label also sets an absolute threshold of its own.
                    Some(threshold.unwrap_or(Threshold::Cosine(-1.0)))
                } else {
                    threshold.or(default_threshold)
                },
                action: if l.negative {
                    Some(Action::None)
                } else {
                    action.or(default_action)
                },
                negative: l.negative,
                enter: cx.count(&l.enter, format!("{at}enter"))?.or(default_enter),
                leave: cx.count(&l.leave, format!("{at}leave"))?.or(default_leave),
                regions: label_regions,
                regions_location,
                images,
                probe,
                min_zscore,
                zscore_window: min_zscore.map(|_| {
                    zscore_window
                        .or(default_window)
                        .unwrap_or(limits::DEFAULT_ZSCORE_WINDOW)
                }),
            });
        }
        let set = LabelSet {
            labels,
            regions,
            source: Some(path.to_path_buf()),
        };
        set.check_softmax()
            .map_err(|message| Error::config(path, Location::field("label"), message))?;
        Ok(set)
    }

    /// A set from inline prompts (the element's `prompts` property, the CLI's `--label`): one
    /// label per prompt, named after it.
    pub fn from_prompts(prompts: &[String], templates: Templates) -> Result<Self> {
        Self::inline(prompts, &[], templates)
    }

    /// A set from inline prompts and example pictures (the CLI's `--label` and `--image`): one
    /// label per prompt, named after it, and one per picture, named after its file name
    /// without extension; a picture label's embedding is the picture's.
    pub fn inline(prompts: &[String], images: &[PathBuf], templates: Templates) -> Result<Self> {
        let mut labels: Vec<Label> = Vec::new();
        for path in images {
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().trim().to_string())
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    Error::invalid("image", format!("`{}` has no file name", path.display()))
                })?;
            if labels.iter().any(|l| l.name == name) {
                return Err(Error::invalid(
                    "image",
                    format!("two pictures are named `{name}`: labels need unique names"),
                ));
            }
            labels.push(Label {
                name,
                prompts: Vec::new(),
                templates: Templates::None,
                threshold: None,
                action: None,
                negative: false,
                enter: None,
                leave: None,
                regions: Vec::new(),
                regions_location: None,
                images: vec![glob::Pattern::escape(&path.to_string_lossy())],
                probe: None,
                min_zscore: None,
                zscore_window: None,
            });
        }
        for p in prompts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            if labels.iter().any(|l| l.name == p) {
                return Err(Error::invalid("prompts", format!("`{p}` is given twice")));
            }
            if p.contains('\0') {
                return Err(Error::invalid("prompts", format!("{p:?}: {NUL_BYTE}")));
            }
            labels.push(Label {
                name: p.to_string(),
                prompts: vec![p.to_string()],
                templates: templates.clone(),
                threshold: None,
                action: None,
                negative: false,
                enter: None,
                leave: None,
                regions: Vec::new(),
                regions_location: None,
                images: Vec::new(),
                probe: None,
                min_zscore: None,
                zscore_window: None,
            });
        }
        if labels.is_empty() {
            return Err(Error::invalid(
                "prompts",
                "no prompts or pictures given: the label set is empty",
            ));
        }
        Ok(LabelSet {
            labels,
            regions: Vec::new(),
            source: None,
        })
    }

    /// The regions of this set and `others` (the pipeline's or the element's) together; a name
    /// defined on both sides is an error.
    pub fn all_regions(&self, others: &[Region]) -> Result<Vec<Region>> {
        let mut all = others.to_vec();
        for r in &self.regions {
            if others.iter().any(|o| o.name == r.name) {
                return Err(self.error_at(
                    None,
                    "region",
                    format!(
                        "region `{}` is defined both here and by the pipeline (or the element's `regions`)",
                        r.name
                    ),
                ));
            }
            all.push(r.clone());
        }
        if all.len() > limits::MAX_REGIONS {
            return Err(self.error_at(
                None,
                "region",
                format!(
                    "{} regions with the pipeline's; at most {} are allowed",
                    all.len(),
                    limits::MAX_REGIONS
                ),
            ));
        }
        Ok(all)
    }

    /// Checks that every region a label is limited to is one of `regions` (the set's and the
    /// pipeline's); errors name the file, line and field.
    pub fn check_regions(&self, regions: &[Region]) -> Result<()> {
        for l in &self.labels {
            if let Some(unknown) = l
                .regions
                .iter()
                .find(|n| !regions.iter().any(|r| r.name == **n))
            {
                let known: Vec<&str> = regions.iter().map(|r| r.name.as_str()).collect();
                return Err(self.error_at(
                    l.regions_location.clone(),
                    "regions",
                    format!(
                        "label `{}`: unknown region `{unknown}` ({})",
                        l.name,
                        if known.is_empty() {
                            "no regions are defined".to_string()
                        } else {
                            format!("regions: {}", known.join(", "))
                        }
                    ),
                ));
            }
        }
        Ok(())
    }

    /// An error about this set: a config error at `location` in its file, or an invalid input
    /// for inline prompts.
    pub(crate) fn error_at(
        &self,
        location: Option<Location>,
        field: &str,
        message: String,
    ) -> Error {
        match &self.source {
            Some(path) => Error::config(
                path,
                location.unwrap_or_else(|| Location::field(field)),
                message,
            ),
            None => Error::invalid("prompts", message),
        }
    }

    /// Probability thresholds need something to compete with.
    fn check_softmax(&self) -> std::result::Result<(), String> {
        if self.labels.iter().all(|l| l.negative) {
            return Err("every label is negative: nothing can match".into());
        }
        if self.labels.len() < 2
            && let Some(l) = self
                .labels
                .iter()
                .find(|l| matches!(l.threshold, Some(Threshold::Probability(_))))
        {
            return Err(format!(
                "label `{}` uses min_probability, but with a single label its probability is always 1: add negative labels or use min_cosine",
                l.name
            ));
        }
        Ok(())
    }

    /// Checks the set against the caller's default threshold (labels without their own).
    pub fn check_default_threshold(&self, default: Threshold) -> Result<()> {
        if self.labels.len() < 2
            && matches!(default, Threshold::Probability(_))
            && self.labels.iter().any(|l| l.threshold.is_none())
        {
            let what = self
                .source
                .as_ref()
                .map_or_else(|| "prompts".to_string(), |p| p.display().to_string());
            return Err(Error::invalid(
                what,
                "a single label with a probability threshold always matches (its probability is 1): add more labels or negative labels, or use a cosine threshold",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LabelSet> {
        LabelSet::from_toml_str(text, Path::new("set.toml"))
    }

    #[test]
    fn parses_a_full_set() {
        let set = parse(
            r#"
[defaults]
templates = "ensemble7"
min_probability = 0.6
enter = 2

[[label]]
name = "knife"
prompts = ["a person holding a knife"]
min_cosine = 0.24
action = "blank"
leave = 3

[[label]]
name = "street"
negative = true
templates = ["a photo of {}.", "{}"]
"#,
        )
        .unwrap();
        let knife = &set.labels[0];
        assert_eq!(knife.threshold, Some(Threshold::Cosine(0.24)));
        assert_eq!(knife.action, Some(Action::Blank));
        assert_eq!((knife.enter, knife.leave), (Some(2), Some(3)));
        assert_eq!(knife.texts().len(), 7);
        let street = &set.labels[1];
        assert!(street.negative);
        assert_eq!(street.texts(), vec!["a photo of street.", "street"]);
    }

    #[test]
    fn min_zscore_is_checked_and_relative_alone() {
        let set = parse("[defaults]\nmin_probability = 0.6\nzscore_window = 50\n\n[[label]]\nname = \"a\"\nmin_zscore = 3\n\n[[label]]\nname = \"b\"\nmin_zscore = 2.5\nmin_cosine = 0.2\nzscore_window = 20\n\n[[label]]\nname = \"c\"\n").unwrap();
        // Alone: no absolute threshold (not the default probability); with one: both hold.
        assert_eq!(set.labels[0].threshold, Some(Threshold::Cosine(-1.0)));
        assert_eq!(
            (set.labels[0].min_zscore, set.labels[0].zscore_window),
            (Some(3.0), Some(50))
        );
        assert_eq!(set.labels[1].threshold, Some(Threshold::Cosine(0.2)));
        assert_eq!(set.labels[1].zscore_window, Some(20));
        assert_eq!(
            (set.labels[2].min_zscore, set.labels[2].zscore_window),
            (None, None)
        );
        for (bad, want) in [
            ("min_zscore = 0", "must be above 0"),
            ("min_zscore = -1.0", "must be above 0"),
            ("min_zscore = nan", "must be above 0"),
            ("min_zscore = inf", "must be above 0"),
            (
                "min_zscore = 3.0\nzscore_window = 5",
                "must be between 10 and 10000",
            ),
            ("zscore_window = 100", "only a label with min_zscore"),
            (
                "min_zscore = 3.0\nnegative = true",
                "negative label never fires",
            ),
            (
                "min_zscore = 3.0\nprobe = \"p.json\"",
                "probe's probability",
            ),
        ] {
            let err = parse(&format!(
                "[[label]]\nname = \"a\"\n{bad}\n[[label]]\nname = \"b\"\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains(want) && err.contains("line "), "{bad}: {err}");
        }
    }

    #[test]
    fn errors_name_line_and_field() {
        let err = parse("[[label]]\nname = \"a\"\nmin_cosine = 0.2\n\n[[label]]\nname = \"a\"\n")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "set.toml: line 6, column 8, field `label[1].name`: duplicate label name `a`"
        );
        let err = parse("[[label]]\nname = \"a\"\ntemplates = \"imagenet81\"\n").unwrap_err();
        assert!(
            err.to_string().contains("line 3") && err.to_string().contains("unknown template set"),
            "{err}"
        );
        let err = parse("[[label]]\nname = \"a\"\ncolour = 1\n").unwrap_err();
        assert!(
            err.to_string().contains("line 3") && err.to_string().contains("colour"),
            "{err}"
        );
        let err = parse("").unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        let err = parse("[[label]]\nname = \"a\"\nmin_probability = 0.5\n").unwrap_err();
        assert!(err.to_string().contains("always 1"), "{err}");
        let err =
            parse("[[label]]\nname = \"a\"\nmin_probability = 1.5\nmin_cosine = 0.2").unwrap_err();
        assert!(err.to_string().contains("not both"), "{err}");
        let err =
            parse("[[label]]\nname = \"a\"\nnegative = true\naction = \"drop\"\n").unwrap_err();
        assert!(err.to_string().contains("never fires"), "{err}");
        let err = parse("[[label]]\nname = \"a\"\nmin_cosine = 0.2\nenter = 0\n").unwrap_err();
        assert!(err.to_string().contains("at least 1"), "{err}");
        let err = parse("[[label]\nname = 1").unwrap_err();
        assert!(err.to_string().starts_with("set.toml: line 1"), "{err}");
    }

    #[test]
    fn regions_are_checked_with_line_and_field() {
        let set = parse(
            "[[region]]\nname = \"gate\"\nbox = [0.62, 0.4, 0.3, 0.35]\n\n[[region]]\nname = \"door\"\npolygon = [[0.1, 0.1], [0.3, 0.1], [0.2, 0.4]]\n\n[[label]]\nname = \"red\"\nmin_cosine = 0.5\nregions = [\"gate\"]\n",
        )
        .unwrap();
        assert_eq!(set.regions.len(), 2);
        assert_eq!(set.labels[0].regions, ["gate"]);
        set.check_regions(&set.regions).unwrap();
        let err = set
            .check_regions(&set.regions[1..])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "set.toml: line 12, column 11, field `label[0].regions`: label `red`: unknown region `gate` (regions: door)"
        );
        let all = set.all_regions(&[]).unwrap();
        assert_eq!(all.len(), 2);
        assert!(
            set.all_regions(&set.regions[..1])
                .unwrap_err()
                .to_string()
                .contains("both")
        );

        let label = "\n[[label]]\nname = \"a\"\nmin_cosine = 0.2\n";
        let cases = [
            (
                "[[region]]\nname = \"g\"\nbox = [0.7, 0.4, 0.5, 0.35]\n",
                "line 3",
                "region[0].box",
                "outside",
            ),
            (
                "[[region]]\nname = \"g\"\npolygon = []\n",
                "line 3",
                "region[0].polygon",
                "3 and 64 points",
            ),
            (
                "[[region]]\nname = \"g\"\npolygon = [[0.1, 0.1], [0.7, 0.6], [0.5, 0.1], [0.1, 0.5]]\n",
                "line 3",
                "region[0].polygon",
                "crosses itself",
            ),
            (
                "[[region]]\nname = \"g\"\n",
                "line 2",
                "region[0].box",
                "needs a box",
            ),
            (
                "[[region]]\nname = \"g:h\"\nbox = [0, 0, 1, 1]\n",
                "line 2",
                "region[0].name",
                "contains `:`",
            ),
            (
                "[[region]]\nname = \"g\"\nbox = [0, 0, 1]\n",
                "line 3",
                "region[0].box",
                "4 numbers",
            ),
        ];
        for (text, line, field, needle) in cases {
            let err = parse(&format!("{text}{label}")).unwrap_err().to_string();
            assert!(
                err.contains(line)
                    && err.contains(&format!("field `{field}`"))
                    && err.contains(needle),
                "{text}: {err}"
            );
        }
        let err = parse("[[label]]\nname = \"a\"\nmin_cosine = 0.2\nregions = []\n").unwrap_err();
        assert!(err.to_string().contains("label[0].regions"), "{err}");
    }

    #[test]
    fn inline_prompts() {
        let set =
            LabelSet::from_prompts(&["red".into(), " green ".into()], Templates::None).unwrap();
        assert_eq!(set.labels[1].name, "green");
        assert!(LabelSet::from_prompts(&[], Templates::None).is_err());
        assert!(LabelSet::from_prompts(&["a".into(), "a".into()], Templates::None).is_err());
        let one = LabelSet::from_prompts(&["smoke".into()], Templates::None).unwrap();
        assert!(
            one.check_default_threshold(Threshold::Probability(0.5))
                .is_err()
        );
        assert!(one.check_default_threshold(Threshold::Cosine(0.25)).is_ok());
    }
}
