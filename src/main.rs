//! `cdpgate [CONFIG]`: reads the configuration (default `config.toml`), binds, serves.

use std::path::PathBuf;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let path = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("config.toml"));
    let config = match cdpgate::Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cdpgate: {e}");
            return ExitCode::from(2);
        }
    };
    let telemetry = match cdpgate::telemetry::init(&config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cdpgate: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("cannot start the async runtime");
    let code = serve(&runtime, config);
    drop(runtime);
    telemetry.flush();
    code
}

fn serve(runtime: &tokio::runtime::Runtime, config: cdpgate::Config) -> ExitCode {
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(config.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cdpgate: cannot listen on {}: {e}", config.listen);
                return ExitCode::from(1);
            }
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        let broker = match cdpgate::start(&listener, config, shutdown).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("cdpgate: {e}");
                return ExitCode::from(1);
            }
        };
        println!(
            "cdpgate: listening on {} (API at {})",
            listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            broker.urls().http
        );
        cdpgate::serve(listener, broker).await;
        ExitCode::SUCCESS
    })
}

/// First SIGINT or SIGTERM: graceful shutdown. Second: exit at once.
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("shutting down");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    std::process::exit(130);
}
