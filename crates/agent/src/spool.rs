//! The spool: every attempt's undelivered output, start time and result, on disk under
//! `<data_dir>/spool/<attempt>/`, so nothing is lost while the control plane is away and
//! an agent restarted on the same data directory delivers what its predecessor could not.
//!
//! # Layout of one attempt's directory
//! - `meta.json`: the job and attempt ids, the output cursor (see [`Meta`]), when the
//!   process started and whether that was reported. Rewritten (temp file + rename) after
//!   every acknowledged chunk, always *before* a delivered segment file is deleted, so
//!   after a crash the cursor never points past what the server has.
//! - `seg-<n>`: output, valid UTF-8, in order; each at most [`SEGMENT_BYTES`], split on
//!   character boundaries. The first segment is delivered from `meta.first_pos`.
//! - `finished.json`: the result, once the process ended (written with fsync).
//!
//! # Offsets
//! The log API stores an attempt's output as one byte stream, and refuses a chunk that
//! does not start where the stored output ends. The spool's cursor (`meta.offset`) is the
//! server offset of the first undelivered byte. When output is dropped (the spool is
//! over its limit, or cannot be written), the dropped bytes never get an offset: a marker
//! line saying how many were dropped is sent in their place, and the output after it
//! continues at the next offset. Acknowledgements and 409 `log_gap` answers move the
//! cursor to where the server says its stored output ends.
//!
//! # Bound
//! Undelivered output across all attempts is kept under the limit by dropping whole
//! segments, oldest first (by when they were started). Results and start times are
//! never dropped. File operations are small page-cache writes made under one mutex.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tanvrit_client::api::{AttemptFinishedRequest, AttemptId, JobId, Millis};

use crate::config::write_atomically;
use crate::utf8::floor_char_boundary;

/// Largest segment file.
pub const SEGMENT_BYTES: u64 = 1024 * 1024;
const META_FILE: &str = "meta.json";
const FINISHED_FILE: &str = "finished.json";
const META_VERSION: u32 = 1;

/// The line sent in place of `dropped` bytes of output.
pub fn marker(dropped: u64) -> String {
    format!(
        "[tanvrit-agent: {dropped} bytes of output dropped here: the agent's spool was full \
         or could not be written while the control plane was unreachable]\n"
    )
}

/// The persisted state of one attempt (`meta.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    version: u32,
    job: JobId,
    attempt: AttemptId,
    /// Server offset of the first byte not yet acknowledged (the marker's place, if one
    /// is due).
    offset: u64,
    /// The segment delivery continues from.
    first_segment: u64,
    /// Bytes of that segment already acknowledged.
    first_pos: u64,
    /// Output dropped and not yet announced by an acknowledged marker.
    dropped: u64,
    /// When the process started (agent clock).
    started_at: Option<Millis>,
    /// Whether the start was reported.
    started_delivered: bool,
}

#[derive(Clone, Copy, Debug)]
struct Segment {
    number: u64,
    /// Spool-wide creation order: the smallest is dropped first.
    age: u64,
    len: u64,
}

#[derive(Debug)]
struct Entry {
    /// None when the directory could not be created: output is then counted as dropped
    /// and the result kept in memory only.
    dir: Option<PathBuf>,
    meta: Meta,
    segments: VecDeque<Segment>,
    /// Append handle of the last segment.
    writer: Option<File>,
    next_segment: u64,
    finished: Option<AttemptFinishedRequest>,
}

impl Entry {
    /// Undelivered output bytes held in segments.
    fn held(&self) -> u64 {
        let sum: u64 = self.segments.iter().map(|s| s.len).sum();
        sum.saturating_sub(self.meta.first_pos)
    }

    fn persist(&self) {
        let Some(dir) = &self.dir else { return };
        let bytes = match serde_json::to_vec(&self.meta) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode spool metadata");
                return;
            }
        };
        // No fsync per chunk: after a power loss an older cursor only means chunks the
        // server already has are sent again, which it accepts as duplicates.
        let path = dir.join(META_FILE);
        let tmp = dir.join("meta.json.tmp");
        let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "cannot write spool metadata");
        }
    }

    fn segment_path(&self, number: u64) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(segment_name(number)))
    }

    /// Removes the first segment (delivered or dropped): the cursor moves to the next
    /// one and is persisted before the file goes.
    fn pop_front(&mut self) -> Option<Segment> {
        let front = self.segments.pop_front()?;
        if self.segments.is_empty() {
            self.writer = None;
        }
        self.meta.first_segment = self
            .segments
            .front()
            .map_or(self.next_segment, |s| s.number);
        self.meta.first_pos = 0;
        self.persist();
        if let Some(path) = self.segment_path(front.number) {
            let _ = std::fs::remove_file(path);
        }
        Some(front)
    }
}

