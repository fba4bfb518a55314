//! Tokenizers for local LLMs: a `tokenizer.json` when one sits beside the weights, otherwise rebuilt from the
//! GGUF metadata: byte-level BPE (`gpt2`: SmolLM, Qwen, Llama 3) through the `tokenizers` crate, or
//! SentencePiece (`llama`: Gemma, Llama 2) with the score-ordered merging llama.cpp uses.

use std::collections::{BinaryHeap, HashMap};
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::LocalError;
use super::transformer::{meta, meta_str};

/// llama.cpp's token types.
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;
const TYPE_BYTE: i64 = 6;

/// Text to token ids and back, with the model's special tokens.
pub struct TextTokenizer {
    kind: Kind,
    /// Prepended to completion prompts (GGUF `add_bos_token`).
    pub bos: Option<u32>,
    pub bos_text: String,
    pub eos_text: String,
    /// Tokens that end a generation: EOS and the end-of-turn markers the vocabulary has.
    pub stop_ids: Vec<u32>,
    /// Whether completions get the BOS token.
    pub add_bos: bool,
}

enum Kind {
    Hf(Box<tokenizers::Tokenizer>),
    Spm(Box<SentencePiece>),
}

impl TextTokenizer {
    /// From `tokenizer.json` beside the GGUF when present, else from the GGUF metadata.
    pub fn load(ct: &Content, beside: Option<&Path>) -> Result<TextTokenizer, LocalError> {
        let tokens = string_array(ct, "tokenizer.ggml.tokens")?;
        let types = int_array(ct, "tokenizer.ggml.token_type").unwrap_or_else(|_| vec![1; tokens.len()]);
        let model = meta_str(ct, "tokenizer.ggml.model").unwrap_or_else(|_| "gpt2".into());
        let kind = match beside.filter(|p| p.is_file()) {
            Some(file) => Kind::Hf(Box::new(
                tokenizers::Tokenizer::from_file(file)
                    .map_err(|e| LocalError::Tokenizer(format!("cannot load {}: {e}", file.display())))?,
            )),
            None => match model.as_str() {
                "gpt2" => Kind::Hf(Box::new(byte_level_bpe(ct, &tokens, &types)?)),
                "llama" => Kind::Spm(Box::new(SentencePiece::new(ct, tokens.clone(), &types)?)),
                other => {
                    return Err(LocalError::Unsupported(format!(
                        "tokenizer model `{other}` (supported: gpt2 byte-level BPE, llama SentencePiece); \
                         put a tokenizer.json beside the GGUF"
                    )));
                }
            },
        };
        let id = |key: &str| -> Option<u32> {
            match ct.metadata.get(key)? {
                Value::U32(v) => Some(*v),
                Value::I32(v) => u32::try_from(*v).ok(),
                Value::U64(v) => u32::try_from(*v).ok(),
                _ => None,
            }
        };
        let bos = id("tokenizer.ggml.bos_token_id");
        let eos = id("tokenizer.ggml.eos_token_id");
        let text_of = |id: Option<u32>| id.and_then(|i| tokens.get(i as usize)).cloned().unwrap_or_default();
        let mut stop_ids: Vec<u32> = eos.into_iter().collect();
        for marker in ["<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>", "<|end|>"] {
            if let Some(position) = tokens.iter().position(|t| t == marker) {
                stop_ids.push(position as u32);
            }
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();
        let add_bos = matches!(ct.metadata.get("tokenizer.ggml.add_bos_token"), Some(Value::Bool(true)));
        Ok(TextTokenizer { kind, bos, bos_text: text_of(bos), eos_text: text_of(eos), stop_ids, add_bos })
    }

    /// Token ids of `text`. With `special`, control tokens written in the text (`<|im_start|>`) become
    /// their ids, as a rendered chat template needs.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>, LocalError> {
        match &self.kind {
            // The `tokenizers` crate always matches added tokens, so `special` only matters for SentencePiece.
            Kind::Hf(tokenizer) => Ok(tokenizer
                .encode_fast(text, false)
                .map_err(|e| LocalError::Tokenizer(format!("cannot tokenize: {e}")))?
                .get_ids()
                .to_vec()),
            Kind::Spm(spm) => Ok(spm.encode(text, special)),
        }
    }

    /// The text of each token id alone (empty for control tokens; U+FFFD for a part of a character), for
    /// guided decoding.
    pub fn token_texts(&self, vocab: usize) -> Vec<String> {
        (0..vocab as u32).map(|id| self.decode(&[id]).unwrap_or_default()).collect()
    }

    /// Text of `ids`, control tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, LocalError> {
        match &self.kind {
            Kind::Hf(tokenizer) => {
                tokenizer.decode(ids, true).map_err(|e| LocalError::Tokenizer(format!("cannot decode: {e}")))
            }
            Kind::Spm(spm) => Ok(spm.decode(ids)),
        }
    }
}

