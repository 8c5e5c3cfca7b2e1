//! The durable spool: where accepted events wait while Postgres cannot take them.
//!
//! An append-only file of records `[len u32 LE][crc32 u32 LE][payload]`, each payload one batch
//! of events as a JSON array. An append is fsynced before the producers are answered, so a `201`
//! with `"durable": "spool"` survives `kill -9` and power loss. While the spool holds anything,
//! new batches are appended too, so events reach the table in the order they were accepted. The
//! replayer writes records in order with their ids (idempotent), and truncates the file once it
//! has caught up with its end. A torn record at the tail (a crash mid-append, never acknowledged)
//! is ignored. When the file reaches its size limit, appends fail and producers get `503` with
//! `Retry-After`: the spool never drops.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::events::EventRecord;

/// Bytes of a record header.
const HEADER: usize = 8;
/// Largest single record accepted when reading (guards against a corrupt length).
const MAX_RECORD: usize = 1 << 30;

/// Spool errors.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The spool file could not be opened, written or synced.
    #[error("spool I/O failed on {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The spool reached its size limit.
    #[error("the spool is full ({used} of {limit} bytes)")]
    Full {
        /// Bytes used.
        used: u64,
        /// Limit.
        limit: u64,
    },
    /// A record could not be encoded or decoded.
    #[error("spool record is not valid JSON")]
    Json(#[source] serde_json::Error),
}

/// The spool file and its bookkeeping.
#[derive(Debug)]
struct Inner {
    /// The open file (append position = its length).
    file: File,
    /// Current length in bytes.
    len: u64,
}

/// A spool on disk.
#[derive(Debug)]
pub struct Spool {
    /// Path of the file.
    path: PathBuf,
    /// Size limit in bytes.
    limit: u64,
    /// File and length.
    inner: Mutex<Inner>,
}

/// One record read back.
#[derive(Debug)]
pub struct SpoolRecord {
    /// Offset just past the record.
    pub end: u64,
    /// The events.
    pub events: Vec<EventRecord>,
}

/// The on-disk form of one event.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    /// Id.
    id: uuid::Uuid,
    /// Type.
    event_type: String,
    /// Timestamp.
    timestamp: chrono::DateTime<chrono::Utc>,
    /// Source.
    source: String,
    /// Data.
    data: serde_json::Map<String, serde_json::Value>,
    /// Metadata.
    metadata: serde_json::Map<String, serde_json::Value>,
}

