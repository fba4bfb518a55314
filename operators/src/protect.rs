//! Protected spans for translation: masking, unmasking and splitting long text into segments.
//!
//! Spans that must survive translation verbatim (code, LaTeX, tags, answer markers, placeholders, URLs,
//! numbers) are replaced by tokens `⟦0⟧`, `⟦1⟧`, … before the text goes to the model, and put back after.
//! [`unmask`] refuses a translation that lost, repeated or invented a token, so a mangled answer is caught
//! instead of trained on. [`split_segments`] cuts long text on the best boundary it can find, never
//! truncating and never cutting a token or a protected span.

use std::fmt::Display;
use std::ops::Range;
use std::sync::LazyLock;

use regex::Regex;

use crate::lang::{lang_code, lang_from_code};

const OPEN: char = '⟦';
const CLOSE: char = '⟧';

/// Text with protected spans replaced by tokens ⟦0⟧, ⟦1⟧, … (U+27E6, U+27E7), and the spans in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Masked {
    pub text: String,
    pub spans: Vec<String>,
}

/// Why a translation cannot be unmasked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MaskError {
    #[error("{} missing from the translation", placeholders(.0))]
    Missing(Vec<usize>),
    #[error("{} repeated in the translation", placeholders(.0))]
    Duplicated(Vec<usize>),
    /// Indices as written by the model (they may not even fit a `usize`).
    #[error("unknown {} in the translation", placeholders(.0))]
    Unknown(Vec<String>),
    #[error("{0} stray ⟦ or ⟧ in the translation")]
    Stray(usize),
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Several(Vec<MaskError>),
}

fn placeholders<T: Display>(ids: &[T]) -> String {
    let names: Vec<String> = ids.iter().map(|i| format!("{OPEN}{i}{CLOSE}")).collect();
    format!("placeholder{} {}", if ids.len() == 1 { "" } else { "s" }, names.join(", "))
}

/// Finds protected spans inside `text[from..to]` (reading outside it only as context), in order.
type Finder = fn(&str, usize, usize, &mut Vec<Range<usize>>);

/// What [`mask`] protects, highest priority first. Literal brackets come last so that a code block holding
/// one stays whole; any left outside a span become their own span.
const MASK_FINDERS: &[Finder] =
    &[fences, inline_code, latex, tags, answer_markers, template_placeholders, urls, numbers, brackets];

/// What [`split_segments`] keeps whole: tokens of already masked text, then everything [`mask`] protects.
const SPLIT_FINDERS: &[Finder] =
    &[tokens, fences, inline_code, latex, tags, answer_markers, template_placeholders, urls, numbers];

/// Non-overlapping protected ranges of `text`, sorted. Each finder only searches what earlier (higher
/// priority) finders left free, so a lower kind can never cut into a higher one.
fn protected_ranges(text: &str, finders: &[Finder]) -> Vec<Range<usize>> {
    let mut taken: Vec<Range<usize>> = Vec::new();
    for find in finders {
        let mut found = Vec::new();
        let mut pos = 0;
        for r in taken.iter().cloned().chain(std::iter::once(text.len()..text.len())) {
            if pos < r.start {
                find(text, pos, r.start, &mut found);
            }
            pos = r.end;
        }
        if !found.is_empty() {
            taken.extend(found);
            taken.sort_by_key(|r| r.start);
        }
    }
    taken
}

/// Masks every protected span, left to right, longest/outermost match first, never overlapping.
pub fn mask(text: &str) -> Masked {
    let mut out = String::with_capacity(text.len());
    let mut spans = Vec::new();
    let mut pos = 0;
    for r in protected_ranges(text, MASK_FINDERS) {
        out.push_str(&text[pos..r.start]);
        out.push_str(&format!("{OPEN}{}{CLOSE}", spans.len()));
        spans.push(text[r.clone()].to_string());
        pos = r.end;
    }
    out.push_str(&text[pos..]);
    Masked { text: out, spans }
}

/// The text without its protected spans, for language detection. Each span becomes a space rather than
/// nothing so the words around it do not glue together.
pub fn strip_protected(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for r in protected_ranges(text, MASK_FINDERS) {
        out.push_str(&text[pos..r.start]);
        out.push(' ');
        pos = r.end;
    }
    out.push_str(&text[pos..]);
    out
}

