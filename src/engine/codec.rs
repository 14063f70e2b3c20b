//! How the engine's journal records (batches of customer commands) become bytes.
//!
//! Usage events are nearly all of the journal, so they have a fixed binary layout that
//! is cheap to write and read; the rare other commands (customer terms, credits, moves)
//! are JSON. A record is:
//!
//! ```text
//! count: u32, then per command:
//!   key_len: u16, key bytes,
//!   tag: u8 = 2 (usage)  then account_len: u16, account, meter: u16,
//!                          version: u16, fold: u8, has_dimension: u8, quantity: [u8; 16],
//!                          seconds: i64, nanos: u32, day: i32 (the local date, days
//!                          from 0001-01-01), tiebreak: u64, dimension: u64,
//!                          id: u128, limit: u32          (all little-endian)
//!        | 1 (other)  then json_len: u32, JSON of the command
//!        | 0 (usage as written before periods had time zones and accounts a limit:
//!             account, slot: u32, then as tag 2 without `day` and `limit`; read with
//!             the UTC date and no limit, as it was applied then)
//! ```

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use rust_decimal::Decimal;
use tallyman_actors::file_journal::Codec;
use tallyman_actors::{Batch, SnapshotCodec};

use super::account::{CustomerCommand, CustomerEntity, CustomerKey, MeteredEvent};
use crate::domain::meter::{Fold, Reading};
use crate::domain::AccountId;
use crate::domain::MeterId;

/// The codec of the engine's journal.
pub struct BatchCodec;

/// The codec of the engine's snapshots: a customer's key and state in MessagePack (a
/// compact, self-describing serde format: structs are written as arrays, and decimals
/// keep their exact text). The state is written whole, so it needs no layout of its own.
pub struct EntityCodec;

impl SnapshotCodec<CustomerEntity> for EntityCodec {
    fn encode(&self, key: &CustomerKey, entity: &CustomerEntity, out: &mut Vec<u8>) {
        rmp_serde::encode::write(out, &(key, entity))
            .expect("a customer's state is plain data and always serializes");
    }

    fn decode(&self, bytes: &[u8]) -> Result<(CustomerKey, CustomerEntity), String> {
        let (key, mut entity): (CustomerKey, CustomerEntity) =
            rmp_serde::from_slice(bytes).map_err(|e| format!("a customer does not decode: {e}"))?;
        entity.ensure_indexed();
        Ok((key, entity))
    }
}

fn fold_code(f: Fold) -> u8 {
    match f {
        Fold::Sum => 0,
        Fold::Count => 1,
        Fold::Max => 2,
        Fold::Latest => 3,
        Fold::Distinct => 4,
    }
}

fn fold_of(code: u8) -> Result<Fold, String> {
    Ok(match code {
        0 => Fold::Sum,
        1 => Fold::Count,
        2 => Fold::Max,
        3 => Fold::Latest,
        4 => Fold::Distinct,
        other => return Err(format!("unknown fold code {other}")),
    })
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A cursor over a record's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| format!("record ends early at byte {}", self.at))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn str(&mut self) -> Result<&'a str, String> {
        let n = self.u16()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|e| e.to_string())
    }
}

impl Codec<Batch<CustomerEntity>> for BatchCodec {
    fn size_hint(&self, batch: &Batch<CustomerEntity>) -> usize {
        // A usage command with a 12-byte account and a customer key of up to 16 bytes.
        4 + batch.len() * 112
    }

    fn encode(&self, batch: &Batch<CustomerEntity>, out: &mut Vec<u8>) {
        out.extend_from_slice(&(batch.len() as u32).to_le_bytes());
        for (key, command) in batch {
            put_str(out, key);
            match command {
                CustomerCommand::Usage(e) => {
                    out.push(2);
                    put_str(out, &e.account);
                    out.extend_from_slice(&e.meter.0.to_le_bytes());
                    out.extend_from_slice(&e.reading.version.to_le_bytes());
                    out.push(fold_code(e.reading.fold));
                    out.push(u8::from(e.reading.dimension.is_some()));
                    out.extend_from_slice(&e.reading.quantity.serialize());
                    out.extend_from_slice(&e.reading.time.timestamp().to_le_bytes());
                    out.extend_from_slice(&e.reading.time.timestamp_subsec_nanos().to_le_bytes());
                    out.extend_from_slice(&e.day.num_days_from_ce().to_le_bytes());
                    out.extend_from_slice(&e.reading.tiebreak.to_le_bytes());
                    out.extend_from_slice(&e.reading.dimension.unwrap_or(0).to_le_bytes());
                    out.extend_from_slice(&e.id.to_le_bytes());
                    out.extend_from_slice(&e.limit.to_le_bytes());
                }
                other => {
                    out.push(1);
                    let json = serde_json::to_vec(other).expect("commands serialize");
                    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
                    out.extend_from_slice(&json);
                }
            }
        }
    }

