//! The HTTP face of `tallyd` (actix-web): routes, JSON shapes and errors.
//!
//! It talks to the [`crate::engine`] only; it never touches the domain's state itself.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::json;

use crate::config::{AuthConfig, LimitSettings};
use crate::engine::Engine;

pub mod auth;
pub mod metrics;
pub mod openapi;
pub mod problem;
mod v1;
pub mod wire;

use problem::Problem;

/// Declares every route once: registered with actix-web, and documented in
/// `/v1/openapi.json` from the same lines, so the two always agree.
macro_rules! api {
    ($( $method:ident $path:literal => $handler:path {
        $summary:literal, scope: $scope:expr, request: $req:expr, ok: $status:literal, response: $resp:expr
        $(, params: $params:expr)?
    } )*) => {
        /// Registers the routes on an actix-web app.
        pub fn routes(cfg: &mut web::ServiceConfig) {
            $( cfg.route($path, web::$method().to($handler)); )*
            methods_not_allowed(cfg);
        }

        /// Every route, documented.
        pub fn operations() -> Vec<openapi::Operation> {
            vec![$( openapi::Operation {
                method: stringify!($method),
                path: $path,
                summary: $summary,
                scope: $scope,
                params: &[$($params)?],
                request: $req,
                status: $status,
                response: $resp,
            }, )*]
        }
    };
}

use crate::domain::customer::{Credit, CustomerSpec, Discount};
use crate::domain::{CatalogVersionSpec, UsageEvent};
use crate::engine::alerts::Alert;
use crate::engine::bill_run::BillRunView;
use crate::engine::InvoiceDocument;
use crate::engine::{AccountStatement, DeadLetterView, IngestSummary, SegmentView};
use openapi::schema;

