//! While the engine recovers, tallyd already answers: `/health` 200, `/ready` 503, and
//! every other route a 503 problem with Retry-After.

use actix_web::{test, web, App};
use tallyman::api::EngineCell;
use tallyman::config::{AuthConfig, Settings};

#[actix_web::test]
async fn before_recovery_finishes_only_health_is_ok() {
    let settings = Settings::load(None).unwrap().validate().unwrap();
    let app = test::init_service(
        App::new()
            .app_data(web::Data::new(EngineCell::new()))
            .app_data(web::Data::new(settings.limits.clone()))
            .app_data(web::Data::new(AuthConfig::default()))
            .configure(tallyman::api::routes),
    )
    .await;
    let call = |path: &'static str| test::TestRequest::get().uri(path).to_request();
    assert_eq!(test::call_service(&app, call("/health")).await.status(), 200);
    let ready = test::call_service(&app, call("/ready")).await;
    assert_eq!(ready.status(), 503);
    let r = test::call_service(&app, call("/v1/partitions")).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers().get("retry-after").unwrap(), "1");
    assert_eq!(
        r.headers().get("content-type").unwrap(),
        "application/problem+json"
    );
    let body: serde_json::Value = test::read_body_json(r).await;
    assert!(body["detail"].as_str().unwrap().contains("recovering"), "{body}");
}
