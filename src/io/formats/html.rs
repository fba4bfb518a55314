//! HTML: the visible text of the page as one document, with paragraph breaks kept so chunking can split on
//! them. Script, style and other non-content elements are dropped; the `<title>` goes to `meta["title"]`.

use std::path::Path;

use scraper::{Html, Node};

use super::whole_file::{decode_text, one_document, read_bytes};
use super::{Document, DocumentStream, FormatError, Limits};

const FORMAT: &str = "html";

/// Elements whose content is never visible text.
const HIDDEN_ELEMENTS: &[&str] =
    &["script", "style", "noscript", "template", "head", "svg", "iframe", "object", "embed", "canvas"];

/// Elements that stand as paragraphs of their own: a blank line before and after.
const PARAGRAPH_ELEMENTS: &[&str] = &[
    "p",
    "div",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "section",
    "article",
    "blockquote",
    "pre",
    "ul",
    "ol",
    "dl",
    "table",
    "header",
    "footer",
    "nav",
    "aside",
    "main",
    "figure",
    "figcaption",
    "form",
    "fieldset",
    "address",
    "details",
    "summary",
    "hr",
    "center",
    "hgroup",
    "menu",
    "caption",
];

/// Elements that start a new line without starting a paragraph.
const LINE_ELEMENTS: &[&str] = &["li", "tr", "dt", "dd", "option", "legend"];

/// Elements whose neighbours would otherwise run together (table cells).
const CELL_ELEMENTS: &[&str] = &["td", "th"];

pub(super) fn open(path: &Path, limits: &Limits) -> Result<DocumentStream, FormatError> {
    let source = decode_text(read_bytes(path, FORMAT, limits.max_file_bytes)?, FORMAT)?;
    let page = visible_text(&source);
    if page.text.trim().is_empty() {
        return Err(FormatError::Empty { format: FORMAT });
    }
    let mut document = Document { text: page.text, ..Document::default() };
    if let Some(title) = page.title {
        document.meta.insert("title".to_string(), title.into());
    }
    Ok(one_document(document))
}

/// What a reader sees of a page.
struct VisibleText {
    text: String,
    title: Option<String>,
}

fn visible_text(source: &str) -> VisibleText {
    let html = Html::parse_document(source);
    let mut walker = VisibleTextWalker::default();
    // An explicit depth-first walk (not recursion), so deeply nested markup cannot overflow the stack.
    let mut node = html.tree.root();
    'walk: loop {
        walker.open(node.value());
        if let Some(child) = node.first_child() {
            node = child;
            continue;
        }
        loop {
            walker.close(node.value());
            if let Some(sibling) = node.next_sibling() {
                node = sibling;
                continue 'walk;
            }
            match node.parent() {
                Some(parent) => node = parent,
                None => break 'walk,
            }
        }
    }
    VisibleText { text: walker.text.finish(), title: walker.title }
}

/// Turns the open and close events of a depth-first walk into visible text and a title.
#[derive(Default)]
struct VisibleTextWalker {
    text: TextBuilder,
    /// Set while inside the page `<title>`.
    title_text: Option<TextBuilder>,
    title: Option<String>,
    /// How many hidden elements, `<pre>` elements and `<svg>` elements enclose the current node.
    hidden_depth: usize,
    pre_depth: usize,
    svg_depth: usize,
}

impl VisibleTextWalker {
    fn open(&mut self, node: &Node) {
        match node {
            Node::Element(element) => {
                let name = element.name();
                if name == "svg" {
                    self.svg_depth += 1;
                }
                // `<title>` inside inline SVG is a tooltip, not the page title.
                if name == "title" && self.svg_depth == 0 && self.title.is_none() {
                    self.title_text = Some(TextBuilder::default());
                }
                if is_hidden(element) {
                    self.hidden_depth += 1;
                } else if self.hidden_depth == 0 {
                    self.text.element_edge(name, true);
                    if name == "pre" {
                        self.pre_depth += 1;
                    }
                }
            }
            Node::Text(part) => {
                if let Some(title_text) = self.title_text.as_mut() {
                    title_text.push_collapsed(part);
                }
                if self.hidden_depth == 0 {
                    if self.pre_depth > 0 {
                        self.text.push_preformatted(part);
                    } else {
                        self.text.push_collapsed(part);
                    }
                }
            }
            _ => {}
        }
    }

    fn close(&mut self, node: &Node) {
        let Node::Element(element) = node else { return };
        let name = element.name();
        if name == "title"
            && let Some(title_text) = self.title_text.take()
        {
            self.title = Some(title_text.finish()).filter(|title| !title.is_empty());
        }
        if name == "svg" {
            self.svg_depth = self.svg_depth.saturating_sub(1);
        }
        if is_hidden(element) {
            self.hidden_depth = self.hidden_depth.saturating_sub(1);
        } else if self.hidden_depth == 0 {
            self.text.element_edge(name, false);
            if name == "pre" {
                self.pre_depth = self.pre_depth.saturating_sub(1);
            }
        }
    }
}

fn is_hidden(element: &scraper::node::Element) -> bool {
    HIDDEN_ELEMENTS.contains(&element.name()) || element.attr("hidden").is_some()
}

/// The separator owed before the next visible character; a stronger one absorbs a weaker one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
enum Separator {
    #[default]
    None,
    Space,
    Line,
    Paragraph,
}

/// Builds text with whitespace collapsed and separators placed only between visible characters.
#[derive(Default)]
struct TextBuilder {
    out: String,
    owed: Separator,
}

impl TextBuilder {
    fn owe(&mut self, separator: Separator) {
        self.owed = self.owed.max(separator);
    }

