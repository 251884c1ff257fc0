//! `waypost check`: one test per validation rule (message, key path and line), keys of later
//! capabilities refused, every problem at once, and every file in config/ validating, run
//! in-process through `config::load` (what the binary's `check` calls); and the command line
//! itself, run as the real binary: exit codes and the output format of `check`, a missing or
//! unreadable config file, `--version`, `--help`.
mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use support::BIN;
use waypost::config::{self, LoadError};

/// What one run of the binary printed and how it ended.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// The config file the run checked, as the binary prints it before each problem.
    file: String,
}

impl Run {
    fn all(&self) -> String {
        format!(
            "exit code: {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// The problems printed (each output line that starts with the file name), without the
    /// file-name prefix.
    fn problems(&self) -> Vec<String> {
        let prefix = format!("{}: ", self.file);
        self.stderr
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(str::to_string)
            .collect()
    }

    fn assert_no_panic(&self) {
        assert!(
            !self.stdout.contains("panicked") && !self.stderr.contains("panicked"),
            "the binary panicked:\n{}",
            self.all()
        );
    }
}

fn run(args: &[&str]) -> Run {
    let out: Output = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run waypost");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        file: String::new(),
    }
}

/// `waypost check` on `toml` (written as waypost.toml in a new directory), as the binary.
fn cli_check(toml: &str) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("waypost.toml");
    std::fs::write(&path, toml).expect("write config");
    let p = path.to_str().expect("utf-8 path");
    let mut r = run(&["check", "--config", p]);
    r.file = p.to_string();
    r.assert_no_panic();
    r
}

/// What `waypost check` decides on a file, in-process: the exit code it gives (0 when the
/// config loads, 1 otherwise) and the problems it prints, each exactly as the binary shows it
/// after the file name (`key path: message (line N)`, the `Display` of a problem).
struct Checked {
    code: Option<i32>,
    problems: Vec<String>,
    /// Why the file could not be read, when it could not.
    read_error: Option<String>,
}

impl Checked {
    fn all(&self) -> String {
        format!(
            "exit code: {:?}\nread error: {:?}\nproblems:\n{}",
            self.code,
            self.read_error,
            self.problems.join("\n")
        )
    }

    fn problems(&self) -> Vec<String> {
        self.problems.clone()
    }
}

fn check_file(path: &Path) -> Checked {
    match config::load(path) {
        Ok(_) => Checked {
            code: Some(0),
            problems: Vec::new(),
            read_error: None,
        },
        Err(LoadError::Invalid(problems)) => Checked {
            code: Some(1),
            // A line of stderr each: a problem whose text spanned lines would show only its
            // first line after the file name, as `Run::problems` reads the binary's output.
            problems: problems
                .iter()
                .map(|p| p.to_string().lines().next().unwrap_or("").to_string())
                .collect(),
            read_error: None,
        },
        Err(e @ LoadError::Read { .. }) => Checked {
            code: Some(1),
            problems: Vec::new(),
            read_error: Some(e.to_string()),
        },
    }
}

/// `waypost check` on `toml`, written as waypost.toml in `dir` (relative paths resolve there).
fn check_in(dir: &Path, toml: &str) -> Checked {
    let path = dir.join("waypost.toml");
    std::fs::write(&path, toml).expect("write config");
    check_file(&path)
}

fn check(toml: &str) -> Checked {
    let dir = tempfile::tempdir().expect("tempdir");
    check_in(dir.path(), toml)
}

/// The 1-based line of the `n`th (from 1) line of `toml` that contains `needle`.
fn nth_line_of(toml: &str, needle: &str, n: usize) -> usize {
    toml.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(n - 1)
        .map(|(i, _)| i + 1)
        .unwrap_or_else(|| panic!("test bug: no occurrence {n} of {needle:?} in:\n{toml}"))
}

/// The 1-based line of the only line of `toml` that contains `needle`.
fn line_of(toml: &str, needle: &str) -> usize {
    let count = toml.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(count, 1, "test bug: {needle:?} is on {count} lines of:\n{toml}");
    nth_line_of(toml, needle, 1)
}

/// One problem `waypost check` must print: `key_path: ...message... (line N)`.
struct Expect<'a> {
    path: &'a str,
    line: usize,
    message: &'a str,
}

fn p<'a>(path: &'a str, line: usize, message: &'a str) -> Expect<'a> {
    Expect { path, line, message }
}

/// The check failed with exactly these problems (in any order), each on one line with its key
/// path, message and line. (How the binary prints them, with the count after them, is checked
/// once, by `a_bad_file_fails_with_exit_1_and_nothing_on_stdout`.)
fn assert_problems(r: &Checked, expected: &[Expect]) {
    assert_eq!(r.code, Some(1), "expected exit code 1:\n{}", r.all());
    let problems = r.problems();
    for e in expected {
        let head = format!("{}: ", e.path);
        let tail = format!("(line {})", e.line);
        assert!(
            problems
                .iter()
                .any(|l| l.starts_with(&head) && l.contains(e.message) && l.ends_with(&tail)),
            "expected the problem `{}: ...{}... {}`; got:\n{}",
            e.path,
            e.message,
            tail,
            r.all()
        );
    }
    assert_eq!(
        problems.len(),
        expected.len(),
        "expected {} problem line(s):\n{}",
        expected.len(),
        r.all()
    );
}

fn assert_ok(r: &Checked) {
    assert_eq!(r.code, Some(0), "expected the config to pass:\n{}", r.all());
    assert!(r.problems().is_empty(), "no problem expected:\n{}", r.all());
}

/// A valid config with room for extra lines: `top` (tables only) first, then one listener,
/// one pool and one route, each followed by its extra lines.
fn config(top: &str, listener: &str, pool: &str, route: &str) -> String {
    format!(
        r#"{top}
[[listener]]
name = "http"
bind = "127.0.0.1:8080"
{listener}

[[pool]]
name = "web"
backends = [{{ address = "127.0.0.1:9001" }}]
{pool}

[[route]]
name = "all"
pool = "web"
{route}
"#
    )
}

// ---------------------------------------------------------------------------------------
// Good and bad files

#[test]
fn a_good_file_passes_with_ok_and_exit_0() {
    let r = cli_check(&config("", "", "", ""));
    assert_eq!(r.code, Some(0), "expected the config to pass:\n{}", r.all());
    assert_eq!(
        r.stdout,
        format!("{}: OK (1 listener(s), 1 pool(s), 1 route(s))\n", r.file),
        "{}",
        r.all()
    );
    assert!(r.stderr.is_empty(), "nothing on stderr:\n{}", r.all());
}

