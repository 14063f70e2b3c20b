//! The `/v1` routes of API.md: partitions and catalogs, customers, usage, running bills.

use actix_web::{web, HttpRequest, HttpResponse};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::problem::{ItemError, Problem};
use super::wire;
use super::Ready;
use crate::config::LimitSettings;
use crate::domain::customer::{Credit, Discount};
use crate::domain::invoice::{
    AccountBill, AdjustmentLine, CommitmentLine, CreditLine, DiscountLine, MeterLine,
};
use crate::domain::{Bill, CatalogVersionSpec, Currency, Customer, CustomerSpec, Period};
use crate::engine::{Engine, EngineError, PartitionEngine};

fn partition(engine: &Engine, id: &str) -> Result<std::sync::Arc<PartitionEngine>, Problem> {
    engine.partition(id).map_err(Problem::from)
}

/// Reads a JSON body within the size limit and parses it as `T`.
async fn read_json<T: serde::de::DeserializeOwned>(
    payload: web::Payload,
    limits: &LimitSettings,
) -> Result<T, Problem> {
    json_body(&wire::read_body(payload, limits.max_body_bytes).await?)
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    serde_json::from_slice(body).map_err(|e| {
        let message = e.to_string();
        let kind = if e.is_data() {
            "invalid-field"
        } else {
            "malformed-json"
        };
        let title = if e.is_data() {
            "Invalid field"
        } else {
            "Malformed JSON"
        };
        Problem::bad_request(kind, title, message)
    })
}

/// A partition as `GET /v1/partitions` lists it.
#[derive(Serialize, schemars::JsonSchema)]
pub(super) struct PartitionView {
    id: String,
    currency: String,
    /// The IANA time zone its periods are calendar months of.
    time_zone: String,
    segments: u32,
    customers: usize,
    accounts: usize,
    open_period: Period,
}

impl PartitionView {
    fn of(p: &crate::engine::PartitionEngine) -> PartitionView {
        let s = p.summary();
        PartitionView {
            id: s.id,
            currency: s.currency,
            time_zone: s.time_zone,
            segments: s.segments,
            customers: s.customers,
            accounts: s.accounts,
            open_period: p.period(),
        }
    }
}

pub(super) async fn partitions(engine: Ready) -> HttpResponse {
    let views: Vec<PartitionView> = engine.partitions().iter().map(|p| PartitionView::of(p)).collect();
    HttpResponse::Ok().json(views)
}

/// Creates a partition (a new client realm, its own catalog and currency) while the
/// others run.
pub(super) async fn create_partition(
    engine: Ready,
    limits: web::Data<LimitSettings>,
    payload: web::Payload,
) -> Result<HttpResponse, Problem> {
    let spec: crate::config::PartitionSpec = read_json(payload, &limits).await?;
    let summary = engine.create_partition(spec).await?;
    let p = engine.partition(&summary.id).map_err(Problem::from)?;
    Ok(HttpResponse::Created().json(PartitionView::of(&p)))
}

#[derive(Deserialize)]
pub(super) struct At {
    at: Option<String>,
}

pub(super) async fn get_catalog(
    engine: Ready,
    path: web::Path<String>,
    query: web::Query<At>,
) -> Result<HttpResponse, Problem> {
    let p = partition(&engine, &path)?;
    let date = match &query.at {
        Some(text) => Some(text.parse::<chrono::NaiveDate>().map_err(|_| {
            Problem::bad_request(
                "invalid-field",
                "Invalid field",
                format!("at: {text:?} is not a date such as 2026-11-01"),
            )
        })?),
        None => None,
    };
    Ok(HttpResponse::Ok().json(p.catalog_at(date)?))
}

