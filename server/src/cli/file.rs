//! The `--config` file: its keys are the `serve` flags' long names, turned into flags
//! for the settings the command line and the environment left at their defaults.

use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory};

use super::Cli;

/// The `serve` flags the config file `path` gives for settings the command line and
/// the environment left at their defaults.
pub(super) fn file_flags(
    serve: &clap::Command,
    given: &clap::ArgMatches,
    path: &Path,
) -> Result<Vec<OsString>, clap::Error> {
    let fail = |message: String| clap::Error::raw(clap::error::ErrorKind::InvalidValue, message);
    let text = std::fs::read_to_string(path).map_err(|e| {
        fail(format!(
            "cannot read the config file {}: {e}\n",
            path.display()
        ))
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        fail(format!(
            "the config file {} is not valid TOML: {e}",
            path.display()
        ))
    })?;
    let mut flags = Vec::new();
    for (key, value) in &table {
        let arg = serve
            .get_arguments()
            .find(|arg| arg.get_long() == Some(key.as_str()) && key != "config")
            .ok_or_else(|| {
                fail(format!(
                    "unknown key `{key}` in the config file {}; the keys are the names of \
                     `rollcall serve` flags: {}\n",
                    path.display(),
                    file_keys().join(", ")
                ))
            })?;
        let id = arg.get_id().as_str();
        if matches!(
            given.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let long = format!("--{key}");
        let wrong_type = |what: &str| {
            fail(format!(
                "`{key}` in the config file {} must be {what}\n",
                path.display()
            ))
        };
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            match value {
                toml::Value::Boolean(true) => flags.push(long.into()),
                toml::Value::Boolean(false) => {}
                _ => return Err(wrong_type("true or false")),
            }
            continue;
        }
        let scalar = |value: &toml::Value| match value {
            toml::Value::String(s) => Some(s.clone()),
            toml::Value::Integer(i) => Some(i.to_string()),
            toml::Value::Float(f) => Some(f.to_string()),
            toml::Value::Boolean(b) => Some(b.to_string()),
            _ => None,
        };
        let values = match value {
            toml::Value::Array(items) if matches!(arg.get_action(), ArgAction::Append) => items
                .iter()
                .map(scalar)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| wrong_type("a list of strings"))?,
            other => vec![scalar(other).ok_or_else(|| wrong_type("a string or a number"))?],
        };
        for value in values {
            // `--key=value` keeps a value that starts with a dash a value.
            flags.push(format!("{long}={value}").into());
        }
    }
    Ok(flags)
}

/// The keys a config file may hold: the long names of the `serve` flags (but
/// `config`).
pub fn file_keys() -> Vec<String> {
    let command = Cli::command();
    command
        .find_subcommand("serve")
        .map(|serve| {
            serve
                .get_arguments()
                .filter_map(clap::Arg::get_long)
                .filter(|long| *long != "config")
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}
