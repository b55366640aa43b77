//! Reading `relay.toml`'s tree: sections that remember which keys were used (the rest are
//! errors), typed getters that collect every error with its key instead of stopping at the
//! first.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::net::Cidr;

/// Walks the TOML tree, collecting errors instead of stopping at the first.
pub(super) struct Reader<'a> {
    pub(super) root: &'a toml::Table,
    pub(super) base: &'a Path,
    pub(super) errors: &'a mut Vec<String>,
}

/// One `[section]` being read; remembers which keys were used so that the rest are reported.
pub(super) struct Section<'r, 'a> {
    pub(super) name: String,
    pub(super) table: Option<&'a toml::Table>,
    pub(super) used: BTreeSet<&'static str>,
    pub(super) r: &'r mut Reader<'a>,
}

impl<'a> Reader<'a> {
    /// `[parent.name]`, reported as `label`.
    pub(super) fn subsection<'r>(
        &'r mut self,
        parent: &str,
        name: &str,
        label: &'static str,
    ) -> Section<'r, 'a> {
        let table = match self.root.get(parent).and_then(|p| p.get(name)) {
            None => None,
            Some(toml::Value::Table(t)) => Some(t),
            Some(_) => {
                self.errors
                    .push(format!("{label}: must be a table ([{label}])"));
                None
            }
        };
        Section {
            name: label.to_string(),
            table,
            used: BTreeSet::new(),
            r: self,
        }
    }

    pub(super) fn section<'r>(&'r mut self, name: &'static str) -> Section<'r, 'a> {
        let table = match self.root.get(name) {
            None => None,
            Some(toml::Value::Table(t)) => Some(t),
            Some(_) => {
                self.errors
                    .push(format!("{name}: must be a table ([{name}])"));
                None
            }
        };
        Section {
            name: name.to_string(),
            table,
            used: BTreeSet::new(),
            r: self,
        }
    }

    /// One table of an array of tables (`[[name]]`), reported as `label` (`webhooks[0]`).
    pub(super) fn item<'r>(&'r mut self, label: String, table: &'a toml::Table) -> Section<'r, 'a> {
        Section {
            name: label,
            table: Some(table),
            used: BTreeSet::new(),
            r: self,
        }
    }
}

impl Section<'_, '_> {
    pub(super) fn err(&mut self, key: &str, msg: impl std::fmt::Display) {
        self.r.errors.push(format!("{}.{key}: {msg}", self.name));
    }

    pub(super) fn raw(&mut self, key: &'static str) -> Option<toml::Value> {
        self.used.insert(key);
        self.table.and_then(|t| t.get(key)).cloned()
    }

    /// A key of any deserialisable type, or `default` (with an error) when it is wrong.
    pub(super) fn get<T: DeserializeOwned>(&mut self, key: &'static str, default: T) -> T {
        match self.raw(key) {
            None => default,
            Some(v) => match v.try_into::<T>() {
                Ok(t) => t,
                Err(e) => {
                    self.err(key, e.message().trim());
                    default
                }
            },
        }
    }

    pub(super) fn opt<T: DeserializeOwned>(&mut self, key: &'static str) -> Option<T> {
        match self.raw(key) {
            None => None,
            Some(v) => match v.try_into::<T>() {
                Ok(t) => Some(t),
                Err(e) => {
                    self.err(key, e.message().trim());
                    None
                }
            },
        }
    }

    pub(super) fn positive(&mut self, key: &'static str, default: u64) -> u64 {
        let v = self.get::<i64>(key, default as i64);
        if v <= 0 {
            self.err(key, format!("must be a positive number, not {v}"));
            return default;
        }
        v as u64
    }

    /// A whole number from 0 to `max`.
    pub(super) fn count(&mut self, key: &'static str, default: u64, max: u64) -> u64 {
        let v = self.get::<i64>(key, default as i64);
        if v < 0 || v as u64 > max {
            self.err(key, format!("must be a number from 0 to {max}, not {v}"));
            return default;
        }
        v as u64
    }

