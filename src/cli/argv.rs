//! Docker's spellings of flags, rewritten into argh's before argh parses them.
//!
//! argh takes `--flag value` and `-f value` only. Docker's CLI (Go's pflag) also takes
//! `--flag=value`, `-f=value`, `-fvalue`, switches grouped as `-dit`, and `--switch=true`
//! or `--switch=false`; users type these all the time. [`normalise`] walks the command
//! line knowing, for each command, which flags take a value and which are switches, and
//! rewrites those forms:
//!
//! - `--flag=value`, `-f=value`, `-fvalue` become `--flag value`, `-f value`;
//! - `-abc` of switches becomes `-a -b -c` (the last letter may be an option that takes
//!   the rest of the word, or the next argument, as its value);
//! - a switch takes no value: `--rm=true` is `--rm`, `--rm=false` is left out (Go's
//!   boolean spellings are taken: true, false, 1, 0, t, f, in any case), anything else
//!   is a usage error naming the switch; a switch never takes the next argument;
//! - the value of an option is the next argument whatever it looks like (`--tail -1`);
//! - `--` ends the options; nothing after it is touched;
//! - in a command that ends with a command line of its own (`run`, `exec`, `service
//!   create`: argh's greedy positional), options end at the first positional, the image
//!   or the container, as Docker's do: everything after it is the container's, passed
//!   untouched (`run busybox sh -c 'echo --x=y'`, and `run busybox --rm` runs `--rm`).
//!
//! Anything not recognised is passed through for argh to refuse with its own message.
//! `runtime-helper` is written by swarmlet itself and passed through whole.
//!
//! What each command takes is the table in `argv_table.rs`, generated from the argh
//! structs themselves (their `ArgsInfo`, derived in test builds only: in the binary it
//! would cost 61 KiB, mostly a second copy of every flag's help text). A unit test
//! fails when the table and the structs disagree and says how to regenerate it.

use super::UsageError;

#[path = "argv_table.rs"]
mod table;

/// One command: its path (`"service create"`; `""` is swarmlet itself), the flags
/// that take a value and the switches (long and short spellings), and whether it ends
/// with a command line of its own.
#[derive(Debug, PartialEq, Eq)]
pub struct Cmd {
    pub path: &'static str,
    pub values: &'static [&'static str],
    pub switches: &'static [&'static str],
    pub greedy: bool,
}

/// Commands whose arguments are written by swarmlet, not typed: passed through whole.
const VERBATIM: &[&str] = &["runtime-helper"];

fn lookup(path: &str) -> Option<&'static Cmd> {
    table::COMMANDS.iter().find(|c| c.path == path)
}

/// Rewrites `args` (without the program name) for argh.
pub fn normalise(args: &[String]) -> Result<Vec<String>, UsageError> {
    let mut out = Vec::with_capacity(args.len() + 1);
    let Some(mut cmd) = lookup("") else {
        return Ok(args.to_vec());
    };
    let mut rest = args;
    // Whether `--` was written: options have ended, nothing more is rewritten.
    let mut ended = false;
    while let Some((tok, tail)) = rest.split_first() {
        rest = tail;
        if ended {
            out.push(tok.clone());
            continue;
        }
        if tok == "--" {
            ended = true;
            out.push(tok.clone());
        } else if let Some(long) = tok.strip_prefix("--") {
            long_flag(cmd, long, tok, &mut rest, &mut out)?;
        } else if tok.len() > 1 && tok.starts_with('-') {
            short_flags(cmd, tok, &mut rest, &mut out)?;
        } else if let Some(sub) = lookup(&sub_path(cmd.path, tok)) {
            out.push(tok.clone());
            if cmd.path.is_empty() && VERBATIM.contains(&tok.as_str()) {
                out.extend(rest.iter().cloned());
                return Ok(out);
            }
            cmd = sub;
        } else {
            out.push(tok.clone());
            if cmd.greedy && !rest.is_empty() {
                // The first positional: what follows belongs to the container.
                out.push("--".into());
                out.extend(rest.iter().cloned());
                return Ok(out);
            }
        }
    }
    Ok(out)
}

