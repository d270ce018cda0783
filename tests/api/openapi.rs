//! `GET /openapi.json`: the whole HTTP surface is documented, and the schemas agree with what
//! the server really sends.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{TestApp, spawn_app};

async fn document(app: &TestApp) -> Value {
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("the document is JSON")
}

/// The schema a `$ref` points to, or the schema itself.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected $ref {reference}"));
            let target = &doc["components"]["schemas"][name];
            assert!(target.is_object(), "{reference} does not resolve");
            target
        }
        None => schema,
    }
}

/// The top-level properties and required fields of an object schema, through `$ref`, `allOf`
/// (a `#[serde(flatten)]`) and `oneOf` (an enum; every branch must have the same fields).
fn fields(doc: &Value, schema: &Value) -> (BTreeSet<String>, BTreeSet<String>) {
    let schema = resolve(doc, schema);
    let mut properties: BTreeSet<String> = schema["properties"]
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    let mut required: BTreeSet<String> = schema["required"]
        .as_array()
        .map(|r| r.iter().map(|f| f.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    for part in schema["allOf"].as_array().into_iter().flatten() {
        let (p, r) = fields(doc, part);
        properties.extend(p);
        required.extend(r);
    }
    if let Some(branches) = schema["oneOf"].as_array() {
        let mut sets = branches.iter().map(|b| fields(doc, b));
        let first = sets.next().expect("oneOf has branches");
        assert!(
            sets.all(|set| set == first),
            "oneOf branches differ: {schema}"
        );
        properties.extend(first.0);
        required.extend(first.1);
    }
    (properties, required)
}

fn keys(object: &Value) -> BTreeSet<String> {
    object
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {object}"))
        .keys()
        .cloned()
        .collect()
}

/// Every `$ref` anywhere in `value`.
fn references<'a>(value: &'a Value, found: &mut Vec<&'a Value>) {
    match value {
        Value::Object(map) => {
            if map.contains_key("$ref") {
                found.push(value);
            }
            map.values().for_each(|v| references(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, found)),
        _ => {}
    }
}

#[actix_web::test]
async fn the_document_lists_every_endpoint_with_its_method() {
    let app = spawn_app().await;

    let doc = document(&app).await;

    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "Belay");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let surface = [
        ("/v1/events", "get"),
        ("/v1/notifications", "get"),
        ("/v1/notifications/read", "post"),
        ("/v1/notify", "post"),
        ("/v1/broadcast", "post"),
        ("/v1/dev/token", "post"),
        ("/v1/dev/config", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ];
    for (path, method) in surface {
        let item = &doc["paths"][path];
        assert_eq!(keys(item), BTreeSet::from([method.to_owned()]), "{path}");
    }
    assert_eq!(doc["paths"].as_object().unwrap().len(), surface.len());
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["api_key"]["name"], "X-Api-Key");
    let mut found = Vec::new();
    references(&doc, &mut found);
    for reference in found {
        resolve(&doc, reference);
    }
}

#[actix_web::test]
async fn a_served_notification_has_exactly_the_fields_of_its_schema() {
    let app = spawn_app().await;
    let token = app.token("ana").await;
    app.like("ana", "p1", "bob").await;
    app.like("ana", "p1", "cy").await;

    let list = app.list(&token, "").await;
    let doc = document(&app).await;

    let schemas = &doc["components"]["schemas"];
    let (properties, required) = fields(&doc, &schemas["ListResponse"]);
    assert_eq!(keys(&list), properties);
    assert_eq!(required, properties, "every field of a page is always sent");
    let served = &list["notifications"][0];
    let (properties, required) = fields(&doc, &schemas["Notification"]);
    assert_eq!(keys(served), properties, "{served}");
    assert_eq!(
        required, properties,
        "every field of a notification is always sent"
    );
    let (properties, required) = fields(&doc, &schemas["PostLiked"]);
    assert_eq!(keys(&served["data"]), properties, "{served}");
    assert_eq!(required, properties, "every field of a like is always sent");
}