/// A token as the model may write it back: spaces inside the brackets are tolerated, nothing else.
static TOKEN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"⟦[\p{Zs}\t]*([0-9]+)[\p{Zs}\t]*⟧").expect("valid token regex"));

/// Puts the spans back. Every token must appear exactly once (order may change: languages reorder words).
pub fn unmask(translated: &str, spans: &[String]) -> Result<String, MaskError> {
    let mut out = String::with_capacity(translated.len() + spans.iter().map(String::len).sum::<usize>());
    let mut seen = vec![0usize; spans.len()];
    let mut unknown: Vec<String> = Vec::new();
    let mut stray = 0;
    let mut pos = 0;
    let mut copy_gap = |gap: &str, out: &mut String| {
        stray += gap.chars().filter(|&c| c == OPEN || c == CLOSE).count();
        out.push_str(gap);
    };
    for caps in TOKEN.captures_iter(translated) {
        let (Some(all), Some(digits)) = (caps.get(0), caps.get(1)) else { continue };
        copy_gap(&translated[pos..all.start()], &mut out);
        match digits.as_str().parse::<usize>().ok().filter(|&i| i < spans.len()) {
            Some(i) => {
                seen[i] += 1;
                out.push_str(&spans[i]);
            }
            None if !unknown.iter().any(|u| u == digits.as_str()) => unknown.push(digits.as_str().to_string()),
            None => {}
        }
        pos = all.end();
    }
    copy_gap(&translated[pos..], &mut out);

    let mut errors = Vec::new();
    let missing: Vec<usize> = (0..spans.len()).filter(|&i| seen[i] == 0).collect();
    let duplicated: Vec<usize> = (0..spans.len()).filter(|&i| seen[i] > 1).collect();
    if !missing.is_empty() {
        errors.push(MaskError::Missing(missing));
    }
    if !duplicated.is_empty() {
        errors.push(MaskError::Duplicated(duplicated));
    }
    if !unknown.is_empty() {
        errors.push(MaskError::Unknown(unknown));
    }
    if stray > 0 {
        errors.push(MaskError::Stray(stray));
    }
    match errors.len() {
        0 => Ok(out),
        1 => Err(errors.remove(0)),
        _ => Err(MaskError::Several(errors)),
    }
}

/// Boundary quality for [`split_segments`], best last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Boundary {
    Anywhere,
    Whitespace,
    Sentence,
    Line,
    Paragraph,
}

/// Splits text into segments of at most `max_chars` characters on the best boundary: paragraph > line >
/// sentence end > whitespace > anywhere, never inside a char, a ⟦n⟧ token or a protected span (one longer
/// than `max_chars` becomes its own segment). The segments concatenate back to the exact input.
pub fn split_segments(text: &str, max_chars: usize) -> Vec<String> {
    let max = max_chars.max(1);
    let atoms = protected_ranges(text, SPLIT_FINDERS);
    let mut segments = Vec::new();
    let mut first_atom = 0;
    let mut start = 0;
    while start < text.len() {
        let limit = text[start..].char_indices().nth(max).map_or(text.len(), |(i, _)| start + i);
        if limit == text.len() {
            segments.push(text[start..].to_string());
            break;
        }
        while atoms.get(first_atom).is_some_and(|a| a.end <= start) {
            first_atom += 1;
        }
        let atoms = &atoms[first_atom..];
        // Cuts never land inside an atom, so one that starts here and does not fit goes out whole.
        let cut = match atoms.first() {
            Some(a) if a.start <= start && a.end > limit => a.end,
            _ => best_cut(text, start, limit, atoms),
        };
        segments.push(text[start..cut].to_string());
        start = cut;
    }
    segments
}

