//! A compiled label set as data: every label's resolved rules and the key of its texts, the
//! defaults it was compiled with, and a version. The element shows it (its `label-set`
//! property) and a sample history records it next to the scores, so that a backtest knows which
//! stored cosines a new label set can reuse.

use sha2::{Digest, Sha256};

use super::{CompiledLabel, LabelDefaults};

/// A compiled label set, without its embeddings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LabelSetInfo {
    /// 16 hex digits that change whenever anything below does.
    pub version: String,
    pub logit_scale: f32,
    pub defaults: LabelDefaults,
    pub labels: Vec<CompiledLabel>,
}

impl LabelSetInfo {
    /// The version of a set: a hash of its logit scale, defaults and labels (names, rules, keys).
    pub fn version_of(
        logit_scale: f32,
        defaults: &LabelDefaults,
        labels: &[CompiledLabel],
    ) -> String {
        let text = serde_json::to_string(&(logit_scale, defaults, labels)).unwrap_or_default();
        short_hash(text.as_bytes())
    }

    /// Index of the label whose texts have key `key`.
    pub fn index_of_key(&self, key: &str) -> Option<usize> {
        self.labels.iter().position(|l| l.key == key)
    }
}

/// The key of a label's texts (prompts expanded with templates, in order): 16 hex digits of
/// their SHA-256. Two labels with equal keys get equal class embeddings from one model.
pub fn texts_key(texts: &[String]) -> String {
    let mut h = Sha256::new();
    for t in texts {
        h.update(t.as_bytes());
        h.update([0]);
    }
    hex16(&h.finalize())
}

fn short_hash(bytes: &[u8]) -> String {
    hex16(&Sha256::digest(bytes))
}

fn hex16(digest: &[u8]) -> String {
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::{Action, Threshold};

    #[test]
    fn keys_follow_texts_and_versions_follow_everything() {
        assert_eq!(
            texts_key(&["a red car".into()]),
            texts_key(&["a red car".into()])
        );
        assert_ne!(
            texts_key(&["ab".into(), "c".into()]),
            texts_key(&["a".into(), "bc".into()])
        );
        let label = CompiledLabel {
            name: "red".into(),
            threshold: Threshold::Cosine(0.3),
            action: Action::None,
            negative: false,
            enter: 1,
            leave: 1,
            key: texts_key(&["red".into()]),
            regions: Vec::new(),
            min_zscore: None,
            zscore_window: 0,
        };
        let d = LabelDefaults::default();
        let v = LabelSetInfo::version_of(100.0, &d, std::slice::from_ref(&label));
        assert_eq!(v.len(), 16);
        let mut other = label.clone();
        other.enter = 2;
        assert_ne!(v, LabelSetInfo::version_of(100.0, &d, &[other]));
        // A label without min_zscore serialises as before it existed: versions stay.
        assert!(!serde_json::to_string(&label).unwrap().contains("zscore"));
        let mut relative = label.clone();
        relative.min_zscore = Some(3.0);
        relative.zscore_window = 600;
        assert_ne!(v, LabelSetInfo::version_of(100.0, &d, &[relative]));
        assert_ne!(
            v,
            LabelSetInfo::version_of(50.0, &d, std::slice::from_ref(&label))
        );
        let info = LabelSetInfo {
            version: v,
            logit_scale: 100.0,
            defaults: d,
            labels: vec![label],
        };
        let json = serde_json::to_string(&info).unwrap();
        assert!(json.contains(r#""threshold":{"cosine":0.3}"#), "{json}");
        let back: LabelSetInfo = serde_json::from_str(&json).unwrap();
        assert_eq!(back, info);
        assert_eq!(back.index_of_key(&texts_key(&["red".into()])), Some(0));
    }
}
