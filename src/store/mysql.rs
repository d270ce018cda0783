//! mysql backend (being built).

/// Not built yet.
pub struct MySqlStore;

impl MySqlStore {
    pub async fn connect(
        _url: &str,
        _max_connections: u32,
    ) -> anyhow::Result<std::convert::Infallible> {
        anyhow::bail!("the mysql backend is not built yet")
    }
}
