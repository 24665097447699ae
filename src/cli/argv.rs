//! Docker's spellings of flags, rewritten into argh's before argh parses them.
//!
//! argh takes `--flag value` and `-f value` only. Docker's CLI (Go's pflag) also takes
//! `--flag=value`, `-f=value`, `-fvalue`, switches grouped as `-dit`, and `--switch=true`
//! or `--switch=false`; users type these all the time. [`normalise`] walks the command
//! line with argh's own description of every command ([`argh::ArgsInfo`], derived on the
//! same structs), so it knows which flags take a value, and rewrites those forms:
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

use argh::{CommandInfoWithArgs, FlagInfo, FlagInfoKind, Optionality};

use super::UsageError;

/// Commands whose arguments are written by swarmlet, not typed: passed through whole.
const VERBATIM: &[&str] = &["runtime-helper"];

/// Rewrites `args` (without the program name) for argh; `info` describes the top-level
/// command (`Swarmlet::get_args_info()`).
pub fn normalise(args: &[String], info: &CommandInfoWithArgs) -> Result<Vec<String>, UsageError> {
    let mut out = Vec::with_capacity(args.len() + 1);
    let mut cmd = info;
    let mut rest = args;
    // Whether the command ends with a command line of its own, and whether `--` was
    // written (so none is added).
    let mut greedy = has_greedy(cmd);
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
        } else if let Some(sub) = cmd.commands.iter().find(|c| c.name == tok.as_str()) {
            out.push(tok.clone());
            if VERBATIM.contains(&sub.name) {
                out.extend(rest.iter().cloned());
                return Ok(out);
            }
            cmd = &sub.command;
            greedy = has_greedy(cmd);
        } else {
            out.push(tok.clone());
            if greedy && !rest.is_empty() {
                // The first positional: what follows belongs to the container.
                out.push("--".into());
                out.extend(rest.iter().cloned());
                return Ok(out);
            }
        }
    }
    Ok(out)
}

fn has_greedy(cmd: &CommandInfoWithArgs) -> bool {
    cmd.positionals
        .iter()
        .any(|p| p.optionality == Optionality::Greedy)
}

fn takes_value(f: &FlagInfo<'_>) -> bool {
    matches!(f.kind, FlagInfoKind::Option { .. })
}

/// `--name`, `--name=value`.
fn long_flag(
    cmd: &CommandInfoWithArgs,
    long: &str,
    tok: &str,
    rest: &mut &[String],
    out: &mut Vec<String>,
) -> Result<(), UsageError> {
    let (name, value) = match long.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (long, None),
    };
    let Some(flag) = cmd
        .flags
        .iter()
        .find(|f| f.long.strip_prefix("--") == Some(name))
    else {
        out.push(tok.to_string()); // argh names it
        return Ok(());
    };
    if takes_value(flag) {
        out.push(flag.long.to_string());
        match value {
            Some(v) => out.push(v.to_string()),
            None => take_next(rest, out),
        }
    } else if switch_on(flag.long, value)? {
        out.push(flag.long.to_string());
    }
    Ok(())
}

/// `-f`, `-f=value`, `-fvalue`, `-abc`.
fn short_flags(
    cmd: &CommandInfoWithArgs,
    tok: &str,
    rest: &mut &[String],
    out: &mut Vec<String>,
) -> Result<(), UsageError> {
    let find = |c: char| cmd.flags.iter().find(|f| f.short == Some(c));
    let body = &tok[1..];
    // Every letter up to a value must be a known flag; otherwise the word goes to argh
    // as typed (a negative number as a positional, an unknown flag it will name).
    let mut expanded = Vec::new();
    for (i, c) in body.char_indices() {
        let Some(flag) = find(c) else {
            out.push(tok.to_string());
            return Ok(());
        };
        let after = &body[i + c.len_utf8()..];
        if takes_value(flag) {
            expanded.push(format!("-{c}"));
            match after.strip_prefix('=').unwrap_or(after) {
                "" if !after.starts_with('=') => take_next(rest, &mut expanded),
                v => expanded.push(v.to_string()),
            }
            out.extend(expanded);
            return Ok(());
        }
        if let Some(v) = after.strip_prefix('=') {
            if switch_on(&format!("-{c}"), Some(v))? {
                expanded.push(format!("-{c}"));
            }
            out.extend(expanded);
            return Ok(());
        }
        expanded.push(format!("-{c}"));
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
    use argh::{ArgsInfo, FromArgs};

    use super::*;
    use crate::cli::{container, service, Command, Swarmlet};

    fn norm(args: &[&str]) -> Result<Vec<String>, UsageError> {
        let args: Vec<String> = args.iter().map(|s| (*s).to_string()).collect();
        normalise(&args, &Swarmlet::get_args_info())
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
        assert_eq!(c.replicas, Some(3));
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
