//! The demo's Customers service: a SQLite database that owns customers and writes every change
//! together with its outbox row, in one local transaction — the transactional outbox.
//!
//! Invariant: a customer row and the outbox row announcing it commit together or not at all; the
//! outbox payload is the customer's whole new state (the field names are the table's columns, so
//! a reconciliation correction — the row as JSON — reads like any other event).

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection};
use serde_json::json;

use crate::DemoError;

/// A customer's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    /// `c-0001`.
    pub id: String,
    /// Full name.
    pub name: String,
    /// E-mail.
    pub email: String,
    /// Street and number.
    pub street: String,
    /// Postal code.
    pub zip: String,
    /// City.
    pub city: String,
    /// ISO country code.
    pub country: String,
}

const CITIES: [(&str, &str, &str); 6] = [
    ("10115", "Berlin", "DE"),
    ("20095", "Hamburg", "DE"),
    ("80331", "Munich", "DE"),
    ("50667", "Cologne", "DE"),
    ("60311", "Frankfurt", "DE"),
    ("70173", "Stuttgart", "DE"),
];
const NAMES: [&str; 8] =
    ["Ada", "Grace", "Linus", "Barbara", "Ken", "Margaret", "Dennis", "Frances"];

impl Customer {
    /// The `i`th generated customer.
    pub fn generated(i: usize) -> Self {
        let (zip, city, country) = CITIES[i % CITIES.len()];
        let first = NAMES[i % NAMES.len()];
        Self {
            id: format!("c-{i:04}"),
            name: format!("{first} Example{i}"),
            email: format!("{}.{i}@example.com", first.to_lowercase()),
            street: format!("Hauptstraße {}", i % 97 + 1),
            zip: zip.into(),
            city: city.into(),
            country: country.into(),
        }
    }

    /// Moves to the `k`th city.
    pub fn moved(&self, k: usize) -> Self {
        let (zip, city, country) = CITIES[k % CITIES.len()];
        Self {
            street: format!("Ringstraße {}", k % 89 + 1),
            zip: zip.into(),
            city: city.into(),
            country: country.into(),
            ..self.clone()
        }
    }
}

/// The Customers service's database.
#[derive(Debug)]
pub struct CustomersDb {
    path: PathBuf,
    conn: Connection,
    next_event: u64,
}

impl CustomersDb {
    /// Creates the database with its `customers` table and the outbox.
    pub fn create(path: &Path) -> Result<Self, DemoError> {
        driftless_connect::sqlite_outbox::init_sqlite(path, "outbox")
            .map_err(|e| DemoError::Step("create the Customers outbox", e.to_string()))?;
        let conn = Connection::open(path).map_err(DemoError::sqlite("open customers.db"))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS customers (id TEXT PRIMARY KEY, name TEXT NOT NULL,
               email TEXT NOT NULL, street TEXT NOT NULL, zip TEXT NOT NULL, city TEXT NOT NULL,
               country TEXT NOT NULL);",
        )
        .map_err(DemoError::sqlite("create the customers table"))?;
        Ok(Self { path: path.to_path_buf(), conn, next_event: 0 })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `customer` and an outbox row of event type `ty`, in one transaction.
    pub fn write(&mut self, customer: &Customer, ty: &str) -> Result<(), DemoError> {
        self.next_event += 1;
        let event_id = format!("evt-{:06}", self.next_event);
        let payload = json!({
            "id": customer.id, "name": customer.name, "email": customer.email,
            "street": customer.street, "zip": customer.zip, "city": customer.city,
            "country": customer.country,
        });
        let tx = self.conn.transaction().map_err(DemoError::sqlite("begin"))?;
        tx.execute(
            "INSERT INTO customers (id, name, email, street, zip, city, country)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, email = excluded.email,
               street = excluded.street, zip = excluded.zip, city = excluded.city,
               country = excluded.country",
            params![
                customer.id,
                customer.name,
                customer.email,
                customer.street,
                customer.zip,
                customer.city,
                customer.country
            ],
        )
        .map_err(DemoError::sqlite("write a customer"))?;
        tx.execute(
            "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, headers)
             VALUES (?1, 'customer', ?2, ?3, ?4, ?5)",
            params![
                event_id,
                customer.id,
                ty,
                payload.to_string(),
                json!({"traceparent": format!("00-{:032x}-{:016x}-01", self.next_event, self.next_event)})
                    .to_string()
            ],
        )
        .map_err(DemoError::sqlite("write an outbox row"))?;
        tx.commit().map_err(DemoError::sqlite("commit"))
    }

    /// Every customer, by id.
    pub fn all(&self) -> Result<Vec<Customer>, DemoError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, name, email, street, zip, city, country FROM customers ORDER BY id",
            )
            .map_err(DemoError::sqlite("read customers"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Customer {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    email: r.get(2)?,
                    street: r.get(3)?,
                    zip: r.get(4)?,
                    city: r.get(5)?,
                    country: r.get(6)?,
                })
            })
            .map_err(DemoError::sqlite("read customers"))?;
        rows.collect::<rusqlite::Result<_>>().map_err(DemoError::sqlite("read customers"))
    }

    /// Outbox rows not yet relayed.
    pub fn outbox_backlog(&self) -> Result<i64, DemoError> {
        self.conn
            .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
            .map_err(DemoError::sqlite("count the outbox"))
    }
}
