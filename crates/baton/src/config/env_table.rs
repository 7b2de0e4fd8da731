//! The `[env]` table of the config file: variables for every worker.
//!
//! Each name is checked where it is read, so the error names its line: not
//! empty, no `=` or NUL, not one of the variables baton sets itself
//! ([`PRIVATE_VARIABLES`]). A key that is one of baton's own settings was
//! almost surely written below `[env]` by mistake: TOML puts every key
//! after a table header into that table, so it would silently become an
//! environment variable.

use std::collections::BTreeMap;

use baton_supervisor::spawn::PRIVATE_VARIABLES;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// The keys of the file outside `[env]`, as `deny_unknown_fields` knows
/// them (a test keeps the two lists equal).
pub const FILE_KEYS: [&str; 27] = [
    "command",
    "workdir",
    "env",
    "listen",
    "backlog",
    "unix_mode",
    "ready",
    "ready_timeout",
    "stop_signal",
    "drain_timeout",
    "max_draining",
    "watchdog",
    "start_limit",
    "name",
    "control",
    "control_mode",
    "pid_file",
    "metrics",
    "watch",
    "ignore",
    "ext",
    "debounce",
    "build",
    "min_interval",
    "forward_signal",
    "user",
    "group",
];

/// Why an `[env]` name cannot be used, if it cannot.
pub fn check_name(name: &str) -> Result<(), String> {
    if FILE_KEYS.contains(&name) {
        return Err(format!(
            "`{name}` is a baton setting, but it is written below [env], so TOML reads it as an environment variable: move it above the [env] table"
        ));
    }
    if name.is_empty() {
        return Err("an environment variable needs a name".to_owned());
    }
    if name.contains('=') || name.contains('\0') {
        return Err("an environment variable's name cannot contain '=' or a NUL byte".to_owned());
    }
    if PRIVATE_VARIABLES.contains(&name) {
        return Err(format!(
            "{name} is set by baton for each worker and cannot be set in [env] (baton sets: {})",
            PRIVATE_VARIABLES.join(", ")
        ));
    }
    Ok(())
}

/// A checked variable name.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Name(String);

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        check_name(&name).map_err(D::Error::custom)?;
        Ok(Name(name))
    }
}

/// A checked value: no NUL byte, which no environment can hold.
struct Value(String);

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = String::deserialize(d)?;
        if value.contains('\0') {
            return Err(D::Error::custom(
                "an environment variable's value cannot contain a NUL byte",
            ));
        }
        Ok(Value(value))
    }
}

/// `deserialize_with` for the `[env]` table.
pub fn table<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let table = BTreeMap::<Name, Value>::deserialize(d)?;
    Ok(table.into_iter().map(|(k, v)| (k.0, v.0)).collect())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn error(text: &str) -> String {
        super::super::parse(Path::new("baton.toml"), text).unwrap_err()
    }

    #[test]
    fn the_file_keys_are_the_ones_the_file_takes() {
        // serde lists the fields it expects when it meets an unknown one.
        let err = error("nope = 1\n");
        let (_, expected) = err.split_once("expected one of ").unwrap();
        let listed: Vec<&str> = expected.split(", ").map(|k| k.trim_matches('`')).collect();
        assert_eq!(listed, FILE_KEYS);
    }

    #[test]
    fn a_setting_below_env_names_itself_and_says_where_it_belongs() {
        let err = error("listen = [\":0\"]\n[env]\nA = \"1\"\nready_timeout = \"5s\"\n");
        assert!(
            err.starts_with(
                "baton.toml: line 4, key `ready_timeout`: `ready_timeout` is a baton setting"
            ),
            "{err}"
        );
        assert!(err.contains("move it above the [env] table"), "{err}");
    }

    #[test]
    fn reserved_empty_and_malformed_names_are_refused_with_their_line() {
        for (text, says) in [
            ("[env]\nLISTEN_FDS = \"3\"\n", "LISTEN_FDS is set by baton"),
            (
                "[env]\nNOTIFY_SOCKET = \"/x\"\n",
                "NOTIFY_SOCKET is set by baton",
            ),
            (
                "[env]\nBATON_GENERATION = \"1\"\n",
                "BATON_GENERATION is set by baton",
            ),
            ("[env]\n\"\" = \"x\"\n", "needs a name"),
            ("[env]\n\"A=B\" = \"x\"\n", "cannot contain '='"),
            ("[env]\n\"A\\u0000\" = \"x\"\n", "cannot contain '='"),
            ("[env]\nA = \"x\\u0000y\"\n", "value cannot contain a NUL"),
        ] {
            let err = error(text);
            assert!(err.starts_with("baton.toml: line 2"), "{text}: {err}");
            assert!(err.contains(says), "{text}: {err}");
        }
        let fine = super::super::parse(Path::new("b.toml"), "[env]\nPATH_EXTRA = \"1\"\n").unwrap();
        assert_eq!(fine.env.get("PATH_EXTRA").map(String::as_str), Some("1"));
    }
}