#[test]
fn a_full_valid_file_using_every_supported_key_passes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), "s3cret\n").unwrap();
    let toml = r#"
[server]
worker_threads = 2
graceful_shutdown_timeout = "5s"
max_connections = 1000
header_read_timeout = "2.5s"
idle_timeout = "5m"
max_header_bytes = "16KiB"
max_body_bytes = 1048576
h2_max_concurrent_streams = 100

[admin]
bind = "0.0.0.0:9901"
token_file = "admin.token"

[log]
level = "debug"
access = "off"
format = "combined"

[[listener]]
name = "http"
bind = "127.0.0.1:8080"
proxy_protocol = false

[[listener]]
name = "v6"
bind = "[::1]:8080"

[[pool]]
name = "web"
balance = "least_request"
backends = [{ address = "127.0.0.1:9001", weight = 3 }, { address = "[::1]:9002" }]
connect_timeout = "250ms"
response_timeout = "1.5s"
retries = 0
tls = false

[[pool]]
name = "api"
balance = "random"
backends = [{ address = "127.0.0.1:9003" }]

[[route]]
name = "assets"
host = ["example.com", "*.Example.com", "127.0.0.1"]
path_prefix = "/assets/"
methods = ["GET", "HEAD"]
strip_prefix = true
pool = "web"

[[route]]
name = "assets-write"
host = ["example.com"]
path_prefix = "/assets/"
methods = ["PUT"]
pool = "api"

[[route]]
name = "login"
host = "example.com"
path = "/login"
pool = "api"

[[route]]
name = "rest"
pool = "web"
"#;
    assert_ok(&check_in(dir.path(), toml));
}

#[test]
fn a_bad_file_fails_with_exit_1_and_nothing_on_stdout() {
    // As the binary prints it: each problem on a line of its own after the file name, then
    // the count; nothing on stdout.
    let toml = config("", "colour = \"blue\"\nweight = 2", "", "");
    let r = cli_check(&toml);
    assert_eq!(r.code, Some(1), "expected exit code 1:\n{}", r.all());
    let want = format!(
        "{f}: listener[0].colour: unknown key (line {})\n{f}: listener[0].weight: unknown key (line {})\nwaypost: 2 problem(s) in {f}\n",
        line_of(&toml, "colour"),
        line_of(&toml, "weight"),
        f = r.file
    );
    assert_eq!(r.stderr, want, "{}", r.all());
    assert!(r.stdout.is_empty(), "a bad file must not say OK:\n{}", r.all());
    // And in-process, the same problems.
    let c = check(&toml);
    assert_eq!(c.problems(), r.problems(), "the binary prints what config::load finds");
}

// ---------------------------------------------------------------------------------------
// One test per validation rule

#[test]
fn unknown_keys_are_refused_at_every_level() {
    let toml = config(
        "[servers]\nworker_threads = 1\n[admin]\nbnd = \"127.0.0.1:9901\"",
        "colour = \"blue\"",
        "backend = []\n[[pool]]\nname = \"api\"\nbackends = [{ address = \"127.0.0.1:9002\", wieght = 2 }]",
        "path_prefx = \"/x\"",
    );
    let r = check(&toml);
    assert_problems(
        &r,
        &[
            p("servers", line_of(&toml, "[servers]"), "unknown key"),
            p("admin.bnd", line_of(&toml, "bnd ="), "unknown key"),
            p("listener[0].colour", line_of(&toml, "colour"), "unknown key"),
            p("pool[0].backend", line_of(&toml, "backend = []"), "unknown key"),
            p("pool[1].backends[0].wieght", line_of(&toml, "wieght"), "unknown key"),
            p("route[0].path_prefx", line_of(&toml, "path_prefx"), "unknown key"),
        ],
    );
}

#[test]
fn wrong_types_name_the_expected_and_found_type() {
    let toml = config(
        "[server]\nworker_threads = \"two\"\n[log]\nlevel = 3",
        "",
        "connect_timeout = 5\nretries = \"1\"",
        "strip_prefix = \"yes\"\nmethods = \"GET\"",
    );
    let r = check(&toml);
    assert_problems(
        &r,
        &[
            p(
                "server.worker_threads",
                line_of(&toml, "worker_threads"),
                "expected an integer, found a string",
            ),
            p(
                "log.level",
                line_of(&toml, "level = 3"),
                "expected a string, found an integer",
            ),
            p(
                "pool[0].connect_timeout",
                line_of(&toml, "connect_timeout"),
                "expected a string, found an integer",
            ),
            p(
                "pool[0].retries",
                line_of(&toml, "retries"),
                "expected an integer, found a string",
            ),
            p(
                "route[0].strip_prefix",
                line_of(&toml, "strip_prefix"),
                "expected a boolean, found a string",
            ),
            p(
                "route[0].methods",
                line_of(&toml, "methods"),
                "expected an array of strings, found a string",
            ),
        ],
    );
}

#[test]
fn wrong_type_of_a_table_is_refused() {
    let toml = "admin = \"127.0.0.1:9901\"\n".to_string() + &config("", "", "", "");
    let r = check(&toml);
    assert_problems(
        &r,
        &[p(
            "admin",
            line_of(&toml, "admin ="),
            "expected a table, found a string",
        )],
    );
}

#[test]
fn duplicate_listener_names_are_refused() {
    let toml = config("", "", "", "") + "\n[[listener]]\nname = \"http\"\nbind = \"127.0.0.1:8081\"\n";
    let r = check(&toml);
    assert_problems(
        &r,
        &[p(
            "listener[1].name",
            nth_line_of(&toml, "name = \"http\"", 2),
            "duplicate listener name \"http\" (first defined at line",
        )],
    );
}

#[test]
fn duplicate_pool_names_are_refused() {
    let toml = config("", "", "", "") + "\n[[pool]]\nname = \"web\"\nbackends = [{ address = \"127.0.0.1:9002\" }]\n";
    let r = check(&toml);
    assert_problems(
        &r,
        &[p(
            "pool[1].name",
            nth_line_of(&toml, "name = \"web\"", 2),
            "duplicate pool name \"web\" (first defined at line",
        )],
    );
}

