//! The binary's command line: `--help` on every level, the server's flags
//! with and without `serve`, environment fallbacks, secrets kept out of the
//! help and the errors, bad values refused (exit code 2) naming the flag and
//! the value, and fault mode from `--fault-seed`.
//!
//! Each test runs the binary and reads its output with a deadline: a process
//! that hangs fails the test instead of stalling the suite.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_lkagent-devserver");
/// The longest a test waits for the binary to answer or to start serving.
const DEADLINE: Duration = Duration::from_secs(15);
/// Variables the binary reads: cleared so that the caller's environment
/// does not change what a test sees.
const ENV: [&str; 12] = [
    "LKAGENT_DEVSERVER_PORT",
    "LKAGENT_DEVSERVER_BIND",
    "LIVEKIT_KEYS",
    "LKAGENT_DEVSERVER_MAX_WORKERS",
    "LKAGENT_DEVSERVER_MAX_ROOMS",
    "LKAGENT_DEVSERVER_MAX_PARTICIPANTS",
    "LKAGENT_DEVSERVER_MAX_DISPATCHES",
    "LKAGENT_DEVSERVER_MAX_JOBS",
    "LKAGENT_DEVSERVER_FAULT_SEED",
    "LIVEKIT_URL",
    "LIVEKIT_API_KEY",
    "LIVEKIT_API_SECRET",
];

/// The binary with `args`, in an environment without its variables.
fn devserver(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args);
    for name in ENV {
        command.env_remove(name);
    }
    // help wrapped wide, so that no flag or variable is split across lines
    command
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .env("COLUMNS", "200");
    command
}

/// What a process that exits on its own said.
struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `command` to its end, within [`DEADLINE`].
fn run(mut command: Command) -> Ran {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (said, heard) = mpsc::channel();
    for (which, mut pipe) in [
        (
            0,
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        ),
        (1, Box::new(child.stderr.take().unwrap())),
    ] {
        let said = said.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            let _ = said.send((which, text));
        });
    }
    // both pipes close when the process exits
    let mut out = [String::new(), String::new()];
    for _ in 0..2 {
        match heard.recv_timeout(DEADLINE) {
            Ok((which, text)) => out[which] = text,
            Err(_) => {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!("{command:?} did not exit within {DEADLINE:?}");
            }
        }
    }
    let [stdout, stderr] = out;
    Ran {
        status: child.wait().unwrap(),
        stdout,
        stderr,
    }
}

/// A run refused as a usage error (exit code 2), with its error text.
fn refused(command: Command) -> String {
    let ran = run(command);
    assert_eq!(ran.status.code(), Some(2), "{}", ran.stderr);
    ran.stderr
}

/// A run that printed help and exited 0, with the help text.
fn help(command: Command) -> String {
    let ran = run(command);
    assert!(ran.status.success(), "{}", ran.stderr);
    ran.stdout
}

/// Starts `command` and waits, within [`DEADLINE`], for a line of its
/// stdout containing `needle`: the running process and the line, or the
/// process and `None` when no such line came in time.
fn spawn_until_line(mut command: Command, needle: &'static str) -> (Child, Option<String>) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (said, heard) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains(needle) {
                let _ = said.send(line);
                break;
            }
        }
    });
    (child, heard.recv_timeout(DEADLINE).ok())
}

/// Starts `command` and waits, within [`DEADLINE`], for a line of its
/// stdout containing `needle`; stops it and returns the line.
fn line_containing(command: Command, needle: &'static str) -> String {
    let shown = format!("{command:?}");
    let (mut child, line) = spawn_until_line(command, needle);
    child.kill().unwrap();
    child.wait().unwrap();
    line.unwrap_or_else(|| panic!("{shown} printed no {needle:?} line"))
}

/// Whether `command` starts serving.
fn starts(command: Command) -> bool {
    line_containing(command, "lkagent-devserver listening on ").contains("ws://127.0.0.1:")
}

#[test]
fn help_lists_the_commands_and_the_flags_with_their_environment() {
    let text = help(devserver(&["--help"]));
    for command in ["serve", "dispatch", "room", "participant"] {
        assert!(
            text.contains(&format!("  {command} ")),
            "{command}:\n{text}"
        );
    }
    for (flag, env) in [
        ("--port <PORT>", "LKAGENT_DEVSERVER_PORT"),
        ("--bind <ADDR>", "LKAGENT_DEVSERVER_BIND"),
        ("--keys <LIST>", "LIVEKIT_KEYS"),
        ("--max-workers <N>", "LKAGENT_DEVSERVER_MAX_WORKERS"),
        ("--max-rooms <N>", "LKAGENT_DEVSERVER_MAX_ROOMS"),
        (
            "--max-participants <N>",
            "LKAGENT_DEVSERVER_MAX_PARTICIPANTS",
        ),
        ("--max-dispatches <N>", "LKAGENT_DEVSERVER_MAX_DISPATCHES"),
        ("--max-jobs <N>", "LKAGENT_DEVSERVER_MAX_JOBS"),
        ("--fault-seed <N>", "LKAGENT_DEVSERVER_FAULT_SEED"),
    ] {
        assert!(text.contains(flag), "{flag}:\n{text}");
        assert!(text.contains(&format!("[env: {env}")), "{env}:\n{text}");
    }
    assert!(text.contains("--insecure"), "{text}");
    assert!(text.contains("[default: 7880]"), "{text}");
    // `serve --help` shows the same flags
    let serve = help(devserver(&["serve", "--help"]));
    assert!(serve.contains("--fault-seed <N>"), "{serve}");
}