fn sub_path(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path} {name}")
    }
}

/// `--name`, `--name=value`.
fn long_flag(
    cmd: &Cmd,
    long: &str,
    tok: &str,
    rest: &mut &[String],
    out: &mut Vec<String>,
) -> Result<(), UsageError> {
    let (name, value) = match long.split_once('=') {
        Some((n, v)) => (&tok[..n.len() + 2], Some(v)),
        None => (tok, None),
    };
    if cmd.values.contains(&name) {
        out.push(name.to_string());
        match value {
            Some(v) => out.push(v.to_string()),
            None => take_next(rest, out),
        }
    } else if cmd.switches.contains(&name) {
        if switch_on(name, value)? {
            out.push(name.to_string());
        }
    } else {
        out.push(tok.to_string()); // argh names it
    }
    Ok(())
}

/// `-f`, `-f=value`, `-fvalue`, `-abc`.
fn short_flags(
    cmd: &Cmd,
    tok: &str,
    rest: &mut &[String],
    out: &mut Vec<String>,
) -> Result<(), UsageError> {
    let body = &tok[1..];
    // Every letter up to a value must be a known flag; otherwise the word goes to argh
    // as typed (a negative number as a positional, an unknown flag it will name).
    let mut expanded = Vec::new();
    for (i, c) in body.char_indices() {
        let flag = format!("-{c}");
        let after = &body[i + c.len_utf8()..];
        if cmd.values.contains(&flag.as_str()) {
            expanded.push(flag);
            match after.strip_prefix('=') {
                Some(v) => expanded.push(v.to_string()),
                None if after.is_empty() => take_next(rest, &mut expanded),
                None => expanded.push(after.to_string()),
            }
            out.extend(expanded);
            return Ok(());
        }
        if !cmd.switches.contains(&flag.as_str()) {
            out.push(tok.to_string());
            return Ok(());
        }
        if let Some(v) = after.strip_prefix('=') {
            if switch_on(&flag, Some(v))? {
                expanded.push(flag);
            }
            out.extend(expanded);
            return Ok(());
        }
        expanded.push(flag);
    }
    out.extend(expanded);
    Ok(())
}

/// Moves the next argument, whatever it looks like, into `out` as a value.
fn take_next(rest: &mut &[String], out: &mut Vec<String>) {
    if let Some((v, tail)) = rest.split_first() {
        out.push(v.clone());
        *rest = tail;
    }
}

