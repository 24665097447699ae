//! `--filter KEY=VALUE`, as Docker reads it for listings: values given for one key are
//! alternatives, different keys must all hold. Each command names its keys and checks
//! their values; a bad filter is a usage error naming it, before anything is asked.

use std::collections::BTreeMap;

use super::UsageError;

pub struct Filters<'a>(BTreeMap<&'a str, Vec<&'a str>>);

impl<'a> Filters<'a> {
    /// Parses `filters`: each key one of `keys`, each value passed by `check` (which
    /// says what is wrong with it).
    pub fn parse(
        filters: &'a [String],
        keys: &[&str],
        check: impl Fn(&str, &str) -> Result<(), String>,
    ) -> Result<Filters<'a>, UsageError> {
        let mut by_key: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for f in filters {
            let (k, v) = f
                .split_once('=')
                .ok_or_else(|| UsageError(format!("--filter: {f:?} is not KEY=VALUE")))?;
            if !keys.contains(&k) {
                return Err(UsageError(format!(
                    "--filter: unknown key {k:?} ({})",
                    keys.join(", ")
                )));
            }
            check(k, v).map_err(|why| UsageError(format!("--filter: {k} {v:?}: {why}")))?;
            by_key.entry(k).or_default().push(v);
        }
        Ok(Filters(by_key))
    }

    /// Whether the user filtered on `key`.
    pub fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// Keeps the items every filtered key matches (`matches(item, key, value)` for one
    /// of the key's values).
    pub fn retain<T>(&self, items: &mut Vec<T>, matches: impl Fn(&T, &str, &str) -> bool) {
        items.retain(|item| {
            self.0
                .iter()
                .all(|(k, vals)| vals.iter().any(|v| matches(item, k, v)))
        });
    }
}

/// Docker's `label` filter: `key` (present) or `key=value`.
pub fn label_matches<'l>(
    mut labels: impl Iterator<Item = (&'l String, &'l String)>,
    filter: &str,
) -> bool {
    match filter.split_once('=') {
        Some((k, v)) => labels.any(|(lk, lv)| lk == k && lv == v),
        None => labels.any(|(lk, _)| lk == filter),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_is_any_of_its_values_and_keys_all_hold() {
        let f: Vec<String> = ["n=1", "n=2", "odd=true"]
            .iter()
            .map(|s| (*s).to_string())
            .collect();
        let filters = Filters::parse(&f, &["n", "odd"], |_, _| Ok(())).unwrap();
        let mut items = vec![1, 2, 3];
        filters.retain(&mut items, |i, k, v| match k {
            "n" => i.to_string() == v,
            _ => (i % 2 == 1).to_string() == v,
        });
        assert_eq!(items, [1]);
        assert!(filters.has("odd") && !filters.has("x"));
    }

    #[test]
    fn bad_filters_are_named() {
        let err = |f: &str| {
            let f = vec![f.to_string()];
            Filters::parse(&f, &["a", "b"], |_, v| {
                if v == "bad" {
                    Err("not good".into())
                } else {
                    Ok(())
                }
            })
            .err()
            .unwrap()
            .0
        };
        assert_eq!(err("a"), "--filter: \"a\" is not KEY=VALUE");
        assert_eq!(err("c=1"), "--filter: unknown key \"c\" (a, b)");
        assert_eq!(err("b=bad"), "--filter: b \"bad\": not good");
    }

    #[test]
    fn labels_match_by_key_or_key_and_value() {
        let l: BTreeMap<String, String> = [("zone".into(), "a".into())].into();
        assert!(label_matches(l.iter(), "zone"));
        assert!(label_matches(l.iter(), "zone=a"));
        assert!(!label_matches(l.iter(), "zone=b"));
        assert!(!label_matches(l.iter(), "rack"));
    }
}
