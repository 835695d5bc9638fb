use super::*;

fn stops(list: &[&str]) -> StopMatcher {
    StopMatcher::new(&list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
}

/// Feeds the pieces; returns what was emitted step by step, whether it stopped, and the
/// flush.
fn feed(m: &mut StopMatcher, pieces: &[&str]) -> (Vec<String>, bool) {
    let mut out = Vec::new();
    for p in pieces {
        let step = m.push(p);
        out.push(step.emit);
        if step.stopped {
            return (out, true);
        }
    }
    (out, false)
}

#[test]
fn no_stop_strings_emit_everything_at_once() {
    let mut m = stops(&[]);
    let (out, stopped) = feed(&mut m, &["Hello", " wor", "ld"]);
    assert_eq!(out, ["Hello", " wor", "ld"]);
    assert!(!stopped);
    assert_eq!(m.finish(), "");
    // Empty stop strings are ignored.
    let mut m = stops(&[""]);
    assert_eq!(m.push("x").emit, "x");
}

#[test]
fn a_stop_string_split_across_pieces_is_never_emitted() {
    let mut m = stops(&["</answer>"]);
    let (out, stopped) = feed(&mut m, &["The result", " is 4</", "ans", "wer> trailing"]);
    assert_eq!(out, ["The result", " is 4", "", ""]);
    assert!(stopped);
    assert!(m.stopped());
    assert_eq!(m.push("more").emit, "");
    assert_eq!(m.finish(), "");
}

#[test]
fn a_false_start_is_released() {
    let mut m = stops(&["</answer>"]);
    let (out, stopped) = feed(&mut m, &["a </an", "swer is", " here"]);
    assert_eq!(out, ["a ", "</answer is", " here"]);
    assert!(!stopped);
    let mut m = stops(&["STOP"]);
    let (out, _) = feed(&mut m, &["xST"]);
    assert_eq!(out, ["x"]);
    assert_eq!(m.finish(), "ST");
}

#[test]
fn the_leftmost_of_several_stop_strings_wins() {
    let mut m = stops(&["\n\n", "User:", "###"]);
    let (out, stopped) = feed(&mut m, &["Answer.", " ### User:", " x"]);
    assert_eq!(out, ["Answer.", " "]);
    assert!(stopped);
    let mut m = stops(&["bc", "abcd"]);
    let (out, stopped) = feed(&mut m, &["xa", "bc"]);
    assert_eq!(out, ["x", "a"]);
    assert!(stopped);
}

#[test]
fn overlapping_prefixes_hold_the_longest_candidate() {
    // "aab": after "aa" both "a…" suffixes could start it; on "aaab" the match is at 1.
    let mut m = stops(&["aab"]);
    let (out, stopped) = feed(&mut m, &["a", "a", "a", "b"]);
    assert_eq!(out, ["", "", "a", ""]);
    assert!(stopped);
    let mut m = stops(&["abab"]);
    let (out, stopped) = feed(&mut m, &["aba", "bab"]);
    assert_eq!(out, ["", ""]);
    assert!(stopped);
    let mut m = stops(&["abab"]);
    let (out, stopped) = feed(&mut m, &["ab", "a", "a"]);
    assert_eq!(out, ["", "", "aba"]);
    assert!(!stopped);
    assert_eq!(m.finish(), "a");
}

#[test]
fn multi_byte_characters_are_never_split() {
    // The stop string shares its first byte (0xE6) with "東" but not its first char.
    let mut m = stops(&["木曜", "🙂!"]);
    let (out, stopped) = feed(&mut m, &["東京", "木", "の🙂", "?🙂", "!"]);
    assert_eq!(out, ["東京", "", "木の", "🙂?", ""]);
    assert!(stopped);
    let mut m = stops(&["é"]);
    assert_eq!(m.push("naïve café").emit, "naïve caf");
}

#[test]
fn a_stop_at_the_very_start_emits_nothing() {
    let mut m = stops(&["<|end|>"]);
    let step = m.push("<|end|>tail");
    assert_eq!(
        step,
        StopStep {
            emit: String::new(),
            stopped: true
        }
    );
    let mut m = stops(&["<|end|>"]);
    let (out, stopped) = feed(&mut m, &["<|", "end", "|>"]);
    assert_eq!(out, ["", "", ""]);
    assert!(stopped);
}

#[test]
fn emitted_text_plus_flush_is_the_text_up_to_the_first_stop() {
    let text = "Once upon a time, 東京 had a café. THE END. Not this.";
    let stop_list = ["THE END", "café!", "ime,x"];
    for chunk in 1..8 {
        let mut m = stops(&stop_list);
        let mut out = String::new();
        let chars: Vec<char> = text.chars().collect();
        let mut stopped = false;
        for piece in chars.chunks(chunk) {
            let piece: String = piece.iter().collect();
            let step = m.push(&piece);
            out.push_str(&step.emit);
            if step.stopped {
                stopped = true;
                break;
            }
        }
        assert!(stopped);
        out.push_str(&m.finish());
        assert_eq!(out, "Once upon a time, 東京 had a café. ", "chunk {chunk}");
    }
}

fn tokenizer() -> (super::super::tokenizer::tests::TempDir, TextTokenizer, u32) {
    use super::super::synth_tokenizer::{ChatStyle, synth_tokenizer};
    let synth = synth_tokenizer(ChatStyle::Llama3, 600).expect("synthetic tokenizer");
    let dir = super::super::tokenizer::tests::write_synth(&synth, "completion-text");
    let tok = TextTokenizer::load(&dir.0).expect("loads");
    (dir, tok, synth.eos_id)
}

#[test]
fn completion_text_ends_at_eos_and_before_the_first_stop_string() {
    let (_dir, tok, eos) = tokenizer();
    let sentence = "Once upon a time, 東京 had a café. THE END. Not this.";
    let mut ids = tok.encode(sentence).expect("encode");
    assert_eq!(completion_text(&tok, &ids, &[]).expect("text"), sentence);
    let stop = vec!["THE END".to_owned()];
    assert_eq!(
        completion_text(&tok, &ids, &stop).expect("text"),
        "Once upon a time, 東京 had a café. "
    );
    let cut = ids.len() / 2;
    let head = tok.decode(&ids[..cut]).expect("decode");
    ids.insert(cut, eos);
    assert_eq!(completion_text(&tok, &ids, &[]).expect("text"), head);
}

#[test]
fn completion_text_pieces_add_up_to_the_whole() {
    let (_dir, tok, _) = tokenizer();
    let ids = tok.encode("naïve café 🙂 and done").expect("encode");
    let mut out = CompletionText::new(&tok, &["done!".to_owned()]);
    let mut text = String::new();
    for &id in &ids {
        let step = out.push(id).expect("push");
        assert!(!step.stopped);
        text.push_str(&step.emit);
    }
    let last = out.finish().expect("finish");
    assert!(!last.stopped);
    text.push_str(&last.emit);
    assert_eq!(text, "naïve café 🙂 and done");
}
