//! A page's HTML as markdown (the one-call markdown, the MCP server's `markdown` tool).
//!
//! The HTML comes from a browser, which may be a tenant's own (a bring-your-own session
//! answers whatever it likes), so it is checked before the converter sees it: its length,
//! and how deeply its elements nest, since the converter walks the tree recursively and a
//! stack overflow would end the whole broker, not one request. The conversion runs on a
//! thread of its own with a large stack, a few at a time, so that a megabyte page does not
//! hold one of the async runtime's workers (and every relay on it) while it is converted.

use std::sync::LazyLock;

use tokio::sync::Semaphore;

/// Deepest nesting converted. Chrome's HTML parser nests no deeper than 512; a page's script
/// can build deeper, and what it serializes is refused.
pub(crate) const MAX_DEPTH: usize = 512;

/// The converting thread's stack: many times what `MAX_DEPTH` levels of the converter's
/// recursion take, for a nesting the depth count reads lower than the parser builds it.
const STACK: usize = 64 * 1024 * 1024;

/// Conversions at once: each holds its page's parsed tree.
static CONVERSIONS: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(2));

/// Elements with no content and no end tag.
const VOID: [&str; 14] = [
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track", "wbr",
];
/// Elements whose content is text, never tags.
const RAW_TEXT: [&str; 8] = [
    "script", "style", "textarea", "title", "xmp", "iframe", "noembed", "noframes",
];

/// `html` (at most `max_len` bytes) as markdown, with `title` as its heading when the text
/// starts with none. The error says why it could not be converted.
pub(crate) async fn from_html(html: String, title: &str, max_len: usize) -> Result<String, String> {
    if html.len() > max_len {
        return Err(format!("the page's main text is over {max_len} characters of HTML"));
    }
    let depth = nesting_depth(&html);
    if depth > MAX_DEPTH {
        return Err(format!(
            "the page's elements nest {depth} deep, past the {MAX_DEPTH} that are converted"
        ));
    }
    let _permit = CONVERSIONS
        .acquire()
        .await
        .map_err(|_| "the broker is stopping".to_owned())?;
    let (done, converted) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("markdown".into())
        .stack_size(STACK)
        .spawn(move || {
            let markdown = htmd::HtmlToMarkdown::builder()
                .skip_tags(vec!["script", "style", "head"])
                .build()
                .convert(&html);
            let _ = done.send(markdown);
        })
        .map_err(|e| format!("the page's HTML could not be converted: {e}"))?;
    let mut markdown = converted
        .await
        .map_err(|_| "the page's HTML could not be converted".to_owned())?
        .map_err(|e| format!("the page's HTML could not be converted: {e}"))?;
    let title = title.trim();
    if !title.is_empty() && !markdown.trim_start().starts_with("# ") {
        markdown = format!("# {title}\n\n{markdown}");
    }
    Ok(markdown)
}

/// How deeply the elements of `html` nest, read from its tags without building a tree, and
/// never lower than a parser would build it from them: every start tag of a non-void
/// element opens one (`<div/>` too, as in HTML), an end tag closes only an element it
/// names that is open (a stray one closes nothing), and raw text (a script's) holds no tags.
pub(crate) fn nesting_depth(html: &str) -> usize {
    let bytes = html.as_bytes();
    let mut open: Vec<&str> = Vec::new();
    let mut deepest = 0;
    let mut at = 0;
    while let Some(lt) = bytes[at..].iter().position(|&b| b == b'<') {
        at += lt + 1;
        let rest = &html[at..];
        if rest.starts_with("!--") {
            at += rest.find("-->").map_or(rest.len(), |end| end + 3);
            continue;
        }
        let closing = rest.starts_with('/');
        let name_start = at + usize::from(closing);
        let name_len = html[name_start..]
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b':')
            .count();
        if name_len == 0 || !html.as_bytes()[name_start].is_ascii_alphabetic() {
            // `<!doctype>`, `<?…>`, a `<` in text: no element.
            continue;
        }
        let name = &html[name_start..name_start + name_len];
        at = name_start + name_len;
        at += tag_end(&bytes[at..]);
        if closing {
            if let Some(i) = open.iter().rposition(|o| o.eq_ignore_ascii_case(name)) {
                open.truncate(i);
            }
            continue;
        }
        if VOID.iter().any(|v| v.eq_ignore_ascii_case(name)) {
            continue;
        }
        open.push(name);
        deepest = deepest.max(open.len());
        if RAW_TEXT.iter().any(|r| r.eq_ignore_ascii_case(name)) {
            at += raw_text_len(&html[at..], name);
        }
    }
    deepest
}

