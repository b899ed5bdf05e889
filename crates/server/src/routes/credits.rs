//! `credits/entries/create` (admin), `credits/balance`, `credits/entries/list`,
//! `credits/entries/export` (admin, CSV).

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{SecondsFormat, TimeZone, Utc};
use tanvrit_api::{
    BusinessId, CreditBalanceRequest, CreditBalanceResponse, CreditEntriesRequest,
    CreditEntriesResponse, CreditEntryCreateRequest, CreditEntryResponse, CreditExportRequest,
    EntryId, EntryKind, ErrorBody, LedgerEntry, Millis, Scope,
};
use tanvrit_state::{validate, Command, Effect, State as DomainState};

use super::jobs::merge_idempotency;
use super::ApiErrors;
use crate::app::{new_id, now_ms, unexpected, AppState};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{ApiJson, IdempotencyKey};
use crate::routes::jobs::archive_failed;

const LEDGER_SCOPES: &[Scope] = &[Scope::Admin, Scope::User];
/// Entries per page when none is asked for.
pub const DEFAULT_ENTRIES_LIMIT: u32 = 100;
/// Largest page of entries.
pub const MAX_ENTRIES_LIMIT: u32 = 10_000;
/// Longest note on an entry (as `apply` allows).
pub const MAX_NOTE_BYTES: usize = 4096;
/// The columns of `credits/entries/export`, in order.
pub const EXPORT_COLUMNS: [&str; 9] = [
    "seq",
    "id",
    "at",
    "kind",
    "amount",
    "balance_after",
    "job",
    "idempotency_key",
    "note",
];