fn segment_name(number: u64) -> String {
    format!("seg-{number:010}")
}

/// One piece of what is owed to the control plane for an attempt, in delivery order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Report the start (agent clock).
    Started(Millis),
    /// Send this log chunk.
    Chunk(Chunk),
    /// All output is delivered: report the result.
    Finished(AttemptFinishedRequest),
    /// Nothing to send now; more output or the result will come.
    Wait,
    /// The attempt is not (or no longer) in the spool.
    Gone,
}

/// A log chunk read from the spool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Where it goes in the attempt's stored output.
    pub offset: u64,
    /// The text.
    pub data: String,
    kind: ChunkKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ChunkKind {
    Marker { dropped: u64 },
    Output { segment: u64, pos: u64, len: u64 },
}

/// An attempt found in the spool at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// The job.
    pub job: JobId,
    /// The attempt.
    pub attempt: AttemptId,
    /// Whether its result was recorded (else its process was lost with the agent).
    pub finished: bool,
}

/// The spool of every attempt this agent holds.
#[derive(Debug)]
pub struct Spool {
    root: PathBuf,
    limit: u64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<AttemptId, Entry>,
    /// Undelivered output bytes across all entries.
    total: u64,
    next_age: u64,
}

impl Inner {
    /// Drops the oldest segment of any attempt; false when there is none.
    fn drop_oldest(&mut self) -> bool {
        let oldest = self
            .entries
            .iter()
            .filter_map(|(id, e)| e.segments.front().map(|s| (s.age, id.clone())))
            .min();
        let Some((_, id)) = oldest else { return false };
        let entry = self.entries.get_mut(&id).expect("just found");
        let held_before = entry.held();
        entry.pop_front();
        let gone = held_before - entry.held();
        entry.meta.dropped += gone;
        entry.persist();
        self.total -= gone;
        tracing::warn!(attempt = %id, bytes = gone, "spool full: dropped the oldest undelivered output");
        true
    }

    fn age(&mut self) -> u64 {
        self.next_age += 1;
        self.next_age
    }
}

