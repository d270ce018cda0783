//! The store backends the contract tests run against, each on a fresh database.

use std::sync::Arc;

use belay::domain::UserId;
use belay::store::{self, Store};

pub struct Backend {
    pub store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

/// Every backend this build has, each on its own fresh database.
pub async fn backends() -> Vec<(&'static str, Backend)> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/contract.db", dir.path().display());
    let sqlite = store::connect(&url, 4).await.unwrap();
    vec![(
        "sqlite",
        Backend {
            store: sqlite,
            _dir: dir,
        },
    )]
}

pub fn user(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}