/// Whether a switch written with `value` is on (Go's boolean spellings, as pflag).
fn switch_on(flag: &str, value: Option<&str>) -> Result<bool, UsageError> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        None | Some("true" | "t" | "1") => Ok(true),
        Some("false" | "f" | "0") => Ok(false),
        Some(_) => Err(UsageError(format!(
            "{flag}: a switch takes no value ({flag}, {flag}=true or {flag}=false)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use argh::{ArgsInfo, CommandInfoWithArgs, FlagInfoKind, FromArgs, Optionality};

    use super::*;
    use crate::cli::{container, service, Command, Swarmlet};

    fn norm(args: &[&str]) -> Result<Vec<String>, UsageError> {
        let args: Vec<String> = args.iter().map(|s| (*s).to_string()).collect();
        normalise(&args)
    }

    /// (path, values, switches, greedy) of every command, from the argh structs.
    type Row = (String, Vec<String>, Vec<String>, bool);

    fn rows_of(path: &str, cmd: &CommandInfoWithArgs, out: &mut Vec<Row>) {
        let (mut values, mut switches) = (Vec::new(), Vec::new());
        for f in cmd.flags {
            let list = match f.kind {
                FlagInfoKind::Option { .. } => &mut values,
                FlagInfoKind::Switch => &mut switches,
            };
            list.push(f.long.to_string());
            if let Some(c) = f.short {
                list.push(format!("-{c}"));
            }
        }
        let greedy = cmd
            .positionals
            .iter()
            .any(|p| p.optionality == Optionality::Greedy);
        out.push((path.to_string(), values, switches, greedy));
        for sub in &cmd.commands {
            rows_of(&sub_path(path, sub.name), &sub.command, out);
        }
    }

    #[test]
    fn the_table_matches_the_commands() {
        let mut want = Vec::new();
        rows_of("", &Swarmlet::get_args_info(), &mut want);
        let have: Vec<Row> = table::COMMANDS
            .iter()
            .map(|c| {
                let v = |l: &[&str]| l.iter().map(|s| (*s).to_string()).collect();
                (c.path.to_string(), v(c.values), v(c.switches), c.greedy)
            })
            .collect();
        if want != have {
            let mut src = String::from(
                "//! Generated by `cli::argv::tests::the_table_matches_the_commands` from the\n\
                 //! argh structs: run it with SWARMLET_WRITE_ARGV_TABLE=1 after changing a command.\n\n\
                 use super::Cmd;\n\npub static COMMANDS: &[Cmd] = &[\n",
            );
            for (path, values, switches, greedy) in &want {
                src.push_str(&format!(
                    "    Cmd {{ path: {path:?}, values: &{values:?}, switches: &{switches:?}, greedy: {greedy} }},\n"
                ));
            }
            src.push_str("];\n");
            if std::env::var_os("SWARMLET_WRITE_ARGV_TABLE").is_some() {
                let p = concat!(env!("CARGO_MANIFEST_DIR"), "/src/cli/argv_table.rs");
                std::fs::write(p, &src).unwrap();
                panic!("wrote {p}: run cargo fmt and the tests again");
            }
            panic!(
                "src/cli/argv_table.rs is out of date with the commands: run this test with \
                 SWARMLET_WRITE_ARGV_TABLE=1, then cargo fmt"
            );
        }
    }

    fn parse(args: &[&str]) -> Swarmlet {
        let n = norm(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let n: Vec<&str> = n.iter().map(String::as_str).collect();
        Swarmlet::from_args(&["swarmlet"], &n).unwrap_or_else(|e| panic!("{args:?}: {}", e.output))
    }

    fn run(args: &[&str]) -> container::RunCommand {
        match parse(args).command {
            Some(Command::Run(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn equals_forms_become_separate_values() {
        assert_eq!(
            norm(&["run", "--cpus=-1", "busybox"]).unwrap(),
            ["run", "--cpus", "-1", "busybox"]
        );
        let r = run(&[
            "run",
            "--name=web",
            "-e=A=1",
            "-eB=2",
            "-p=80:80",
            "-p8080:80",
            "--memory=64m",
            "-w=/",
            "--stop-timeout=-1",
            "busybox",
        ]);
        assert_eq!(r.name.as_deref(), Some("web"));
        assert_eq!(r.env, ["A=1", "B=2"]);
        assert_eq!(r.publish, ["80:80", "8080:80"]);
        assert_eq!(r.memory.as_deref(), Some("64m"));
        assert_eq!(r.workdir.as_deref(), Some("/"));
        assert_eq!(r.stop_timeout, Some(-1));
        assert_eq!(r.image, "busybox");
        // The global option and an empty value.
        let s = parse(&["--socket=/tmp/s", "ps", "--filter=", "-a"]);
        assert_eq!(s.socket.as_deref(), Some(std::path::Path::new("/tmp/s")));
        let Some(Command::Ps(ps)) = s.command else {
            panic!()
        };
        assert_eq!(ps.filter, [""]);
        assert!(ps.all);
        // The value of an option is the next word, whatever it looks like.
        let Some(Command::Logs(l)) = parse(&["logs", "--tail", "-1", "c1"]).command else {
            panic!()
        };
        assert_eq!(l.tail.as_deref(), Some("-1"));
        let Some(Command::Logs(l)) = parse(&["logs", "--tail=all", "-f", "c1"]).command else {
            panic!()
        };
        assert_eq!((l.tail.as_deref(), l.follow), (Some("all"), true));
    }

    #[test]
    fn switches_group_and_take_only_boolean_values() {
        let r = run(&["run", "-dit", "busybox"]);
        assert!(r.detach && r.interactive && r.tty);
        // A group may end in an option, with its value attached or next.
        let r = run(&["run", "-de", "A=1", "busybox"]);
        assert!(r.detach);
        assert_eq!(r.env, ["A=1"]);
        let r = run(&["run", "-deA=1", "busybox"]);
        assert_eq!(r.env, ["A=1"]);
        let r = run(&["run", "--rm=true", "--detach=false", "-i=0", "busybox"]);
        assert!(r.rm && !r.detach && !r.interactive);
        let err = norm(&["run", "--rm=yes", "busybox"]).unwrap_err();
        assert_eq!(
            err.0,
            "--rm: a switch takes no value (--rm, --rm=true or --rm=false)"
        );
        assert!(norm(&["run", "-d=maybe", "busybox"])
            .unwrap_err()
            .0
            .starts_with("-d:"));
        // A switch does not take the next word: the image stays the image.
        let r = run(&["run", "--rm", "busybox", "true"]);
        assert!(r.rm);
        assert_eq!(
            (r.image.as_str(), r.args.as_slice()),
            ("busybox", &["true".to_string()][..])
        );
    }

    #[test]
    fn the_containers_command_line_is_never_touched() {
        let r = run(&[
            "run",
            "--rm",
            "busybox",
            "sh",
            "-c",
            "echo --x=y",
            "--cpus=2",
            "-dit",
        ]);
        assert_eq!(r.args, ["sh", "-c", "echo --x=y", "--cpus=2", "-dit"]);
        assert!(r.cpus.is_none() && !r.detach);
        // Options end at the image, as Docker's do.
        let r = run(&["run", "busybox", "--rm"]);
        assert!(!r.rm);
        assert_eq!(r.args, ["--rm"]);
        // `--` ends them too; one written after the image is the container's.
        let r = run(&["run", "--", "busybox", "--x=y"]);
        assert_eq!(r.args, ["--x=y"]);
        let r = run(&["run", "busybox", "--", "ls"]);
        assert_eq!(r.args, ["--", "ls"]);
        let Some(Command::Exec(e)) =
            parse(&["exec", "-e=A=1", "c1", "ls", "--color=never"]).command
        else {
            panic!()
        };
        assert_eq!(
            (e.env.as_slice(), e.container.as_str()),
            (&["A=1".to_string()][..], "c1")
        );
        assert_eq!(e.command, ["ls", "--color=never"]);
        let Some(Command::Service(s)) = parse(&[
            "service",
            "create",
            "--mode=global",
            "--replicas=3",
            "--name=web",
            "img:1",
            "python",
            "--flag=1",
        ])
        .command
        else {
            panic!()
        };
        let service::ServiceSubcommand::Create(c) = s.command else {
            panic!()
        };
        assert_eq!(c.replicas.as_deref(), Some("3"));
        assert_eq!(c.name.as_deref(), Some("web"));
        assert_eq!(
            (c.image.as_str(), c.args.as_slice()),
            ("img:1", &["python".to_string(), "--flag=1".to_string()][..])
        );
    }

    #[test]
    fn unknown_words_and_internal_commands_pass_through() {
        assert_eq!(
            norm(&["node", "ls", "--bogus=1", "-z"]).unwrap(),
            ["node", "ls", "--bogus=1", "-z"]
        );
        let helper = [
            "runtime-helper",
            "exec",
            "0123",
            "--dir",
            "/d",
            "--env",
            "A=1",
            "--",
            "sh",
            "-c",
            "x=1",
        ];
        assert_eq!(norm(&helper).unwrap(), helper);
    }
}
