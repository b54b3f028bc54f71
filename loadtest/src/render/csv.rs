//! The timeline CSVs: one file per run, one row per sampling interval ([`TimelinePoint`]'s fields, in order).

use std::path::Path;

use crate::results::TimelinePoint;

/// A file-name-safe version of a run name: `flash-sale-open/async` → `flash-sale-open-async.csv`.
pub fn file_name(run_name: &str) -> String {
    let stem: String =
        run_name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect();
    format!("{stem}.csv")
}

/// Writes `timeline` to `path` with a header row; empty cells are values that were not measured.
pub fn write_timeline(path: &Path, timeline: &[TimelinePoint]) -> std::io::Result<()> {
    let mut writer = csv::Writer::from_path(path)?;
    for point in timeline {
        writer.serialize(point)?;
    }
    writer.flush()
}
