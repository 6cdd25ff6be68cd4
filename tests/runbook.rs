//! The on-call runbook (`docs/runbook.md`) explains every reason the operator can put on the
//! `Ready` condition.
//!
//! The reasons come from `status::READY_REASONS`, and a scan of the sources keeps that list
//! complete: every place that can give `Ready` its reason is found by the way the code writes it
//! (a `condition(READY, _, "Reason", ..)` or `set_ready(_, _, "Reason", ..)` call, the arms of `status::decide` and of the
//! controller's phase announcement, and lever conditions marked `blocking: true`, whose reason
//! becomes `Ready`'s). Each of those forms must still be found, so a reshaped source fails here
//! rather than silently escaping the check.

use std::{
    collections::BTreeSet,
    error::Error,
    path::{Path, PathBuf},
};

use flashsale_operator::status::READY_REASONS;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `### \`Reason\`` headings under the runbook's "Every `Ready` reason" section.
fn documented() -> Result<BTreeSet<String>, Box<dyn Error>> {
    let text = std::fs::read_to_string(root().join("docs/runbook.md"))?;
    let section = text.split("\n## Every `Ready` reason").nth(1).ok_or("the runbook has no reasons section")?;
    let section = section.split("\n## ").next().unwrap_or_default();
    Ok(section.lines().filter_map(|l| l.strip_prefix("### `")?.strip_suffix('`')).map(str::to_owned).collect())
}

#[test]
fn every_ready_reason_has_a_runbook_entry_and_every_entry_is_a_reason() -> Result<(), Box<dyn Error>> {
    let documented = documented()?;
    let missing: Vec<&&str> = READY_REASONS.iter().filter(|r| !documented.contains(**r)).collect();
    assert!(missing.is_empty(), "docs/runbook.md has no `### `Reason`` entry for {missing:?}");
    let stale: Vec<&String> = documented.iter().filter(|d| !READY_REASONS.contains(&d.as_str())).collect();
    assert!(stale.is_empty(), "docs/runbook.md explains reasons the operator never sets: {stale:?}");
    Ok(())
}

/// Every `.rs` file under `src/`, without its `#[cfg(test)]` module.
fn sources() -> Result<Vec<(PathBuf, String)>, Box<dyn Error>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, out)?;
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut files = vec![];
    walk(&root().join("src"), &mut files)?;
    files.sort();
    let mut sources = vec![];
    for path in files {
        let text = std::fs::read_to_string(&path)?;
        let code = text.split("\n#[cfg(test)]").next().unwrap_or_default().to_owned();
        sources.push((path, code));
    }
    Ok(sources)
}

/// A CamelCase reason (`WarmupFailed`), not a sentence.
fn is_reason(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_uppercase()) && s.len() > 1 && s.chars().all(|c| c.is_ascii_alphanumeric())
}

/// The string literal at the start of `s` (after whitespace), if there is one.
fn literal(s: &str) -> Option<&str> {
    let s = s.trim_start().strip_prefix('"')?;
    Some(&s[..s.find('"')?])
}

/// The top-level, comma-separated arguments of the call whose `(` precedes `s`.
fn arguments(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut args) = (0usize, 0usize, vec![]);
    let mut in_string = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => in_string = !in_string,
            _ if in_string => {}
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' if depth == 0 => {
                // A trailing comma ends the list, not another argument.
                let last = s[start..i].trim();
                if !last.is_empty() {
                    args.push(last);
                }
                return args;
            }
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                args.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    args
}

/// The CamelCase literals in `block` (a match whose arms give the reason).
fn reasons_in(block: &str) -> Vec<String> {
    block.split('"').skip(1).step_by(2).filter(|s| is_reason(s)).map(str::to_owned).collect()
}

/// The text from `start` up to the end of the statement it opens (`\n    };` at its indent).
fn block_after<'a>(code: &'a str, start: &str) -> Option<&'a str> {
    let at = code.find(start)?;
    let rest = &code[at..];
    Some(&rest[..rest.find("\n    };").unwrap_or(rest.len())])
}

#[test]
fn every_reason_the_code_can_put_on_ready_is_listed() -> Result<(), Box<dyn Error>> {
    let mut found: BTreeSet<String> = BTreeSet::new();
    let mut forms = [0usize; 5];
    for (path, code) in sources()? {
        let file = path.display().to_string();
        // 1. `condition(READY, _, "Reason", ..)`, however the constant is reached.
        for call in ["condition(READY,", "condition(status::READY,"] {
            for (at, _) in code.match_indices(call) {
                let args = arguments(&code[at + "condition(".len()..]);
                if let Some(reason) = args.get(2).and_then(|a| literal(a)) {
                    found.insert(reason.to_owned());
                    forms[0] += 1;
                }
            }
        }
        // 1b. `set_ready(&mut status, false, "Reason", ..)`, which puts a reason over decide's.
        for (at, _) in code.match_indices("set_ready(&mut") {
            let args = arguments(&code[at + "set_ready(".len()..]);
            if let Some(reason) = args.get(2).and_then(|a| literal(a)) {
                found.insert(reason.to_owned());
                forms[4] += 1;
            }
        }
        // 2. The arms that choose Ready's reason by phase, and the reasons a phase starts with.
        for start in ["let (ready, reason, message) = match phase {", "let starting = match (clock.phase, refused) {"] {
            if let Some(block) = block_after(&code, start) {
                let reasons = reasons_in(block);
                assert!(!reasons.is_empty(), "{file}: `{start}` gives no reason literal");
                forms[1] += reasons.len();
                found.extend(reasons);
            }
        }
        // 3. Lever conditions that block Ready give it their reason: the struct literal's
        //    `reason: "X"`, or (a reason chosen earlier) the `Some(("X", ..))` choices in the
        //    same function.
        for (at, _) in code.match_indices("blocking: true") {
            let Some(open) = code[..at].rfind("LeverCondition {") else { continue };
            let literal_fields = &code[open..at];
            match literal_fields.split("reason: ").nth(1).and_then(literal) {
                Some(reason) => {
                    found.insert(reason.to_owned());
                    forms[2] += 1;
                }
                None => {
                    let function = code[..open].rfind("\nasync fn ").max(code[..open].rfind("\npub async fn "));
                    let body = &code[function.unwrap_or(0)..at];
                    let chosen: Vec<&str> =
                        body.split("Some((").skip(1).filter_map(literal).filter(|r| is_reason(r)).collect();
                    assert!(!chosen.is_empty(), "{file}: a blocking condition whose reason is not found");
                    forms[2] += chosen.len();
                    found.extend(chosen.into_iter().map(str::to_owned));
                }
            }
        }
        // 4. A lever's condition built by a `lever(ready, "Reason", message, blocking)` helper.
        for (at, _) in code.match_indices("lever(") {
            let args = arguments(&code[at + "lever(".len()..]);
            if args.len() == 4
                && args[0] == "false"
                && args[3] == "true"
                && let Some(reason) = literal(args[1])
            {
                found.insert(reason.to_owned());
                forms[3] += 1;
            }
        }
    }
    assert!(forms.iter().all(|n| *n > 0), "a form of setting Ready's reason was not found any more: {forms:?}");
    let unlisted: Vec<&String> = found.iter().filter(|r| !READY_REASONS.contains(&r.as_str())).collect();
    assert!(unlisted.is_empty(), "the code can put these on Ready but status::READY_REASONS lacks them: {unlisted:?}");
    let unused: Vec<&&str> = READY_REASONS.iter().filter(|r| !found.contains(**r)).collect();
    assert!(unused.is_empty(), "status::READY_REASONS lists reasons no code sets: {unused:?}");
    Ok(())
}
