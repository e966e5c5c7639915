//! Configuration: envoyproxy/ratelimit's YAML files (plus sluice's
//! optional extensions) loaded into a [`RuleSet`], validated with every
//! error reported, and watched for changes.
//!
//! May depend on: `core`. The watcher uses notify and tokio; nothing here
//! knows of gRPC, HTTP or the stores.

mod authz;
mod parse;
pub mod watch;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::core::rules::{Domain, RuleSet};
use crate::core::stats::StatsRegistry;

/// One problem in one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// Where in the file's tree, e.g. `descriptors[0](key=path).rate_limit.unit`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file, self.path, self.message)
    }
}

/// A configuration that cannot be loaded: every problem found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct LoadConfigError {
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for LoadConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} configuration error(s)", self.errors.len())?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// How to load.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// Several files may name the same domain; their trees are merged.
    pub merge_domains: bool,
}

/// The YAML files `path` names: itself if a file; else the `.yaml`/`.yml`
/// files directly inside it (one level, following symlinks), skipping
/// names that start with `.` (Kubernetes ConfigMap internals), by name.
///
/// # Errors
/// When `path` or the directory cannot be read.
pub fn config_files(path: &Path) -> Result<Vec<PathBuf>, LoadConfigError> {
    let io_err = |p: &Path, e: std::io::Error| LoadConfigError {
        errors: vec![ConfigError {
            file: p.display().to_string(),
            path: "(file)".into(),
            message: format!("cannot read: {e}"),
        }],
    };
    let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| io_err(path, e))? {
        let entry = entry.map_err(|e| io_err(path, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        let p = entry.path();
        // Follows symlinks: ConfigMap files are links into `..data/`.
        if std::fs::metadata(&p).map(|m| m.is_file()).unwrap_or(false) {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// A fingerprint of the configuration under `path`: file names and
/// contents. The watcher reloads only when it changes.
pub fn fingerprint(path: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    if let Ok(files) = config_files(path) {
        for f in files {
            f.hash(&mut h);
            std::fs::read(&f).ok().hash(&mut h);
        }
    }
    h.finish()
}

/// Loads and validates every file under `path`.
///
/// # Errors
/// Every problem found in every file, and across files (duplicate
/// domains), at once.
pub fn load(
    path: &Path,
    options: LoadOptions,
    stats: &StatsRegistry,
) -> Result<RuleSet, LoadConfigError> {
    let files = config_files(path)?;
    let mut sources = Vec::with_capacity(files.len());
    let mut errors = Vec::new();
    for f in files {
        match std::fs::read_to_string(&f) {
            Ok(text) => sources.push((f.display().to_string(), text)),
            Err(e) => errors.push(ConfigError {
                file: f.display().to_string(),
                path: "(file)".into(),
                message: format!("cannot read: {e}"),
            }),
        }
    }
    match load_sources(&sources, options, stats) {
        Ok(rules) if errors.is_empty() => Ok(rules),
        Ok(_) => Err(LoadConfigError { errors }),
        Err(mut e) => {
            errors.append(&mut e.errors);
            Err(LoadConfigError { errors })
        }
    }
}

/// Loads configuration from `(file name, text)` pairs.
///
/// # Errors
/// Every problem found, as in [`load`].
pub fn load_sources(
    sources: &[(String, String)],
    options: LoadOptions,
    stats: &StatsRegistry,
) -> Result<RuleSet, LoadConfigError> {
    let mut errors = Vec::new();
    let mut domains: HashMap<String, (String, Domain)> = HashMap::new();
    // Domain name → the first file that defined it.
    let mut seen: HashMap<Arc<str>, String> = HashMap::new();
    for (file, text) in sources {
        let (name, parsed) = parse::parse_domain(file, text, stats);
        if let Some(name) = &name {
            if let Some(first_file) = seen.get(name) {
                if !options.merge_domains {
                    errors.push(ConfigError {
                        file: file.clone(),
                        path: "domain".into(),
                        message: format!(
                            "domain '{name}' is already defined in {first_file} (use --merge-domains to merge them)"
                        ),
                    });
                    // The file's own problems are still reported.
                    if let Err(mut e) = parsed {
                        errors.append(&mut e);
                    }
                    continue;
                }
            } else {
                seen.insert(name.clone(), file.clone());
            }
        }
        match parsed {
            Err(mut e) => errors.append(&mut e),
            Ok(domain) => match domains.get_mut(&*domain.name) {
                None => {
                    domains.insert(domain.name.to_string(), (file.clone(), domain));
                }
                Some((first_file, existing)) => {
                    match (&existing.api_key, &domain.api_key) {
                        (Some(a), Some(b)) if a != b => errors.push(ConfigError {
                            file: file.clone(),
                            path: "api_key".into(),
                            message: format!(
                                "differs from the api_key of domain '{}' in {first_file}",
                                existing.name
                            ),
                        }),
                        (None, Some(b)) => existing.api_key = Some(b.clone()),
                        _ => {}
                    }
                    match (&existing.authz, &domain.authz) {
                        (Some(a), Some(b)) if a != b => errors.push(ConfigError {
                            file: file.clone(),
                            path: "authz".into(),
                            message: format!(
                                "differs from the authz of domain '{}' in {first_file}",
                                existing.name
                            ),
                        }),
                        (None, Some(b)) => existing.authz = Some(b.clone()),
                        _ => {}
                    }
                    if let Err(dups) = existing.root.absorb(domain.root) {
                        errors.extend(dups.into_iter().map(|d| ConfigError {
                            file: file.clone(),
                            path: format!("domain {}", existing.name),
                            message: format!("{d} (merging with {first_file})"),
                        }));
                    }
                }
            },
        }
    }
    if !errors.is_empty() {
        return Err(LoadConfigError { errors });
    }
    let rules = RuleSet::new(domains.into_values().map(|(_, d)| d));
    let keep: HashSet<&str> = rules.rules().iter().map(|r| &*r.stats_key).collect();
    stats.retain(&keep);
    Ok(rules)
}

#[cfg(test)]
mod tests;