#[test]
fn duplicate_route_names_are_refused() {
    let toml = config("", "", "", "") + "\n[[route]]\nname = \"all\"\npath_prefix = \"/other/\"\npool = \"web\"\n";
    let r = check(&toml);
    assert_problems(
        &r,
        &[p(
            "route[1].name",
            nth_line_of(&toml, "name = \"all\"", 2),
            "duplicate route name \"all\" (first defined at line",
        )],
    );
}

#[test]
fn a_route_naming_an_unknown_pool_is_refused() {
    let toml = config("", "", "", "").replace("pool = \"web\"", "pool = \"wbe\"");
    let r = check(&toml);
    assert_problems(
        &r,
        &[p(
            "route[0].pool",
            line_of(&toml, "pool = \"wbe\""),
            "unknown pool \"wbe\"",
        )],
    );
}

#[test]
fn bad_bind_addresses_are_refused() {
    let toml = config(
        "[admin]\nbind = \"nowhere\"",
        "[[listener]]\nname = \"a\"\nbind = \"localhost:80\"\n[[listener]]\nname = \"b\"\nbind = \"127.0.0.1\"\n[[listener]]\nname = \"c\"\nbind = \"127.0.0.1:99999\"",
        "",
        "",
    );
    let r = check(&toml);
    assert_problems(
        &r,
        &[
            p(
                "admin.bind",
                line_of(&toml, "nowhere"),
                "invalid address \"nowhere\": expected IP:port",
            ),
            p(
                "listener[1].bind",
                line_of(&toml, "localhost:80"),
                "invalid address \"localhost:80\": expected IP:port",
            ),
            p(
                "listener[2].bind",
                line_of(&toml, "\"127.0.0.1\""),
                "invalid address \"127.0.0.1\": expected IP:port",
            ),
            p(
                "listener[3].bind",
                line_of(&toml, "99999"),
                "invalid address \"127.0.0.1:99999\": expected IP:port",
            ),
        ],
    );
}

#[test]
fn a_backend_on_port_0_is_refused() {
    let toml = config("", "", "", "").replace("127.0.0.1:9001", "127.0.0.1:0");
    let r = check(&toml);
    assert_problems(
        &r,
        &[p(
            "pool[0].backends[0].address",
            line_of(&toml, "127.0.0.1:0\""),
            "backend \"127.0.0.1:0\" needs a port other than 0",
        )],
    );
}

#[test]
fn invalid_backend_addresses_are_refused() {
    let toml = config(
        "",
        "",
        "[[pool]]\nname = \"b\"\nbackends = [\n  { address = \"127.0.0.1\" },\n  { address = \"127.0.0.1:9002\" },\n  { address = \"127.0.0.1:9002\" },\n]",
        "",
    );
    let r = check(&toml);
    assert_problems(
        &r,
        &[
            p(
                "pool[1].backends[0].address",
                line_of(&toml, "\"127.0.0.1\""),
                "invalid backend address \"127.0.0.1\"",
            ),
            p(
                "pool[1].backends[2].address",
                nth_line_of(&toml, "127.0.0.1:9002", 2),
                "backend 127.0.0.1:9002 is listed twice in this pool",
            ),
        ],
    );
}

#[test]
fn a_backend_weight_of_0_is_refused() {
    let toml = config("", "", "", "").replace(
        "{ address = \"127.0.0.1:9001\" }",
        "{ address = \"127.0.0.1:9001\", weight = 0 }",
    );
    let r = check(&toml);
    assert_problems(
        &r,
        &[p(
            "pool[0].backends[0].weight",
            line_of(&toml, "weight = 0"),
            "must be at least 1",
        )],
    );
}

#[test]
fn zero_timeouts_are_refused() {
    let toml = config("", "", "connect_timeout = \"0s\"\nresponse_timeout = \"0\"", "");
    let r = check(&toml);
    assert_problems(
        &r,
        &[
            p(
                "pool[0].connect_timeout",
                line_of(&toml, "connect_timeout"),
                "must be greater than 0",
            ),
            p(
                "pool[0].response_timeout",
                line_of(&toml, "response_timeout"),
                "must be greater than 0",
            ),
        ],
    );
}

#[test]
fn durations_with_a_bad_or_missing_unit_are_refused() {
    let toml = config(
        "[server]\ngraceful_shutdown_timeout = \"fast\"",
        "",
        "connect_timeout = \"5 parsecs\"\nresponse_timeout = \"30\"",
        "",
    );
    let r = check(&toml);
    assert_problems(
        &r,
        &[
            p(
                "server.graceful_shutdown_timeout",
                line_of(&toml, "fast"),
                "invalid duration \"fast\"",
            ),
            p(
                "pool[0].connect_timeout",
                line_of(&toml, "parsecs"),
                "invalid duration \"5 parsecs\": unknown unit \"parsecs\"",
            ),
            p(
                "pool[0].response_timeout",
                line_of(&toml, "\"30\""),
                "invalid duration \"30\": missing unit",
            ),
        ],
    );
}

#[test]
fn integers_out_of_range_are_refused() {
    let toml = config(
        "[server]\nworker_threads = -1\nmax_connections = 0",
        "",
        "retries = 1000",
        "",
    );
    let r = check(&toml);
    assert_problems(
        &r,
        &[
            p(
                "server.worker_threads",
                line_of(&toml, "worker_threads"),
                "must be between 0 and",
            ),
            p(
                "server.max_connections",
                line_of(&toml, "max_connections"),
                "must be at least 1",
            ),
            p("pool[0].retries", line_of(&toml, "retries"), "must be between 0 and"),
        ],
    );
}

#[test]
fn client_limits_are_validated() {
    let toml = config(
        "[server]\nheader_read_timeout = \"0s\"\nidle_timeout = 60\nmax_header_bytes = \"512B\"\nmax_body_bytes = \"10 parsecs\"\nh2_max_concurrent_streams = 0",
        "",
        "",
        "",
    );
    let r = check(&toml);
    assert_problems(
        &r,
        &[
            p(
                "server.header_read_timeout",
                line_of(&toml, "header_read_timeout"),
                "must be greater than 0",
            ),
            p(
                "server.idle_timeout",
                line_of(&toml, "idle_timeout"),
                "expected a string, found an integer",
            ),
            p(
                "server.max_header_bytes",
                line_of(&toml, "max_header_bytes"),
                "must be between 1KiB and 1MiB",
            ),
            p(
                "server.max_body_bytes",
                line_of(&toml, "max_body_bytes"),
                "invalid size \"10 parsecs\"",
            ),
            p(
                "server.h2_max_concurrent_streams",
                line_of(&toml, "h2_max_concurrent_streams"),
                "must be at least 1",
            ),
        ],
    );
    let toml = config("[server]\nmax_header_bytes = \"2MiB\"\nmax_body_bytes = -1", "", "", "");
    assert_problems(
        &check(&toml),
        &[
            p(
                "server.max_header_bytes",
                line_of(&toml, "max_header_bytes"),
                "must be between 1KiB and 1MiB",
            ),
            p(
                "server.max_body_bytes",
                line_of(&toml, "max_body_bytes"),
                "a size cannot be negative",
            ),
        ],
    );
}

