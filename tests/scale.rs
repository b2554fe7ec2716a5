//! `pleg_testkit::scale` against the `pleg` binary of this build, at a
//! small node: the figures are there and sane. No timing is asserted (the
//! figures at 1,000 to 50,000 containers come from running `measure` by
//! hand against a release build).

// Test code: an `expect` names what was expected.
#![allow(clippy::expect_used, clippy::pedantic)]

use std::path::Path;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measure_at_200_containers_gives_relist_time_split_and_memory() {
    let pleg = Path::new(env!("CARGO_BIN_EXE_pleg"));
    let baseline = pleg_testkit::scale::measure(pleg, 0, 4)
        .await
        .expect("a baseline run");
    let figures = pleg_testkit::scale::measure(pleg, 200, 4)
        .await
        .expect("a run at 200 containers")
        .compared_with(&baseline);
    println!("baseline {baseline:?}\n200 containers {figures:?}");
    assert_eq!((figures.containers, figures.pods), (200, 50));
    assert!(figures.relists >= 5, "{figures:?}");
    assert!(figures.relist_seconds_mean > 0.0, "{figures:?}");
    assert!(figures.relist_seconds_median > 0.0, "{figures:?}");
    assert!(figures.rpc_seconds > 0.0, "{figures:?}");
    assert!(
        figures.rpc_seconds <= figures.relist_seconds_mean,
        "the RPCs are part of the relist: {figures:?}"
    );
    assert!(figures.rss_bytes > 1024 * 1024, "{figures:?}");
    assert!(figures.hwm_bytes >= figures.rss_bytes, "{figures:?}");
    assert!(figures.rss_bytes_per_container.is_some(), "{figures:?}");
}

/// The table behind issue 13's linearity target, run by hand against a
/// release build (the fake CRI server in the test process is then optimised
/// too, so its share of the RPC time is small):
///
/// ```text
/// cargo build --release --bin pleg
/// PLEG_BIN=target/release/pleg cargo test --release --test scale table -- --ignored --nocapture
/// ```
///
/// `PLEG_SCALE_CONTAINERS=1000,10000` measures other node sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement of minutes, run by hand (see its doc comment)"]
async fn table_of_relist_time_and_memory_by_container_count() {
    let pleg = std::env::var_os("PLEG_BIN").map_or_else(
        || Path::new(env!("CARGO_BIN_EXE_pleg")).to_path_buf(),
        std::path::PathBuf::from,
    );
    let sizes: Vec<usize> = std::env::var("PLEG_SCALE_CONTAINERS")
        .unwrap_or_else(|_| "1000,10000,50000".into())
        .split(',')
        .map(|n| n.trim().parse().expect("a container count"))
        .collect();
    let baseline = pleg_testkit::scale::measure(&pleg, 0, 4)
        .await
        .expect("a baseline run");
    println!("{}: baseline {baseline:?}", pleg.display());
    println!(
        "| containers | pods | relist mean ms | median ms | RPC ms | own ms | VmRSS MiB | VmHWM MiB | RSS growth B/container |"
    );
    for containers in sizes {
        let f = pleg_testkit::scale::measure(&pleg, containers, 4)
            .await
            .expect("a run")
            .compared_with(&baseline);
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {:.0} |",
            f.containers,
            f.pods,
            f.relist_seconds_mean * 1e3,
            f.relist_seconds_median * 1e3,
            f.rpc_seconds * 1e3,
            f.own_seconds * 1e3,
            f.rss_bytes as f64 / 1048576.0,
            f.hwm_bytes as f64 / 1048576.0,
            f.rss_bytes_per_container.unwrap_or(f64::NAN),
        );
    }
}
