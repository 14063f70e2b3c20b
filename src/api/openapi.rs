//! `/v1/openapi.json`, generated from the code: the routes come from the same table that
//! registers them with actix-web (the `api!` macro in `super`), and the schemas from the
//! Rust types of the bodies (`schemars`), so neither can drift from what is served.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

/// Builds the schema of a body type, registering its definitions.
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// The schema of `T` (a `$ref` into `components/schemas` for named types).
pub fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// An unsigned 64-bit integer, its bounds stated (schemars names only the format).
pub fn uint64(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({"type": "integer", "minimum": 0, "maximum": u64::MAX})
}

/// An example of a path parameter, from the embedded default's sample partition and
/// customers (so that a client, or a fuzzer, reaches real resources).
fn path_example(name: &str) -> Option<&'static str> {
    match name {
        "p" | "partition" => Some("aws"),
        "c" => Some("acme"),
        "a" => Some("222222222222"),
        "number" => Some("aws-2026-11-000001"),
        _ => None,
    }
}

/// One documented route.
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    /// The scope a token needs (`None`: open route).
    pub scope: Option<&'static str>,
    /// Path parameters that are not plain strings, with their schemas.
    pub params: &'static [(&'static str, SchemaFn)],
    /// `application/json` request body, if any.
    pub request: Option<SchemaFn>,
    /// Status and body of the success answer.
    pub status: u16,
    pub response: Option<SchemaFn>,
}

/// The OpenAPI 3.1 document of `operations`.
pub fn document(operations: &[Operation]) -> Value {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    settings.meta_schema = None;
    let mut g = settings.into_generator();
    let problem = g.subschema_for::<super::problem::Problem>();
    let mut paths: Map<String, Value> = Map::new();
    for op in operations {
        let operation = operation(op, &mut g, &problem);
        paths
            .entry(op.path.to_string())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("path items are objects")
            .insert(op.method.to_string(), Value::Object(operation));
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Tallyman",
            "version": "1",
            "description": "The Tallyman v1 HTTP API: usage ingest, running bills, customers and catalogs. \
                            Money amounts are strings of decimal digits; quantities and prices are accepted \
                            as JSON numbers or strings and read exactly."
        },
        "paths": paths,
        "components": {
            "schemas": g.take_definitions(true),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        }
    })
}

/// The operation object of `op`: its summary, path parameters, security, request body
/// and responses (`problem`: the schema of every error answer).
fn operation(op: &Operation, g: &mut SchemaGenerator, problem: &Schema) -> Map<String, Value> {
    let mut operation = Map::new();
    operation.insert("summary".into(), json!(op.summary));
    let parameters = parameters(op, g);
    if !parameters.is_empty() {
        operation.insert("parameters".into(), json!(parameters));
    }
    match op.scope {
        Some(scope) => {
            operation.insert("security".into(), json!([{"bearer": []}]));
            operation.insert("x-scope".into(), json!(scope));
        }
        None => {
            operation.insert("security".into(), json!([]));
        }
    }
    if let Some(request) = op.request {
        operation.insert(
            "requestBody".into(),
            json!({"required": true, "content": {
                "application/json": {"schema": request(g)},
                "application/x-ndjson": {"schema": {"type": "string", "description": "one JSON value per line"}}
            }}),
        );
    }
    let ok = match op.response {
        Some(response) => {
            json!({"description": "success", "content": {"application/json": {"schema": response(g)}}})
        }
        None => json!({"description": "success"}),
    };
    operation.insert(
        "responses".into(),
        json!({
            op.status.to_string(): ok,
            "default": {"description": "an RFC 9457 problem", "content": {"application/problem+json": {"schema": problem.clone()}}}
        }),
    );
    operation
}

/// The path parameters of `op`, in the order of its path: plain strings unless
/// `op.params` gives their schema, with an example when there is one.
fn parameters(op: &Operation, g: &mut SchemaGenerator) -> Vec<Value> {
    op.path
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| {
            let schema = match op.params.iter().find(|(n, _)| *n == name) {
                Some((_, schema)) => serde_json::to_value(schema(g)).expect("a schema is JSON"),
                None => json!({"type": "string"}),
            };
            let mut parameter = json!({"name": name, "in": "path", "required": true, "schema": schema});
            if let Some(example) = path_example(name) {
                parameter["example"] = json!(example);
            }
            parameter
        })
        .collect()
}
