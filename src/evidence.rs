//! What a pixel load's address says: the network catalogue (`tracking.networks`), the optional
//! MaxMind-format ASN and country databases (`tracking.asn_db`, `tracking.country_db`), loaded
//! at start and again on SIGHUP.
//!
//! The pixel listener looks the address up when the hit arrives, before `store.anonymize_ip`
//! truncates it (a /24 would hide the /27s of Apple's egress list), and journals the answer with
//! the hit; the classifier (`track::classify`) turns it into a verdict when the hit is indexed.
//! So a reload changes the verdict of the hits that arrive after it, never of stored ones.
//!
//! A reload that fails (a file gone, a bad line) keeps the catalogue in force and logs why.
//! Lookups never lock: the listener threads read the current [`Evidence`] through an
//! [`ArcSwap`], and a reload swaps in a whole new one.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use maxminddb::{PathElement, Reader};

use crate::config::{NetworkSource, TrackingConfig};
use crate::track::networks::{self, Catalogue, Network};

/// The shipped scanner list, built in so that the default needs no file next to the config.
const BUILTIN_SCANNERS: &str = include_str!("../contrib/networks/scanners.csv");

/// What one address is, as far as the evidence knows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Looked<'a> {
    /// The catalogue network containing it.
    pub network: Option<&'a Network>,
    /// The scanner vendor owning its autonomous system.
    pub scanner_asn: Option<&'static str>,
    /// Its country (ISO 3166-1 alpha-2, upper case), with a country database.
    pub country: Option<[u8; 2]>,
}

impl Looked<'_> {
    /// The label to journal with the hit: the network's, else the ASN vendor's.
    pub fn label(&self) -> &str {
        match (self.network, self.scanner_asn) {
            (Some(n), _) => &n.label,
            (None, Some(v)) => v,
            (None, None) => "",
        }
    }
}

/// The loaded catalogue and databases.
#[derive(Default)]
pub struct Evidence {
    /// Every catalogue file's networks.
    catalogue: Catalogue,
    /// `tracking.asn_db`.
    asn: Option<Reader<Vec<u8>>>,
    /// `tracking.country_db`.
    country: Option<Reader<Vec<u8>>>,
    /// One line for the log: what was loaded.
    summary: String,
}

impl std::fmt::Debug for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evidence")
            .field("summary", &self.summary)
            .finish()
    }
}

impl Evidence {
    /// Loads everything `[tracking]` names. Errors name the key and the file.
    pub fn load(t: &TrackingConfig) -> Result<Evidence, String> {
        let mut b = networks::Builder::default();
        let mut files = Vec::new();
        for (i, source) in t.networks.iter().enumerate() {
            let n = match source {
                NetworkSource::Builtin => b
                    .add_file(crate::config::BUILTIN_NETWORKS, BUILTIN_SCANNERS)
                    .map_err(|e| format!("tracking.networks[{i}]: {e}"))?,
                NetworkSource::File(path) => {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| format!("tracking.networks[{i}]: {}: {e}", path.display()))?;
                    b.add_file(&path.display().to_string(), &text)
                        .map_err(|e| format!("tracking.networks[{i}]: {e}"))?
                }
            };
            files.push(n);
        }
        let catalogue = b.build();
        let asn = open_db(
            t.asn_db.as_deref(),
            "tracking.asn_db",
            "autonomous_system_number",
        )?;
        let country = open_db(t.country_db.as_deref(), "tracking.country_db", "country")?;
        let total: usize = files.iter().sum();
        let summary = format!(
            "{total} network prefixes from {} catalogue file(s){}{}",
            files.len(),
            if asn.is_some() { ", ASN database" } else { "" },
            if country.is_some() {
                ", country database"
            } else {
                ""
            },
        );
        Ok(Evidence {
            catalogue,
            asn,
            country,
            summary,
        })
    }

    /// The built-in scanner list alone, as with `tracking.networks` absent and no databases.
    pub fn builtin() -> Evidence {
        let mut b = networks::Builder::default();
        let n = b
            .add_file(crate::config::BUILTIN_NETWORKS, BUILTIN_SCANNERS)
            .unwrap_or(0);
        Evidence {
            catalogue: b.build(),
            asn: None,
            country: None,
            summary: format!("{n} network prefixes from the built-in scanner list"),
        }
    }

    /// What was loaded, in one line.
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// Looks `ip` up in the catalogue and the databases. A database that cannot answer for an
    /// address (corrupt record) is treated as not knowing it.
    pub fn look_up(&self, ip: IpAddr) -> Looked<'_> {
        let ip = crate::net::canonical(ip);
        let asn = self.asn.as_ref().and_then(|r| {
            r.lookup(ip)
                .ok()?
                .decode_path::<u32>(&[PathElement::Key("autonomous_system_number")])
                .ok()
                .flatten()
        });
        let country = self.country.as_ref().and_then(|r| {
            let code = r
                .lookup(ip)
                .ok()?
                .decode_path::<&str>(&[PathElement::Key("country"), PathElement::Key("iso_code")])
                .ok()
                .flatten()?;
            let b: [u8; 2] = code.as_bytes().try_into().ok()?;
            b.iter()
                .all(u8::is_ascii_alphabetic)
                .then(|| b.map(|c| c.to_ascii_uppercase()))
        });
        Looked {
            network: self.catalogue.lookup(ip),
            scanner_asn: asn.and_then(networks::scanner_asn),
            country,
        }
    }
}

/// Opens a MaxMind-format database and checks that it has the field pixelrelay reads.
fn open_db(path: Option<&Path>, key: &str, field: &str) -> Result<Option<Reader<Vec<u8>>>, String> {
    let Some(path) = path else { return Ok(None) };
    let r = Reader::open_readfile(path).map_err(|e| {
        format!(
            "{key}: {}: not a MaxMind-format database: {e}",
            path.display()
        )
    })?;
    let kind = &r.metadata().database_type;
    let wanted = match field {
        "country" => kind.contains("Country") || kind.contains("City"),
        _ => kind.contains("ASN"),
    };
    if !wanted {
        return Err(format!(
            "{key}: {}: database type {kind:?} has no {field} field (expected a {} database)",
            path.display(),
            if field == "country" {
                "Country or City"
            } else {
                "ASN"
            }
        ));
    }
    Ok(Some(r))
}

/// The evidence in force, swapped whole on reload.
#[derive(Debug)]
pub struct EvidenceSource {
    current: ArcSwap<Evidence>,
}

impl EvidenceSource {
    /// Starts with `e`.
    pub fn new(e: Evidence) -> EvidenceSource {
        EvidenceSource {
            current: ArcSwap::from_pointee(e),
        }
    }

    /// No catalogue, no databases (tests, and `tracking.networks = []`).
    pub fn empty() -> EvidenceSource {
        EvidenceSource::new(Evidence::default())
    }

    /// The evidence in force; cheap, lock-free, for the duration of one request.
    pub fn current(&self) -> arc_swap::Guard<Arc<Evidence>> {
        self.current.load()
    }

    /// Loads `t`'s files again and puts them in force; on error keeps the old ones.
    pub fn reload(&self, t: &TrackingConfig) -> Result<(), String> {
        let e = Arc::new(Evidence::load(t)?);
        // In force before it is said to be: a reader of the log may act on the line at once.
        self.current.store(Arc::clone(&e));
        tracing::info!(event = "evidence_reload", loaded = %e.summary, "network catalogue reloaded");
        Ok(())
    }
}
