//! Answer extraction, normalization and comparison, shared by `vote`, `score`, `rewrite` and `translate`.
//!
//! Three steps, each usable alone:
//! - [`extract`] finds the raw answer in a model response with an ordered list of [`Extractor`]s.
//! - [`normalize`] turns a raw answer into a canonical text and, when it is a number, its value, so that
//!   `1,000`, `$1000.00` and `\boxed{1000}` compare equal.
//! - [`equivalent`], [`group_equivalent`] and [`winner`] compare answers; [`cluster_by_similarity`] and
//!   [`medoid`] do the same for free-form answers by their embeddings.
//!
//! Everything here is total: arbitrary (truncated, adversarial) model output never panics.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

/// One way to find the answer in a model response. YAML forms: `{tag: answer}`, `{marker: "####"}`, `boxed`,
/// `last_number`, `{json: final_answer}`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Extractor {
    /// Content of the last complete `<name>…</name>` pair (tag name case-insensitive).
    Tag(String),
    /// Rest of the line after the last occurrence of the marker, e.g. GSM8K's `####`.
    Marker(String),
    /// Content of the last `\boxed{…}` or `\fbox{…}`.
    Boxed,
    /// The last number in the text.
    LastNumber,
    /// A field of the JSON object the response is, or contains.
    Json(String),
}

/// One extractor or an ordered list tried in turn (first that finds an answer wins).
/// YAML: `answer: {marker: "####"}` or `answer: [{tag: answer}, boxed, last_number]`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(untagged)]
pub enum AnswerSpec {
    One(Extractor),
    Chain(Vec<Extractor>),
}

impl AnswerSpec {
    /// The extractors to try, in order.
    pub fn extractors(&self) -> &[Extractor] {
        match self {
            AnswerSpec::One(e) => std::slice::from_ref(e),
            AnswerSpec::Chain(list) => list,
        }
    }
}

impl Default for AnswerSpec {
    /// `[{tag: answer}, {marker: "####"}, boxed, last_number]`: explicit forms first, the guess last.
    fn default() -> Self {
        AnswerSpec::Chain(vec![
            Extractor::Tag("answer".into()),
            Extractor::Marker("####".into()),
            Extractor::Boxed,
            Extractor::LastNumber,
        ])
    }
}

/// The raw answer (trimmed) found by the first extractor that finds a non-empty one.
pub fn extract(text: &str, extractors: &[Extractor]) -> Option<String> {
    extractors.iter().find_map(|extractor| {
        let found = match extractor {
            Extractor::Tag(name) => tag(text, name).map(str::to_string),
            Extractor::Marker(marker) => after_marker(text, marker).map(str::to_string),
            Extractor::Boxed => boxed(text).map(str::to_string),
            Extractor::LastNumber => last_number(text).map(str::to_string),
            Extractor::Json(field) => json_field(text, field),
        }?;
        let found = found.trim();
        (!found.is_empty()).then(|| found.to_string())
    })
}

/// Content of the last `<name>…</name>`; `None` when the last opening tag is never closed, because a
/// truncated answer must not count (nor an earlier draft in its place).
fn tag<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    if name.is_empty() {
        return None;
    }
    // ASCII lowercasing keeps every byte offset, so positions found in `lower` are valid in `text`.
    let lower = text.to_ascii_lowercase();
    let name = name.to_ascii_lowercase();
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let start = lower.rfind(&open)? + open.len();
    let end = start + lower[start..].find(&close)?;
    Some(&text[start..end])
}

fn after_marker<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    if marker.is_empty() {
        return None;
    }
    let rest = &text[text.rfind(marker)? + marker.len()..];
    Some(rest.lines().next().unwrap_or_default())
}

/// Content of the last `\boxed{…}` / `\fbox{…}`; `None` when its braces never close (truncated).
fn boxed(text: &str) -> Option<&str> {
    let open = ["\\boxed{", "\\fbox{"].iter().filter_map(|p| text.rfind(p).map(|i| i + p.len() - 1)).max()?;
    let close = matching_brace(text, open)?;
    Some(&text[open + 1..close])
}

