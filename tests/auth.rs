//! The authorisation matrix over real HTTP: scope × partition, unknown and missing
//! tokens, and the token never appearing in the log.

mod common;

use common::Daemon;
use sha2::{Digest, Sha256};

fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn config() -> String {
    let token = |name: &str, scopes: &str, partitions: &str| {
        format!(
            "[[auth.tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\nscopes = {scopes}\npartitions = {partitions}\n",
            hash(&format!("secret-{name}"))
        )
    };
    let mut c = String::from("[auth]\nenabled = true\n");
    c += &token("ingest-aws", r#"["ingest"]"#, r#"["aws"]"#);
    c += &token("read-all", r#"["read"]"#, r#"["*"]"#);
    c += &token("read-cn", r#"["read"]"#, r#"["aws-cn"]"#);
    c += &token("admin", r#"["admin", "read", "ingest"]"#, r#"["*"]"#);
    c += "[[partitions]]\nid = \"aws\"\ncurrency = \"USD\"\ncatalog = \"cloud-usd\"\ncustomers = \"sample-aws\"\nopen_period = \"2026-11\"\n";
    c += "[[partitions]]\nid = \"aws-cn\"\ncurrency = \"CNY\"\ncatalog = \"cloud-cny\"\ncustomers = \"sample-aws-cn\"\nopen_period = \"2026-11\"\n";
    c
}

const USAGE_AWS: &str = r#"[{"id": "e1", "account": "111111111111", "meter": "ec2.instance_hours", "quantity": 1, "time": "2026-11-03T10:00:00Z"}]"#;
const USAGE_CN: &str = r#"[{"id": "e1", "account": "710000000001", "meter": "ec2.instance_hours", "quantity": 1, "time": "2026-11-03T10:00:00Z"}]"#;

#[test]
fn scope_and_partition_matrix() {
    let d = Daemon::start_with("auth", Some(&config()));
    let call = |token: Option<&str>, method: &str, path: &str, body: &str| {
        let secret = token.map(|t| format!("secret-{t}"));
        let r = d.request_as(secret.as_deref(), method, path, "application/json", body);
        if r.status >= 400 {
            assert_eq!(r.content_type, "application/problem+json", "{}", r.body);
        }
        r.status
    };
    let bill_aws = "/v1/partitions/aws/customers/acme/bill";
    let bill_cn = "/v1/partitions/aws-cn/customers/zhongda/bill";
    // Open routes need no token.
    assert_eq!(call(None, "GET", "/health", ""), 200);
    assert_eq!(call(None, "GET", "/ready", ""), 200);
    // No token, or an unknown one: 401.
    assert_eq!(call(None, "GET", bill_aws, ""), 401);
    assert_eq!(call(Some("nobody"), "GET", bill_aws, ""), 401);
    let r = d.request("GET", bill_aws, "application/json", "");
    assert!(
        r.headers
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{}",
        r.headers
    );
    // ingest-aws: ingest in aws only, nothing else.
    assert_eq!(
        call(Some("ingest-aws"), "POST", "/v1/partitions/aws/usage", USAGE_AWS),
        200
    );
    assert_eq!(
        call(
            Some("ingest-aws"),
            "POST",
            "/v1/partitions/aws-cn/usage",
            USAGE_CN
        ),
        403
    );
    assert_eq!(call(Some("ingest-aws"), "GET", bill_aws, ""), 403);
    // read-all: reads everywhere, never writes.
    assert_eq!(call(Some("read-all"), "GET", bill_aws, ""), 200);
    assert_eq!(call(Some("read-all"), "GET", bill_cn, ""), 200);
    assert_eq!(
        call(Some("read-all"), "POST", "/v1/partitions/aws/usage", USAGE_AWS),
        403
    );
    assert_eq!(call(Some("read-all"), "GET", "/v1/admin/segments", ""), 403);
    // read-cn: reads in aws-cn only.
    assert_eq!(call(Some("read-cn"), "GET", bill_cn, ""), 200);
    assert_eq!(call(Some("read-cn"), "GET", bill_aws, ""), 403);
    // Escaped paths are judged as the router decodes them.
    assert_eq!(call(Some("read-all"), "GET", "/v1/%61dmin/dead-letters", ""), 403);
    assert_eq!(
        call(
            Some("read-cn"),
            "GET",
            "/v1/p%61rtitions/aws/customers/acme/bill",
            ""
        ),
        403
    );
    // admin: everything.
    assert_eq!(call(Some("admin"), "GET", "/v1/admin/segments", ""), 200);
    assert_eq!(
        call(Some("admin"), "POST", "/v1/partitions/aws-cn/usage", USAGE_CN),
        200
    );
    assert_eq!(
        call(
            Some("admin"),
            "POST",
            "/v1/partitions/aws/customers",
            r#"{"id": "new", "payer": "900000000001"}"#
        ),
        201
    );
    // The refused ingest changed nothing; the accepted ones counted once each.
    let r = d.request_as(Some("secret-read-all"), "GET", bill_aws, "application/json", "");
    assert!(r.body.contains("\"quantity\":\"1\""), "{}", r.body);
    // Tokens never reach the log.
    let log = d.log.lock().unwrap().join("\n");
    assert!(!log.contains("secret-"), "a token was logged");
    assert!(log.contains("authentication on"));
}

#[test]
fn auth_off_is_refused_on_a_non_loopback_address() {
    let out = std::process::Command::new(common::TALLYD)
        .args(["check-config", "--listen", "0.0.0.0:8080"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("`auth.enabled`") && err.contains("not a loopback address"),
        "{err}"
    );
}
