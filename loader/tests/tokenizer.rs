//! CLIP framing of token rows, truncation, and the saved tokenizer.json loading back.

use crate::common;

use wit_loader::{TextTokenizer, CONTEXT_LENGTH};

#[test]
fn rows_are_start_tokens_end_then_padding_and_long_captions_keep_the_end() {
    let tok = common::tokenizer();
    let row = tok.encode("a red circle above a blue square").unwrap();
    assert_eq!(row.len(), CONTEXT_LENGTH);
    assert_eq!(row[0], tok.sot_id());
    let end = row
        .iter()
        .position(|&t| t == tok.eot_id())
        .expect("end token");
    assert!(end > 2, "caption tokens between start and end");
    assert!(row[end + 1..].iter().all(|&t| t == tok.pad_id()));
    assert_eq!(
        tok.decode(&row).unwrap().trim(),
        "a red circle above a blue square"
    );

    let long = "a red circle above a blue square ".repeat(40);
    let row = tok.encode(&long).unwrap();
    assert_eq!(row.len(), CONTEXT_LENGTH);
    assert_eq!(
        row[CONTEXT_LENGTH - 1],
        tok.eot_id(),
        "truncation keeps the end token"
    );
    assert_eq!(row.iter().filter(|&&t| t == tok.eot_id()).count(), 1);
}

#[test]
fn trained_tokenizer_saves_and_loads_with_identical_ids() {
    let tok = common::tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    tok.save(&path).unwrap();
    let back = TextTokenizer::from_file(&path).unwrap();
    assert_eq!(back.vocab_size(), tok.vocab_size());
    // CLIP's layout: the end token is the highest id (open_clip and transformers' legacy rule
    // pool at the argmax), the start token next to it, padding 0.
    let v = tok.vocab_size() as u32;
    assert_eq!(
        (back.sot_id(), back.eot_id(), back.pad_id()),
        (v - 2, v - 1, 0)
    );
    assert!(v <= 300, "asked for 300 ids, got {v}");
    // The file alone frames captions as wit does: what Python's `tokenizers` (the same core)
    // and transformers' `PreTrainedTokenizerFast` give with special tokens on.
    let plain = tokenizers::Tokenizer::from_file(&path).unwrap();
    for text in ["a green star", "Ünïcödé caption, with punctuation!", ""] {
        let row = tok.encode(text).unwrap();
        assert_eq!(back.encode(text).unwrap(), row, "{text}");
        let framed = plain.encode(text, true).unwrap();
        let end = row.iter().position(|&t| t == tok.eot_id()).unwrap();
        assert_eq!(framed.get_ids(), &row[..=end], "{text}");
    }
    let err = TextTokenizer::from_file(&dir.path().join("missing.json")).unwrap_err();
    assert!(err.to_string().contains("wit tokenizer train"), "{err}");
}