    fn decode(&self, bytes: &[u8]) -> Result<Batch<CustomerEntity>, String> {
        let mut r = Reader { bytes, at: 0 };
        let count = r.u32()? as usize;
        let mut batch = Vec::with_capacity(count.min(1 << 20));
        for _ in 0..count {
            let key: CustomerKey = r.str()?.into();
            let command = match r.u8()? {
                tag @ (0 | 2) => {
                    let account: AccountId = r.str()?.into();
                    if tag == 0 {
                        let _slot = r.u32()?;
                    }
                    let meter = MeterId(r.u16()?);
                    let version = r.u16()?;
                    let fold = fold_of(r.u8()?)?;
                    let has_dimension = r.u8()? != 0;
                    let quantity = Decimal::deserialize(r.array()?);
                    let seconds = r.u64()? as i64;
                    let nanos = r.u32()?;
                    let time = DateTime::<Utc>::from_timestamp(seconds, nanos)
                        .ok_or_else(|| format!("bad time {seconds}.{nanos}"))?;
                    let day = if tag == 0 {
                        time.date_naive()
                    } else {
                        let days = r.u32()? as i32;
                        NaiveDate::from_num_days_from_ce_opt(days)
                            .ok_or_else(|| format!("bad date {days}"))?
                    };
                    let tiebreak = r.u64()?;
                    let dimension = r.u64()?;
                    let id = u128::from_le_bytes(r.array()?);
                    let limit = if tag == 0 { u32::MAX } else { r.u32()? };
                    CustomerCommand::Usage(MeteredEvent {
                        day,
                        account,
                        meter,
                        reading: Reading {
                            fold,
                            quantity,
                            time,
                            version,
                            tiebreak,
                            dimension: has_dimension.then_some(dimension),
                        },
                        id,
                        limit,
                    })
                }
                1 => {
                    let n = r.u32()? as usize;
                    serde_json::from_slice(r.take(n)?).map_err(|e| e.to_string())?
                }
                tag => return Err(format!("unknown command tag {tag}")),
            };
            batch.push((key, command));
        }
        if r.at != bytes.len() {
            return Err(format!(
                "{} bytes left after the last command",
                bytes.len() - r.at
            ));
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_written_by_the_previous_layout_still_reads() {
        // Tag 0: account, slot, meter, version, fold, has_dimension, quantity, seconds,
        // nanos, tiebreak, dimension, id (no local date, no limit), and a late event in
        // JSON without them: read with the UTC date and no limit, as applied then.
        let time: DateTime<Utc> = "2026-11-30T23:30:00Z".parse().unwrap();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&2u32.to_le_bytes());
        put_str(&mut bytes, "acme");
        bytes.push(0);
        put_str(&mut bytes, "222");
        bytes.extend_from_slice(&7u32.to_le_bytes());
        bytes.extend_from_slice(&5u16.to_le_bytes());
        bytes.extend_from_slice(&1u16.to_le_bytes());
        bytes.push(0);
        bytes.push(0);
        bytes.extend_from_slice(&Decimal::new(15, 1).serialize());
        bytes.extend_from_slice(&time.timestamp().to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&9u64.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(&42u128.to_le_bytes());
        put_str(&mut bytes, "acme");
        bytes.push(1);
        let json = r#"{"Late":{"account":"222","slot":0,"meter":5,"reading":{"fold":"Sum","quantity":"1.5","time":"2026-11-30T23:30:00Z","version":1,"tiebreak":9,"dimension":null},"id":43}}"#;
        bytes.extend_from_slice(&(json.len() as u32).to_le_bytes());
        bytes.extend_from_slice(json.as_bytes());
        let batch = BatchCodec.decode(&bytes).unwrap();
        let expected = MeteredEvent {
            day: "2026-11-30".parse().unwrap(),
            account: "222".into(),
            meter: MeterId(5),
            reading: Reading {
                fold: Fold::Sum,
                quantity: Decimal::new(15, 1),
                time,
                version: 1,
                tiebreak: 9,
                dimension: None,
            },
            id: 42,
            limit: u32::MAX,
        };
        assert_eq!(batch[0].1, CustomerCommand::Usage(expected.clone()));
        assert_eq!(
            batch[1].1,
            CustomerCommand::Late(MeteredEvent { id: 43, ..expected })
        );
    }

    // Every kind of command written and read back, and a snapshot of every kind of
    // state: tests/golden.rs, against the bytes kept in tests/golden/.
}
