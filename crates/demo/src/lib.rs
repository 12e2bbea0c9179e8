//! `driftless demo`: the whole idea in one command, with nothing but this repository — the
//! customer-address scenario on SQLite services and the embedded log.
//!
//! A Customers service writes customers and outbox rows in one transaction; a `sqlite_outbox`
//! source relays them to the topic `customer`; CRM, Billing and Shipping keep SQLite projections
//! through mappings in their own language; a Fraud service receives signed webhooks (served by
//! the demo itself). Along the way the demo injects a poison event (it lands in Shipping's
//! dead-letter queue, Shipping fixes its schema, the event is retried), a Billing outage (its
//! database locked; the sink catches up) and a hand edit of CRM (reconciliation finds and
//! repairs it). It ends with a verdict: every projection equals what the source implies.
//!
//! Invariants: the demo drives Driftless only through its configuration and its HTTP API, as an
//! operator would; every wait is bounded (a step that does not finish fails the demo with what it
//! was waiting for); the verdict compares each projection row by row with the source.

pub mod customers;
pub mod fraud;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use driftless_broker::{Broker, BrokerConfig, TopicSpec};
use driftless_server::ServerConfig;
use serde_json::{json, Value};

use customers::{Customer, CustomersDb};

/// Longest wait for any one step.
pub const STEP_WAIT_MAX: Duration = Duration::from_secs(60);

/// Why the demo could not run (a failed verdict is not an error: it is the outcome).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A step failed.
    #[error("demo step `{0}` failed: {1}")]
    Step(&'static str, String),
    /// Waiting for something took longer than [`STEP_WAIT_MAX`].
    #[error("demo: timed out waiting for {0}")]
    Timeout(String),
}

impl DemoError {
    fn sqlite(step: &'static str) -> impl Fn(rusqlite::Error) -> DemoError {
        move |e| DemoError::Step(step, e.to_string())
    }
}

/// How to run the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where to keep the data (default: a temporary directory, removed at the end).
    pub dir: Option<PathBuf>,
    /// Address of the API and dashboard (`127.0.0.1:0`: any free port).
    pub listen: String,
    /// Leave the server and dashboard up after the verdict, until Ctrl-C.
    pub keep_running: bool,
    /// Customers created.
    pub customers: usize,
    /// Address and e-mail changes written after that.
    pub changes: usize,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            dir: None,
            listen: "127.0.0.1:0".into(),
            keep_running: false,
            customers: 500,
            changes: 1_500,
        }
    }
}

/// The HTTP API, called as an operator would (blocking calls on the blocking pool).
#[derive(Debug, Clone)]
struct Api {
    base: String,
    agent: ureq::Agent,
}

impl Api {
    async fn call(
        &self,
        method: &'static str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, DemoError> {
        let (agent, url) = (self.agent.clone(), format!("{}{path}", self.base));
        tokio::task::spawn_blocking(move || {
            let response = match (method, body) {
                ("GET", _) => agent.get(&url).call(),
                (_, Some(b)) => agent.post(&url).send_json(b),
                _ => agent.post(&url).send_empty(),
            };
            let mut r =
                response.map_err(|e| DemoError::Step("call the API", format!("{url}: {e}")))?;
            let text = r
                .body_mut()
                .read_to_string()
                .map_err(|e| DemoError::Step("read an API answer", e.to_string()))?;
            if !r.status().is_success() {
                return Err(DemoError::Step(
                    "call the API",
                    format!("{url}: {} {text}", r.status()),
                ));
            }
            Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
        })
        .await
        .map_err(|e| DemoError::Step("call the API", e.to_string()))?
    }

