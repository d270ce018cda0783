//! postgres backend (being built).

/// Not built yet.
pub struct PgStore;

impl PgStore {
    pub async fn connect(
        _url: &str,
        _max_connections: u32,
    ) -> anyhow::Result<std::convert::Infallible> {
        anyhow::bail!("the postgres backend is not built yet")
    }
}
