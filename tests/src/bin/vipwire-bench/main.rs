//! `cargo xtask bench <area>`: runs one benchmark area, prints its table and writes
//! `target/bench/<area>.json` (see testkit::bench).

mod agent;
mod bgp;
mod dataplane;
mod flood;
mod l4cost;
mod l4lab;
mod livegen;

use std::{path::PathBuf, process::ExitCode};

use testkit::bench::Report;

/// Measures one area and returns its report.
type Measure = fn() -> Report;

/// Each area: its name and the function that measures it.
const AREAS: &[(&str, Measure)] = &[
    ("agent", agent::measure),
    ("bgp", bgp::measure),
    ("dataplane", dataplane::measure),
];

fn main() -> ExitCode {
    let area = std::env::args().nth(1).unwrap_or_default();
    let names: Vec<&str> = AREAS.iter().map(|(name, _)| *name).collect();
    if area == "list" {
        for name in &names {
            println!("{name}");
        }
        return ExitCode::SUCCESS;
    }
    let Some((_, measure)) = AREAS.iter().find(|(name, _)| *name == area) else {
        eprintln!("unknown bench area `{area}`; areas: {}", names.join(", "));
        return ExitCode::from(2);
    };
    let report = measure();
    print!("{}", report.table());
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    match report.write_json(&dir) {
        Ok(path) => {
            println!("wrote {}", path.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("writing {}/{area}.json: {err}", dir.display());
            ExitCode::FAILURE
        }
    }
}
