//! `bodega list` and `bodega rm`: the local models as a table or JSON, and removing one from the
//! Hugging Face cache after a confirmation. What is on disk is `crate::hub`'s business; this file
//! only shows it and asks.

use super::{GlobalArgs, UsageError};
use crate::hub::LocalModel;
use clap::Args;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, ContentArrangement, Table};
use indicatif::HumanBytes;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

pub(super) const LIST_EXAMPLES: &str = "\
Examples:
  bodega list
  bodega list --json | jq -r '.models[] | select(.format == \"gguf\") | .id'

The JSON schema is docs/list-schema.json.";

pub(super) const RM_EXAMPLES: &str = "\
Examples:
  bodega rm bartowski/SmolLM2-135M-Instruct-GGUF:Q8_0     # one quant
  bodega rm bartowski/SmolLM2-135M-Instruct-GGUF -y       # the whole repository, no question";

/// Flags of `bodega list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON (schema: docs/list-schema.json) instead of a table. Example: --json
    #[arg(long)]
    json: bool,
}

/// Flags of `bodega rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// What to remove from the Hugging Face cache: a repository, or one quant of it.
    /// Example: bartowski/SmolLM2-135M-Instruct-GGUF:Q8_0
    #[arg(value_name = "REPO[:QUANT]")]
    model: String,
    /// Remove without asking. Example: -y
    #[arg(short = 'y', long)]
    yes: bool,
}

/// `list --json` (docs/list-schema.json).
#[derive(serde::Serialize)]
struct ListJson<'a> {
    schema_version: u32,
    hf_cache: PathBuf,
    bodega_models: PathBuf,
    models: &'a [LocalModel],
}

/// Runs `bodega list`.
pub fn list(args: ListArgs, _global: &GlobalArgs) -> anyhow::Result<()> {
    let models = crate::hub::list();
    if args.json {
        let doc = ListJson {
            schema_version: 1,
            hf_cache: crate::hub::hf_cache_dir(),
            bodega_models: crate::hub::models_dir(),
            models: &models,
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("{}", table(&models));
    if models.is_empty() {
        eprintln!(
            "no models yet: scripts/fetch-test-models.sh installs the demo models, `bodega pull ORG/NAME:QUANT` pulls one"
        );
    }
    Ok(())
}

fn table(models: &[LocalModel]) -> Table {
    let mut table = Table::new();
    table.load_style(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic).set_header([
        "id",
        "arch",
        "format",
        "quant",
        "parameters",
        "size",
        "path",
    ]);
    for m in models {
        table.add_row([
            Cell::new(&m.id),
            Cell::new(m.architecture.as_deref().unwrap_or("-")),
            Cell::new(m.format.as_str()),
            Cell::new(m.quant.as_deref().unwrap_or("-")),
            Cell::new(m.parameters.map_or_else(|| "-".into(), parameters)).set_alignment(CellAlignment::Right),
            Cell::new(HumanBytes(m.size_bytes)).set_alignment(CellAlignment::Right),
            Cell::new(m.path.display()),
        ]);
    }
    table
}

/// `134.5M`, `1.54B`.
fn parameters(n: u64) -> String {
    match n {
        0..1_000_000 => format!("{:.1}K", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.2}B", n as f64 / 1e9),
    }
}

/// Runs `bodega rm`.
pub fn rm(args: RmArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let removal = crate::hub::plan_removal(&args.model)?;
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            return Err(UsageError("rm asks before deleting; pass -y when stdin is not a terminal".into()).into());
        }
        eprint!("Remove {} from the Hugging Face cache ({})? [y/N] ", removal.what, HumanBytes(removal.bytes));
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            eprintln!("nothing removed");
            return Ok(());
        }
    }
    removal.apply()?;
    if !global.quiet {
        eprintln!("removed {} ({} freed)", removal.what, HumanBytes(removal.bytes));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parameters;

    #[test]
    fn parameter_counts_read_like_model_cards() {
        assert_eq!(parameters(134_515_008), "134.5M");
        assert_eq!(parameters(1_543_714_304), "1.54B");
        assert_eq!(parameters(5_000), "5.0K");
    }
}