impl Spool {
    /// Opens (or creates) `dir/spool.log`, dropping a torn tail.
    pub fn open(dir: &Path, limit: u64) -> Result<Spool, SpoolError> {
        let path = dir.join("spool.log");
        let io = |source| SpoolError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let valid = valid_prefix(&mut file).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if valid < len {
            tracing::warn!(path = %path.display(), dropped = len - valid, "dropping a torn record at the end of the spool (it was never acknowledged)");
            file.set_len(valid).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        file.seek(SeekFrom::Start(valid)).map_err(io)?;
        Ok(Spool {
            path,
            limit,
            inner: Mutex::new(Inner { file, len: valid }),
        })
    }

    /// Locks the file.
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes in the spool.
    pub fn len(&self) -> u64 {
        self.lock().len
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one batch and fsyncs it. Blocking: call from `spawn_blocking`.
    pub fn append(&self, events: &[&EventRecord]) -> Result<(), SpoolError> {
        let stored: Vec<Stored> = events
            .iter()
            .map(|e| Stored {
                id: e.id,
                event_type: e.event_type.clone(),
                timestamp: e.timestamp,
                source: e.source.clone(),
                data: e.data.clone(),
                metadata: e.metadata.clone(),
            })
            .collect();
        let payload = serde_json::to_vec(&stored).map_err(SpoolError::Json)?;
        let mut record = Vec::with_capacity(HEADER + payload.len());
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        record.extend_from_slice(&payload);
        let mut g = self.lock();
        let new_len = g.len + record.len() as u64;
        if new_len > self.limit {
            return Err(SpoolError::Full {
                used: g.len,
                limit: self.limit,
            });
        }
        let io = |source| SpoolError::Io {
            path: self.path.clone(),
            source,
        };
        let start = g.len;
        let res = g.file.write_all(&record).and_then(|_| g.file.sync_data());
        if let Err(e) = res {
            // Leave no partial record behind.
            let _ = g.file.set_len(start);
            let _ = g.file.seek(SeekFrom::Start(start));
            return Err(io(e));
        }
        g.len = new_len;
        Ok(())
    }

    /// Reads the record starting at `offset` (None at the end). Blocking.
    pub fn read_at(&self, offset: u64) -> Result<Option<SpoolRecord>, SpoolError> {
        let len = self.len();
        if offset >= len {
            return Ok(None);
        }
        let io = |source| SpoolError::Io {
            path: self.path.clone(),
            source,
        };
        let mut f = File::open(&self.path).map_err(io)?;
        f.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut header = [0u8; HEADER];
        f.read_exact(&mut header).map_err(io)?;
        let n = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let mut payload = vec![0u8; n];
        f.read_exact(&mut payload).map_err(io)?;
        let stored: Vec<Stored> = serde_json::from_slice(&payload).map_err(SpoolError::Json)?;
        Ok(Some(SpoolRecord {
            end: offset + (HEADER + n) as u64,
            events: stored
                .into_iter()
                .map(|s| EventRecord {
                    id: s.id,
                    event_type: s.event_type,
                    timestamp: s.timestamp,
                    source: s.source,
                    data: s.data,
                    metadata: s.metadata,
                })
                .collect(),
        }))
    }

    /// Empties the spool if nothing was appended past `replayed_to`; returns whether it did.
    pub fn truncate_if_caught_up(&self, replayed_to: u64) -> Result<bool, SpoolError> {
        let mut g = self.lock();
        if g.len != replayed_to {
            return Ok(false);
        }
        let io = |source| SpoolError::Io {
            path: self.path.clone(),
            source,
        };
        g.file.set_len(0).map_err(io)?;
        g.file.seek(SeekFrom::Start(0)).map_err(io)?;
        g.file.sync_all().map_err(io)?;
        g.len = 0;
        Ok(true)
    }
}

/// Length of the prefix made of whole, checksummed records.
fn valid_prefix(file: &mut File) -> std::io::Result<u64> {
    file.seek(SeekFrom::Start(0))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let mut pos = 0usize;
    while let Some(header) = bytes.get(pos..pos + HEADER) {
        let n = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if n > MAX_RECORD {
            break;
        }
        let Some(payload) = bytes.get(pos + HEADER..pos + HEADER + n) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        pos += HEADER + n;
    }
    Ok(pos as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: usize) -> EventRecord {
        EventRecord {
            id: uuid::Uuid::now_v7(),
            event_type: "cpu".into(),
            timestamp: chrono::Utc::now(),
            source: format!("h{i}"),
            data: serde_json::Map::new(),
            metadata: serde_json::Map::new(),
        }
    }

    #[test]
    fn append_read_truncate_and_torn_tail() {
        let dir =
            std::env::temp_dir().join(format!("walcast-spool-test-{:x}", rand::random::<u64>()));
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        let a = event(1);
        let b = event(2);
        spool.append(&[&a]).unwrap();
        spool.append(&[&b, &a]).unwrap();
        let r1 = spool.read_at(0).unwrap().unwrap();
        assert_eq!(r1.events, vec![a.clone()]);
        let r2 = spool.read_at(r1.end).unwrap().unwrap();
        assert_eq!(r2.events.len(), 2);
        assert!(spool.read_at(r2.end).unwrap().is_none());
        assert!(!spool.truncate_if_caught_up(r1.end).unwrap());
        let len = spool.len();
        drop(spool);
        // a torn tail is dropped on open
        {
            let mut f = OpenOptions::new()
                .append(true)
                .open(dir.join("spool.log"))
                .unwrap();
            f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        }
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(spool.len(), len);
        assert!(spool.truncate_if_caught_up(len).unwrap());
        assert!(spool.is_empty());
        // the limit refuses, never drops
        let small = Spool::open(&dir.join("small"), 64).unwrap();
        assert!(matches!(small.append(&[&a]), Err(SpoolError::Full { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
