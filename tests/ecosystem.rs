//! lanyard among the tools operators already use: shell completions and
//! man pages made from the clap definitions, `lanyard status`, and
//! Prometheus metrics.
//!
//! The completion and man page tests need no root and no daemon; the
//! others run a daemon in a test namespace.

mod common;

use std::process::Command;
use std::time::Duration;

use clap::CommandFactory;
use common::*;

/// Runs `lanyard ARGS` with no daemon (bounded to a minute).
fn lanyard(args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(LANYARD);
    cmd.args(args).env_remove("LANYARD_SOCKET");
    run(&mut cmd, Duration::from_secs(60))
}

/// The top-level commands, from the clap definition itself, so that a new
/// command is checked without touching this test.
fn top_level_commands() -> Vec<String> {
    let names: Vec<String> = lanyard::cli::Cli::command()
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| c.get_name().to_string())
        .collect();
    assert!(names.len() > 10, "the clap definition has only {names:?}");
    names
}

fn stdout_ok(args: &[&str]) -> String {
    let out = lanyard(args);
    assert!(out.status.success(), "lanyard {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[test]
fn completions_name_every_command_and_parse() {
    let bash = stdout_ok(&["completions", "bash"]);
    for name in top_level_commands() {
        assert!(bash.contains(&name), "the bash completion does not mention `{name}`");
    }
    let dir = TempDir::new("compl");
    let script = dir.path().join("lanyard.bash");
    std::fs::write(&script, &bash).unwrap();
    let check = run(Command::new("bash").arg("-n").arg(&script), Duration::from_secs(60));
    assert!(check.status.success(), "bash -n refuses the script: {}", String::from_utf8_lossy(&check.stderr));

    for shell in ["zsh", "fish"] {
        let script = stdout_ok(&["completions", shell]);
        assert!(script.contains("net") && script.contains("lanyard"), "{shell}: {script:.200}");
    }
    let out = lanyard(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "an unknown shell is a usage error");
}

#[test]
fn man_page_lists_every_command_and_renders_cleanly() {
    // roff writes `-` as `\-`.
    let page = stdout_ok(&["man"]).replace("\\-", "-");
    assert!(page.starts_with(".ie") || page.contains(".TH lanyard 1"), "{page:.300}");
    for name in top_level_commands() {
        assert!(page.contains(&format!("lanyard-{name}(1)")), "lanyard(1) does not list `{name}`");
    }

    let dir = TempDir::new("man");
    stdout_ok(&["man", "--dir", dir.path().to_str().unwrap()]);
    for name in top_level_commands() {
        let file = dir.path().join(format!("lanyard-{name}.1"));
        assert!(file.is_file(), "no {}", file.display());
    }
    assert!(dir.path().join("lanyard.1").is_file());
    assert!(dir.path().join("lanyard-net-create.1").is_file(), "subcommands get their own page");
    let out = lanyard(&["man", "--dir", "/nonexistent/lanyard-man"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));

    let Some(groff) = which("groff") else {
        eprintln!("skipping the rendering check: groff is not installed");
        return;
    };
    let mut pages: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    pages.sort();
    for page in pages {
        let out = run(Command::new(&groff).args(["-man", "-Tutf8", "-ww", "-z"]).arg(&page), Duration::from_secs(60));
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && warnings.trim().is_empty(), "{}: {warnings}", page.display());
    }
}