    async fn get(&self, path: &str) -> Result<Value, DemoError> {
        self.call("GET", path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, DemoError> {
        self.call("POST", path, Some(body)).await
    }

    /// Sum of a group's lag, or `None` when the group does not exist yet.
    async fn lag(&self, group: &str) -> Option<u64> {
        let g = self.get(&format!("/v1/groups/{group}")).await.ok()?;
        let parts = g["partitions"].as_array()?;
        (!parts.is_empty())
            .then(|| parts.iter().map(|p| p["lag_events"].as_u64().unwrap_or(0)).sum())
    }
}

async fn wait_for<F, Fut>(what: &str, mut check: F) -> Result<Duration, DemoError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        if started.elapsed() > STEP_WAIT_MAX {
            return Err(DemoError::Timeout(what.to_string()));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(started.elapsed())
}

const SINKS: [(&str, &str); 3] =
    [("crm", "sink-crm"), ("billing", "sink-billing"), ("shipping", "sink-shipping")];

/// The demo's configuration, also printed by `--keep-running` as the guided tour's example.
pub fn config_toml(dir: &Path, fraud_url: &str, listen: &str) -> String {
    let p = |f: &str| dir.join(f).display().to_string();
    format!(
        r#"# The demo's configuration: one source, four sinks, three reconciliations.
[server]
listen = "{listen}"
data_dir = "{data}"

[broker]
max_attempts = 3          # a poison event reaches the dead-letter queue after 3 deliveries
backoff_initial_ms = 100
backoff_max_ms = 400

# The Customers service's outbox: rows written with each change, relayed to topic `customer`.
[[source]]
name = "customers"
kind = "sqlite_outbox"
path = "{customers}"
poll_interval_ms = 20

# CRM speaks of contacts with a full name.
[[sink]]
name = "crm"
topics = ["customer"]
target = {{ kind = "sqlite", path = "{crm}" }}
[[sink.mapping]]
types = ["customer.created.*", "customer.*_changed.*", "customer.snapshot.*"]
table = "contacts"
key = ["customer_id"]
[sink.mapping.columns]
customer_id = ".subject"
full_name = ".data.name"
email = ".data.email"
[[sink.mapping]]
types = ["customer.deleted.*"]
table = "contacts"
key = ["customer_id"]
op = "delete"

# Billing keeps an invoice contact with one address line.
[[sink]]
name = "billing"
topics = ["customer"]
target = {{ kind = "sqlite", path = "{billing}" }}
[[sink.mapping]]
types = ["customer.created.*", "customer.*_changed.*", "customer.snapshot.*"]
table = "invoice_contacts"
key = ["account_id"]
[sink.mapping.columns]
account_id = ".subject"
billing_name = ".data.name"
street = ".data.street"
city_line = '"\(.data.zip) \(.data.city)"'
[[sink.mapping]]
types = ["customer.deleted.*"]
table = "invoice_contacts"
key = ["account_id"]
op = "delete"

# Shipping keeps labels, and only cares about addresses.
[[sink]]
name = "shipping"
topics = ["customer"]
target = {{ kind = "sqlite", path = "{shipping}" }}
[[sink.mapping]]
types = ["customer.created.*", "customer.address_changed.*", "customer.snapshot.*"]
table = "shipping_labels"
key = ["recipient_id"]
[sink.mapping.columns]
recipient_id = ".subject"
recipient = ".data.name"
zip = ".data.zip"
city = ".data.city"
country = ".data.country"
[[sink.mapping]]
types = ["customer.deleted.*"]
table = "shipping_labels"
key = ["recipient_id"]
op = "delete"

# Fraud wants new customers and e-mail changes, signed, over HTTP.
[[sink]]
name = "fraud"
topics = ["customer"]
target = {{ kind = "webhook", url = "{fraud_url}", secret = "{secret}" }}
[[sink.mapping]]
types = ["customer.created.*", "customer.email_changed.*"]

[[reconcile]]
name = "crm-contacts"
sink = "crm"
source = {{ kind = "sqlite", path = "{customers}", table = "customers", key = ["id"] }}
lag_window_ms = 300
[reconcile.correction]
upsert_type = "customer.snapshot.v1"
delete_type = "customer.deleted.v1"

[[reconcile]]
name = "billing-contacts"
sink = "billing"
source = {{ kind = "sqlite", path = "{customers}", table = "customers", key = ["id"] }}
columns = {{ city_line = "zip || ' ' || city" }}
lag_window_ms = 300

[[reconcile]]
name = "shipping-labels"
sink = "shipping"
source = {{ kind = "sqlite", path = "{customers}", table = "customers", key = ["id"] }}
lag_window_ms = 300
"#,
        data = p("log"),
        customers = p("customers.db"),
        crm = p("crm.db"),
        billing = p("billing.db"),
        shipping = p("shipping.db"),
        secret = fraud::SECRET,
    )
}

fn create_projections(dir: &Path) -> Result<(), DemoError> {
    let exec = |file: &str, sql: &str| -> Result<(), DemoError> {
        let conn = rusqlite::Connection::open(dir.join(file))
            .map_err(DemoError::sqlite("open a projection"))?;
        conn.execute_batch(sql).map_err(DemoError::sqlite("create a projection"))
    };
    exec("crm.db", "PRAGMA journal_mode=WAL; CREATE TABLE contacts (customer_id TEXT PRIMARY KEY, full_name TEXT, email TEXT, driftless_version TEXT)")?;
    exec("billing.db", "PRAGMA journal_mode=WAL; CREATE TABLE invoice_contacts (account_id TEXT PRIMARY KEY, billing_name TEXT, street TEXT, city_line TEXT, driftless_version TEXT)")?;
    // Shipping's labels accept German postal codes only — until the poison event teaches it.
    exec(
        "shipping.db",
        "PRAGMA journal_mode=WAL;
         CREATE TABLE shipping_labels (recipient_id TEXT PRIMARY KEY, recipient TEXT, zip TEXT, city TEXT, country TEXT, driftless_version TEXT);
         CREATE TRIGGER zip_is_five_digits_insert BEFORE INSERT ON shipping_labels
           WHEN NEW.zip NOT GLOB '[0-9][0-9][0-9][0-9][0-9]'
           BEGIN SELECT RAISE(ABORT, 'zip must be five digits'); END;
         CREATE TRIGGER zip_is_five_digits_update BEFORE UPDATE ON shipping_labels
           WHEN NEW.zip NOT GLOB '[0-9][0-9][0-9][0-9][0-9]'
           BEGIN SELECT RAISE(ABORT, 'zip must be five digits'); END;",
    )
}

fn rows(path: &Path, sql: &str) -> Result<Vec<Vec<String>>, DemoError> {
    let conn = rusqlite::Connection::open(path).map_err(DemoError::sqlite("open a projection"))?;
    let mut stmt = conn.prepare(sql).map_err(DemoError::sqlite("read a projection"))?;
    let n = stmt.column_count();
    let rows = stmt
        .query_map([], |r| {
            (0..n).map(|i| r.get::<_, Option<String>>(i).map(Option::unwrap_or_default)).collect()
        })
        .map_err(DemoError::sqlite("read a projection"))?;
    rows.collect::<rusqlite::Result<_>>().map_err(DemoError::sqlite("read a projection"))
}

/// What each projection must hold for `customers`.
fn expected(customers: &[Customer]) -> [Vec<Vec<String>>; 3] {
    let crm =
        customers.iter().map(|c| vec![c.id.clone(), c.name.clone(), c.email.clone()]).collect();
    let billing = customers
        .iter()
        .map(|c| {
            vec![c.id.clone(), c.name.clone(), c.street.clone(), format!("{} {}", c.zip, c.city)]
        })
        .collect();
    let shipping = customers
        .iter()
        .map(|c| {
            vec![c.id.clone(), c.name.clone(), c.zip.clone(), c.city.clone(), c.country.clone()]
        })
        .collect();
    [crm, billing, shipping]
}

fn actual(dir: &Path) -> Result<[Vec<Vec<String>>; 3], DemoError> {
    Ok([
        rows(&dir.join("crm.db"), "SELECT customer_id, full_name, email FROM contacts ORDER BY customer_id")?,
        rows(&dir.join("billing.db"), "SELECT account_id, billing_name, street, city_line FROM invoice_contacts ORDER BY account_id")?,
        rows(&dir.join("shipping.db"), "SELECT recipient_id, recipient, zip, city, country FROM shipping_labels ORDER BY recipient_id")?,
    ])
}

macro_rules! say {
    ($out:expr, $($arg:tt)*) => {
        writeln!($out, $($arg)*).map_err(|e| DemoError::Step("print", e.to_string()))?
    };
}

/// Runs the demo, printing its account to `out`; returns the verdict (every projection matches).
pub async fn run(options: &DemoOptions, out: &mut (dyn Write + Send)) -> Result<bool, DemoError> {
    let started = Instant::now();
    let temp;
    let dir = match &options.dir {
        Some(d) => {
            std::fs::create_dir_all(d)
                .map_err(|e| DemoError::Step("create the data directory", e.to_string()))?;
            d.clone()
        }
        None => {
            temp = tempfile::tempdir()
                .map_err(|e| DemoError::Step("create a temporary directory", e.to_string()))?;
            temp.path().to_path_buf()
        }
    };
    say!(out, "Driftless demo: one customer's address, four services that need it");
    say!(out, "  data in {}", dir.display());

    let mut db = CustomersDb::create(&dir.join("customers.db"))?;
    create_projections(&dir)?;
    let (fraud_url, fraud) = fraud::start()
        .await
        .map_err(|e| DemoError::Step("start the Fraud service", e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(&options.listen)
        .await
        .map_err(|e| DemoError::Step("listen", format!("{}: {e}", options.listen)))?;
    let addr = listener.local_addr().map_err(|e| DemoError::Step("listen", e.to_string()))?;
    let text = config_toml(&dir, &fraud_url, &addr.to_string());
    std::fs::write(dir.join("driftless.toml"), &text)
        .map_err(|e| DemoError::Step("write the config", e.to_string()))?;
    let config = ServerConfig::from_toml(&text, &dir.join("driftless.toml"))
        .map_err(|e| DemoError::Step("read the config", format!("{e:#}")))?;
    let broker = Arc::new(
        Broker::open(&config.server.data_dir, BrokerConfig { ..config.broker.clone() })
            .map_err(|e| DemoError::Step("open the log", e.to_string()))?,
    );
    if broker.describe_topic("customer").is_err() {
        broker
            .create_topic("customer", TopicSpec { partitions: 4, ..TopicSpec::default() })
            .map_err(|e| DemoError::Step("create topic `customer`", e.to_string()))?;
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let (broker, config) = (Arc::clone(&broker), config.clone());
        tokio::spawn(async move {
            driftless_server::serve(listener, broker, &config, async {
                let _ = stopped.await;
            })
            .await
        })
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(90)))
        .build()
        .into();
    let api = Api { base: format!("http://{addr}"), agent };
    wait_for("the API", || async { api.get("/readyz").await.is_ok() }).await?;

    // 1. The Customers service writes; the outbox relay carries it.
    let t = Instant::now();
    let mut people: Vec<Customer> = (0..options.customers).map(Customer::generated).collect();
    for c in &people {
        db.write(c, "customer.created.v1")?;
    }
    for k in 0..options.changes {
        let i = (k * 7919) % people.len();
        if k % 3 == 0 {
            let c = Customer {
                email: format!("{}.{k}@example.org", people[i].id),
                ..people[i].clone()
            };
            db.write(&c, "customer.email_changed.v1")?;
            people[i] = c;
        } else {
            let c = people[i].moved(k);
            db.write(&c, "customer.address_changed.v1")?;
            people[i] = c;
        }
    }
    let written = options.customers + options.changes;
    say!(out, "\n1. Customers (SQLite) wrote {} customers and {} changes, each with its outbox row in one transaction", options.customers, options.changes);
    wait_for("the outbox relay", || async { db.outbox_backlog().is_ok_and(|n| n == 0) }).await?;
    say!(
        out,
        "   relayed to topic `customer`: {written} events, outbox empty after {} ms",
        t.elapsed().as_millis()
    );

    // 2. The projections follow.
    let waited = wait_for("the projections", || async {
        let mut all = true;
        for (_, group) in SINKS.iter().chain(&[("fraud", "sink-fraud")]) {
            all &= api.lag(group).await == Some(0);
        }
        all
    })
    .await?;
    let fraud_wanted = options.customers + options.changes.div_ceil(3);
    wait_for("the Fraud webhooks", || async {
        fraud.lock().map(|s| s.ids.len() >= fraud_wanted).unwrap_or(false)
    })
    .await?;
    let counts = actual(&dir)?;
    say!(out, "2. Projections caught up {} ms later: CRM {} contacts, Billing {} invoice contacts, Shipping {} labels", waited.as_millis(), counts[0].len(), counts[1].len(), counts[2].len());
    {
        let s = fraud
            .lock()
            .map_err(|_| DemoError::Step("read the Fraud service", "poisoned".into()))?;
        say!(
            out,
            "   Fraud received {} signed webhooks ({} requests, {} with a bad signature)",
            s.ids.len(),
            s.requests,
            s.rejected
        );
    }

    // 3. A poison event: a UK postcode for Shipping's five-digit column.
    let poison = Customer {
        street: "10 Downing Street".into(),
        zip: "SW1A 2AA".into(),
        city: "London".into(),
        country: "GB".into(),
        ..people[42 % people.len()].clone()
    };
    let idx = 42 % people.len();
    db.write(&poison, "customer.address_changed.v1")?;
    people[idx] = poison.clone();
    for k in 0..50 {
        let i = (k * 31 + 7) % people.len();
        if i == idx {
            continue;
        }
        let c = people[i].moved(k + 3);
        db.write(&c, "customer.address_changed.v1")?;
        people[i] = c;
    }
    let dead = wait_for("the poison event in Shipping's dead-letter queue", || async {
        api.get("/v1/groups/sink-shipping/dlq")
            .await
            .is_ok_and(|d| d.as_array().is_some_and(|a| !a.is_empty()))
    })
    .await?;
    let dlq = api.get("/v1/groups/sink-shipping/dlq").await?;
    let letter = &dlq[0];
    let error =
        letter["errors"].as_array().and_then(|e| e.last()).and_then(Value::as_str).unwrap_or("");
    say!(
        out,
        "\n3. Poison: {} moved to \"{}\" (a UK postcode); Shipping's labels take five digits",
        poison.id,
        poison.zip
    );
    say!(
        out,
        "   after {} attempts ({} ms) it is in Shipping's dead-letter queue: {}",
        letter["attempts"],
        dead.as_millis(),
        error
    );
    wait_for("the other keys", || async { api.lag("sink-crm").await == Some(0) }).await?;
    say!(out, "   meanwhile the other customers kept flowing: CRM and Billing are current");
    let conn = rusqlite::Connection::open(dir.join("shipping.db"))
        .map_err(DemoError::sqlite("open shipping.db"))?;
    conn.execute_batch(
        "DROP TRIGGER zip_is_five_digits_insert; DROP TRIGGER zip_is_five_digits_update;",
    )
    .map_err(DemoError::sqlite("fix Shipping's schema"))?;
    drop(conn);
    let id = letter["id"].as_str().unwrap_or_default().to_string();
    api.post(&format!("/v1/groups/sink-shipping/dlq/{id}/retry"), json!({})).await?;
    wait_for("the retried event", || async {
        api.get("/v1/groups/sink-shipping/dlq")
            .await
            .is_ok_and(|d| d.as_array().is_some_and(Vec::is_empty))
            && api.lag("sink-shipping").await == Some(0)
    })
    .await?;
    say!(out, "   Shipping accepted international postcodes and retried the dead letter: applied");

    // 4. Billing's database goes away for a while.
    let lock = {
        let path = dir.join("billing.db");
        tokio::task::spawn_blocking(move || -> Result<(), DemoError> {
            let conn =
                rusqlite::Connection::open(path).map_err(DemoError::sqlite("lock billing.db"))?;
            conn.execute_batch("BEGIN EXCLUSIVE").map_err(DemoError::sqlite("lock billing.db"))?;
            std::thread::sleep(Duration::from_secs(7));
            conn.execute_batch("COMMIT").map_err(DemoError::sqlite("unlock billing.db"))
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    for k in 0..200 {
        let i = (k * 13 + 1) % people.len();
        let c = people[i].moved(k + 11);
        db.write(&c, "customer.address_changed.v1")?;
        people[i] = c;
    }
    let seen_retrying = wait_for("Billing to notice the outage", || async {
        api.get("/v1/sinks/billing").await.is_ok_and(|s| s["state"] == "retrying")
    })
    .await
    .is_ok();
    let status = api.get("/v1/sinks/billing").await?;
    say!(out, "\n4. Outage: Billing's database is locked for 7 s while 200 more changes flow");
    if !seen_retrying {
        // Only the story suffers (a very slow machine); the verdict is about the data.
        say!(out, "   (the sink did not report the outage before the lock was released)");
    }
    say!(
        out,
        "   billing sink: {} ({})",
        status["state"].as_str().unwrap_or("?"),
        status["error"].as_str().unwrap_or("-")
    );
    lock.await.map_err(|e| DemoError::Step("lock billing.db", e.to_string()))??;
    let t = Instant::now();
    wait_for("Billing to catch up", || async { api.lag("sink-billing").await == Some(0) }).await?;
    let billing_dead = api.get("/v1/groups/sink-billing/dlq").await?.as_array().map_or(0, Vec::len);
    say!(out, "   lock released: Billing caught up in {} ms; events blamed for the outage: {billing_dead}", t.elapsed().as_millis());

    // 5. Someone edits CRM by hand.
    let crm =
        rusqlite::Connection::open(dir.join("crm.db")).map_err(DemoError::sqlite("open crm.db"))?;
    crm.execute_batch(&format!(
        "UPDATE contacts SET email = 'typo@example' WHERE customer_id = '{}';
         DELETE FROM contacts WHERE customer_id = '{}';",
        people[5].id, people[6].id
    ))
    .map_err(DemoError::sqlite("edit crm.db"))?;
    drop(crm);
    let found = api.post("/v1/reconciliations/crm-contacts/run", json!({"repair": true})).await?;
    say!(out, "\n5. Drift: someone edited CRM by hand (one e-mail changed, one contact deleted)");
    say!(out, "   reconciliation crm-contacts: {} missing, {} extra, {} stale among {} rows; {} rows left the databases; {} corrections sent through the log",
        found["missing"], found["extra"], found["stale"], found["rows_source"], found["rows_shipped"], found["repaired"]);
    wait_for("CRM to apply the corrections", || async { api.lag("sink-crm").await == Some(0) })
        .await?;
    let mut clean = true;
    for name in ["crm-contacts", "billing-contacts", "shipping-labels"] {
        let r =
            api.post(&format!("/v1/reconciliations/{name}/run"), json!({"repair": false})).await?;
        let drift =
            ["missing", "extra", "stale"].iter().map(|k| r[*k].as_u64().unwrap_or(0)).sum::<u64>();
        clean &= drift == 0;
        say!(out, "   {name}: {drift} drifted rows");
    }

    // 6. The verdict.
    for (_, group) in SINKS {
        wait_for("the last events", || async { api.lag(group).await == Some(0) }).await?;
    }
    let source = db.all()?;
    let want = expected(&source);
    let have = actual(&dir)?;
    let names = ["CRM", "Billing", "Shipping"];
    let mut all_match = clean;
    say!(out, "\n6. Every projection against the source ({} customers)", source.len());
    for i in 0..3 {
        let ok = want[i] == have[i];
        all_match &= ok;
        let differing = want[i].iter().zip(&have[i]).filter(|(a, b)| a != b).count()
            + want[i].len().abs_diff(have[i].len());
        say!(
            out,
            "   {}: {} rows, {}",
            names[i],
            have[i].len(),
            if ok { "identical".to_string() } else { format!("{differing} rows differ") }
        );
    }
    let fraud_ok =
        fraud.lock().map(|s| s.rejected == 0 && s.ids.len() >= fraud_wanted).unwrap_or(false);
    all_match &= fraud_ok;
    say!(
        out,
        "   Fraud: {} signed webhooks, {}",
        fraud.lock().map(|s| s.ids.len()).unwrap_or(0),
        if fraud_ok { "every one verified" } else { "MISSING or unsigned webhooks" }
    );
    say!(
        out,
        "\nVERDICT: {} ({:.1} s)",
        if all_match {
            "PASS — every projection matches the source"
        } else {
            "FAIL — a projection differs from the source"
        },
        started.elapsed().as_secs_f64()
    );
    out.flush().map_err(|e| DemoError::Step("print", e.to_string()))?;

    if options.keep_running {
        say!(out, "\nDriftless is still running: dashboard http://{addr}/  API http://{addr}/v1/openapi.json");
        say!(out, "config: {}   (Ctrl-C to stop)", dir.join("driftless.toml").display());
        let _ = tokio::signal::ctrl_c().await;
    }
    let _ = stop.send(());
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(DemoError::Step("stop the server", format!("{e:#}"))),
        Err(e) => return Err(DemoError::Step("stop the server", e.to_string())),
    }
    Ok(all_match)
}
