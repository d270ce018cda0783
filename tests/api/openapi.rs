//! `GET /openapi.json`: the whole HTTP surface is documented, and the schemas agree with what
//! the server really sends.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::StatusCode;
use serde_json::{Value, json};

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

/// `served` carries exactly the properties of the schema `name`, and every one of them is
/// required except those in `optional` (left out when they do not apply).
fn assert_sent_as(doc: &Value, name: &str, served: &Value, optional: &[&str]) {
    let schema = &doc["components"]["schemas"][name];
    assert!(schema.is_object(), "no schema {name}");
    let (properties, required) = fields(doc, schema);
    assert_eq!(keys(served), properties, "{name}: {served}");
    let always: BTreeSet<String> = properties
        .iter()
        .filter(|p| !optional.contains(&p.as_str()))
        .cloned()
        .collect();
    assert_eq!(required, always, "{name}: the fields that are always sent");
}

async fn post_json(app: &TestApp, token: &str, path: &str, body: Value) -> Value {
    let response = app
        .client
        .post(app.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{path}: {body}");
    body
}

async fn get_json(app: &TestApp, token: &str, path: &str) -> Value {
    let response = app.get_as(token, path).await;
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    response.json().await.unwrap()
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
        ("/v1/presence", "get"),
        ("/v1/queue", "post"),
        ("/v1/queue", "delete"),
        ("/v1/me/match", "get"),
        ("/v1/challenges", "post"),
        ("/v1/challenges/{id}/accept", "post"),
        ("/v1/challenges/{id}/decline", "post"),
        ("/v1/matches/{id}", "get"),
        ("/v1/matches/{id}/ready", "post"),
        ("/v1/matches/{id}/cancel", "post"),
        ("/v1/matches/{id}/result", "post"),
        ("/v1/leaderboard", "get"),
        ("/v1/ascents", "post"),
        ("/v1/devices", "post"),
        ("/v1/devices", "get"),
        ("/v1/devices/{id}", "delete"),
        ("/v1/push/vapid-key", "get"),
        ("/v1/preferences", "get"),
        ("/v1/preferences", "put"),
        ("/v1/dev/token", "post"),
        ("/v1/dev/config", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ];
    let mut methods: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (path, method) in surface {
        methods.entry(path).or_default().insert(method.to_owned());
    }
    for (path, methods) in &methods {
        assert_eq!(&keys(&doc["paths"][path]), methods, "{path}");
    }
    assert_eq!(doc["paths"].as_object().unwrap().len(), methods.len());
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["api_key"]["name"], "X-Api-Key");
    let mut found = Vec::new();
    references(&doc, &mut found);
    for reference in found {
        resolve(&doc, reference);
    }
    // One schema per kind of event, which the stream's frames carry.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let kinds: Vec<&String> = schemas
        .keys()
        .filter(|k| k.ends_with("Event") && *k != "Event")
        .collect();
    assert_eq!(kinds.len(), 18, "{kinds:?}");
    let found = &schemas["MatchFoundEvent"];
    assert_eq!(found["properties"]["kind"]["enum"], json!(["match_found"]));
    assert!(
        found["properties"]["data"]["required"]
            .as_array()
            .unwrap()
            .contains(&json!("ready_deadline"))
    );
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

#[actix_web::test]
async fn every_refusal_is_an_error_body_and_every_climber_endpoint_takes_a_bearer_token() {
    let app = spawn_app().await;

    let doc = document(&app).await;

    let operations = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            let methods = item.as_object().unwrap();
            methods.iter().map(move |(method, op)| (path, method, op))
        });
    for (path, method, op) in operations {
        let at = format!("{method} {path}");
        if op["tags"] == json!(["user"]) {
            assert_eq!(op["security"], json!([{"bearer": []}]), "{at}");
        }
        let responses = op["responses"].as_object().unwrap();
        assert!(!responses.is_empty(), "{at}");
        for (status, response) in responses {
            let description = response["description"].as_str().unwrap_or_default();
            if status.as_str() < "400" {
                continue;
            }
            assert_eq!(
                response["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody",
                "{at} {status}"
            );
            assert!(
                description.starts_with('`'),
                "{at} {status} names its error kinds: {description}"
            );
        }
    }
    let path_params = |path: &str, method: &str| -> Vec<Value> {
        doc["paths"][path][method]["parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("{method} {path} has no parameters"))
            .iter()
            .filter(|p| p["in"] == "path")
            .cloned()
            .collect()
    };
    for (path, method) in [
        ("/v1/challenges/{id}/accept", "post"),
        ("/v1/challenges/{id}/decline", "post"),
        ("/v1/matches/{id}", "get"),
        ("/v1/matches/{id}/ready", "post"),
        ("/v1/matches/{id}/cancel", "post"),
        ("/v1/matches/{id}/result", "post"),
    ] {
        let params = path_params(path, method);
        assert_eq!(params.len(), 1, "{method} {path}: {params:?}");
        assert_eq!(params[0]["name"], "id");
        assert_eq!(params[0]["required"], true);
        assert_eq!(params[0]["schema"]["format"], "uuid", "{method} {path}");
    }
}

/// The links `names` of a response each name an operation of the document that takes an `id`
/// in its path, and their `$response.body#…` pointers find a value in `served`.
fn assert_links_resolve(
    doc: &Value,
    (path, method, status): (&str, &str, &str),
    names: &[&str],
    served: &Value,
) {
    let links = doc["paths"][path][method]["responses"][status]["links"]
        .as_object()
        .unwrap_or_else(|| panic!("{method} {path} {status} has links"));
    let operations: BTreeMap<&str, &Value> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, item)| {
            item.as_object()
                .unwrap()
                .values()
                .map(move |op| (op["operationId"].as_str().unwrap_or(p), op))
        })
        .collect();
    for name in names {
        let link = &links[*name];
        let target = operations
            .get(link["operationId"].as_str().unwrap())
            .unwrap_or_else(|| panic!("{name}: no operation {}", link["operationId"]));
        assert!(
            target["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "id" && p["in"] == "path"),
            "{name} targets an operation without an id"
        );
        let pointer = link["parameters"]["id"]
            .as_str()
            .unwrap()
            .strip_prefix("$response.body#")
            .unwrap();
        let value = served.pointer(pointer);
        assert!(
            value.is_some_and(Value::is_string),
            "{name}: {pointer} finds nothing in {served}"
        );
    }
}

