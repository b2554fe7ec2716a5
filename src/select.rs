//! Pod selectors: a Kubernetes label selector, a namespace regex and a
//! pod-name regex, combined with AND (and, in a [`crate::Filter`], with pod
//! UIDs and event types).
//!
//! The label selector has `kubectl`'s syntax: requirements separated by
//! commas, all of which must hold.
//!
//! | requirement | holds when the pod |
//! |---|---|
//! | `key=value`, `key==value` | has the label with that value |
//! | `key!=value` | lacks the label, or has another value |
//! | `key in (v1,v2)` | has the label with one of the values |
//! | `key notin (v1,v2)` | lacks the label, or has none of the values |
//! | `key` | has the label |
//! | `!key` | lacks the label |
//!
//! Keys and values are checked as Kubernetes checks them (a key is an
//! optional DNS-subdomain prefix and `/`, then a name of at most 63
//! characters; a value is empty or such a name). An error names the column
//! of the character at fault and draws a caret under it.
//!
//! A regex matches the whole namespace or name (`web-.*` matches `web-1`,
//! not `my-web-1`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::model::PodMeta;

/// A parsed label selector. The empty selector matches every pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Requirement {
    /// The label's key.
    pub key: String,
    /// What is required of it.
    pub operator: Operator,
    /// The values (one for `=` and `!=`, none for `key` and `!key`).
    pub values: BTreeSet<String>,
}

/// The operator of a [`Requirement`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    /// `key=value` or `key==value`.
    Equals,
    /// `key!=value`.
    NotEquals,
    /// `key in (…)`.
    In,
    /// `key notin (…)`.
    NotIn,
    /// `key`.
    Exists,
    /// `!key`.
    DoesNotExist,
}

/// A label selector or a regex that does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorError {
    /// What was being parsed: `label selector`, `namespace regex`, `name regex`.
    pub what: &'static str,
    /// The text as given.
    pub input: String,
    /// The column (from 1, in characters) of the character at fault, when
    /// there is one.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.column {
            Some(column) => {
                write!(
                    f,
                    "{} {:?}: {} at column {column}",
                    self.what, self.input, self.message
                )?;
                // The caret sits under the character, after the opening quote.
                write!(f, "\n  {}\n  {}^", self.input, " ".repeat(column - 1))
            }
            None => write!(f, "{} {:?}: {}", self.what, self.input, self.message),
        }
    }
}

impl std::error::Error for SelectorError {}

const NAME_MAX: usize = 63;
const PREFIX_MAX: usize = 253;

impl LabelSelector {
    /// The selector that matches every pod.
    pub fn everything() -> Self {
        LabelSelector::default()
    }

    /// Parses `kubectl`'s syntax (see the module).
    ///
    /// # Errors
    /// [`SelectorError`], naming the column of the character at fault.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        Parser::new(input).selector()
    }

    /// Whether these labels satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// The requirements, in the order given.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether the selector has no requirement (and matches every pod).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

impl std::str::FromStr for LabelSelector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LabelSelector::parse(s)
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl Requirement {
    /// Whether these labels satisfy the requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::Equals | Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotEquals | Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let values = || self.values.iter().cloned().collect::<Vec<_>>().join(",");
        match self.operator {
            Operator::Equals => write!(f, "{}={}", self.key, values()),
            Operator::NotEquals => write!(f, "{}!={}", self.key, values()),
            Operator::In => write!(f, "{} in ({})", self.key, values()),
            Operator::NotIn => write!(f, "{} notin ({})", self.key, values()),
            Operator::Exists => f.write_str(&self.key),
            Operator::DoesNotExist => write!(f, "!{}", self.key),
        }
    }
}

/// A token of a label selector, with its byte offset.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    /// A key, a value, or `in`/`notin` (told apart by position).
    Word(String),
    Not,
    Equals,
    DoubleEquals,
    NotEquals,
    Open,
    Close,
    Comma,
    /// `<`, `>` or another character no requirement uses.
    Other(char),
    End,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Word(w) => format!("{w:?}"),
            Token::Not => "'!'".into(),
            Token::Equals => "'='".into(),
            Token::DoubleEquals => "'=='".into(),
            Token::NotEquals => "'!='".into(),
            Token::Open => "'('".into(),
            Token::Close => "')'".into(),
            Token::Comma => "','".into(),
            Token::Other(c) => format!("{c:?}"),
            Token::End => "the end".into(),
        }
    }
}

