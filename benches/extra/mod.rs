//! Figures a bench measures besides criterion's times (sends, handler runs,
//! bytes, rebinds), written as JSON beside criterion's own output, one file
//! per benchmark id, in `$CARGO_TARGET_DIR/criterion/evtchn-extra/`
//! (`target/` when the variable is unset; cargo runs benches from the
//! package root), for `benches/report.py` to read with the estimates of the
//! same run.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::path::PathBuf;

/// The figures of one benchmark id (criterion's `group/function`).
pub struct Record {
    id: String,
    fields: Vec<(String, f64)>,
}

impl Record {
    pub fn new(group: &str, function: &str, fields: &[(&str, f64)]) -> Self {
        Record {
            id: format!("{group}/{function}"),
            fields: fields.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }
}

/// The directory the records go to.
pub fn dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("criterion").join("evtchn-extra")
}

fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes each record to `<dir>/<id with '/' and ' ' as '_'>.json`
/// (replacing an older one), and echoes it on stderr.
pub fn write(records: &[Record]) {
    let dir = dir();
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("cannot create {}: {e}", dir.display());
        return;
    }
    for r in records {
        let mut json = format!("{{\"id\": {}", quote(&r.id));
        for (k, v) in &r.fields {
            let _ = write!(json, ", {}: {}", quote(k), v);
        }
        json.push_str("}\n");
        eprint!("{json}");
        let name: String =
            r.id.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
        let path = dir.join(format!("{name}.json"));
        if let Err(e) = std::fs::write(&path, json) {
            eprintln!("cannot write {}: {e}", path.display());
        }
    }
}
