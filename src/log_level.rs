//! `log.level` changed while running: `serve` installs a setter over its subscriber's filter
//! (unless `RUST_LOG` set the level, which then stays in force), and a config reload calls it.

use std::sync::OnceLock;

/// Replaces the running filter with one parsed from a `log.level` value.
type Setter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static SETTER: OnceLock<Setter> = OnceLock::new();

/// Installs the setter (once; later calls are ignored).
pub fn install(setter: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static) {
    let _ = SETTER.set(Box::new(setter));
}

/// Applies `level`: `Ok(false)` when no setter is installed (`RUST_LOG` in force, or a test).
pub fn set(level: &str) -> Result<bool, String> {
    match SETTER.get() {
        Some(f) => f(level).map(|()| true),
        None => Ok(false),
    }
}
