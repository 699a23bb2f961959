//! The grid file of `lgaf sweep`: which config keys take which values.
//!
//! ```toml
//! # One table: the cartesian product of its keys' values (in key order).
//! name = "fusion and loss"   # optional; the file's name otherwise
//! model.fusion = ["lgf", "add"]
//! loss.name = ["cosface", "arcface"]
//! ```
//!
//! or several, each a product of its own, whose points are swept one table after another
//! (a configuration that two tables share is trained once):
//!
//! ```toml
//! [[grid]]
//! name = "Table 1: fusion"
//! model.fusion = ["local", "global", "add", "lgf"]
//!
//! [[grid]]
//! name = "Table 2: heads"
//! model.heads = [1, 2, 4, 8]
//! ```
//!
//! Keys are the config's dotted keys (`model.lgf.alpha`); a key whose config value is a list
//! takes a list of lists (`model.kernels = [[1, 3, 5], [3]]`).

use std::path::Path;

use super::SweepError;

/// One table of the grid.
#[derive(Clone, Debug, PartialEq)]
pub struct GridGroup {
    pub name: String,
    /// Each point's overrides: (dotted key, value), in key order.
    pub points: Vec<Vec<(String, toml::Value)>>,
}

/// Reads and expands the grid file at `path`.
pub fn load(path: &Path) -> Result<Vec<GridGroup>, SweepError> {
    let text = std::fs::read_to_string(path).map_err(|source| SweepError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let stem = path
        .file_stem()
        .map_or("grid".into(), |s| s.to_string_lossy().into_owned());
    parse(&text, &stem).map_err(|message| SweepError::Grid {
        path: path.to_path_buf(),
        message,
    })
}

/// Expands grid TOML; `default_name` names a file of one table. The error says what is wrong
/// and where, for [`SweepError::Grid`] to put after the file's name.
pub fn parse(text: &str, default_name: &str) -> Result<Vec<GridGroup>, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    match table.get("grid") {
        Some(toml::Value::Array(tables)) => {
            if table.len() > 1 {
                return Err("with [[grid]] tables, every key belongs in one of them".into());
            }
            tables
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let toml::Value::Table(t) = t else {
                        return Err(format!("grid[{i}] is not a table"));
                    };
                    let mut t = t.clone();
                    let name = match t.remove("name") {
                        None => format!("{default_name} {}", i + 1),
                        Some(toml::Value::String(s)) => s,
                        Some(other) => {
                            return Err(format!("grid[{i}].name must be a string, not {other}"))
                        }
                    };
                    group(name, &t).map_err(|e| format!("grid[{i}] ({e})"))
                })
                .collect()
        }
        Some(_) => Err("`grid` must be an array of tables ([[grid]])".into()),
        None => {
            let mut table = table;
            let name = match table.remove("name") {
                None => default_name.to_string(),
                Some(toml::Value::String(s)) => s,
                Some(other) => return Err(format!("name must be a string, not {other}")),
            };
            Ok(vec![group(name, &table)?])
        }
    }
}

fn group(name: String, table: &toml::Table) -> Result<GridGroup, String> {
    let mut axes = Vec::new();
    flatten("", table, &mut axes)?;
    if axes.is_empty() {
        return Err(
            "no keys to sweep: give at least one, e.g. model.fusion = [\"lgf\", \"add\"]".into(),
        );
    }
    let mut points: Vec<Vec<(String, toml::Value)>> = vec![Vec::new()];
    for (key, values) in axes {
        points = points
            .into_iter()
            .flat_map(|point| {
                let key = &key;
                values.iter().map(move |v| {
                    let mut p = point.clone();
                    p.push((key.clone(), v.clone()));
                    p
                })
            })
            .collect();
    }
    Ok(GridGroup { name, points })
}

/// Collects (dotted key, values) from nested tables; every leaf must be a non-empty list.
fn flatten(
    prefix: &str,
    table: &toml::Table,
    axes: &mut Vec<(String, Vec<toml::Value>)>,
) -> Result<(), String> {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(inner) => flatten(&key, inner, axes)?,
            toml::Value::Array(values) if !values.is_empty() => {
                axes.push((key, values.clone()));
            }
            toml::Value::Array(_) => return Err(format!("`{key}` lists no values")),
            other => {
                return Err(format!(
                    "`{key}` must be a list of the values to sweep, e.g. {key} = [{other}], \
                     not {other}"
                ))
            }
        }
    }
    Ok(())
}

/// `key=value` for a label: strings bare, everything else as TOML writes it.
pub fn label(overrides: &[(String, toml::Value)]) -> String {
    overrides
        .iter()
        .map(|(k, v)| match v {
            toml::Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sets `value` at the dotted `key` of `tree`, creating tables on the way.
pub fn set(tree: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), String> {
    let mut parts = key.split('.').peekable();
    let mut table = tree;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            table.insert(part.to_string(), value);
            return Ok(());
        }
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(format!("`{key}`: `{part}` is a value, not a section")),
        };
    }
    unreachable!("split yields at least one part")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(g: &GridGroup) -> Vec<String> {
        g.points.iter().map(|p| label(p)).collect()
    }

    #[test]
    fn one_table_is_a_product_in_key_order() {
        let g = parse(
            "model.fusion = [\"lgf\", \"add\"]\n[loss]\nname = [\"cosface\", \"arcface\"]",
            "g",
        )
        .unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].name, "g");
        let named = parse("name = \"losses\"\nloss.name = [\"cosface\"]", "g").unwrap();
        assert_eq!(named[0].name, "losses");
        assert_eq!(
            keys(&g[0]),
            [
                "loss.name=cosface model.fusion=lgf",
                "loss.name=cosface model.fusion=add",
                "loss.name=arcface model.fusion=lgf",
                "loss.name=arcface model.fusion=add",
            ]
        );
    }

    #[test]
    fn grid_tables_are_groups() {
        let g = parse(
            "[[grid]]\nname = \"fusion\"\nmodel.fusion = [\"lgf\"]\n[[grid]]\nmodel.kernels = [[1, 3], [5]]",
            "file",
        )
        .unwrap();
        assert_eq!(g[0].name, "fusion");
        assert_eq!(g[1].name, "file 2");
        assert_eq!(keys(&g[1]), ["model.kernels=[1, 3]", "model.kernels=[5]"]);
    }

    #[test]
    fn mistakes_are_named() {
        let e = parse("model.heads = 4", "g").unwrap_err();
        assert!(
            e.contains("`model.heads` must be a list") && e.contains("[4]"),
            "{e}"
        );
        assert!(parse("model.heads = []", "g")
            .unwrap_err()
            .contains("lists no values"));
        assert!(parse("", "g").unwrap_err().contains("no keys to sweep"));
        let e = parse("x = [1]\n[[grid]]\ny = [1]", "g").unwrap_err();
        assert!(e.contains("every key belongs"), "{e}");
        let e = parse("[[grid]]\nname = 3\ny = [1]", "g").unwrap_err();
        assert!(e.contains("grid[0].name must be a string"), "{e}");
        assert!(parse("model.heads = [", "g").is_err());
    }

    #[test]
    fn set_creates_sections_and_refuses_to_descend_into_values() {
        let mut t = toml::Table::new();
        set(&mut t, "model.lgf.alpha", toml::Value::Float(0.05)).unwrap();
        assert_eq!(t["model"]["lgf"]["alpha"].as_float(), Some(0.05));
        let e = set(&mut t, "model.lgf.alpha.x", toml::Value::Integer(1)).unwrap_err();
        assert!(e.contains("`alpha` is a value"), "{e}");
    }
}