#[test]
fn paths_not_starting_with_a_slash_are_refused() {
    let toml = config(
        "",
        "",
        "",
        "path_prefix = \"api/\"\n[[route]]\nname = \"exact\"\npath = \"login\"\npool = \"web\"\n[[route]]\nname = \"query\"\npath = \"/a?b=c\"\npool = \"web\"",
    );
    let r = check(&toml);
    assert_problems(
        &r,
        &[
            p(
                "route[0].path_prefix",
                line_of(&toml, "api/"),
                "\"api/\" must start with '/'",
            ),
            p(
                "route[1].path",
                line_of(&toml, "login"),
                "\"login\" must start with '/'",
            ),
            p("route[2].path", line_of(&toml, "/a?b=c"), "must be a plain path"),
        ],
    );
}

#[test]
fn path_and_path_prefix_together_are_refused() {
    let toml = config("", "", "", "path = \"/a\"\npath_prefix = \"/b/\"");
    let r = check(&toml);
    assert_problems(
        &r,
        &[p(
            "route[0].path",
            line_of(&toml, "path = \"/a\""),
            "use either `path` or `path_prefix`, not both",
        )],
    );
}

#[test]
fn strip_prefix_with_an_exact_path_is_refused() {
    let toml = config("", "", "", "path = \"/login\"\nstrip_prefix = true");
    let r = check(&toml);
    assert_problems(
        &r,
        &[p(
            "route[0].strip_prefix",
            line_of(&toml, "strip_prefix"),
            "needs `path_prefix`",
        )],
    );
}

#[test]
fn invalid_host_patterns_are_refused() {
    let toml = config(
        "",
        "",
        "",
        "host = [\n  \"example.com\",\n  \"exa mple.com\",\n  \"a.*.example.com\",\n  \"*\",\n]\n[[route]]\nname = \"single\"\nhost = \"bad_host!\"\npool = \"web\"",
    );
    let r = check(&toml);
    assert_problems(
        &r,
        &[
            p(
                "route[0].host[1]",
                line_of(&toml, "exa mple.com"),
                "invalid host \"exa mple.com\"",
            ),
            p(
                "route[0].host[2]",
                line_of(&toml, "a.*.example.com"),
                "invalid host \"a.*.example.com\"",
            ),
            p("route[0].host[3]", line_of(&toml, "\"*\","), "invalid host \"*\""),
            p(
                "route[1].host",
                line_of(&toml, "bad_host!"),
                "invalid host \"bad_host!\"",
            ),
        ],
    );
}

#[test]
fn invalid_methods_are_refused() {
    let toml = config("", "", "", "methods = [\n  \"GET\",\n  \"get\",\n  \"G ET\",\n]");
    let r = check(&toml);
    assert_problems(
        &r,
        &[
            p(
                "route[0].methods[1]",
                line_of(&toml, "\"get\""),
                "invalid method \"get\"",
            ),
            p(
                "route[0].methods[2]",
                line_of(&toml, "\"G ET\""),
                "invalid method \"G ET\"",
            ),
        ],
    );
}

#[test]
fn an_empty_method_list_is_refused() {
    let toml = config("", "", "", "methods = []");
    let r = check(&toml);
    assert_problems(
        &r,
        &[p(
            "route[0].methods",
            line_of(&toml, "methods"),
            "an empty method list matches nothing",
        )],
    );
}

#[test]
fn a_route_shadowed_by_an_identical_one_is_refused() {
    let toml = config("", "", "", "path_prefix = \"/api/\"\nmethods = [\"GET\", \"POST\"]")
        + "\n[[route]]\nname = \"shadowed\"\npath_prefix = \"/api/\"\nmethods = [\"POST\"]\npool = \"web\"\n"
        + "\n[[route]]\nname = \"other-method\"\npath_prefix = \"/api/\"\nmethods = [\"PUT\"]\npool = \"web\"\n"
        + "\n[[route]]\nname = \"other-host\"\nhost = \"example.com\"\npath_prefix = \"/api/\"\npool = \"web\"\n";
    let r = check(&toml);
    assert_problems(
        &r,
        &[p(
            "route[1].name",
            line_of(&toml, "\"shadowed\""),
            "route \"shadowed\" can never match: route \"all\" has the same host, path and methods",
        )],
    );
}

#[test]
fn two_listeners_on_one_address_are_refused() {
    let toml = config("", "", "", "")
        + "\n[[listener]]\nname = \"again\"\nbind = \"127.0.0.1:8080\"\n"
        + "\n[[listener]]\nname = \"any-port-a\"\nbind = \"127.0.0.1:0\"\n"
        + "\n[[listener]]\nname = \"any-port-b\"\nbind = \"127.0.0.1:0\"\n";
    let r = check(&toml);
    assert_problems(
        &r,
        &[p(
            "listener[1].bind",
            nth_line_of(&toml, "bind = \"127.0.0.1:8080\"", 2),
            "address 127.0.0.1:8080 is already used by listener \"http\"",
        )],
    );
}

#[test]
fn the_admin_api_on_a_listeners_address_is_refused() {
    let toml = config("[admin]\nbind = \"127.0.0.1:8080\"", "", "", "");
    let r = check(&toml);
    assert_problems(
        &r,
        &[p(
            "admin.bind",
            nth_line_of(&toml, "bind = \"127.0.0.1:8080\"", 1),
            "address 127.0.0.1:8080 is already used by listener \"http\"",
        )],
    );
}

#[test]
fn a_non_loopback_admin_api_needs_a_token_file() {
    let toml = config("[admin]\nbind = \"0.0.0.0:9901\"", "", "", "");
    let r = check(&toml);
    assert_problems(
        &r,
        &[p(
            "admin.bind",
            line_of(&toml, "0.0.0.0:9901"),
            "the admin API on a non-loopback address (0.0.0.0:9901) needs token_file",
        )],
    );
    // With a readable token file (relative to the config file) it passes.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), "t0ken\n").unwrap();
    let toml = config(
        "[admin]\nbind = \"0.0.0.0:9901\"\ntoken_file = \"admin.token\"",
        "",
        "",
        "",
    );
    assert_ok(&check_in(dir.path(), &toml));
}

