//! Reading and writing a description in any of its three forms.

use serde::de::DeserializeOwned;

use crate::description::Description;
use crate::validate::{validate, FieldError, Form, InvalidDescription};
use crate::xml;

impl Form {
    /// Picks the form from an HTTP content type (`application/xml`, `text/xml`,
    /// `application/toml`, `application/json`), ignoring parameters.
    pub fn from_content_type(ct: &str) -> Option<Form> {
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/xml" | "text/xml" => Some(Form::Xml),
            "application/toml" | "text/toml" | "text/x-toml" => Some(Form::Toml),
            "application/json" => Some(Form::Json),
            _ => None,
        }
    }

    /// Picks the form from a file name's extension.
    pub fn from_extension(path: &str) -> Option<Form> {
        let ext = path.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "xml" => Some(Form::Xml),
            "toml" => Some(Form::Toml),
            "json" => Some(Form::Json),
            _ => None,
        }
    }

    /// Guesses the form from the document's first non-blank character.
    pub fn sniff(text: &str) -> Form {
        match text.trim_start().chars().next() {
            Some('<') => Form::Xml,
            Some('{') => Form::Json,
            _ => Form::Toml,
        }
    }

    /// The HTTP content type of this form.
    pub fn content_type(self) -> &'static str {
        match self {
            Form::Xml => "application/xml",
            Form::Toml => "application/toml",
            Form::Json => "application/json",
        }
    }
}

fn serde_error<E: std::fmt::Display>(path: String, e: E) -> InvalidDescription {
    let path = if path.is_empty() || path == "." {
        "(document)".to_string()
    } else {
        path
    };
    // toml prefixes messages with a location block; keep the last line, which says what is wrong.
    let message = e.to_string();
    let message = message
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(&message)
        .trim()
        .to_string();
    InvalidDescription(vec![FieldError { path, message }])
}

fn from_serde<'de, D, T>(de: D) -> Result<T, InvalidDescription>
where
    D: serde::Deserializer<'de>,
    D::Error: std::fmt::Display,
    T: DeserializeOwned,
{
    serde_path_to_error::deserialize(de).map_err(|e| serde_error(e.path().to_string(), e.inner()))
}

/// A TOML error the parser raised before any field was read (a number
/// too large for its type, say) names the key on the line it points at,
/// under the table above it, rather than the whole document.
fn toml_key(text: &str, mut e: InvalidDescription) -> InvalidDescription {
    let Some(first) = e.0.first_mut() else {
        return e;
    };
    // Reparsed as a plain table for the parser's own location.
    let span = text.parse::<toml::Table>().err().and_then(|er| er.span());
    let (true, Some(span)) = (first.path == "(document)", span) else {
        return e;
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.rsplit('\n').next().unwrap_or("");
    if let Some((key, _)) = line.split_once('=') {
        let table = before
            .lines()
            .rev()
            .skip(1)
            .map(str::trim)
            .find(|l| l.starts_with('[') && l.ends_with(']'))
            .map(|t| t.trim_matches(|c| c == '[' || c == ']').trim().to_string());
        let key = key.trim().trim_matches('"');
        first.path = match table {
            Some(t) => format!("{t}.{key}"),
            None => key.to_string(),
        };
    }
    e
}

/// Parses a description in the given form and validates it.
pub fn parse(text: &str, form: Form) -> Result<Description, InvalidDescription> {
    let d = match form {
        Form::Xml => xml::from_xml(text)?,
        Form::Json => from_serde(&mut serde_json::Deserializer::from_str(text))?,
        Form::Toml => from_serde(toml::Deserializer::new(text)).map_err(|e| toml_key(text, e))?,
    };
    validate(&d, form)?;
    Ok(d)
}

/// Writes a description in the given form.
pub fn write(d: &Description, form: Form) -> String {
    match form {
        Form::Xml => xml::to_xml(d),
        Form::Json => serde_json::to_string_pretty(d).expect("descriptions serialize to JSON"),
        Form::Toml => toml::to_string_pretty(d).expect("descriptions serialize to TOML"),
    }
}
