//! A strict parser for the Prometheus text exposition format (0.0.4), enough to prove that
//! `/metrics` is well formed and to read sample values.

use std::collections::HashMap;

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub value: f64,
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses the exposition; returns every sample or a message naming the bad line.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    let mut types: HashMap<String, String> = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let ln = n + 1;
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap_or("");
            let name = parts
                .next()
                .ok_or(format!("line {ln}: comment without a metric name"))?;
            if !valid_name(name) {
                return Err(format!("line {ln}: bad metric name `{name}`"));
            }
            if kind == "TYPE" {
                let t = parts.next().unwrap_or("");
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) {
                    return Err(format!("line {ln}: bad type `{t}`"));
                }
                if types.insert(name.to_owned(), t.to_owned()).is_some() {
                    return Err(format!("line {ln}: second TYPE for `{name}`"));
                }
            } else if kind != "HELP" {
                return Err(format!("line {ln}: unknown comment kind `{kind}`"));
            }
            continue;
        }
        let (name_labels, value) = line
            .rsplit_once(' ')
            .ok_or(format!("line {ln}: no value"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .map_err(|_| format!("line {ln}: bad value `{v}`"))?,
        };
        let (name, labels) = match name_labels.split_once('{') {
            None => (name_labels, HashMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .ok_or(format!("line {ln}: unclosed labels"))?;
                let mut labels = HashMap::new();
                let mut s = body;
                while !s.is_empty() {
                    let (k, after) = s
                        .split_once("=\"")
                        .ok_or(format!("line {ln}: bad label in `{body}`"))?;
                    if !valid_name(k) {
                        return Err(format!("line {ln}: bad label name `{k}`"));
                    }
                    let mut val = String::new();
                    let mut chars = after.char_indices();
                    let mut end = None;
                    while let Some((i, c)) = chars.next() {
                        match c {
                            '\\' => match chars.next() {
                                Some((_, 'n')) => val.push('\n'),
                                Some((_, c2)) => val.push(c2),
                                None => return Err(format!("line {ln}: dangling escape")),
                            },
                            '"' => {
                                end = Some(i);
                                break;
                            }
                            c => val.push(c),
                        }
                    }
                    let end = end.ok_or(format!("line {ln}: unterminated label value"))?;
                    labels.insert(k.to_owned(), val);
                    s = &after[end + 1..];
                    s = s.strip_prefix(',').unwrap_or(s);
                }
                (name, labels)
            }
        };
        if !valid_name(name) {
            return Err(format!("line {ln}: bad metric name `{name}`"));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suf| name.strip_suffix(suf))
            .filter(|f| types.contains_key(*f));
        let family = family.unwrap_or(name);
        if !types.contains_key(family) {
            return Err(format!(
                "line {ln}: sample `{name}` has no TYPE line before it"
            ));
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(samples)
}

/// The value of the sample `name` whose labels include all of `labels`.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

#[test]
fn parser_rejects_malformed_exposition() {
    assert!(parse("# TYPE a counter\na 1\n").is_ok());
    assert!(parse("a 1\n").is_err(), "sample without TYPE");
    assert!(
        parse("# TYPE a counter\na{x=\"1} 1\n").is_err(),
        "unterminated label"
    );
    assert!(parse("# TYPE a counter\na one\n").is_err(), "bad value");
    assert!(parse("# TYPE 1a counter\n").is_err(), "bad name");
}