/// Byte index of the `}` closing the `{` at `open`. Backslash-escaped characters (`\{`, `\}`) are skipped.
fn matching_brace(s: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut escaped = false;
    for (i, c) in s.get(open..)?.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '{' => depth += 1,
            '}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return Some(open + i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Signed decimal with optional thousands commas, exponent and `/denominator`; ASCII or full-width digits.
/// A decimal point needs digits after it, so a sentence's final period is not taken.
static NUMBER: LazyLock<Regex> = LazyLock::new(|| {
    let pattern = r"[-+−]?(?:D{1,3}(?:,D{3})+|D+)(?:\.D+)?(?:[eE][-+]?D+)?(?:/D+)?".replace('D', "[0-9０-９]");
    Regex::new(&pattern).expect("NUMBER is a valid regex")
});

fn last_number(text: &str) -> Option<&str> {
    let found = NUMBER.find_iter(text).last()?;
    let number = found.as_str();
    // A sign glued to a word or digit ("3-5", "x+2") is an operator, not part of the number.
    let glued = text[..found.start()].chars().next_back().is_some_and(char::is_alphanumeric);
    match number.chars().next() {
        Some(sign @ ('-' | '+' | '−')) if glued => Some(&number[sign.len_utf8()..]),
        _ => Some(number),
    }
}

/// `field` of the text as a JSON object or, failing that, of the first embedded `{…}` object that parses and
/// has it (models wrap JSON in prose and ```json fences). Strings as-is, other values as compact JSON.
fn json_field(text: &str, field: &str) -> Option<String> {
    // Bounds the work on inputs full of braces.
    const MAX_CANDIDATES: usize = 64;
    let whole = std::iter::once(text.trim());
    let embedded = brace_spans(text).into_iter().map(|(start, end)| &text[start..end]);
    whole.chain(embedded).take(MAX_CANDIDATES).find_map(|candidate| {
        match serde_json::from_str::<Value>(candidate).ok()?.get(field)? {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    })
}

/// Byte spans of balanced `{…}` groups, by start. Braces inside JSON strings are ignored; one pass keeps it
/// linear however many unmatched braces there are.
fn brace_spans(text: &str) -> Vec<(usize, usize)> {
    let (mut open, mut spans) = (Vec::new(), Vec::new());
    let (mut in_string, mut escaped) = (false, false);
    for (i, c) in text.char_indices() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '{' => open.push(i),
            '}' => spans.extend(open.pop().map(|start| (start, i + 1))),
            // Quotes in prose outside any object do not start a string.
            '"' if !open.is_empty() => in_string = true,
            _ => {}
        }
    }
    spans.sort_unstable();
    spans
}

/// A normalized answer: canonical text, and its numeric value when it is a number.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalized {
    pub text: String,
    pub number: Option<f64>,
}

/// Default relative tolerance of [`equivalent`]: absorbs float noise such as `0.1 + 0.2`.
pub const DEFAULT_TOLERANCE: f64 = 1e-6;

/// Canonical form of a raw answer: LaTeX, currency, units, thousands separators and phrasing stripped.
/// A number's `text` is its canonical decimal form, so text equality works on numbers too.
pub fn normalize(raw: &str) -> Normalized {
    let s = latex(&unify_chars(raw), 0).replace("^{°}", "").replace("^°", "").replace('°', "");
    let s = digit_groups(&s).split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
    let s = strip_decorations(s);
    match parse_number(&s) {
        Some(value) => Normalized { text: canonical(value), number: Some(value) },
        None => {
            let text = match ARTICLE.find(&s) {
                Some(m) if m.end() < s.len() => s[m.end()..].to_string(),
                _ => s,
            };
            Normalized { text, number: None }
        }
    }
}

/// Equal after normalization; when both are numbers, |a-b| <= tolerance * max(1, |a|, |b|).
pub fn equivalent(a: &Normalized, b: &Normalized, tolerance: f64) -> bool {
    match (a.number, b.number) {
        (Some(x), Some(y)) => (x - y).abs() <= tolerance * 1f64.max(x.abs()).max(y.abs()),
        _ => a.text == b.text,
    }
}

/// Unicode minus, full-width ASCII (`４２`, `．`) and the ideographic space to their ASCII forms.
fn unify_chars(raw: &str) -> String {
    raw.chars()
        .map(|c| match c {
            '\u{2212}' => '-',
            '\u{3000}' => ' ',
            '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
            _ => c,
        })
        .collect()
}

/// Deepest LaTeX group rewritten; deeper content is kept as is (bounds recursion on adversarial input).
const MAX_LATEX_DEPTH: usize = 16;

/// Commands whose single argument is kept and the command dropped.
const UNWRAP: &[&str] =
    &["boxed", "fbox", "text", "textbf", "textit", "textrm", "mathrm", "mathbf", "mathit", "mbox", "operatorname"];

/// Rewrites the LaTeX of an answer to plain text: math delimiters and wrappers dropped, `\frac{a}{b}` to
/// `a/b`, `\,` to a thin space (a thousands separator in `1\,000`), escaped symbols to themselves.
fn latex(s: &str, depth: usize) -> String {
    if depth > MAX_LATEX_DEPTH {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        rest = &rest[c.len_utf8()..];
        match c {
            '$' => {}
            '\\' => rest = command(rest, &mut out, depth),
            _ => out.push(c),
        }
    }
    out
}

