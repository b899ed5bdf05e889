//! Snapshots as files beside the database, in `<data_dir>/snapshots/<group>/`, written
//! and read as streams: building, shipping or installing one never holds the database's
//! single writer (which every log append needs), and memory stays bounded by a buffer
//! whatever the snapshot's size.
//!
//! A file is [`MAGIC`], a 4-byte big-endian header length, the header (JSON: version,
//! index, body encoding and the caller's metadata), then the body
//! ([`crate::snapshot_records`]): the state's rows as they are stored, then every
//! job-log chunk, closed by an `end` record that counts the records before it, so a
//! truncated file is refused rather than half-loaded.
//!
//! A snapshot is written to a `.tmp` file, fsynced, then renamed to `<index>-<name>.snap`
//! (and the directory fsynced): a crash leaves either the old snapshot or the new one,
//! never a torn file. Only the newest `.snap` is kept; `.tmp` files are leftovers of an
//! interrupted build or transfer, deleted by [`SnapshotDir::sweep_unfinished`] at start.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tanvrit_state::{State, StateLoader, Table};

use crate::snapshot_records::{
    write_record, BodyReader, ChunkRef, RecordRef, RowRef, SnapshotItem, ENCODING_JSON,
    ENCODING_MSGPACK,
};
use crate::state_tables::decode_row;
use crate::{JobLogChunk, StoreError};

/// The first bytes of every snapshot file.
pub const MAGIC: &[u8; 8] = b"TNVSNAP\x01";
/// The header version this binary writes and reads.
pub const SNAPSHOT_FILE_VERSION: u64 = 1;
const SUFFIX: &str = "snap";
const TMP_SUFFIX: &str = "tmp";
/// Buffer of a snapshot reader or writer: what a stream holds in memory.
const BUFFER_BYTES: usize = 1 << 20;
/// Largest accepted header.
const MAX_HEADER_BYTES: u32 = 1 << 20;

const WHAT: &str = "snapshot file";

fn io_error(path: &Path, err: io::Error) -> StoreError {
    StoreError::Io(format!("{}: {err}", path.display()))
}

fn corrupt(detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        what: WHAT,
        detail: detail.into(),
    }
}

#[derive(Serialize, Deserialize)]
struct Header<M> {
    v: u64,
    index: u64,
    encoding: String,
    meta: M,
}

/// One group's snapshot directory (`single` for the single-node engine, `raft` for a
/// Raft replica; one per Raft group once there are several).
#[derive(Clone, Debug)]
pub struct SnapshotDir {
    dir: PathBuf,
}

/// A complete snapshot file: where it is and what its header says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotFile<M> {
    /// The file.
    pub path: PathBuf,
    /// The last log index the snapshot covers.
    pub index: u64,
    /// The caller's metadata (openraft's snapshot meta for a replica).
    pub meta: M,
    /// The file's size in bytes.
    pub bytes: u64,
}

/// Makes names unique within the process, so two temporary files never collide.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

impl SnapshotDir {
    /// Opens (creating) `<data_dir>/snapshots/<group>`.
    pub fn open(data_dir: &Path, group: &str) -> Result<SnapshotDir, StoreError> {
        let dir = data_dir.join("snapshots").join(group);
        fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        Ok(SnapshotDir { dir })
    }

    /// Deletes the leftovers of interrupted builds and transfers. Call it once at start,
    /// before anything writes to the directory.
    pub fn sweep_unfinished(&self) -> Result<(), StoreError> {
        for path in self.files(TMP_SUFFIX)? {
            fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
        }
        Ok(())
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn files(&self, suffix: &str) -> Result<Vec<PathBuf>, StoreError> {
        let mut out = Vec::new();
        for item in fs::read_dir(&self.dir).map_err(|e| io_error(&self.dir, e))? {
            let path = item.map_err(|e| io_error(&self.dir, e))?.path();
            if path.extension().is_some_and(|ext| ext == suffix) {
                out.push(path);
            }
        }
        out.sort();
        Ok(out)
    }

    fn temporary(&self, purpose: &str) -> PathBuf {
        let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!("{purpose}-{}-{n}.{TMP_SUFFIX}", std::process::id()))
    }

