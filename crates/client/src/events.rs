//! [`EventStream`]: follows `events/stream` across replicas. It remembers the position
//! of the last event (and heartbeat) it received and, when a replica goes away, the
//! stream ends, or the server cuts it off for lagging, reconnects (to the next endpoint
//! on a failure) from that position: every event once, in log order.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use tanvrit_api::{Event, EventFrame, EventStreamRequest, Index, EVENTS_LAGGED};

use crate::{Client, ClientError};

/// Heartbeat interval asked for when the request names none.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Longest line accepted from the server (a frame with a large job in it).
const MAX_LINE: usize = 16 << 20;

type Body = futures::stream::BoxStream<'static, Result<bytes::Bytes, reqwest::Error>>;

/// A resumable event stream. Read it with [`EventStream::next`], or turn it into a
/// `futures::Stream` with [`EventStream::into_stream`].
///
/// Errors it reports end it: a 410 `events_compacted` (the position is older than every
/// replica it tried still holds; re-list, then open a new stream), a refusal of the
/// request or key (4xx), or as many consecutive failed connections as the client's
/// `max_retries` allows. Transport failures and 503s before that are retried on the
/// next endpoint, with the client's backoff.
pub struct EventStream {
    client: Client,
    request: EventStreamRequest,
    /// The last position received: `(index, Some(seq))` after an event, `(index, None)`
    /// after a heartbeat (every event through `index` was considered).
    position: Option<(Index, Option<u32>)>,
    body: Option<Body>,
    buffer: BytesMut,
    ready: VecDeque<Event>,
    failures: u32,
    /// Replicas that answered `events_compacted` in a row.
    compacted: usize,
    idle: Duration,
    finished: bool,
}

impl Client {
    /// Follows the event stream described by `request` (its `from_index` and
    /// `from_seq` are where it starts; later reconnects resume where it got to).
    pub fn events(&self, mut request: EventStreamRequest) -> EventStream {
        let heartbeat = Duration::from_millis(
            *request
                .heartbeat_ms
                .get_or_insert(HEARTBEAT.as_millis() as u64),
        );
        let position = request.from_index.map(|index| (index, request.from_seq));
        EventStream {
            client: self.clone(),
            request,
            position,
            body: None,
            buffer: BytesMut::new(),
            ready: VecDeque::new(),
            failures: 0,
            compacted: 0,
            // A replica that stops sending even heartbeats is gone (or cut off).
            idle: heartbeat * 3 + Duration::from_secs(1),
            finished: false,
        }
    }
}

impl EventStream {
    /// The position to resume from: the last event's `(index, seq)`, or `(index, None)`
    /// when a heartbeat said every event through `index` was seen.
    pub fn position(&self) -> Option<(Index, Option<u32>)> {
        self.position
    }

    /// The next event; `None` once the stream ended after an error it reported.
    pub async fn next(&mut self) -> Option<Result<Event, ClientError>> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(Ok(event));
            }
            if self.finished {
                return None;
            }
            if self.body.is_none() {
                if let Err(error) = self.connect().await {
                    if let Some(error) = error {
                        self.finished = true;
                        return Some(Err(error));
                    }
                    continue;
                }
            }
            self.read_some().await;
        }
    }

    /// This stream as a `futures::Stream`.
    pub fn into_stream(self) -> impl futures::Stream<Item = Result<Event, ClientError>> {
        futures::stream::unfold(self, |mut stream| async move {
            let item = stream.next().await?;
            Some((item, stream))
        })
    }

    /// Opens the stream on the current endpoint. `Err(None)`: this attempt failed but
    /// another may follow; `Err(Some(error))`: give up and report it.
    async fn connect(&mut self) -> Result<(), Option<ClientError>> {
        let idx = self.client.current_idx();
        let mut request = self.request.clone();
        request.from_index = self.position.map(|(index, _)| index);
        request.from_seq = self.position.and_then(|(_, seq)| seq);
        let body = serde_json::to_vec(&request).map_err(|e| {
            Some(ClientError::Config(format!(
                "cannot encode the request: {e}"
            )))
        })?;
        let failure = match self
            .client
            .open_long(idx, &["api", "compute", "events", "stream"], body)
            .await
        {
            Ok(response) if response.status().is_success() => {
                self.compacted = 0;
                self.body = Some(response.bytes_stream().boxed());
                self.buffer.clear();
                return Ok(());
            }
            Ok(response) => {
                let status = response.status().as_u16();
                let bytes = response.bytes().await.unwrap_or_default();
                let error = ClientError::from_response(status, None, &bytes);
                if status == 410 && self.compacted + 1 < self.client.endpoint_count() {
                    // Another replica may have kept running and still hold the position.
                    self.compacted += 1;
                    self.client.advance_from(idx);
                    return Err(None);
                }
                if status != 503 && status != 429 {
                    return Err(Some(error));
                }
                error
            }
            Err(error) => error,
        };
        self.failures += 1;
        if self.failures > self.client.config().max_retries.max(1) {
            return Err(Some(failure));
        }
        tracing::debug!(error = %failure, "event stream: reconnecting on the next endpoint");
        self.client.advance_from(idx);
        let config = self.client.config();
        let backoff = config
            .backoff_base
            .saturating_mul(1 << self.failures.min(10))
            .min(config.backoff_max);
        // A cluster of one replica has nowhere else to go: wait for it.
        if self.client.endpoint_count() == 1 || self.failures > 1 {
            tokio::time::sleep(backoff).await;
        }
        Err(None)
    }

    /// Reads from the open body until at least one event is ready or the body ends.
    async fn read_some(&mut self) {
        let Some(body) = self.body.as_mut() else {
            return;
        };
        let chunk = tokio::time::timeout(self.idle, body.next()).await;
        match chunk {
            Ok(Some(Ok(bytes))) => {
                self.buffer.extend_from_slice(&bytes);
                self.take_lines();
                if self.buffer.len() > MAX_LINE {
                    self.drop_connection();
                }
            }
            // Ended, broke, or went silent: resume elsewhere from the position.
            Ok(Some(Err(_))) | Ok(None) | Err(_) => {
                let idx = self.client.current_idx();
                self.client.advance_from(idx);
                self.drop_connection();
            }
        }
    }

    fn drop_connection(&mut self) {
        self.body = None;
        self.buffer.clear();
    }

    fn take_lines(&mut self) {
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
            let line = self.buffer.split_to(end + 1);
            let Ok(frame) = serde_json::from_slice::<EventFrame>(&line) else {
                continue;
            };
            // A frame arrived: this connection works.
            self.failures = 0;
            match frame {
                EventFrame::Event(event) => {
                    let seen = self.position.is_some_and(|(index, seq)| {
                        event.index < index
                            || (event.index == index && seq.is_none_or(|seq| event.seq <= seq))
                    });
                    if !seen {
                        self.position = Some((event.index, Some(event.seq)));
                        self.ready.push_back(*event);
                    }
                }
                EventFrame::Heartbeat { index } => {
                    if self.position.is_none_or(|(at, _)| index >= at) {
                        self.position = Some((index, None));
                    }
                }
                EventFrame::End { code, .. } => {
                    if code != EVENTS_LAGGED {
                        let idx = self.client.current_idx();
                        self.client.advance_from(idx);
                    }
                    self.drop_connection();
                    return;
                }
            }
        }
    }
}
