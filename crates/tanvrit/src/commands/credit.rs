//! `tanvrit credit ...`: add a ledger entry, show a balance, list entries, export a
//! ledger as CSV.

use std::io::Write;

use clap::{ArgGroup, Subcommand};
use tanvrit_api::{
    BusinessId, Consistency, CreditBalanceRequest, CreditEntriesRequest, CreditEntryCreateRequest,
    CreditExportRequest, EntryKind, LedgerEntry, Millis,
};
use tanvrit_client::Client;

use super::keyed;
use crate::output::{fields, or_dash, table, Output};
use crate::parse::{self, format_credits, format_time};

/// Credit ledger commands.
#[derive(Debug, Subcommand)]
pub enum CreditCommand {
    /// Write a ledger entry (admin): a top-up, refund or adjustment.
    #[command(group(ArgGroup::new("how_much").required(true).args(["amount", "micro"])))]
    Add {
        /// The business.
        #[arg(long)]
        business: String,
        /// Credits, decimals allowed (converted exactly to micro-credits): 100, 0.5, -2.
        #[arg(long, value_parser = parse::credits, allow_negative_numbers = true)]
        amount: Option<i64>,
        /// The amount in integer micro-credits instead (1 credit = 1,000,000).
        #[arg(long, allow_negative_numbers = true)]
        micro: Option<i64>,
        /// top_up, refund or adjustment (only adjustments may be negative).
        #[arg(long, default_value = "top_up")]
        kind: EntryKind,
        /// A note for people.
        #[arg(long)]
        note: Option<String>,
        /// A retried entry with the same key writes nothing new (sent as the
        /// `Idempotency-Key` header and as the entry's own key).
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Show a business's available and held credits.
    Balance {
        /// The business (default: `TANVRIT_BUSINESS`; user keys: their own).
        #[arg(long, env = super::job::ENV_BUSINESS)]
        business: Option<String>,
    },
    /// List ledger entries, oldest first, with the running balance.
    Entries {
        /// The business (default: `TANVRIT_BUSINESS`; user keys: their own).
        #[arg(long, env = super::job::ENV_BUSINESS)]
        business: Option<String>,
        /// Only entries at or after this time (2026-01-02, RFC 3339, or epoch ms).
        #[arg(long, value_parser = parse::time)]
        from: Option<Millis>,
        /// Only entries before this time.
        #[arg(long, value_parser = parse::time)]
        to: Option<Millis>,
        /// Most entries to show.
        #[arg(long)]
        limit: Option<u32>,
        /// Start after this sequence number.
        #[arg(long)]
        after_seq: Option<u64>,
    },
    /// Print a business's ledger as CSV (admin): `tanvrit credit export --business B
    /// [--from T] [--to T] > ledger.csv`. Columns: seq, id, at (RFC 3339, UTC), kind,
    /// amount and balance_after (micro-credits), job, idempotency_key, note.
    Export {
        /// The business.
        #[arg(long, env = super::job::ENV_BUSINESS)]
        business: String,
        /// Only entries at or after this time (2026-01-02, RFC 3339, or epoch ms).
        #[arg(long, value_parser = parse::time)]
        from: Option<Millis>,
        /// Only entries before this time.
        #[arg(long, value_parser = parse::time)]
        to: Option<Millis>,
    },
}

impl CreditCommand {
    /// Runs the command.
    pub async fn run(self, client: &Client, out: Output) -> anyhow::Result<()> {
        match self {
            CreditCommand::Add {
                business,
                amount,
                micro,
                kind,
                note,
                idempotency_key,
            } => {
                // The arg group makes exactly one of the two present.
                let amount = amount.or(micro).unwrap_or_default();
                let response = keyed(client, idempotency_key.as_deref())
                    .create_credit_entry(CreditEntryCreateRequest {
                        business: BusinessId::from(business),
                        kind,
                        amount,
                        idempotency_key,
                        note,
                    })
                    .await?;
                out.show(&response, |r| entry_details(&r.entry))
            }
            CreditCommand::Balance { business } => {
                let response = client
                    .credit_balance(CreditBalanceRequest {
                        consistency: Consistency::Stale,
                        business: business.map(BusinessId::from),
                    })
                    .await?;
                out.show(&response, |r| {
                    fields([
                        ("business", r.business.to_string()),
                        ("available", format_credits(r.available)),
                        ("held", format_credits(r.held)),
                        ("entries", r.entries.to_string()),
                    ])
                })
            }
            CreditCommand::Entries {
                business,
                from,
                to,
                limit,
                after_seq,
            } => {
                let response = client
                    .credit_entries(CreditEntriesRequest {
                        consistency: Consistency::Stale,
                        business: business.map(BusinessId::from),
                        from,
                        to,
                        after_seq,
                        limit,
                    })
                    .await?;
                out.show(&response, |r| {
                    let mut t = table(["SEQ", "AT", "KIND", "AMOUNT", "BALANCE", "JOB", "NOTE"]);
                    for e in &r.entries {
                        t.add_row(vec![
                            e.seq.to_string(),
                            format_time(e.at),
                            e.kind.as_str().to_string(),
                            format_credits(e.amount),
                            format_credits(e.balance_after),
                            or_dash(e.job.as_ref()),
                            or_dash(e.note.as_ref()),
                        ]);
                    }
                    t
                })
            }
            // CSV whatever `--json` says: it is the format asked for.
            CreditCommand::Export { business, from, to } => {
                let csv = client
                    .export_credit_entries(CreditExportRequest {
                        consistency: Consistency::Stale,
                        business: BusinessId::from(business),
                        from,
                        to,
                    })
                    .await?;
                let mut stdout = std::io::stdout().lock();
                stdout.write_all(csv.as_bytes())?;
                stdout.flush()?;
                Ok(())
            }
        }
    }
}

fn entry_details(entry: &LedgerEntry) -> comfy_table::Table {
    fields([
        ("entry", entry.id.to_string()),
        ("business", entry.business.to_string()),
        ("seq", entry.seq.to_string()),
        ("kind", entry.kind.as_str().to_string()),
        ("amount", format_credits(entry.amount)),
        ("balance after", format_credits(entry.balance_after)),
        ("idempotency key", entry.idempotency_key.clone()),
        ("note", or_dash(entry.note.as_ref())),
        ("at", format_time(entry.at)),
    ])
}
