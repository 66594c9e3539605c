//! Request bodies: JSON, or YAML when the content type says so; a full state's items as raw
//! JSON, each parsed when the store loads it.

use super::ApiError;
use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    Json,
    Yaml,
}

/// The body's format from its content type (JSON when it names none); an empty body is an error.
pub(super) fn body_format(headers: &HeaderMap, body: &Bytes) -> Result<Format, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let ct = ct.split(';').next().unwrap_or("").trim();
    if body.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty body: send the object as JSON or YAML",
        ));
    }
    match ct {
        "application/json" | "" => Ok(Format::Json),
        "application/yaml" | "application/x-yaml" | "text/yaml" => Ok(Format::Yaml),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content type {other:?}: send application/json or application/yaml"),
        )),
    }
}

fn malformed_json(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}"))
}

fn parse_yaml(body: &Bytes) -> Result<Value, ApiError> {
    serde_yaml::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed YAML: {e}")))
}

/// Parses a body as JSON, or YAML when the content type says so.
pub(super) fn parse_body(headers: &HeaderMap, body: &Bytes) -> Result<Value, ApiError> {
    match body_format(headers, body)? {
        Format::Json => serde_json::from_slice(body).map_err(malformed_json),
        Format::Yaml => parse_yaml(body),
    }
}

/// A full state's items: a List (`{"items": [...]}`) or a bare array of objects.
pub(super) enum StateItems<'a> {
    /// Of a JSON body: each item's text, parsed when the store loads it (a parsed copy of
    /// the whole state would be ~400 MB at 10,000 Services).
    Json(Vec<&'a RawValue>),
    /// Of a YAML body.
    Parsed(Vec<Value>),
}

fn not_a_list() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "send a List ({\"items\": [...]}) or a JSON array of objects",
    )
}

fn items_not_a_list() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "items: must be a list of objects",
    )
}

pub(super) fn state_items<'a>(format: Format, body: &'a Bytes) -> Result<StateItems<'a>, ApiError> {
    if format == Format::Yaml {
        return match parse_yaml(body)? {
            Value::Array(items) => Ok(StateItems::Parsed(items)),
            Value::Object(mut o) => match o.remove("items") {
                Some(Value::Array(items)) => Ok(StateItems::Parsed(items)),
                Some(Value::Null) | None => Ok(StateItems::Parsed(Vec::new())),
                Some(_) => Err(items_not_a_list()),
            },
            _ => Err(not_a_list()),
        };
    }
    #[derive(Deserialize)]
    struct List<'a> {
        #[serde(borrow, default)]
        items: Option<&'a RawValue>,
    }
    let text = std::str::from_utf8(body).map_err(malformed_json)?;
    let array = |t: &'a str| serde_json::from_str::<Vec<&'a RawValue>>(t);
    match text.trim_start().as_bytes().first() {
        Some(b'[') => Ok(StateItems::Json(array(text).map_err(malformed_json)?)),
        Some(b'{') => {
            let list: List = serde_json::from_str(text).map_err(malformed_json)?;
            match list.items.map(RawValue::get) {
                None | Some("null") => Ok(StateItems::Json(Vec::new())),
                Some(t) if t.starts_with('[') => {
                    Ok(StateItems::Json(array(t).map_err(malformed_json)?))
                }
                Some(_) => Err(items_not_a_list()),
            }
        }
        _ => {
            // valid JSON of another type, or not JSON at all
            serde_json::from_str::<&RawValue>(text).map_err(malformed_json)?;
            Err(not_a_list())
        }
    }
}

pub(super) fn body_or_error(
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Bytes, ApiError> {
    body.map_err(|e| ApiError::new(e.status(), format!("request body: {}", e.body_text())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn items(format: Format, body: &str) -> Result<Vec<Value>, (StatusCode, String)> {
        let body = Bytes::from(body.to_string());
        match state_items(format, &body) {
            Ok(StateItems::Json(raw)) => Ok(raw
                .iter()
                .map(|r| serde_json::from_str(r.get()).unwrap())
                .collect()),
            Ok(StateItems::Parsed(v)) => Ok(v),
            Err(e) => Err((e.status, e.body.to_string())),
        }
    }

    #[test]
    fn a_full_state_is_a_list_or_an_array_in_json_or_yaml() {
        let a = json!({"kind": "Namespace", "metadata": {"name": "a"}});
        let b = json!({"kind": "Namespace", "metadata": {"name": "b", "labels": {"x": "\"y\""}}});
        let both = vec![a.clone(), b.clone()];
        let list = json!({"kind": "List", "apiVersion": "v1", "items": [a, b]}).to_string();
        assert_eq!(items(Format::Json, &list), Ok(both.clone()));
        let array = format!(" \n[{a}, {b}]");
        assert_eq!(items(Format::Json, &array), Ok(both.clone()));
        assert_eq!(items(Format::Json, r#"{"kind": "List"}"#), Ok(vec![]));
        assert_eq!(items(Format::Json, r#"{"items": null}"#), Ok(vec![]));
        let yaml = "kind: List\nitems:\n- kind: Namespace\n  metadata: {name: a}\n";
        assert_eq!(items(Format::Yaml, yaml), Ok(vec![both[0].clone()]));
    }

    #[test]
    fn a_full_state_that_is_not_a_list_is_refused_with_why() {
        for (format, body, status, needle) in [
            (
                Format::Json,
                r#"{"items": 5}"#,
                422,
                "items: must be a list",
            ),
            (
                Format::Json,
                r#"{"items": {"a": 1}}"#,
                422,
                "items: must be a list",
            ),
            (Format::Json, "5", 422, "send a List"),
            (Format::Json, r#""x""#, 422, "send a List"),
            (Format::Json, "[1, 2", 400, "malformed JSON"),
            (Format::Json, r#"{"items": [1, }"#, 400, "malformed JSON"),
            (Format::Json, "nope", 400, "malformed JSON"),
            (Format::Yaml, "items: 5", 422, "items: must be a list"),
            (Format::Yaml, "- [", 400, "malformed YAML"),
        ] {
            let (s, why) = items(format, body).unwrap_err();
            assert_eq!(s.as_u16(), status, "{body}: {why}");
            assert!(why.contains(needle), "{body}: {why}");
        }
        let not_utf8 = Bytes::from_static(b"[\"\xff\"]");
        assert!(state_items(Format::Json, &not_utf8).is_err());
    }
}