#[test]
fn an_unreadable_or_empty_token_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.token");
    let toml = config(
        &format!("[admin]\ntoken_file = {:?}", missing.to_str().unwrap()),
        "",
        "",
        "",
    );
    let r = check_in(dir.path(), &toml);
    let msg = format!("cannot read {}", missing.display());
    assert_problems(&r, &[p("admin.token_file", line_of(&toml, "token_file"), &msg)]);

    // A directory cannot be read as a token either.
    std::fs::create_dir(dir.path().join("tokendir")).unwrap();
    let toml = config("[admin]\ntoken_file = \"tokendir\"", "", "", "");
    let r = check_in(dir.path(), &toml);
    let msg = format!("cannot read {}", dir.path().join("tokendir").display());
    assert_problems(&r, &[p("admin.token_file", line_of(&toml, "token_file"), &msg)]);

    std::fs::write(dir.path().join("empty.token"), "  \n").unwrap();
    let toml = config("[admin]\ntoken_file = \"empty.token\"", "", "", "");
    let r = check_in(dir.path(), &toml);
    assert_problems(&r, &[p("admin.token_file", line_of(&toml, "token_file"), "is empty")]);
}

#[test]
fn missing_required_keys_are_named() {
    let toml = r#"
[[listener]]
bind = "127.0.0.1:8080"

[[listener]]
name = "no-bind"

[[pool]]
backends = [{ address = "127.0.0.1:9001" }]

[[pool]]
name = "no-backends"

[[pool]]
name = "backend-without-address"
backends = [{ weight = 2 }]

[[route]]
pool = "no-backends"

[[route]]
name = "no-pool"
path_prefix = "/x/"
"#;
    let r = check(toml);
    assert_problems(
        &r,
        &[
            p(
                "listener[0]",
                nth_line_of(toml, "[[listener]]", 1),
                "missing required key `name`",
            ),
            p(
                "listener[1]",
                nth_line_of(toml, "[[listener]]", 2),
                "missing required key `bind`",
            ),
            p(
                "pool[0]",
                nth_line_of(toml, "[[pool]]", 1),
                "missing required key `name`",
            ),
            p(
                "pool[1]",
                nth_line_of(toml, "[[pool]]", 2),
                "missing required key `backends`",
            ),
            p(
                "pool[2].backends[0]",
                line_of(toml, "weight = 2"),
                "missing required key `address`",
            ),
            p(
                "route[0]",
                nth_line_of(toml, "[[route]]", 1),
                "missing required key `name`",
            ),
            p(
                "route[1]",
                nth_line_of(toml, "[[route]]", 2),
                "missing required key `pool`",
            ),
        ],
    );
}

#[test]
fn a_pool_with_an_empty_backend_list_is_refused() {
    let toml = config("", "", "", "").replace("backends = [{ address = \"127.0.0.1:9001\" }]", "backends = []");
    let r = check(&toml);
    assert_problems(
        &r,
        &[p(
            "pool[0].backends",
            line_of(&toml, "backends = []"),
            "a pool needs at least one backend",
        )],
    );
}

#[test]
fn a_file_without_a_listener_is_refused() {
    let toml = r#"[[pool]]
name = "web"
backends = [{ address = "127.0.0.1:9001" }]

[[route]]
name = "all"
pool = "web"
"#;
    let r = check(toml);
    assert_problems(&r, &[p("(top level)", 1, "at least one [[listener]] is required")]);
}

#[test]
fn an_empty_listener_array_is_refused() {
    // `listener = []` is as listener-less as no [[listener]] at all.
    let toml = r#"listener = []

[[pool]]
name = "web"
backends = [{ address = "127.0.0.1:9001" }]

[[route]]
name = "all"
pool = "web"
"#;
    let r = check(toml);
    assert_eq!(
        r.code,
        Some(1),
        "a config with no listener must be refused:\n{}",
        r.all()
    );
    assert!(
        r.problems()
            .iter()
            .any(|l| l.contains("at least one [[listener]] is required")),
        "expected `at least one [[listener]] is required`:\n{}",
        r.all()
    );
}

#[test]
fn invalid_names_are_refused() {
    let toml = config("", "", "", "")
        .replace("name = \"web\"", "name = \"web pool\"")
        .replace("pool = \"web\"", "pool = \"web pool\"");
    let r = check(&toml);
    assert_problems(
        &r,
        &[p(
            "pool[0].name",
            line_of(&toml, "name = \"web pool\""),
            "invalid name \"web pool\"",
        )],
    );
}

#[test]
fn an_unknown_balance_policy_is_refused() {
    let toml = config("", "", "balance = \"fastest\"", "");
    let r = check(&toml);
    assert_problems(
        &r,
        &[p(
            "pool[0].balance",
            line_of(&toml, "fastest"),
            "unknown policy \"fastest\"",
        )],
    );
}

#[test]
fn unknown_log_settings_are_refused() {
    let toml = config("[log]\nlevel = \"loud\"\nformat = \"xml\"\naccess = \"\"", "", "", "");
    let r = check(&toml);
    assert_problems(
        &r,
        &[
            p("log.level", line_of(&toml, "loud"), "unknown level \"loud\""),
            p("log.format", line_of(&toml, "xml"), "unknown format \"xml\""),
            p(
                "log.access",
                line_of(&toml, "access"),
                "must be \"off\", \"stdout\" or a file path",
            ),
        ],
    );
}

#[test]
fn a_toml_syntax_error_names_its_line() {
    let toml = config("", "", "", "").replace("name = \"all\"", "name = \"all");
    let r = check(&toml);
    assert_problems(&r, &[p("(syntax)", line_of(&toml, "name = \"all"), "invalid")]);
}

#[test]
fn a_toml_syntax_error_is_printed_on_one_line_with_its_line_number() {
    // Every problem is one line: `file: key path: message (line N)`, so that editors and grep
    // can use it. toml_edit's messages for some errors span several lines.
    let toml = config("", "", "", "").replace("[[route]]", "[[route]");
    assert_problems(
        &check(&toml),
        &[p("(syntax)", line_of(&toml, "[[route]"), "invalid table header")],
    );
    let r = cli_check(&toml);
    assert_eq!(r.code, Some(1), "expected exit code 1:\n{}", r.all());
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "one problem line and the count:\n{}", r.all());
    assert!(
        lines[0].starts_with(&format!("{}: (syntax): ", r.file))
            && lines[0].ends_with(&format!("(line {})", line_of(&toml, "[[route]"))),
        "{}",
        r.all()
    );
}

