//! The user's notification list and read state.

use serde_json::{Value, json};

use crate::helpers::{spawn_app, spawn_app_with};

fn cursors(list: &Value) -> Vec<i64> {
    list["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["cursor"].as_i64().unwrap())
        .collect()
}

#[actix_web::test]
async fn the_list_pages_newest_first_or_after_a_cursor() {
    let app = spawn_app().await;
    let token = app.token("ana").await;
    for i in 1..=7 {
        app.like("ana", &format!("p{i}"), "bob").await;
    }

    let first = app.list(&token, "?limit=3").await;
    assert_eq!(cursors(&first), [7, 6, 5]);
    assert_eq!(first["next"], 5);
    assert_eq!(first["unread"], 7);
    let second = app.list(&token, "?limit=3&before=5").await;
    assert_eq!(cursors(&second), [4, 3, 2]);
    let last = app.list(&token, "?limit=3&before=2").await;
    assert_eq!(cursors(&last), [1]);
    assert_eq!(last["next"], Value::Null);

    let after = app.list(&token, "?after=4&limit=2").await;
    assert_eq!(cursors(&after), [5, 6]);
    assert_eq!(after["next"], 6);
}

#[actix_web::test]
async fn notifications_are_marked_read_by_id_up_to_a_cursor_or_all() {
    let app = spawn_app().await;
    let token = app.token("ana").await;
    let mut ids = Vec::new();
    for i in 1..=6 {
        ids.push(app.like("ana", &format!("p{i}"), "bob").await["id"].clone());
    }

    assert_eq!(
        app.mark_read(&token, json!({"ids": [ids[5], ids[4]]}))
            .await,
        json!({"updated": 2, "unread": 4})
    );
    assert_eq!(
        app.mark_read(&token, json!({"up_to": 2})).await,
        json!({"updated": 2, "unread": 2})
    );
    assert_eq!(cursors(&app.list(&token, "?unread=true").await), [4, 3]);
    assert_eq!(
        app.mark_read(&token, json!({"all": true})).await,
        json!({"updated": 2, "unread": 0})
    );
    assert_eq!(
        app.mark_read(&token, json!({"all": true})).await,
        json!({"updated": 0, "unread": 0})
    );
    let all = app.list(&token, "").await;
    assert!(
        all["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["read"] == true)
    );
}

#[actix_web::test]
async fn a_user_never_sees_or_changes_another_users_notifications() {
    let app = spawn_app().await;
    let ana = app.token("ana").await;
    let bob = app.token("bob").await;
    let anas = app.like("ana", "p1", "cy").await;

    assert_eq!(app.list(&bob, "").await["notifications"], json!([]));
    assert_eq!(
        app.mark_read(&bob, json!({"ids": [anas["id"]]})).await["updated"],
        0
    );
    assert_eq!(
        app.mark_read(&bob, json!({"all": true})).await["updated"],
        0
    );
    assert_eq!(app.list(&ana, "?unread=true").await["unread"], 1);
}

#[actix_web::test]
async fn metrics_show_the_database_size_and_the_rows_retention_deleted() {
    let app = spawn_app_with(|settings| {
        settings.retention.max_per_user = 1;
        settings.retention.every_secs = 1;
        settings.limits.idempotency_ttl_secs = 1;
    })
    .await;
    let token = app.token("ana").await;
    for i in 1..=3 {
        app.like("ana", &format!("p{i}"), "bob").await;
    }
    app.mark_read(&token, json!({"all": true})).await;

    // Read, older than the key lifetime and beyond the newest one: two go, the newest stays.
    app.wait_metric("belay_retention_deleted_total{rule=\"limit\"}", 2)
        .await;
    assert_eq!(
        app.metric("belay_retention_deleted_total{rule=\"age\"}")
            .await,
        0
    );
    assert_eq!(cursors(&app.list(&token, "").await), [3]);
    assert!(app.metric("belay_database_size_bytes").await > 0);
    // SQLite's caches live in this process; a database server's do not.
    let sqlite_memory = app.metric("belay_sqlite_memory_bytes").await;
    match crate::helpers::server_backend() {
        None => assert!(sqlite_memory > 0, "{sqlite_memory}"),
        Some(_) => assert_eq!(sqlite_memory, 0),
    }
}