struct Parser<'a> {
    input: &'a str,
    at: usize,
}

fn special(c: char) -> bool {
    c.is_whitespace() || matches!(c, '!' | '=' | '(' | ')' | ',' | '<' | '>')
}

impl<'a> Parser<'a> {
    fn new(input: &'a str) -> Self {
        Parser { input, at: 0 }
    }

    fn error(&self, at: usize, message: impl Into<String>) -> SelectorError {
        SelectorError {
            what: "label selector",
            input: self.input.to_owned(),
            column: Some(self.input[..at.min(self.input.len())].chars().count() + 1),
            message: message.into(),
        }
    }

    /// The next token and its offset, without consuming it.
    fn peek(&self) -> (Token, usize, usize) {
        let rest = &self.input[self.at..];
        let skipped = rest.len() - rest.trim_start().len();
        let start = self.at + skipped;
        let rest = &self.input[start..];
        let mut chars = rest.chars();
        let Some(c) = chars.next() else {
            return (Token::End, start, start);
        };
        let two = |t: Token| (t, start, start + 2);
        let one = |t: Token| (t, start, start + c.len_utf8());
        match c {
            '!' if rest.starts_with("!=") => two(Token::NotEquals),
            '!' => one(Token::Not),
            '=' if rest.starts_with("==") => two(Token::DoubleEquals),
            '=' => one(Token::Equals),
            '(' => one(Token::Open),
            ')' => one(Token::Close),
            ',' => one(Token::Comma),
            c if special(c) => one(Token::Other(c)),
            _ => {
                let len = rest.find(special).unwrap_or(rest.len());
                (Token::Word(rest[..len].to_owned()), start, start + len)
            }
        }
    }

    fn next(&mut self) -> (Token, usize) {
        let (token, start, end) = self.peek();
        self.at = end;
        (token, start)
    }

    fn selector(mut self) -> Result<LabelSelector, SelectorError> {
        let mut requirements = Vec::new();
        if self.peek().0 == Token::End {
            return Ok(LabelSelector { requirements });
        }
        loop {
            requirements.push(self.requirement()?);
            match self.next() {
                (Token::End, _) => return Ok(LabelSelector { requirements }),
                (Token::Comma, _) => {}
                (other, at) => {
                    return Err(self.error(
                        at,
                        format!("expected ',' or the end, found {}", other.describe()),
                    ));
                }
            }
        }
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        let (first, at) = self.next();
        let (key, key_at, negated) = match first {
            Token::Not => match self.next() {
                (Token::Word(key), at) => (key, at, true),
                (other, at) => {
                    return Err(self.error(
                        at,
                        format!("expected a label key after '!', found {}", other.describe()),
                    ));
                }
            },
            Token::Word(key) => (key, at, false),
            other => {
                return Err(self.error(
                    at,
                    format!("expected a label key, found {}", other.describe()),
                ));
            }
        };
        check_key(&key).map_err(|(offset, message)| self.error(key_at + offset, message))?;
        let requirement = |operator, values| Requirement {
            key: key.clone(),
            operator,
            values,
        };
        if negated {
            return Ok(requirement(Operator::DoesNotExist, BTreeSet::new()));
        }
        let (token, at, _) = self.peek();
        let operator = match &token {
            Token::End | Token::Comma => return Ok(requirement(Operator::Exists, BTreeSet::new())),
            Token::Equals | Token::DoubleEquals => Operator::Equals,
            Token::NotEquals => Operator::NotEquals,
            Token::Word(w) if w == "in" => Operator::In,
            Token::Word(w) if w == "notin" => Operator::NotIn,
            other => {
                return Err(self.error(
                    at,
                    format!(
                        "expected '=', '==', '!=', 'in', 'notin', ',' or the end after the key {key:?}, found {}",
                        other.describe()
                    ),
                ));
            }
        };
        self.next();
        let values = match operator {
            Operator::In | Operator::NotIn => self.value_set()?,
            _ => BTreeSet::from([self.value()?]),
        };
        Ok(requirement(operator, values))
    }