/// Rewrites the command that follows a `\` into `out`; returns the text after it.
fn command<'a>(rest: &'a str, out: &mut String, depth: usize) -> &'a str {
    let name_len = rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len());
    if name_len == 0 {
        let Some(c) = rest.chars().next() else { return rest };
        match c {
            '!' | '(' | ')' | '[' | ']' => {}
            ',' => out.push('\u{2009}'),
            ';' | ':' | ' ' => out.push(' '),
            // `\%`, `\$`, `\{`, ...: the symbol itself.
            _ => out.push(c),
        }
        return &rest[c.len_utf8()..];
    }
    let (name, after) = rest.split_at(name_len);
    match name {
        "left" | "right" | "displaystyle" => after,
        "quad" | "qquad" => {
            out.push(' ');
            after
        }
        "circ" | "degree" => {
            out.push('°');
            after
        }
        "frac" | "dfrac" | "tfrac" => {
            let Some((num, after_num)) = argument(after) else { return after };
            let Some((den, after_den)) = argument(after_num) else { return after };
            out.push_str(&operand(&latex(num, depth + 1)));
            out.push('/');
            out.push_str(&operand(&latex(den, depth + 1)));
            after_den
        }
        _ if UNWRAP.contains(&name) => match argument(after) {
            Some((inner, after_arg)) => {
                out.push_str(&latex(inner, depth + 1));
                after_arg
            }
            // Unbalanced: drop the command, keep the text.
            None => after,
        },
        _ => {
            out.push('\\');
            out.push_str(name);
            after
        }
    }
}

/// A command argument: a balanced `{…}` group or a single character (`\frac12`); returns it and the rest.
fn argument(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start();
    match s.chars().next()? {
        '{' => matching_brace(s, 0).map(|close| (&s[1..close], &s[close + 1..])),
        '\\' | '}' => None,
        c => Some(s.split_at(c.len_utf8())),
    }
}

/// A fraction operand: bare when simple (`-3`, `x`), parenthesized otherwise (`(a+b)`).
fn operand(s: &str) -> String {
    let s = s.trim();
    let simple = s.trim_start_matches('-').chars().all(|c| c.is_alphanumeric() || c == '.' || c == ',');
    if simple && !s.is_empty() { s.to_string() } else { format!("({s})") }
}

/// Thin, narrow no-break and no-break spaces between digits become `_`, the separator the number parser
/// accepts, before whitespace is collapsed.
fn digit_groups(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let digit_at = |i: usize| chars.get(i).is_some_and(char::is_ascii_digit);
    (0..chars.len())
        .map(|i| match chars[i] {
            '\u{2009}' | '\u{202F}' | '\u{00A0}' if i > 0 && digit_at(i - 1) && digit_at(i + 1) => '_',
            c => c,
        })
        .collect()
}

/// `answer:`, `the final answer is`, `x =`: phrasing before the answer itself.
static PREFIX: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:(?:the|my)\s+)?(?:final\s+)?answer\b(?:\s+is\b)?\s*[:=]?\s*|^[a-z_][a-z0-9_]*\s*=\s*")
        .expect("PREFIX is a valid regex")
});

static ARTICLE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^(?:the|a|an)\s+").expect("ARTICLE is a valid regex"));

/// Wrappers dropped when they enclose the whole answer; brackets must also match each other.
const QUOTES: &[(&str, &str)] =
    &[("**", "**"), ("*", "*"), ("`", "`"), ("\"", "\""), ("'", "'"), ("“", "”"), ("‘", "’")];
const BRACKETS: &[(char, char)] = &[('(', ')'), ('[', ']'), ('{', '}')];

/// Drops trailing punctuation, whole-answer wrappers and answer prefixes, until none is left.
fn strip_decorations(mut s: String) -> String {
    loop {
        let before = s.len();
        s = s.trim().trim_end_matches(['.', ',', ';']).trim_end().to_string();
        if let Some(inner) = unwrap_pair(&s) {
            s = inner.trim().to_string();
        }
        if let Some(m) = PREFIX.find(&s)
            && m.end() < s.len()
        {
            s = s[m.end()..].to_string();
        }
        // Every step only shortens `s`, so this ends.
        if s.len() == before {
            return s;
        }
    }
}

fn unwrap_pair(s: &str) -> Option<&str> {
    let quoted = QUOTES.iter().find_map(|(open, close)| s.strip_prefix(open)?.strip_suffix(close));
    quoted.or_else(|| {
        BRACKETS.iter().find_map(|&(open, close)| {
            let inner = s.strip_prefix(open)?.strip_suffix(close)?;
            // "(1)+(2)" starts and ends with parentheses that do not belong together.
            closes_at_end(s, open, close).then_some(inner)
        })
    })
}