/// The latest cut in `(start, limit]` with the best boundary, outside `atoms` (sorted, none before start).
fn best_cut(text: &str, start: usize, limit: usize, atoms: &[Range<usize>]) -> usize {
    let mut best = (Boundary::Anywhere, limit);
    let mut found = false;
    let mut atom = 0;
    let mut newlines = 0;
    let mut before_run: Option<char> = None;
    for (i, ch) in text[start..limit].char_indices() {
        let cut = start + i + ch.len_utf8();
        let level = if ch.is_whitespace() {
            newlines += usize::from(ch == '\n');
            match newlines {
                0 if before_run.is_some_and(is_sentence_end) => Boundary::Sentence,
                0 => Boundary::Whitespace,
                1 => Boundary::Line,
                _ => Boundary::Paragraph,
            }
        } else {
            newlines = 0;
            before_run = Some(ch);
            // CJK text has no spaces after its sentence ends, so those count on their own.
            if matches!(ch, '。' | '！' | '？') { Boundary::Sentence } else { Boundary::Anywhere }
        };
        while atoms.get(atom).is_some_and(|a| a.end <= cut) {
            atom += 1;
        }
        let inside = atoms.get(atom).is_some_and(|a| a.start < cut);
        if !inside && (!found || level >= best.0) {
            best = (level, cut);
            found = true;
        }
    }
    best.1
}

fn is_sentence_end(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '。' | '！' | '？')
}

/// The language of `text` by whatlang: (ISO 639-1 code, else 639-3; confidence 0..1), None when unsure
/// which. Strip protected spans first ([`strip_protected`]): code and formulas mislead the detector.
pub fn detect_language(text: &str) -> Option<(String, f64)> {
    whatlang::detect(text).map(|info| (lang_code(info.lang()).to_string(), info.confidence()))
}

/// Whether `code` (ISO 639-1 like "ar" or 639-3 like "ara") names a language whatlang detects.
pub fn is_known_language(code: &str) -> bool {
    lang_from_code(code).is_some()
}

/// Whether detected code `found` is the same language as configured code `wanted` (639-1 or 639-3).
pub fn same_language(found: &str, wanted: &str) -> bool {
    match (lang_from_code(found), lang_from_code(wanted)) {
        (Some(a), Some(b)) => a == b,
        _ => found.trim().eq_ignore_ascii_case(wanted.trim()),
    }
}

// ---- finders ----

/// Pushes every match of `re` in `text[from..to]`; `fix` may shorten a match or reject it (None).
fn find_regex(
    re: &Regex,
    text: &str,
    from: usize,
    to: usize,
    out: &mut Vec<Range<usize>>,
    fix: impl Fn(&str, Range<usize>) -> Result<Range<usize>, usize>,
) {
    let hay = &text[..to];
    let mut pos = from;
    while let Some(m) = re.find_at(hay, pos) {
        match fix(text, m.range()) {
            Ok(r) if !r.is_empty() => {
                pos = r.end;
                out.push(r);
            }
            // Rejected: resume where the finder says (always past the match start).
            Ok(r) => pos = next_char(text, r.start),
            Err(resume) => pos = resume.max(next_char(text, m.start())),
        }
        if pos >= to {
            break;
        }
    }
}

fn next_char(text: &str, at: usize) -> usize {
    at + text[at..].chars().next().map_or(1, char::len_utf8)
}

fn regex_finder(re: &Regex, text: &str, from: usize, to: usize, out: &mut Vec<Range<usize>>) {
    find_regex(re, text, from, to, out, |_, r| Ok(r));
}

/// Tokens of already masked text (for splitting it).
fn tokens(text: &str, from: usize, to: usize, out: &mut Vec<Range<usize>>) {
    regex_finder(&TOKEN, text, from, to, out);
}

/// Length of the run of `b` starting at `at`, not past `to`.
fn run_len(bytes: &[u8], at: usize, to: usize, b: u8) -> usize {
    bytes[at..to].iter().take_while(|&&x| x == b).count()
}

/// The next run of backticks in `[from, to)` whose length satisfies `ok`: (start, length).
fn find_backticks(bytes: &[u8], from: usize, to: usize, ok: impl Fn(usize) -> bool) -> Option<(usize, usize)> {
    let mut pos = from;
    while let Some(i) = bytes[pos..to].iter().position(|&b| b == b'`') {
        let len = run_len(bytes, pos + i, to, b'`');
        if ok(len) {
            return Some((pos + i, len));
        }
        pos += i + len;
    }
    None
}

/// ``` fenced blocks: closed by a run at least as long, else they run to the end.
fn fences(text: &str, from: usize, to: usize, out: &mut Vec<Range<usize>>) {
    let bytes = text.as_bytes();
    let mut pos = from;
    while let Some((open, n)) = find_backticks(bytes, pos, to, |len| len >= 3) {
        let end = find_backticks(bytes, open + n, to, |len| len >= n).map_or(to, |(s, len)| s + len);
        out.push(open..end);
        pos = end;
    }
}