    pub(super) fn seconds(&mut self, key: &'static str, default: u64) -> Duration {
        Duration::from_secs(self.positive(key, default))
    }

    pub(super) fn millis(&mut self, key: &'static str, default: u64) -> Duration {
        Duration::from_millis(self.positive(key, default))
    }

    pub(super) fn addr(&mut self, key: &'static str, default: &str) -> SocketAddr {
        let s = self.get::<String>(key, default.to_string());
        parse_addr(&s).unwrap_or_else(|e| {
            self.err(key, e);
            fallback_addr()
        })
    }

    pub(super) fn addrs(&mut self, key: &'static str, default: &[&str]) -> Vec<SocketAddr> {
        let list = self.get::<Vec<String>>(key, default.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        for (i, s) in list.iter().enumerate() {
            match parse_addr(s) {
                Ok(a) => out.push(a),
                Err(e) => self.r.errors.push(format!("{}.{key}[{i}]: {e}", self.name)),
            }
        }
        // An empty list is allowed: `smtp.listen = []` turns SMTP off on this node.
        out
    }

    pub(super) fn cidrs(&mut self, key: &'static str, default: &[&str]) -> Vec<Cidr> {
        let list = self.get::<Vec<String>>(key, default.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        for (i, s) in list.iter().enumerate() {
            match s.parse::<Cidr>() {
                Ok(c) => out.push(c),
                Err(e) => self.r.errors.push(format!("{}.{key}[{i}]: {e}", self.name)),
            }
        }
        out
    }

    pub(super) fn path(&mut self, key: &'static str, default: &str) -> PathBuf {
        let s = self.get::<String>(key, default.to_string());
        if s.is_empty() {
            self.err(key, "must not be empty");
        }
        self.r.base.join(s)
    }

    pub(super) fn opt_path(&mut self, key: &'static str) -> Option<PathBuf> {
        self.opt::<String>(key).map(|s| self.r.base.join(s))
    }

    /// An optional path where `""` also means none.
    pub(super) fn opt_path_or_none(&mut self, key: &'static str) -> Option<PathBuf> {
        self.opt::<String>(key)
            .filter(|s| !s.is_empty())
            .map(|s| self.r.base.join(s))
    }

    pub(super) fn choice<T: Copy>(
        &mut self,
        key: &'static str,
        default: T,
        options: &[(&str, T)],
    ) -> T {
        let Some(s) = self.opt::<String>(key) else {
            return default;
        };
        match options.iter().find(|(n, _)| *n == s) {
            Some((_, v)) => *v,
            None => {
                let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
                self.err(key, format!("\"{s}\" is not one of {}", names.join(" | ")));
                default
            }
        }
    }

    pub(super) fn domains(&mut self, key: &'static str) -> Vec<String> {
        let list = self.get::<Vec<String>>(key, Vec::new());
        let mut out = Vec::new();
        for (i, d) in list.iter().enumerate() {
            let d = d.trim().trim_start_matches('@').to_ascii_lowercase();
            if d.is_empty() || d.contains(char::is_whitespace) || d.contains('@') {
                self.r
                    .errors
                    .push(format!("{}.{key}[{i}]: \"{d}\" is not a domain", self.name));
            } else {
                out.push(d);
            }
        }
        out
    }

    /// Reports keys present in the file that nobody read.
    pub(super) fn finish(self) {
        let Some(t) = self.table else { return };
        for key in t.keys() {
            if !self.used.contains(key.as_str()) {
                self.r
                    .errors
                    .push(format!("{}.{key}: unknown key", self.name));
            }
        }
    }
}

pub(super) fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>().map_err(|_| {
        format!(
            "invalid socket address \"{s}\" (expected IP:PORT, e.g. 127.0.0.1:2525 or [::1]:2525)"
        )
    })
}

pub(super) fn fallback_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}
