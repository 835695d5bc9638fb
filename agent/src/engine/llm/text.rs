//! From generated ids to the completion's text: incremental detokenization cut before the
//! first stop string, the same way while generating (streaming what is certain) and while
//! scoring a finished completion (rebuilding the text its ids must have produced).
//!
//! [`StopMatcher`] cuts the streamed text before the first stop string without ever emitting
//! part of one; [`CompletionText`] puts it behind the tokenizer's incremental decoder.

use super::tokenizer::{IncrementalDecoder, TextError, TextTokenizer};

/// What [`StopMatcher::push`] decided about a piece of streamed text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StopStep {
    /// Text that is now safe to send: it is not, and cannot become, part of a stop string.
    pub emit: String,
    /// A stop string was reached: generation ends, and `emit` is the last text.
    pub stopped: bool,
}

/// Finds stop strings in text that arrives in pieces. Text that could still turn into a stop
/// string is held back; text that turns out to be one is never emitted.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopMatcher {
    /// A matcher for these stop strings; empty ones are ignored.
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
            stopped: false,
        }
    }

    /// Whether a stop string has been reached.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Takes the next piece of text. Emits what is certain not to be part of a stop string;
    /// on a stop string, emits the text before it and reports `stopped` (later pieces are
    /// ignored).
    pub fn push(&mut self, piece: &str) -> StopStep {
        if self.stopped {
            return StopStep {
                emit: String::new(),
                stopped: true,
            };
        }
        if self.stops.is_empty() {
            return StopStep {
                emit: piece.to_owned(),
                stopped: false,
            };
        }
        self.held.push_str(piece);
        // The leftmost complete stop string wins.
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(start) = first {
            self.stopped = true;
            let mut emit = std::mem::take(&mut self.held);
            emit.truncate(start);
            return StopStep {
                emit,
                stopped: true,
            };
        }
        // Hold back the longest suffix that some stop string starts with.
        let hold_from = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.held.len());
        let rest = self.held.split_off(hold_from);
        let emit = std::mem::replace(&mut self.held, rest);
        StopStep {
            emit,
            stopped: false,
        }
    }

    /// The end of the stream: the text held back (it never became a stop string); empty
    /// after a stop.
    pub fn finish(self) -> String {
        if self.stopped {
            String::new()
        } else {
            self.held
        }
    }
}

/// A completion's text as its ids arrive: each id is detokenized incrementally and the text
/// goes through a [`StopMatcher`]. End-of-sequence ids are the caller's: they end the
/// completion and are never pushed.
#[derive(Debug)]
pub struct CompletionText<'a> {
    decoder: IncrementalDecoder<'a>,
    stops: StopMatcher,
}

impl<'a> CompletionText<'a> {
    /// Text for ids of `tokenizer`, cut before the first of the `stop` strings.
    pub fn new(tokenizer: &'a TextTokenizer, stop: &[String]) -> Self {
        Self {
            decoder: tokenizer.incremental(),
            stops: StopMatcher::new(stop),
        }
    }

    /// Takes the next id: the text now certain, and whether a stop string ended the
    /// completion (later ids add nothing).
    pub fn push(&mut self, id: u32) -> Result<StopStep, TextError> {
        let piece = self.decoder.push(id)?;
        Ok(self.stops.push(&piece))
    }

    /// The end of the completion: the text not emitted yet, and whether the completion ended
    /// at a stop string (here or earlier).
    pub fn finish(mut self) -> Result<StopStep, TextError> {
        if self.stops.stopped() {
            return Ok(StopStep {
                emit: String::new(),
                stopped: true,
            });
        }
        let rest = self.decoder.finish()?;
        let mut step = self.stops.push(&rest);
        if !step.stopped {
            step.emit.push_str(&self.stops.finish());
        }
        Ok(step)
    }
}

/// The text a completion made of `ids` returns: the ids up to the first end-of-sequence one,
/// detokenized as generation streams them, cut before the first `stop` string.
pub fn completion_text(
    tokenizer: &TextTokenizer,
    ids: &[u32],
    stop: &[String],
) -> Result<String, TextError> {
    let mut text = String::new();
    let mut out = CompletionText::new(tokenizer, stop);
    for &id in ids {
        if tokenizer.is_eos(id) {
            break;
        }
        let step = out.push(id)?;
        text.push_str(&step.emit);
        if step.stopped {
            return Ok(text);
        }
    }
    text.push_str(&out.finish()?.emit);
    Ok(text)
}

#[cfg(test)]
mod tests;
