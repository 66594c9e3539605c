//! `sluiced --check-config`: exit 0 for a good file, 2 with the bad field named otherwise.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn check(text: &str) -> (Option<i32>, String) {
    let dir = std::env::temp_dir().join(format!(
        "sluice-cc-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("c.toml");
    std::fs::write(&f, text).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_sluiced"))
        .arg("--check-config")
        .arg(&f)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

fn lab() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/lab.toml")).unwrap()
}

#[test]
fn the_lab_config_is_valid() {
    let (code, out) = check(&lab());
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(": ok"));
}

#[test]
fn a_bad_field_is_named_with_exit_code_2() {
    let (code, out) = check(&lab().replace("dev = \"eth-srv\"", "dev = \"eth-nope\""));
    assert_eq!(code, Some(2));
    assert!(
        out.contains("route[1].dev") && out.contains("eth-nope"),
        "{out}"
    );

    let (code, out) =
        check(&lab().replace("poll_mode = \"adaptive\"", "poll_mode = \"sometimes\""));
    assert_eq!(code, Some(2));
    assert!(out.contains("line ") && out.contains("sometimes"), "{out}");

    let (code, out) = check(&lab().replace("batch_size = 64", "batch_size = 65"));
    assert_eq!(code, Some(2));
    assert!(out.contains("dataplane.batch_size"), "{out}");
}

#[test]
fn a_missing_file_is_named() {
    let o = Command::new(env!("CARGO_BIN_EXE_sluiced"))
        .args(["--check-config", "/nonexistent/sluice.toml"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/sluice.toml"));
}
