//! The Dockerfiles (`deploy/*.Dockerfile`) read as their stages: each `FROM` with its image,
//! its name and its instructions (continuation lines joined, comments dropped), and the
//! binary an image's ENTRYPOINT runs.

use std::collections::BTreeMap;
use std::path::Path;

use super::read;

/// One instruction: its keyword (upper case) and the rest, continuation lines joined and
/// comment lines dropped.
#[derive(Debug)]
pub struct Instruction {
    pub keyword: String,
    pub args: String,
}

/// One build stage: `FROM image [AS name]` and its instructions.
#[derive(Debug)]
pub struct Stage {
    pub image: String,
    pub name: Option<String>,
    pub instructions: Vec<Instruction>,
}

/// The stages of the repository's Dockerfile `rel`, in order.
pub fn dockerfile(rel: &str) -> Vec<Stage> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in read(rel).lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    assert!(current.is_empty(), "{rel} ends inside a continued line");
    let mut stages: Vec<Stage> = Vec::new();
    for line in logical {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let (keyword, args) = (keyword.to_ascii_uppercase(), args.trim().to_string());
        if keyword == "FROM" {
            let words: Vec<&str> = args.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some(name.to_string()),
                [_] => None,
                _ => panic!("{rel}: unexpected FROM {args}"),
            };
            stages.push(Stage {
                image: words[0].to_string(),
                name,
                instructions: Vec::new(),
            });
        } else {
            let stage = stages
                .last_mut()
                .unwrap_or_else(|| panic!("{rel}: {keyword} before FROM"));
            stage.instructions.push(Instruction { keyword, args });
        }
    }
    assert!(!stages.is_empty(), "{rel} has no FROM");
    stages
}

impl Stage {
    /// The arguments of every instruction `keyword` of the stage.
    pub fn all<'a>(&'a self, keyword: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.instructions
            .iter()
            .filter(move |i| i.keyword == keyword)
            .map(|i| i.args.as_str())
    }

    /// The ENTRYPOINT, in exec form.
    pub fn entrypoint(&self) -> Vec<String> {
        let args = self
            .all("ENTRYPOINT")
            .last()
            .unwrap_or_else(|| panic!("the stage FROM {} has no ENTRYPOINT", self.image));
        serde_json::from_str(args)
            .unwrap_or_else(|e| panic!("ENTRYPOINT {args} is not in exec form: {e}"))
    }

    /// `ENV` settings (`KEY=value` pairs, unquoted values).
    pub fn env(&self) -> BTreeMap<String, String> {
        self.all("ENV")
            .flat_map(|args| args.split_whitespace())
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

/// The binary an image's ENTRYPOINT runs (its file name).
pub fn entrypoint_binary(rel: &str) -> String {
    let stages = dockerfile(rel);
    let entry = stages.last().unwrap().entrypoint();
    let program = entry.first().expect("an empty ENTRYPOINT");
    Path::new(program)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}
