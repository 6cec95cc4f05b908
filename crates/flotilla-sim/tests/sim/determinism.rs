//! The same scenario and seed give byte-identical reports; another seed does not.

use super::policies::CHAOS;
use super::run;
use flotilla_sim::report::write_report;

fn files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn the_same_seed_gives_byte_identical_reports() {
    let base = std::env::temp_dir().join(format!("flotilla-sim-det-{}", std::process::id()));
    let (one, two) = (base.join("one"), base.join("two"));
    write_report(&run(CHAOS), &one).unwrap();
    write_report(&run(CHAOS), &two).unwrap();
    let (a, b) = (files(&one), files(&two));
    let names: Vec<&str> = a.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "gpu-utilisation.svg",
            "report.md",
            "slo-attainment.svg",
            "timeseries.csv",
            "traffic-failover-only.svg",
            "traffic-flotilla.svg",
            "traffic-static.svg",
            "traffic.csv"
        ]
    );
    for (x, y) in a.iter().zip(&b) {
        assert!(x.1 == y.1, "{} differs between two runs", x.0);
    }
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn another_seed_gives_another_load() {
    let a = run(CHAOS);
    let b = run(&CHAOS.replace("seed = 11", "seed = 12"));
    assert_ne!(a.runs[0].summary.requests, b.runs[0].summary.requests);
}