    /// One value; absent (the end or a comma next) is the empty value.
    fn value(&mut self) -> Result<String, SelectorError> {
        match self.peek() {
            (Token::Word(value), at, _) => {
                self.next();
                check_value(&value).map_err(|(offset, m)| self.error(at + offset, m))?;
                Ok(value)
            }
            (Token::End | Token::Comma, _, _) => Ok(String::new()),
            (other, at, _) => {
                Err(self.error(at, format!("expected a value, found {}", other.describe())))
            }
        }
    }

    /// `( value, … )`, with at least one value.
    fn value_set(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        match self.next() {
            (Token::Open, _) => {}
            (other, at) => {
                return Err(self.error(
                    at,
                    format!(
                        "expected '(' to open the values, found {}",
                        other.describe()
                    ),
                ));
            }
        }
        let mut values = BTreeSet::new();
        if let (Token::Close, at, _) = self.peek() {
            return Err(self.error(at, "the set of values is empty"));
        }
        loop {
            let value = match self.peek() {
                (Token::Word(value), at, _) => {
                    self.next();
                    check_value(&value).map_err(|(offset, m)| self.error(at + offset, m))?;
                    value
                }
                // `(a,,b)` and `(a,)`: an empty value, as Kubernetes reads them.
                (Token::Comma | Token::Close, _, _) => String::new(),
                (other, at, _) => {
                    return Err(
                        self.error(at, format!("expected a value, found {}", other.describe()))
                    );
                }
            };
            values.insert(value);
            match self.next() {
                (Token::Comma, _) => {}
                (Token::Close, _) => return Ok(values),
                (other, at) => {
                    return Err(self.error(
                        at,
                        format!(
                            "expected ',' or ')' after a value, found {}",
                            other.describe()
                        ),
                    ));
                }
            }
        }
    }
}

/// A name part (of a key, or a value): at most 63 characters, alphanumeric
/// at both ends, `-`, `_` and `.` inside. Errors give the offset of the
/// character at fault.
fn check_name(name: &str, what: &str) -> Result<(), (usize, String)> {
    if name.len() > NAME_MAX {
        return Err((
            0,
            format!("{what} {name:?} is longer than {NAME_MAX} characters"),
        ));
    }
    let last = name.len().saturating_sub(1);
    for (i, c) in name.char_indices() {
        let ok = c.is_ascii_alphanumeric() || (i != 0 && i != last && matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err((
                i,
                format!(
                    "{what} {name:?} may hold only letters, digits, '-', '_' and '.', and must begin and end with a letter or digit; found {c:?}"
                ),
            ));
        }
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), (usize, String)> {
    let (prefix, name, name_at) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name, prefix.len() + 1),
        None => (None, key, 0),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() || prefix.len() > PREFIX_MAX {
            return Err((
                0,
                format!(
                    "the prefix of the key {key:?} must be a DNS subdomain of 1 to {PREFIX_MAX} characters"
                ),
            ));
        }
        for (i, c) in prefix.char_indices() {
            let edge = i == 0 || i == prefix.len() - 1;
            let ok =
                c.is_ascii_lowercase() || c.is_ascii_digit() || (!edge && matches!(c, '-' | '.'));
            if !ok {
                return Err((
                    i,
                    format!(
                        "the prefix of the key {key:?} must be a DNS subdomain (lowercase letters, digits, '-' and '.'); found {c:?}"
                    ),
                ));
            }
        }
    }
    if name.is_empty() {
        return Err((name_at, format!("the key {key:?} has no name")));
    }
    check_name(name, "the key's name").map_err(|(i, m)| (name_at + i, m))
}

fn check_value(value: &str) -> Result<(), (usize, String)> {
    if value.is_empty() {
        return Ok(());
    }
    check_name(value, "the value")
}

