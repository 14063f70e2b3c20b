//! Request bodies on the wire: JSON arrays or NDJSON, read within a size limit, and
//! parsed item by item so that every error names the item's index and field.
//!
//! Quantities are taken from the JSON text itself (`0.1` stays one tenth): numbers are
//! never read through a binary float.

use std::borrow::Cow;
use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::problem::{ItemError, Problem};
use crate::domain::usage::{RawQuantity, RawUsageEvent};
use crate::domain::UsageEvent;

/// Reads the whole body, refusing it with 413 past `limit` bytes.
pub async fn read_body(mut payload: web::Payload, limit: usize) -> Result<web::BytesMut, Problem> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| Problem::bad_request("unreadable-body", "Unreadable body", e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Request body too large",
                format!("the body is over the limit of {limit} bytes (limits.max_body_bytes); send smaller batches"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Whether the request says its body is NDJSON.
pub fn is_ndjson(req: &HttpRequest) -> bool {
    req.headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-ndjson") || v.starts_with("application/ndjson"))
}

/// Splits a body into its items' raw JSON: the elements of an array, or the non-empty
/// lines of NDJSON. At most `max_items`.
pub fn items(body: &[u8], ndjson: bool, max_items: usize) -> Result<Vec<&RawValue>, Problem> {
    let text = std::str::from_utf8(body).map_err(|e| {
        Problem::bad_request(
            "malformed-json",
            "Malformed JSON",
            format!("the body is not UTF-8: {e}"),
        )
    })?;
    if text.trim().is_empty() {
        return Err(Problem::bad_request(
            "empty-body",
            "Empty body",
            "the body is empty: send a JSON array, or NDJSON with one item a line",
        ));
    }
    let items: Vec<&RawValue> = if ndjson {
        let mut items = Vec::new();
        for (line_no, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            if items.len() == max_items {
                return Err(too_many(max_items));
            }
            let raw: &RawValue = serde_json::from_str(line).map_err(|e| {
                Problem::bad_request(
                    "malformed-json",
                    "Malformed JSON",
                    format!("line {} is not valid JSON: {e}", line_no + 1),
                )
            })?;
            items.push(raw);
        }
        items
    } else {
        let items: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| {
            Problem::bad_request(
                "malformed-json",
                "Malformed JSON",
                format!("the body is not a JSON array of objects: {e} (send NDJSON with Content-Type: application/x-ndjson)"),
            )
        })?;
        if items.len() > max_items {
            return Err(too_many(max_items));
        }
        items
    };
    Ok(items)
}

fn too_many(max: usize) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too-many-items",
        "Too many items",
        format!("a request carries at most {max} items (limits.max_events_per_request); split the batch"),
    )
}

/// Parses one item as `T`, reporting a failure as an error of item `index`.
pub fn parse_item<T: DeserializeOwned>(raw: &RawValue, index: usize) -> Result<T, ItemError> {
    serde_json::from_str(raw.get()).map_err(|e| ItemError {
        index,
        field: field_of(&e.to_string()),
        message: e.to_string(),
    })
}

/// The field a serde error message names, if it names one.
fn field_of(message: &str) -> String {
    for marker in ["missing field `", "unknown field `"] {
        if let Some(rest) = message.split(marker).nth(1) {
            return rest.split('`').next().unwrap_or("").to_owned();
        }
    }
    String::new()
}

/// A usage event as sent, every field still raw.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEvent<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    account: Option<&'a RawValue>,
    #[serde(borrow, default)]
    meter: Option<&'a RawValue>,
    #[serde(borrow, default)]
    quantity: Option<&'a RawValue>,
    #[serde(borrow, default)]
    time: Option<&'a RawValue>,
    #[serde(borrow, default)]
    dimensions: Option<&'a RawValue>,
}

fn kind_of(raw: &str) -> &'static str {
    match raw.trim_start().as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

fn string_field(
    name: &str,
    raw: Option<&RawValue>,
    index: usize,
    errors: &mut Vec<ItemError>,
) -> Option<String> {
    let raw = raw.filter(|r| r.get() != "null")?;
    match serde_json::from_str::<Cow<str>>(raw.get()) {
        Ok(s) => Some(s.into_owned()),
        Err(_) => {
            errors.push(ItemError {
                index,
                field: name.to_owned(),
                message: format!("must be a string, not {}", kind_of(raw.get())),
            });
            None
        }
    }
}

/// A well-formed usage event, read in one pass (the fast path of [`parse_usage`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainEvent<'a> {
    id: String,
    account: String,
    meter: String,
    #[serde(borrow)]
    quantity: &'a RawValue,
    time: String,
    #[serde(default)]
    dimensions: Option<BTreeMap<String, String>>,
}

