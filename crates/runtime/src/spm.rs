//! SentencePiece tokenization as llama.cpp does it for GGUF `tokenizer.ggml.model = llama`
//! vocabularies (Llama 2, Gemma): spaces become `▁`, the text starts as one symbol per
//! character, and the adjacent pair whose concatenation is a vocabulary entry with the highest
//! score is merged until none is left (ties: leftmost first). A symbol that is not a token falls
//! back to its UTF-8 bytes (`<0xXX>` tokens). Control tokens written in the text are matched
//! whole when asked for; user-defined tokens (Gemma's newline and tab runs) always are.

use anyhow::{Result, bail};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

const SPACE: &str = "\u{2581}";

pub struct Spm {
    ids: HashMap<String, u32>,
    tokens: Vec<String>,
    scores: Vec<f32>,
    /// llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte.
    types: Vec<i32>,
    bytes: Vec<Option<u32>>,
    unk: Option<u32>,
    add_space_prefix: bool,
    /// Byte lengths of the tokens matched whole (control and user-defined), longest first.
    whole_lengths: Vec<usize>,
}

/// A merge candidate: the pair starting at symbol `left`, as long as `len` bytes.
struct Bigram {
    score: f32,
    left: usize,
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    /// Highest score first; among equals, the leftmost.
    fn cmp(&self, o: &Self) -> Ordering {
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.left.cmp(&self.left))
    }
}

