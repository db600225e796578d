//! Tokenisation as CLIP was trained with it.
//!
//! The byte-level BPE itself comes from the model's `tokenizer.json` through the `tokenizers`
//! crate. Before it, the text is cleaned the way OpenAI's `SimpleTokenizer` does
//! (`basic_clean` + `whitespace_clean`): HTML entities are unescaped twice and the text goes
//! through the parts of `ftfy.fix_text` that change realistic prompts (curly quotes, full-width
//! forms, Latin ligatures, line breaks and control characters, C1 controls, NFC) and its
//! commonest mojibake repair: UTF-8 that was decoded as Windows-1252 ("cafÃ©" -> "café").
//! `tokenizer.json` alone, as transformers' fast tokenizer uses it, skips that cleaning; for
//! ordinary prompts both agree.

use std::path::{Path, PathBuf};

use unicode_normalization::UnicodeNormalization;

use crate::error::{Error, Result};

/// CLIP's start-of-text token.
pub const START_OF_TEXT: &str = "<|startoftext|>";
/// CLIP's end-of-text token.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// A CLIP tokenizer with a fixed context length.
pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    bos: u32,
    eos: u32,
    pad: u32,
    context_length: usize,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("path", &self.path)
            .field("context_length", &self.context_length)
            .finish()
    }
}

impl ClipTokenizer {
    /// Loads `tokenizer.json`. `pad_token` names the padding token (tokenizer_config.json);
    /// CLIP pads with the end token when it is not given.
    pub fn from_file(path: &Path, context_length: usize, pad_token: Option<&str>) -> Result<Self> {
        let err = |message: String| Error::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        if !path.is_file() {
            return Err(err("file not found".into()));
        }
        let mut inner = tokenizers::Tokenizer::from_file(path).map_err(|e| err(e.to_string()))?;
        inner
            .with_truncation(None)
            .map_err(|e| err(e.to_string()))?;
        inner.with_padding(None);
        let id = |t: &str| {
            inner.token_to_id(t).ok_or_else(|| {
                err(format!(
                    "the vocabulary has no `{t}` token; is this a CLIP tokenizer?"
                ))
            })
        };
        let bos = id(START_OF_TEXT)?;
        let eos = id(END_OF_TEXT)?;
        let pad = match pad_token {
            Some(t) => id(t)?,
            None => eos,
        };
        if context_length < 2 {
            return Err(err(format!("context length {context_length} is too small")));
        }
        Ok(ClipTokenizer {
            inner,
            path: path.to_path_buf(),
            bos,
            eos,
            pad,
            context_length,
        })
    }

    /// Start, end and padding token ids.
    pub fn special_ids(&self) -> (u32, u32, u32) {
        (self.bos, self.eos, self.pad)
    }

    /// Maximum number of tokens, start and end included.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Token ids of `text`: start token, BPE tokens, end token; truncated to the context length
    /// keeping the end token last, as OpenAI's `tokenize(truncate=True)` does.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let cleaned = clean(text);
        let enc = self
            .inner
            .encode(cleaned.as_str(), false)
            .map_err(|e| Error::Tokenizer {
                path: self.path.clone(),
                message: format!("`{text}`: {e}"),
            })?;
        let mut ids = Vec::with_capacity(enc.get_ids().len() + 2);
        ids.push(self.bos);
        ids.extend_from_slice(enc.get_ids());
        ids.truncate(self.context_length - 1);
        ids.push(self.eos);
        Ok(ids)
    }
}

