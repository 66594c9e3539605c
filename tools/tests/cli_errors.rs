//! The CLI's messages when it cannot do what was asked: they name the problem and the fix.

use std::process::Command;

fn sluice(args: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env_remove("SLUICE_SERVER")
        .env_remove("SLUICE_TOKEN_FILE")
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn daemon_down_is_named_with_the_address() {
    let (code, err) = sluice(&["--server", "unix:/nonexistent/api.sock", "status"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("cannot reach sluiced at unix:/nonexistent/api.sock")
            && err.contains("is it running?"),
        "{err}"
    );
}

#[test]
fn a_change_without_a_token_file_says_which_file() {
    let dir = std::env::temp_dir().join(format!("sluice-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("svc.yaml");
    std::fs::write(&f, "kind: Namespace\nmetadata: {name: a}\n").unwrap();
    let (code, err) = sluice(&[
        "--token-file",
        "/nonexistent/token",
        "apply",
        "-f",
        f.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("/nonexistent/token") && err.contains("--token-file"),
        "{err}"
    );
    let (code, err) = sluice(&["--server", "ftp://x", "status"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("unix:/path/to/api.sock or http://HOST:PORT"),
        "{err}"
    );
    let (code, err) = sluice(&["get", "gadgets"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("unknown resource"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