pub(super) async fn put_catalog(
    engine: Ready,
    limits: web::Data<LimitSettings>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, Problem> {
    let p = partition(&engine, &path)?;
    let spec: CatalogVersionSpec = read_json(payload, &limits).await?;
    let version = p.publish_catalog(&spec)?;
    Ok(HttpResponse::Created().json(Published {
        partition: p.id.clone(),
        version,
        effective_from: spec.effective_from,
    }))
}

/// A catalog version accepted.
#[derive(Serialize, schemars::JsonSchema)]
pub(super) struct Published {
    partition: String,
    version: u16,
    effective_from: chrono::NaiveDate,
}

/// A customer in a list.
#[derive(Serialize, schemars::JsonSchema)]
pub(super) struct CustomerItem {
    id: String,
    accounts: Vec<String>,
}

/// How many customers a bulk request created or updated.
#[derive(Serialize, schemars::JsonSchema)]
pub(super) struct Created {
    created: usize,
}

/// An account that changed customer (`from` is null when it was new).
#[derive(Serialize, schemars::JsonSchema)]
pub(super) struct Moved {
    account: String,
    customer: String,
    from: Option<String>,
}

/// A customer as the API shows it.
#[derive(Serialize, schemars::JsonSchema)]
pub(super) struct CustomerView {
    id: String,
    payer: String,
    accounts: Vec<String>,
    profile: String,
    tax_rate: Decimal,
    #[serde(skip_serializing_if = "Option::is_none")]
    commitment: Option<Decimal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    budget: Option<crate::domain::customer::Budget>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    account_budgets: std::collections::BTreeMap<String, crate::domain::customer::Budget>,
    discounts: Vec<Discount>,
    credits: Vec<Credit>,
}

impl From<Customer> for CustomerView {
    fn from(mut c: Customer) -> Self {
        let terms = c.take_terms();
        CustomerView {
            id: c.id.to_string(),
            payer: c.payer.to_string(),
            accounts: c.accounts.iter().map(|a| a.to_string()).collect(),
            profile: c.profile.to_string(),
            tax_rate: c.tax_rate,
            commitment: terms.commitment,
            budget: terms.budget,
            account_budgets: terms
                .account_budgets
                .into_iter()
                .map(|(a, b)| (a.to_string(), b))
                .collect(),
            discounts: terms.discounts.into(),
            credits: terms.credits.into(),
        }
    }
}

fn checked_customer(spec: CustomerSpec, currency: Currency) -> Result<Customer, Problem> {
    Customer::from_spec(spec, currency).map_err(|e| EngineError::Invalid(e).into())
}

pub(super) async fn list_customers(engine: Ready, path: web::Path<String>) -> Result<HttpResponse, Problem> {
    let p = partition(&engine, &path)?;
    let list: Vec<CustomerItem> = p
        .customer_list()
        .into_iter()
        .map(|(id, accounts)| CustomerItem { id, accounts })
        .collect();
    Ok(HttpResponse::Ok().json(list))
}

pub(super) async fn create_customer(
    engine: Ready,
    limits: web::Data<LimitSettings>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, Problem> {
    let p = partition(&engine, &path)?;
    let spec: CustomerSpec = read_json(payload, &limits).await?;
    let customer = checked_customer(spec, p.rounding().currency)?;
    p.upsert_customer(customer.clone()).await?;
    Ok(HttpResponse::Created().json(CustomerView::from(customer)))
}

pub(super) async fn bulk_customers(
    engine: Ready,
    limits: web::Data<LimitSettings>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, Problem> {
    let p = partition(&engine, &path)?;
    let body = wire::read_body(payload, limits.max_body_bytes).await?;
    // NDJSON, or a JSON array (which may sit on one line).
    let array = !wire::is_ndjson(&req) && body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let items = wire::items(&body, !array, limits.max_customers_per_request)?;
    let currency = p.rounding().currency;
    let mut customers = Vec::with_capacity(items.len());
    let mut errors: Vec<ItemError> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        match wire::parse_item::<CustomerSpec>(item, index) {
            Ok(spec) => match Customer::from_spec(spec, currency) {
                Ok(c) => customers.push(c),
                Err(e) => errors.push(ItemError {
                    index,
                    field: e.field,
                    message: e.message,
                }),
            },
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(Problem::bad_request(
            "invalid-customers",
            "Invalid customers",
            format!("{} invalid customer(s); nothing was created", errors.len()),
        )
        .with_errors(errors));
    }
    let count = customers.len();
    p.upsert_customers(customers).await?;
    Ok(HttpResponse::Ok().json(Created { created: count }))
}

pub(super) async fn get_customer(
    engine: Ready,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Problem> {
    let (p, c) = path.into_inner();
    let customer = partition(&engine, &p)?.customer(&c).await?;
    Ok(HttpResponse::Ok().json(CustomerView::from(customer)))
}

pub(super) async fn move_account(
    engine: Ready,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, Problem> {
    let (p, c, a) = path.into_inner();
    let from = partition(&engine, &p)?.move_account(&c, &a).await?;
    Ok(HttpResponse::Ok().json(Moved {
        account: a,
        customer: c,
        from,
    }))
}

pub(super) async fn add_credit(
    engine: Ready,
    limits: web::Data<LimitSettings>,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, Problem> {
    let (p, c) = path.into_inner();
    let p = partition(&engine, &p)?;
    let credit: Credit = read_json(payload, &limits).await?;
    p.add_credit(&c, credit.clone()).await?;
    Ok(HttpResponse::Created().json(credit))
}

pub(super) async fn add_discount(
    engine: Ready,
    limits: web::Data<LimitSettings>,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, Problem> {
    let (p, c) = path.into_inner();
    let p = partition(&engine, &p)?;
    let discount: Discount = read_json(payload, &limits).await?;
    p.add_discount(&c, discount.clone()).await?;
    Ok(HttpResponse::Created().json(discount))
}

/// A customer's running bill as API.md shows it.
#[derive(Serialize, schemars::JsonSchema)]
pub(super) struct CustomerBillView {
    customer: String,
    period: Period,
    currency: Currency,
    accounts: Vec<AccountBill>,
    lines: Vec<MeterLine>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    adjustments: Vec<AdjustmentLine>,
    discounts: Vec<DiscountLine>,
    credits: Vec<CreditLine>,
    #[serde(skip_serializing_if = "Option::is_none")]
    commitment: Option<CommitmentLine>,
    tax_rate: Decimal,
    tax: Decimal,
    subtotal: Decimal,
    total: Decimal,
}

impl From<Bill> for CustomerBillView {
    fn from(b: Bill) -> Self {
        CustomerBillView {
            customer: b.customer,
            period: b.period,
            currency: b.currency,
            accounts: b.accounts,
            lines: b.lines,
            adjustments: b.adjustments,
            discounts: b.discounts,
            credits: b.credits,
            commitment: b.commitment,
            tax_rate: b.tax.rate,
            tax: b.tax.amount,
            subtotal: b.subtotal,
            total: b.total,
        }
    }
}

pub(super) async fn customer_bill(
    engine: Ready,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Problem> {
    let (p, c) = path.into_inner();
    let bill = partition(&engine, &p)?.customer_bill(&c).await?;
    Ok(HttpResponse::Ok().json(CustomerBillView::from(bill)))
}

pub(super) async fn account_bill(
    engine: Ready,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Problem> {
    let (p, a) = path.into_inner();
    let statement = partition(&engine, &p)?.account_bill(&a).await?;
    Ok(HttpResponse::Ok().json(statement))
}

pub(super) async fn ingest(
    engine: Ready,
    limits: web::Data<LimitSettings>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, Problem> {
    let p = partition(&engine, &path)?;
    let body = wire::read_body(payload, limits.max_body_bytes).await?;
    let parsing = std::time::Instant::now();
    let events = wire::parse_usage(&body, wire::is_ndjson(&req), limits.max_events_per_request);
    crate::engine::stats::PARSE.record(parsing.elapsed());
    let events = events?;
    let summary = p.ingest(events).await?;
    Ok(HttpResponse::Ok().json(summary))
}

/// `POST /v1/partitions/{p}/bill-runs`.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BillRunRequest {
    /// The period to close, `YYYY-MM`: the open one (or one whose run is under way or done).
    period: Period,
}

pub(super) async fn start_bill_run(
    engine: Ready,
    limits: web::Data<LimitSettings>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, Problem> {
    let p = engine.partition_handle(&path).map_err(Problem::from)?;
    let request: BillRunRequest = read_json(payload, &limits).await?;
    let run = p.start_bill_run(request.period).await?;
    Ok(HttpResponse::Accepted().json(run))
}

pub(super) async fn get_bill_run(
    engine: Ready,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Problem> {
    let (p, id) = path.into_inner();
    match partition(&engine, &p)?.bill_run(&id) {
        Some(run) => Ok(HttpResponse::Ok().json(run)),
        None => Err(Problem::not_found(format!(
            "no bill run {id:?} in partition {p:?}; its id is `{p}-YYYY-MM`"
        ))),
    }
}

/// `GET /v1/partitions/{p}/invoices` filters.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InvoiceFilter {
    period: Option<Period>,
    customer: Option<String>,
}

/// A period's invoices as NDJSON, streamed from the store in chunks.
pub(super) async fn list_invoices(
    engine: Ready,
    streams: web::Data<super::StreamSlots>,
    path: web::Path<String>,
    filter: web::Query<InvoiceFilter>,
) -> Result<HttpResponse, Problem> {
    let p = engine.partition_handle(&path).map_err(Problem::from)?;
    let ndjson = "application/x-ndjson";
    let store_error = |e: String| Problem::from(EngineError::Unavailable(e));
    let filter = filter.into_inner();
    if let (Some(period), None) = (filter.period, &filter.customer) {
        // The whole period, straight from its file, 256 KiB at a time; the slot is
        // held until the stream ends or its client goes away.
        let slot = streams.acquire()?;
        let chunks = futures_util::stream::unfold((Some(0u64), slot), move |(from, slot)| {
            let p = p.clone();
            async move {
                let from = from?;
                match p.invoices().read_ndjson(period, from, 256 << 10) {
                    Ok((bytes, next)) if !bytes.is_empty() => {
                        Some((Ok::<_, actix_web::Error>(web::Bytes::from(bytes)), (next, slot)))
                    }
                    Ok(_) => None,
                    Err(e) => {
                        tracing::error!(error = %e, "reading invoices failed mid-stream");
                        Some((Err(actix_web::error::ErrorInternalServerError(e)), (None, slot)))
                    }
                }
            }
        });
        return Ok(HttpResponse::Ok().content_type(ndjson).streaming(chunks));
    }
    let periods: Vec<Period> = match filter.period {
        Some(period) => vec![period],
        None => p.invoices().periods(),
    };
    let mut body = Vec::new();
    for period in periods {
        match &filter.customer {
            Some(customer) => {
                if let Some(doc) = p.invoices().of_customer(period, customer).map_err(store_error)? {
                    serde_json::to_writer(&mut body, &doc).expect("plain data");
                    body.push(b'\n');
                }
            }
            None => {
                let mut from = Some(0);
                while let Some(at) = from {
                    let (bytes, next) = p
                        .invoices()
                        .read_ndjson(period, at, 1 << 20)
                        .map_err(store_error)?;
                    body.extend_from_slice(&bytes);
                    from = next;
                }
            }
        }
    }
    Ok(HttpResponse::Ok().content_type(ndjson).body(body))
}

pub(super) async fn get_invoice(
    engine: Ready,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Problem> {
    let (p, number) = path.into_inner();
    let found = partition(&engine, &p)?
        .invoices()
        .get(&number)
        .map_err(|e| Problem::from(EngineError::Unavailable(e)))?;
    match found {
        Some(doc) => Ok(HttpResponse::Ok().json(doc)),
        None => Err(Problem::not_found(format!(
            "no invoice {number:?} in partition {p:?}; numbers read `{p}-YYYY-MM-000001`"
        ))),
    }
}

/// `GET /v1/partitions/{p}/alerts` filter.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AlertFilter {
    period: Option<Period>,
}

pub(super) async fn list_alerts(
    engine: Ready,
    path: web::Path<String>,
    filter: web::Query<AlertFilter>,
) -> Result<HttpResponse, Problem> {
    let alerts = partition(&engine, &path)?.alerts().list(filter.period);
    Ok(HttpResponse::Ok().json(alerts))
}

/// Alerts as Server-Sent Events: first those after `Last-Event-ID` (all of them without
/// it), then each as it is raised; a comment every 15 s keeps idle connections open.
pub(super) async fn stream_alerts(
    engine: Ready,
    streams: web::Data<super::StreamSlots>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let book = engine
        .partition_handle(&path)
        .map_err(Problem::from)?
        .alerts()
        .clone();
    let from: u64 = match req.headers().get("last-event-id") {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| {
                Problem::bad_request(
                    "invalid-header",
                    "Invalid Last-Event-ID",
                    "Last-Event-ID must be the number of the last alert received",
                )
            })?,
    };
    let slot = streams.acquire()?;
    let watch = book.watch();
    let events = futures_util::stream::unfold(
        (from, watch, book, slot),
        |(mut sent, mut watch, book, slot)| async move {
            loop {
                let pending = book.after(sent);
                if !pending.is_empty() {
                    let mut chunk = String::new();
                    for alert in &pending {
                        let data = serde_json::to_string(&**alert).expect("plain data");
                        chunk.push_str(&format!("id: {}\nevent: alert\ndata: {data}\n\n", alert.seq));
                        sent = alert.seq;
                    }
                    return Some((
                        Ok::<_, actix_web::Error>(web::Bytes::from(chunk)),
                        (sent, watch, book, slot),
                    ));
                }
                match tokio::time::timeout(std::time::Duration::from_secs(15), watch.changed()).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => return None,
                    Err(_) => {
                        return Some((
                            Ok(web::Bytes::from_static(b": keep-alive\n\n")),
                            (sent, watch, book, slot),
                        ));
                    }
                }
            }
        },
    );
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(events))
}