#[test]
fn tls_and_redirect_keys_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let make = |name: &str| {
        let c = rcgen::generate_simple_self_signed(vec![format!("{name}.test")]).unwrap();
        std::fs::write(d.join(format!("{name}.crt")), c.cert.pem()).unwrap();
        std::fs::write(d.join(format!("{name}.key")), c.key_pair.serialize_pem()).unwrap();
    };
    make("a");
    make("b");
    std::fs::write(d.join("garbage.pem"), "not pem\n").unwrap();
    let path = |n: &str| d.join(n).display().to_string();
    let tls = |certs: &str, rest: &str| format!("[listener.tls]\ncertificates = [{certs}]\n{rest}");
    let pair = |c: &str, k: &str| format!("{{ cert = \"{}\", key = \"{}\" }}", path(c), path(k));
    // Everything set, relative paths resolved against the config's directory, and a plain
    // listener redirecting to https.
    let good = config(
        "",
        &format!(
            "redirect_https = 8443\n\n[[listener]]\nname = \"https\"\nbind = \"127.0.0.1:8443\"\n{}",
            tls(
                &format!("{}, {{ cert = \"b.crt\", key = \"b.key\" }}", pair("a.crt", "a.key")),
                &format!(
                    "min_version = \"1.3\"\nalpn = [\"http/1.1\"]\nsni_strict = true\nclient_ca = \"{}\"\nclient_cert_header = \"x-subject\"\nhsts = \"max-age=31536000\"",
                    path("a.crt")
                )
            )
        ),
        "",
        "",
    );
    assert_ok(&check_in(d, &good));
    let cases: Vec<(String, String)> = vec![
        (
            tls("", ""),
            "listener[0].tls.certificates: at least one certificate is required".into(),
        ),
        (
            "[listener.tls]\nmin_version = \"1.2\"".into(),
            "listener[0].tls: missing required key `certificates`".into(),
        ),
        (
            tls(&pair("missing.crt", "a.key"), ""),
            format!(
                "listener[0].tls.certificates[0].cert: cannot read {}",
                path("missing.crt")
            ),
        ),
        (
            tls(&pair("garbage.pem", "a.key"), ""),
            format!(
                "listener[0].tls.certificates[0].cert: {}: no PEM certificate found",
                path("garbage.pem")
            ),
        ),
        (
            tls(&pair("a.crt", "a.crt"), ""),
            format!(
                "listener[0].tls.certificates[0].key: {}: no PEM private key found",
                path("a.crt")
            ),
        ),
        (
            tls(&pair("a.crt", "b.key"), ""),
            format!(
                "listener[0].tls.certificates[0].key: the key in {} does not match the certificate in {}",
                path("b.key"),
                path("a.crt")
            ),
        ),
        (
            "[listener.tls]\ncertificates = [{ cert = \"a.crt\" }]".into(),
            "listener[0].tls.certificates[0]: missing required key `key`".into(),
        ),
        (
            tls(&pair("a.crt", "a.key"), "min_version = \"1.1\""),
            "listener[0].tls.min_version: unknown version \"1.1\"".into(),
        ),
        (
            tls(&pair("a.crt", "a.key"), "alpn = [\"h2\", \"spdy/3\"]"),
            "listener[0].tls.alpn[1]: unknown protocol \"spdy/3\"".into(),
        ),
        (
            tls(&pair("a.crt", "a.key"), "sni_strict = \"yes\""),
            "listener[0].tls.sni_strict: expected a boolean".into(),
        ),
        (
            tls(
                &pair("a.crt", "a.key"),
                &format!("client_ca = \"{}\"", path("none.pem")),
            ),
            format!("listener[0].tls.client_ca: cannot read {}", path("none.pem")),
        ),
        (
            tls(&pair("a.crt", "a.key"), "client_cert_header = \"bad header\""),
            "listener[0].tls.client_cert_header: invalid header name".into(),
        ),
        (
            tls(&pair("a.crt", "a.key"), "hsts = \"\""),
            "listener[0].tls.hsts: must not be empty".into(),
        ),
        (
            tls(&pair("a.crt", "a.key"), "ciphers = [\"RC4\"]"),
            "listener[0].tls.ciphers: unknown key".into(),
        ),
        (
            "redirect_https = 0".into(),
            "listener[0].redirect_https: must be a port between 1 and 65535".into(),
        ),
        (
            "redirect_https = 70000".into(),
            "listener[0].redirect_https: must be between 0 and 65535".into(),
        ),
        (
            format!("redirect_https = 443\n{}", tls(&pair("a.crt", "a.key"), "")),
            "listener[0].redirect_https: is for plain listeners".into(),
        ),
    ];
    for (listener, want) in cases {
        let toml = config("", &listener, "", "");
        let r = check_in(d, &toml);
        assert_eq!(r.code, Some(1), "{toml}\n{}", r.all());
        assert!(
            r.problems().iter().any(|p| p.starts_with(&want)),
            "expected {want:?} in:\n{}",
            r.all()
        );
        assert_eq!(r.problems().len(), 1, "one problem expected:\n{}", r.all());
    }
}

#[test]
fn upstream_tls_keys_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_string()]).unwrap();
    std::fs::write(d.join("ca.pem"), ca.cert.pem()).unwrap();
    std::fs::write(d.join("garbage.pem"), "not pem\n").unwrap();
    let path = |n: &str| d.join(n).display().to_string();
    for pool in [
        format!("tls = true\nca_file = \"{}\"", path("ca.pem")),
        "tls = false".to_string(),
    ] {
        let toml = config("", "", &pool, "");
        assert_ok(&check_in(d, &toml));
    }
    let cases: Vec<(String, String)> = vec![
        (
            format!("tls = true\nca_file = \"{}\"", path("missing.pem")),
            format!("pool[0].ca_file: cannot read {}", path("missing.pem")),
        ),
        (
            format!("tls = true\nca_file = \"{}\"", path("garbage.pem")),
            format!("pool[0].ca_file: {}: no PEM certificate found", path("garbage.pem")),
        ),
        (
            format!("ca_file = \"{}\"", path("ca.pem")),
            "pool[0].ca_file: only applies with tls = true".into(),
        ),
        (
            format!("tls = false\nca_file = \"{}\"", path("ca.pem")),
            "pool[0].ca_file: only applies with tls = true".into(),
        ),
        ("tls = \"yes\"".into(), "pool[0].tls: expected a boolean".into()),
    ];
    for (pool, want) in cases {
        let toml = config("", "", &pool, "");
        let r = check_in(d, &toml);
        assert_eq!(r.code, Some(1), "{toml}\n{}", r.all());
        assert!(
            r.problems().iter().any(|p| p.starts_with(&want)),
            "expected {want:?} in:\n{}",
            r.all()
        );
        assert_eq!(r.problems().len(), 1, "one problem expected:\n{}", r.all());
    }
}

