//! The named-workers file, and what a command line's worker (a name or an address) resolves to.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use anyhow::Context;
use exsyst_worker::killswitch::Address;
use serde::Deserialize;

/// The environment variable naming the config file, as `--config` does.
pub(crate) const CONFIG_ENV: &str = "EXSYST_WORKER_CONFIG";

/// The file as written: defaults, then one table per worker.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    admin_cookie_file: Option<PathBuf>,
    kill_switch: Option<PathBuf>,
    #[serde(default)]
    workers: BTreeMap<String, Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    address: String,
    program: Option<PathBuf>,
    implementation: Option<String>,
    admin_cookie_file: Option<PathBuf>,
    kill_switch: Option<PathBuf>,
    #[serde(default)]
    eager: bool,
}

/// The named workers, sorted by name, with the file's defaults applied and relative paths
/// made relative to the file's directory.
#[derive(Debug)]
pub(crate) struct Config {
    /// Where it was read from, or would have been.
    pub path: PathBuf,
    /// Whether a file was there.
    pub found: bool,
    /// The file's default kill switch.
    pub kill_switch: Option<PathBuf>,
    pub workers: Vec<Target>,
}

/// A worker a command acts on: a named one from the config, or an address given on the
/// command line (which takes its settings from the config when a named worker has that
/// address).
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub name: Option<String>,
    /// In canonical form.
    pub address: String,
    pub program: Option<PathBuf>,
    pub implementation: Option<String>,
    pub admin_cookie_file: Option<PathBuf>,
    pub kill_switch: Option<PathBuf>,
    pub eager: bool,
}

impl fmt::Display for Target {
    /// The address, as errors and reports name a worker.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.address)
    }
}

/// `$XDG_CONFIG_HOME/exsyst-worker/workers.toml`, or `~/.config/exsyst-worker/workers.toml`.
pub(crate) fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".config")))?;
    Some(base.join("exsyst-worker").join("workers.toml"))
}

