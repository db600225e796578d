//! The text encoder's in-memory cache of prompt embeddings, bounded by bytes.
//!
//! Two generations: new entries go to the recent one; when it holds half the bound, it becomes
//! the older one and the previous older one is dropped. A hit in the older generation moves the
//! entry back to the recent one. What a reload uses again stays; what it no longer uses goes
//! after at most two turnovers. The whole cache never holds more than its bound.

use std::collections::HashMap;

/// Bound of the prompt-embedding cache: 64 MiB (about 30,000 prompts of a 512-wide model).
pub const TEXT_CACHE_BYTES: usize = 64 << 20;

/// Bytes an entry is counted for: its text, its floats and the map's overhead.
fn cost(text: &str, embedding: &[f32]) -> usize {
    text.len() + std::mem::size_of_val(embedding) + 64
}

/// Raw embeddings by prompt text, at most `max_bytes` of them.
#[derive(Debug)]
pub(crate) struct EmbeddingCache {
    recent: HashMap<String, Vec<f32>>,
    older: HashMap<String, Vec<f32>>,
    recent_bytes: usize,
    older_bytes: usize,
    max_bytes: usize,
}

impl EmbeddingCache {
    /// An empty cache holding at most `max_bytes`.
    pub(crate) fn new(max_bytes: usize) -> Self {
        EmbeddingCache {
            recent: HashMap::new(),
            older: HashMap::new(),
            recent_bytes: 0,
            older_bytes: 0,
            max_bytes,
        }
    }

    /// The embedding of `text`, if cached.
    pub(crate) fn get(&mut self, text: &str) -> Option<Vec<f32>> {
        if let Some(e) = self.recent.get(text) {
            return Some(e.clone());
        }
        let (text, e) = self.older.remove_entry(text)?;
        self.older_bytes -= cost(&text, &e);
        self.insert(text, e.clone());
        Some(e)
    }

    /// Keeps `embedding` for `text` (an entry larger than half the bound is not kept).
    pub(crate) fn insert(&mut self, text: String, embedding: Vec<f32>) {
        let bytes = cost(&text, &embedding);
        if bytes > self.max_bytes / 2 || self.recent.contains_key(&text) {
            return;
        }
        if self.recent_bytes + bytes > self.max_bytes / 2 {
            self.older = std::mem::take(&mut self.recent);
            self.older_bytes = std::mem::take(&mut self.recent_bytes);
        }
        if let Some(old) = self.older.remove(&text) {
            self.older_bytes -= cost(&text, &old);
        }
        self.recent_bytes += bytes;
        self.recent.insert(text, embedding);
    }

    /// (entries, bytes) held.
    #[cfg(test)]
    pub(crate) fn usage(&self) -> (usize, usize) {
        (
            self.recent.len() + self.older.len(),
            self.recent_bytes + self.older_bytes,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_its_bound_and_keeps_what_is_used() {
        let embedding = vec![0.5f32; 512];
        let one = cost("prompt 000000", &embedding);
        let max = one * 100;
        let mut cache = EmbeddingCache::new(max);
        for i in 0..10_000 {
            cache.insert(format!("prompt {i:06}"), embedding.clone());
            // A prompt every reload uses stays.
            assert!(cache.get("prompt 000000").is_some(), "evicted at {i}");
            let (entries, bytes) = cache.usage();
            assert!(bytes <= max, "{bytes} bytes > {max} after {i}");
            assert!(entries <= 100, "{entries} entries after {i}");
        }
        // Prompts no longer used are gone.
        assert!(cache.get("prompt 000500").is_none());
        assert_eq!(cache.get("prompt 009999"), Some(embedding.clone()));
        // An entry too large for the cache is not kept.
        cache.insert("huge".into(), vec![0.0; max]);
        assert!(cache.get("huge").is_none());
    }
}
