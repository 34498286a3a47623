//! Mapping repository namespaces to service categories.
//!
//! A TOML file names the categories and the namespaces that belong to each, exactly or by a
//! `prefix*` / `*suffix` pattern:
//!
//! ```toml
//! # namespaces not matched by any pattern go to `other` (omit it to give every unmatched
//! # namespace its own category)
//! fallback = "other"
//!
//! [categories]
//! web = ["web", "frontend-*"]
//! ml = ["ml", "*-models"]
//! iot = ["iot"]
//! ```
//!
//! Without a file every namespace is its own category — which is right for thaw's synthetic traces,
//! whose namespaces are the category names. At most [`MAX_CATEGORIES`] categories are created that
//! way; later namespaces share [`OVERFLOW_CATEGORY`], so per-category statistics stay bounded.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use thaw_policy::CategoryId;

/// Categories created automatically from namespaces, at most.
pub const MAX_CATEGORIES: usize = 64;
/// Where namespaces go once [`MAX_CATEGORIES`] is reached.
pub const OVERFLOW_CATEGORY: &str = "other";

#[derive(Debug, thiserror::Error)]
pub enum CategoryError {
    #[error("cannot read category config {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("category config is not valid toml: {0}")]
    Toml(String),
    #[error("category config: {0}")]
    Invalid(String),
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CategoryFile {
    #[serde(default)]
    fallback: Option<String>,
    #[serde(default)]
    categories: BTreeMap<String, Vec<String>>,
}

/// Namespace → category.
#[derive(Debug, Clone, Default)]
pub struct CategoryMap {
    names: Vec<String>,
    exact: FxHashMap<String, CategoryId>,
    prefixes: Vec<(String, CategoryId)>,
    suffixes: Vec<(String, CategoryId)>,
    fallback: Option<CategoryId>,
    /// Namespaces assigned automatically (no config, or a config without fallback).
    auto: FxHashMap<String, CategoryId>,
}

impl CategoryMap {
    /// Every namespace its own category.
    pub fn by_namespace() -> CategoryMap {
        CategoryMap::default()
    }

    pub fn from_toml(text: &str) -> Result<CategoryMap, CategoryError> {
        let f: CategoryFile =
            toml::from_str(text).map_err(|e| CategoryError::Toml(e.to_string()))?;
        let mut m = CategoryMap::default();
        for (name, patterns) in &f.categories {
            let id = m.intern(name)?;
            for p in patterns {
                if let Some(prefix) = p.strip_suffix('*') {
                    if prefix.contains('*') {
                        return Err(CategoryError::Invalid(format!(
                            "pattern {p:?}: only one leading or trailing '*' is supported"
                        )));
                    }
                    m.prefixes.push((prefix.to_string(), id));
                } else if let Some(suffix) = p.strip_prefix('*') {
                    if suffix.contains('*') {
                        return Err(CategoryError::Invalid(format!(
                            "pattern {p:?}: only one leading or trailing '*' is supported"
                        )));
                    }
                    m.suffixes.push((suffix.to_string(), id));
                } else if p.contains('*') {
                    return Err(CategoryError::Invalid(format!(
                        "pattern {p:?}: '*' may only start or end a pattern"
                    )));
                } else if let Some(prev) = m.exact.insert(p.clone(), id) {
                    if prev != id {
                        return Err(CategoryError::Invalid(format!(
                            "namespace {p:?} is listed under two categories"
                        )));
                    }
                }
            }
        }
        // Longer prefixes first, so `web-internal-*` wins over `web-*`.
        m.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        m.suffixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        if let Some(fb) = &f.fallback {
            m.fallback = Some(m.intern(fb)?);
        }
        Ok(m)
    }

    pub fn load(path: &std::path::Path) -> Result<CategoryMap, CategoryError> {
        let text = std::fs::read_to_string(path).map_err(|source| CategoryError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    fn intern(&mut self, name: &str) -> Result<CategoryId, CategoryError> {
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return Ok(i as CategoryId);
        }
        if self.names.len() >= usize::from(CategoryId::MAX) {
            return Err(CategoryError::Invalid("too many categories".into()));
        }
        self.names.push(name.to_string());
        Ok((self.names.len() - 1) as CategoryId)
    }

    /// The category of a namespace, creating one when the map assigns them automatically.
    pub fn category_of(&mut self, namespace: &str) -> CategoryId {
        if let Some(&id) = self.exact.get(namespace) {
            return id;
        }
        if let Some(&(_, id)) = self
            .prefixes
            .iter()
            .find(|(p, _)| namespace.starts_with(p.as_str()))
        {
            return id;
        }
        if let Some(&(_, id)) = self
            .suffixes
            .iter()
            .find(|(s, _)| namespace.ends_with(s.as_str()))
        {
            return id;
        }
        if let Some(id) = self.fallback {
            return id;
        }
        if let Some(&id) = self.auto.get(namespace) {
            return id;
        }
        let auto_count = self.auto.len();
        let id = if auto_count >= MAX_CATEGORIES {
            self.intern(OVERFLOW_CATEGORY)
                .expect("the overflow category fits")
        } else {
            self.intern(namespace).expect("bounded by MAX_CATEGORIES")
        };
        if auto_count < MAX_CATEGORIES {
            self.auto.insert(namespace.to_string(), id);
        }
        id
    }

    pub fn name(&self, id: CategoryId) -> &str {
        self.names
            .get(usize::from(id))
            .map(String::as_str)
            .unwrap_or("?")
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_patterns() {
        let mut m = CategoryMap::from_toml(
            "fallback = \"other\"\n[categories]\nweb = [\"web\", \"front-*\"]\nml = [\"*-models\", \"front-ml-*\"]\n",
        )
        .unwrap();
        let web = m.category_of("web");
        assert_eq!(m.name(web), "web");
        assert_eq!(m.category_of("front-a"), web);
        assert_eq!(
            {
                let id = m.category_of("front-ml-x");
                m.name(id).to_string()
            },
            "ml"
        );
        assert_eq!(
            {
                let id = m.category_of("big-models");
                m.name(id).to_string()
            },
            "ml"
        );
        assert_eq!(
            {
                let id = m.category_of("zzz");
                m.name(id).to_string()
            },
            "other"
        );
        assert!(CategoryMap::from_toml("[categories]\na = [\"x*y\"]").is_err());
        assert!(CategoryMap::from_toml("[categories]\na = [\"x\"]\nb = [\"x\"]").is_err());
        assert!(CategoryMap::from_toml("nonsense = 1").is_err());
    }

    #[test]
    fn automatic_categories_are_bounded() {
        let mut m = CategoryMap::by_namespace();
        let a = m.category_of("web");
        assert_eq!(m.category_of("web"), a);
        for i in 0..200 {
            m.category_of(&format!("ns{i}"));
        }
        assert!(m.names().len() <= MAX_CATEGORIES + 1);
        assert_eq!(
            {
                let id = m.category_of("ns199");
                m.name(id).to_string()
            },
            OVERFLOW_CATEGORY
        );
    }
}