/// A regex that must match a whole namespace or pod name.
#[derive(Clone, Debug)]
pub struct Pattern {
    source: String,
    regex: regex::Regex,
}

impl Pattern {
    /// Compiles `source`, anchored at both ends. `what` names it in errors
    /// (`namespace regex`, `name regex`).
    ///
    /// # Errors
    /// [`SelectorError`] with the regex engine's explanation (which points
    /// at the bad character).
    pub fn new(what: &'static str, source: &str) -> Result<Self, SelectorError> {
        let build = |pattern: &str| {
            regex::RegexBuilder::new(pattern)
                .size_limit(1 << 20)
                .build()
        };
        let error = |e: regex::Error| SelectorError {
            what,
            input: source.to_owned(),
            column: None,
            message: match e {
                // The engine's message draws a caret under the character.
                regex::Error::Syntax(s) => format!("not a valid regex:\n{s}"),
                regex::Error::CompiledTooBig(limit) => {
                    format!("the regex compiles to more than {limit} bytes")
                }
                other => other.to_string(),
            },
        };
        // Checked as given first, so that an error points into the text the
        // user wrote rather than into the anchored form.
        build(source).map_err(error)?;
        let regex = build(&format!("^(?:{source})$")).map_err(error)?;
        Ok(Pattern {
            source: source.to_owned(),
            regex,
        })
    }

    /// Whether `text` matches as a whole.
    pub fn matches(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }

    /// The regex as given.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// A label selector, a namespace regex and a name regex, all of which a pod
/// must satisfy. The default selects every pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PodSelector {
    /// Requirements on the pod's labels.
    pub labels: LabelSelector,
    /// A regex the whole namespace must match.
    pub namespace: Option<Pattern>,
    /// A regex the whole pod name must match.
    pub name: Option<Pattern>,
}

impl PodSelector {
    /// Every pod.
    pub fn everything() -> Self {
        PodSelector::default()
    }

    /// Pods whose labels satisfy `selector` (`kubectl`'s syntax).
    ///
    /// # Errors
    /// [`SelectorError`] naming the column at fault.
    pub fn labels(selector: &str) -> Result<Self, SelectorError> {
        Ok(PodSelector::default().with_labels(LabelSelector::parse(selector)?))
    }

    /// Also requires these labels.
    #[must_use]
    pub fn with_labels(mut self, labels: LabelSelector) -> Self {
        self.labels = labels;
        self
    }

    /// Also requires the namespace to match `regex` as a whole.
    ///
    /// # Errors
    /// [`SelectorError`] for a regex that does not compile.
    pub fn with_namespace_regex(mut self, regex: &str) -> Result<Self, SelectorError> {
        self.namespace = Some(Pattern::new("namespace regex", regex)?);
        Ok(self)
    }

    /// Also requires the pod name to match `regex` as a whole.
    ///
    /// # Errors
    /// [`SelectorError`] for a regex that does not compile.
    pub fn with_name_regex(mut self, regex: &str) -> Result<Self, SelectorError> {
        self.name = Some(Pattern::new("name regex", regex)?);
        Ok(self)
    }

    /// Also requires the namespace to match this pattern.
    #[must_use]
    pub fn with_namespace_pattern(mut self, pattern: Pattern) -> Self {
        self.namespace = Some(pattern);
        self
    }

    /// Also requires the pod name to match this pattern.
    #[must_use]
    pub fn with_name_pattern(mut self, pattern: Pattern) -> Self {
        self.name = Some(pattern);
        self
    }

    /// Whether the pod satisfies all three.
    pub fn matches(&self, pod: &PodMeta) -> bool {
        self.labels.matches(&pod.labels)
            && self
                .namespace
                .as_ref()
                .is_none_or(|p| p.matches(&pod.namespace))
            && self.name.as_ref().is_none_or(|p| p.matches(&pod.name))
    }

    /// Whether it selects every pod.
    pub fn is_everything(&self) -> bool {
        self.labels.is_empty() && self.namespace.is_none() && self.name.is_none()
    }
}

#[cfg(test)]
mod tests;