    /// The newest complete snapshot, if any (its header only; the body is read by
    /// [`SnapshotDir::read_state`]).
    pub fn current<M: DeserializeOwned>(&self) -> Result<Option<SnapshotFile<M>>, StoreError> {
        // Names start with the zero-padded index, so the last one is the newest.
        match self.files(SUFFIX)?.pop() {
            Some(path) => read_header(&path).map(Some),
            None => Ok(None),
        }
    }

    /// True when the directory holds a complete snapshot.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.files(SUFFIX)?.is_empty())
    }

    /// Starts writing a snapshot at `index`; nothing is visible until
    /// [`SnapshotWriter::finish`].
    pub fn create<M: Serialize>(&self, index: u64, meta: &M) -> Result<SnapshotWriter, StoreError> {
        let tmp = self.temporary("build");
        // Readable too: a snapshot built for a transfer is read back from this handle.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| io_error(&tmp, e))?;
        let mut writer = SnapshotWriter {
            dir: self.clone(),
            out: BufWriter::with_capacity(BUFFER_BYTES, SyncingFile { file, unsynced: 0 }),
            tmp,
            index,
            records: 0,
        };
        writer.write_header(meta)?;
        Ok(writer)
    }

    /// A new empty file for a snapshot arriving from a peer, opened for reading and
    /// writing; [`SnapshotDir::read_received`] checks it, [`SnapshotDir::make_current`]
    /// makes it current.
    pub fn receive(&self) -> Result<(PathBuf, File), StoreError> {
        let tmp = self.temporary("incoming");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| io_error(&tmp, e))?;
        Ok((tmp, file))
    }

    /// Checks a received file end to end (header, every record, the end marker) and
    /// makes it durable, without making it current. Each item it holds is handed to
    /// `on_item` on the way (a replica installs them).
    pub fn read_received<M: DeserializeOwned>(
        &self,
        received: &Path,
        mut on_item: impl FnMut(SnapshotItem) -> Result<(), StoreError>,
    ) -> Result<SnapshotFile<M>, StoreError> {
        let header: SnapshotFile<M> = read_header(received)?;
        body_of(received)?.for_each(|item| on_item(item).map(|()| true))?;
        File::open(received)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_error(received, e))?;
        Ok(header)
    }

    /// Makes a file checked by [`SnapshotDir::read_received`] the current snapshot and
    /// deletes the older ones; returns its new path.
    pub fn make_current<M>(&self, received: &SnapshotFile<M>) -> Result<PathBuf, StoreError> {
        self.publish(&received.path, received.index)
    }

    /// [`SnapshotDir::read_received`], then [`SnapshotDir::make_current`].
    #[cfg(test)]
    fn adopt<M: DeserializeOwned>(
        &self,
        received: &Path,
        on_item: impl FnMut(SnapshotItem) -> Result<(), StoreError>,
    ) -> Result<SnapshotFile<M>, StoreError> {
        let header = self.read_received::<M>(received, on_item)?;
        let path = self.make_current(&header)?;
        Ok(SnapshotFile { path, ..header })
    }

    /// Renames a finished file into place, fsyncs the directory and deletes the rest.
    fn publish(&self, tmp: &Path, index: u64) -> Result<PathBuf, StoreError> {
        let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let path = self
            .dir
            .join(format!("{index:020}-{}-{n}.{SUFFIX}", std::process::id()));
        fs::rename(tmp, &path).map_err(|e| io_error(&path, e))?;
        sync_dir(&self.dir)?;
        for old in self.files(SUFFIX)? {
            if old != path {
                fs::remove_file(&old).map_err(|e| io_error(&old, e))?;
            }
        }
        Ok(path)
    }

    /// Deletes the snapshot file at `path` (its content is in the tables now) and makes
    /// the deletion durable.
    pub fn remove(&self, path: &Path) -> Result<(), StoreError> {
        match fs::remove_file(path) {
            Ok(()) => sync_dir(&self.dir),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(io_error(path, err)),
        }
    }

    /// Reads the state a snapshot file holds, from its rows or (files of earlier
    /// versions) its state record; reading stops before the job-log chunks.
    pub fn read_state<M>(&self, snapshot: &SnapshotFile<M>) -> Result<State, StoreError> {
        read_state_of(&snapshot.path)
    }
}

/// Hands every item of the snapshot file at `path` to `on_item`, in order (the file is
/// checked as it is read: a bad record or a wrong count is an error).
pub fn read_items_of(
    path: &Path,
    mut on_item: impl FnMut(SnapshotItem) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    body_of(path)?.for_each(|item| on_item(item).map(|()| true))
}