fn string_array(ct: &Content, key: &str) -> Result<Vec<String>, LocalError> {
    let Value::Array(values) = meta(ct, key)? else {
        return Err(LocalError::Format(format!("`{key}` is not an array")));
    };
    values
        .iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.clone()),
            other => Err(LocalError::Format(format!("`{key}` holds {other:?}"))),
        })
        .collect()
}

fn int_array(ct: &Content, key: &str) -> Result<Vec<i64>, LocalError> {
    let Value::Array(values) = meta(ct, key)? else {
        return Err(LocalError::Format(format!("`{key}` is not an array")));
    };
    values
        .iter()
        .map(|v| match v {
            Value::I32(x) => Ok(*x as i64),
            Value::U32(x) => Ok(*x as i64),
            Value::I64(x) => Ok(*x),
            Value::U8(x) => Ok(*x as i64),
            Value::I8(x) => Ok(*x as i64),
            other => Err(LocalError::Format(format!("`{key}` holds {other:?}"))),
        })
        .collect()
}

fn float_array(ct: &Content, key: &str) -> Result<Vec<f32>, LocalError> {
    let Value::Array(values) = meta(ct, key)? else {
        return Err(LocalError::Format(format!("`{key}` is not an array")));
    };
    values
        .iter()
        .map(|v| match v {
            Value::F32(x) => Ok(*x),
            Value::F64(x) => Ok(*x as f32),
            other => Err(LocalError::Format(format!("`{key}` holds {other:?}"))),
        })
        .collect()
}

/// Byte-level BPE with the pre-tokenizer llama.cpp picks for the GGUF's `tokenizer.ggml.pre`.
fn byte_level_bpe(ct: &Content, tokens: &[String], types: &[i64]) -> Result<tokenizers::Tokenizer, LocalError> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let merges = string_array(ct, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| LocalError::Format(format!("bad merge `{m}`")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| LocalError::Tokenizer(format!("cannot build BPE: {e}")))?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    let split = |pattern: &str| -> Result<PreTokenizerWrapper, LocalError> {
        let split = Split::new(SplitPattern::Regex(pattern.into()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| LocalError::Tokenizer(format!("bad pre-tokenizer pattern: {e}")))?;
        Ok(split.into())
    };
    let pre = meta_str(ct, "tokenizer.ggml.pre").unwrap_or_else(|_| "default".into());
    let pre_tokenizer: PreTokenizerWrapper = match pre.as_str() {
        "smollm" => Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]).into(),
        "qwen2" | "deepseek-r1-qwen" => {
            Sequence::new(vec![split(QWEN2)?, ByteLevel::new(false, false, false).into()]).into()
        }
        "llama3" | "llama-bpe" | "smaug-bpe" => {
            Sequence::new(vec![split(LLAMA3)?, ByteLevel::new(false, false, false).into()]).into()
        }
        _ => ByteLevel::new(false, true, true).into(),
    };
    if pre == "qwen2" {
        tokenizer
            .with_normalizer(Some(tokenizers::normalizers::unicode::NFC))
            .map_err(|e| LocalError::Tokenizer(e.to_string()))?;
    }
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(types)
        .filter(|(_, t)| matches!(**t, TYPE_CONTROL | TYPE_USER_DEFINED))
        .map(|(token, kind)| AddedToken::from(token.clone(), *kind == TYPE_CONTROL))
        .collect();
    tokenizer
        .add_special_tokens(special)
        .map_err(|e| LocalError::Tokenizer(format!("cannot add special tokens: {e}")))?;
    Ok(tokenizer)
}

/// SentencePiece BPE as llama.cpp runs it: characters merged greedily by the score of the merged piece,
/// leftmost first on ties, unknown characters spelled as `<0xXX>` byte tokens.
struct SentencePiece {
    pieces: Vec<String>,
    scores: Vec<f32>,
    ids: HashMap<String, u32>,
    /// Control tokens (matched only in special mode) and user-defined ones (always matched), longest first.
    specials: Vec<(String, u32, bool)>,
    kinds: Vec<i64>,
    byte_ids: [Option<u32>; 256],
    add_space_prefix: bool,
}

impl SentencePiece {
    fn new(ct: &Content, pieces: Vec<String>, types: &[i64]) -> Result<SentencePiece, LocalError> {
        let scores = float_array(ct, "tokenizer.ggml.scores").unwrap_or_else(|_| vec![0.0; pieces.len()]);
        let ids: HashMap<String, u32> = pieces.iter().enumerate().map(|(i, p)| (p.clone(), i as u32)).collect();
        let mut byte_ids = [None; 256];
        for (byte, slot) in byte_ids.iter_mut().enumerate() {
            *slot = ids.get(&format!("<0x{byte:02X}>")).copied();
        }
        let mut specials: Vec<(String, u32, bool)> = pieces
            .iter()
            .zip(types)
            .enumerate()
            .filter(|(_, (p, t))| matches!(**t, TYPE_CONTROL | TYPE_USER_DEFINED) && !p.is_empty())
            .map(|(i, (p, t))| (p.clone(), i as u32, *t == TYPE_CONTROL))
            .collect();
        specials.sort_by_key(|(p, _, _)| std::cmp::Reverse(p.len()));
        let add_space_prefix = !matches!(ct.metadata.get("tokenizer.ggml.add_space_prefix"), Some(Value::Bool(false)));
        Ok(SentencePiece { pieces, scores, ids, specials, kinds: types.to_vec(), byte_ids, add_space_prefix })
    }

