//! The HTTP face of `tallyd` (actix-web): routes, JSON shapes and errors.
//!
//! It talks to the [`crate::engine`] only; it never touches the domain's state itself.

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::json;

use crate::config::{AuthConfig, LimitSettings};
use crate::engine::Engine;

pub mod auth;
pub mod metrics;
pub mod problem;
mod v1;
pub mod wire;

use problem::Problem;

/// Registers the routes on an actix-web app.
pub fn routes(cfg: &mut web::ServiceConfig) {
    v1::routes(cfg);
    cfg.route("/metrics", web::get().to(metrics::render))
        .route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready))
        .route("/v1/admin/segments", web::get().to(segments))
        .route("/v1/admin/rebalance", web::post().to(rebalance))
        .route("/v1/admin/dead-letters", web::get().to(dead_letters))
        .route(
            "/v1/admin/dead-letters/{partition}/{id}/replay",
            web::post().to(replay_dead_letter),
        );
}

/// Segments with their arbiter, state and load.
async fn segments(engine: web::Data<Engine>) -> HttpResponse {
    let (moves, restarts) = engine.moves_and_restarts();
    HttpResponse::Ok().json(json!({
        "arbiters": engine.arbiters(),
        "moves": moves,
        "restarts": restarts,
        "segments": engine.segment_report().await,
    }))
}

/// One rebalancing round, now.
async fn rebalance(engine: web::Data<Engine>) -> HttpResponse {
    HttpResponse::Accepted().json(json!({"moves_started": engine.rebalance_now().await}))
}

async fn dead_letters(engine: web::Data<Engine>) -> HttpResponse {
    HttpResponse::Ok().json(engine.dead_letters())
}

async fn replay_dead_letter(
    engine: web::Data<Engine>,
    path: web::Path<(String, u64)>,
) -> Result<HttpResponse, Problem> {
    let (partition, id) = path.into_inner();
    let outcome = engine.replay_dead_letter(&partition, id).await?;
    Ok(HttpResponse::Ok().json(json!({"replayed": id, "outcome": outcome})))
}

async fn not_found(req: actix_web::HttpRequest) -> Result<HttpResponse, Problem> {
    Err(Problem::not_found(format!(
        "no route for {} {}; the routes are listed in API.md",
        req.method(),
        req.path()
    )))
}

/// Liveness: the process answers.
async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Readiness: the engine has loaded its partitions and accepts traffic.
async fn ready(engine: web::Data<Engine>) -> HttpResponse {
    HttpResponse::Ok().json(json!({"ready": true, "partitions": engine.partition_summaries().len()}))
}

/// Binds `listen` and serves until SIGINT or SIGTERM, then stops accepting, drains the
/// requests in flight and returns. The signal handlers are installed before the address
/// is bound, so a signal that follows the `listening on` line is never missed.
pub async fn serve(
    engine: Arc<Engine>,
    auth: AuthConfig,
    limits: LimitSettings,
    listen: SocketAddr,
    workers: usize,
) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let data = web::Data::from(engine);
    let max_connections = limits.max_connections_per_worker;
    let limits = web::Data::new(limits);
    let auth = web::Data::new(auth);
    let http_metrics = web::Data::new(metrics::HttpMetrics::default());
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(limits.clone())
            .app_data(auth.clone())
            .app_data(http_metrics.clone())
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
    actix_rt::spawn(async move {
        let which = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        tracing::info!(signal = which, "stopping: draining requests in flight");
        handle.stop(true).await;
    });
    server.await
}
