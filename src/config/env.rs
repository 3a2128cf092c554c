//! Environment overrides: `RINGMQ_<SECTION>__<KEY>=value` sets `[section] key = value`, with
//! `__` between levels (`RINGMQ_LISTENERS__TCP__BIND=0.0.0.0:1884`). A value that reads as TOML
//! (a number, `true`, `["a"]`) is taken as such, anything else as a string. Variables without
//! `__` (like `RINGMQ_LOG`) are not overrides.

use toml::{Table, Value};

use super::ConfigError;

const PREFIX: &str = "RINGMQ_";

/// The overrides present in `vars`, as (dotted key, value, variable name).
fn overrides(vars: impl Iterator<Item = (String, String)>) -> Vec<(Vec<String>, Value, String)> {
    let mut out: Vec<_> = vars
        .filter_map(|(name, raw)| {
            let rest = name.strip_prefix(PREFIX)?;
            if !rest.contains("__") {
                return None;
            }
            let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            Some((path, parse_value(&raw), name))
        })
        .collect();
    out.sort_by(|a, b| a.2.cmp(&b.2));
    out
}

fn parse_value(raw: &str) -> Value {
    format!("v = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()))
}

/// Applies every override in `vars` to `table`.
pub fn apply(
    table: &mut Table,
    vars: impl Iterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (path, value, name) in overrides(vars) {
        let bad = |reason: &str| ConfigError::Env {
            var: name.clone(),
            reason: reason.into(),
        };
        let Some((last, parents)) = path.split_last() else {
            continue;
        };
        if path.iter().any(String::is_empty) {
            return Err(bad("empty key between `__`"));
        }
        let mut t = &mut *table;
        for p in parents {
            t = t
                .entry(p.clone())
                .or_insert_with(|| Value::Table(Table::new()))
                .as_table_mut()
                .ok_or_else(|| bad(&format!("`{p}` is not a section")))?;
        }
        t.insert(last.clone(), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(v: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn typed_values_nested_keys_and_plain_strings() {
        let mut t = Table::new();
        apply(
            &mut t,
            vars(&[
                ("RINGMQ_MQTT__MAX_INFLIGHT", "64"),
                ("RINGMQ_LISTENERS__TCP__BIND", "127.0.0.1:1999"),
                ("RINGMQ_LOG", "debug"),
                ("RINGMQ_BROKER__PIN_CORES", "false"),
                ("OTHER__X", "1"),
            ]),
        )
        .expect("applies");
        assert_eq!(t["mqtt"]["max_inflight"].as_integer(), Some(64));
        assert_eq!(
            t["listeners"]["tcp"]["bind"].as_str(),
            Some("127.0.0.1:1999")
        );
        assert_eq!(t["broker"]["pin_cores"].as_bool(), Some(false));
        assert!(!t.contains_key("log"));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn a_key_through_a_value_is_named() {
        let mut t: Table = "[mqtt]\nmax_inflight = 3\n".parse().expect("toml");
        let e = apply(&mut t, vars(&[("RINGMQ_MQTT__MAX_INFLIGHT__X", "1")])).unwrap_err();
        assert!(
            e.to_string().contains("RINGMQ_MQTT__MAX_INFLIGHT__X"),
            "{e}"
        );
    }
}
