//! Stop strings, matched as the text streams: a Knuth–Morris–Pratt automaton
//! per stop string (Knuth, Morris & Pratt, 1977; CLRS §32.4).
//!
//! The filter runs on the single engine thread for every token of every
//! running sequence, so its cost per token must not depend on how long or
//! how many the stop strings are beyond a small constant. Each stop string
//! keeps one number, how many of its leading bytes the text now ends with;
//! a byte of new text moves it forward by one or back along the string's
//! failure links, so a byte costs amortised O(1) per stop string, and a token
//! of `b` bytes O(`b` × stops) ([`crate::request::MAX_STOP_STRINGS`] = 16).
//! The matcher it replaces searched the held-back text for every prefix of
//! every stop string at every token: O(Σ len²), about half a million byte
//! comparisons per token at the limits (16 strings of 256 bytes).
//!
//! ```text
//!  token text ─► pending (held back + new) ─► per stop string: matched += 1 or follow fail[]
//!                                               │ a string complete: cut before it, stop
//!                                               ▼ none complete
//!              emit pending up to the longest partial match; hold the rest back
//! ```
//!
//! Which stop string wins: the one that *completes* first in the text, and of
//! those that complete at the same byte the longest (it started earliest).
//! That answer depends only on the text, not on how the tokens split it (a
//! search of each token's text would answer differently when one token holds
//! two stop strings), and it is what a client scanning the stream
//! byte by byte would see.

/// One stop string and how much of it the text now ends with.
#[derive(Debug)]
struct Pattern {
    bytes: Vec<u8>,
    /// `fail[i]`: the longest proper prefix of `bytes[..=i]` that is also
    /// its suffix (the KMP prefix function).
    fail: Vec<usize>,
    /// How many leading bytes of `bytes` the text ends with (< `bytes.len()`).
    matched: usize,
    /// State moves so far (the tests bound them: the cost, counted).
    #[cfg(test)]
    moves: usize,
}

impl Pattern {
    fn new(s: &str) -> Pattern {
        let bytes = s.as_bytes().to_vec();
        let mut fail = vec![0; bytes.len()];
        let mut k = 0;
        for i in 1..bytes.len() {
            while k > 0 && bytes[i] != bytes[k] {
                k = fail[k - 1];
            }
            if bytes[i] == bytes[k] {
                k += 1;
            }
            fail[i] = k;
        }
        Pattern {
            bytes,
            fail,
            matched: 0,
            #[cfg(test)]
            moves: 0,
        }
    }

    /// Feeds one byte; true when the whole string now ends the text.
    fn step(&mut self, b: u8) -> bool {
        // `matched < len` always holds here: a completed match ends the
        // sequence, and the filter is not fed again.
        while self.matched > 0 && self.bytes[self.matched] != b {
            self.matched = self.fail[self.matched - 1];
            #[cfg(test)]
            {
                self.moves += 1;
            }
        }
        #[cfg(test)]
        {
            self.moves += 1;
        }
        if self.bytes[self.matched] == b {
            self.matched += 1;
        }
        self.matched == self.bytes.len()
    }
}

/// Holds back text that might be the start of a stop string, so a stop
/// string is never streamed and then retracted.
#[derive(Debug)]
pub struct StopFilter {
    /// The non-empty stop strings (an empty one would match everywhere; it
    /// is ignored, as it was by the search this replaces).
    stops: Vec<Pattern>,
    /// Text not yet emitted: at most the longest partial match, between
    /// calls (< 256 bytes, [`crate::request::MAX_STOP_BYTES`]).
    pending: String,
    /// Set once a stop string has matched; the filter emits nothing more.
    hit: bool,
}

