//! The event stream: `POST /api/compute/events/stream` (a JSON body) and `GET` (query
//! parameters, for curl and browsers). Newline-delimited JSON frames by default,
//! Server-Sent Events when the client accepts `text/event-stream`.
//!
//! A stream pulls from the replica's [`EventLog`] at its reader's pace: apply never
//! waits for it, and it holds at most one batch of frames. A reader that falls more
//! than [`MAX_BEHIND`] events behind gets a final `end` frame (`events_lagged`, with the
//! position to resume from) and the stream closes; so does one whose key is revoked
//! (`unauthorized`), checked before every read of the log.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use tanvrit_api::{ErrorBody, Event, EventFrame, EventStreamRequest, Index, Scope, EVENTS_LAGGED};
use tanvrit_cluster::{EventLog, Position};
use tanvrit_state::events::EventFilter;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::app::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::limits::StreamGuard;
use crate::routes::ApiErrors;

/// Events a stream reads from the log at a time (its buffer).
const BATCH: usize = 256;
/// Held events a reader may be behind before its stream is ended with `events_lagged`.
pub(crate) const MAX_BEHIND: usize = 10_000;
/// Heartbeat interval when the request names none.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);

/// Follows the events of this replica from `from_index` (or from now), filtered.
#[utoipa::path(
    post,
    path = "/api/compute/events/stream",
    operation_id = "stream_events",
    tag = "events",
    request_body = EventStreamRequest,
    responses(
        (status = 200, description = "A stream of `EventFrame`s: one JSON object per line \
            (`application/x-ndjson`), or Server-Sent Events (`text/event-stream`: `event:` \
            is the frame's kind, `id:` the event's `index.seq`, `data:` its JSON)",
            body = EventFrame, content_type = "application/x-ndjson"),
        (status = 404, description = "`not_found`: a user key named another business", body = ErrorBody),
        (status = 410, description = "`events_compacted`: `from_index` is older than this \
            replica holds; `oldest_index` is the oldest to resume from", body = ErrorBody),
        ApiErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn handle_stream_events(
    State(app): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    ApiJson(request): ApiJson<EventStreamRequest>,
) -> Result<Response, ApiError> {
    open_stream(&app, &principal, &headers, request)
}

/// The same stream, its request as query parameters (`topic=job,attempt`).
#[utoipa::path(
    get,
    path = "/api/compute/events/stream",
    operation_id = "stream_events_get",
    tag = "events",
    params(EventStreamRequest),
    responses(
        (status = 200, description = "A stream of `EventFrame`s (see the POST form)",
            body = EventFrame, content_type = "application/x-ndjson"),
        (status = 404, description = "`not_found`: a user key named another business", body = ErrorBody),
        (status = 410, description = "`events_compacted`: `from_index` is older than this \
            replica holds", body = ErrorBody),
        ApiErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn handle_stream_events_get(
    State(app): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    query: Result<Query<EventStreamRequest>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(request) = query.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    open_stream(&app, &principal, &headers, request)
}

fn open_stream(
    app: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    request: EventStreamRequest,
) -> Result<Response, ApiError> {
    principal.require(&[Scope::Admin, Scope::User])?;
    let filter = EventFilter {
        topics: request.topic.clone(),
        business: principal.business_filter(request.business.as_ref())?,
        job: request.job.clone(),
        node: request.node.clone(),
        tenant: principal.scope == Scope::User,
    };
    let heartbeat = heartbeat_interval(request.heartbeat_ms)?;
    let log = app.reader().events().clone();
    let position = match (request.from_index, last_event_id(headers)?) {
        (Some(index), _) => Position {
            index,
            seq: request.from_seq,
        },
        (None, Some(position)) => position,
        (None, None) => Position::after(log.published()),
    };
    // Refuse a resume the log cannot serve before answering 200.
    log.read(position, 0)?;
    let guard = app.open_stream(principal, Some(1))?;
    let sse = accepts_event_stream(headers);
    // A key revoked while its stream is open stops receiving at once.
    let key = principal.key.clone();
    let reader = app.reader().clone();
    let key_active: KeyCheck = Box::new(move || {
        reader.read(|state| {
            state
                .key(&key)
                .is_some_and(|stored| stored.info.revoked_at.is_none())
        })
    });
    let follow = Follow {
        key_active,
        rx: log.subscribe(),
        log,
        position,
        filter,
        heartbeat,
        // The first frame tells the client where the stream starts (unless it resumes in
        // the middle of an index, where a heartbeat would claim the whole index seen).
        pending: position
            .seq
            .is_none()
            .then_some(EventFrame::Heartbeat {
                index: position.index,
            })
            .into_iter()
            .collect(),
        done: false,
        shutdown: Box::pin(app.shutting_down()),
        sse,
        _guard: guard,
    };
    let body = Body::from_stream(futures::stream::unfold(follow, |mut follow| async move {
        let frame = follow.next().await?;
        Some((Ok::<Bytes, Infallible>(follow.encode(&frame)), follow))
    }));
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies such as nginx must pass frames on as they come.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// `heartbeat_ms` within 100 ms .. 60 s.
fn heartbeat_interval(ms: Option<u64>) -> Result<Duration, ApiError> {
    match ms {
        None => Ok(DEFAULT_HEARTBEAT),
        Some(ms @ 100..=60_000) => Ok(Duration::from_millis(ms)),
        Some(ms) => Err(ApiError::Invalid(format!(
            "heartbeat_ms must be between 100 and 60000, not {ms}"
        ))),
    }
}

/// An SSE client's reconnect names the last event it saw: `Last-Event-ID: index.seq`.
fn last_event_id(headers: &HeaderMap) -> Result<Option<Position>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let invalid = || ApiError::InvalidRequest("Last-Event-ID must be `index.seq`".into());
    let text = value.to_str().map_err(|_| invalid())?.trim();
    let (index, seq) = match text.split_once('.') {
        Some((index, seq)) => (index, Some(seq.parse().map_err(|_| invalid())?)),
        None => (text, None),
    };
    Ok(Some(Position {
        index: index.parse().map_err(|_| invalid())?,
        seq,
    }))
}

fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/event-stream"))
}

/// Whether the stream's key may still read (not revoked).
type KeyCheck = Box<dyn Fn() -> bool + Send>;

/// One open stream: its position in the log and the frames read but not yet sent.
struct Follow {
    key_active: KeyCheck,
    log: EventLog,
    rx: watch::Receiver<Index>,
    position: Position,
    filter: EventFilter,
    heartbeat: Duration,
    pending: VecDeque<EventFrame>,
    done: bool,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    sse: bool,
    /// Holds the key's place among its open streams while the stream lives.
    _guard: Option<StreamGuard>,
}

impl Follow {
    /// The next frame to send; `None` ends the stream.
    async fn next(&mut self) -> Option<EventFrame> {
        let last_sent = Instant::now();
        loop {
            if let Some(frame) = self.pending.pop_front() {
                return Some(frame);
            }
            if self.done {
                return None;
            }
            self.rx.borrow_and_update();
            if !(self.key_active)() {
                return Some(self.end("unauthorized", "the stream's API key was revoked".into()));
            }
            if self.log.behind(self.position) > MAX_BEHIND {
                return Some(self.end(
                    EVENTS_LAGGED,
                    format!(
                        "this stream fell more than {MAX_BEHIND} events behind; resume from \
                         the position given"
                    ),
                ));
            }
            let batch = match self.log.read(self.position, BATCH) {
                Ok(batch) => batch,
                Err(error) => return Some(self.end(EVENTS_LAGGED, error.to_string())),
            };
            for event in &batch.events {
                self.position = Position {
                    index: event.index,
                    seq: Some(event.seq),
                };
                if self.filter.matches(event) {
                    self.pending
                        .push_back(EventFrame::Event(Box::new(Event::clone(event))));
                }
            }
            if !batch.more && batch.published >= self.position.index {
                // Every event through `published` has been read.
                self.position = Position::after(batch.published);
            }
            if !self.pending.is_empty() || batch.more {
                continue;
            }
            tokio::select! {
                changed = self.rx.changed() => {
                    if changed.is_err() {
                        return Some(self.end("shutting_down", "the replica is stopping".into()));
                    }
                }
                _ = tokio::time::sleep_until(last_sent + self.heartbeat) => {
                    return Some(EventFrame::Heartbeat { index: self.position.index });
                }
                _ = &mut self.shutdown => {
                    return Some(self.end("shutting_down", "the server is shutting down".into()));
                }
            }
        }
    }

    fn end(&mut self, code: &str, message: String) -> EventFrame {
        self.done = true;
        EventFrame::End {
            code: code.into(),
            message,
            index: self.position.index,
            seq: self.position.seq,
        }
    }

    fn encode(&self, frame: &EventFrame) -> Bytes {
        let json = serde_json::to_value(frame).unwrap_or_default();
        if !self.sse {
            let mut line = serde_json::to_vec(&json).unwrap_or_default();
            line.push(b'\n');
            return Bytes::from(line);
        }
        // SSE: the frame's kind names the event, its inner object is the data.
        let data = json
            .as_object()
            .and_then(|object| object.values().next())
            .map(|inner| inner.to_string())
            .unwrap_or_default();
        let id = match frame {
            EventFrame::Event(event) => format!("id: {}\n", event.cursor()),
            _ => String::new(),
        };
        Bytes::from(format!("event: {}\n{id}data: {data}\n\n", frame.name()))
    }
}

#[cfg(test)]
mod tests {
    use tanvrit_api::Topic;

    use super::*;

    fn event(index: Index, seq: u32) -> Event {
        Event {
            index,
            seq,
            topic: Topic::Job,
            kind: "job_pending".into(),
            id: format!("job-{index}-{seq}"),
            state: Some("pending".into()),
            business: Some("acme".into()),
            job: None,
            node: None,
            at: 0,
            object: None,
        }
    }

    fn follow(log: &EventLog, filter: EventFilter) -> Follow {
        Follow {
            key_active: Box::new(|| true),
            rx: log.subscribe(),
            log: log.clone(),
            position: Position::after(log.published()),
            filter,
            heartbeat: Duration::from_millis(500),
            pending: VecDeque::new(),
            done: false,
            shutdown: Box::pin(std::future::pending()),
            sse: false,
            _guard: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_passes_matching_events_then_heartbeats_at_the_index_it_read() {
        let log = EventLog::new(0, 100);
        let mut other = event(2, 0);
        other.business = Some("rival".into());
        log.publish(2, vec![event(1, 0), other]);
        let acme = EventFilter {
            business: Some("acme".into()),
            ..EventFilter::default()
        };
        let mut stream = follow(&log, acme);
        stream.position = Position::after(0);
        let Some(EventFrame::Event(first)) = stream.next().await else {
            panic!("an event first");
        };
        assert_eq!((first.index, first.seq), (1, 0));
        // The rival's event is read past, not sent; the heartbeat says index 2 was read.
        assert_eq!(
            stream.next().await,
            Some(EventFrame::Heartbeat { index: 2 })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_too_far_behind_gets_a_final_lagged_frame_with_its_position() {
        let log = EventLog::new(0, MAX_BEHIND * 2);
        let mut stream = follow(&log, EventFilter::default());
        let seqs = 0..=u32::try_from(MAX_BEHIND).unwrap();
        log.publish(1, seqs.map(|seq| event(1, seq)).collect());
        match stream.next().await {
            Some(EventFrame::End {
                code, index, seq, ..
            }) => {
                assert_eq!(code, EVENTS_LAGGED);
                assert_eq!((index, seq), (0, None));
            }
            other => panic!("expected the end frame, got {other:?}"),
        }
        assert_eq!(stream.next().await, None);
    }

    #[test]
    fn an_sse_frame_names_its_kind_and_position() {
        let log = EventLog::new(0, 10);
        let mut stream = follow(&log, EventFilter::default());
        stream.sse = true;
        let bytes = stream.encode(&EventFrame::Event(Box::new(event(7, 2))));
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(text.starts_with("event: event\nid: 7.2\ndata: {"), "{text}");
        assert!(text.ends_with("}\n\n"), "{text}");
    }

    #[test]
    fn last_event_id_reads_an_index_and_a_seq() {
        let mut headers = HeaderMap::new();
        headers.insert("last-event-id", HeaderValue::from_static("42.3"));
        assert_eq!(
            last_event_id(&headers).unwrap(),
            Some(Position {
                index: 42,
                seq: Some(3)
            })
        );
        headers.insert("last-event-id", HeaderValue::from_static("nope"));
        assert!(last_event_id(&headers).is_err());
    }

    #[test]
    fn heartbeats_are_bounded() {
        assert!(heartbeat_interval(Some(10)).is_err());
        assert_eq!(
            heartbeat_interval(Some(250)).unwrap(),
            Duration::from_millis(250)
        );
    }
}