#[test]
fn every_level_has_help() {
    let dispatch = help(devserver(&["dispatch", "--help"]));
    for needle in [
        "create",
        "list",
        "delete",
        "--url <URL>",
        "[env: LIVEKIT_URL",
    ] {
        assert!(dispatch.contains(needle), "{needle}:\n{dispatch}");
    }
    let create = help(devserver(&["dispatch", "create", "--help"]));
    for needle in ["<ROOM>", "[AGENT]", "[METADATA]", "--api-key <KEY>"] {
        assert!(create.contains(needle), "{needle}:\n{create}");
    }
    let room = help(devserver(&["help", "room"]));
    assert!(room.contains("create") && room.contains("list"), "{room}");
    let join = help(devserver(&["participant", "join", "-h"]));
    assert!(
        join.contains("--publish") && join.contains("<IDENTITY>"),
        "{join}"
    );
}

#[test]
fn help_never_prints_a_secret_from_the_environment() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["participant", "join", "--help"],
    ] {
        let mut command = devserver(args);
        command
            .env("LIVEKIT_KEYS", "k:topsecret")
            .env("LIVEKIT_API_SECRET", "alsosecret");
        let text = help(command);
        assert!(!text.contains("topsecret"), "{args:?}:\n{text}");
        assert!(!text.contains("alsosecret"), "{args:?}:\n{text}");
    }
}

#[test]
fn a_bad_fault_seed_is_refused_with_its_value() {
    let stderr = refused(devserver(&["--port", "0", "--fault-seed", "seven"]));
    assert!(stderr.contains("'seven'"), "{stderr}");
    assert!(stderr.contains("--fault-seed"), "{stderr}");
}

#[test]
fn bad_numbers_and_addresses_are_refused_naming_them() {
    for (args, value, flag) in [
        (&["--port", "70000"][..], "'70000'", "--port"),
        (&["serve", "-p", "x"], "'x'", "--port"),
        (&["--bind", "localhost:1"], "'localhost:1'", "--bind"),
        (&["--max-rooms", "1.5"], "'1.5'", "--max-rooms"),
    ] {
        let stderr = refused(devserver(args));
        assert!(stderr.contains(value) && stderr.contains(flag), "{stderr}");
    }
}

#[test]
fn a_bad_value_from_the_environment_is_refused_naming_it() {
    let mut command = devserver(&[]);
    command.env("LKAGENT_DEVSERVER_MAX_WORKERS", "abc");
    let stderr = refused(command);
    assert!(stderr.contains("'abc'"), "{stderr}");
    assert!(stderr.contains("--max-workers"), "{stderr}");
}

#[test]
fn a_bad_key_list_is_refused_naming_the_entry_but_no_secret() {
    let stderr = refused(devserver(&["--keys", "devkey:topsecret,other:"]));
    assert!(stderr.contains("--keys"), "{stderr}");
    assert!(
        stderr.contains("entry 2") && stderr.contains("\"other\""),
        "{stderr}"
    );
    assert!(!stderr.contains("topsecret"), "{stderr}");

    let mut command = devserver(&[]);
    command.env("LIVEKIT_KEYS", "devkey:topsecret\nbroken");
    let stderr = refused(command);
    assert!(
        stderr.contains("LIVEKIT_KEYS") && stderr.contains("entry 2"),
        "{stderr}"
    );
    assert!(!stderr.contains("topsecret"), "{stderr}");
}

#[test]
fn unknown_commands_and_flags_are_refused() {
    let stderr = refused(devserver(&["--prot", "0"]));
    assert!(
        stderr.contains("'--prot'") && stderr.contains("--port"),
        "{stderr}"
    );
    let stderr = refused(devserver(&["dispatch", "create"]));
    assert!(stderr.contains("<ROOM>"), "{stderr}");
    // the server's flags and a client command do not mix
    let stderr = refused(devserver(&["--port", "0", "room", "list"]));
    assert!(stderr.contains("room"), "{stderr}");
}

#[test]
fn the_server_starts_with_and_without_serve() {
    assert!(starts(devserver(&["--port", "0"])));
    assert!(starts(devserver(&["serve", "--port", "0"])));
}

#[test]
fn the_port_falls_back_to_the_environment() {
    let mut command = devserver(&[]);
    command.env("LKAGENT_DEVSERVER_PORT", "0");
    assert!(starts(command));
}

#[test]
fn a_fault_seed_starts_fault_mode_and_logs_the_seed() {
    let line = line_containing(
        devserver(&["--port", "0", "--fault-seed", "4242"]),
        "fault mode",
    );
    assert!(line.contains("4242"), "{line}");
}

#[test]
fn the_printed_dashboard_link_opens_the_dashboard() {
    use std::io::Write as _;
    let (mut child, line) = spawn_until_line(devserver(&["--port", "0"]), "dashboard: ");
    let url = line.map(|l| l.trim().trim_start_matches("dashboard: ").to_owned());
    let answer = url.as_ref().map(|url| {
        // GET the link as a browser would, with a plain HTTP/1.1 request
        let rest = url.strip_prefix("http://").expect("an http link");
        let (host, path) = rest.split_at(rest.find('/').unwrap());
        let mut socket = std::net::TcpStream::connect(host).unwrap();
        socket.set_read_timeout(Some(DEADLINE)).unwrap();
        write!(
            socket,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        let _ = socket.read_to_string(&mut answer);
        answer
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let url = url.expect("the server prints a dashboard link");
    assert!(url.contains("/dashboard?token="), "{url}");
    let answer = answer.unwrap();
    // traded for the session cookie, and sent on to the page
    assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
    assert!(
        answer.contains("set-cookie: lkagent_dashboard="),
        "{answer}"
    );
    assert!(answer.contains("location: /dashboard\r\n"), "{answer}");
}
