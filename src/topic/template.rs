//! Topic templates: the topic a route writes, built from what its read filter
//! matched.
//!
//! With the filter `site/+/sensor/#` and the template `edge/{link}/{1}/{#}`,
//! `site/3/sensor/t/1` becomes `edge/e1/3/t/1` on link `e1`: `{1}`, `{2}`, ...
//! are the topic's levels at the filter's `+` levels, in order; `{#}` is what
//! its `#` matched (zero or more levels); `{link}` is the link's name. Any other
//! `{`...`}` is an error, so a typo never becomes a literal topic level.
//!
//! Rules, checked when the config is read:
//! - a template has no wildcards (`+`, `#`) and no NUL: it makes topic names;
//! - `{#}` fills the whole last level, and only when the filter ends in `#`;
//! - `{n}` needs at least n `+` levels in the filter; it may share a level
//!   with text (`dev-{1}`), as `{link}` may.
//!
//! When `#` matched zero levels (`a/#` matches `a`), `{#}` adds nothing, not
//! even its `/`: `x/{#}` writes `x`. A `+` that matched an empty level gives an
//! empty capture: `a//b` read by `a/+/b` through `x/{1}/y` writes `x//y`.
//!
//! [`Template::written_filter`] is the filter every written topic matches
//! (each level holding a capture becomes `+`, `{#}` becomes `#`, `{link}` the
//! name), which the bridge-loop check compares with the other direction's
//! read filter. A topic that would fall outside it (a capture starting with
//! `$` moved to the first level) or would not be a valid topic (empty, too
//! long) is not written, as with prefix mappings.

use super::{matches, validate_filter, validate_topic};

/// One piece of a template level.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// The topic level at the filter's n-th `+` (0-based here).
    Capture(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Template {
    /// The levels before `{#}`, each a sequence of pieces.
    levels: Vec<Vec<Piece>>,
    /// Whether the template ends in `{#}`.
    tail: bool,
    written_filter: String,
}

/// Whether `text`, on the side a route writes, is a template rather than a
/// filter for a prefix mapping: it has a `{` or `}`.
pub fn is_template(text: &str) -> bool {
    text.contains(['{', '}'])
}

/// The first template placeholder (`{1}`, `{#}`, `{link}`) in `text`, if any:
/// a read filter holding one was meant to be the other side of its route.
pub fn find_placeholder(text: &str) -> Option<&str> {
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after.find('}')?;
        let name = &after[..close];
        if name == "#" || name == "link" || capture_number(name).is_some() {
            return Some(&rest[open..open + close + 2]);
        }
        rest = after;
    }
    None
}

