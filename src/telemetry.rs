//! Where logs and spans go: lines on standard output (`log_format`: text, or one JSON
//! object per line) and, with `otlp_endpoint`, every span exported to an OpenTelemetry
//! collector over OTLP/HTTP (protobuf) through `tracing-opentelemetry`: session creates,
//! browser launches, proxied connections and single actions, each with its session's id
//! and tenant where it has one.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::Config;

/// What must be flushed before the process ends.
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

/// Installs the process's subscriber from `config`; `RUST_LOG` sets the level of the log
/// lines (spans are exported at every level the filter lets through).
pub fn init(config: &Config) -> Result<Telemetry, String> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "cdpgate=info".into());
    let lines = if config.log_format == "json" {
        // Each line carries the spans it is in: a session's id and tenant among them.
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
    };
    let traces = if config.otlp_endpoint.is_empty() {
        None
    } else {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("{}/v1/traces", config.otlp_endpoint.trim_end_matches('/')))
            .build()
            .map_err(|e| format!("otlp_endpoint: {e}"))?;
        let resource = Resource::builder()
            .with_service_name("cdpgate")
            .with_attribute(opentelemetry::KeyValue::new(
                "service.instance.id",
                config.node_id.clone(),
            ))
            .build();
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build(),
        )
    };
    let spans = traces
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("cdpgate")));
    tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .with(spans)
        .try_init()
        .map_err(|e| e.to_string())?;
    Ok(Telemetry { traces })
}

impl Telemetry {
    /// Sends the spans still buffered (at shutdown).
    pub fn flush(self) {
        if let Some(provider) = self.traces
            && let Err(e) = provider.shutdown()
        {
            eprintln!("cdpgate: could not send the last spans: {e}");
        }
    }
}