/// Whether the bracket opening `s` is closed by its last character.
fn closes_at_end(s: &str, open: char, close: char) -> bool {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        if c == open {
            depth += 1;
        } else if c == close {
            depth = depth.saturating_sub(1);
            if depth == 0 {
                return i + c.len_utf8() == s.len();
            }
        }
    }
    false
}

/// Unit words after a number: `apples`, `km/h`, `m^2`, `cm²`; no digits, so "5 apples and 3 pears" is not
/// a number.
static UNIT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\p{Alphabetic}(?:[\p{Alphabetic}/.'²³-]|\^[23]|\s)*$").expect("UNIT is a valid regex")
});

/// The value of a (lowercase, cleaned) answer: a number, optionally followed by unit words.
fn parse_number(s: &str) -> Option<f64> {
    if let Some(value) = value(s) {
        return Some(value);
    }
    for (i, c) in s.char_indices().filter(|(_, c)| c.is_alphabetic()) {
        let prefix = s[..i].trim_end();
        if UNIT.is_match(&s[i..])
            && let Some(value) = value(prefix)
        {
            return Some(value);
        }
        // Only an exponent's `e` ("1e3 m") may come before the unit.
        if !(c == 'e' && prefix.ends_with(|d: char| d.is_ascii_digit())) {
            break;
        }
    }
    None
}

const CURRENCY: &[char] = &['$', '€', '£', '¥'];

/// A whole number: sign, currency and `%` around a mixed number, fraction or decimal. Finite only (400 nines
/// overflow to infinity and stay text); `-0` is `0`.
fn value(s: &str) -> Option<f64> {
    let s = s.trim();
    let s = s.strip_suffix('%').unwrap_or(s);
    let (negative, s) = sign(s.trim());
    // The sign may also follow a currency prefix: "$-5".
    let (negative_inner, s) = sign(s.trim_matches(CURRENCY).trim());
    let magnitude = mixed(s).or_else(|| fraction(s)).or_else(|| decimal(s))?;
    let value = if negative != negative_inner { -magnitude } else { magnitude };
    // `+ 0.0` turns `-0` into `0`.
    value.is_finite().then_some(value + 0.0)
}

fn sign(s: &str) -> (bool, &str) {
    match s.chars().next() {
        Some('-') => (true, s[1..].trim_start()),
        Some('+') => (false, s[1..].trim_start()),
        _ => (false, s),
    }
}

/// `1 1/2`: a whole number and a proper fraction.
fn mixed(s: &str) -> Option<f64> {
    let (whole, rest) = s.split_once(' ')?;
    let (num, den) = rest.split_once('/')?;
    let (num, den) = (decimal(num.trim())?, decimal(den.trim())?);
    let proper = whole.bytes().all(|b| b.is_ascii_digit()) && num >= 0.0 && num < den;
    if !proper {
        return None;
    }
    Some(decimal(whole)? + num / den)
}

fn fraction(s: &str) -> Option<f64> {
    let (num, den) = s.split_once('/')?;
    let (negative, num) = sign(num.trim());
    let (num, den) = (decimal(num)?, decimal(den.trim())?);
    let quotient = num / den;
    (den != 0.0).then_some(if negative { -quotient } else { quotient })
}