/// `inline code`: closed by a run of the same length on the same line (a lone backtick is left alone).
fn inline_code(text: &str, from: usize, to: usize, out: &mut Vec<Range<usize>>) {
    let bytes = text.as_bytes();
    let mut pos = from;
    while let Some((open, n)) = find_backticks(bytes, pos, to, |_| true) {
        let line_end = text[open..to].find('\n').map_or(to, |i| open + i);
        match find_backticks(bytes, open + n, line_end, |len| len == n) {
            Some((close, len)) => {
                out.push(open..close + len);
                pos = close + len;
            }
            None => pos = open + n,
        }
    }
}

/// LaTeX: display and inline math, environments, and commands with brace arguments.
fn latex(text: &str, from: usize, to: usize, out: &mut Vec<Range<usize>>) {
    let mut pos = from;
    while let Some(i) = text[pos..to].find(['$', '\\']) {
        let at = pos + i;
        let s = &text[at..to];
        let closed = |open: usize, close: &str| s[open..].find(close).map(|j| at + open + j + close.len());
        let end = if s.starts_with("$$") {
            closed(2, "$$")
        } else if s.starts_with("\\[") {
            closed(2, "\\]")
        } else if s.starts_with("\\(") {
            closed(2, "\\)")
        } else if s.starts_with("\\begin{") {
            environment(text, at, to).or_else(|| command(text, at, to))
        } else if s.starts_with('$') {
            inline_math(text, at, to)
        } else {
            command(text, at, to)
        };
        pos = match end {
            Some(end) => {
                out.push(at..end);
                end
            }
            // An unclosed `$$` must not open single-dollar math; `\x` is an escape (e.g. `\$`).
            None if s.starts_with("$$") => at + 2,
            None if s.starts_with('\\') => next_char(text, at + 1).min(to),
            None => at + 1,
        };
    }
}

/// `$…$` on one line, content not empty and not padded with spaces, the closing `$` not followed by a
/// digit: so "$5 and $10" is not math.
fn inline_math(text: &str, at: usize, to: usize) -> Option<usize> {
    let body = at + 1;
    let line = &text[body..to];
    let line = &line[..line.find('\n').unwrap_or(line.len())];
    let close = body + line.find('$')?;
    let inner = &text[body..close];
    let padded = inner.starts_with(char::is_whitespace) || inner.ends_with(char::is_whitespace);
    let price = text[close + 1..].starts_with(|c: char| c.is_ascii_digit());
    (!inner.is_empty() && !padded && !price && !inner.ends_with('\\')).then_some(close + 1)
}

/// `\begin{env}…\end{env}`, nesting of the same environment included.
fn environment(text: &str, at: usize, to: usize) -> Option<usize> {
    let name_start = at + "\\begin{".len();
    let name = &text[name_start..name_start + text[name_start..to].find('}')?];
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '*') {
        return None;
    }
    let (open, close) = (format!("\\begin{{{name}}}"), format!("\\end{{{name}}}"));
    let mut depth = 1;
    let mut pos = name_start + name.len() + 1;
    loop {
        let rest = &text[pos..to];
        let c = rest.find(&close)?;
        match rest[..c].find(&open) {
            Some(o) => {
                depth += 1;
                pos += o + open.len();
            }
            None => {
                depth -= 1;
                pos += c + close.len();
                if depth == 0 {
                    return Some(pos);
                }
            }
        }
    }
}

/// `\name[opt]{arg}{arg}…` with at least one balanced brace argument.
fn command(text: &str, at: usize, to: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut pos = at + 1 + bytes[at + 1..to].iter().take_while(|b| b.is_ascii_alphabetic()).count();
    if pos == at + 1 {
        return None;
    }
    let mut args = 0;
    while pos < to {
        let end = match bytes[pos] {
            b'{' => balanced(bytes, pos, to, b'{', b'}'),
            b'[' if args == 0 => balanced(bytes, pos, to, b'[', b']'),
            _ => None,
        };
        let Some(end) = end else { break };
        args += usize::from(bytes[pos] == b'{');
        pos = end;
    }
    (args > 0).then_some(pos)
}