impl PlainEvent<'_> {
    fn check(self) -> Option<UsageEvent> {
        let text = self.quantity.get().trim();
        let quantity = match kind_of(text) {
            "a number" => RawQuantity::Number(text.to_owned()),
            "a string" => RawQuantity::Text(serde_json::from_str::<String>(text).ok()?),
            _ => return None,
        };
        UsageEvent::validate(RawUsageEvent {
            id: Some(self.id),
            account: Some(self.account),
            meter: Some(self.meter),
            quantity: Some(quantity),
            time: Some(self.time),
            dimensions: self.dimensions,
        })
        .ok()
    }
}

/// Reads a batch whose every event is well formed in one pass over the body; `None`
/// for anything else (the caller then takes the slow path, which names every problem).
fn plain_usage(body: &str, ndjson: bool, max_items: usize) -> Option<Vec<UsageEvent>> {
    let plain: Vec<PlainEvent> = if ndjson {
        let mut plain = Vec::new();
        for line in body.lines().filter(|l| !l.trim().is_empty()) {
            plain.push(serde_json::from_str(line).ok()?);
        }
        plain
    } else {
        serde_json::from_str(body).ok()?
    };
    if plain.len() > max_items || plain.is_empty() {
        // Past the bound, or nothing (an empty body is refused): the slow path says so.
        return None;
    }
    plain.into_iter().map(PlainEvent::check).collect()
}

/// Parses and checks a batch of usage events: in one pass when every event is well
/// formed (nearly always); otherwise item by item, every problem of every event reported
/// together with its index and field.
pub fn parse_usage(body: &[u8], ndjson: bool, max_items: usize) -> Result<Vec<UsageEvent>, Problem> {
    if let Some(events) = std::str::from_utf8(body)
        .ok()
        .and_then(|text| plain_usage(text, ndjson, max_items))
    {
        return Ok(events);
    }
    let items = items(body, ndjson, max_items)?;
    usage_events(&items).map_err(|errors| {
        Problem::bad_request(
            "invalid-events",
            "Invalid events",
            format!(
                "{} problem(s) in the batch; nothing was applied: fix the events listed in `errors` and send the batch again",
                errors.len()
            ),
        )
        .with_errors(errors)
    })
}