api! {
    get "/health" => health { "Liveness: the process answers.", scope: None, request: None, ok: 200, response: None }
    get "/ready" => ready { "Readiness: recovery has finished and traffic is accepted.", scope: None, request: None, ok: 200, response: None }
    get "/metrics" => metrics::render { "Prometheus text metrics.", scope: Some("read"), request: None, ok: 200, response: None }
    get "/v1/stats/latency" => latency_stats { "Latency per stage (parse, journal append, fsync, apply, query, bill run per customer), merged across threads: percentiles in microseconds and each HdrHistogram, encoded.", scope: Some("read"), request: None, ok: 200, response: Some(schema::<crate::engine::stats::LatencyReport>) }
    get "/v1/openapi.json" => openapi_json { "This document.", scope: Some("read"), request: None, ok: 200, response: None }
    get "/v1/partitions" => v1::partitions { "Partitions with their currency, segments, customers and accounts.", scope: Some("read"), request: None, ok: 200, response: Some(schema::<Vec<v1::PartitionView>>) }
    post "/v1/partitions" => v1::create_partition { "Creates a partition with its own currency and catalog, without a restart.", scope: Some("admin"), request: Some(schema::<crate::config::PartitionSpec>), ok: 201, response: Some(schema::<v1::PartitionView>) }
    get "/v1/partitions/{p}/catalog" => v1::get_catalog { "The catalog version in force (today, or `?at=YYYY-MM-DD`).", scope: Some("read"), request: None, ok: 200, response: Some(schema::<CatalogVersionSpec>) }
    put "/v1/partitions/{p}/catalog" => v1::put_catalog { "Publishes a catalog version effective from a date.", scope: Some("admin"), request: Some(schema::<CatalogVersionSpec>), ok: 201, response: Some(schema::<v1::Published>) }
    get "/v1/partitions/{p}/customers" => v1::list_customers { "Every customer with its accounts.", scope: Some("read"), request: None, ok: 200, response: Some(schema::<Vec<v1::CustomerItem>>) }
    post "/v1/partitions/{p}/customers" => v1::create_customer { "Creates a customer (or replaces its terms).", scope: Some("admin"), request: Some(schema::<CustomerSpec>), ok: 201, response: Some(schema::<v1::CustomerView>) }
    post "/v1/partitions/{p}/customers/bulk" => v1::bulk_customers { "Creates many customers: NDJSON or a JSON array; all or nothing.", scope: Some("admin"), request: Some(schema::<Vec<CustomerSpec>>), ok: 200, response: Some(schema::<v1::Created>) }
    get "/v1/partitions/{p}/customers/{c}" => v1::get_customer { "A customer's terms.", scope: Some("read"), request: None, ok: 200, response: Some(schema::<v1::CustomerView>) }
    put "/v1/partitions/{p}/customers/{c}/accounts/{a}" => v1::move_account { "Moves an account to this customer (or adds it); its usage moves too.", scope: Some("admin"), request: None, ok: 200, response: Some(schema::<v1::Moved>) }
    post "/v1/partitions/{p}/customers/{c}/credits" => v1::add_credit { "Grants a credit.", scope: Some("admin"), request: Some(schema::<Credit>), ok: 201, response: Some(schema::<Credit>) }
    post "/v1/partitions/{p}/customers/{c}/discounts" => v1::add_discount { "Grants a percentage discount.", scope: Some("admin"), request: Some(schema::<Discount>), ok: 201, response: Some(schema::<Discount>) }
    get "/v1/partitions/{p}/customers/{c}/bill" => v1::customer_bill { "The customer's running bill for the open period.", scope: Some("read"), request: None, ok: 200, response: Some(schema::<v1::CustomerBillView>) }
    get "/v1/partitions/{p}/accounts/{a}/bill" => v1::account_bill { "One account's share of its customer's running bill.", scope: Some("read"), request: None, ok: 200, response: Some(schema::<AccountStatement>) }
    post "/v1/partitions/{p}/bill-runs" => v1::start_bill_run { "Closes a period and bills every customer of the partition; idempotent per period.", scope: Some("admin"), request: Some(schema::<v1::BillRunRequest>), ok: 202, response: Some(schema::<BillRunView>) }
    get "/v1/partitions/{p}/bill-runs/{id}" => v1::get_bill_run { "A bill run's progress, rate and ETA; at the end its duration, totals and per-customer compute times.", scope: Some("read"), request: None, ok: 200, response: Some(schema::<BillRunView>) }
    get "/v1/partitions/{p}/invoices" => v1::list_invoices { "Invoices as NDJSON, by `period` and/or `customer`.", scope: Some("read"), request: None, ok: 200, response: None }
    get "/v1/partitions/{p}/invoices/{number}" => v1::get_invoice { "One invoice by number.", scope: Some("read"), request: None, ok: 200, response: Some(schema::<InvoiceDocument>) }
    get "/v1/partitions/{p}/alerts" => v1::list_alerts { "Budget alerts raised, oldest first (`?period=YYYY-MM` for one period).", scope: Some("read"), request: None, ok: 200, response: Some(schema::<Vec<Alert>>) }
    get "/v1/partitions/{p}/alerts/stream" => v1::stream_alerts { "Budget alerts as Server-Sent Events, from `Last-Event-ID` on.", scope: Some("read"), request: None, ok: 200, response: None }
    post "/v1/partitions/{p}/usage" => v1::ingest { "Ingests usage events (a JSON array or NDJSON); answered once durable.", scope: Some("ingest"), request: Some(schema::<Vec<UsageEvent>>), ok: 200, response: Some(schema::<IngestSummary>) }
    get "/v1/admin/segments" => segments { "Segments with their arbiter, state and load.", scope: Some("admin"), request: None, ok: 200, response: Some(schema::<SegmentReport>) }
    post "/v1/admin/snapshot" => snapshot { "Snapshots every segment now; the journal forgets what the snapshots cover.", scope: Some("admin"), request: None, ok: 200, response: None }
    post "/v1/admin/rebalance" => rebalance { "Runs one rebalancing round now.", scope: Some("admin"), request: None, ok: 202, response: None }
    get "/v1/admin/dead-letters" => dead_letters { "Commands that kept failing.", scope: Some("admin"), request: None, ok: 200, response: Some(schema::<Vec<DeadLetterView>>) }
    post "/v1/admin/dead-letters/{partition}/{id}/replay" => replay_dead_letter { "Applies a dead letter again.", scope: Some("admin"), request: None, ok: 200, response: None, params: ("id", openapi::uint64) }
}

/// The bound on responses streaming at once.
pub struct StreamSlots {
    used: Arc<std::sync::atomic::AtomicUsize>,
    max: usize,
}

/// One stream's slot, given back when the stream ends (or its client goes away).
pub struct StreamSlot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl StreamSlots {
    pub fn new(max: usize) -> StreamSlots {
        StreamSlots {
            used: Default::default(),
            max,
        }
    }

    /// A slot, or 429 when `limits.max_streams` are streaming already.
    pub fn acquire(&self) -> Result<StreamSlot, Problem> {
        use std::sync::atomic::Ordering;
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            if used >= self.max {
                let mut p = Problem::new(
                    actix_web::http::StatusCode::TOO_MANY_REQUESTS,
                    "too-many-streams",
                    "Too many streams",
                    format!(
                        "{} responses are streaming already (limits.max_streams); try again when one ends",
                        self.max
                    ),
                );
                p.retry_after = Some(1);
                return Err(p);
            }
            match self
                .used
                .compare_exchange_weak(used, used + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(StreamSlot(self.used.clone())),
                Err(now) => used = now,
            }
        }
    }
}

