//! Validation of the PromQL an SLO is written in: each field is one plain vector selector.
//!
//! Selectors are parsed, not pasted: a typo must surface as a Condition naming the field and the
//! column, not as a PrometheusRule that Prometheus refuses to load (which fails every rule in the
//! file, other SLOs' included).

use promql_parser::parser::{self, Expr, VectorSelector};
use std::fmt;

/// A selector that did not parse, or parsed into something other than a plain selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryError {
    /// Path of the field in the SLO, for example `spec.indicator.ratio.errors`.
    pub field: String,
    /// 1-based character column of the culprit in the field's text.
    pub column: usize,
    pub message: String,
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: column {}: {}",
            self.field, self.column, self.message
        )
    }
}

/// A validated selector: its metric name and the canonical text of its label matchers
/// (`{job="api",code=~"5.."}`, or empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    pub metric: String,
    pub matchers: String,
}

impl Selector {
    /// The selector as PromQL, with an extra matcher appended when given.
    pub fn render(&self, suffix: &str, extra_matcher: Option<&str>) -> String {
        let inner = self.matchers.trim_start_matches('{').trim_end_matches('}');
        let matchers: Vec<&str> = [inner, extra_matcher.unwrap_or("")]
            .into_iter()
            .filter(|m| !m.is_empty())
            .collect();
        if matchers.is_empty() {
            format!("{}{suffix}", self.metric)
        } else {
            format!("{}{suffix}{{{}}}", self.metric, matchers.join(","))
        }
    }
}

/// Parses `text` (the value of `field`) as one vector selector with a metric name, no offset,
/// no `@` and no `or` between matcher sets (which Prometheus 2 does not accept).
pub fn vector_selector(field: &str, text: &str) -> Result<Selector, QueryError> {
    let error = |column: usize, message: String| QueryError {
        field: field.to_string(),
        column,
        message,
    };
    let expr = parser::parse(text).map_err(|message| error(error_column(text), message))?;
    let Expr::VectorSelector(selector) = expr else {
        return Err(error(
            1,
            format!(
                "must be a plain vector selector like http_requests_total{{job=\"api\"}}, not {}; Bulwark applies rate() itself",
                describe(&expr)
            ),
        ));
    };
    let at = |needle: &str| column_of(text, needle);
    let VectorSelector {
        name,
        matchers,
        offset,
        at: at_modifier,
    } = selector;
    if offset.is_some() {
        return Err(error(
            at("offset"),
            "offset is not allowed in an SLO selector".into(),
        ));
    }
    if at_modifier.is_some() {
        return Err(error(
            at("@"),
            "the @ modifier is not allowed in an SLO selector".into(),
        ));
    }
    if !matchers.or_matchers.is_empty() {
        return Err(error(
            at(" or "),
            "`or` between label matchers needs Prometheus 3; write one matcher set".into(),
        ));
    }
    let Some(metric) = name else {
        return Err(error(
            1,
            "name the metric before the braces, for example http_requests_total{...}".into(),
        ));
    };
    let matchers: Vec<String> = matchers
        .matchers
        .iter()
        .filter(|m| m.name != "__name__")
        .map(|m| format!("{}{}{}", m.name, m.op, quote(&m.value)))
        .collect();
    Ok(Selector {
        metric,
        matchers: if matchers.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", matchers.join(","))
        },
    })
}

/// Endings that complete a prefix of a selector (or of the expressions people paste instead).
const COMPLETIONS: [&str; 7] = ["", "}", "\"}", "\"\"}", "=\"\"}", ")", "])"];

/// Where the parser gave up, as a 1-based column. The parser says what went wrong but not
/// where, so this finds the longest prefix that some short ending turns into valid PromQL: the
/// culprit is the character after it (or just past the end, when only an ending is missing).
fn error_column(text: &str) -> usize {
    let viable = |end: usize| {
        COMPLETIONS
            .iter()
            .any(|ending| parser::parse(&format!("{}{ending}", &text[..end])).is_ok())
    };
    let longest = text
        .char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .rev()
        .find(|&end| viable(end))
        .unwrap_or(0);
    text[..longest].chars().count() + 1
}