/// OpenAI's text cleaning (see the module documentation).
pub fn clean(text: &str) -> String {
    // ftfy (unescape_html="auto") then basic_clean's double html.unescape.
    let mut s = text.to_string();
    for _ in 0..3 {
        let next = html_escape::decode_html_entities(&s).into_owned();
        if next == s {
            break;
        }
        s = next;
    }
    let s = fix_mojibake(&s);
    let mut out = String::with_capacity(s.len());
    for c in s.nfc().map(fix_c1_control) {
        match c {
            // ftfy uncurl_quotes
            '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}' => out.push('\''),
            '\u{201C}' | '\u{201D}' | '\u{201E}' | '\u{201F}' => out.push('"'),
            // ftfy fix_latin_ligatures
            '\u{FB00}' => out.push_str("ff"),
            '\u{FB01}' => out.push_str("fi"),
            '\u{FB02}' => out.push_str("fl"),
            '\u{FB03}' => out.push_str("ffi"),
            '\u{FB04}' => out.push_str("ffl"),
            '\u{FB05}' | '\u{FB06}' => out.push_str("st"),
            '\u{0132}' => out.push_str("IJ"),
            '\u{0133}' => out.push_str("ij"),
            '\u{0149}' => out.push_str("\u{02BC}n"),
            '\u{01C4}'..='\u{01CC}' | '\u{01F1}'..='\u{01F3}' => out.extend(c.to_string().nfkc()),
            // ftfy fix_character_width: full-width ASCII and the ideographic space to ASCII,
            // half-width katakana to full-width (NFKC of the Halfwidth and Fullwidth Forms block)
            '\u{3000}' => out.push(' '),
            '\u{FF01}'..='\u{FFEE}' => out.extend(c.to_string().nfkc()),
            // ftfy fix_line_breaks and remove_control_chars
            '\r' | '\u{2028}' | '\u{2029}' | '\u{0085}' => out.push('\n'),
            '\u{0000}'..='\u{0008}' | '\u{000B}' | '\u{000E}'..='\u{001F}' | '\u{007F}' => {}
            '\u{206A}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFC}' => {}
            '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E007F}' => {}
            c => out.push(c),
        }
    }
    // ftfy normalises to NFC last; whitespace_clean collapses runs and strips.
    let out: String = out.nfc().collect();
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Windows-1252's characters for bytes 0x80..=0x9F (ftfy's "sloppy" variant keeps the five
/// undefined ones as C1 controls).
const CP1252_HIGH: [char; 32] = [
    '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8D}', 'Ž', '\u{8F}',
    '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9D}', 'ž', 'Ÿ',
];

/// The byte `c` came from if text was decoded as (sloppy) Windows-1252.
fn cp1252_byte(c: char) -> Option<u8> {
    match u32::from(c) {
        0x00..=0x7F | 0xA0..=0xFF => Some(u32::from(c) as u8),
        _ => CP1252_HIGH
            .iter()
            .position(|h| *h == c)
            .map(|i| 0x80 + i as u8),
    }
}

/// ftfy's fix_c1_controls: C1 control characters become their Windows-1252 meaning.
fn fix_c1_control(c: char) -> char {
    match u32::from(c) {
        n @ 0x80..=0x9F => CP1252_HIGH[(n - 0x80) as usize],
        _ => c,
    }
}

/// Repairs UTF-8 that was decoded as Windows-1252: every run of characters that are single
/// Windows-1252 bytes and together form a valid multi-byte UTF-8 character is replaced by it.
fn fix_mojibake(s: &str) -> std::borrow::Cow<'_, str> {
    if s.is_ascii() {
        return s.into();
    }
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut changed = false;
    let mut i = 0;
    while i < chars.len() {
        let lead = cp1252_byte(chars[i]).filter(|b| (0xC2..=0xF4).contains(b));
        let need = match lead {
            Some(0xC2..=0xDF) => 1,
            Some(0xE0..=0xEF) => 2,
            Some(_) => 3,
            None => 0,
        };
        if need > 0 && i + need < chars.len() {
            let bytes: Option<Vec<u8>> = chars[i..=i + need]
                .iter()
                .map(|c| cp1252_byte(*c))
                .collect();
            if let Some(Ok(decoded)) = bytes
                .filter(|b| b[1..].iter().all(|x| (0x80..=0xBF).contains(x)))
                .map(String::from_utf8)
            {
                out.push_str(&decoded);
                i += need + 1;
                changed = true;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    if changed { out.into() } else { s.into() }
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn cleaning_matches_openai_basic_clean() {
        assert_eq!(clean("  a \t\n b  "), "a b");
        assert_eq!(clean("fish &amp;amp; chips"), "fish & chips");
        assert_eq!(clean("“quoted” ‘single’"), "\"quoted\" 'single'");
        assert_eq!(clean("ＡＢＣ１２３，"), "ABC123,");
        assert_eq!(clean("ﬁsh"), "fish");
        assert_eq!(clean("e\u{301}"), "é");
        assert_eq!(clean("cafÃ© crÃ¨me"), "café crème");
        assert_eq!(clean("itâ€™s"), "it's");
        assert_eq!(clean("Ã and Â alone"), "Ã and Â alone");
        assert_eq!(clean(""), "");
    }
}
