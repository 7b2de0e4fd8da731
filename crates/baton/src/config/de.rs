//! The file's values, checked as they are read by the same `cli::parse_*`
//! function as the flag's: the error then names the file, line and key.

use std::num::ParseIntError;
use std::str::FromStr;
use std::time::Duration;

use baton_supervisor::machine::{Readiness, StopSignal};
use serde::{Deserialize, Deserializer};

use crate::cli;

pub(super) fn parsed<'de, D, T>(
    d: D,
    parse: fn(&str) -> Result<T, String>,
) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
{
    let text = String::deserialize(d)?;
    parse(&text).map(Some).map_err(serde::de::Error::custom)
}

pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    parsed(d, cli::parse_duration)
}

pub(super) fn timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    parsed(d, cli::parse_timeout)
}

pub(super) fn readiness<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Readiness>, D::Error> {
    parsed(d, cli::parse_readiness)
}

pub(super) fn signal<'de, D: Deserializer<'de>>(d: D) -> Result<Option<StopSignal>, D::Error> {
    parsed(d, cli::parse_signal)
}

pub(super) fn mode<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    parsed(d, cli::parse_mode)
}

pub(super) fn name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    parsed(d, cli::parse_name)
}

/// A TOML integer of at least 1, checked as the flag's value is.
pub(super) fn count<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = ParseIntError>,
{
    let number = i64::deserialize(d)?;
    cli::parse_count(&number.to_string())
        .map(Some)
        .map_err(serde::de::Error::custom)
}

pub(super) fn forward_signal<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i32>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|name| cli::parse_forward_signal(name).map_err(serde::de::Error::custom))
        .collect()
}

pub(super) fn listen<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let specs = Vec::<String>::deserialize(d)?;
    for spec in &specs {
        cli::parse_listener(spec).map_err(serde::de::Error::custom)?;
    }
    Ok(specs)
}
