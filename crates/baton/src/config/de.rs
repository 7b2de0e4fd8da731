//! How each file value is read: by the same `cli::parse_*` function as
//! its flag and variable, so the error names the file, line and key.

use std::num::ParseIntError;
use std::str::FromStr;
use std::time::Duration;

use baton_supervisor::machine::{Readiness, StopSignal};
use serde::{Deserialize, Deserializer};

use crate::cli;

fn parsed<'de, D, T>(d: D, parse: fn(&str) -> Result<T, String>) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
{
    let text = String::deserialize(d)?;
    parse(&text).map(Some).map_err(serde::de::Error::custom)
}

pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    parsed(d, cli::parse_duration)
}

pub fn timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    parsed(d, cli::parse_timeout)
}

pub fn readiness<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Readiness>, D::Error> {
    parsed(d, cli::parse_readiness)
}

pub fn signal<'de, D: Deserializer<'de>>(d: D) -> Result<Option<StopSignal>, D::Error> {
    parsed(d, cli::parse_signal)
}

pub fn mode<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    parsed(d, cli::parse_mode)
}

pub fn name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    parsed(d, cli::parse_name)
}

/// A TOML integer of at least 1, checked as the flag's value is.
pub fn count<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = ParseIntError>,
{
    let number = i64::deserialize(d)?;
    cli::parse_count(&number.to_string())
        .map(Some)
        .map_err(serde::de::Error::custom)
}

pub fn forward_signal<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i32>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|name| cli::parse_forward_signal(name).map_err(serde::de::Error::custom))
        .collect()
}

pub fn listen<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let specs = Vec::<String>::deserialize(d)?;
    for spec in &specs {
        cli::parse_listener(spec).map_err(serde::de::Error::custom)?;
    }
    Ok(specs)
}
