//! Rewriting thresholds in a label file while keeping everything else byte for byte: comments,
//! order, layout (`toml_edit`). Used by `clipfilterd calibrate --write`.

use std::path::Path;

use toml_edit::{DocumentMut, Item, Value};

use super::Threshold;
use crate::error::{Error, Location, Result};

fn key_of(t: Threshold) -> (&'static str, &'static str, f32) {
    match t {
        Threshold::Cosine(v) => ("min_cosine", "min_probability", v),
        Threshold::Probability(v) => ("min_probability", "min_cosine", v),
    }
}

/// `text` (the label file at `path`) with the threshold of each named label set to the given
/// one. A label that has its own `min_probability`/`min_cosine` gets the number replaced in
/// place (its comments and spacing kept); a label that took the `[defaults]` threshold gets its
/// own key, added at the end of its table. Nothing else changes.
pub fn set_thresholds(text: &str, path: &Path, changes: &[(String, Threshold)]) -> Result<String> {
    let mut doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        let loc = e
            .span()
            .map(|s| Location::from_offset(text, s.start, None))
            .unwrap_or_default();
        Error::config(path, loc, e.message().trim().to_string())
    })?;
    let tables = doc
        .get_mut("label")
        .and_then(Item::as_array_of_tables_mut)
        .ok_or_else(|| Error::config(path, Location::field("label"), "no [[label]] tables"))?;
    for (name, threshold) in changes {
        let (key, other, v) = key_of(*threshold);
        let table = tables
            .iter_mut()
            .find(|t| t.get("name").and_then(Item::as_str).map(str::trim) == Some(name))
            .ok_or_else(|| {
                Error::config(path, Location::field("label"), format!("no label `{name}`"))
            })?;
        if table.contains_key(other) {
            return Err(Error::config(
                path,
                Location::field(format!("label `{name}`.{other}")),
                format!("the label uses {other}; calibration computed {key}"),
            ));
        }
        // f32's shortest decimal form, read as the f64 that TOML stores: 0.4123, not 0.41229999.
        let number: f64 = format!("{v}")
            .parse()
            .map_err(|_| Error::invalid("threshold", format!("{v} is not a finite number")))?;
        match table.get_mut(key) {
            Some(item) => {
                let decor = item.as_value().map(|old| old.decor().clone());
                let mut new = Value::from(number);
                if let Some(d) = decor {
                    *new.decor_mut() = d;
                }
                *item = Item::Value(new);
            }
            None => {
                table.insert(key, toml_edit::value(number));
            }
        }
    }
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::LabelSet;

    const FILE: &str = "# my labels\n[defaults]\nmin_probability = 0.5 # everyone\n\n[[label]]\nname = \"van\"   # the white one\nmin_cosine   =  0.25  # guessed\naction = \"blank\"\n\n# people\n[[label]]\nname = \"person\"\n\n[[label]]\nname = \"sky\"\nnegative = true\n";

    #[test]
    fn only_the_numbers_change() {
        let p = Path::new("l.toml");
        let out = set_thresholds(
            FILE,
            p,
            &[
                ("van".into(), Threshold::Cosine(0.3125)),
                ("person".into(), Threshold::Probability(0.4)),
            ],
        )
        .unwrap();
        let want = FILE
            .replace("=  0.25  # guessed", "=  0.3125  # guessed")
            .replace(
                "name = \"person\"\n",
                "name = \"person\"\nmin_probability = 0.4\n",
            );
        assert_eq!(out, want);
        let set = LabelSet::from_toml_str(&out, p).unwrap();
        assert_eq!(set.labels[0].threshold, Some(Threshold::Cosine(0.3125)));
        assert_eq!(set.labels[1].threshold, Some(Threshold::Probability(0.4)));
        assert!(set_thresholds(FILE, p, &[("cat".into(), Threshold::Cosine(0.2))]).is_err());
        assert!(set_thresholds(FILE, p, &[("van".into(), Threshold::Probability(0.2))]).is_err());
    }
}