impl StopFilter {
    /// Builds each string's failure links: O(Σ len) once per request.
    pub fn new(stops: &[String]) -> StopFilter {
        StopFilter {
            stops: stops
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| Pattern::new(s))
                .collect(),
            pending: String::new(),
            hit: false,
        }
    }

    /// Adds text; returns (text safe to emit, whether a stop string was hit).
    /// After a hit the text before the stop string is emitted and nothing
    /// after it, ever.
    pub fn push(&mut self, text: &str) -> (String, bool) {
        if self.hit {
            return (String::new(), true);
        }
        let held = self.pending.len();
        self.pending.push_str(text);
        for (i, &b) in text.as_bytes().iter().enumerate() {
            // Every stop string sees every byte (their states must stay
            // true); of those complete at this byte, the longest wins.
            let mut longest = None;
            for p in &mut self.stops {
                if p.step(b) {
                    longest = longest.max(Some(p.bytes.len()));
                }
            }
            if let Some(len) = longest {
                // The match lies inside `pending`: everything before its
                // start was a partial match, held back. It starts on a
                // character boundary: its first byte is a stop string's
                // first byte, never a UTF-8 continuation byte.
                let end = held + i + 1;
                let out = self.pending[..end - len].to_string();
                self.pending.clear();
                self.hit = true;
                return (out, true);
            }
        }
        // Keep the longest suffix that is a prefix of some stop string. It
        // starts on a character boundary for the same reason as a match.
        let keep = self.stops.iter().map(|p| p.matched).max().unwrap_or(0);
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    /// The text still held back, when the sequence ends for another reason
    /// (EOS, length): it did not become a stop string, so it is output.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::StopFilter;
    use proptest::prelude::*;

    #[test]
    fn stop_strings_are_held_back_and_cut() {
        let stops = ["\nUser:".to_string()];
        let mut f = StopFilter::new(&stops);
        assert_eq!(f.push("Hello"), ("Hello".into(), false));
        // "\nUs" could start the stop string: held back.
        assert_eq!(f.push(" world\nUs"), (" world".into(), false));
        assert_eq!(f.push("er: more"), (String::new(), true));
        assert_eq!(f.push("more"), (String::new(), true));
        let mut f = StopFilter::new(&stops);
        assert_eq!(f.push("a\nU"), ("a".into(), false));
        assert_eq!(f.push("nder"), ("\nUnder".into(), false));
        assert_eq!(f.flush(), "");
    }

    #[test]
    fn the_first_string_to_complete_wins_however_the_tokens_split_it() {
        let stops = ["abcd".to_string(), "bc".to_string()];
        // One token holding both: "bc" completes first (at byte 3).
        assert_eq!(StopFilter::new(&stops).push("xabcd"), ("xa".into(), true));
        let mut f = StopFilter::new(&stops);
        assert_eq!(f.push("xab"), ("x".into(), false));
        assert_eq!(f.push("cd"), ("a".into(), true));
        // Completing at the same byte, the longer one started first.
        let stops = ["b".to_string(), "ab".to_string()];
        assert_eq!(StopFilter::new(&stops).push("zab"), ("z".into(), true));
    }

    #[test]
    fn a_mismatch_falls_back_along_the_failure_links_not_to_the_start() {
        // After "aa" of "aab", another "a" still leaves "aa" matched (the
        // failure link of "aa" is "a", then "a" again): restarting from
        // nothing would miss the stop string in "aaab".
        let stops = ["aab".to_string()];
        assert_eq!(StopFilter::new(&stops).push("xaaab"), ("xa".into(), true));
        let mut f = StopFilter::new(&["abac".to_string()]);
        assert_eq!(f.push("ab"), (String::new(), false));
        assert_eq!(f.push("ab"), ("ab".into(), false));
        assert_eq!(f.push("ac"), (String::new(), true));
    }

    #[test]
    fn multibyte_text_and_stop_strings_cut_on_character_boundaries() {
        let stops = ["é!".to_string(), "".to_string()];
        let mut f = StopFilter::new(&stops);
        assert_eq!(f.push("café"), ("caf".into(), false));
        assert_eq!(f.push("és"), ("éés".into(), false));
        assert_eq!(f.push("😀é"), ("😀".into(), false));
        assert_eq!(f.push("!x"), (String::new(), true));
    }

    #[test]
    fn the_work_per_byte_is_bounded_whatever_the_stop_strings() {
        // The limits (16 strings of 256 bytes) and a text that keeps almost
        // matching all of them: 255 "a"s then a byte none expects. Each byte
        // moves a string's state forward at most once, and a fall back along
        // the failure links undoes at least one forward move, so each string
        // makes at most 2 moves per byte (the search this replaced made about
        // Σ len² / 2 = 524,288 byte comparisons per token here).
        let stops: Vec<String> = (0..16u8)
            .map(|i| "a".repeat(255) + &char::from(b'b' + i).to_string())
            .collect();
        let mut f = StopFilter::new(&stops);
        let mut bytes = 0;
        for i in 0..20_000 {
            let token = if i % 300 == 299 { "z" } else { "aaa" };
            bytes += token.len();
            let (_, hit) = f.push(token);
            assert!(!hit);
        }
        for p in &f.stops {
            assert!(p.moves <= 2 * bytes, "{} moves for {bytes} bytes", p.moves);
        }
        // What the held-back text costs: never more than the longest string.
        assert!(f.pending.len() < 256, "{}", f.pending.len());
    }

    /// The stream's answer, by brute force: the earliest byte at which some
    /// stop string ends, the longest of those, and the text before it.
    fn reference(text: &str, stops: &[String]) -> (String, bool) {
        for end in 1..=text.len() {
            let hit = stops
                .iter()
                .filter(|s| !s.is_empty() && text.as_bytes()[..end].ends_with(s.as_bytes()))
                .map(|s| s.len())
                .max();
            if let Some(len) = hit {
                return (text[..end - len].to_string(), true);
            }
        }
        (text.to_string(), false)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        /// Any text, split into any tokens, against any stop strings over a
        /// small alphabet (so they overlap and repeat, where KMP's failure
        /// links matter): the streamed output is the brute-force answer, and
        /// nothing emitted is ever taken back.
        #[test]
        fn streaming_equals_the_brute_force_answer(
            pieces in proptest::collection::vec("[ab]{0,3}|[abé]{0,3}", 0..12),
            stops in proptest::collection::vec("[ab]{1,4}|[abé]{0,4}", 0..4),
        ) {
            let text: String = pieces.concat();
            let (want, want_hit) = reference(&text, &stops);
            let mut f = StopFilter::new(&stops);
            let mut got = String::new();
            let mut hit = false;
            for p in &pieces {
                let (out, h) = f.push(p);
                got.push_str(&out);
                prop_assert!(want.starts_with(&got), "emitted {got:?}, the answer is {want:?}");
                hit = h;
                if h {
                    break;
                }
            }
            if !hit {
                got.push_str(&f.flush());
            }
            prop_assert_eq!(hit, want_hit);
            prop_assert_eq!(got, want);
        }
    }
}