/// The document, built once.
async fn openapi_json() -> HttpResponse {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let body = DOCUMENT.get_or_init(|| openapi::document(&operations()).to_string());
    HttpResponse::Ok()
        .content_type("application/json")
        .body(body.as_str())
}

/// What `GET /v1/admin/segments` answers.
#[derive(serde::Serialize, schemars::JsonSchema)]
struct SegmentReport {
    arbiters: usize,
    moves: u64,
    restarts: u64,
    segments: Vec<SegmentView>,
}

/// Latency per stage since the process started.
async fn latency_stats() -> HttpResponse {
    HttpResponse::Ok().json(crate::engine::stats::latency_report())
}

/// Segments with their arbiter, state and load.
async fn segments(engine: Ready) -> HttpResponse {
    let (moves, restarts) = engine.moves_and_restarts();
    HttpResponse::Ok().json(SegmentReport {
        arbiters: engine.arbiters(),
        moves,
        restarts,
        segments: engine.segment_report().await,
    })
}

/// A snapshot of every partition, now: `{"partitions": {"aws": {"journal_kept_after": 812}}}`,
/// or 503 naming the partitions whose snapshot failed.
async fn snapshot(engine: Ready) -> Result<HttpResponse, Problem> {
    let results = engine.snapshot_all().await;
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(p, r)| r.as_ref().err().map(|e| format!("{p}: {e}")))
        .collect();
    if !failed.is_empty() {
        let mut problem = Problem::new(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            "snapshot-failed",
            "Snapshot failed",
            format!("{}; the journal keeps everything, try again", failed.join("; ")),
        );
        problem.retry_after = Some(1);
        return Err(problem);
    }
    let partitions: serde_json::Map<String, serde_json::Value> = results
        .into_iter()
        .map(|(p, r)| (p, json!({"journal_kept_after": r.unwrap_or_default()})))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "partitions": partitions })))
}

/// One rebalancing round, now.
async fn rebalance(engine: Ready) -> HttpResponse {
    HttpResponse::Accepted().json(json!({"moves_started": engine.rebalance_now().await}))
}

async fn dead_letters(engine: Ready) -> HttpResponse {
    HttpResponse::Ok().json(engine.dead_letters())
}

async fn replay_dead_letter(engine: Ready, path: web::Path<(String, u64)>) -> Result<HttpResponse, Problem> {
    let (partition, id) = path.into_inner();
    let outcome = engine.replay_dead_letter(&partition, id).await?;
    Ok(HttpResponse::Ok().json(json!({"replayed": id, "outcome": outcome})))
}

/// After every route: each path answers a method it does not have with 405 and the
/// methods it has in `Allow` (registered last, so a path's own routes match first).
fn methods_not_allowed(cfg: &mut web::ServiceConfig) {
    let mut allowed: Vec<(&'static str, Vec<String>)> = Vec::new();
    for op in operations() {
        let method = op.method.to_ascii_uppercase();
        match allowed.iter_mut().find(|(path, _)| *path == op.path) {
            Some((_, methods)) => methods.push(method),
            None => allowed.push((op.path, vec![method])),
        }
    }
    for (path, methods) in allowed {
        let allow = methods.join(", ");
        cfg.service(web::resource(path).to(move |req: actix_web::HttpRequest| {
            let allow = allow.clone();
            async move { method_not_allowed(&req, allow) }
        }));
    }
}

fn method_not_allowed(req: &actix_web::HttpRequest, allow: String) -> HttpResponse {
    let problem = Problem::new(
        actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        format!(
            "{} {} is not a route; this path takes {allow}",
            req.method(),
            req.path()
        ),
    );
    let mut response = actix_web::ResponseError::error_response(&problem);
    response.headers_mut().insert(
        actix_web::http::header::ALLOW,
        actix_web::http::header::HeaderValue::from_str(&allow).expect("method names are ASCII"),
    );
    response
}

async fn not_found(req: actix_web::HttpRequest) -> Result<HttpResponse, Problem> {
    Err(Problem::not_found(format!(
        "no route for {} {}; the routes are listed in docs/api.md and GET /v1/openapi.json",
        req.method(),
        req.path()
    )))
}

/// Liveness: the process answers.
async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Readiness: recovery has finished and the engine accepts traffic (503 before).
async fn ready(cell: web::Data<EngineCell>) -> HttpResponse {
    match cell.get() {
        Some(engine) => {
            HttpResponse::Ok().json(json!({"ready": true, "partitions": engine.partition_summaries().len()}))
        }
        None => HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .json(json!({"ready": false, "detail": "recovering from the journal"})),
    }
}

/// The engine, once it has recovered; empty while it recovers.
pub type EngineCell = std::sync::OnceLock<Arc<Engine>>;

/// Extracts the engine, or answers 503 while it is still recovering.
pub struct Ready(Arc<Engine>);

impl std::ops::Deref for Ready {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.0
    }
}

