//! MQTT topic filters and topic mapping between the hub and an edge.
//!
//! Owns the MQTT rules for filters and topic names (validation, matching,
//! whether two filters can match a common topic) and [`TopicMap`], which turns
//! a topic read on one side of a route into the topic written on the other.
//! A prefix mapping replaces the part of the topic before the first wildcard
//! level: with `edge/1/down/#` -> `down/#`, `edge/1/down/a/b` becomes
//! `down/a/b`. A template (`template`) builds the written topic from the
//! levels the filter's wildcards matched: `site/+/sensor/#` ->
//! `edge/{link}/{1}/{#}`. Config validation and the bridge-loop check are
//! built on these functions.

mod template;

use template::Template;
pub use template::{find_placeholder, is_template};

/// Longest topic or filter MQTT can carry (a two-byte length prefix).
const MAX_TOPIC_BYTES: usize = 65535;

/// Checks a topic filter against the MQTT rules: non-empty, at most 65535
/// bytes, no NUL, `+` only as a whole level, `#` only as the whole last level.
pub fn validate_filter(filter: &str) -> Result<(), String> {
    check_common(filter, "topic filter")?;
    let levels: Vec<&str> = filter.split('/').collect();
    for (index, level) in levels.iter().enumerate() {
        let is_last = index + 1 == levels.len();
        if level.contains('#') && (*level != "#" || !is_last) {
            return Err(format!("`#` must be the last level, alone: {filter:?}"));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("`+` must fill a whole level (like \"a/+/b\"): {filter:?}"));
        }
    }
    Ok(())
}

/// Checks a topic name (what a PUBLISH carries): non-empty, at most 65535
/// bytes, no NUL and no wildcard characters.
pub fn validate_topic(topic: &str) -> Result<(), String> {
    check_common(topic, "topic")?;
    if topic.contains(['+', '#']) {
        return Err(format!(
            "a topic name cannot contain the wildcards `+` or `#`: {topic:?}"
        ));
    }
    Ok(())
}

fn check_common(text: &str, what: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err(format!("a {what} cannot be empty"));
    }
    if text.len() > MAX_TOPIC_BYTES {
        return Err(format!(
            "a {what} can be at most {MAX_TOPIC_BYTES} bytes, this one has {}",
            text.len()
        ));
    }
    if text.contains('\0') {
        return Err(format!("a {what} cannot contain the NUL character: {text:?}"));
    }
    Ok(())
}

fn is_wildcard(level: &str) -> bool {
    level == "+" || level == "#"
}

/// True when the first level of `filter` is a wildcard and `topic_level`, the
/// first level of a topic (or a literal filter level), starts with `$`: MQTT
/// keeps `$SYS/...` and the like away from filters such as `#` and `+/x`.
fn dollar_rule_excludes(filter: &str, first_level_of_other: &str) -> bool {
    let first_filter_level = filter.split('/').next().unwrap_or("");
    is_wildcard(first_filter_level) && !is_wildcard(first_level_of_other) && first_level_of_other.starts_with('$')
}

/// MQTT filter matching: `+` matches exactly one level (also an empty one),
/// `#` matches the parent level and any number of levels below it (`a/#`
/// matches `a` and `a/b/c`), and a topic starting with `$` is not matched by
/// a filter starting with a wildcard.
pub fn matches(filter: &str, topic: &str) -> bool {
    let first_topic_level = topic.split('/').next().unwrap_or("");
    if dollar_rule_excludes(filter, first_topic_level) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(filter_level), Some(topic_level)) if filter_level == topic_level => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// True when at least one topic matches both filters. Used to find routes