#[test]
fn sticky_and_consistent_hash_keys_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("session.key");
    std::fs::write(&key, [1u8; 48]).unwrap();
    let short = dir.path().join("short.key");
    std::fs::write(&short, [1u8; 8]).unwrap();
    let good = format!(
        "[session]\nsecret_file = \"{}\"\n{}",
        key.display(),
        config(
            "",
            "",
            "balance = \"consistent_hash\"\nhash_key = \"header:x-user-id\"\nhash_balance_factor = 1.25",
            "[route.sticky]\ncookie = \"sid\"\nmax_age = \"30m\"\nstrict = true"
        )
    );
    assert_ok(&check(&good));
    let cases = [
        (
            format!(
                "[session]\nsecret_file = \"{}\"\n{}",
                short.display(),
                config("", "", "", "")
            ),
            "session.secret_file: the session secret has 8 bytes; at least 32 are needed",
        ),
        (config("", "", "balance = \"consistent_hash\"", ""), "needs hash_key"),
        (
            config("", "", "balance = \"consistent_hash\"\nhash_key = \"body\"", ""),
            "pool[0].hash_key: invalid hash_key \"body\"",
        ),
        (
            config("", "", "hash_key = \"client_ip\"", ""),
            "pool[0].hash_key: only applies with balance = \"consistent_hash\"",
        ),
        (
            config(
                "",
                "",
                "balance = \"consistent_hash\"\nhash_key = \"path\"\nhash_balance_factor = 0.5",
                "",
            ),
            "pool[0].hash_balance_factor: must be at least 1.0",
        ),
        (
            config("", "", "", "[route.sticky]\ncookie = \"bad cookie\""),
            "route[0].sticky.cookie: invalid cookie name \"bad cookie\"",
        ),
        (
            config("", "", "", "[route.sticky]\nmax_age = \"0s\""),
            "route[0].sticky.max_age: must be greater than 0",
        ),
    ];
    for (toml, want) in cases {
        let r = check(&toml);
        assert_eq!(r.code, Some(1), "{toml}");
        assert!(
            r.problems().iter().any(|p| p.contains(want)),
            "expected {want:?} in:\n{}",
            r.all()
        );
    }
}

#[test]
fn split_routes_are_validated() {
    let good = config(
        "",
        "",
        "[pool.health]\nlag_header = \"x-replica-lag\"\nrole_header = \"x-role\"",
        "",
    )
    .replace(
        "pool = \"web\"",
        "[route.split]\nprimary = \"web\"\nreplicas = \"web\"\nread_your_writes = \"5s\"",
    );
    assert_ok(&check(&good));
    let dangling = config("", "", "", "").replace(
        "pool = \"web\"",
        "[route.split]\nprimary = \"web\"\nreplicas = \"web-replicas\"",
    );
    let r = check(&dangling);
    assert_eq!(r.code, Some(1));
    assert!(
        r.problems()
            .iter()
            .any(|p| p.starts_with("route[0].split.replicas: unknown pool \"web-replicas\"")),
        "{}",
        r.all()
    );
    let both = config("", "", "", "[route.split]\nprimary = \"web\"\nreplicas = \"web\"");
    let r = check(&both);
    assert_problems(
        &r,
        &[p(
            "route[0].split",
            line_of(&both, "[route.split]"),
            "a route sends to one of `pool` or `[route.split]`, not both",
        )],
    );
    let missing = config("", "", "", "").replace("pool = \"web\"", "[route.split]\nprimary = \"web\"");
    let r = check(&missing);
    assert_problems(
        &r,
        &[p(
            "route[0].split",
            line_of(&missing, "[route.split]"),
            "missing required key `replicas`",
        )],
    );
}

const GEO: &str = r#"
[admin]
bind = "127.0.0.1:9901"

[geo]
trusted_proxies = ["10.0.0.0/8"]
default_region = "eu"
[geo.regions]
eu = ["192.0.2.0/24"]
na = ["198.51.100.0/24"]

[[datacenter]]
name = "eu-west"
regions = ["eu"]
failover = ["us-east"]

[[datacenter]]
name = "us-east"
regions = ["na"]
failover = ["eu-west"]

[[listener]]
name = "http"
bind = "127.0.0.1:8080"
proxy_protocol = true

[[pool]]
name = "web-eu"
datacenter = "eu-west"
backends = [{ address = "127.0.0.1:9001" }]

[[pool]]
name = "web-us"
datacenter = "us-east"
backends = [{ address = "127.0.0.1:9002" }]

[[route]]
name = "app"
pools = ["web-eu", "web-us"]
"#;

#[test]
fn geo_routing_is_validated() {
    assert_ok(&check(GEO));
    let cases = [
        (
            GEO.replace("default_region = \"eu\"", "default_region = \"asia\""),
            "geo.default_region: unknown region \"asia\"",
        ),
        (
            GEO.replace("regions = [\"na\"]", "regions = [\"sa\"]"),
            "datacenter[1].regions[0]: unknown region \"sa\"",
        ),
        (
            GEO.replace("failover = [\"us-east\"]", "failover = [\"ap-south\"]"),
            "datacenter[0].failover[0]: unknown data center \"ap-south\"",
        ),
        (
            GEO.replace("datacenter = \"us-east\"", "datacenter = \"us-west\""),
            "pool[1].datacenter: unknown data center \"us-west\"",
        ),
        (
            GEO.replace("pools = [\"web-eu\", \"web-us\"]", "pools = [\"web-eu\", \"web-ap\"]"),
            "route[0].pools[1]: unknown pool \"web-ap\"",
        ),
        (
            GEO.replace("na = [\"198.51.100.0/24\"]", "na = [\"192.0.2.0/24\"]"),
            "192.0.2.0/24",
        ),
        (
            GEO.replace("datacenter = \"us-east\"\n", ""),
            "route[0].pools[1]: pool \"web-us\" is in no data center",
        ),
        (
            GEO.replace("regions = [\"na\"]", "regions = [\"eu\"]"),
            "region \"eu\" is already served by data center \"eu-west\"",
        ),
        (
            GEO.replace("eu = [\"192.0.2.0/24\"]", "eu = [\"192.0.2.0/33\"]"),
            "geo.regions.eu[0]",
        ),
    ];
    for (toml, want) in cases {
        let r = check(&toml);
        assert_eq!(r.code, Some(1), "{toml}");
        assert!(
            r.problems().iter().any(|p| p.contains(want)),
            "expected {want:?} in:\n{}",
            r.all()
        );
    }
}