impl actix_web::FromRequest for Ready {
    type Error = Problem;
    type Future = std::future::Ready<Result<Ready, Problem>>;

    fn from_request(req: &actix_web::HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let engine = req
            .app_data::<web::Data<EngineCell>>()
            .and_then(|cell| cell.get().cloned());
        std::future::ready(engine.map(Ready).ok_or_else(|| {
            let mut p = Problem::new(
                actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
                "recovering",
                "Recovering",
                "tallyd is recovering its state from the journal; try again shortly (GET /ready says when)",
            );
            p.retry_after = Some(1);
            p
        }))
    }
}

/// Binds `listen` and serves until SIGINT or SIGTERM, then stops accepting, drains the
/// requests in flight and returns. The signal handlers are installed before the address
/// is bound, so a signal that follows the `listening on` line is never missed.
///
/// It listens before the engine has recovered, so `/health` answers at once and `/ready`
/// says when recovery is done; `startup` yields the engine (or why it could not start,
/// which stops the server and is returned as the error).
pub async fn serve(
    startup: impl std::future::Future<Output = Result<Arc<Engine>, String>> + 'static,
    auth: AuthConfig,
    limits: LimitSettings,
    listen: SocketAddr,
    workers: usize,
) -> std::io::Result<Option<Arc<Engine>>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let cell: web::Data<EngineCell> = web::Data::new(EngineCell::new());
    let data = cell.clone();
    let max_connections = limits.max_connections_per_worker;
    let limits = web::Data::new(limits);
    let auth = web::Data::new(auth);
    let http_metrics = web::Data::new(metrics::HttpMetrics::default());
    let streams = web::Data::new(StreamSlots::new(limits.max_streams));
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(limits.clone())
            .app_data(auth.clone())
            .app_data(http_metrics.clone())
            .app_data(streams.clone())
            .app_data(web::QueryConfig::default().error_handler(|e, _| {
                Problem::bad_request("invalid-query", "Invalid query string", e.to_string()).into()
            }))
            .app_data(web::PathConfig::default().error_handler(|e, _| {
                Problem::bad_request("invalid-path", "Invalid path", e.to_string()).into()
            }))
            .wrap(actix_web::middleware::from_fn(auth::check))
            .wrap(actix_web::middleware::from_fn(metrics::time))
            .configure(routes)
            .default_service(web::to(not_found))
    })
    .disable_signals()
    .max_connections(max_connections)
    .shutdown_timeout(30);
    if workers > 0 {
        server = server.workers(workers);
    }
    let server = server.bind(listen)?;
    for addr in server.addrs() {
        tracing::info!(%addr, "listening on {addr}");
    }
    let server = server.run();
    let handle = server.handle();
    let stopper = handle.clone();
    actix_rt::spawn(async move {
        let which = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        tracing::info!(signal = which, "stopping: draining requests in flight");
        stopper.stop(true).await;
    });
    let failure: Arc<std::sync::Mutex<Option<String>>> = Default::default();
    let failed = failure.clone();
    let recovering = cell.clone();
    actix_rt::spawn(async move {
        match startup.await {
            Ok(engine) => {
                let _ = recovering.set(engine);
                tracing::info!("start-up finished: ready");
            }
            Err(e) => {
                *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                handle.stop(false).await;
            }
        }
    });
    server.await?;
    if let Some(e) = failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(std::io::Error::other(e));
    }
    Ok(cell.get().cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_bounded_and_slots_come_back() {
        let slots = StreamSlots::new(2);
        let a = slots.acquire().unwrap();
        let _b = slots.acquire().unwrap();
        let refused = slots.acquire().err().expect("a third stream is refused");
        assert_eq!(refused.status, 429);
        assert_eq!(refused.retry_after, Some(1));
        drop(a);
        assert!(slots.acquire().is_ok(), "an ended stream gives its slot back");
    }
}
