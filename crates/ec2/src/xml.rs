//! EC2's response documents: elements in the 2016-11-15 namespace, lists
//! as `<xSet><item>…</item></xSet>`, and errors as `<Response><Errors>`.
//! Text is escaped by quick-xml.

/// The namespace every response carries.
pub const NAMESPACE: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

/// An element with its children, or a text element.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    /// `<name>children</name>`.
    El(String, Vec<Node>),
    /// `<name>text</name>`.
    Text(String, String),
}

/// An element.
pub fn el(name: &str, children: Vec<Node>) -> Node {
    Node::El(name.into(), children)
}

/// A text element.
pub fn text(name: &str, value: impl ToString) -> Node {
    Node::Text(name.into(), value.to_string())
}

/// A text element, or nothing.
pub fn opt(name: &str, value: Option<impl ToString>) -> Vec<Node> {
    value.map(|v| text(name, v)).into_iter().collect()
}

/// A list: `<name><item>…</item>…</name>`.
pub fn set(name: &str, items: impl IntoIterator<Item = Vec<Node>>) -> Node {
    el(name, items.into_iter().map(|i| el("item", i)).collect())
}

/// A list of strings: `<name><item>a</item>…</name>`.
pub fn strings(name: &str, values: &[&str]) -> Node {
    el(name, values.iter().map(|v| text("item", v)).collect())
}

/// Text with the characters XML 1.0 cannot carry, escaped or not (control
/// characters other than tab and line ends, U+FFFE, U+FFFF), replaced by
/// U+FFFD: a message may quote a guest's console, colour codes and all,
/// and one ESC would make the whole document unreadable to a client.
fn xml_chars(text: &str) -> std::borrow::Cow<'_, str> {
    let allowed = |c: char| {
        matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
    };
    if text.chars().all(allowed) {
        return text.into();
    }
    text.chars()
        .map(|c| if allowed(c) { c } else { '\u{FFFD}' })
        .collect::<String>()
        .into()
}

fn render(n: &Node, out: &mut String) {
    match n {
        Node::El(name, children) => {
            out.push('<');
            out.push_str(name);
            out.push('>');
            for c in children {
                render(c, out);
            }
            out.push_str("</");
            out.push_str(name);
            out.push('>');
        }
        Node::Text(name, value) => {
            out.push('<');
            out.push_str(name);
            out.push('>');
            out.push_str(&quick_xml::escape::escape(xml_chars(value).as_ref()));
            out.push_str("</");
            out.push_str(name);
            out.push('>');
        }
    }
}

/// `<ActionResponse xmlns=…><requestId>…</requestId>body</ActionResponse>`.
pub fn response(action: &str, request_id: &str, body: Vec<Node>) -> String {
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{action}Response xmlns=\"{NAMESPACE}\">"
    );
    render(&text("requestId", request_id), &mut out);
    for n in &body {
        render(n, &mut out);
    }
    out.push_str(&format!("</{action}Response>"));
    out
}

/// EC2's error document.
pub fn error(code: &str, message: &str, request_id: &str) -> String {
    let mut out = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n".to_string();
    render(
        &el(
            "Response",
            vec![
                el(
                    "Errors",
                    vec![el(
                        "Error",
                        vec![text("Code", code), text("Message", message)],
                    )],
                ),
                text("RequestID", request_id),
            ],
        ),
        &mut out,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_escaped_and_namespaced() {
        let doc = response(
            "DescribeTags",
            "r-1",
            vec![set("tagSet", [vec![text("key", "a<b&c")]])],
        );
        assert_eq!(
            doc,
            format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeTagsResponse xmlns=\"{NAMESPACE}\"><requestId>r-1</requestId><tagSet><item><key>a&lt;b&amp;c</key></item></tagSet></DescribeTagsResponse>")
        );
        assert!(error("AuthFailure", "x > y", "r-2")
            .ends_with("<Response><Errors><Error><Code>AuthFailure</Code><Message>x &gt; y</Message></Error></Errors><RequestID>r-2</RequestID></Response>"));
    }

    #[test]
    fn characters_xml_cannot_carry_are_replaced() {
        let doc = error(
            "InternalError",
            "[\u{1b}[0;32m  OK  \u{1b}[0m]\tdone\r\n",
            "r-3",
        );
        assert!(
            doc.contains("<Message>[\u{FFFD}[0;32m  OK  \u{FFFD}[0m]\tdone\r\n</Message>"),
            "{doc}"
        );
        assert!(!doc.contains('\u{1b}'), "{doc}");
    }
}