/// that would feed each other (a bridge loop).
pub fn filters_overlap(a: &str, b: &str) -> bool {
    let first_a = a.split('/').next().unwrap_or("");
    let first_b = b.split('/').next().unwrap_or("");
    if dollar_rule_excludes(a, first_b) || dollar_rule_excludes(b, first_a) {
        return false;
    }
    let mut levels_a = a.split('/');
    let mut levels_b = b.split('/');
    loop {
        match (levels_a.next(), levels_b.next()) {
            // `#` also matches its parent level, so `a` and `a/#` overlap.
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some(level_a), Some(level_b)) => {
                if !(level_a == "+" || level_b == "+" || level_a == level_b) {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Splits a filter into its literal levels before the first wildcard and the
/// wildcard tail (that wildcard level and everything after it).
fn split_at_first_wildcard(filter: &str) -> (Vec<String>, Vec<String>) {
    let levels: Vec<String> = filter.split('/').map(str::to_owned).collect();
    let first_wildcard = levels
        .iter()
        .position(|level| is_wildcard(level))
        .unwrap_or(levels.len());
    let tail = levels[first_wildcard..].to_vec();
    let mut prefix = levels;
    prefix.truncate(first_wildcard);
    (prefix, tail)
}

/// Maps topics matched by one filter (`from`) to the topics a route writes,
/// by a prefix mapping ([`TopicMap::new`]) or a template ([`TopicMap::template`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMap {
    from: String,
    rule: Rule,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    /// Swap the literal prefix before the first wildcard level of `from`
    /// for the one of `to`.
    Prefix {
        to: String,
        from_prefix_levels: usize,
        to_prefix: Vec<String>,
    },
    Template(Template),
}

impl TopicMap {
    /// A prefix mapping from the filter `from` to the filter `to`. Both must
    /// have the same wildcard tail, so the levels the wildcards matched carry
    /// over unchanged. Filters without wildcards map one exact topic to another.
    pub fn new(from: &str, to: &str) -> Result<TopicMap, String> {
        validate_filter(from)?;
        validate_filter(to)?;
        let (from_prefix, from_tail) = split_at_first_wildcard(from);
        let (to_prefix, to_tail) = split_at_first_wildcard(to);
        if from_tail != to_tail {
            return Err(format!(
                "{from:?} and {to:?} must have the same wildcard tail (the levels from the \
                 first `+` or `#` on), but they end in {} and {}; for example \"a/#\" can \
                 map to \"b/c/#\", or write a template such as \"b/{{1}}/{{#}}\"",
                describe_tail(&from_tail),
                describe_tail(&to_tail)
            ));
        }
        Ok(TopicMap {
            from: from.to_owned(),
            rule: Rule::Prefix {
                to: to.to_owned(),
                from_prefix_levels: from_prefix.len(),
                to_prefix,
            },
        })
    }

    /// A template mapping from the filter `from` on link `link` (see the
    /// `template` module for the syntax and its rules).
    pub fn template(from: &str, template: &str, link: &str) -> Result<TopicMap, String> {
        validate_filter(from)?;
        Ok(TopicMap {
            from: from.to_owned(),
            rule: Rule::Template(Template::parse(from, template, link)?),
        })
    }

    /// A filter that every topic [`TopicMap::map`] returns matches: the
    /// destination filter of a prefix mapping, or what a template can write.
    pub fn written_filter(&self) -> &str {
        match &self.rule {
            Rule::Prefix { to, .. } => to,
            Rule::Template(template) => template.written_filter(),
        }
    }

    pub fn is_template(&self) -> bool {
        matches!(self.rule, Rule::Template(_))
    }

    /// The destination topic for `topic`, or None when `topic` does not match
    /// the `from` filter or its mapping would not be a publishable topic that
    /// `to` matches: the parent level of `a/#` mapped to `#` would be empty,
    /// and a topic starting with `$` is not matched by a leading wildcard.
    /// A template also returns None for a topic that would be too long.
    pub fn map(&self, topic: &str) -> Option<String> {
        if !matches(&self.from, topic) {
            return None;
        }
        let (to, from_prefix_levels, to_prefix) = match &self.rule {
            Rule::Prefix {
                to,
                from_prefix_levels,
                to_prefix,
            } => (to, *from_prefix_levels, to_prefix),
            Rule::Template(template) => return template.render(&self.from, topic),
        };
        // `topic` matches `from`, so its first levels are exactly from's
        // prefix; the rest is what the wildcards matched (possibly nothing,
        // when `#` matched the parent level).
        let matched_by_wildcards = topic.split('/').skip(from_prefix_levels);
        let mapped = to_prefix
            .iter()
            .map(String::as_str)
            .chain(matched_by_wildcards)
            .collect::<Vec<&str>>()
            .join("/");
        if mapped.is_empty() || !matches(to, &mapped) {
            return None;
        }
        Some(mapped)
    }
}

fn describe_tail(tail: &[String]) -> String {
    if tail.is_empty() {
        "no wildcard".to_owned()
    } else {
        format!("{:?}", tail.join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_filters_are_accepted() {
        for filter in [
            "#",
            "+",
            "a",
            "a/b",
            "a/#",
            "a/+/b",
            "+/+",
            "/",
            "/a",
            "a/",
            "+/#",
            "$SYS/#",
            "a//b",
            "ü/日本",
        ] {
            assert_eq!(validate_filter(filter), Ok(()), "{filter}");
        }
    }

    #[test]
    fn invalid_filters_say_what_is_wrong() {
        let cases = [
            ("", "cannot be empty"),
            ("a/#/b", "`#` must be the last level, alone: \"a/#/b\""),
            ("a#", "`#` must be the last level"),
            ("a/b#", "`#` must be the last level"),
            ("#/a", "`#` must be the last level"),
            ("a+", "`+` must fill a whole level"),
            ("a/+b/c", "`+` must fill a whole level"),
            ("a\0b", "NUL"),
        ];
        for (filter, expected) in cases {
            let error = validate_filter(filter).unwrap_err();
            assert!(error.contains(expected), "{filter:?}: {error}");
        }
        let too_long = "a".repeat(65536);
        assert!(validate_filter(&too_long).unwrap_err().contains("65535"));
        assert_eq!(validate_filter(&"a".repeat(65535)), Ok(()));
    }

    #[test]
    fn topics_are_validated() {
        assert_eq!(validate_topic("a/b"), Ok(()));
        assert_eq!(validate_topic("/"), Ok(()));
        assert!(validate_topic("").is_err());
        assert!(validate_topic("a/+").unwrap_err().contains("wildcards"));
        assert!(validate_topic("a/#").unwrap_err().contains("wildcards"));
        assert!(validate_topic("a\0").unwrap_err().contains("NUL"));
    }

    #[test]
    fn matching_follows_mqtt() {
        let cases = [
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("a/#", "ab", false),
            ("a/#", "b/a", false),
            ("#", "a/b", true),
            ("#", "/", true),
            ("+", "a", true),
            ("+", "a/b", false),
            ("+", "", true),
            ("+/+", "/", true),
            ("a/+", "a/", true),
            ("a/+", "a", false),
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a//c", true),
            ("a/+/c", "a/b/d", false),
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("+/#", "a", true),
            ("/#", "/a", true),
            ("/#", "a", false),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("$SYS/+", "$SYS/x", true),
            ("a/$x", "a/$x", true),
            ("a/+", "a/$x", true),
        ];
        for (filter, topic, expected) in cases {
            assert_eq!(matches(filter, topic), expected, "{filter} vs {topic}");
        }
    }

    #[test]
    fn overlap_cases() {
        let cases = [
            ("a/#", "a", true),
            ("a", "a/#", true),
            ("a/#", "a/b/c", true),
            ("a/+", "a/b", true),
            ("a/+", "+/b", true),
            ("a/+", "b/+", false),
            ("a/b", "a/b/c", false),
            ("a/+/c", "a/b/#", true),
            ("#", "x", true),
            ("#", "#", true),
            ("+", "a/b", false),
            ("+/#", "a", true),
            ("down/#", "up/#", false),
            ("edge/1/down/#", "edge/1/up/#", false),
            ("edge/+/up/#", "edge/1/up/x", true),
            ("#", "$SYS/x", false),
            ("$SYS/x", "+/x", false),
            ("+/x", "#", true),
            ("$SYS/#", "$SYS/+", true),
        ];
        for (a, b, expected) in cases {
            assert_eq!(filters_overlap(a, b), expected, "{a} vs {b}");
            assert_eq!(filters_overlap(b, a), expected, "{b} vs {a}");
        }
    }

    #[test]
    fn map_replaces_prefix_before_first_wildcard() {
        let map = TopicMap::new("edge/1/down/#", "down/#").unwrap();
        assert_eq!(map.map("edge/1/down/a/b").as_deref(), Some("down/a/b"));
        assert_eq!(map.map("edge/1/down").as_deref(), Some("down"));
        assert_eq!(map.map("edge/1/down/").as_deref(), Some("down/"));
        assert_eq!(map.map("edge/2/down/a"), None);
        assert_eq!(map.map("edge/1/downx"), None);

        let map = TopicMap::new("#", "e1/#").unwrap();
        assert_eq!(map.map("x/y").as_deref(), Some("e1/x/y"));
        assert_eq!(map.map("/x").as_deref(), Some("e1//x"));
        assert_eq!(map.map("$SYS/x"), None);

        let map = TopicMap::new("a/+/x", "b/c/+/x").unwrap();
        assert_eq!(map.map("a/q/x").as_deref(), Some("b/c/q/x"));
        assert_eq!(map.map("a//x").as_deref(), Some("b/c//x"));
        assert_eq!(map.map("a/q/y"), None);

        let map = TopicMap::new("a/+/x/#", "+/x/#").unwrap();
        assert_eq!(map.map("a/q/x/r/s").as_deref(), Some("q/x/r/s"));
        assert_eq!(map.map("a/q/x").as_deref(), Some("q/x"));
    }

    #[test]
    fn exact_filters_map_one_topic_to_another() {
        let map = TopicMap::new("hub/status", "edge/status/now").unwrap();
        assert_eq!(map.map("hub/status").as_deref(), Some("edge/status/now"));
        assert_eq!(map.map("hub/status/x"), None);
        assert_eq!(map.map("hub"), None);
    }

    #[test]
    fn empty_prefixes_add_no_leading_slash() {
        let map = TopicMap::new("#", "#").unwrap();
        assert_eq!(map.map("a/b").as_deref(), Some("a/b"));
        assert_eq!(map.map("/a").as_deref(), Some("/a"));
        let map = TopicMap::new("a/#", "#").unwrap();
        assert_eq!(map.map("a/b").as_deref(), Some("b"));
        assert_eq!(map.map("a//b").as_deref(), Some("/b"));
        // The parent level of `a/#` has nothing left to publish to.
        assert_eq!(map.map("a"), None);
        let map = TopicMap::new("a/+", "+").unwrap();
        assert_eq!(map.map("a/b").as_deref(), Some("b"));
        let map = TopicMap::new("+", "x/+").unwrap();
        assert_eq!(map.map("b").as_deref(), Some("x/b"));
    }

    #[test]
    fn map_never_produces_a_topic_the_destination_filter_rejects() {
        // `e1/$SYS` would become `$SYS`, which `#` does not match.
        let map = TopicMap::new("e1/#", "#").unwrap();
        assert_eq!(map.map("e1/$SYS/x"), None);
        assert_eq!(map.map("e1/x/$y").as_deref(), Some("x/$y"));
    }

    #[test]
    fn different_wildcard_tails_are_rejected() {
        for (from, to) in [
            ("a/#", "b/+"),
            ("a/#", "b"),
            ("a", "b/#"),
            ("a/+/x", "b/+/y"),
            ("a/+/#", "b/#"),
            ("+/a", "+/b"),
        ] {
            let error = TopicMap::new(from, to).unwrap_err();
            assert!(
                error.contains("must have the same wildcard tail"),
                "{from} {to}: {error}"
            );
        }
        let error = TopicMap::new("a/#/b", "c/#").unwrap_err();
        assert!(error.contains("`#` must be the last level"), "{error}");
    }

    fn template(from: &str, template: &str) -> TopicMap {
        TopicMap::template(from, template, "e1").unwrap_or_else(|error| panic!("{from} {template}: {error}"))
    }

    #[test]
    fn templates_reorder_drop_and_name_levels() {
        // The example: link name, first `+`, then the `#` tail.
        let map = template("site/+/sensor/#", "edge/{link}/{1}/{#}");
        assert_eq!(map.map("site/3/sensor/t/1").as_deref(), Some("edge/e1/3/t/1"));
        assert_eq!(map.map("site/3/other/t"), None);
        assert_eq!(map.written_filter(), "edge/e1/+/#");
        assert!(map.is_template());
        // Reorder two levels.
        let map = template("a/+/+", "b/{2}/{1}");
        assert_eq!(map.map("a/x/y").as_deref(), Some("b/y/x"));
        assert_eq!(map.written_filter(), "b/+/+");
        // Drop a level (the second `+`), keep the tail.
        let map = template("+/+/#", "{1}/{#}");
        assert_eq!(map.map("x/y/z/w").as_deref(), Some("x/z/w"));
        // A capture used twice and inside a level; `{link}` alone.
        let map = template("dev/+", "{1}/dev-{1}-{link}");
        assert_eq!(map.map("dev/7").as_deref(), Some("7/dev-7-e1"));
        assert_eq!(map.written_filter(), "+/+");
        let map = template("status", "edge/{link}/status");
        assert_eq!(map.map("status").as_deref(), Some("edge/e1/status"));
        assert_eq!(map.written_filter(), "edge/e1/status");
        // Literal braces-free text around `{link}` is one literal level.
        let map = template("a/#", "x{link}y/{#}");
        assert_eq!(map.written_filter(), "xe1y/#");
    }

    #[test]
    fn template_edge_cases() {
        // `#` matching zero levels leaves no dangling `/`; an empty level stays.
        let map = template("site/+/sensor/#", "edge/{1}/{#}");
        assert_eq!(map.map("site/3/sensor").as_deref(), Some("edge/3"));
        assert_eq!(map.map("site/3/sensor/").as_deref(), Some("edge/3/"));
        // An empty `+` level gives an empty capture.
        let map = template("a/+/b", "x/{1}/y");
        assert_eq!(map.map("a//b").as_deref(), Some("x//y"));
        // Nothing left to publish: not written (as `a/#` -> `#` for `a`).
        let map = template("a/#", "{#}");
        assert_eq!(map.map("a"), None);
        assert_eq!(map.map("a/b/c").as_deref(), Some("b/c"));
        // A `$` capture moved to the first level falls outside "+/x", the
        // filter the loop check relies on: not written.
        let map = template("a/+", "{1}/x");
        assert_eq!(map.map("a/$SYS"), None);
        assert_eq!(map.map("a/q").as_deref(), Some("q/x"));
        // A topic that would exceed 65535 bytes is not written.
        let map = template("a/+", "{1}/{1}");
        let long = "x".repeat(40_000);
        assert_eq!(map.map(&format!("a/{long}")), None);
    }

    #[test]
    fn bad_templates_say_what_is_wrong() {
        let cases = [
            (
                "a/+/+",
                "b/{3}",
                "uses {3}, but the filter \"a/+/+\" has only 2 `+` levels",
            ),
            ("a/+", "b/{2}", "has only one `+` level"),
            ("a/b", "b/{1}", "has no `+` level"),
            ("a/+", "b/{1}/{#}", "uses {#}, but the filter \"a/+\" has no `#` level"),
            ("a/#", "{#}/b", "{#} must be the last level"),
            ("a/#", "b/x{#}", "{#} must fill the whole last level"),
            ("a/+", "b/{x}", "unknown placeholder \"{x}\""),
            ("a/+", "b/{}", "unknown placeholder \"{}\""),
            ("a/+", "b/{0}", "unknown placeholder \"{0}\""),
            ("a/+", "b/{01}", "unknown placeholder \"{01}\""),
            ("a/+", "b/{LINK}", "unknown placeholder \"{LINK}\""),
            ("a/+", "b/{1", "a `{` without its `}`"),
            ("a/+", "b/1}", "a `}` without its `{`"),
            ("a/+", "b/{1}/+", "cannot contain the wildcards"),
            ("a/+/#", "b/{1}x#/{#}", "cannot contain the wildcards"),
            ("a/#", "b/{link}/#", "cannot contain the wildcards"),
            ("a/+", "b/{1}\0", "NUL"),
        ];
        for (from, to, expected) in cases {
            let error = TopicMap::template(from, to, "e1").unwrap_err();
            assert!(error.contains(expected), "{from} {to}: {error}");
        }
    }

    #[test]
    fn placeholders_are_found_and_plain_braces_are_not_templates_of_filters() {
        assert_eq!(find_placeholder("a/{1}/b"), Some("{1}"));
        assert_eq!(find_placeholder("a/{x}/{#}"), Some("{#}"));
        assert_eq!(find_placeholder("{link}"), Some("{link}"));
        assert_eq!(find_placeholder("a/{x}/{0}/b{"), None);
        assert!(is_template("a/{1}") && is_template("a}") && !is_template("a/+/#"));
    }

    #[test]
    fn property_templated_topics_match_the_written_filter() {
        let mut rng = Lcg(11);
        let pieces = ["{1}", "{2}", "x", "", "{link}", "p{1}q"];
        let mut mapped_count = 0;
        for _ in 0..20_000 {
            let from = join_filter(&rng.levels(2), &rng.tail());
            if from.is_empty() {
                continue;
            }
            let mut levels: Vec<String> = (0..rng.next(4))
                .map(|_| pieces[rng.next(pieces.len())].to_owned())
                .collect();
            if rng.next(2) == 0 {
                levels.push("{#}".to_owned());
            }
            let text = levels.join("/");
            let Ok(map) = TopicMap::template(&from, &text, "e1") else {
                continue;
            };
            let topic = rng.topic_for(&from);
            if topic.is_empty() {
                continue;
            }
            if let Some(mapped) = map.map(&topic) {
                mapped_count += 1;
                assert_eq!(
                    validate_topic(&mapped),
                    Ok(()),
                    "{from} -> {text}: {topic} -> {mapped:?}"
                );
                assert!(
                    matches(map.written_filter(), &mapped),
                    "{from} -> {text}: {topic} -> {mapped}"
                );
            }
        }
        assert!(mapped_count > 2_000, "only {mapped_count} topics mapped");
    }

    /// A small deterministic generator, so the property loop needs no crate.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, bound: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) % bound as u64) as usize
        }
        fn literal_level(&mut self) -> &'static str {
            ["a", "b", "", "$x", "edge", "1"][self.next(6)]
        }
        fn levels(&mut self, max: usize) -> Vec<String> {
            (0..self.next(max + 1))
                .map(|_| self.literal_level().to_owned())
                .collect()
        }
        fn tail(&mut self) -> Vec<String> {
            let mut tail = Vec::new();
            match self.next(4) {
                0 => {}
                1 => tail.push("#".to_owned()),
                2 => tail.push("+".to_owned()),
                _ => {
                    tail.push("+".to_owned());
                    tail.extend(self.levels(2).into_iter().map(
                        |level| {
                            if level.is_empty() {
                                "+".to_owned()
                            } else {
                                level
                            }
                        },
                    ));
                    if self.next(2) == 0 {
                        tail.push("#".to_owned());
                    }
                }
            }
            tail
        }
        /// A topic that `filter` matches, built level by level.
        fn topic_for(&mut self, filter: &str) -> String {
            let mut levels = Vec::new();
            for level in filter.split('/') {
                match level {
                    "+" => levels.push(self.literal_level().to_owned()),
                    "#" => {
                        if self.next(3) == 0 {
                            // `#` matching its parent level: nothing added.
                        } else {
                            levels.extend(self.levels(3));
                            if levels.is_empty() {
                                levels.push("z".to_owned());
                            }
                        }
                    }
                    literal => levels.push(literal.to_owned()),
                }
            }
            levels.join("/")
        }
    }

    fn join_filter(prefix: &[String], tail: &[String]) -> String {
        prefix.iter().chain(tail.iter()).cloned().collect::<Vec<_>>().join("/")
    }

    #[test]
    fn property_mapped_topics_match_the_destination_and_map_back() {
        let mut rng = Lcg(7);
        let mut mapped_count = 0;
        for _ in 0..20_000 {
            let tail = rng.tail();
            let from_prefix = rng.levels(3);
            let to_prefix = rng.levels(3);
            let from = join_filter(&from_prefix, &tail);
            let to = join_filter(&to_prefix, &tail);
            if from.is_empty() || to.is_empty() {
                continue;
            }
            let map = TopicMap::new(&from, &to).unwrap();
            let back = TopicMap::new(&to, &from).unwrap();
            // Half the topics are built to match `from`, half are random.
            let topic = if rng.next(2) == 0 {
                rng.topic_for(&from)
            } else {
                rng.levels(5).join("/")
            };
            if topic.is_empty() {
                continue;
            }
            match map.map(&topic) {
                Some(mapped) => {
                    mapped_count += 1;
                    assert!(matches(&from, &topic), "{from} {topic}");
                    assert!(matches(&to, &mapped), "{from} -> {to}: {topic} -> {mapped}");
                    assert_eq!(validate_topic(&mapped), Ok(()), "{mapped:?}");
                    assert_eq!(
                        back.map(&mapped).as_deref(),
                        Some(topic.as_str()),
                        "{from} -> {to}: {topic} -> {mapped} and back"
                    );
                }
                None => {
                    if matches(&from, &topic) {
                        // Only the two documented unpublishable cases.
                        let rest: Vec<&str> = topic.split('/').skip(from_prefix.len()).collect();
                        let would_be = to_prefix
                            .iter()
                            .map(String::as_str)
                            .chain(rest)
                            .collect::<Vec<_>>()
                            .join("/");
                        assert!(
                            would_be.is_empty() || would_be.starts_with('$'),
                            "{from} -> {to}: {topic} matched but was not mapped"
                        );
                    }
                }
            }
        }
        assert!(mapped_count > 5_000, "only {mapped_count} topics mapped");
    }
}
