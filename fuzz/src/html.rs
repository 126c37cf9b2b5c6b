//! HTML extraction (`wit_crawler::html::extract`): generated trees of the elements wit reads
//! (`img`, `srcset`, `<picture>`, `<base>`, `<title>`, `<meta>`), mixed with the shapes that make
//! parsers slow (deep nesting closed by stray end tags) and long attribute values.

use crate::{run, text};
use proptest::prelude::*;
use url::Url;

const TAGS: &[&str] = &[
    "img", "title", "base", "meta", "a", "div", "p", "picture", "source", "table", "td", "svg",
    "script", "template", "select", "option", "noscript", "iframe", "b", "i", "form", "li",
];
const ATTRS: &[&str] = &[
    "src",
    "srcset",
    "data-src",
    "data-original",
    "alt",
    "href",
    "name",
    "content",
    "width",
    "height",
    "charset",
    "http-equiv",
    "sizes",
];

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Element(&'static str, Vec<(&'static str, String)>, Vec<Node>),
    /// An end tag with no start tag.
    StrayEnd(&'static str),
    /// `n` unclosed `open` tags, then `m` stray `</close>` tags.
    Deep(&'static str, usize, &'static str, usize),
    Bytes(Vec<u8>),
}

fn node() -> impl Strategy<Value = Node> {
    let tag = proptest::sample::select(TAGS);
    let leaf = prop_oneof![
        4 => text().prop_map(Node::Text),
        1 => tag.clone().prop_map(Node::StrayEnd),
        1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Node::Bytes),
    ];
    leaf.prop_recursive(6, 256, 12, move |inner| {
        let attr = (proptest::sample::select(ATTRS), text());
        (
            proptest::sample::select(TAGS),
            proptest::collection::vec(attr, 0..4),
            proptest::collection::vec(inner, 0..12),
        )
            .prop_map(|(t, a, c)| Node::Element(t, a, c))
    })
}

fn render(node: &Node, out: &mut Vec<u8>) {
    match node {
        Node::Text(s) => out.extend_from_slice(s.as_bytes()),
        Node::Element(tag, attrs, children) => {
            out.extend_from_slice(format!("<{tag}").as_bytes());
            for (name, value) in attrs {
                out.extend_from_slice(format!(" {name}=\"{value}\"").as_bytes());
            }
            out.push(b'>');
            for c in children {
                render(c, out);
            }
            out.extend_from_slice(format!("</{tag}>").as_bytes());
        }
        Node::StrayEnd(tag) => out.extend_from_slice(format!("</{tag}>").as_bytes()),
        Node::Deep(open, n, close, m) => {
            out.extend_from_slice(format!("<{open}>").repeat(*n).as_bytes());
            out.extend_from_slice(format!("</{close}>").repeat(*m).as_bytes());
        }
        Node::Bytes(b) => out.extend_from_slice(b),
    }
}

/// A page: a tree under `<html>`, served with or without a charset.
fn page() -> impl Strategy<Value = (Vec<u8>, Option<&'static str>)> {
    let charset = proptest::option::of(proptest::sample::select(
        &[
            "text/html; charset=utf-8",
            "text/html; charset=windows-1252",
            "text/html; charset=shift_jis",
            "text/html",
        ][..],
    ));
    let tag = || proptest::sample::select(TAGS);
    // One slow shape per page at most, so a page stays a few hundred KB.
    let deep = proptest::option::weighted(
        0.3,
        (tag(), 1usize..20_000, tag(), 0usize..20_000)
            .prop_map(|(a, n, b, m)| Node::Deep(a, n, b, m)),
    );
    (proptest::collection::vec(node(), 0..8), deep, charset).prop_map(|(nodes, deep, ct)| {
        let mut out = b"<!doctype html><html><head>".to_vec();
        for n in nodes.iter().chain(&deep) {
            render(n, &mut out);
        }
        (out, ct)
    })
}

/// Extraction never panics, and what a page yields is bounded by what it holds: no more pairs
/// than `<img` tags, and no string of the output amplified past a small multiple of the page.
pub(crate) fn check(runner: &mut proptest::test_runner::TestRunner) -> Result<(), String> {
    let page_url = Url::parse("http://127.0.0.1/dir/page.html").unwrap();
    run(runner, page(), |(bytes, ct)| {
        let page = wit_crawler::html::extract(&bytes, ct, &page_url);
        let lower = bytes.to_ascii_lowercase();
        let imgs = lower.windows(4).filter(|w| w == b"<img").count();
        prop_assert!(
            page.images.len() <= imgs,
            "{} pairs from {imgs} <img> tags",
            page.images.len()
        );
        let out: usize = page
            .images
            .iter()
            .map(|p| p.url.as_str().len() + p.alt.len())
            .chain(page.links.iter().map(|u| u.as_str().len()))
            .chain(page.title.iter().map(String::len))
            .sum();
        prop_assert!(
            out <= 8 * bytes.len() + (1 << 20),
            "{out} output bytes from a {}-byte page",
            bytes.len()
        );
        Ok(())
    })
}