impl Config {
    /// Reads `given` (from `--config` or `$EXSYST_WORKER_CONFIG`), which must exist, or else
    /// the default path, which may not.
    pub(crate) fn load(given: Option<&Path>) -> anyhow::Result<Config> {
        let (path, required) = match given {
            Some(path) => (path.to_owned(), true),
            None => match default_path() {
                Some(path) => (path, false),
                None => {
                    return Ok(Config {
                        path: PathBuf::from("$XDG_CONFIG_HOME/exsyst-worker/workers.toml"),
                        found: false,
                        kill_switch: None,
                        workers: Vec::new(),
                    });
                }
            },
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Config {
                    path,
                    found: false,
                    kill_switch: None,
                    workers: Vec::new(),
                });
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read config {}", path.display()));
            }
        };
        Self::parse(&text, path)
    }

    fn parse(text: &str, path: PathBuf) -> anyhow::Result<Config> {
        let file: File =
            toml::from_str(text).with_context(|| format!("invalid config {}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("")).to_owned();
        let at = |p: &PathBuf| dir.join(p);
        let mut workers = Vec::with_capacity(file.workers.len());
        for (name, entry) in file.workers {
            let address = Address::parse(&entry.address)
                .with_context(|| format!("invalid config {}: worker {name:?}", path.display()))?;
            workers.push(Target {
                name: Some(name),
                address: address.to_string(),
                program: entry.program.as_ref().map(at),
                implementation: entry.implementation,
                admin_cookie_file: entry
                    .admin_cookie_file
                    .as_ref()
                    .or(file.admin_cookie_file.as_ref())
                    .map(at),
                kill_switch: entry
                    .kill_switch
                    .as_ref()
                    .or(file.kill_switch.as_ref())
                    .map(at),
                eager: entry.eager,
            });
        }
        Ok(Config {
            found: true,
            kill_switch: file.kill_switch.as_ref().map(at),
            path,
            workers,
        })
    }

    /// The worker a command line names: an address (anything with `://`), or the name of a
    /// worker of the config.
    pub(crate) fn target(&self, given: &str) -> Result<Target, String> {
        if given.contains("://") {
            let address = Address::parse(given).map_err(|e| e.to_string())?;
            let address = address.to_string();
            return Ok(match self.workers.iter().find(|w| w.address == address) {
                Some(named) => named.clone(),
                None => Target {
                    name: None,
                    address,
                    program: None,
                    implementation: None,
                    admin_cookie_file: None,
                    kill_switch: self.kill_switch.clone(),
                    eager: false,
                },
            });
        }
        self.workers
            .iter()
            .find(|w| w.name.as_deref() == Some(given))
            .cloned()
            .ok_or_else(|| {
                if self.found {
                    format!(
                        "no worker named {given:?} in {} (an address is unix:///path or \
                         tcp://host:port)",
                        self.path.display()
                    )
                } else {
                    format!(
                        "{given:?} is not an address (unix:///path or tcp://host:port), and no \
                         config names workers ({} does not exist)",
                        self.path.display()
                    )
                }
            })
    }

    /// The named workers, or an error when there is no config to name them.
    pub(crate) fn named(&self) -> anyhow::Result<&[Target]> {
        if !self.found {
            anyhow::bail!(
                "no config of named workers: {} does not exist (give --config PATH)",
                self.path.display()
            );
        }
        Ok(&self.workers)
    }

    /// Every kill switch file the config names, without repeats, in order.
    pub(crate) fn kill_switches(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = Vec::new();
        let all = self
            .kill_switch
            .iter()
            .chain(self.workers.iter().filter_map(|w| w.kill_switch.as_ref()));
        for file in all {
            if !files.contains(file) {
                files.push(file.clone());
            }
        }
        files
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
admin_cookie_file = "secrets/cookie"
kill_switch = "/var/lib/app/kill-switch.json"

[workers.indexer]
address = "unix:///run/app//indexer.sock"
program = "/usr/bin/app"
implementation = "indexer"
eager = true

[workers.mailer]
address = "tcp://mail.example:7000"
admin_cookie_file = "/etc/app/mailer-cookie"
kill_switch = "mailer-ks.json"
"#;

    fn sample() -> Config {
        Config::parse(SAMPLE, PathBuf::from("/etc/app/workers.toml")).unwrap()
    }

    #[test]
    fn defaults_apply_and_relative_paths_follow_the_file() {
        let config = sample();
        let names: Vec<_> = config
            .workers
            .iter()
            .map(|w| w.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["indexer", "mailer"]);
        let indexer = &config.workers[0];
        assert_eq!(indexer.address, "unix:///run/app/indexer.sock");
        assert_eq!(
            indexer.admin_cookie_file.as_deref(),
            Some(Path::new("/etc/app/secrets/cookie"))
        );
        assert!(indexer.eager);
        let mailer = &config.workers[1];
        assert_eq!(
            mailer.kill_switch.as_deref(),
            Some(Path::new("/etc/app/mailer-ks.json"))
        );
        assert!(!mailer.eager);
        assert_eq!(
            config.kill_switches(),
            [
                PathBuf::from("/var/lib/app/kill-switch.json"),
                PathBuf::from("/etc/app/mailer-ks.json")
            ]
        );
    }

    #[test]
    fn targets_are_names_or_addresses() {
        let config = sample();
        assert_eq!(
            config.target("mailer").unwrap().address,
            "tcp://mail.example:7000"
        );
        let by_address = config.target("unix:///run/app/./indexer.sock").unwrap();
        assert_eq!(by_address.name.as_deref(), Some("indexer"));
        let other = config.target("unix:///elsewhere.sock").unwrap();
        assert_eq!(other.name, None);
        assert_eq!(
            other.kill_switch.as_deref(),
            Some(Path::new("/var/lib/app/kill-switch.json"))
        );
        assert_eq!(
            config.target("nobody").unwrap_err(),
            "no worker named \"nobody\" in /etc/app/workers.toml (an address is unix:///path or \
             tcp://host:port)"
        );
    }

    #[test]
    fn typos_and_bad_addresses_are_refused_naming_the_place() {
        let typo = Config::parse("[workers.a]\naddres = \"unix:///a\"\n", "/c.toml".into());
        assert!(format!("{:#}", typo.unwrap_err()).starts_with("invalid config /c.toml: "));
        let bad = Config::parse("[workers.a]\naddress = \"http://a\"\n", "/c.toml".into());
        assert!(
            format!("{:#}", bad.unwrap_err())
                .starts_with("invalid config /c.toml: worker \"a\": invalid shared worker address")
        );
    }
}
