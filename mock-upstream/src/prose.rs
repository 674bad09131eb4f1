//! The text of the mock's answers: English-like prose from a vocabulary of
//! some three hundred words, common ones far more often than rare ones,
//! in sentences and paragraphs. It compresses about as real answers do
//! (deflate and zstd about 2.5×, where text of a handful of repeated words
//! compresses several times better), so benchmarks of compressed storage
//! measure what users will see.

/// Common English words, the most frequent first, then a few of the
/// domain's.
#[rustfmt::skip]
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "a", "in", "is", "it", "that", "for", "you", "was", "on", "are",
    "with", "as", "be", "this", "have", "from", "or", "one", "had", "by", "not", "but", "what",
    "all", "were", "we", "when", "your", "can", "said", "there", "use", "an", "each", "which",
    "she", "do", "how", "their", "if", "will", "up", "other", "about", "out", "many", "then",
    "them", "these", "so", "some", "her", "would", "make", "like", "him", "into", "time", "has",
    "look", "two", "more", "write", "go", "see", "number", "no", "way", "could", "people", "my",
    "than", "first", "water", "been", "call", "who", "its", "now", "find", "long", "down", "day",
    "did", "get", "come", "made", "may", "part", "over", "new", "sound", "take", "only", "little",
    "work", "know", "place", "year", "live", "me", "back", "give", "most", "very", "after",
    "thing", "our", "just", "name", "good", "sentence", "man", "think", "say", "great", "where",
    "help", "through", "much", "before", "line", "right", "too", "mean", "old", "any", "same",
    "tell", "follow", "came", "want", "show", "also", "around", "form", "three", "small", "set",
    "put", "end", "does", "another", "well", "large", "must", "big", "even", "such", "because",
    "turn", "here", "why", "ask", "went", "men", "read", "need", "land", "different", "home", "us",
    "move", "try", "kind", "hand", "picture", "again", "change", "off", "play", "spell", "air",
    "away", "point", "page", "letter", "answer", "found", "study", "still", "learn", "should",
    "world", "high", "every", "near", "add", "food", "between", "own", "below", "country", "plant",
    "last", "school", "keep", "tree", "never", "start", "city", "earth", "eye", "light", "thought",
    "head", "under", "story", "saw", "left", "few", "while", "along", "might", "close",
    "something", "seem", "next", "hard", "open", "example", "begin", "life", "always", "those",
    "both", "paper", "together", "got", "group", "often", "run", "important", "until", "children",
    "side", "feet", "car", "mile", "night", "walk", "white", "sea", "began", "grow", "took",
    "river", "four", "carry", "state", "once", "book", "hear", "stop", "without", "second",
    "later", "miss", "idea", "enough", "eat", "face", "watch", "far", "really", "almost", "let",
    "above", "sometimes", "mountain", "cut", "young", "talk", "soon", "list", "song", "being",
    "leave", "family", "request", "model", "token", "prompt", "provider", "latency", "cluster",
    "memory", "reserve", "function", "result", "value", "error", "test",
];

/// A small, fast generator: the same seed gives the same text.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `size` bytes of prose, the same for the same `body`.
pub fn answer_text(body: &[u8], size: usize) -> String {
    let seed = body.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut random = XorShift(seed | 1);
    let mut text = String::with_capacity(size + 16);
    let mut capital = true;
    let mut words_in_sentence = 0;
    while text.len() < size {
        // Cubing a uniform number favours the first (common) words, much
        // as word frequencies in English fall off.
        let u = random.unit();
        let word = WORDS[((WORDS.len() as f64) * u * u * u) as usize % WORDS.len()];
        if capital {
            let mut letters = word.chars();
            if let Some(first) = letters.next() {
                text.extend(first.to_uppercase());
                text.push_str(letters.as_str());
            }
            capital = false;
        } else {
            text.push_str(word);
        }
        words_in_sentence += 1;
        let roll = random.unit();
        if words_in_sentence > 6 && roll < 0.12 {
            text.push('.');
            capital = true;
            words_in_sentence = 0;
            text.push_str(if random.unit() < 0.15 { "\n\n" } else { " " });
        } else if words_in_sentence > 3 && roll < 0.18 {
            text.push_str(", ");
        } else {
            text.push(' ');
        }
    }
    text.truncate(size);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_question_gets_the_same_text_of_the_asked_size() {
        for size in [0, 1, 100, 4096] {
            let text = answer_text(b"question", size);
            assert_eq!(text.len(), size);
            assert_eq!(text, answer_text(b"question", size));
        }
        assert_ne!(answer_text(b"one", 200), answer_text(b"two", 200));
    }

    #[test]
    fn it_reads_like_prose_and_compresses_like_it() {
        let text = answer_text(b"a question", 16 * 1024);
        // The last word may be cut off at the size asked.
        let whole = &text[..text.rfind(' ').unwrap_or(0)];
        let distinct: std::collections::HashSet<&str> = whole
            .split(|c: char| !c.is_ascii_alphabetic())
            .filter(|w| !w.is_empty())
            .map(str::to_ascii_lowercase)
            .map(|w| WORDS.iter().find(|&&v| v == w).copied().unwrap_or("?"))
            .collect();
        assert!(distinct.len() > 150, "{} distinct words", distinct.len());
        assert!(!distinct.contains("?"), "a word outside the vocabulary");
        assert!(text.contains(". ") && text.contains(", ") && text.contains("\n\n"));
        let compressed = zstd::encode_all(text.as_bytes(), 3).unwrap();
        let ratio = text.len() as f64 / compressed.len() as f64;
        // English prose: about 2 to 3.5 with zstd at level 3.
        assert!((2.0..4.0).contains(&ratio), "compresses {ratio:.2}x");
    }
}
