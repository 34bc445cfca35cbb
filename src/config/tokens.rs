//! Where the control API's tokens come from (`token_env`, `token_file`, or, for local use,
//! `token`). Read at start and at each reload; a value is never logged or kept as text.

use super::{Config, RawToken};

/// The value of one token, trimmed, or why it cannot be had (naming its source, never a
/// value).
pub fn read(raw: &RawToken) -> Result<String, String> {
    let value = if let Some(var) = &raw.token_env {
        std::env::var(var).map_err(|_| format!("the variable `{var}` is not set"))?
    } else if let Some(path) = &raw.token_file {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read `{path}`: {e}"))?
    } else if let Some(value) = &raw.token {
        value.clone()
    } else {
        return Err("has no source".into());
    };
    let value = value.trim();
    if value.is_empty() {
        return Err(match (&raw.token_env, &raw.token_file) {
            (Some(var), _) => format!("the variable `{var}` is empty"),
            (_, Some(path)) => format!("`{path}` is empty"),
            _ => "is empty".into(),
        });
    }
    Ok(value.to_string())
}

/// Every token of `config` that cannot be read, as (field path, why): the path names the
/// source field (`admin.tokens[1].token_file`).
pub fn problems(config: &Config) -> Vec<(String, String)> {
    let tokens = config.raw.admin.as_ref().map_or(&[][..], |a| &a.tokens[..]);
    tokens
        .iter()
        .enumerate()
        .filter_map(|(i, token)| {
            let why = read(token).err()?;
            let field = if token.token_env.is_some() {
                "token_env"
            } else if token.token_file.is_some() {
                "token_file"
            } else {
                "token"
            };
            Some((format!("admin.tokens[{i}].{field}"), format!("token `{}`: {why}", token.name)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_sources_are_named_by_their_field() {
        let dir = std::env::temp_dir().join(format!("sluice-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("empty"), "\n").unwrap();
        std::fs::write(dir.join("good"), "s3cret\n").unwrap();
        std::env::set_var("SLUICE_TEST_TOKENS_EMPTY", " ");
        let text = format!(
            "service: s\nlisten: 127.0.0.1:0\nupstream: http://127.0.0.1:1\nadmin:\n  tokens:\n    - {{ name: a, role: admin, token_env: SLUICE_TEST_TOKENS_UNSET }}\n    - {{ name: b, role: admin, token_env: SLUICE_TEST_TOKENS_EMPTY }}\n    - {{ name: c, role: admin, token_file: {0}/missing }}\n    - {{ name: d, role: admin, token_file: {0}/empty }}\n    - {{ name: e, role: admin, token_file: {0}/good }}\n",
            dir.display()
        );
        let config = crate::config::parse(&text).unwrap();
        let problems = problems(&config);
        let paths: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "admin.tokens[0].token_env",
                "admin.tokens[1].token_env",
                "admin.tokens[2].token_file",
                "admin.tokens[3].token_file"
            ]
        );
        assert_eq!(problems[0].1, "token `a`: the variable `SLUICE_TEST_TOKENS_UNSET` is not set");
        assert_eq!(problems[1].1, "token `b`: the variable `SLUICE_TEST_TOKENS_EMPTY` is empty");
        assert!(problems[2].1.starts_with("token `c`: cannot read"), "{}", problems[2].1);
        let placed = crate::config::place_all(&text, problems);
        assert_eq!((placed[0].line, placed[0].column), (Some(6), Some(42)), "{}", placed[0]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
