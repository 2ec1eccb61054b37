use std::{collections::BTreeSet, path::Path};

use serde_json::{Map, Value};

use crate::{Error, canonical_address};

const GLOBAL: &str = "global";
const ADDRESSES: &str = "addresses";

/// The decoded kill switch file.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct State {
    pub(crate) global: bool,
    /// Canonical forms, plus verbatim any entry that has none (see `parse`).
    pub(crate) addresses: BTreeSet<String>,
    /// Keys this version does not know, kept so that a rewrite never drops what another
    /// version (or the PHP original, or an operator) put there.
    extra: Map<String, Value>,
}

impl State {
    pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<State, Error> {
        let value: Value = serde_json::from_slice(bytes).map_err(|source| Error::Corrupt {
            path: path.to_owned(),
            source,
        })?;
        let shape = |what: &str| Error::Shape {
            path: path.to_owned(),
            what: what.to_owned(),
        };
        let Value::Object(mut extra) = value else {
            return Err(shape("the top level is not an object"));
        };
        // Missing keys mean their defaults, as in the PHP original; a key of the wrong type is
        // refused rather than guessed at, so that a damaged file fails closed.
        let global = match extra.shift_remove(GLOBAL) {
            None => false,
            Some(Value::Bool(global)) => global,
            Some(_) => return Err(shape("`global` is not a boolean")),
        };
        let addresses = match extra.shift_remove(ADDRESSES) {
            None => BTreeSet::new(),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|item| match item {
                    // An entry with no canonical form (written by hand or by another
                    // implementation) can never equal a canonical address, so keeping it
                    // verbatim is harmless and loses nothing.
                    Value::String(s) => Ok(canonical_address(&s).unwrap_or(s)),
                    _ => Err(shape("`addresses` contains an item that is not a string")),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(shape("`addresses` is not an array")),
        };
        Ok(State {
            global,
            addresses,
            extra,
        })
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut map = Map::with_capacity(self.extra.len() + 2);
        map.insert(GLOBAL.to_owned(), Value::Bool(self.global));
        map.insert(
            ADDRESSES.to_owned(),
            Value::Array(self.addresses.iter().cloned().map(Value::String).collect()),
        );
        map.extend(self.extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut bytes =
            serde_json::to_vec_pretty(&Value::Object(map)).expect("a json value always serializes");
        bytes.push(b'\n');
        bytes
    }
}