/// End of the group opened at `at`, skipping backslash escapes; None when unbalanced.
fn balanced(bytes: &[u8], at: usize, to: usize, open: u8, close: u8) -> Option<usize> {
    let mut depth = 0;
    let mut i = at;
    while i < to {
        match bytes[i] {
            b'\\' => i += 1,
            b if b == open => depth += 1,
            b if b == close => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The tags themselves (`<answer>`, `</answer>`, `<br/>`), not the text between them. Attributes need a
/// value so that "a<b and c>d" is not taken for a tag.
fn tags(text: &str, from: usize, to: usize, out: &mut Vec<Range<usize>>) {
    static TAG: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(
            r#"</?[A-Za-z][A-Za-z0-9_:.-]*(?:\s+[A-Za-z_:][A-Za-z0-9_:.-]*\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'<>=`]+))*\s*/?>"#,
        )
        .expect("valid tag regex")
    });
    regex_finder(&TAG, text, from, to, out);
}

/// `####` answer markers (a run of exactly four).
fn answer_markers(text: &str, from: usize, to: usize, out: &mut Vec<Range<usize>>) {
    static HASHES: LazyLock<Regex> = LazyLock::new(|| Regex::new("#+").expect("valid marker regex"));
    find_regex(&HASHES, text, from, to, out, |_, r| if r.len() == 4 { Ok(r) } else { Err(r.end) });
}

/// `{{ … }}`, `{name}`, `%s`, `%d`, `%(name)s`, `[[…]]`.
fn template_placeholders(text: &str, from: usize, to: usize, out: &mut Vec<Range<usize>>) {
    static PLACEHOLDER: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(
            r"(?s)\{\{.*?\}\}|\{[A-Za-z_][A-Za-z0-9_]*\}|%(?:\([A-Za-z_][A-Za-z0-9_]*\))?[sd]\b|\[\[[^\[\]\n]+\]\]",
        )
        .expect("valid placeholder regex")
    });
    regex_finder(&PLACEHOLDER, text, from, to, out);
}

/// URLs (trailing punctuation and unbalanced closing brackets left out) and email addresses.
fn urls(text: &str, from: usize, to: usize, out: &mut Vec<Range<usize>>) {
    static URL: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(
            r#"(?i)(?:https?|ftp)://[^\s<>"'`⟦⟧]+|[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"#,
        )
        .expect("valid url regex")
    });
    find_regex(&URL, text, from, to, out, |text, r| {
        let mut s = &text[r.clone()];
        loop {
            let trimmed = s.trim_end_matches(['.', ',', ';', ':', '!', '?', '\'', '"']);
            let unbalanced = |open: char, close: char| {
                trimmed.ends_with(close) && trimmed.matches(open).count() < trimmed.matches(close).count()
            };
            let trimmed = if unbalanced('(', ')') || unbalanced('[', ']') || unbalanced('{', '}') {
                &trimmed[..trimmed.len() - 1]
            } else {
                trimmed
            };
            if trimmed.len() == s.len() {
                break;
            }
            s = trimmed;
        }
        Ok(r.start..r.start + s.len())
    });
}

/// Numbers: sign, thousands separators, decimals, simple fractions, percent. Not the digits of a word
/// ("H2O", "x1"), which are left for the model to carry over.
fn numbers(text: &str, from: usize, to: usize, out: &mut Vec<Range<usize>>) {
    static NUMBER: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"[+-]?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?(?:/[0-9]+)?%?").expect("valid number regex")
    });
    let in_word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c.is_numeric();
    find_regex(&NUMBER, text, from, to, out, |text, r| {
        if text[..r.start].chars().next_back().is_some_and(in_word) {
            // Skip the rest of the word at once: retrying each digit would be quadratic.
            let word = text[r.start..].find(|c: char| !in_word(c)).unwrap_or(text.len() - r.start);
            return Err(r.start + word);
        }
        // "1,2345" is 1 then 2345, not 1,234 then 5.
        if text[r.end..].starts_with(|c: char| c.is_ascii_digit()) {
            let sign = usize::from(text[r.start..].starts_with(['+', '-']));
            let digits = text[r.start + sign..].find(|c: char| !c.is_ascii_digit()).unwrap_or(0);
            return Ok(r.start..r.start + sign + digits);
        }
        Ok(r)
    });
}