#[actix_web::test]
async fn a_served_match_and_standing_have_exactly_the_fields_of_their_schemas() {
    let app = spawn_app().await;
    let ana = app.token("ana").await;
    let bob = app.token("bob").await;
    let queued = post_json(&app, &ana, "/v1/queue", json!({"discipline": "boulder"})).await;
    post_json(&app, &bob, "/v1/queue", json!({"discipline": "boulder"})).await;
    let standing = get_json(&app, &ana, "/v1/me/match").await;
    let match_id = standing["match"]["match_id"]
        .as_str()
        .unwrap_or_else(|| panic!("ana is in a match: {standing}"));
    let served = get_json(&app, &ana, &format!("/v1/matches/{match_id}")).await;
    let doc = document(&app).await;

    assert!(queued["queue"].is_object(), "{queued}");
    assert!(queued["match"].is_null(), "{queued}");
    assert_sent_as(&doc, "MeView", &queued, &[]);
    assert_sent_as(&doc, "QueueView", &queued["queue"], &[]);
    assert!(standing["queue"].is_null(), "{standing}");
    assert_sent_as(&doc, "MeView", &standing, &[]);
    assert_sent_as(&doc, "ChallengeLists", &standing["challenges"], &[]);
    assert_eq!(standing["match"], served);
    assert_eq!(served["status"], "ready_check");
    let match_links = ["GetMatch", "ReadyMatch", "CancelMatch", "ReportResult"];
    assert_links_resolve(
        &doc,
        ("/v1/me/match", "get", "200"),
        &match_links,
        &standing,
    );
    assert_sent_as(&doc, "Match", &served, &[]);
    let players = served["players"].as_array().unwrap();
    assert_eq!(players.len(), 2);
    for player in players {
        // A queue match: both players have a queue time.
        assert_sent_as(&doc, "Player", player, &["queued_since"]);
    }
}

#[actix_web::test]
async fn a_served_challenge_leaderboard_and_ascent_have_exactly_the_fields_of_their_schemas() {
    let app = spawn_app().await;
    let ana = app.token("ana").await;
    let bob = app.token("bob").await;
    // Only climbers who have signed in can be challenged.
    get_json(&app, &bob, "/v1/me/match").await;

    let challenge = post_json(
        &app,
        &ana,
        "/v1/challenges",
        json!({"opponent": "bob", "discipline": "lead"}),
    )
    .await;
    let standing = get_json(&app, &bob, "/v1/me/match").await;
    let board = get_json(&app, &ana, "/v1/leaderboard?discipline=boulder").await;
    let ascent = post_json(
        &app,
        &ana,
        "/v1/ascents",
        json!({"route_id": "r1", "discipline": "boulder", "grade": "6A"}),
    )
    .await;
    let doc = document(&app).await;

    assert_sent_as(&doc, "Challenge", &challenge, &[]);
    assert_eq!(standing["challenges"]["incoming"][0], challenge);
    let challenge_links = ["AcceptChallenge", "DeclineChallenge"];
    assert_links_resolve(
        &doc,
        ("/v1/challenges", "post", "201"),
        &challenge_links,
        &challenge,
    );
    assert_links_resolve(
        &doc,
        ("/v1/me/match", "get", "200"),
        &challenge_links,
        &standing,
    );
    assert_sent_as(&doc, "LeaderboardPage", &board, &[]);
    assert_sent_as(&doc, "AscentOutcome", &ascent, &[]);
}

