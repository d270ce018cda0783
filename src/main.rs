//! `belay [--config FILE]`: serves the API, the SSE streams and the demo page.
//! `belay vapid-keys`: prints a new VAPID key pair for Web Push.

use std::path::PathBuf;

use anyhow::Context;
use belay::config::Settings;
use belay::startup::Application;

const USAGE: &str = "usage: belay [--config FILE] | belay vapid-keys\n\
    Settings: config/default.toml (built in), then FILE (or $BELAY_CONFIG), then BELAY__SECTION__KEY variables.";

fn config_file() -> anyhow::Result<Option<PathBuf>> {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next()) {
        (None, _) => Ok(std::env::var_os("BELAY_CONFIG").map(PathBuf::from)),
        (Some("--config"), Some(path)) if args.next().is_none() => Ok(Some(PathBuf::from(path))),
        (Some("vapid-keys"), None) => {
            print_vapid_keys()?;
            std::process::exit(0);
        }
        (Some("-h" | "--help"), _) => {
            println!("{USAGE}");
            std::process::exit(0);
        }
        _ => anyhow::bail!("{USAGE}"),
    }
}

/// Prints a new VAPID pair as configuration lines: the private key is a secret for
/// `BELAY__PUSH__WEBPUSH__VAPID_PRIVATE_KEY`; the public key is what browsers subscribe with.
fn print_vapid_keys() -> anyhow::Result<()> {
    use secrecy::ExposeSecret;
    let keys = belay::push::webpush::generate_vapid_keys()
        .map_err(|e| anyhow::anyhow!("reading the system's random source: {e}"))?;
    println!(
        "BELAY__PUSH__WEBPUSH__VAPID_PRIVATE_KEY={}",
        keys.private_key.expose_secret()
    );
    println!(
        "# public key (GET /v1/push/vapid-key serves it): {}",
        keys.public_key
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let system = actix_web::rt::System::new();
    let runtime = system.runtime().tokio_runtime().handle().clone();
    let served = system.block_on(serve());
    // Tasks still waiting when the node ends are dropped with the system's task set, which goes
    // before its runtime does; one that waits on the database holds a pooled connection, whose
    // drop hands it back through the runtime. Inside the runtime's context that works (the
    // hand-back is cancelled as the runtime shuts down); outside it, the drop panics.
    let _inside = runtime.enter();
    drop(system);
    served
}

async fn serve() -> anyhow::Result<()> {
    let settings = Settings::load(config_file()?.as_deref())?;
    belay::telemetry::init(&settings.log.format);
    let app = Application::build(settings.clone())
        .await
        .context("starting Belay")?;
    tracing::info!(
        address = %format!("http://{}:{}", settings.server.host, app.port()),
        database = %settings.database.url_for_logs(),
        dev_tokens = settings.auth.dev_tokens,
        "Belay is listening"
    );
    if settings.auth.dev_tokens {
        tracing::warn!(
            "auth.dev_tokens is on: anyone who reaches this node can mint a token for any user \
             and read the host API key; turn it off outside development"
        );
    }
    app.run_until_stopped().await.context("serving")?;
    tracing::info!("stopped");
    Ok(())
}