impl Spm {
    pub fn new(
        tokens: Vec<String>,
        scores: Vec<f32>,
        types: Vec<i32>,
        unk: Option<u32>,
        add_space_prefix: bool,
    ) -> Result<Spm> {
        if tokens.is_empty() || scores.len() != tokens.len() {
            bail!(
                "SentencePiece vocabulary: {} tokens but {} scores",
                tokens.len(),
                scores.len()
            );
        }
        let mut types = types;
        types.resize(tokens.len(), 1);
        let ids: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let mut bytes = vec![None; 256];
        for (b, slot) in bytes.iter_mut().enumerate() {
            *slot = ids.get(&format!("<0x{b:02X}>")).copied();
        }
        let mut whole_lengths: Vec<usize> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == 3 || **t == 4)
            .map(|(s, _)| s.len())
            .collect();
        whole_lengths.sort_unstable_by(|a, b| b.cmp(a));
        whole_lengths.dedup();
        Ok(Spm {
            ids,
            tokens,
            scores,
            types,
            bytes,
            unk,
            add_space_prefix,
            whole_lengths,
        })
    }

    pub fn token_to_id(&self, t: &str) -> Option<u32> {
        self.ids.get(t).copied()
    }

    /// Token ids of `text`; `control` says whether control tokens written in the text (such as
    /// `<start_of_turn>`) are recognised.
    pub fn encode(&self, text: &str, control: bool) -> Vec<u32> {
        let mut out = vec![];
        let mut start = 0;
        let mut i = 0;
        // As llama.cpp: the space prefix goes before the text's start and after each token
        // matched whole.
        let mut after_whole = true;
        while i < text.len() {
            if let Some((id, len)) = self.whole_at(&text[i..], control) {
                self.encode_fragment(&text[start..i], after_whole, &mut out);
                after_whole = true;
                out.push(id);
                i += len;
                start = i;
            } else {
                i += text[i..].chars().next().map_or(1, char::len_utf8);
            }
        }
        self.encode_fragment(&text[start..], after_whole, &mut out);
        out
    }

    /// The longest control / user-defined token at the start of `s`.
    fn whole_at(&self, s: &str, control: bool) -> Option<(u32, usize)> {
        for &len in &self.whole_lengths {
            if len == 0 || len > s.len() || !s.is_char_boundary(len) {
                continue;
            }
            if let Some(&id) = self.ids.get(&s[..len]) {
                let t = self.types[id as usize];
                if t == 4 || (control && t == 3) {
                    return Some((id, len));
                }
            }
        }
        None
    }

    fn encode_fragment(&self, text: &str, space_prefix: bool, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut s = String::with_capacity(text.len() + 3);
        if self.add_space_prefix && space_prefix {
            s.push(' ');
        }
        s.push_str(text);
        let s = s.replace(' ', SPACE);
        // Symbols as byte ranges, linked left and right; merged ones get len 0.
        let start: Vec<usize> = s.char_indices().map(|(i, _)| i).collect();
        let n = start.len();
        let mut len: Vec<usize> = (0..n)
            .map(|k| start.get(k + 1).copied().unwrap_or(s.len()) - start[k])
            .collect();
        let mut prev: Vec<Option<usize>> = (0..n).map(|k| k.checked_sub(1)).collect();
        let mut next: Vec<Option<usize>> = (0..n).map(|k| (k + 1 < n).then_some(k + 1)).collect();
        let mut heap = BinaryHeap::new();
        let try_pair =
            |heap: &mut BinaryHeap<Bigram>, l: usize, r: usize, start: &[usize], len: &[usize]| {
                let piece = &s[start[l]..start[r] + len[r]];
                if let Some(&id) = self.ids.get(piece) {
                    heap.push(Bigram {
                        score: self.scores[id as usize],
                        left: l,
                        len: piece.len(),
                    });
                }
            };
        for k in 1..n {
            try_pair(&mut heap, k - 1, k, &start, &len);
        }
        while let Some(b) = heap.pop() {
            let l = b.left;
            let Some(r) = next[l] else { continue };
            // Stale: one side was merged into something else since this pair was queued.
            if len[l] == 0 || len[r] == 0 || len[l] + len[r] != b.len {
                continue;
            }
            len[l] += len[r];
            len[r] = 0;
            next[l] = next[r];
            if let Some(nr) = next[r] {
                prev[nr] = Some(l);
            }
            if let Some(pl) = prev[l] {
                try_pair(&mut heap, pl, l, &start, &len);
            }
            if let Some(nr) = next[l] {
                try_pair(&mut heap, l, nr, &start, &len);
            }
        }
        let mut k = Some(0);
        while let Some(i) = k {
            let piece = &s[start[i]..start[i] + len[i]];
            match self.ids.get(piece) {
                Some(&id) => out.push(id),
                None => out.extend(
                    piece
                        .bytes()
                        .filter_map(|b| self.bytes[b as usize].or(self.unk)),
                ),
            }
            k = next[i];
        }
    }

    /// Text of `ids`; control tokens are left out when `skip_control`.
    pub fn decode(&self, ids: &[u32], skip_control: bool) -> String {
        let mut bytes = vec![];
        for &id in ids {
            let Some(t) = self.tokens.get(id as usize) else {
                continue;
            };
            match self.types[id as usize] {
                6 => {
                    if let Some(b) = t
                        .strip_prefix("<0x")
                        .and_then(|h| h.strip_suffix('>'))
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                    {
                        bytes.push(b);
                    }
                }
                3 if skip_control => {}
                _ => bytes.extend(t.replace(SPACE, " ").bytes()),
            }
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        match (self.add_space_prefix, text.strip_prefix(' ')) {
            (true, Some(rest)) => rest.to_string(),
            _ => text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> Spm {
        // (token, score, type)
        let v: Vec<(&str, f32, i32)> = vec![
            ("<unk>", 0.0, 2),
            ("<s>", 0.0, 3),
            ("<ctl>", 0.0, 3),
            ("\n\n", 0.0, 4),
            ("▁", -1.0, 1),
            ("a", -2.0, 1),
            ("b", -2.0, 1),
            ("ab", -0.5, 1),
            ("▁ab", -0.2, 1),
            ("ba", -0.1, 1),
            ("<0xC3>", 0.0, 6),
            ("<0xA9>", 0.0, 6),
        ];
        Spm::new(
            v.iter().map(|t| t.0.to_string()).collect(),
            v.iter().map(|t| t.1).collect(),
            v.iter().map(|t| t.2).collect(),
            Some(0),
            true,
        )
        .unwrap()
    }

    #[test]
    fn merges_by_score_and_falls_back_to_bytes() {
        let s = vocab();
        // "▁aba": pairs ▁a (absent), ab (-0.5), ba (-0.1) → "ba" first, then nothing joins "▁a".
        // "▁", "a", "ba" → ids 4, 5, 9.
        assert_eq!(s.encode("aba", false), vec![4, 5, 9]);
        // "▁ab": ab (-0.5) then ▁ab (-0.2).
        assert_eq!(s.encode("ab", false), vec![8]);
        // é is not a token: its two UTF-8 bytes.
        assert_eq!(s.encode("é", false), vec![4, 10, 11]);
        assert_eq!(s.decode(&s.encode("é", false), true), "é");
    }

    #[test]
    fn control_tokens_only_when_asked_user_defined_always() {
        let s = vocab();
        assert_eq!(s.encode("ab<ctl>", true)[1], 2);
        assert!(!s.encode("ab<ctl>", false).contains(&2));
        // After a token matched whole the space prefix comes again: "▁ab".
        assert_eq!(s.encode("ab\n\nab", false), vec![8, 3, 8]);
        assert_eq!(s.decode(&[8, 2, 3], true), "ab\n\n");
    }
}
