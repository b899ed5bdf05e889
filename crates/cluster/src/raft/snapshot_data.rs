//! [`SnapshotData`]: a snapshot as openraft moves it, a file read or written a chunk at a
//! time. A snapshot arriving from the leader is a file being written. A snapshot to
//! send is made only when it is first read: openraft asks for "the current snapshot"
//! at every start, where it wants the metadata alone, and a replica keeps no copy of
//! its tables on disk, so asking must cost nothing. The snapshot's content is fixed
//! when it is asked for (a read transaction taken then); the file is written from it,
//! in a blocking task, by the first read or seek.

use std::future::Future;
use std::io::{self, SeekFrom};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};
use tokio::task::JoinHandle;

/// Writes a snapshot to a file and hands it back, positioned at its start.
pub type BuildSnapshotFile = Box<dyn FnOnce() -> io::Result<std::fs::File> + Send>;

/// A snapshot's bytes: a file, or the means to write one on first use.
pub struct SnapshotData {
    state: DataState,
    /// A seek asked for before the file existed, done once it does.
    pending_seek: Option<SeekFrom>,
}

enum DataState {
    Unbuilt(Option<BuildSnapshotFile>),
    Building(JoinHandle<io::Result<std::fs::File>>),
    Ready(tokio::fs::File),
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            DataState::Unbuilt(_) => "unbuilt",
            DataState::Building(_) => "building",
            DataState::Ready(_) => "ready",
        };
        f.debug_struct("SnapshotData")
            .field("state", &state)
            .finish()
    }
}

impl SnapshotData {
    /// A snapshot held in `file`.
    pub fn from_std(file: std::fs::File) -> SnapshotData {
        SnapshotData {
            state: DataState::Ready(tokio::fs::File::from_std(file)),
            pending_seek: None,
        }
    }

    /// A snapshot that `build` writes when it is first read or sought.
    pub fn lazy(build: BuildSnapshotFile) -> SnapshotData {
        SnapshotData {
            state: DataState::Unbuilt(Some(build)),
            pending_seek: None,
        }
    }

    /// The file, written first if it was not yet.
    pub async fn into_std(mut self) -> io::Result<std::fs::File> {
        std::future::poll_fn(|cx| self.poll_built(cx)).await?;
        match self.state {
            DataState::Ready(file) => Ok(file.into_std().await),
            _ => unreachable!("poll_built returned ready"),
        }
    }

    /// Drives the build to its end; the state is `Ready` when this returns `Ok`.
    fn poll_built(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match &mut self.state {
                DataState::Ready(_) => return Poll::Ready(Ok(())),
                DataState::Unbuilt(build) => {
                    let build = build
                        .take()
                        .ok_or_else(|| io::Error::other("the snapshot's build was lost"))?;
                    self.state = DataState::Building(tokio::task::spawn_blocking(build));
                }
                DataState::Building(handle) => {
                    let file = ready!(Pin::new(handle).poll(cx)).map_err(io::Error::other)??;
                    self.state = DataState::Ready(tokio::fs::File::from_std(file));
                }
            }
        }
    }

    /// The file, once built, with any seek asked for before it existed started.
    fn poll_file(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Pin<&mut tokio::fs::File>>> {
        ready!(self.poll_built(cx))?;
        let DataState::Ready(file) = &mut self.state else {
            unreachable!("poll_built returned ready");
        };
        if let Some(position) = self.pending_seek.take() {
            Pin::new(&mut *file).start_seek(position)?;
        }
        Poll::Ready(Ok(Pin::new(file)))
    }
}

impl AsyncRead for SnapshotData {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        ready!(self.get_mut().poll_file(cx))?.poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.get_mut().poll_file(cx))?.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.get_mut().poll_file(cx))?.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.get_mut().poll_file(cx))?.poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        let this = self.get_mut();
        match &mut this.state {
            DataState::Ready(file) => Pin::new(file).start_seek(position),
            // Done by the first poll once the file exists.
            _ => {
                this.pending_seek = Some(position);
                Ok(())
            }
        }
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        ready!(self.get_mut().poll_file(cx))?.poll_complete(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncSeekExt};

    use super::*;

    fn file_with(bytes: &[u8]) -> std::fs::File {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        std::io::Seek::rewind(&mut file).unwrap();
        file
    }

    #[tokio::test]
    async fn a_lazy_snapshot_is_written_once_on_first_use_and_never_if_unread() {
        let builds = Arc::new(AtomicUsize::new(0));
        let counted = |builds: &Arc<AtomicUsize>| {
            let builds = builds.clone();
            SnapshotData::lazy(Box::new(move || {
                builds.fetch_add(1, Ordering::SeqCst);
                Ok(file_with(b"0123456789"))
            }))
        };
        drop(counted(&builds));
        assert_eq!(builds.load(Ordering::SeqCst), 0);

        let mut data = counted(&builds);
        // openraft asks for the size first, then reads from an offset.
        assert_eq!(data.seek(SeekFrom::End(0)).await.unwrap(), 10);
        data.seek(SeekFrom::Start(4)).await.unwrap();
        let mut rest = String::new();
        data.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "456789");
        assert_eq!(builds.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_build_is_an_io_error_on_read() {
        let mut data = SnapshotData::lazy(Box::new(|| Err(io::Error::other("disk on fire"))));
        let err = data.read_u8().await.unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
    }
}
