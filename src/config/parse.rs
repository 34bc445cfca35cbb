//! YAML text → [`RawConfig`] → [`Config`], with every error of the text placed at its line,
//! column and field path.
//!
//! serde stops at the first field it cannot read, so one pass would report one mistake.
//! Instead each field serde refuses (unknown, of the wrong shape, a section missing a
//! required field) is reported and taken out of the document, and the rest is read again,
//! until what is left reads; then validation checks what is left, and every error of both
//! steps is reported. Scalars are lenient in [`RawConfig`] (numbers are read as text), so a
//! wrong value (`rate: -5`) is validation's to explain, not serde's.

use marked_yaml::Node;

use super::{validate, Config, ConfigError, ConfigErrors, RawConfig};

/// At most this many fields are taken out of one document before giving up on the rest.
const MAX_PRUNED: usize = 100;

/// Parses config text, leaving out the top-level keys in `ignore` (the `version` that
/// `GET /v1/config` shows), lets `adjust` change what was read (the control API puts in the
/// live `admin` section), then validates it.
pub fn parse_document(
    text: &str,
    ignore: &[&str],
    adjust: impl FnOnce(&mut RawConfig),
) -> Result<Config, ConfigErrors> {
    let fail = |errors| ConfigErrors { source: None, errors };
    let options = marked_yaml::LoaderOptions::default().error_on_duplicate_keys(true);
    let original = marked_yaml::parse_yaml_with_options(0, text, options).map_err(|e| fail(vec![load_error(e)]))?;
    let mut node = original.clone();
    if let Some(root) = node.as_mapping_mut() {
        for key in ignore {
            root.remove(*key);
        }
    }
    let mut pruned = Pruned::default();
    let mut errors = Vec::new();
    let raw = loop {
        match marked_yaml::from_node::<RawConfig>(&node) {
            Ok(raw) => break Some(raw),
            Err(e) => {
                let path = e.path().unwrap_or_default().to_string();
                let mark = e.start_mark();
                let message = readable(e.into_inner().to_string());
                // A section missing a required field goes whole; anything else goes alone.
                let missing = message.strip_prefix("missing field `").and_then(|m| m.strip_suffix('`'));
                let removable = !(missing.is_some() && path.is_empty());
                let written = pruned.original(&path);
                // A field missing because it was taken out was reported when it was.
                let echo = missing.is_some_and(|field| {
                    let field = if written.is_empty() { field.to_string() } else { format!("{written}.{field}") };
                    errors.iter().any(|e: &ConfigError| e.path == field)
                });
                if !echo {
                    let (line, column) = (mark.map(|m| m.line()), mark.map(|m| m.column()));
                    errors.push(ConfigError { path: written, line, column, message });
                }
                if !removable || errors.len() >= MAX_PRUNED || !pruned.remove(&mut node, &path) {
                    break None;
                }
            }
        }
    };
    if let Some(mut raw) = raw {
        adjust(&mut raw);
        match validate::validate(raw) {
            Ok(config) if errors.is_empty() => return Ok(config),
            Ok(_) => {}
            Err(found) => errors.extend(found.into_iter().map(|(path, message)| {
                let path = pruned.original(&path);
                place(&original, path, message)
            })),
        }
    }
    errors.sort_by_key(|e| (e.line.unwrap_or(usize::MAX), e.column.unwrap_or(usize::MAX)));
    Err(fail(errors))
}

/// serde's message, with the Rust type it expected said as the YAML it wants.
fn readable(message: String) -> String {
    match message.find("expected struct Raw") {
        Some(at) => format!("{}expected a mapping of its fields", &message[..at]),
        None => message,
    }
}

/// The sequence elements taken out so far, so that an index in what is left can be told
/// as an index in what was written.
#[derive(Default)]
struct Pruned {
    /// (the sequence's path, the element's index as written)
    elements: Vec<(String, usize)>,
}

impl Pruned {
    /// Removes the node at `path` (`routes[1].quota`) from `root`; false if there is none.
    fn remove(&mut self, root: &mut Node, path: &str) -> bool {
        let Some((parent, last)) = split_last(path) else { return false };
        let Some(parent_node) = find_mut(root, parent) else { return false };
        match last {
            Step::Key(key) => parent_node.as_mapping_mut().and_then(|m| m.remove(key)).is_some(),
            Step::Index(i) => match parent_node.as_sequence_mut() {
                Some(seq) if i < seq.len() => {
                    seq.remove(i);
                    // Kept as written, so that a sequence inside a pruned one is told apart.
                    let parent = self.original(parent);
                    let written = self.original_index(&parent, i);
                    self.elements.push((parent, written));
                    true
                }
                _ => false,
            },
        }
    }

    /// The index as written of element `i` of what is left of the sequence at `seq` (its
    /// path as written).
    fn original_index(&self, seq: &str, i: usize) -> usize {
        let mut gone: Vec<usize> = self.elements.iter().filter(|(s, _)| s == seq).map(|(_, i)| *i).collect();
        gone.sort_unstable();
        gone.into_iter().fold(i, |i, g| if g <= i { i + 1 } else { i })
    }