/// The state a snapshot file at `path` holds.
pub fn read_state_of(path: &Path) -> Result<State, StoreError> {
    let mut whole = None;
    let mut loader = StateLoader::new();
    body_of(path)?.for_each(|item| match item {
        SnapshotItem::State(state) => {
            whole = Some(*state);
            Ok(false)
        }
        SnapshotItem::Row(table, key, value) => {
            if let Some(row) = decode_row(table, &key, &value)? {
                loader.add(row);
            }
            Ok(true)
        }
        SnapshotItem::Chunk(_) => Ok(false),
    })?;
    match whole {
        Some(state) => Ok(state),
        None => loader.finish().map_err(|e| corrupt(e.to_string())),
    }
}

fn read_header<M: DeserializeOwned>(path: &Path) -> Result<SnapshotFile<M>, StoreError> {
    let mut file = File::open(path).map_err(|e| io_error(path, e))?;
    let bytes = file.metadata().map_err(|e| io_error(path, e))?.len();
    let (header, _) = header_of::<M>(&mut file).map_err(|e| match e {
        HeaderError::Io(err) => io_error(path, err),
        HeaderError::Store(err) => err,
    })?;
    Ok(SnapshotFile {
        path: path.to_path_buf(),
        index: header.index,
        meta: header.meta,
        bytes,
    })
}

enum HeaderError {
    Io(io::Error),
    Store(StoreError),
}

/// Reads the magic and header; leaves `file` positioned at the body.
fn header_of<M: DeserializeOwned>(file: &mut File) -> Result<(Header<M>, u64), HeaderError> {
    file.seek(SeekFrom::Start(0)).map_err(HeaderError::Io)?;
    let mut magic = [0u8; 8];
    let mut len = [0u8; 4];
    let short = |e: io::Error| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            HeaderError::Store(corrupt("shorter than its header"))
        } else {
            HeaderError::Io(e)
        }
    };
    file.read_exact(&mut magic).map_err(short)?;
    if &magic != MAGIC {
        return Err(HeaderError::Store(corrupt("not a tanvrit snapshot file")));
    }
    file.read_exact(&mut len).map_err(short)?;
    let len = u32::from_be_bytes(len);
    if len > MAX_HEADER_BYTES {
        return Err(HeaderError::Store(corrupt(format!(
            "header of {len} bytes"
        ))));
    }
    let mut bytes = vec![0u8; len as usize];
    file.read_exact(&mut bytes).map_err(short)?;
    #[derive(Deserialize)]
    struct Version {
        v: u64,
    }
    let version: Version = serde_json::from_slice(&bytes)
        .map_err(|e| HeaderError::Store(corrupt(format!("header: {e}"))))?;
    if version.v != SNAPSHOT_FILE_VERSION {
        return Err(HeaderError::Store(StoreError::UnsupportedRecord {
            what: WHAT,
            found: version.v,
            supported: SNAPSHOT_FILE_VERSION,
        }));
    }
    let header: Header<M> = serde_json::from_slice(&bytes)
        .map_err(|e| HeaderError::Store(corrupt(format!("header: {e}"))))?;
    if header.encoding != ENCODING_JSON && header.encoding != ENCODING_MSGPACK {
        return Err(HeaderError::Store(corrupt(format!(
            "unknown body encoding `{}`",
            header.encoding
        ))));
    }
    Ok((header, 12 + u64::from(len)))
}

/// A reader of the body of the file at `path`.
fn body_of(path: &Path) -> Result<BodyReader, StoreError> {
    let mut file = File::open(path).map_err(|e| io_error(path, e))?;
    let (header, _) = header_of::<serde::de::IgnoredAny>(&mut file).map_err(|e| match e {
        HeaderError::Io(err) => io_error(path, err),
        HeaderError::Store(err) => err,
    })?;
    BodyReader::new(
        &header.encoding,
        BufReader::with_capacity(BUFFER_BYTES, file),
    )
}

/// Bytes written between two `fdatasync`s of a snapshot being written: the disk takes
/// the file a slice at a time, so the final sync (and the log appends' own fsyncs
/// meanwhile) never wait behind hundreds of megabytes of dirty pages.
const SYNC_EVERY_BYTES: u64 = 8 << 20;

/// A file that syncs its data every [`SYNC_EVERY_BYTES`].
struct SyncingFile {
    file: File,
    unsynced: u64,
}

