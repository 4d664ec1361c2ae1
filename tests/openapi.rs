//! The REST API as tools see it: every error is JSON with a code, and the OpenAPI
//! document at `/v1/openapi.json` matches what the real server answers.

use std::collections::BTreeSet;

use rollcall_tests::jwt::hs256;
use rollcall_tests::{Server, http_with};
use serde_json::{Value, json};

/// Resolves a `$ref` into `#/components/schemas`.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected $ref {reference}"));
            let target = &doc["components"]["schemas"][name];
            assert!(target.is_object(), "{reference} is not defined");
            target
        }
        None => schema,
    }
}

fn type_matches(name: &str, value: &Value) -> bool {
    match name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_u64() || value.is_i64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        other => panic!("unknown schema type {other}"),
    }
}

/// Checks `value` against the parts of JSON Schema the document uses: `type` (one or
/// a list), `required`, `properties` (no undocumented keys), `items`, `minimum`.
/// Returns what does not match, empty when everything does.
fn violations(doc: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let schema = resolve(doc, schema);
    let mut out = Vec::new();
    let types: Vec<&str> = match &schema["type"] {
        Value::String(name) => vec![name.as_str()],
        Value::Array(names) => names.iter().filter_map(Value::as_str).collect(),
        // No type: any JSON value (`data`).
        _ => return out,
    };
    if !types.iter().any(|t| type_matches(t, value)) {
        out.push(format!("{at}: {value} is not {types:?}"));
        return out;
    }
    if let (Some(minimum), Some(number)) = (schema["minimum"].as_f64(), value.as_f64()) {
        if number < minimum {
            out.push(format!("{at}: {number} < {minimum}"));
        }
    }
    if let Some(object) = value.as_object() {
        for key in schema["required"].as_array().into_iter().flatten() {
            let key = key.as_str().unwrap_or_default();
            if !object.contains_key(key) {
                out.push(format!("{at}: required key {key} missing"));
            }
        }
        // An object schema without `properties` (the OpenAPI document itself) takes
        // any keys.
        let properties = schema["properties"].as_object();
        for (key, item) in object.iter().filter(|_| properties.is_some()) {
            match properties.and_then(|p| p.get(key)) {
                Some(property) => {
                    out.extend(violations(doc, property, item, &format!("{at}.{key}")));
                }
                None => out.push(format!("{at}: undocumented key {key}")),
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate() {
            out.extend(violations(doc, items, item, &format!("{at}[{i}]")));
        }
    }
    out
}

/// The documented path template that `path` (without its query) instantiates.
fn template<'a>(doc: &'a Value, path: &str) -> &'a str {
    let path = path.split('?').next().unwrap_or(path);
    let segments: Vec<&str> = path.split('/').collect();
    doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .find(|template| {
            let parts: Vec<&str> = template.split('/').collect();
            parts.len() == segments.len()
                && parts
                    .iter()
                    .zip(&segments)
                    .all(|(t, s)| t == s || (t.starts_with('{') && t.ends_with('}')))
        })
        .unwrap_or_else(|| panic!("{path} matches no documented path"))
}

struct Checked {
    operations: BTreeSet<(String, String)>,
}

impl Checked {
    /// Calls the real server and checks the answer against the document: the status is
    /// documented for the operation, and the body matches its schema. Returns the body.
    fn call(
        &mut self,
        server: &Server,
        doc: &Value,
        request: (&str, &str, Option<&str>),
        headers: &[(&str, &str)],
        expected: u16,
    ) -> Value {
        let (method, path, body) = request;
        let (status, text) =
            http_with(server.addr, method, path, headers, body).expect("HTTP request");
        assert_eq!(status, expected, "{method} {path}: {text}");
        let template = template(doc, path);
        let operation = &doc["paths"][template][method.to_ascii_lowercase()];
        assert!(
            operation.is_object(),
            "{method} {template} is not documented"
        );
        let response = &operation["responses"][status.to_string()];
        assert!(
            response.is_object(),
            "{method} {template}: status {status} is not documented"
        );
        self.operations
            .insert((method.to_ascii_lowercase(), template.to_owned()));
        let Some(schema) = response["content"]["application/json"].get("schema") else {
            assert!(
                text.is_empty(),
                "{method} {template} {status}: undocumented body {text}"
            );
            return Value::Null;
        };
        let value: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path} {status}: not JSON ({e}): {text}"));
        let problems = violations(doc, schema, &value, "$");
        assert!(
            problems.is_empty(),
            "{method} {path} {status} does not match the document: {problems:?}"
        );
        value
    }
}