impl Spool {
    /// Opens (creating) the spool at `root`, holding at most about `limit` bytes of
    /// undelivered output, and reads back what an earlier agent left there.
    pub fn open(root: &Path, limit: u64) -> std::io::Result<(Self, Vec<Recovered>)> {
        std::fs::create_dir_all(root)?;
        let spool = Spool {
            root: root.to_path_buf(),
            limit,
            inner: Mutex::new(Inner::default()),
        };
        let mut recovered = Vec::new();
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        let mut inner = spool.lock();
        for dir in dirs {
            match recover_entry(&dir, &mut inner) {
                Some(entry) => {
                    recovered.push(Recovered {
                        job: entry.meta.job.clone(),
                        attempt: entry.meta.attempt.clone(),
                        finished: entry.finished.is_some(),
                    });
                    inner.total += entry.held();
                    inner.entries.insert(entry.meta.attempt.clone(), entry);
                }
                None => {
                    tracing::warn!(dir = %dir.display(), "unreadable spool entry; removing it");
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
        drop(inner);
        Ok((spool, recovered))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep going with it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Undelivered output bytes across all attempts.
    pub fn total_bytes(&self) -> u64 {
        self.lock().total
    }

    /// Whether the spool holds `attempt`.
    pub fn contains(&self, attempt: &AttemptId) -> bool {
        self.lock().entries.contains_key(attempt)
    }

    /// Starts an attempt whose stored output ends at `offset`. Creating an attempt that
    /// exists changes nothing. When its directory cannot be made, the attempt is kept in
    /// memory and its output counted as dropped.
    pub fn create(&self, job: &JobId, attempt: &AttemptId, offset: u64) {
        let mut inner = self.lock();
        if inner.entries.contains_key(attempt) {
            return;
        }
        // Attempt ids are server-chosen identifiers (no `/`); be safe anyway.
        let safe: String = attempt
            .as_str()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let dir = self.root.join(safe);
        let dir = match std::fs::create_dir_all(&dir) {
            Ok(()) => Some(dir),
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot create a spool directory; this attempt's output will be dropped");
                None
            }
        };
        let entry = Entry {
            dir,
            meta: Meta {
                version: META_VERSION,
                job: job.clone(),
                attempt: attempt.clone(),
                offset,
                first_segment: 0,
                first_pos: 0,
                dropped: 0,
                started_at: None,
                started_delivered: false,
            },
            segments: VecDeque::new(),
            writer: None,
            next_segment: 0,
            finished: None,
        };
        entry.persist();
        inner.entries.insert(attempt.clone(), entry);
    }

    /// Records that the process started at `at`.
    pub fn mark_started(&self, attempt: &AttemptId, at: Millis) {
        if let Some(entry) = self.lock().entries.get_mut(attempt) {
            entry.meta.started_at = Some(at);
            entry.persist();
        }
    }

    /// Records that the start was reported.
    pub fn started_delivered(&self, attempt: &AttemptId) {
        if let Some(entry) = self.lock().entries.get_mut(attempt) {
            entry.meta.started_delivered = true;
            entry.persist();
        }
    }

    /// Appends output. Past the limit, the oldest undelivered output (of any attempt)
    /// is dropped first; output that cannot be written is counted as dropped.
    pub fn append(&self, attempt: &AttemptId, text: &str) {
        if text.is_empty() {
            return;
        }
        let mut inner = self.lock();
        if !inner.entries.contains_key(attempt) {
            return;
        }
        let mut text = text;
        let len = text.len() as u64;
        while inner.total + len > self.limit {
            if !inner.drop_oldest() {
                break;
            }
        }
        if inner.total + text.len() as u64 > self.limit {
            // Even an empty spool cannot hold it all: keep the newest part.
            let keep = self.limit.saturating_sub(inner.total) as usize;
            let mut cut = text.len() - keep;
            while !text.is_char_boundary(cut) {
                cut += 1;
            }
            let entry = inner.entries.get_mut(attempt).expect("checked");
            entry.meta.dropped += cut as u64;
            entry.persist();
            text = &text[cut..];
        }
        while !text.is_empty() {
            let age = inner.age();
            let entry = inner.entries.get_mut(attempt).expect("checked");
            let written = write_some(entry, text, age);
            inner.total += written as u64;
            if written == 0 {
                let entry = inner.entries.get_mut(attempt).expect("checked");
                entry.meta.dropped += text.len() as u64;
                entry.persist();
                break;
            }
            text = &text[written..];
        }
    }

    /// Records the result; the process's output is complete. Written with fsync: a
    /// result is never dropped.
    pub fn finish(&self, attempt: &AttemptId, result: AttemptFinishedRequest) {
        let mut inner = self.lock();
        let Some(entry) = inner.entries.get_mut(attempt) else {
            return;
        };
        entry.writer = None;
        if let Some(dir) = &entry.dir {
            match serde_json::to_vec(&result) {
                Ok(bytes) => {
                    if let Err(e) = write_atomically(&dir.join(FINISHED_FILE), &bytes) {
                        tracing::error!(error = %e, "cannot write an attempt's result to the spool; it is kept in memory");
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot encode an attempt's result"),
            }
        }
        entry.finished = Some(result);
    }

    /// Whether the attempt's result is recorded.
    pub fn is_finished(&self, attempt: &AttemptId) -> bool {
        self.lock()
            .entries
            .get(attempt)
            .is_some_and(|e| e.finished.is_some())
    }

    /// True when `attempt` has started and its start is not delivered yet.
    pub fn start_undelivered(&self, attempt: &AttemptId) -> bool {
        self.lock()
            .entries
            .get(attempt)
            .is_some_and(|e| e.meta.started_at.is_some() && !e.meta.started_delivered)
    }

    /// Undelivered output of `attempt`, the marker included.
    pub fn pending_bytes(&self, attempt: &AttemptId) -> u64 {
        self.lock()
            .entries
            .get(attempt)
            .map_or(0, |e| e.held() + if e.meta.dropped > 0 { 1 } else { 0 })
    }

    /// What to deliver next for `attempt`: the start, then output in order (a marker
    /// first where output was dropped), then — once the output is complete and
    /// delivered — the result.
    pub fn next(&self, attempt: &AttemptId, max_chunk: usize) -> Next {
        let mut inner = self.lock();
        loop {
            let Some(entry) = inner.entries.get_mut(attempt) else {
                return Next::Gone;
            };
            if let (Some(at), false) = (entry.meta.started_at, entry.meta.started_delivered) {
                return Next::Started(at);
            }
            if entry.meta.dropped > 0 {
                return Next::Chunk(Chunk {
                    offset: entry.meta.offset,
                    data: marker(entry.meta.dropped),
                    kind: ChunkKind::Marker {
                        dropped: entry.meta.dropped,
                    },
                });
            }
            let Some(front) = entry.segments.front().copied() else {
                return match &entry.finished {
                    Some(result) => Next::Finished(result.clone()),
                    None => Next::Wait,
                };
            };
            let pos = entry.meta.first_pos;
            if pos >= front.len {
                if entry.segments.len() > 1 || entry.finished.is_some() {
                    entry.pop_front();
                    continue;
                }
                return Next::Wait;
            }
            let want = (front.len - pos).min(max_chunk as u64) as usize;
            // Up to 3 bytes more show whether byte `want` continues a character.
            let read = (front.len - pos).min(want as u64 + 3) as usize;
            match read_at(entry, front.number, pos, read) {
                Ok(bytes) => {
                    let n = floor_char_boundary(&bytes, want);
                    // Each segment holds whole characters, so `n` is 0 only if a chunk
                    // is smaller than one character; then take the bytes as they are.
                    let n = if n == 0 { bytes.len() } else { n };
                    let data = String::from_utf8_lossy(&bytes[..n]).into_owned();
                    return Next::Chunk(Chunk {
                        offset: entry.meta.offset,
                        data,
                        kind: ChunkKind::Output {
                            segment: front.number,
                            pos,
                            len: n as u64,
                        },
                    });
                }
                Err(e) => {
                    tracing::warn!(attempt = %attempt, error = %e, "cannot read spooled output; counting it as dropped");
                    let held = entry.held();
                    entry.pop_front();
                    let gone = held - entry.held();
                    entry.meta.dropped += gone;
                    entry.persist();
                    inner.total -= gone;
                }
            }
        }
    }

    /// The server stored `chunk`; its output now ends at `next_offset`.
    pub fn acked(&self, attempt: &AttemptId, chunk: &Chunk, next_offset: u64) {
        let mut inner = self.lock();
        let Some(entry) = inner.entries.get_mut(attempt) else {
            return;
        };
        if entry.meta.offset != chunk.offset {
            return;
        }
        let mut consumed = 0;
        match chunk.kind {
            ChunkKind::Marker { dropped } => {
                entry.meta.dropped = entry.meta.dropped.saturating_sub(dropped);
            }
            ChunkKind::Output { segment, pos, len } => {
                let still_there = entry.segments.front().map(|s| s.number) == Some(segment)
                    && entry.meta.first_pos == pos;
                if still_there {
                    entry.meta.first_pos += len;
                    consumed = len;
                } else {
                    // Dropped while in flight: it was counted as dropped, but arrived.
                    entry.meta.dropped = entry.meta.dropped.saturating_sub(len);
                }
            }
        }
        entry.meta.offset = chunk.offset + chunk.data.len() as u64;
        // The server may hold more than this chunk (an earlier agent's delivery whose
        // acknowledgement was lost): skip what it has.
        if next_offset > entry.meta.offset {
            consumed += skip(entry, next_offset - entry.meta.offset);
            entry.meta.offset = next_offset;
        }
        entry.persist();
        inner.total -= consumed;
    }

    /// The server refused `chunk` with 409 `log_gap`: its output ends at `expected`.
    /// Output it already has is skipped; output it lost is announced by a marker.
    pub fn resync(&self, attempt: &AttemptId, chunk: &Chunk, expected: u64) {
        let mut inner = self.lock();
        let Some(entry) = inner.entries.get_mut(attempt) else {
            return;
        };
        if entry.meta.offset != chunk.offset {
            return;
        }
        let mut consumed = 0;
        if expected > entry.meta.offset {
            consumed = skip(entry, expected - entry.meta.offset);
        } else {
            entry.meta.dropped += entry.meta.offset - expected;
        }
        entry.meta.offset = expected;
        entry.persist();
        inner.total -= consumed;
    }

    /// Forgets an attempt: delivered, or refused for good.
    pub fn remove(&self, attempt: &AttemptId) {
        let mut inner = self.lock();
        if let Some(entry) = inner.entries.remove(attempt) {
            inner.total -= entry.held();
            if let Some(dir) = entry.dir {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a spool directory");
                }
            }
        }
    }
}

/// Skips `n` undelivered bytes (the server has them); returns how many were held.
fn skip(entry: &mut Entry, mut n: u64) -> u64 {
    let mut skipped = 0;
    while n > 0 {
        let Some(front) = entry.segments.front().copied() else {
            break;
        };
        let avail = front.len - entry.meta.first_pos.min(front.len);
        let take = avail.min(n);
        entry.meta.first_pos += take;
        skipped += take;
        n -= take;
        if entry.meta.first_pos >= front.len {
            if entry.segments.len() > 1 {
                entry.pop_front();
            } else {
                break;
            }
        }
    }
    skipped
}

/// Writes a prefix of `text` (whole characters) to the last segment, starting a new
/// one when it is full; returns the bytes written (0 on an error).
fn write_some(entry: &mut Entry, text: &str, age: u64) -> usize {
    let Some(dir) = entry.dir.clone() else {
        return 0;
    };
    let room = match (entry.segments.back(), &entry.writer) {
        (Some(last), Some(_)) if last.len < SEGMENT_BYTES => SEGMENT_BYTES - last.len,
        _ => {
            let number = entry.next_segment;
            let path = dir.join(segment_name(number));
            match OpenOptions::new().create(true).append(true).open(&path) {
                Ok(file) => {
                    entry.next_segment += 1;
                    if entry.segments.is_empty() {
                        entry.meta.first_segment = number;
                        entry.meta.first_pos = 0;
                        entry.persist();
                    }
                    entry.segments.push_back(Segment {
                        number,
                        age,
                        len: 0,
                    });
                    entry.writer = Some(file);
                    SEGMENT_BYTES
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot create a spool segment");
                    return 0;
                }
            }
        }
    };
    let mut n = text.len().min(room as usize);
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    if n == 0 {
        // Less room than one character: start the next segment.
        entry.writer = None;
        return write_some(entry, text, age);
    }
    let writer = entry.writer.as_mut().expect("opened above");
    match writer.write_all(&text.as_bytes()[..n]) {
        Ok(()) => {
            entry.segments.back_mut().expect("pushed above").len += n as u64;
            n
        }
        Err(e) => {
            // Whatever part was written lies past the recorded length and is never
            // read; the next append starts a fresh segment.
            tracing::warn!(error = %e, "cannot write to the spool");
            entry.writer = None;
            0
        }
    }
}

fn read_at(entry: &Entry, number: u64, pos: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let path = entry
        .segment_path(number)
        .ok_or_else(|| std::io::Error::other("no spool directory"))?;
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(pos))?;
    let mut bytes = vec![0; len];
    file.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Reads one attempt's directory back; None when its metadata is unreadable.
fn recover_entry(dir: &Path, inner: &mut Inner) -> Option<Entry> {
    let meta: Meta = serde_json::from_slice(&std::fs::read(dir.join(META_FILE)).ok()?).ok()?;
    if meta.version != META_VERSION {
        return None;
    }
    let mut numbers: Vec<(u64, u64)> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let number: u64 = name.strip_prefix("seg-")?.parse().ok()?;
            let len = e.metadata().ok()?.len();
            Some((number, len))
        })
        .collect();
    numbers.sort();
    let mut segments = VecDeque::new();
    let mut next_segment = meta.first_segment;
    for (number, len) in numbers {
        if number < meta.first_segment {
            // Delivered before a crash, after the cursor moved past it.
            let _ = std::fs::remove_file(dir.join(segment_name(number)));
            continue;
        }
        let age = inner.age();
        segments.push_back(Segment { number, age, len });
        next_segment = number + 1;
    }
    let finished = std::fs::read(dir.join(FINISHED_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let mut meta = meta;
    if segments.front().map(|s| s.number) != Some(meta.first_segment) {
        meta.first_pos = 0;
    }
    Some(Entry {
        dir: Some(dir.to_path_buf()),
        meta,
        segments,
        writer: None,
        next_segment,
        finished,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tanvrit_client::api::AttemptOutcome;

    fn ids() -> (JobId, AttemptId) {
        (JobId::from("job-1"), AttemptId::from("att-1"))
    }

    fn result() -> AttemptFinishedRequest {
        AttemptFinishedRequest {
            outcome: AttemptOutcome::Succeeded,
            exit_code: Some(0),
            reason: None,
            finished_at: Some(5),
            usage: None,
        }
    }

    /// Delivers everything, acknowledging each chunk as a server would; returns the
    /// stored text and the result.
    fn drain(spool: &Spool, attempt: &AttemptId, max: usize, stored: &mut String) -> Next {
        loop {
            match spool.next(attempt, max) {
                Next::Started(_) => spool.started_delivered(attempt),
                Next::Chunk(chunk) => {
                    assert_eq!(
                        chunk.offset,
                        stored.len() as u64,
                        "chunks continue the output"
                    );
                    assert!(chunk.data.len() <= max);
                    stored.push_str(&chunk.data);
                    spool.acked(attempt, &chunk, stored.len() as u64);
                }
                other => return other,
            }
        }
    }

    #[test]
    fn output_is_delivered_in_order_in_bounded_chunks_then_the_result() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, recovered) = Spool::open(dir.path(), 1 << 30).unwrap();
        assert!(recovered.is_empty());
        let (job, attempt) = ids();
        spool.create(&job, &attempt, 0);
        spool.mark_started(&attempt, 42);
        assert_eq!(spool.next(&attempt, 64), Next::Started(42));
        let mut expected = String::new();
        for i in 0..500 {
            let line = format!("line {i} é€𝄞\n");
            spool.append(&attempt, &line);
            expected.push_str(&line);
        }
        let mut stored = String::new();
        assert_eq!(drain(&spool, &attempt, 64, &mut stored), Next::Wait);
        assert_eq!(stored, expected);
        assert_eq!(spool.total_bytes(), 0);
        spool.finish(&attempt, result());
        assert_eq!(
            drain(&spool, &attempt, 64, &mut stored),
            Next::Finished(result())
        );
        spool.remove(&attempt);
        assert_eq!(spool.next(&attempt, 64), Next::Gone);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn segments_roll_over_on_character_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), 1 << 30).unwrap();
        let (job, attempt) = ids();
        spool.create(&job, &attempt, 0);
        // 3-byte characters never divide SEGMENT_BYTES evenly.
        let text = "€".repeat((SEGMENT_BYTES as usize / 3) * 2 + 7);
        spool.append(&attempt, &text);
        let mut stored = String::new();
        spool.finish(&attempt, result());
        assert_eq!(
            drain(&spool, &attempt, 64 * 1024, &mut stored),
            Next::Finished(result())
        );
        assert_eq!(stored, text);
    }

    #[test]
    fn a_full_spool_drops_the_oldest_output_and_says_so_in_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let limit = 3 * SEGMENT_BYTES;
        let (spool, _) = Spool::open(dir.path(), limit).unwrap();
        let (job, attempt) = ids();
        spool.create(&job, &attempt, 100);
        let line = "x".repeat(1023) + "\n";
        let total_lines = 5 * 1024; // 5 MiB into a 3 MiB spool
        for _ in 0..total_lines {
            spool.append(&attempt, &line);
        }
        assert!(spool.total_bytes() <= limit);
        spool.finish(&attempt, result());
        let mut stored = "p".repeat(100); // what the server already had
        assert_eq!(
            drain(&spool, &attempt, 64 * 1024, &mut stored),
            Next::Finished(result())
        );
        let rest = &stored[100..];
        let first_line = rest.lines().next().unwrap();
        assert!(first_line.starts_with("[tanvrit-agent: "), "{first_line}");
        let dropped: u64 = first_line["[tanvrit-agent: ".len()..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let kept = rest.len() - first_line.len() - 1;
        assert_eq!(dropped + kept as u64, (line.len() * total_lines) as u64);
        assert!(
            rest[first_line.len() + 1..]
                .lines()
                .all(|l| l.len() == 1023),
            "whole lines after the marker"
        );
    }

    #[test]
    fn a_gap_skips_what_the_server_has_and_marks_what_it_lost() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), 1 << 30).unwrap();
        let (job, attempt) = ids();
        spool.create(&job, &attempt, 0);
        spool.append(&attempt, "abcdef");
        let Next::Chunk(chunk) = spool.next(&attempt, 1024) else {
            panic!()
        };
        // The server already has "abc" (a delivery whose answer was lost).
        spool.resync(&attempt, &chunk, 3);
        let Next::Chunk(chunk) = spool.next(&attempt, 1024) else {
            panic!()
        };
        assert_eq!((chunk.offset, chunk.data.as_str()), (3, "def"));
        // The server says it ends at 1: two bytes it had are gone.
        spool.resync(&attempt, &chunk, 1);
        let Next::Chunk(chunk) = spool.next(&attempt, 1024) else {
            panic!()
        };
        assert_eq!(chunk.offset, 1);
        assert_eq!(chunk.data, marker(2));
        let end = 1 + chunk.data.len() as u64;
        spool.acked(&attempt, &chunk, end);
        let Next::Chunk(chunk) = spool.next(&attempt, 1024) else {
            panic!()
        };
        assert_eq!((chunk.offset, chunk.data.as_str()), (end, "def"));
        // A duplicate answer naming a later end skips that much more.
        spool.acked(&attempt, &chunk, end + 3);
        assert_eq!(spool.next(&attempt, 1024), Next::Wait);
    }

    #[test]
    fn a_start_is_undelivered_from_the_process_start_until_it_is_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), 1 << 30).unwrap();
        let (job, attempt) = ids();
        spool.create(&job, &attempt, 0);
        assert!(!spool.start_undelivered(&attempt), "not started yet");
        spool.mark_started(&attempt, 7);
        assert!(spool.start_undelivered(&attempt));
        spool.started_delivered(&attempt);
        assert!(!spool.start_undelivered(&attempt));
    }

    #[test]
    fn a_reopened_spool_continues_where_delivery_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let (job, attempt) = ids();
        let line = "y".repeat(99) + "\n";
        let mut stored = String::new();
        {
            let (spool, _) = Spool::open(dir.path(), 1 << 30).unwrap();
            spool.create(&job, &attempt, 0);
            spool.mark_started(&attempt, 7);
            for _ in 0..30_000 {
                spool.append(&attempt, &line); // ~3 MiB: several segments
            }
            spool.started_delivered(&attempt);
            // Deliver 1.5 MiB, then "crash" (drop without finishing).
            while stored.len() < 3 * SEGMENT_BYTES as usize / 2 {
                let Next::Chunk(chunk) = spool.next(&attempt, 64 * 1024) else {
                    panic!()
                };
                stored.push_str(&chunk.data);
                spool.acked(&attempt, &chunk, stored.len() as u64);
            }
        }
        let (spool, recovered) = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(
            recovered,
            vec![Recovered {
                job,
                attempt: attempt.clone(),
                finished: false
            }]
        );
        assert_eq!(
            spool.total_bytes(),
            (line.len() * 30_000 - stored.len()) as u64
        );
        spool.finish(&attempt, result());
        assert_eq!(
            drain(&spool, &attempt, 64 * 1024, &mut stored),
            Next::Finished(result())
        );
        assert_eq!(stored, line.repeat(30_000));
        let (_, again) = Spool::open(dir.path(), 1 << 30).unwrap();
        assert!(again[0].finished, "the result survives a restart too");
    }

    #[test]
    fn an_ack_for_output_dropped_in_flight_is_not_counted_as_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), 2 * SEGMENT_BYTES).unwrap();
        let (job, attempt) = ids();
        spool.create(&job, &attempt, 0);
        let block = "z".repeat(SEGMENT_BYTES as usize);
        spool.append(&attempt, &block);
        let Next::Chunk(in_flight) = spool.next(&attempt, 1000) else {
            panic!()
        };
        // Two more segments push the first (with the in-flight chunk) out.
        spool.append(&attempt, &block);
        spool.append(&attempt, &block);
        spool.acked(&attempt, &in_flight, 1000);
        let Next::Chunk(marker_chunk) = spool.next(&attempt, 1000) else {
            panic!()
        };
        assert_eq!(marker_chunk.offset, 1000);
        assert_eq!(marker_chunk.data, marker(SEGMENT_BYTES - 1000));
    }
}