impl Write for SyncingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.file.write(buf)?;
        self.unsynced += written as u64;
        if self.unsynced >= SYNC_EVERY_BYTES {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A snapshot being written; dropped unfinished, it leaves only a `.tmp` file that the
/// next open deletes.
pub struct SnapshotWriter {
    dir: SnapshotDir,
    out: BufWriter<SyncingFile>,
    tmp: PathBuf,
    index: u64,
    records: u64,
}

impl SnapshotWriter {
    fn io(&self, err: io::Error) -> StoreError {
        io_error(&self.tmp, err)
    }

    fn write_header<M: Serialize>(&mut self, meta: &M) -> Result<(), StoreError> {
        let header = serde_json::to_vec(&Header {
            v: SNAPSHOT_FILE_VERSION,
            index: self.index,
            encoding: ENCODING_MSGPACK.to_string(),
            meta,
        })
        .map_err(|e| StoreError::Encode {
            what: WHAT,
            detail: e.to_string(),
        })?;
        let len = u32::try_from(header.len())
            .ok()
            .filter(|len| *len <= MAX_HEADER_BYTES)
            .ok_or_else(|| StoreError::Encode {
                what: WHAT,
                detail: format!("header of {} bytes", header.len()),
            })?;
        let written = self
            .out
            .write_all(MAGIC)
            .and_then(|()| self.out.write_all(&len.to_be_bytes()))
            .and_then(|()| self.out.write_all(&header));
        written.map_err(|e| self.io(e))
    }

    fn record<S: Serialize>(&mut self, record: &RecordRef<'_, S>) -> Result<(), StoreError> {
        write_record(&mut self.out, record)?;
        self.records += 1;
        Ok(())
    }

    /// Writes a whole state as the first record, instead of rows (the layout of
    /// earlier versions, which a single-node directory is imported from). `state` is a
    /// [`State`] or anything that encodes like one (a [`tanvrit_state::StateImage`]).
    pub fn write_state<S: Serialize>(&mut self, state: &S) -> Result<(), StoreError> {
        self.record(&RecordRef::State(state))
    }

    /// Writes one stored state row (all rows come before the chunks).
    pub fn write_row(&mut self, table: Table, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.record::<()>(&RecordRef::Row(RowRef::new(table, key, value)))
    }

    /// Writes one job-log chunk (after the state).
    pub fn write_chunk(&mut self, chunk: &JobLogChunk) -> Result<(), StoreError> {
        // Chunks are stored from `LogAppend`'s `String` data, so they are UTF-8.
        let data = String::from_utf8_lossy(&chunk.data);
        self.record::<()>(&RecordRef::Chunk(ChunkRef {
            job: chunk.job.as_str(),
            attempt: chunk.attempt.as_str(),
            offset: chunk.offset,
            data: &data,
        }))
    }

    /// Closes the stream, makes the file durable and current, and deletes older
    /// snapshots. Returns the file's path and size.
    pub fn finish(mut self) -> Result<(PathBuf, u64), StoreError> {
        let records = self.records;
        self.record::<()>(&RecordRef::End { records })?;
        self.out.flush().map_err(|e| self.io(e))?;
        let file = &self.out.get_ref().file;
        file.sync_all().map_err(|e| io_error(&self.tmp, e))?;
        let bytes = file.metadata().map_err(|e| io_error(&self.tmp, e))?.len();
        let path = self.dir.publish(&self.tmp, self.index)?;
        Ok((path, bytes))
    }

    /// Closes the stream and hands back the file, unlinked and positioned at its
    /// start: a snapshot made for one transfer, gone from the disk when the handle is
    /// dropped (and from the directory at once, so a crash leaves nothing behind).
    /// Not fsynced: nothing depends on it surviving a crash. Returns its size too.
    pub fn finish_detached(mut self) -> Result<(File, u64), StoreError> {
        let records = self.records;
        self.record::<()>(&RecordRef::End { records })?;
        self.out.flush().map_err(|e| self.io(e))?;
        let tmp = self.tmp.clone();
        let mut file = self
            .out
            .into_inner()
            .map_err(|e| io_error(&tmp, e.into_error()))?
            .file;
        fs::remove_file(&tmp).map_err(|e| io_error(&tmp, e))?;
        let bytes = file.metadata().map_err(|e| io_error(&tmp, e))?.len();
        file.seek(SeekFrom::Start(0))
            .map_err(|e| io_error(&tmp, e))?;
        Ok((file, bytes))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use tanvrit_api::{AttemptId, JobId, NodeId};
    use tanvrit_state::State;

    use super::*;

    fn state() -> State {
        crate::snapshot::tests::applied().1
    }

    fn chunk(n: u64) -> JobLogChunk {
        JobLogChunk {
            job: JobId::from("job-1"),
            attempt: AttemptId::from("att-1"),
            offset: n * 10,
            data: format!("line {n}\n").into_bytes(),
        }
    }

    fn write(dir: &SnapshotDir, index: u64, chunks: u64) -> PathBuf {
        let mut writer = dir.create(index, &format!("meta-{index}")).unwrap();
        writer.write_state(&state()).unwrap();
        for n in 0..chunks {
            writer.write_chunk(&chunk(n)).unwrap();
        }
        writer.finish().unwrap().0
    }

    #[test]
    fn a_written_snapshot_is_current_and_reads_back_whole() {
        let data = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(data.path(), "raft").unwrap();
        assert!(dir.current::<String>().unwrap().is_none());
        write(&dir, 7, 3);
        let current = dir.current::<String>().unwrap().unwrap();
        assert_eq!((current.index, current.meta.as_str()), (7, "meta-7"));
        assert_eq!(dir.read_state(&current).unwrap(), state());
    }

    #[test]
    fn a_state_written_as_rows_reads_back_as_the_state_with_its_indexes() {
        let data = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(data.path(), "raft").unwrap();
        let mut writer = dir.create(3, &()).unwrap();
        let state = state();
        for row in state.all_rows() {
            let value = crate::state_tables::encode_row_value(&row.value.unwrap()).unwrap();
            writer.write_row(row.table, &row.key, &value).unwrap();
        }
        writer.write_chunk(&chunk(1)).unwrap();
        writer.finish().unwrap();
        let read = dir
            .read_state(&dir.current::<()>().unwrap().unwrap())
            .unwrap();
        assert_eq!(read, state);
        assert!(read.indexes_consistent());
    }

    #[test]
    fn a_state_image_reads_back_as_the_state_with_its_indexes() {
        let data = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(data.path(), "raft").unwrap();
        let mut writer = dir.create(2, &()).unwrap();
        writer.write_state(&state().image()).unwrap();
        writer.finish().unwrap();
        let read = dir
            .read_state(&dir.current::<()>().unwrap().unwrap())
            .unwrap();
        assert_eq!(read, state());
        assert!(read.indexes_consistent());
        assert!(read.node(&NodeId::from("node-1")).is_some());
    }

    #[test]
    fn a_big_state_is_written_in_synced_slices_and_reads_back() {
        let data = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(data.path(), "raft").unwrap();
        let mut writer = dir.create(2, &()).unwrap();
        writer.write_state(&state()).unwrap();
        // More than two sync slices of chunks.
        let big = JobLogChunk {
            data: vec![b'y'; 1 << 20],
            ..chunk(0)
        };
        for n in 0..20 {
            writer
                .write_chunk(&JobLogChunk {
                    offset: n,
                    ..big.clone()
                })
                .unwrap();
        }
        let (path, bytes) = writer.finish().unwrap();
        assert!(bytes > 2 * SYNC_EVERY_BYTES, "{bytes}");
        let (tmp, mut file) = dir.receive().unwrap();
        file.write_all(&fs::read(path).unwrap()).unwrap();
        let mut seen = 0;
        dir.adopt::<()>(&tmp, |item| {
            if let SnapshotItem::Chunk(c) = item {
                assert_eq!(c.data.len(), 1 << 20);
                seen += 1;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, 20);
    }

    #[test]
    fn a_detached_snapshot_leaves_no_file_behind_and_is_received_whole() {
        let data = tempfile::tempdir().unwrap();
        let source = SnapshotDir::open(data.path(), "leader").unwrap();
        let mut writer = source.create(40, &"meta-40".to_string()).unwrap();
        writer.write_state(&state()).unwrap();
        for n in 0..5 {
            writer.write_chunk(&chunk(n)).unwrap();
        }
        let (mut sent, bytes) = writer.finish_detached().unwrap();
        assert!(source.files(TMP_SUFFIX).unwrap().is_empty());
        assert!(source.current::<String>().unwrap().is_none());
        let dir = SnapshotDir::open(data.path(), "raft").unwrap();
        let (tmp, mut file) = dir.receive().unwrap();
        assert_eq!(io::copy(&mut sent, &mut file).unwrap(), bytes);
        let mut chunks = 0;
        let received = dir
            .read_received::<String>(&tmp, |item| {
                chunks += u64::from(matches!(item, SnapshotItem::Chunk(_)));
                Ok(())
            })
            .unwrap();
        assert_eq!((received.index, chunks), (40, 5));
        let current = dir.make_current(&received).unwrap();
        dir.remove(&current).unwrap();
        assert!(dir.is_empty().unwrap());
    }

    #[test]
    fn a_newer_snapshot_replaces_the_older_file() {
        let data = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(data.path(), "raft").unwrap();
        let first = write(&dir, 7, 0);
        write(&dir, 12, 0);
        assert!(!first.exists());
        assert_eq!(dir.files(SUFFIX).unwrap().len(), 1);
        assert_eq!(dir.current::<String>().unwrap().unwrap().index, 12);
    }

    #[test]
    fn an_unfinished_build_leaves_the_current_snapshot_and_is_swept_at_open() {
        let data = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(data.path(), "raft").unwrap();
        write(&dir, 7, 1);
        let mut unfinished = dir.create(9, &"meta-9".to_string()).unwrap();
        unfinished.write_state(&state()).unwrap();
        drop(unfinished);
        assert_eq!(dir.current::<String>().unwrap().unwrap().index, 7);
        let reopened = SnapshotDir::open(data.path(), "raft").unwrap();
        assert_eq!(reopened.files(TMP_SUFFIX).unwrap().len(), 1);
        reopened.sweep_unfinished().unwrap();
        assert!(reopened.files(TMP_SUFFIX).unwrap().is_empty());
        assert_eq!(reopened.current::<String>().unwrap().unwrap().index, 7);
    }

    #[test]
    fn a_received_copy_is_adopted_with_every_chunk() {
        let data = tempfile::tempdir().unwrap();
        let source = SnapshotDir::open(data.path(), "leader").unwrap();
        let sent = write(&source, 40, 5);
        let dir = SnapshotDir::open(data.path(), "raft").unwrap();
        let (tmp, mut file) = dir.receive().unwrap();
        file.write_all(&fs::read(&sent).unwrap()).unwrap();
        let mut chunks = Vec::new();
        let adopted = dir
            .adopt::<String>(&tmp, |item| {
                if let SnapshotItem::Chunk(c) = item {
                    chunks.push(c);
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(adopted.index, 40);
        assert_eq!(dir.read_state(&adopted).unwrap(), state());
        assert_eq!(chunks, (0..5).map(chunk).collect::<Vec<_>>());
        assert!(!tmp.exists());
        assert_eq!(dir.current::<String>().unwrap().unwrap().path, adopted.path);
    }

    #[test]
    fn a_truncated_transfer_is_refused_and_the_old_snapshot_stays() {
        let data = tempfile::tempdir().unwrap();
        let source = SnapshotDir::open(data.path(), "leader").unwrap();
        let sent = fs::read(write(&source, 40, 5)).unwrap();
        let dir = SnapshotDir::open(data.path(), "raft").unwrap();
        write(&dir, 10, 0);
        for cut in [4, 20, sent.len() - 2] {
            let (tmp, mut file) = dir.receive().unwrap();
            file.write_all(&sent[..cut]).unwrap();
            let err = dir.adopt::<String>(&tmp, |_| Ok(())).unwrap_err();
            assert_eq!(err.code(), "store_corrupt", "cut at {cut}: {err}");
            assert_eq!(dir.current::<String>().unwrap().unwrap().index, 10);
        }
    }

    #[test]
    fn a_file_of_an_unknown_version_is_refused_with_its_version() {
        let data = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(data.path(), "raft").unwrap();
        let header = br#"{"v":9,"index":1,"encoding":"json-stream","meta":null}"#;
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&(header.len() as u32).to_be_bytes());
        bytes.extend_from_slice(header);
        fs::write(dir.path().join("00000000000000000001-x.snap"), bytes).unwrap();
        let err = dir.current::<Option<String>>().unwrap_err();
        assert!(matches!(
            err,
            StoreError::UnsupportedRecord {
                found: 9,
                supported: 1,
                ..
            }
        ));
    }
}