#[test]
fn defaults_of_later_keys_that_change_nothing_are_accepted() {
    // `proxy_protocol = false` and `tls = false` state the defaults: nothing is ignored.
    let toml = config("", "proxy_protocol = false", "tls = false", "");
    assert_ok(&check(&toml));
}

// ---------------------------------------------------------------------------------------
// All at once

#[test]
fn several_problems_are_all_reported_at_once_in_line_order() {
    let toml = r#"
[server]
worker_threads = "many"

[admin]
bind = "0.0.0.0:9901"

[[listener]]
name = "http"
bind = "127.0.0.1:8080"
colour = "blue"

[[pool]]
name = "web"
backends = [{ address = "127.0.0.1:0" }, { address = "127.0.0.1:9002", weight = 0 }]
connect_timeout = "2 fortnights"

[[route]]
name = "all"
path = "nope"
methods = ["get"]
pool = "wbe"
[route.cache]
default_ttl = "1 fortnight"
"#;
    let r = check(toml);
    let expected = [
        p(
            "server.worker_threads",
            line_of(toml, "\"many\""),
            "expected an integer",
        ),
        p("admin.bind", line_of(toml, "0.0.0.0"), "needs token_file"),
        p("listener[0].colour", line_of(toml, "colour"), "unknown key"),
        p(
            "pool[0].backends[0].address",
            line_of(toml, "127.0.0.1:0\""),
            "needs a port other than 0",
        ),
        p(
            "pool[0].backends[1].weight",
            line_of(toml, "weight = 0"),
            "must be at least 1",
        ),
        p("pool[0].connect_timeout", line_of(toml, "fortnights"), "unknown unit"),
        p("route[0].path", line_of(toml, "\"nope\""), "must start with '/'"),
        p("route[0].methods[0]", line_of(toml, "\"get\""), "invalid method"),
        p("route[0].pool", line_of(toml, "\"wbe\""), "unknown pool \"wbe\""),
        p(
            "route[0].cache.default_ttl",
            line_of(toml, "1 fortnight"),
            "invalid duration",
        ),
    ];
    assert_problems(&r, &expected);
    // Listed in the order of the file.
    let lines: Vec<usize> = r
        .problems()
        .iter()
        .filter_map(|l| {
            let n = l.rsplit("(line ").next()?.trim_end_matches(')');
            n.parse().ok()
        })
        .collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted, "problems in line order:\n{}", r.all());
}

// ---------------------------------------------------------------------------------------
// A missing or unreadable config file

fn assert_one_line_error(r: &Run, mentions: &str) {
    r.assert_no_panic();
    assert_eq!(r.code, Some(1), "expected exit code 1:\n{}", r.all());
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr:\n{}", r.all());
    assert!(
        lines[0].contains(mentions),
        "the error should name {mentions}:\n{}",
        r.all()
    );
    assert!(r.stdout.is_empty(), "nothing on stdout:\n{}", r.all());
}

#[test]
fn a_missing_config_file_is_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let m = missing.to_str().unwrap();
    for args in [
        vec!["check", "--config", m],
        vec!["run", "--config", m],
        vec!["--config", m],
    ] {
        let r = run(&args);
        assert_one_line_error(&r, m);
    }
}

#[test]
fn an_unreadable_config_file_is_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    // A directory cannot be read as a file, even by root.
    let d = dir.path().to_str().unwrap();
    for args in [vec!["check", "--config", d], vec!["run", "--config", d]] {
        let r = run(&args);
        assert_one_line_error(&r, d);
    }
    // Not UTF-8.
    let bin = dir.path().join("binary.toml");
    std::fs::write(&bin, [0xff, 0xfe, 0x00, 0x80]).unwrap();
    let b = bin.to_str().unwrap();
    let r = run(&["check", "--config", b]);
    assert_one_line_error(&r, b);
    assert!(r.stderr.contains("valid UTF-8"), "says why: {}", r.all());
}

#[test]
fn an_empty_config_file_is_refused_without_a_panic() {
    let r = check("");
    assert_problems(&r, &[p("(top level)", 1, "at least one [[listener]] is required")]);
}

// ---------------------------------------------------------------------------------------
// --version, --help

#[test]
fn version_prints_the_version() {
    let r = run(&["--version"]);
    assert_eq!(r.code, Some(0), "{}", r.all());
    assert_eq!(r.stdout.trim(), format!("waypost {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn help_lists_run_check_and_demo() {
    let r = run(&["--help"]);
    assert_eq!(r.code, Some(0), "{}", r.all());
    for cmd in ["run", "check", "demo"] {
        assert!(
            r.stdout.lines().any(|l| l.trim_start().starts_with(&format!("{cmd} "))),
            "--help should list `{cmd}`:\n{}",
            r.all()
        );
    }
    assert!(r.stdout.contains("--config"), "{}", r.all());
}

#[test]
fn an_unknown_subcommand_is_a_usage_error_not_a_panic() {
    let r = run(&["frobnicate"]);
    r.assert_no_panic();
    assert_ne!(r.code, Some(0), "{}", r.all());
    assert!(r.stderr.contains("frobnicate"), "{}", r.all());
}

// ---------------------------------------------------------------------------------------
// The project's own example configs

#[test]
fn every_config_file_in_the_config_folder_passes_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = Vec::new();
    let mut failures = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let r = check_file(&path);
        if r.code != Some(0) {
            failures.push(format!("{}:\n{}", path.display(), r.all()));
        }
        checked.push(path);
    }
    assert!(
        checked.iter().any(|p| p.ends_with("demo.toml")),
        "config/demo.toml should be among the checked files: {checked:?}"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
