//! Captions → fixed-length token rows, CLIP style: `[start] tokens… [end] pad…`, 77 long,
//! truncated so the end token always survives (the trainer reads the embedding there). Backed by
//! the `tokenizers` crate so a HF `tokenizer.json` (CLIP's own BPE) loads unchanged, and a
//! byte-level BPE can be trained on the corpus captions when the user has none.

use crate::LoaderError;
use std::path::Path;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::normalizers::{Lowercase, Sequence, Strip, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

/// CLIP's context length.
pub const CONTEXT_LENGTH: usize = 77;
const START_NAMES: [&str; 4] = ["<|startoftext|>", "<s>", "<bos>", "[CLS]"];
const END_NAMES: [&str; 4] = ["<|endoftext|>", "</s>", "<eos>", "[SEP]"];
const PAD_NAMES: [&str; 3] = ["<|pad|>", "<pad>", "[PAD]"];

/// The saved file's post-processor: byte-level offsets, then `<|startoftext|> $A <|endoftext|>`,
/// so `tokenizers` and transformers' `PreTrainedTokenizerFast` frame a caption as `encode` does
/// when asked for special tokens (`encode` frames and pads it itself).
fn clip_framing(inner: &Tokenizer) -> Result<PostProcessorWrapper, LoaderError> {
    let (start, end) = (START_NAMES[0], END_NAMES[0]);
    let id = |name: &str| {
        inner.token_to_id(name).ok_or_else(|| {
            LoaderError::Tokenizer(format!("the trained tokenizer lost its {name} token"))
        })
    };
    let template = TemplateProcessing::builder()
        .try_single(format!("{start} $A {end}"))
        .map_err(LoaderError::Tokenizer)?
        .special_tokens(vec![(start, id(start)?), (end, id(end)?)])
        .build()
        .map_err(|e| LoaderError::Tokenizer(e.to_string()))?;
    Ok(PostProcessorWrapper::Sequence(
        tokenizers::processors::sequence::Sequence::new(vec![
            ByteLevel::default().into(),
            template.into(),
        ]),
    ))
}

/// A tokenizer with CLIP's framing. Cheap to share (`Arc`) across decode threads.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    sot: u32,
    eot: u32,
    pad: u32,
    context: usize,
    /// Bytes of a caption the tokenizer sees: [`input_budget`] of this vocabulary.
    max_input_bytes: usize,
}

