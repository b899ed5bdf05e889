//! How results are shown: tables for people; JSON or YAML for scripts (`-o json|yaml`,
//! `--json`); `-o wide` adds columns where a list has more to show.

use std::io::Write;

use comfy_table::{presets, ContentArrangement, Table};
use serde::Serialize;

/// The output formats of `-o`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Tables for people.
    #[default]
    Table,
    /// Tables with more columns, where a list has more to show.
    Wide,
    /// The JSON response.
    Json,
    /// The response as YAML.
    Yaml,
}

/// Where and how a command prints.
#[derive(Clone, Copy, Debug)]
pub struct Output {
    /// Print the response (JSON or YAML) instead of a table.
    pub json: bool,
    /// The format asked for (`json` is true for `Json` and `Yaml`).
    pub format: Format,
}

impl Output {
    /// An output in `format`.
    pub fn new(format: Format) -> Self {
        Self {
            json: matches!(format, Format::Json | Format::Yaml),
            format,
        }
    }

    /// Whether `-o wide` was asked for.
    pub fn wide(&self) -> bool {
        self.format == Format::Wide
    }

    /// Prints `value` as pretty JSON (or YAML with `-o yaml`) on stdout.
    pub fn json<T: Serialize>(&self, value: &T) -> anyhow::Result<()> {
        let mut text = if self.format == Format::Yaml {
            serde_norway::to_string(value)?
        } else {
            serde_json::to_string_pretty(value)?
        };
        if !text.ends_with('\n') {
            text.push('\n');
        }
        write_out(&text)
    }

    /// Prints `value` as one line of JSON (for streams such as followed logs); with
    /// `-o yaml`, as one YAML document.
    pub fn json_line<T: Serialize>(&self, value: &T) -> anyhow::Result<()> {
        let text = if self.format == Format::Yaml {
            format!("---\n{}", serde_norway::to_string(value)?)
        } else {
            format!("{}\n", serde_json::to_string(value)?)
        };
        write_out(&text)
    }

    /// Prints the JSON (or YAML) of `value` when asked, else the table `human` builds.
    pub fn show<T: Serialize>(
        &self,
        value: &T,
        human: impl FnOnce(&T) -> Table,
    ) -> anyhow::Result<()> {
        if self.json {
            self.json(value)
        } else {
            line(&human(value).to_string())
        }
    }
}

/// Prints one line on stdout and flushes it (for followed streams).
pub fn line(text: &str) -> anyhow::Result<()> {
    write_out(&format!("{text}\n"))
}

/// Writes `text` to stdout and flushes it. Text is encoded before it is written, so a
/// closed stdout is always an `io::Error` (`BrokenPipe`), which `cli::report` turns
/// into a quiet exit with status 0.
fn write_out(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// No borders, no row or column lines: only a rule under the header (comfy-table's
/// 19-character preset format; position 6 is the header line).
const LIST_STYLE: &str = "     ─             ";

/// A table with a header row, in the style every command shares.
pub fn table<I, S>(header: I) -> Table
where
    I: IntoIterator<Item = S>,
    S: Into<comfy_table::Cell>,
{
    let mut table = Table::new();
    table
        .load_preset(LIST_STYLE)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header);
    table
}

/// A two-column `field | value` table for one resource.
pub fn fields<'a>(rows: impl IntoIterator<Item = (&'a str, String)>) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic);
    for (name, value) in rows {
        table.add_row(vec![name.to_string(), value]);
    }
    table
}

/// `k=v,k=v` for labels and env maps, `-` when empty.
pub fn pairs(map: &std::collections::BTreeMap<String, String>) -> String {
    if map.is_empty() {
        return "-".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A value or `-`.
pub fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// The wire name of a unit enum (its serde snake_case spelling).
pub fn wire_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}