/// `{n}`'s n when `name` is a capture number (1, 2, ..., no leading zero).
fn capture_number(name: &str) -> Option<usize> {
    if name.is_empty() || name.starts_with('0') || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

const PLACEHOLDERS: &str = "use {1}, {2}, ... for the filter's `+` levels, {#} for its `#` tail and {link} for the \
                            link's name";

impl Template {
    /// Parses `template` for routes that read with `filter` (a valid filter)
    /// on link `link`; the error says what is wrong, without the key name.
    pub(super) fn parse(filter: &str, template: &str, link: &str) -> Result<Template, String> {
        if template.contains('\0') {
            return Err(format!("a template cannot contain the NUL character: {template:?}"));
        }
        let filter_levels: Vec<&str> = filter.split('/').collect();
        let plus_count = filter_levels.iter().filter(|level| **level == "+").count();
        let filter_has_hash = filter_levels.last() == Some(&"#");
        let template_levels: Vec<&str> = template.split('/').collect();
        let mut levels = Vec::new();
        let mut tail = false;
        for (index, level) in template_levels.iter().enumerate() {
            if *level == "{#}" {
                if index + 1 != template_levels.len() {
                    return Err(format!("{{#}} must be the last level of the template: {template:?}"));
                }
                if !filter_has_hash {
                    return Err(format!(
                        "template {template:?} uses {{#}}, but the filter {filter:?} has no `#` level"
                    ));
                }
                tail = true;
            } else {
                levels.push(parse_level(level, template, filter, plus_count, link)?);
            }
        }
        let written_filter = levels
            .iter()
            .map(|pieces| match pieces_text(pieces) {
                Some(text) => text,
                None => "+".to_owned(),
            })
            .chain(tail.then(|| "#".to_owned()))
            .collect::<Vec<String>>()
            .join("/");
        validate_filter(&written_filter).map_err(|error| format!("template {template:?}: {error}"))?;
        Ok(Template {
            levels,
            tail,
            written_filter,
        })
    }

    pub(super) fn written_filter(&self) -> &str {
        &self.written_filter
    }

    /// The topic written for `topic`, which the caller checked `filter` matches.
    pub(super) fn render(&self, filter: &str, topic: &str) -> Option<String> {
        debug_assert!(matches(filter, topic));
        let mut captures = Vec::new();
        let mut topic_levels = topic.split('/');
        let mut hash_tail = Vec::new();
        for filter_level in filter.split('/') {
            match filter_level {
                "#" => {
                    hash_tail.extend(topic_levels.by_ref());
                    break;
                }
                "+" => captures.push(topic_levels.next()?),
                _ => {
                    topic_levels.next()?;
                }
            }
        }
        let mut out: Vec<String> = self
            .levels
            .iter()
            .map(|pieces| {
                pieces
                    .iter()
                    .map(|piece| match piece {
                        Piece::Text(text) => text.as_str(),
                        Piece::Capture(index) => captures.get(*index).copied().unwrap_or(""),
                    })
                    .collect::<String>()
            })
            .collect();
        if self.tail {
            out.extend(hash_tail.into_iter().map(str::to_owned));
        }
        let mapped = out.join("/");
        (validate_topic(&mapped).is_ok() && matches(&self.written_filter, &mapped)).then_some(mapped)
    }
}

/// The level's text when it holds no capture.
fn pieces_text(pieces: &[Piece]) -> Option<String> {
    pieces
        .iter()
        .map(|piece| match piece {
            Piece::Text(text) => Some(text.as_str()),
            Piece::Capture(_) => None,
        })
        .collect()
}

fn parse_level(level: &str, template: &str, filter: &str, plus_count: usize, link: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = level;
    while !rest.is_empty() {
        let next_brace = rest.find(['{', '}']).unwrap_or(rest.len());
        let text = &rest[..next_brace];
        if text.contains(['+', '#']) {
            return Err(format!(
                "a template makes topic names, which cannot contain the wildcards `+` or `#`: {template:?} \
                 (write {{1}} for the filter's first `+`, {{#}} for its `#`)"
            ));
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text.to_owned()));
        }
        rest = &rest[next_brace..];
        if rest.is_empty() {
            break;
        }
        if rest.starts_with('}') {
            return Err(format!(
                "template {template:?} has a `}}` without its `{{`; {PLACEHOLDERS}"
            ));
        }
        let Some(close) = rest.find('}') else {
            return Err(format!(
                "template {template:?} has a `{{` without its `}}`; {PLACEHOLDERS}"
            ));
        };
        let name = &rest[1..close];
        if name == "link" {
            pieces.push(Piece::Text(link.to_owned()));
        } else if name == "#" {
            return Err(format!(
                "{{#}} must fill the whole last level of the template: {template:?}"
            ));
        } else if let Some(number) = capture_number(name) {
            if number > plus_count {
                return Err(format!(
                    "template {template:?} uses {{{number}}}, but the filter {filter:?} has {}",
                    match plus_count {
                        0 => "no `+` level".to_owned(),
                        1 => "only one `+` level".to_owned(),
                        n => format!("only {n} `+` levels"),
                    }
                ));
            }
            pieces.push(Piece::Capture(number - 1));
        } else {
            return Err(format!(
                "template {template:?} has an unknown placeholder {:?}; {PLACEHOLDERS}",
                &rest[..=close]
            ));
        }
        rest = &rest[close + 1..];
    }
    Ok(pieces)
}
