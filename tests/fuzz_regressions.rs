//! Every committed seed and regression input of the fuzz targets (`fuzz/seeds/<target>/`),
//! replayed through the same checks the fuzzers run (`fuzz/src/lib.rs`), on the stable
//! toolchain: a crash the fuzzers found stays fixed without running them.

use std::path::Path;

#[path = "../fuzz/src/lib.rs"]
mod checks;

#[test]
fn every_fuzz_seed_and_regression_input_passes_its_target_checks() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let mut replayed = 0;
    for (target, check) in checks::TARGETS {
        let dir = seeds.join(target);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        inputs.sort();
        assert!(!inputs.is_empty(), "{target} has no seeds");
        for input in inputs {
            let data = std::fs::read(&input).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{target}: {} fails", input.display());
            replayed += 1;
        }
    }
    assert!(replayed > 0);
}

#[test]
fn every_seed_folder_is_a_fuzz_target() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    for entry in std::fs::read_dir(&seeds).unwrap_or_else(|e| panic!("{}: {e}", seeds.display())) {
        let name = entry.map(|e| e.file_name()).unwrap_or_default();
        let name = name.to_string_lossy();
        assert!(
            checks::TARGETS.iter().any(|(target, _)| *target == name),
            "fuzz/seeds/{name} belongs to no target"
        );
        let target =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fuzz/fuzz_targets/{name}.rs"));
        assert!(target.is_file(), "{} is missing", target.display());
    }
}
