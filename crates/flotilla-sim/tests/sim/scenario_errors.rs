//! A bad scenario file gets an error that names the file and the field or line.

use super::parse;

const GOOD: &str = r#"
name = "ok"
seed = 7
duration = "10m"

[[clusters]]
name = "a"
region = "r1"
gpus = { H100 = 8 }

[[models]]
id = "m"
startup = "30s"
perf.H100 = { prefill_tps = 5000, decode_tps = 50, max_batch = 8 }

[[workloads]]
name = "w"
model = "m"
replicas = 2

[[load]]
model = "m"
[load.synthetic]
rate = 1.0
prompt = { median = 100 }
output = { median = 10 }
"#;

fn error_of(text: &str) -> String {
    parse(text)
        .expect_err("the scenario should be refused")
        .to_string()
}

#[test]
fn the_reference_scenario_is_valid() {
    let sc = parse(GOOD).unwrap();
    assert_eq!(
        sc.policies.len(),
        3,
        "the three reference policies by default"
    );
    assert_eq!(sc.total_gpus(), 8);
}

#[test]
fn a_syntax_error_names_the_line() {
    let err = error_of(&GOOD.replace("seed = 7", "seed = = 7"));
    assert!(err.starts_with("test.toml: "), "{err}");
    assert!(err.contains("line 3"), "{err}");
}

#[test]
fn an_unknown_field_is_refused_with_its_line() {
    let err = error_of(&GOOD.replace("replicas = 2", "replicas = 2\nreplcas = 3"));
    assert!(err.contains("unknown field `replcas`"), "{err}");
    assert!(err.contains("line 20"), "{err}");
}

#[test]
fn a_duration_without_a_unit_says_how_to_write_one() {
    let err = error_of(&GOOD.replace("duration = \"10m\"", "duration = \"10\""));
    assert!(err.contains("has no unit"), "{err}");
    assert!(err.contains("line 4"), "{err}");
}

#[test]
fn a_workload_of_an_unknown_model_names_the_field() {
    let err = error_of(&GOOD.replace("model = \"m\"\nreplicas", "model = \"llama\"\nreplicas"));
    assert_eq!(
        err,
        "test.toml: workloads[0].model: model \"llama\" is not among [[models]]"
    );
}

#[test]
fn a_gpu_without_performance_numbers_is_refused() {
    let err = error_of(&GOOD.replace("gpus = { H100 = 8 }", "gpus = { H100 = 8, L4 = 4 }"));
    assert!(
        err.starts_with(
            "test.toml: workloads[0].gpu_models: it may run on L4 but model \"m\" has no perf.L4"
        ),
        "{err}"
    );
}

#[test]
fn core_validation_errors_keep_the_scenario_field_name() {
    let err = error_of(&GOOD.replace("replicas = 2", "replicas = 2\nmin_replicas = 3"));
    assert_eq!(
        err,
        "test.toml: workloads[0].min_replicas: (3) > replicas.max (2)"
    );
}

#[test]
fn an_event_on_an_unknown_cluster_is_refused() {
    let text =
        format!("{GOOD}\n[[events]]\nat = \"1m\"\ncluster = \"b\"\nkind = \"cluster-lost\"\n");
    assert_eq!(
        error_of(&text),
        "test.toml: events[0].cluster: cluster \"b\" is not among [[clusters]]"
    );
}

#[test]
fn an_unknown_event_kind_lists_the_known_ones() {
    let text = format!("{GOOD}\n[[events]]\nat = \"1m\"\ncluster = \"a\"\nkind = \"meteor\"\n");
    let err = error_of(&text);
    assert!(err.contains("unknown variant `meteor`"), "{err}");
    assert!(err.contains("spot-preemption"), "{err}");
}

#[test]
fn policy_settings_are_checked_by_core() {
    let text = format!(
        "{GOOD}\n[[policies]]\nname = \"fast\"\nkind = \"flotilla\"\nsettings = {{ traffic_step_pct = 0 }}\n"
    );
    assert_eq!(
        error_of(&text),
        "test.toml: policies[0].settings.traffic_step_pct: must be between 1 and 100"
    );
}

#[test]
fn a_load_needs_exactly_one_source() {
    let text = GOOD.replace("[load.synthetic]", "requests = []\n[load.synthetic]");
    assert!(error_of(&text).contains("load[0].synthetic: give exactly one of"));
}

#[test]
fn a_missing_trace_file_is_named() {
    let text = GOOD.replace(
        "[load.synthetic]\nrate = 1.0\nprompt = { median = 100 }\noutput = { median = 10 }",
        "trace = { path = \"nowhere.csv\" }",
    );
    let err = error_of(&text);
    assert!(err.starts_with("nowhere.csv: cannot read"), "{err}");
}

#[test]
fn every_shipped_scenario_is_valid() {
    for name in [
        "demo.toml",
        "spot-preemption.toml",
        "fleet-100.toml",
        "azure-trace-replay.toml",
    ] {
        let sc = super::shipped(name);
        assert!(!sc.policies.is_empty(), "{name}");
    }
    assert_eq!(super::shipped("fleet-100.toml").clusters.len(), 100);
}