/// An unsigned decimal: `1000`, `1,000.5`, `1_000`, `.5`, `5.`, `1.5e-3`. Thousands groups must be exactly
/// three digits after the first, so `1,5` is not a number.
fn decimal(s: &str) -> Option<f64> {
    let (mantissa, exponent) = match s.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (s, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let int = without_separators(int)?;
    if (int.is_empty() && frac.is_empty()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut text = format!("{int}.{frac}");
    if let Some(exponent) = exponent {
        let digits = exponent.strip_prefix(['-', '+']).unwrap_or(exponent);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text = format!("{text}e{exponent}");
    }
    // Only ASCII digits, '.', 'e' and a sign reach here, so "inf" and "nan" cannot.
    text.parse().ok()
}

/// Integer digits without their thousands separator (`,` or `_`, one kind), or `None` when malformed.
fn without_separators(int: &str) -> Option<String> {
    let Some(separator) = int.chars().find(|c| !c.is_ascii_digit()) else { return Some(int.to_string()) };
    if separator != ',' && separator != '_' {
        return None;
    }
    let groups: Vec<&str> = int.split(separator).collect();
    let digits = |g: &&str| g.bytes().all(|b| b.is_ascii_digit());
    let first_ok = groups.first().is_some_and(|g| (1..=3).contains(&g.len()));
    let rest_ok = groups.iter().skip(1).all(|g| g.len() == 3);
    (first_ok && rest_ok && groups.iter().all(digits)).then(|| groups.concat())
}

/// Canonical decimal text: 12 significant digits hide binary noise (`0.30000000000000004` prints `0.3`),
/// integers print without `.0`.
fn canonical(value: f64) -> String {
    let rounded: f64 = format!("{value:.11e}").parse().unwrap_or(value);
    format!("{}", if rounded == 0.0 { 0.0 } else { rounded })
}

/// Groups equivalent answers: clusters of indices, each cluster in ascending index order, clusters ordered by
/// their first index. (Greedy: an answer joins the first cluster whose first member is equivalent.)
pub fn group_equivalent(answers: &[Normalized], tolerance: f64) -> Vec<Vec<usize>> {
    let mut clusters: Vec<Vec<usize>> = Vec::new();
    for (i, answer) in answers.iter().enumerate() {
        match clusters.iter_mut().find(|c| equivalent(&answers[c[0]], answer, tolerance)) {
            Some(cluster) => cluster.push(i),
            None => clusters.push(vec![i]),
        }
    }
    clusters
}

/// Threshold clustering of unit vectors by cosine similarity (leader clustering in index order: an item joins
/// the cluster whose leader is most similar if that similarity >= threshold, else starts a new cluster).
/// Same ordering rules as group_equivalent.
pub fn cluster_by_similarity(vectors: &[Vec<f32>], threshold: f32) -> Vec<Vec<usize>> {
    let mut clusters: Vec<Vec<usize>> = Vec::new();
    for (i, vector) in vectors.iter().enumerate() {
        let mut best: Option<(usize, f32)> = None;
        for (c, cluster) in clusters.iter().enumerate() {
            let similarity = cosine(&vectors[cluster[0]], vector);
            // Strictly greater: on equal similarity the earlier cluster wins.
            if best.is_none_or(|(_, s)| similarity > s) {
                best = Some((c, similarity));
            }
        }
        match best {
            Some((c, similarity)) if similarity >= threshold => clusters[c].push(i),
            _ => clusters.push(vec![i]),
        }
    }
    clusters
}

/// The member of `cluster` with the largest summed cosine similarity to the other members (ties: lowest index).
///
/// # Panics
/// When `cluster` is empty or names an index outside `vectors`: clusters come from the functions above,
/// which never make such ones.
pub fn medoid(cluster: &[usize], vectors: &[Vec<f32>]) -> usize {
    let mut best: Option<(usize, f64)> = None;
    for &i in cluster {
        let total: f64 =
            cluster.iter().filter(|&&j| j != i).map(|&j| f64::from(cosine(&vectors[i], &vectors[j]))).sum();
        let better = match best {
            None => true,
            Some((b, best_total)) => total > best_total || (total == best_total && i < b),
        };
        if better {
            best = Some((i, total));
        }
    }
    best.map(|(i, _)| i).expect("medoid of an empty cluster")
}

/// Cosine similarity; 0 when either norm is 0 or the lengths differ (vectors from different models).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (mut dot, mut norm_a, mut norm_b) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        norm_a += x * x;
        norm_b += y * y;
    }
    let similarity = dot / (norm_a.sqrt() * norm_b.sqrt());
    if norm_a == 0.0 || norm_b == 0.0 || !similarity.is_finite() { 0.0 } else { similarity as f32 }
}

/// The winning cluster: the largest; on a tie of sizes, the tied clusters' indices, so callers decide.
/// Indices are into the clusters slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Winner {
    Clear(usize),
    Tie(Vec<usize>),
}