/// Parses and checks the usage events of a batch; all the problems of all the events
/// are reported together, each with its index and field.
pub fn usage_events(items: &[&RawValue]) -> Result<Vec<UsageEvent>, Vec<ItemError>> {
    let mut errors = Vec::new();
    let mut events = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let wire: WireEvent = match serde_json::from_str(item.get()) {
            Ok(w) => w,
            Err(e) => {
                let message = e.to_string();
                errors.push(ItemError {
                    index,
                    field: field_of(&message),
                    message: if item.get().trim_start().starts_with('{') {
                        message
                    } else {
                        format!("each event must be a JSON object, not {}", kind_of(item.get()))
                    },
                });
                continue;
            }
        };
        let before = errors.len();
        let quantity = wire.quantity.filter(|r| r.get() != "null").map(|r| {
            let text = r.get().trim();
            match kind_of(text) {
                "a number" => RawQuantity::Number(text.to_owned()),
                "a string" => RawQuantity::Text(serde_json::from_str::<String>(text).unwrap_or_default()),
                other => RawQuantity::Other(other),
            }
        });
        let dimensions = match wire.dimensions.filter(|r| r.get() != "null") {
            None => None,
            Some(r) => match serde_json::from_str::<BTreeMap<String, String>>(r.get()) {
                Ok(d) => Some(d),
                Err(_) => {
                    errors.push(ItemError {
                        index,
                        field: "dimensions".into(),
                        message: "must be an object whose values are strings".into(),
                    });
                    None
                }
            },
        };
        let raw = RawUsageEvent {
            id: string_field("id", wire.id, index, &mut errors),
            account: string_field("account", wire.account, index, &mut errors),
            meter: string_field("meter", wire.meter, index, &mut errors),
            quantity,
            time: string_field("time", wire.time, index, &mut errors),
            dimensions,
        };
        if errors.len() > before {
            continue;
        }
        match UsageEvent::validate(raw) {
            Ok(e) => events.push(e),
            Err(field_errors) => errors.extend(field_errors.into_iter().map(|e| ItemError {
                index,
                field: e.field,
                message: e.message,
            })),
        }
    }
    if errors.is_empty() {
        Ok(events)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Vec<UsageEvent>, Vec<ItemError>> {
        let items = items(body.as_bytes(), false, 100).unwrap();
        usage_events(&items)
    }

    #[test]
    fn the_one_pass_reading_equals_the_item_by_item_one() {
        let array = r#"[
            {"id": "e1", "account": "a", "meter": "m", "quantity": 0.1, "time": "2026-11-03T10:00:00Z"},
            {"id": "e\u00e9\"2", "account": "b", "meter": "m", "quantity": "4096.000", "time": "2026-11-03T10:00:00+01:00",
             "dimensions": {"user": "u-7"}},
            {"id": "e3", "account": "c", "meter": "m", "quantity": 1e3, "time": "2026-11-03T10:00:00Z", "dimensions": null}
        ]"#;
        let ndjson = concat!(
            r#"{"id": "e1", "account": "a", "meter": "m", "quantity": 0.1, "time": "2026-11-03T10:00:00Z"}"#,
            "\n\n",
            r#"{"id": "e\u00e9\"2", "account": "b", "meter": "m", "quantity": "4096.000", "time": "2026-11-03T10:00:00+01:00", "dimensions": {"user": "u-7"}}"#,
            "\n",
            r#"{"id": "e3", "account": "c", "meter": "m", "quantity": 1e3, "time": "2026-11-03T10:00:00Z", "dimensions": null}"#,
            "\n"
        );
        let slow = parse(array).unwrap();
        assert_eq!(slow.len(), 3);
        assert_eq!(plain_usage(array, false, 100).unwrap(), slow);
        assert_eq!(plain_usage(ndjson, true, 100).unwrap(), slow);
        assert_eq!(parse_usage(array.as_bytes(), false, 100).unwrap(), slow);
        assert_eq!(slow[1].id, "e\u{e9}\"2");
        assert_eq!(slow[2].quantity.to_string(), "1000");
        // Past the item limit, or with any problem, the one-pass reading steps aside.
        assert!(plain_usage(array, false, 2).is_none());
        let bad = array.replace("\"quantity\": 0.1", "\"quantity\": -0.1");
        assert!(plain_usage(&bad, false, 100).is_none());
        let err = parse_usage(bad.as_bytes(), false, 100).unwrap_err();
        assert_eq!(err.status, 400);
    }

    #[test]
    fn numbers_are_read_exactly() {
        let events = parse(
            r#"[{"id": "e1", "account": "a", "meter": "m", "quantity": 0.1, "time": "2026-11-03T10:00:00Z"}]"#,
        )
        .unwrap();
        assert_eq!(events[0].quantity.to_string(), "0.1");
    }

    #[test]
    fn each_error_names_index_and_field() {
        let errors = parse(
            r#"[{"id": "e1", "account": "a", "meter": "m", "quantity": "1", "time": "2026-11-03T10:00:00Z"},
                {"id": "e2", "account": 7, "meter": "m", "quantity": "-1", "time": "2026-11-03T10:00:00Z"},
                {"id": "e3", "meter": "m", "quantity": true, "time": "yesterday"},
                {"id": "e4", "account": "a", "meter": "m", "quantitiy": "1", "time": "2026-11-03T10:00:00Z"},
                42]"#,
        )
        .unwrap_err();
        let got: Vec<(usize, &str)> = errors.iter().map(|e| (e.index, e.field.as_str())).collect();
        assert_eq!(
            got,
            [
                (1, "account"),
                (2, "account"),
                (2, "quantity"),
                (2, "time"),
                (3, "quantitiy"),
                (4, "")
            ]
        );
        assert!(errors[0].message.contains("must be a string, not a number"));
        assert!(errors[2].message.contains("not a boolean"));
        assert!(errors[5].message.contains("must be a JSON object"));
    }

    #[test]
    fn ndjson_and_limits() {
        let body = "{\"a\":1}\n\n{\"b\":2}\n";
        assert_eq!(items(body.as_bytes(), true, 10).unwrap().len(), 2);
        assert_eq!(items(body.as_bytes(), true, 1).unwrap_err().status, 413);
        assert_eq!(items(b"[1,2,3]", false, 2).unwrap_err().status, 413);
        let bad = items(b"{\"a\":1}\n{oops\n", true, 10).unwrap_err();
        assert!(bad.detail.contains("line 2"), "{}", bad.detail);
        assert_eq!(items(b"[{", false, 10).unwrap_err().status, 400);
        for empty in [&b""[..], b" \n\n"] {
            let refused = items(empty, true, 10).unwrap_err();
            assert_eq!(
                (refused.status, refused.kind.as_str()),
                (400, "https://tallyman.dev/problems/empty-body")
            );
        }
        assert!(
            items(b"[]", false, 10).unwrap().is_empty(),
            "an empty array is an empty batch"
        );
    }
}