/// Bytes to the end of a tag's attributes (past its `>`), quoted values skipped.
fn tag_end(bytes: &[u8]) -> usize {
    let mut quote = None;
    for (i, &b) in bytes.iter().enumerate() {
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'"' || b == b'\'' => quote = Some(b),
            None if b == b'>' => return i + 1,
            None => {}
        }
    }
    bytes.len()
}

/// Bytes of raw text before the end tag of `name` (case-insensitive), or all of it.
fn raw_text_len(text: &str, name: &str) -> usize {
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(lt) = bytes[at..].windows(2).position(|w| w == b"</") {
        let start = at + lt;
        let after = &bytes[start + 2..];
        if after.len() >= name.len() && after[..name.len()].eq_ignore_ascii_case(name.as_bytes()) {
            return start;
        }
        at = start + 2;
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_read_as_a_parser_would_build_it_or_deeper() {
        assert_eq!(nesting_depth("<p>text</p><p>more</p>"), 1);
        assert_eq!(
            nesting_depth("<html><body><div><span>a</span><br><img src=x></div></body></html>"),
            4
        );
        // `<div/>` opens a div in HTML; a stray end tag closes nothing.
        assert_eq!(nesting_depth(&"<div/>".repeat(600)), 600);
        assert_eq!(nesting_depth(&"<div></span>".repeat(600)), 600);
        // An end tag closes what it names and everything opened inside it.
        assert_eq!(
            nesting_depth(&format!("{}</div>{}", "<div><b>".repeat(3), "<i>".repeat(3))),
            7
        );
        // Tags in raw text, attribute values and comments are no elements.
        assert_eq!(
            nesting_depth(r#"<script>"<div><div><div>"</script><a title="<b><b>">x</a><!-- <i><i> -->"#),
            1
        );
        assert_eq!(nesting_depth("<!doctype html>< 1 <2 a<b"), 1);
        // Cut anywhere, it never panics.
        let page = r#"<div a="x>"><script>if (a</b) {}</script><!-- c --><p>é</p></div>"#;
        for cut in (0..=page.len()).filter(|&i| page.is_char_boundary(i)) {
            nesting_depth(&page[..cut]);
        }
    }

    #[tokio::test]
    async fn a_deep_or_long_page_is_refused_and_a_plain_one_converted() {
        let deep = "<div>".repeat(200_000);
        let refused = from_html(deep, "", 16 << 20).await.unwrap_err();
        assert!(refused.contains("nest 200000 deep"), "{refused}");
        let refused = from_html("<p>x</p>".repeat(10), "", 16).await.unwrap_err();
        assert!(refused.contains("over 16 characters"), "{refused}");
        let converted = from_html("<h2>Hello</h2><p>a <b>world</b></p>".into(), "Title", 1 << 20)
            .await
            .unwrap();
        assert_eq!(converted, "# Title\n\n## Hello\n\na **world**");
        // The deepest nesting let through converts on its thread's stack.
        let deepest = format!("{}x", "<div>".repeat(MAX_DEPTH));
        assert_eq!(from_html(deepest, "", 1 << 20).await.unwrap(), "x");
    }
}