/// Writes a top-up, refund or adjustment.
#[utoipa::path(
    post,
    path = "/api/compute/credits/entries/create",
    tag = "credits",
    request_body = CreditEntryCreateRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry return the first response (same entry and `index`) while the server keeps it (24 h by default); the same key with another request is 422 `idempotency_conflict`. Also the entry's `idempotency_key`: the body's, if given, must be the same")),
    responses(
        (status = 200, description = "The entry (or the first response for a repeated idempotency key)", body = CreditEntryResponse),
        (status = 402, description = "`insufficient_credits`: a negative adjustment beyond the balance", body = ErrorBody),
        ApiErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn handle_create_credit_entry(
    State(app): State<AppState>,
    principal: Principal,
    keyed: IdempotencyKey,
    ApiJson(mut request): ApiJson<CreditEntryCreateRequest>,
) -> Result<Json<CreditEntryResponse>, ApiError> {
    principal.require(&[Scope::Admin])?;
    // As for job submits: the header is the entry's key too, merged before fingerprinting.
    request.idempotency_key =
        merge_idempotency(request.idempotency_key, keyed.key().map(str::to_string))?;
    let idempotency = keyed.bind(&principal, &request)?;
    let command = entry_command(request, None, now_ms())?;
    let written = app.write_keyed(command, idempotency).await?;
    match written.effect {
        Effect::Entry { entry, .. } => Ok(Json(CreditEntryResponse {
            entry: *entry,
            index: written.index,
        })),
        other => Err(unexpected(other)),
    }
}

/// A business's balance: available and held micro-credits.
#[utoipa::path(
    post,
    path = "/api/compute/credits/balance",
    tag = "credits",
    request_body = CreditBalanceRequest,
    responses(
        (status = 200, description = "The balance", body = CreditBalanceResponse),
        (status = 404, description = "`not_found`: a user key named another business", body = ErrorBody),
        ApiErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn handle_get_credit_balance(
    State(app): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<CreditBalanceRequest>,
) -> Result<Json<CreditBalanceResponse>, ApiError> {
    principal.require(LEDGER_SCOPES)?;
    let business = principal.required_business(request.business.as_ref())?;
    app.barrier(request.consistency).await?;
    Ok(Json(app.read(|state| balance(state, business))))
}

/// A business's ledger entries, oldest first, with the running balance.
#[utoipa::path(
    post,
    path = "/api/compute/credits/entries/list",
    tag = "credits",
    request_body = CreditEntriesRequest,
    responses(
        (status = 200, description = "Entries, oldest first", body = CreditEntriesResponse),
        (status = 404, description = "`not_found`: a user key named another business", body = ErrorBody),
        ApiErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn handle_list_credit_entries(
    State(app): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<CreditEntriesRequest>,
) -> Result<Json<CreditEntriesResponse>, ApiError> {
    principal.require(LEDGER_SCOPES)?;
    let business = principal.required_business(request.business.as_ref())?;
    app.barrier(request.consistency).await?;
    app.read(|state| list_entries(state, business, &request))
        .map(Json)
}

/// A business's ledger between two times as CSV (RFC 4180: comma-separated, CRLF line
/// ends, fields with a comma, quote or line break quoted with inner quotes doubled).
#[utoipa::path(
    post,
    path = "/api/compute/credits/entries/export",
    tag = "credits",
    request_body = CreditExportRequest,
    responses(
        (
            status = 200,
            description = "One header row, `seq,id,at,kind,amount,balance_after,job,idempotency_key,note`, then \
                           one row per entry with `at` in [`from`, `to`), oldest first. `at` is RFC 3339 in UTC \
                           with milliseconds; `amount` and `balance_after` are integer micro-credits; `job` and \
                           `note` are empty when the entry has none",
            content_type = "text/csv",
            body = String
        ),
        ApiErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn handle_export_credit_entries(
    State(app): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<CreditExportRequest>,
) -> Result<Response, ApiError> {
    principal.require(&[Scope::Admin])?;
    validate::identifier("business", request.business.as_str())?;
    if let (Some(from), Some(to)) = (request.from, request.to) {
        if from > to {
            return Err(ApiError::Invalid("`from` must not be after `to`".into()));
        }
    }
    app.barrier(request.consistency).await?;
    // Copy the rows out under the read lock; encoding them happens without it.
    let entries =
        app.read(|state| export_entries(state, &request.business, request.from, request.to))?;
    let csv = ledger_csv(&entries)?;
    let disposition = format!("attachment; filename=\"ledger-{}.csv\"", request.business);
    let mut response = csv.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    // Business ids are plain identifiers (checked above), so this is a valid header.
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

// ---- logic, testable on a bare `State` ------------------------------------------------

/// A business's entries with `at` in [`from`, `to`), oldest first.
pub(crate) fn export_entries(
    state: &DomainState,
    business: &BusinessId,
    from: Option<Millis>,
    to: Option<Millis>,
) -> Result<Vec<LedgerEntry>, ApiError> {
    state
        .ledger_page(business, 0, usize::MAX, |e| {
            from.is_none_or(|from| e.at >= from) && to.is_none_or(|to| e.at < to)
        })
        .map_err(archive_failed)
}

/// The CSV text of `entries` under the [`EXPORT_COLUMNS`] header.
pub(crate) fn ledger_csv(entries: &[LedgerEntry]) -> Result<String, ApiError> {
    let failed = |e: csv::Error| ApiError::Internal(format!("cannot write the CSV: {e}"));
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    writer.write_record(EXPORT_COLUMNS).map_err(failed)?;
    for entry in entries {
        writer
            .write_record([
                entry.seq.to_string(),
                neutralised(entry.id.to_string()),
                rfc3339(entry.at),
                entry.kind.as_str().to_string(),
                entry.amount.to_string(),
                entry.balance_after.to_string(),
                neutralised(
                    entry
                        .job
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                ),
                neutralised(entry.idempotency_key.clone()),
                neutralised(entry.note.clone().unwrap_or_default()),
            ])
            .map_err(failed)?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| ApiError::Internal(format!("cannot write the CSV: {e}")))?;
    String::from_utf8(bytes).map_err(|e| ApiError::Internal(format!("CSV is not UTF-8: {e}")))
}

/// A text cell a spreadsheet will not run as a formula: one starting with `=`, `+`, `-`,
/// `@`, a tab or a carriage return gets a leading `'` (OWASP's CSV injection advice).
/// Numeric columns are written by the server and never pass through here, so a negative
/// amount stays a number.
fn neutralised(cell: String) -> String {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}")
    } else {
        cell
    }
}

/// `at` as RFC 3339 in UTC with milliseconds (the epoch value for an out-of-range one).
fn rfc3339(at: Millis) -> String {
    Utc.timestamp_millis_opt(at).single().map_or_else(
        || at.to_string(),
        |t| t.to_rfc3339_opts(SecondsFormat::Millis, true),
    )
}

/// Builds `LedgerEntryCreate`. Without an idempotency key the entry's own id serves as
/// one, so a request without a key is never deduplicated.
///
/// The kind, sign and note checks repeat `apply`'s (which stays the authority), so
/// that bad input is refused before anything reaches the log.
pub(crate) fn entry_command(
    request: CreditEntryCreateRequest,
    header_key: Option<String>,
    at: Millis,
) -> Result<Command, ApiError> {
    validate::identifier("business", request.business.as_str())?;
    match request.kind {
        EntryKind::TopUp | EntryKind::Refund if request.amount <= 0 => {
            return Err(ApiError::Invalid(format!(
                "a {} must be a positive amount",
                request.kind.as_str()
            )))
        }
        EntryKind::Adjustment if request.amount == 0 => {
            return Err(ApiError::Invalid("an adjustment must not be zero".into()))
        }
        EntryKind::Hold | EntryKind::Charge | EntryKind::Release => {
            return Err(ApiError::Invalid(
                "holds, charges and releases are written by the system, not by hand".into(),
            ))
        }
        EntryKind::TopUp | EntryKind::Refund | EntryKind::Adjustment => {}
    }
    if request
        .note
        .as_ref()
        .is_some_and(|n| n.len() > MAX_NOTE_BYTES)
    {
        return Err(ApiError::Invalid(format!(
            "notes are at most {MAX_NOTE_BYTES} bytes"
        )));
    }
    let entry = EntryId(new_id("ent"));
    let idempotency_key = merge_idempotency(request.idempotency_key, header_key)?
        .unwrap_or_else(|| entry.to_string());
    Ok(Command::LedgerEntryCreate {
        entry,
        business: request.business,
        kind: request.kind,
        amount: request.amount,
        idempotency_key,
        note: request.note,
        at,
    })
}

/// A business's balance (zero for one without a ledger yet).
pub(crate) fn balance(state: &DomainState, business: BusinessId) -> CreditBalanceResponse {
    let account = state.account(&business);
    CreditBalanceResponse {
        available: account.map_or(0, |a| a.available),
        held: account.map_or(0, |a| a.held),
        entries: account.map_or(0, |a| a.entry_count()),
        business,
        index: state.applied_index(),
    }
}

/// A page of a business's entries.
pub(crate) fn list_entries(
    state: &DomainState,
    business: BusinessId,
    request: &CreditEntriesRequest,
) -> Result<CreditEntriesResponse, ApiError> {
    let limit = request.limit.unwrap_or(DEFAULT_ENTRIES_LIMIT);
    if limit == 0 || limit > MAX_ENTRIES_LIMIT {
        return Err(ApiError::Invalid(format!(
            "`limit` must be between 1 and {MAX_ENTRIES_LIMIT}"
        )));
    }
    let entries = state
        .ledger_page(
            &business,
            request.after_seq.unwrap_or(0),
            limit as usize,
            |e| {
                request.from.is_none_or(|from| e.at >= from)
                    && request.to.is_none_or(|to| e.at < to)
            },
        )
        .map_err(archive_failed)?;
    Ok(CreditEntriesResponse {
        business,
        entries,
        index: state.applied_index(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top_up(business: &str, amount: i64, key: Option<&str>) -> CreditEntryCreateRequest {
        CreditEntryCreateRequest {
            business: BusinessId::from(business),
            kind: EntryKind::TopUp,
            amount,
            idempotency_key: key.map(str::to_string),
            note: None,
        }
    }

    fn ledger() -> DomainState {
        let mut state = DomainState::new();
        for (i, amount) in [100, 200, 300, 400].into_iter().enumerate() {
            let command =
                entry_command(top_up("acme", amount, None), None, 1000 * (i as i64 + 1)).unwrap();
            state.apply(i as u64 + 1, &command).unwrap();
        }
        state
    }

    #[test]
    fn entries_without_a_key_are_never_deduplicated_and_keys_come_from_the_header_too() {
        let a = entry_command(top_up("acme", 5, None), None, 1).unwrap();
        let b = entry_command(top_up("acme", 5, None), None, 1).unwrap();
        let key = |c: &Command| match c {
            Command::LedgerEntryCreate {
                idempotency_key, ..
            } => idempotency_key.clone(),
            other => panic!("{other:?}"),
        };
        assert_ne!(key(&a), key(&b));
        let from_header =
            entry_command(top_up("acme", 5, None), Some("topup-42".into()), 1).unwrap();
        assert_eq!(key(&from_header), "topup-42");
        assert_eq!(
            entry_command(top_up("a b", 5, None), None, 1)
                .unwrap_err()
                .code(),
            "invalid"
        );
    }

    #[test]
    fn entries_of_the_wrong_sign_or_kind_are_refused_before_proposing() {
        let with = |kind: EntryKind, amount: i64| CreditEntryCreateRequest {
            kind,
            amount,
            ..top_up("acme", 1, None)
        };
        for (kind, amount) in [
            (EntryKind::TopUp, 0),
            (EntryKind::Refund, -5),
            (EntryKind::Adjustment, 0),
            (EntryKind::Hold, -5),
            (EntryKind::Charge, -5),
            (EntryKind::Release, 5),
        ] {
            let error = entry_command(with(kind, amount), None, 1).unwrap_err();
            assert_eq!(error.code(), "invalid", "{kind:?} {amount}");
        }
        assert!(entry_command(with(EntryKind::Adjustment, -5), None, 1).is_ok());
        let mut noted = top_up("acme", 5, None);
        noted.note = Some("n".repeat(MAX_NOTE_BYTES + 1));
        assert_eq!(entry_command(noted, None, 1).unwrap_err().code(), "invalid");
    }

    #[test]
    fn the_balance_of_a_business_without_a_ledger_is_zero() {
        let state = ledger();
        let acme = balance(&state, BusinessId::from("acme"));
        assert_eq!((acme.available, acme.held, acme.entries), (1000, 0, 4));
        let none = balance(&state, BusinessId::from("globex"));
        assert_eq!((none.available, none.held, none.entries), (0, 0, 0));
        assert_eq!(none.index, 4);
    }

    #[test]
    fn entries_are_paged_by_sequence_and_filtered_by_time() {
        let state = ledger();
        let acme = || BusinessId::from("acme");
        let page = |request: CreditEntriesRequest| {
            list_entries(&state, acme(), &request)
                .unwrap()
                .entries
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>()
        };
        assert_eq!(page(CreditEntriesRequest::default()), vec![1, 2, 3, 4]);
        assert_eq!(
            page(CreditEntriesRequest {
                after_seq: Some(1),
                limit: Some(2),
                ..Default::default()
            }),
            vec![2, 3]
        );
        assert_eq!(
            page(CreditEntriesRequest {
                from: Some(2000),
                to: Some(4000),
                ..Default::default()
            }),
            vec![2, 3],
            "`from` is inclusive, `to` exclusive"
        );
        assert!(page(CreditEntriesRequest {
            after_seq: Some(99),
            ..Default::default()
        })
        .is_empty());
        let too_many = CreditEntriesRequest {
            limit: Some(MAX_ENTRIES_LIMIT + 1),
            ..Default::default()
        };
        assert_eq!(
            list_entries(&state, acme(), &too_many).unwrap_err().code(),
            "invalid"
        );
    }

    #[test]
    fn the_export_neutralises_cells_a_spreadsheet_would_run_as_formulas() {
        for (cell, expected) in [
            ("=1+2", "'=1+2"),
            ("+cmd", "'+cmd"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("\rx", "'\rx"),
            ("plain", "plain"),
            ("a=b", "a=b"),
            ("", ""),
        ] {
            assert_eq!(neutralised(cell.into()), expected, "{cell:?}");
        }
        let mut state = ledger();
        let mut formula = top_up("acme", 5, Some("=HYPERLINK(\"x\")"));
        formula.note = Some("@SUM(1)".into());
        state
            .apply(5, &entry_command(formula, None, 5000).unwrap())
            .unwrap();
        let entries = export_entries(&state, &BusinessId::from("acme"), Some(5000), None).unwrap();
        let csv = ledger_csv(&entries).unwrap();
        assert!(
            csv.ends_with(",top_up,5,1005,,\"'=HYPERLINK(\"\"x\"\")\",'@SUM(1)\r\n"),
            "{csv}"
        );
    }

    #[test]
    fn the_export_quotes_per_rfc_4180_and_keeps_the_running_balance() {
        let mut state = ledger();
        let mut tricky = top_up("acme", 5, Some("key,with \"quotes\""));
        tricky.note = Some("line one\nline two, with a comma".into());
        state
            .apply(5, &entry_command(tricky, None, 5000).unwrap())
            .unwrap();
        let entries = export_entries(&state, &BusinessId::from("acme"), Some(2000), None).unwrap();
        assert_eq!(
            entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![2, 3, 4, 5]
        );
        let csv = ledger_csv(&entries).unwrap();
        let lines: Vec<&str> = csv.split("\r\n").collect();
        assert_eq!(
            lines[0],
            "seq,id,at,kind,amount,balance_after,job,idempotency_key,note"
        );
        assert!(lines[1].starts_with("2,ent-"), "{}", lines[1]);
        assert_eq!(
            lines[1],
            format!(
                "2,{id},1970-01-01T00:00:02.000Z,top_up,200,300,,{id},",
                id = entries[0].id
            ),
            "an entry without a job or note leaves those fields empty"
        );
        assert!(
            csv.ends_with(
                ",1970-01-01T00:00:05.000Z,top_up,5,1005,,\"key,with \"\"quotes\"\"\",\"line one\nline two, with a comma\"\r\n"
            ),
            "{csv}"
        );
        assert_eq!(
            export_entries(&state, &BusinessId::from("globex"), None, None).unwrap(),
            Vec::<LedgerEntry>::new()
        );
        assert_eq!(
            ledger_csv(&[]).unwrap(),
            format!("{}\r\n", EXPORT_COLUMNS.join(","))
        );
    }
}