/// Literal ⟦ and ⟧ left in the text, so that tokens stay unambiguous.
fn brackets(text: &str, from: usize, to: usize, out: &mut Vec<Range<usize>>) {
    out.extend(text[from..to].match_indices([OPEN, CLOSE]).map(|(i, s)| from + i..from + i + s.len()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(text: &str) -> Vec<String> {
        mask(text).spans
    }

    const VARIED: &[&str] = &[
        "",
        "plain words only",
        "Use `let x = 5;` then run:\n```rust\nfn main() { println!(\"{}\", 1); }\n```\nDone.",
        "Solve $x^2 + 3x = 10$ and $$\\int_0^1 f(x)\\,dx$$ or \\(a+b\\) and \\[c\\].",
        "\\begin{align} a &= b \\\\ \\begin{align} x \\end{align} \\end{align} then \\boxed{\\frac{1}{2}}",
        "<think>hmm</think><answer>forty two</answer><br/> <a href=\"http://x.org/a_(b)\">link</a>",
        "#### 1,234.5 and -3/4 and 12% of {name} with {{ var }} %s %(count)d [[Page]]",
        "Mail me: a.b+c@example.co.uk, or see https://example.com/path?q=1&r=2.",
        "Emoji 🎉🚀 and Arabic: العدد 42 هو الجواب. 中文：答案是 7。",
        "Literal ⟦0⟧ and ⟧ and ⟦ brackets, `code ⟦1⟧`",
        "Unterminated ```python\nprint(1)\n$ lone dollar \\ backslash ` tick",
        "$5 and $10, $5-$10, \\$3, 1,2345 H2O x-5 3-5",
    ];

    #[test]
    fn mask_unmask_round_trip_is_identity() {
        for text in VARIED {
            let masked = mask(text);
            assert_eq!(unmask(&masked.text, &masked.spans).as_deref(), Ok(*text), "{text:?}");
            // Masked text has no bracket other than those of its tokens.
            let tokens = TOKEN.find_iter(&masked.text).count();
            assert_eq!(tokens, masked.spans.len(), "{text:?}");
            assert_eq!(masked.text.matches(OPEN).count(), tokens, "{text:?}");
        }
    }

    #[test]
    fn mask_protects_code_latex_urls_placeholders() {
        let text = "Run `ls -la` at https://example.com/docs, see $\\frac{a}{b}$, \\boxed{42}, {name}, %s, \
                    {{ x }}, [[Link]] and mail bob@example.org.";
        let s = spans(text);
        for expected in [
            "`ls -la`",
            "https://example.com/docs",
            "$\\frac{a}{b}$",
            "\\boxed{42}",
            "{name}",
            "%s",
            "{{ x }}",
            "[[Link]]",
            "bob@example.org",
        ] {
            assert!(s.contains(&expected.to_string()), "{expected:?} not in {s:?}");
        }
        assert_eq!(s.len(), 9, "{s:?}");
    }

    #[test]
    fn fenced_block_wins_over_what_is_inside_it() {
        let text = "Before\n```py\nx = `a` + $b$ + 42\n```\nafter";
        assert_eq!(spans(text), vec!["```py\nx = `a` + $b$ + 42\n```"]);
        assert_eq!(spans("start ```\nno end 42"), vec!["```\nno end 42"]);
    }

    #[test]
    fn answer_tags_kept_but_inner_words_translated() {
        let masked = mask("<answer>forty two</answer>");
        assert_eq!(masked.text, "⟦0⟧forty two⟦1⟧");
        assert_eq!(masked.spans, vec!["<answer>", "</answer>"]);
        assert_eq!(spans("a<b and c>d"), Vec::<String>::new());
    }

    #[test]
    fn answer_marker_and_number_masked() {
        let masked = mask("So the total is 1,234.\n#### 1,234");
        assert_eq!(masked.text, "So the total is ⟦0⟧.\n⟦1⟧ ⟦2⟧");
        assert_eq!(masked.spans, vec!["1,234", "####", "1,234"]);
    }

    #[test]
    fn prices_are_numbers_not_math() {
        let masked = mask("It costs $5 and $10.");
        assert_eq!(masked.text, "It costs $⟦0⟧ and $⟦1⟧.");
        assert_eq!(masked.spans, vec!["5", "10"]);
        assert_eq!(spans("Between $5-$10 each"), vec!["5", "10"]);
    }

    #[test]
    fn single_dollar_math_masked() {
        let masked = mask("Let $x^2$ be the area.");
        assert_eq!(masked.text, "Let ⟦0⟧ be the area.");
        assert_eq!(masked.spans, vec!["$x^2$"]);
    }

    #[test]
    fn numbers_in_words_left_alone() {
        assert_eq!(spans("H2O and x1 but 7 and -3.5% and 3/4"), vec!["7", "-3.5%", "3/4"]);
        assert_eq!(spans("共有5个"), vec!["5"]);
    }

    #[test]
    fn unmask_accepts_reordered_tokens() {
        let spans = vec!["A".to_string(), "B".to_string()];
        assert_eq!(unmask("⟦1⟧ then ⟦0⟧", &spans).as_deref(), Ok("B then A"));
    }

    #[test]
    fn unmask_tolerates_spaces_inside_brackets() {
        let spans: Vec<String> = (0..4).map(|i| format!("s{i}")).collect();
        assert_eq!(unmask("⟦0⟧⟦1⟧⟦2⟧ ⟦ 3 ⟧", &spans).as_deref(), Ok("s0s1s2 s3"));
    }

    #[test]
    fn unmask_reports_missing_tokens() {
        let spans: Vec<String> = (0..6).map(|i| format!("s{i}")).collect();
        let err = unmask("⟦0⟧ ⟦1⟧ ⟦3⟧ ⟦4⟧", &spans).unwrap_err();
        assert_eq!(err, MaskError::Missing(vec![2, 5]));
        assert_eq!(err.to_string(), "placeholders ⟦2⟧, ⟦5⟧ missing from the translation");
    }

    #[test]
    fn unmask_reports_duplicated_tokens() {
        let spans = vec!["A".to_string(), "B".to_string()];
        let err = unmask("⟦0⟧ ⟦1⟧ ⟦1⟧", &spans).unwrap_err();
        assert_eq!(err, MaskError::Duplicated(vec![1]));
        assert_eq!(err.to_string(), "placeholder ⟦1⟧ repeated in the translation");
    }

    #[test]
    fn unmask_reports_unknown_tokens() {
        let spans = vec!["A".to_string()];
        let err = unmask("⟦0⟧ ⟦99⟧", &spans).unwrap_err();
        assert_eq!(err, MaskError::Unknown(vec!["99".to_string()]));
        assert!(err.to_string().contains("⟦99⟧"), "{err}");
    }

    #[test]
    fn unmask_reports_several_problems_and_stray_brackets() {
        let spans = vec!["A".to_string(), "B".to_string()];
        let err = unmask("⟦0⟧ ⟦0⟧ ⟦7⟧ ⟦x⟧", &spans).unwrap_err();
        let text = err.to_string();
        for part in ["⟦1⟧ missing", "⟦0⟧ repeated", "⟦7⟧", "2 stray"] {
            assert!(text.contains(part), "{part:?} not in {text:?}");
        }
    }

    /// xorshift64: a tiny deterministic PRNG for property-style tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn random_text(rng: &mut Rng) -> String {
        // Pieces separated by `|`; spans, tokens and stray brackets mixed with ordinary text.
        let pieces: Vec<&str> =
            "word| | |\n|\n\n|. |! |é|中|。|🎉|ع|`|```|$|x|42|1,234|\\frac{a}{b}|<b>|⟦3⟧|⟦|⟧|{n}|http://a.b/c|\t"
                .split('|')
                .collect();
        let len = rng.below(60);
        (0..len).map(|_| pieces[rng.below(pieces.len())]).collect()
    }

    /// Checks the split invariants and returns the segments.
    fn check_split(text: &str, max: usize) -> Vec<String> {
        let segments = split_segments(text, max);
        assert_eq!(segments.concat(), text, "max {max}");
        let atoms = protected_ranges(text, SPLIT_FINDERS);
        let mut pos = 0;
        for seg in &segments {
            assert!(!seg.is_empty());
            let range = pos..pos + seg.len();
            let oversized_atom = atoms.contains(&range);
            assert!(seg.chars().count() <= max.max(1) || oversized_atom, "{seg:?} over {max} in {text:?}");
            pos = range.end;
            assert!(!atoms.iter().any(|a| a.start < pos && pos < a.end), "cut inside an atom at {pos} in {text:?}");
        }
        segments
    }

    #[test]
    fn split_concatenates_back_on_random_inputs() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..2000 {
            let text = random_text(&mut rng);
            let max = rng.below(40);
            check_split(&text, max);
        }
    }

    #[test]
    fn split_fixed_inputs() {
        assert!(split_segments("", 10).is_empty());
        assert_eq!(split_segments("short", 10), vec!["short"]);
        assert_eq!(split_segments("abc", 0), vec!["a", "b", "c"]);
        for text in VARIED {
            for max in [1, 2, 5, 17, 80] {
                check_split(text, max);
                check_split(&mask(text).text, max);
            }
        }
    }

    #[test]
    fn split_prefers_paragraph_over_sentence() {
        let text = "First para. Still first.\n\nSecond para here. And more words.";
        let segments = check_split(text, 45);
        assert_eq!(segments[0], "First para. Still first.\n\n");
        assert_eq!(check_split("One. Two three four", 12), vec!["One. ", "Two three ", "four"]);
        assert_eq!(check_split("a b\nc d e f", 9), vec!["a b\n", "c d e f"]);
    }

    #[test]
    fn split_never_cuts_a_token() {
        let text = "ab⟦12⟧cd⟦ 3 ⟧ef";
        for max in 1..text.chars().count() {
            for seg in check_split(text, max) {
                assert_eq!(seg.matches(OPEN).count(), seg.matches(CLOSE).count(), "{seg:?}");
            }
        }
    }

    #[test]
    fn split_keeps_oversized_span_whole() {
        let code = "```\nlet long_line = 1 + 2 + 3 + 4 + 5;\n```";
        let text = format!("Intro words. {code} outro.");
        let segments = check_split(&text, 10);
        assert!(segments.contains(&code.to_string()), "{segments:?}");
    }

    #[test]
    fn split_multibyte_text_is_safe() {
        let text = "日本語のテキスト。次の文です。🎉🎉🎉 مرحبا بالعالم";
        for max in 1..12 {
            check_split(text, max);
        }
        assert_eq!(split_segments("中文。中文。", 4), vec!["中文。", "中文。"]);
    }

    #[test]
    fn split_huge_text_without_spaces() {
        let text = "abcdefghij".repeat(10_000);
        let segments = check_split(&text, 1000);
        assert_eq!(segments.len(), 100);
    }

    #[test]
    fn detects_languages_of_real_sentences() {
        let cases = [
            ("en", "The quick brown fox jumps over the lazy dog while the children watch from the garden."),
            ("fr", "Le petit chat dort tranquillement sur le canapé pendant que la pluie tombe dehors."),
            ("ar", "ذهب الولد إلى المدرسة في الصباح الباكر وكان سعيدا جدا بلقاء أصدقائه."),
            ("zh", "今天天气很好，我们一起去公园散步，然后在湖边喝茶聊天。"),
            ("es", "El niño fue a la escuela por la mañana y estaba muy contento de ver a sus amigos."),
        ];
        for (code, text) in cases {
            let (found, confidence) = detect_language(text).expect("detected");
            assert!(same_language(&found, code), "{text:?}: {found} is not {code}");
            assert!((0.0..=1.0).contains(&confidence));
        }
    }

    #[test]
    fn language_codes_map_both_ways() {
        assert!(is_known_language("ar") && is_known_language("ara") && is_known_language("ZH"));
        assert!(!is_known_language("xx"));
        assert!(same_language("ar", "ara") && same_language("zh", "zho") && same_language("fr", "fr"));
        assert!(!same_language("fr", "es"));
    }

    #[test]
    fn strip_protected_lets_french_win_over_code() {
        let code = "```python\ndef compute_total(items):\n    return sum(item.price for item in items if item.enabled)\n\
                    print(compute_total(load_the_items_from_the_database()))\n```";
        let text = format!("Voici la fonction qui calcule le total :\n{code}\nElle renvoie la somme des prix.");
        let stripped = strip_protected(&text);
        assert!(!stripped.contains("def "), "{stripped:?}");
        let (found, _) = detect_language(&stripped).expect("detected");
        assert!(same_language(&found, "fr"), "{found}");
    }
}