    /// `path` in what is left, as a path in what was written.
    fn original(&self, path: &str) -> String {
        if self.elements.is_empty() {
            return path.to_string();
        }
        let mut out = String::with_capacity(path.len());
        let mut rest = path;
        while let Some(open) = rest.find('[') {
            let close = rest[open..].find(']').map_or(rest.len(), |c| open + c);
            out.push_str(&rest[..open]);
            match rest[open + 1..close].parse::<usize>() {
                Ok(i) => out.push_str(&format!("[{}]", self.original_index(&out, i))),
                Err(_) => out.push_str(&rest[open..=close.min(rest.len() - 1)]),
            }
            rest = rest.get(close + 1..).unwrap_or("");
        }
        out.push_str(rest);
        out
    }
}

enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// `a.b[2]` → (`a.b`, index 2); `a.b` → (`a`, key `b`); `a` → (``, key `a`).
fn split_last(path: &str) -> Option<(&str, Step<'_>)> {
    if path.is_empty() {
        return None;
    }
    if let Some(stripped) = path.strip_suffix(']') {
        let open = stripped.rfind('[')?;
        return Some((&path[..open], Step::Index(stripped[open + 1..].parse().ok()?)));
    }
    Some(match path.rfind('.') {
        Some(dot) => (&path[..dot], Step::Key(&path[dot + 1..])),
        None => ("", Step::Key(path)),
    })
}

/// The steps of a path: `routes[1].quota` → routes, [1], quota.
fn steps(path: &str) -> impl Iterator<Item = Step<'_>> {
    path.split('.').filter(|p| !p.is_empty()).flat_map(|part| {
        let (name, indices) = part.find('[').map_or((part, ""), |i| (&part[..i], &part[i..]));
        let key = (!name.is_empty()).then_some(Step::Key(name));
        let indices = indices.split(['[', ']']).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok());
        key.into_iter().chain(indices.map(Step::Index))
    })
}

fn find_mut<'a>(root: &'a mut Node, path: &str) -> Option<&'a mut Node> {
    let mut node = root;
    for step in steps(path) {
        node = match step {
            Step::Key(key) => node.as_mapping_mut()?.get_mut(key)?,
            Step::Index(i) => node.as_sequence_mut()?.get_mut(i)?,
        };
    }
    Some(node)
}

/// Places the problems `(path, message)` found in a config made from `text`, for checks
/// that run after parsing (token sources).
pub fn place_all(text: &str, problems: Vec<(String, String)>) -> Vec<ConfigError> {
    let root = marked_yaml::parse_yaml(0, text).ok();
    problems
        .into_iter()
        .map(|(path, message)| match &root {
            Some(root) => place(root, path, message),
            None => ConfigError { path, line: None, column: None, message },
        })
        .collect()
}

/// Finds where `path` (`routes[1].quota.per`) sits in the document. A field that is
/// missing is placed at the nearest enclosing node that exists.
fn place(root: &Node, path: String, message: String) -> ConfigError {
    let mut node = root;
    for step in steps(&path) {
        let next = match step {
            Step::Key(key) => node.as_mapping().and_then(|m| m.get_node(key)),
            Step::Index(i) => node.as_sequence().and_then(|s| s.get_node(i)),
        };
        let Some(next) = next else { break };
        node = next;
    }
    let mark = node.span().start();
    ConfigError { path, line: mark.map(|m| m.line()), column: mark.map(|m| m.column()), message }
}

fn load_error(e: marked_yaml::LoadError) -> ConfigError {
    use marked_yaml::LoadError::*;
    let (mark, message) = match &e {
        TopLevelMustBeMapping(m) => (Some(*m), "the config must be a mapping".to_string()),
        DuplicateKey(inner) => (inner.key.span().start().copied(), format!("duplicate key `{}`", inner.key.as_str())),
        ScanError(m, _)
        | UnexpectedAnchor(m)
        | MappingKeyMustBeScalar(m)
        | UnexpectedTag(m)
        | TopLevelMustBeSequence(m) => {
            // The display form starts with the marker; keep only the message.
            let text = e.to_string();
            let message = text.split_once(": ").map_or(text.clone(), |(_, m)| m.to_string());
            (Some(*m), message)
        }
    };
    ConfigError { path: String::new(), line: mark.map(|m| m.line()), column: mark.map(|m| m.column()), message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_steps() {
        let parts: Vec<String> = steps("routes[1].quota")
            .map(|s| match s {
                Step::Key(k) => k.to_string(),
                Step::Index(i) => format!("[{i}]"),
            })
            .collect();
        assert_eq!(parts, ["routes", "[1]", "quota"]);
        assert!(matches!(split_last("routes[2]"), Some(("routes", Step::Index(2)))));
        assert!(matches!(split_last("a.b"), Some(("a", Step::Key("b")))));
        assert!(matches!(split_last("a"), Some(("", Step::Key("a")))));
    }

    #[test]
    fn indices_after_removed_elements_are_the_written_ones() {
        let mut pruned = Pruned::default();
        pruned.elements.push(("routes".into(), 1));
        assert_eq!(pruned.original("routes[0].name"), "routes[0].name");
        assert_eq!(pruned.original("routes[1].name"), "routes[2].name");
        pruned.elements.push(("routes".into(), 2));
        assert_eq!(pruned.original("routes[1].quota.rate"), "routes[3].quota.rate");
        assert_eq!(pruned.original("admin.tokens[1]"), "admin.tokens[1]");
    }
}