    /// Block elements give the same separator where they open and where they close; `<br>` only opens.
    fn element_edge(&mut self, element: &str, opening: bool) {
        if element == "br" {
            if !opening {
                return;
            }
            // Two `<br>` in a row are how many pages mark a paragraph.
            let separator = if self.owed >= Separator::Line { Separator::Paragraph } else { Separator::Line };
            self.owe(separator);
        } else if PARAGRAPH_ELEMENTS.contains(&element) {
            self.owe(Separator::Paragraph);
        } else if LINE_ELEMENTS.contains(&element) {
            self.owe(Separator::Line);
        } else if CELL_ELEMENTS.contains(&element) {
            self.owe(Separator::Space);
        }
    }

    fn push_collapsed(&mut self, text: &str) {
        for character in text.chars() {
            if character.is_whitespace() {
                self.owe(Separator::Space);
            } else {
                self.pay_separator();
                self.out.push(character);
            }
        }
    }

    fn push_preformatted(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        self.pay_separator();
        self.out.push_str(text);
    }

    fn pay_separator(&mut self) {
        let owed = std::mem::take(&mut self.owed);
        if self.out.is_empty() {
            return;
        }
        if owed >= Separator::Line {
            // Preformatted text may already end in whitespace; the separator replaces it.
            self.out.truncate(self.out.trim_end().len());
        }
        match owed {
            Separator::None => {}
            Separator::Space => self.out.push(' '),
            Separator::Line => self.out.push('\n'),
            Separator::Paragraph => self.out.push_str("\n\n"),
        }
    }

    fn finish(self) -> String {
        self.out.trim_end().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::formats::{FieldMapping, Format, open as open_file};

    fn read_html(source: &str) -> Result<Vec<Document>, FormatError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("page.html");
        std::fs::write(&path, source).unwrap();
        let stream = open_file(&path, Format::Html, &FieldMapping::default(), &Limits::default())?;
        Ok(stream.map(|document| document.unwrap()).collect())
    }

    #[test]
    fn visible_text_skips_scripts_and_keeps_the_title_in_meta() {
        let documents = read_html(
            "<html><head><title> Volcanoes \n of the world</title><style>p { color: red }</style>\
             <script>var hidden = 1;</script></head><body><p>Volcanoes form where magma reaches the surface.</p>\
             <noscript>Enable scripts</noscript><template><p>template text</p></template></body></html>",
        )
        .unwrap();
        assert_eq!(documents.len(), 1);
        assert_eq!(documents[0].text, "Volcanoes form where magma reaches the surface.");
        assert_eq!(documents[0].meta["title"], "Volcanoes of the world");
    }

    #[test]
    fn blocks_become_paragraphs_and_lines() {
        let documents = read_html(
            "<body><h1>Rivers</h1><p>Rivers   carry\n  sediment.</p><div><div>Deltas form<br>at mouths.</div></div>\
             <ul><li>Nile</li><li>Amazon</li></ul><p>One<br><br>Two</p>\
             <table><tr><td>a</td><td>b</td></tr><tr><td>c</td><td>d</td></tr></table></body>",
        )
        .unwrap();
        assert_eq!(
            documents[0].text,
            "Rivers\n\nRivers carry sediment.\n\nDeltas form\nat mouths.\n\nNile\nAmazon\n\nOne\n\nTwo\n\na b\nc d"
        );
        assert!(!documents[0].meta.contains_key("title"));
    }

    #[test]
    fn inline_elements_do_not_break_words_and_entities_are_decoded() {
        let documents = read_html("<p>Salt &amp; <b>fresh</b>water&nbsp;mix <i>in</i> estuaries&#33;</p>").unwrap();
        assert_eq!(documents[0].text, "Salt & freshwater mix in estuaries!");
    }

    #[test]
    fn preformatted_text_keeps_its_whitespace() {
        let documents = read_html("<p>Code:</p><pre>fn main() {\n    run();\n}</pre><p>After.</p>").unwrap();
        assert_eq!(documents[0].text, "Code:\n\nfn main() {\n    run();\n}\n\nAfter.");
    }

    #[test]
    fn hidden_elements_and_svg_titles_are_not_text() {
        let documents =
            read_html("<p>Shown.</p><p hidden>Not shown.</p><svg><title>icon</title><text>svg</text></svg>").unwrap();
        assert_eq!(documents[0].text, "Shown.");
        assert!(!documents[0].meta.contains_key("title"));
    }

    #[test]
    fn a_page_with_only_markup_is_empty() {
        let error =
            read_html("<html><head><title>Only a title</title></head><body> <div></div> </body></html>").unwrap_err();
        assert!(matches!(error, FormatError::Empty { format: "html" }), "{error:?}");
    }

    #[test]
    fn invalid_utf8_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latin1.html");
        std::fs::write(&path, b"<p>caf\xE9</p>").unwrap();
        let error = open_file(&path, Format::Html, &FieldMapping::default(), &Limits::default()).err().unwrap();
        assert!(matches!(error, FormatError::InvalidUtf8 { offset: 6 }), "{error:?}");
    }

    #[test]
    fn binary_and_oversized_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("binary.html");
        crate::testkit::write_binary_txt(&binary).unwrap();
        let error = open_file(&binary, Format::Html, &FieldMapping::default(), &Limits::default()).err().unwrap();
        assert!(matches!(error, FormatError::Binary { format: "html" }), "{error:?}");

        let big = dir.path().join("big.html");
        std::fs::write(&big, "<p>0123456789</p>").unwrap();
        let limits = Limits { max_file_bytes: 10, ..Limits::default() };
        let error = open_file(&big, Format::Html, &FieldMapping::default(), &limits).err().unwrap();
        assert!(matches!(error, FormatError::TooLarge { format: "html", size: 17, limit: 10 }), "{error:?}");
    }
}