/// A PromQL double-quoted string literal.
fn quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars() {
        match c {
            '\\' => quoted.push_str("\\\\"),
            '"' => quoted.push_str("\\\""),
            '\n' => quoted.push_str("\\n"),
            '\t' => quoted.push_str("\\t"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04x}", c as u32)),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

fn column_of(text: &str, needle: &str) -> usize {
    text.find(needle)
        .map(|i| text[..i].chars().count() + 1)
        .unwrap_or(1)
}

fn describe(expr: &Expr) -> &'static str {
    match expr {
        Expr::Aggregate(_) => "an aggregation",
        Expr::Unary(_) | Expr::Binary(_) => "an arithmetic expression",
        Expr::Paren(_) => "a parenthesised expression",
        Expr::Subquery(_) => "a subquery",
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => "a literal",
        Expr::MatrixSelector(_) => "a range selector",
        Expr::Call(_) => "a function call",
        _ => "this expression",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Selectors are user input: any text is accepted or refused with a column, never a panic.
    #[test]
    fn fuzz_promql_selectors() {
        bolero::check!().for_each(|bytes: &[u8]| {
            if let Ok(text) = std::str::from_utf8(bytes)
                && let Err(error) = vector_selector("spec.indicator.ratio.total", text)
            {
                assert!(!error.to_string().is_empty());
            }
        });
    }

    #[test]
    fn plain_selectors_are_canonicalised() {
        let s = vector_selector("f", r#"http_requests_total{ job="api", code=~"5.." }"#).unwrap();
        assert_eq!(s.metric, "http_requests_total");
        assert_eq!(s.matchers, r#"{job="api",code=~"5.."}"#);
        assert_eq!(
            s.render("_bucket", Some(r#"le="0.3""#)),
            r#"http_requests_total_bucket{job="api",code=~"5..",le="0.3"}"#
        );
        let escaped = vector_selector("f", r#"x{path="a\"b\\c"}"#).unwrap();
        assert_eq!(escaped.matchers, r#"{path="a\"b\\c"}"#);
        let bare = vector_selector("f", "up").unwrap();
        assert_eq!(bare.render("", None), "up");
        assert_eq!(
            bare.render("_count", Some(r#"le="1""#)),
            r#"up_count{le="1"}"#
        );
    }

    #[test]
    fn syntax_errors_name_field_and_column() {
        let e = vector_selector(
            "spec.indicator.ratio.errors",
            r#"http_requests_total{code=="5xx"}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.indicator.ratio.errors");
        assert_eq!(e.column, 26, "{e}");
        assert!(
            e.to_string()
                .starts_with("spec.indicator.ratio.errors: column 26: "),
            "{e}"
        );

        let unterminated = vector_selector("f", r#"x{job="api""#).unwrap_err();
        assert_eq!(unterminated.column, 12, "{unterminated}");

        let junk = vector_selector("f", "x y").unwrap_err();
        assert_eq!(junk.column, 3, "{junk}");
    }

    #[test]
    fn anything_but_a_plain_selector_is_refused_with_the_reason() {
        let rate = vector_selector("f", "rate(x[5m])").unwrap_err();
        assert!(rate.message.contains("a function call"), "{rate}");
        let sum = vector_selector("f", "sum(x)").unwrap_err();
        assert!(sum.message.contains("an aggregation"), "{sum}");
        let offset = vector_selector("f", "x offset 5m").unwrap_err();
        assert_eq!(offset.column, 3, "{offset}");
        let unnamed = vector_selector("f", r#"{job="api"}"#).unwrap_err();
        assert!(unnamed.message.contains("name the metric"), "{unnamed}");
    }
}