    fn encode(&self, text: &str, special: bool) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut rest = text;
        let mut first = true;
        while !rest.is_empty() {
            // The earliest special token in the rest (longest on ties).
            let found = self
                .specials
                .iter()
                .filter(|(_, _, control)| special || !control)
                .filter_map(|(piece, id, _)| rest.find(piece.as_str()).map(|at| (at, piece.len(), *id)))
                .min_by_key(|(at, len, _)| (*at, std::cmp::Reverse(*len)));
            let (plain, after) = match found {
                Some((at, len, id)) => {
                    self.encode_plain(&rest[..at], first, &mut ids);
                    ids.push(id);
                    (None, &rest[at + len..])
                }
                None => (Some(rest), ""),
            };
            if let Some(plain) = plain {
                self.encode_plain(plain, first, &mut ids);
            }
            first = false;
            rest = after;
        }
        ids
    }

    fn encode_plain(&self, text: &str, first: bool, ids: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut spaced = String::with_capacity(text.len() + 3);
        if self.add_space_prefix && first {
            spaced.push(' ');
        }
        spaced.push_str(text);
        let spaced = spaced.replace(' ', "\u{2581}");
        // Symbols as a linked list over byte ranges of `spaced`.
        struct Symbol {
            start: usize,
            len: usize,
            prev: Option<usize>,
            next: Option<usize>,
        }
        let mut symbols: Vec<Symbol> = Vec::new();
        for (start, ch) in spaced.char_indices() {
            let index = symbols.len();
            symbols.push(Symbol { start, len: ch.len_utf8(), prev: index.checked_sub(1), next: Some(index + 1) });
        }
        if let Some(last) = symbols.last_mut() {
            last.next = None;
        }
        // Max-heap on (score, leftmost).
        #[derive(PartialEq)]
        struct Bigram {
            score: f32,
            left: usize,
            right: usize,
            len: usize,
        }
        impl Eq for Bigram {}
        impl PartialOrd for Bigram {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }
        impl Ord for Bigram {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
            }
        }
        let mut heap = BinaryHeap::new();
        let try_pair = |heap: &mut BinaryHeap<Bigram>, symbols: &[Symbol], left: usize, right: usize| {
            let (a, b) = (&symbols[left], &symbols[right]);
            let piece = &spaced[a.start..b.start + b.len];
            if let Some(&id) = self.ids.get(piece) {
                heap.push(Bigram { score: self.scores[id as usize], left, right, len: piece.len() });
            }
        };
        for i in 1..symbols.len() {
            try_pair(&mut heap, &symbols, i - 1, i);
        }
        while let Some(bigram) = heap.pop() {
            let (left, right) = (bigram.left, bigram.right);
            // Stale: one side was merged away since this pair was queued.
            if symbols[left].len == 0
                || symbols[right].len == 0
                || symbols[left].len + symbols[right].len != bigram.len
                || symbols[left].next != Some(right)
            {
                continue;
            }
            symbols[left].len += symbols[right].len;
            symbols[right].len = 0;
            symbols[left].next = symbols[right].next;
            if let Some(next) = symbols[right].next {
                symbols[next].prev = Some(left);
            }
            if let Some(prev) = symbols[left].prev {
                try_pair(&mut heap, &symbols, prev, left);
            }
            if let Some(next) = symbols[left].next {
                try_pair(&mut heap, &symbols, left, next);
            }
        }
        let mut at = if symbols.is_empty() { None } else { Some(0) };
        while let Some(index) = at {
            let symbol = &symbols[index];
            let piece = &spaced[symbol.start..symbol.start + symbol.len];
            match self.ids.get(piece) {
                Some(&id) => ids.push(id),
                None => ids.extend(piece.bytes().filter_map(|b| self.byte_ids[b as usize])),
            }
            at = symbol.next;
        }
    }

    fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            let Some(piece) = self.pieces.get(id as usize) else { continue };
            match self.kinds.get(id as usize).copied() {
                Some(TYPE_CONTROL) => {}
                Some(TYPE_BYTE) => {
                    if let Some(byte) = piece.strip_prefix("<0x").and_then(|h| h.strip_suffix('>')) {
                        bytes.extend(u8::from_str_radix(byte, 16).ok());
                    }
                }
                _ => bytes.extend_from_slice(piece.replace('\u{2581}', " ").as_bytes()),
            }
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        match (self.add_space_prefix, text.strip_prefix(' ')) {
            (true, Some(stripped)) => stripped.to_string(),
            _ => text,
        }
    }
}