#[test]
fn the_openapi_document_matches_the_real_answers() {
    let open = Server::start();
    let guarded = Server::launch().auth_secret().start();

    let doc = open.get_json("/v1/openapi.json");
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["info"]["version"].is_string());
    let mut checked = Checked {
        operations: BTreeSet::new(),
    };
    let none: &[(&str, &str)] = &[];

    checked.call(&open, &doc, ("GET", "/v1/openapi.json", None), none, 200);
    let health = checked.call(&open, &doc, ("GET", "/healthz", None), none, 200);
    assert_eq!(health["status"], "ok");

    let beat = (
        "POST",
        "/v1/rooms/api%3Aa/heartbeat",
        Some(r#"{"data":{"x":1},"ttlMs":30000}"#),
    );
    let answer = checked.call(&open, &doc, beat, none, 200);
    let id = answer["clientId"].as_u64().unwrap();
    let room = checked.call(&open, &doc, ("GET", "/v1/rooms/api%3Aa", None), none, 200);
    assert_eq!(room["entries"][0]["clientId"], id);
    let users = ("GET", "/v1/rooms/api%3Aa/users", None);
    let users = checked.call(&open, &doc, users, none, 200);
    // A REST heartbeat has no user.
    assert_eq!(users["users"], json!([]));
    assert_eq!(users["anonymousEntries"], 1);
    let page = checked.call(&open, &doc, ("GET", "/v1/rooms?limit=10", None), none, 200);
    assert_eq!(page["rooms"], json!([{"room": "api:a", "entries": 1}]));
    assert_eq!(page["next"], Value::Null);
    let remove = format!("/v1/rooms/api%3Aa/entries/{id}");
    checked.call(&open, &doc, ("DELETE", &remove, None), none, 204);

    // Errors, each with its documented status and the error schema.
    let bad_ttl = (
        "POST",
        "/v1/rooms/api%3Aa/heartbeat",
        Some(r#"{"ttlMs":0}"#),
    );
    let error = checked.call(&open, &doc, bad_ttl, none, 400);
    assert_eq!(error["error"], "invalid_ttl");
    let huge = format!(r#"{{"data":"{}","ttlMs":1000}}"#, "x".repeat(10_000));
    let too_large = ("POST", "/v1/rooms/api%3Aa/heartbeat", Some(huge.as_str()));
    assert_eq!(
        checked.call(&open, &doc, too_large, none, 413)["error"],
        "data_too_large"
    );
    let bad_query = ("GET", "/v1/rooms?limit=abc", None);
    assert_eq!(
        checked.call(&open, &doc, bad_query, none, 400)["error"],
        "bad_request"
    );
    let bad_id = ("DELETE", "/v1/rooms/api%3Aa/entries/zero", None);
    assert_eq!(
        checked.call(&open, &doc, bad_id, none, 400)["error"],
        "bad_request"
    );
    let long_room = format!("/v1/rooms/{}", "r".repeat(300));
    assert_eq!(
        checked.call(&open, &doc, ("GET", &long_room, None), none, 400)["error"],
        "invalid_room"
    );

    // (The event stream's 200 is read in tests/sse.rs; here its documented errors.)
    let long_events = format!("/v1/rooms/{}/events", "r".repeat(300));
    assert_eq!(
        checked.call(&open, &doc, ("GET", &long_events, None), none, 400)["error"],
        "invalid_room"
    );

    // Auth errors on a server with auth on.
    let unauthorized = checked.call(&guarded, &doc, ("GET", "/v1/rooms", None), none, 401);
    assert_eq!(unauthorized["error"], "unauthorized");
    let token = hs256(
        &json!({"sub": "u", "exp": 4_000_000_000_u64, "rooms": {"read": ["api:*"], "write": []}}),
    );
    let bearer = format!("Bearer {token}");
    let reader = [("Authorization", bearer.as_str())];
    checked.call(
        &guarded,
        &doc,
        ("GET", "/v1/rooms/api%3Ab", None),
        &reader,
        200,
    );
    for (method, path) in [
        ("GET", "/v1/rooms"),
        ("GET", "/v1/rooms/other"),
        ("GET", "/v1/rooms/other/users"),
        ("DELETE", "/v1/rooms/api%3Ab/entries/1"),
    ] {
        let refused = checked.call(&guarded, &doc, (method, path, None), &reader, 403);
        assert_eq!(refused["error"], "forbidden", "{method} {path}");
    }

    // Every documented operation was called on the real server.
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| ["get", "post", "put", "delete", "patch"].contains(&k.as_str()))
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    assert_eq!(checked.operations, documented);
}

/// What axum answers itself (no such route, wrong method, a bad query string or path
/// parameter) is JSON with a code too, keeping the status and the `Allow` header.
#[test]
fn every_http_error_is_json_with_a_code() {
    let server = Server::start();
    let cases = [
        ("PUT", "/v1/rooms", 405, "method_not_allowed"),
        ("POST", "/v1/rooms/r", 405, "method_not_allowed"),
        ("DELETE", "/healthz", 405, "method_not_allowed"),
        ("GET", "/v1/nope", 404, "not_found"),
        ("GET", "/v1/rooms?limit=abc", 400, "bad_request"),
        ("GET", "/v1/rooms?limit=-1", 400, "bad_request"),
        ("DELETE", "/v1/rooms/r/entries/abc", 400, "bad_request"),
        ("GET", "/ws", 400, "bad_request"),
    ];
    for (method, path, status, code) in cases {
        let (got, body) = http_with(server.addr, method, path, &[], None).unwrap();
        assert_eq!(got, status, "{method} {path}: {body}");
        let value: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {body:?}"));
        assert_eq!(value["error"], code, "{method} {path}: {body}");
        assert!(
            value["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{method} {path}: {body}"
        );
    }
    // The 405 still says which methods the route takes.
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    std::io::Write::write_all(
        &mut stream,
        format!(
            "PUT /v1/rooms HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            server.addr
        )
        .as_bytes(),
    )
    .unwrap();
    let mut head = String::new();
    std::io::Read::read_to_string(&mut stream, &mut head).unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.contains("\r\nallow: get"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
}
