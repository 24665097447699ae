//! The `swarmlet` binary: parse the command line, run one command, print its error, and
//! turn the outcome into an exit code (0 ok, 1 failed, 2 usage error or not built yet).

use std::process::ExitCode;

use argh::{EarlyExit, FromArgs};

use swarmlet::cli::{self, Global, Swarmlet, EXIT_USAGE};
use swarmlet::logging::Level;

fn main() -> ExitCode {
    let mut args = Vec::new();
    for arg in std::env::args_os().skip(1) {
        match arg.into_string() {
            Ok(arg) => args.push(arg),
            Err(arg) => {
                eprintln!(
                    "swarmlet: argument is not valid UTF-8: {}",
                    arg.to_string_lossy()
                );
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    // Docker's `--flag=value` and friends, in argh's spelling.
    let args = match cli::argv::normalise(&args) {
        Ok(args) => args,
        Err(e) => return usage_error(&e.0),
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let parsed = match Swarmlet::from_args(&["swarmlet"], &args) {
        Ok(parsed) => parsed,
        Err(EarlyExit {
            output,
            status: Ok(()),
        }) => {
            println!("{output}");
            return ExitCode::SUCCESS;
        }
        Err(EarlyExit {
            output,
            status: Err(()),
        }) => {
            return usage_error(output.trim_end());
        }
    };
    if parsed.version {
        println!("swarmlet {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let global = Global::from_args(&parsed);
    let Some(command) = parsed.command else {
        return usage_error("no command given");
    };

    match cli::run(&global, command) {
        Ok(code) => code,
        Err(err) => {
            // Through the logger: a daemon that stops on an error says so at error
            // level when journald reads its stderr.
            swarmlet::logging::emit(Level::Error, format_args!("{err:#}"));
            cli::exit_code(&err)
        }
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("swarmlet: {message}\nRun swarmlet --help for more information.");
    ExitCode::from(EXIT_USAGE)
}
