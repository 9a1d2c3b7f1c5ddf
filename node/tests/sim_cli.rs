#![allow(clippy::unwrap_used, clippy::expect_used)]
#![cfg(feature = "sim")]
//! `dcdn sim` from the command line: a scenario file plus flags, JSON out,
//! an SVG drawn, and the same seed giving the same numbers.

use std::process::Command;

fn sim(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_dcdn"))
        .arg("sim")
        .args(args)
        .output()
        .expect("running dcdn sim");
    assert!(
        out.status.success(),
        "dcdn sim failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

#[test]
fn dcdn_sim_reads_a_scenario_applies_flags_and_prints_json_and_svg() {
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/sim/fidelity.toml");
    let svg = std::env::temp_dir().join(format!("dcdn-sim-cli-{}.svg", std::process::id()));
    let args = [
        scenario,
        "--edges",
        "20",
        "--object-mb",
        "8",
        "--seed",
        "3",
        "--json",
        "--svg",
        svg.to_str().unwrap(),
    ];
    let a = sim(&args);
    assert_eq!(a["edges"], 20);
    assert_eq!(a["seed"], 3);
    assert_eq!(a["content_bytes"], 8 << 20);
    let edge = a["completion"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tier"] == "edge")
        .unwrap();
    assert_eq!(edge["completed"], 20);
    assert_eq!(a["end"]["reason"], "complete", "{}", a["end"]);
    assert!(edge["seconds"]["p50"].as_f64().unwrap() > 0.0);
    assert!(a["perf"]["events"].as_u64().unwrap() > 0);
    let drawn = std::fs::read_to_string(&svg).unwrap();
    let _ = std::fs::remove_file(&svg);
    assert!(drawn.starts_with("<svg") && drawn.contains("edge (20 of 20)"));
    let b = sim(&args);
    assert_eq!(a["completion"], b["completion"]);
    assert_eq!(a["bytes"], b["bytes"]);
}

#[test]
fn dcdn_sim_refuses_a_bad_scenario_with_the_field_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_dcdn"))
        .args(["sim", "--edges", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tiers.edges"));
}