/// The largest cluster, or the tie; `None` when there are no clusters.
pub fn winner(clusters: &[Vec<usize>]) -> Option<Winner> {
    let largest = clusters.iter().map(Vec::len).max()?;
    let tied: Vec<usize> = clusters.iter().enumerate().filter(|(_, c)| c.len() == largest).map(|(i, _)| i).collect();
    Some(match tied[..] {
        [one] => Winner::Clear(one),
        _ => Winner::Tie(tied),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str, extractor: Extractor) -> Option<String> {
        extract(text, &[extractor])
    }

    fn same(a: &str, b: &str) -> bool {
        equivalent(&normalize(a), &normalize(b), DEFAULT_TOLERANCE)
    }

    #[test]
    fn spec_deserializes_one_extractor_or_a_chain() {
        let one: AnswerSpec = serde_json::from_str("{\"marker\": \"####\"}").unwrap();
        assert_eq!(one.extractors(), &[Extractor::Marker("####".into())]);
        let bare: AnswerSpec = serde_json::from_str(r#""last_number""#).unwrap();
        assert_eq!(bare, AnswerSpec::One(Extractor::LastNumber));
        let chain: AnswerSpec = serde_json::from_str(r#"[{"tag": "answer"}, "boxed", {"json": "final"}]"#).unwrap();
        assert_eq!(
            chain.extractors(),
            &[Extractor::Tag("answer".into()), Extractor::Boxed, Extractor::Json("final".into())]
        );
        assert!(serde_json::from_str::<AnswerSpec>(r#"{"regex": "x"}"#).is_err());
    }

    #[test]
    fn default_spec_is_tag_marker_boxed_last_number() {
        let spec = AnswerSpec::default();
        assert_eq!(spec.extractors().len(), 4);
        assert_eq!(spec.extractors()[0], Extractor::Tag("answer".into()));
        assert_eq!(spec.extractors()[3], Extractor::LastNumber);
    }

    #[test]
    fn tag_takes_last_complete_pair_case_insensitively() {
        let text = "<answer>draft</answer> more thought <ANSWER>\n 12 \n</Answer> done";
        assert_eq!(one(text, Extractor::Tag("answer".into())).as_deref(), Some("12"));
        assert_eq!(one("no tags here", Extractor::Tag("answer".into())), None);
    }

    #[test]
    fn tag_multi_line_content_is_kept() {
        let got = one("<answer>line one\nline two</answer>", Extractor::Tag("answer".into()));
        assert_eq!(got.as_deref(), Some("line one\nline two"));
    }

    #[test]
    fn unclosed_tag_is_not_an_answer() {
        assert_eq!(one("<answer>4", Extractor::Tag("answer".into())), None);
        // A closed draft followed by a truncated final answer must not count either.
        assert_eq!(one("<answer>3</answer> wait <answer>4", Extractor::Tag("answer".into())), None);
    }

    #[test]
    fn empty_content_is_not_an_answer() {
        assert_eq!(one("<answer>  </answer>", Extractor::Tag("answer".into())), None);
        assert_eq!(one("#### \nmore", Extractor::Marker("####".into())), None);
        assert_eq!(one(r"\boxed{ }", Extractor::Boxed), None);
        assert_eq!(one(r#"{"final_answer": ""}"#, Extractor::Json("final_answer".into())), None);
    }

    #[test]
    fn marker_takes_rest_of_line_after_last_occurrence() {
        let m = || Extractor::Marker("####".into());
        assert_eq!(one("so 3 + 4 = 7\n#### 7", m()).as_deref(), Some("7"));
        assert_eq!(one("#### 1\n#### 1,000 apples.\nbye", m()).as_deref(), Some("1,000 apples."));
        assert_eq!(one("no marker", m()), None);
    }

    #[test]
    fn boxed_handles_nested_braces_and_last_occurrence() {
        assert_eq!(one(r"\boxed{\frac{1}{2}}", Extractor::Boxed).as_deref(), Some(r"\frac{1}{2}"));
        assert_eq!(one(r"\boxed{1} then \fbox{2} then \boxed{3}", Extractor::Boxed).as_deref(), Some("3"));
        assert_eq!(one(r"\fbox{\{a\}}", Extractor::Boxed).as_deref(), Some(r"\{a\}"));
        assert_eq!(one("nothing boxed", Extractor::Boxed), None);
    }

    #[test]
    fn unbalanced_boxed_is_not_an_answer() {
        assert_eq!(one(r"\boxed{\frac{1}{2}", Extractor::Boxed), None);
        assert_eq!(one(r"\boxed{1} and \boxed{", Extractor::Boxed), None);
    }

    #[test]
    fn last_number_finds_signed_thousands_decimals_and_fractions() {
        let n = |t: &str| one(t, Extractor::LastNumber);
        assert_eq!(n("first 3 then 1,234,567 items").as_deref(), Some("1,234,567"));
        assert_eq!(n("The answer is 42.").as_deref(), Some("42"));
        assert_eq!(n("it is -3.5 degrees").as_deref(), Some("-3.5"));
        assert_eq!(n("it is −7").as_deref(), Some("−7"));
        assert_eq!(n("about 3/4 of them").as_deref(), Some("3/4"));
        assert_eq!(n("range 3-5").as_deref(), Some("5"));
        assert_eq!(n("no digits at all"), None);
    }

    #[test]
    fn json_reads_field_of_whole_object() {
        let j = |t: &str| one(t, Extractor::Json("final_answer".into()));
        assert_eq!(j(r#"{"final_answer": "Paris", "why": "capital"}"#).as_deref(), Some("Paris"));
        assert_eq!(j(r#"{"other": 1}"#), None);
        assert_eq!(j("not json"), None);
    }

    #[test]
    fn json_inside_fence_is_found() {
        let text = "Sure! {not json}\n```json\n{\"reasoning\": \"a } b\", \"final_answer\": 42}\n```\n";
        assert_eq!(one(text, Extractor::Json("final_answer".into())).as_deref(), Some("42"));
    }

    #[test]
    fn json_numbers_bools_null_and_nested_values() {
        let j = |t: &str| one(t, Extractor::Json("v".into()));
        assert_eq!(j(r#"{"v": 2.5}"#).as_deref(), Some("2.5"));
        assert_eq!(j(r#"{"v": true}"#).as_deref(), Some("true"));
        assert_eq!(j(r#"{"v": null}"#), None);
        assert_eq!(j(r#"{"v": {"a": [1, 2]}}"#).as_deref(), Some(r#"{"a":[1,2]}"#));
    }

    #[test]
    fn chain_falls_through_to_next_extractor() {
        let spec = AnswerSpec::default();
        assert_eq!(extract("so the total is 3 + 4 = 7\n#### 7", spec.extractors()).as_deref(), Some("7"));
        assert_eq!(extract(r"hence $\boxed{12}$ apples, not 13", spec.extractors()).as_deref(), Some("12"));
        assert_eq!(extract("I think 5, no wait, 6.", spec.extractors()).as_deref(), Some("6"));
        assert_eq!(extract("<answer>9</answer> #### 8", spec.extractors()).as_deref(), Some("9"));
        assert_eq!(extract("nothing", spec.extractors()), None);
    }

    #[test]
    fn thousands_separators_are_equivalent_to_plain() {
        assert!(same("1,000", "1000"));
        assert!(same("1,234,567", "1234567"));
        assert!(same("1\u{2009}000", "1000"));
        assert!(same("1_000", "1000"));
        assert!(same(r"1\,000", "1000"));
        assert_eq!(normalize("1,000").text, "1000");
    }

    #[test]
    fn one_comma_five_is_not_fifteen() {
        let n = normalize("1,5");
        assert_eq!(n.number, None);
        assert!(!same("1,5", "15"));
        assert!(!same("1,2345", "12345"));
    }

    #[test]
    fn latex_fractions_are_numbers() {
        assert!(same(r"\boxed{\frac{1}{2}}", "0.5"));
        let extracted = extract(r"so $\boxed{\frac{1}{2}}$", &[Extractor::Boxed]).unwrap();
        assert!(same(&extracted, "0.5"));
        assert!(same(r"$\frac{3}{4}$", "0.75"));
        assert!(same(r"\dfrac{-3}{4}", "-0.75"));
        assert!(same(r"-\tfrac12", "-0.5"));
        assert!(same("3/4", "0.75"));
        assert_eq!(normalize("1/0").number, None);
    }

    #[test]
    fn trailing_period_units_currency_and_percent_are_dropped() {
        assert!(same("42.", "42"));
        assert!(same("42 apples", "42"));
        assert!(same("3.5 km/h", "3.5"));
        assert!(same("12 dollars", "12"));
        assert!(same("$1,000.00", "1000"));
        assert!(same(r"\$5", "5"));
        assert!(same("€20", "20"));
        assert!(same("50%", "50"));
        assert!(same(r"50\%", "50"));
        assert!(same(r"90^\circ", "90"));
        assert!(!same("5 apples and 3 pears", "5"));
    }

    #[test]
    fn signs_and_number_forms() {
        assert!(same("−3", "-3"));
        assert!(same("+5", "5"));
        assert_eq!(normalize("-0").text, "0");
        assert!(same("1e3", "1000"));
        assert!(same("1 1/2", "1.5"));
        assert!(same("-$5", "-5"));
        assert_eq!(normalize("0.5").text, "0.5");
        assert_eq!(normalize("1000.0").text, "1000");
    }

    #[test]
    fn text_answers_compare_by_canonical_text() {
        assert!(same("Paris.", "paris"));
        assert!(same(r"\text{Paris}", "Paris"));
        assert!(same("  New   York ", "new york"));
        assert!(same("\"Paris\"", "(Paris)"));
        assert!(same("The Eiffel Tower", "eiffel tower"));
        assert!(!same("Paris", "London"));
        assert_eq!(normalize("Paris.").number, None);
    }

    #[test]
    fn float_noise_is_within_tolerance_but_distinct_numbers_are_not() {
        assert!(same("0.30000000000000004", "0.3"));
        assert_eq!(normalize("0.30000000000000004").text, "0.3");
        assert!(!same("1000", "1001"));
        assert!(equivalent(&normalize("1000"), &normalize("1001"), 1e-2));
    }

    #[test]
    fn answer_prefixes_are_dropped() {
        assert!(same("x = 5", "5"));
        assert!(same("The answer is 12", "12"));
        assert!(same("Final answer: 12.", "12"));
        assert!(same("answer: Paris", "paris"));
    }

    #[test]
    fn group_equivalent_orders_clusters_by_first_index() {
        let answers: Vec<Normalized> = ["7", "1,000", "seven", "7.0", "1000", "$7"].map(normalize).to_vec();
        assert_eq!(group_equivalent(&answers, DEFAULT_TOLERANCE), vec![vec![0, 3, 5], vec![1, 4], vec![2]]);
        assert!(group_equivalent(&[], DEFAULT_TOLERANCE).is_empty());
    }

    #[test]
    fn winner_is_clear_or_tie() {
        assert_eq!(winner(&[vec![0, 3, 5], vec![1, 4], vec![2]]), Some(Winner::Clear(0)));
        assert_eq!(winner(&[vec![0, 1, 2], vec![3, 4, 5], vec![6]]), Some(Winner::Tie(vec![0, 1])));
        assert_eq!(winner(&[vec![0], vec![1, 2]]), Some(Winner::Clear(1)));
        assert_eq!(winner(&[]), None);
    }

    #[test]
    fn cosine_of_known_vectors() {
        assert!((cosine(&[1.0, 0.0], &[1.0, 0.0]) - 1.0).abs() < 1e-6);
        assert!(cosine(&[1.0, 0.0], &[0.0, 1.0]).abs() < 1e-6);
        assert!((cosine(&[1.0, 0.0], &[-1.0, 0.0]) + 1.0).abs() < 1e-6);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        assert_eq!(cosine(&[1.0], &[1.0, 0.0]), 0.0);
    }

    #[test]
    fn cluster_by_similarity_uses_leaders_and_threshold() {
        let unit = |deg: f32| vec![deg.to_radians().cos(), deg.to_radians().sin()];
        // 0°, 10°, 90°, 5°, 100°, 180°: cos 10° ≈ 0.985, cos 80° ≈ 0.17.
        let vectors = vec![unit(0.0), unit(10.0), unit(90.0), unit(5.0), unit(100.0), unit(180.0)];
        assert_eq!(cluster_by_similarity(&vectors, 0.9), vec![vec![0, 1, 3], vec![2, 4], vec![5]]);
        // A threshold above every pair's similarity leaves singletons; a very low one merges all.
        assert_eq!(cluster_by_similarity(&vectors, 0.9999).len(), 6);
        assert_eq!(cluster_by_similarity(&vectors, -2.0), vec![vec![0, 1, 2, 3, 4, 5]]);
    }

    #[test]
    fn cluster_joins_most_similar_leader() {
        let unit = |deg: f32| vec![deg.to_radians().cos(), deg.to_radians().sin()];
        // 0° and 60° lead; 40° is closer to 60° though both pass the threshold.
        let vectors = vec![unit(0.0), unit(60.0), unit(40.0)];
        assert_eq!(cluster_by_similarity(&vectors, 0.6), vec![vec![0], vec![1, 2]]);
    }

    #[test]
    fn medoid_is_most_central_member_with_lowest_index_on_ties() {
        let unit = |deg: f32| vec![deg.to_radians().cos(), deg.to_radians().sin()];
        let vectors = vec![unit(0.0), unit(20.0), unit(10.0), unit(50.0)];
        assert_eq!(medoid(&[0, 1, 2], &vectors), 2);
        assert_eq!(medoid(&[0, 1], &vectors), 0);
        assert_eq!(medoid(&[3], &vectors), 3);
    }

    #[test]
    fn adversarial_input_never_panics() {
        let nines = "9".repeat(400);
        let deep = format!("{}{}", r"\boxed{".repeat(500), "}".repeat(500));
        let braces = "{".repeat(5000);
        let inputs = [
            "",
            "\\",
            "\\boxed{",
            "x \\boxed{",
            "}}}{{{",
            "\\frac{",
            "\\frac{1}",
            "\\frac",
            "\\frac\\",
            "<answer>",
            "</answer><answer>",
            "####",
            "$$",
            "{\"final_answer\": ",
            "- - - + −",
            "1,,,,",
            ".....",
            "é\\é ü\\",
            "\\boxed{é}ü",
            "答案是 ４２",
            "\u{2009}\u{202F}\u{00A0}",
            "((((",
            "\"",
            "1e999999",
            nines.as_str(),
            deep.as_str(),
            braces.as_str(),
        ];
        let all = [
            Extractor::Tag("answer".into()),
            Extractor::Marker("####".into()),
            Extractor::Boxed,
            Extractor::LastNumber,
            Extractor::Json("final_answer".into()),
        ];
        for input in inputs {
            for extractor in &all {
                if let Some(found) = one(input, extractor.clone()) {
                    assert!(normalize(&found).number.is_none_or(f64::is_finite));
                }
            }
            let n = normalize(input);
            assert!(n.number.is_none_or(f64::is_finite), "{input:?}");
        }
        assert_eq!(normalize(&nines).number, None);
    }

    #[test]
    fn full_width_digits_are_ascii_numbers() {
        let found = one("答案是 ４２", Extractor::LastNumber).unwrap();
        assert_eq!(found, "４２");
        assert_eq!(normalize(&found).number, Some(42.0));
        assert!(same("４２", "42"));
    }
}