/// How many leading bytes of a caption can matter for `context` tokens: each of the
/// `context - 2` kept tokens covers at most `longest_token` bytes of normalised text (a vocabulary
/// string is at least as long, in UTF-8, as the input bytes it stands for: byte-level tokens spell
/// each byte as one character), plus one token cut at the boundary, times 4 for normalisers that
/// change byte lengths (NFC, lowercase). Only a normaliser that deletes more than that (say, a
/// caption opening with kilobytes of whitespace) makes the prefix's tokens differ from the full
/// caption's; a 1 GiB caption then costs what this prefix costs.
fn input_budget(context: usize, longest_token: usize) -> usize {
    (context - 1) * longest_token.max(1) * 4
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn prefix(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl std::fmt::Debug for TextTokenizer {
    /// A summary: the full vocabulary would flood any log that prints a config.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("sot", &self.sot)
            .field("eot", &self.eot)
            .field("pad", &self.pad)
            .field("context", &self.context)
            .finish()
    }
}

impl TextTokenizer {
    /// Loads a HF `tokenizer.json`. It must define a start and an end token (CLIP's
    /// `<|startoftext|>`/`<|endoftext|>`, or `<s>`/`</s>`, ...); padding uses `<|pad|>`/`<pad>`
    /// when present, else id 0 as open_clip does.
    pub fn from_file(path: &Path) -> Result<Self, LoaderError> {
        let inner = Tokenizer::from_file(path).map_err(|e| {
            LoaderError::Tokenizer(format!(
                "cannot load {}: {e} (train one with `wit tokenizer train`)",
                path.display()
            ))
        })?;
        Self::from_tokenizer(inner)
    }

    fn from_tokenizer(inner: Tokenizer) -> Result<Self, LoaderError> {
        let find = |names: &[&str]| names.iter().find_map(|n| inner.token_to_id(n));
        let missing = |what: &str| {
            LoaderError::Tokenizer(format!(
                "the tokenizer has no {what} token (expected one of {:?} / {:?})",
                START_NAMES, END_NAMES
            ))
        };
        let sot = find(&START_NAMES).ok_or_else(|| missing("start"))?;
        let eot = find(&END_NAMES).ok_or_else(|| missing("end"))?;
        let pad = find(&PAD_NAMES).unwrap_or(0);
        let longest_token = inner.get_vocab(true).keys().map(String::len).max();
        Ok(TextTokenizer {
            inner,
            sot,
            eot,
            pad,
            context: CONTEXT_LENGTH,
            max_input_bytes: input_budget(CONTEXT_LENGTH, longest_token.unwrap_or(1)),
        })
    }

    /// Trains a byte-level BPE (NFC, lowercase, every byte encodable) on `captions`, with
    /// `<|pad|>` = 0 and, as in CLIP's vocabulary, `<|startoftext|>` and `<|endoftext|>` the two
    /// highest ids. The end token must be the highest: open_clip pools the text at the argmax of
    /// the ids, and transformers' `CLIPModel` does too when `eos_token_id` is 2 (its legacy rule).
    pub fn train<I, S>(captions: I, vocab_size: usize) -> Result<Self, LoaderError>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        let terr = |e: tokenizers::Error| LoaderError::Tokenizer(e.to_string());
        let special = |name: &str| AddedToken::from(name.to_string(), true);
        let mut trainer = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(vocab_size.saturating_sub(2))
            .min_frequency(2)
            .special_tokens(vec![special(PAD_NAMES[0])])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut tokenizer = TokenizerBuilder::new()
            .with_model(BPE::default())
            .with_normalizer(Some(Sequence::new(vec![
                Strip::new(true, true).into(),
                NFC.into(),
                Lowercase.into(),
            ])))
            .with_pre_tokenizer(Some(ByteLevel::default()))
            .with_post_processor(Some(ByteLevel::default()))
            .with_decoder(Some(ByteLevel::default()))
            .build()
            .map_err(terr)?;
        tokenizer.train(&mut trainer, captions).map_err(terr)?;
        tokenizer.add_special_tokens(&[special(START_NAMES[0]), special(END_NAMES[0])]);
        let mut inner: Tokenizer = tokenizer.into();
        let framing = clip_framing(&inner)?;
        inner.with_post_processor(Some(framing));
        Self::from_tokenizer(inner)
    }

    /// Writes the tokenizer as a HF `tokenizer.json` (loadable by Python `tokenizers` too).
    pub fn save(&self, path: &Path) -> Result<(), LoaderError> {
        self.inner
            .save(path, false)
            .map_err(|e| LoaderError::Tokenizer(format!("cannot write {}: {e}", path.display())))
    }

    /// `[start] tokens [end] pad…`, exactly [`Self::context_length`] ids; long captions are
    /// truncated before the end token so it is always present. Only the caption's first
    /// [`Self::max_input_bytes`] bytes are tokenized: the rest cannot reach the context.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LoaderError> {
        let enc = self
            .inner
            .encode(prefix(text, self.max_input_bytes), false)
            .map_err(|e| LoaderError::Tokenizer(e.to_string()))?;
        let body = enc.get_ids();
        let body = &body[..body.len().min(self.context - 2)];
        let mut ids = Vec::with_capacity(self.context);
        ids.push(self.sot);
        ids.extend_from_slice(body);
        ids.push(self.eot);
        ids.resize(self.context, self.pad);
        Ok(ids)
    }

    /// Turns ids back into text (special tokens dropped), for logs and evaluation reports.
    pub fn decode(&self, ids: &[u32]) -> Result<String, LoaderError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| LoaderError::Tokenizer(e.to_string()))
    }

    /// Id of the start token.
    pub fn sot_id(&self) -> u32 {
        self.sot
    }

    /// Id of the end token: the trainer takes the text embedding at its position.
    pub fn eot_id(&self) -> u32 {
        self.eot
    }

    /// Id used after the end token.
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// Vocabulary size including special tokens: the text tower's embedding rows.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Bytes of a caption [`Self::encode`] reads at most (see `input_budget`).
    pub fn max_input_bytes(&self) -> usize {
        self.max_input_bytes
    }

    /// Tokens per caption (77, CLIP's).
    pub fn context_length(&self) -> usize {
        self.context
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_caption_costs_its_prefix_and_gives_the_same_tokens() {
        let captions = (0..200).map(|i| format!("a photo of dog number {i} on grass"));
        let tok = TextTokenizer::train(captions, 400).unwrap();
        let budget = tok.max_input_bytes();
        assert!((1000..100_000).contains(&budget), "{budget}");
        let long = "a photo of a dog on grass ".repeat(40);
        let huge = format!("{}{}", long.repeat(8192), "é".repeat(1 << 20));
        assert!(huge.len() > 10 << 20);
        let started = std::time::Instant::now();
        let ids = tok.encode(&huge).unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        assert_eq!(
            ids,
            tok.encode(&long).unwrap(),
            "the prefix decides all 77 ids"
        );
        assert_eq!(prefix("aé", 2), "a", "cut on a character boundary");
    }
}