/// The `required` lists of the branches of a component's `oneOf`.
fn branches_require(doc: &Value, name: &str) -> Vec<BTreeSet<String>> {
    doc["components"]["schemas"][name]["oneOf"]
        .as_array()
        .unwrap_or_else(|| panic!("{name} has no oneOf"))
        .iter()
        .map(|branch| fields(doc, branch).1)
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// Requests that the document allows are accepted, and those the server refuses the document
/// refuses too: the limits configured on this node, a body without a selector, an ascent
/// without a grade or a time, a notify item or broadcast without `data`.
#[actix_web::test]
async fn the_document_allows_what_the_server_accepts_and_refuses_what_it_refuses() {
    let app = crate::helpers::spawn_app_with(|s| {
        s.matchmaking.max_leaderboard_page = 7;
        s.limits.max_page = 9;
        s.limits.max_read_ids = 11;
        s.limits.max_batch = 13;
    })
    .await;
    let token = app.token("ana").await;
    let doc = document(&app).await;
    let limit_maximum = |path: &str| {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "limit")
            .map(|p| p["schema"]["maximum"].clone())
            .unwrap()
    };

    // The page sizes and list lengths of this node's settings.
    assert_eq!(limit_maximum("/v1/leaderboard"), 7);
    assert_eq!(limit_maximum("/v1/notifications"), 9);
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["ReadRequest"]["oneOf"][0]["properties"]["ids"]["maxItems"],
        11
    );
    assert_eq!(
        schemas["NotifyRequest"]["oneOf"][1]["properties"]["events"]["maxItems"],
        13
    );
    for (path, max) in [
        ("/v1/leaderboard?discipline=boulder&", 7),
        ("/v1/notifications?", 9),
    ] {
        let at_max = app.get_as(&token, &format!("{path}limit={max}")).await;
        assert_eq!(at_max.status(), StatusCode::OK, "{path}");
        let over = app
            .get_as(&token, &format!("{path}limit={}", max + 1))
            .await;
        assert_eq!(over.status(), StatusCode::BAD_REQUEST, "{path}");
    }

    // `after` and `before` together: a window, oldest first.
    for i in 1..=6 {
        app.like("ana", &format!("p{i}"), "bob").await;
    }
    let window = app.list(&token, "?after=1&before=5&limit=2").await;
    let cursors = |page: &Value| -> Vec<i64> {
        page["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["cursor"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(
        (cursors(&window), window["next"].clone()),
        (vec![2, 3], json!(3))
    );
    let rest = app.list(&token, "?after=3&before=5&limit=2").await;
    assert_eq!(
        (cursors(&rest), rest["next"].clone()),
        (vec![4], Value::Null)
    );

    // Exactly one selector to mark read; `{}` matches no branch, and the server refuses it.
    assert_eq!(
        branches_require(&doc, "ReadRequest"),
        [set(&["ids"]), set(&["up_to"]), set(&["all"])]
    );
    let empty = app
        .client
        .post(app.url("/v1/notifications/read"))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), StatusCode::BAD_REQUEST);

    // An ascent has a grade (boulder, lead: one branch each, with its scale's pattern) or a
    // time (speed).
    let ascent = branches_require(&doc, "AscentBody");
    let grade_pattern = |branch: usize| {
        let pattern = doc["components"]["schemas"]["AscentBody"]["oneOf"][branch]["properties"]
            ["grade"]["pattern"]
            .as_str()
            .unwrap();
        regex::Regex::new(pattern).unwrap()
    };
    assert!(grade_pattern(0).is_match("7a+") && grade_pattern(0).is_match("V5"));
    assert!(!grade_pattern(0).is_match("7a++") && !grade_pattern(0).is_match(""));
    assert!(grade_pattern(1).is_match("6B+") && !grade_pattern(1).is_match("V5"));
    assert_eq!(
        ascent,
        [
            set(&["route_id", "discipline", "grade"]),
            set(&["route_id", "discipline", "grade"]),
            set(&["route_id", "discipline", "time_ms"])
        ]
    );
    let neither = post_status(
        &app,
        &token,
        "/v1/ascents",
        json!({"route_id": "r1", "discipline": "boulder"}),
    )
    .await;
    assert_eq!(neither, StatusCode::BAD_REQUEST);

    // `data` is required of a notify item and of a broadcast.
    for name in ["NotifyItem", "BroadcastRequest"] {
        let (_, required) = fields(&doc, &schemas[name]);
        assert!(required.contains("data"), "{name}: {required:?}");
    }
    let no_data = app
        .notify(json!({"user_id": "ana", "kind": "post_liked"}))
        .await;
    assert_eq!(no_data.status(), StatusCode::BAD_REQUEST);
    let no_data = app
        .host_post("/v1/broadcast")
        .json(&json!({"kind": "new_post"}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_data.status(), StatusCode::BAD_REQUEST);
}

async fn post_status(app: &TestApp, token: &str, path: &str, body: Value) -> StatusCode {
    app.client
        .post(app.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
}
