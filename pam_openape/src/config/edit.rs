//! Editing the trust lists of a config file in place, for `escapes trust`.
//!
//! No TOML document model is used (no `toml_edit`): the file is parsed
//! once with `toml` to learn the byte span of each list's value, and only
//! those bytes are replaced. Every other key, every comment, blank line
//! and the key order stay byte-for-byte as they were. Comments *inside* a
//! replaced array are lost (the array is rewritten whole). A list that
//! does not exist yet is inserted right after the `[security]` header, or
//! a new `[security]` table is appended when there is none. The result is
//! parsed again and must hold exactly the intended lists, or the edit is
//! refused; the caller still validates it with [`super::Config::parse`]
//! before writing anything.

use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

/// The two lists `escapes trust` manages, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustLists {
    pub issuers: Vec<String>,
    pub approvers: Vec<String>,
}

/// The outcome of an edit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edited {
    /// The whole new file.
    pub text: String,
    /// The lists before (empty for a new file) and after.
    pub before: TrustLists,
    pub after: TrustLists,
}

impl Edited {
    /// True when the file content does not change.
    pub fn unchanged(&self, old: Option<&str>) -> bool {
        old == Some(self.text.as_str())
    }
}

#[derive(Deserialize)]
struct Probe {
    security: Option<SecurityProbe>,
}

#[derive(Deserialize)]
struct SecurityProbe {
    allowed_issuers: Option<Spanned<Vec<String>>>,
    allowed_approvers: Option<Spanned<Vec<String>>>,
}

fn probe(text: &str) -> Result<Probe, String> {
    toml::from_str::<Probe>(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text.get(..s.start).map_or(0, |t| t.matches('\n').count()) + 1);
        match line {
            Some(l) => format!("line {l}: {}", e.message()),
            None => e.message().to_string(),
        }
    })
}

/// A TOML basic string: `"`, `\` and control characters escaped.
pub fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `["a", "b"]` on one line when short, else one item per line.
pub fn toml_array(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| toml_string(s)).collect();
    let one_line = format!("[{}]", quoted.join(", "));
    if one_line.len() <= 72 {
        return one_line;
    }
    let mut out = String::from("[\n");
    for q in quoted {
        out.push_str("    ");
        out.push_str(&q);
        out.push_str(",\n");
    }
    out.push(']');
    out
}

/// `existing` plus every item of `add` not already in it, order kept.
pub fn merged(existing: &[String], add: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(existing.len() + add.len());
    for s in existing.iter().chain(add) {
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    out
}

/// A fresh config file holding these lists and commented defaults.
pub fn new_config(lists: &TrustLists) -> String {
    format!(
        "# OpenApe trust root: which IdPs and which approvers may grant root on\n\
         # this host. Written by `escapes trust`; see openape.toml(5). Keep it\n\
         # owned by root with mode 0600.\n\
         \n\
         # host = \"myhost\"                      # default: the system host name\n\
         # run_as = \"root\"                      # target user when the grant names none\n\
         # audit_log = \"/var/log/openape/audit.log\"\n\
         \n\
         [security]\n\
         allowed_issuers = {}\n\
         allowed_approvers = {}\n\
         # allowed_audiences = [\"escapes\"]\n\
         # clock_skew = 30                        # seconds of leeway on exp/nbf/iat\n\
         # allow_self_approval = false\n\
         \n\
         # Which grant subjects each local caller may use. A grant given as\n\
         # `--grant JWT` is visible to every local user in the process list;\n\
         # binding callers to their subjects stops others from replaying it.\n\
         # [subjects]\n\
         # deploy = [\"deploy-agent@example.com\"]\n\
         \n\
         # [http]\n\
         # timeout = 10                           # seconds, whole request\n\
         \n\
         # [update]\n\
         # manifest_url = \"https://example.com/escapes/manifest.json\"\n",
        toml_array(&lists.issuers),
        toml_array(&lists.approvers),
    )
}

/// Strip a trailing `# comment` from a line that holds no string.
fn without_comment(line: &str) -> &str {
    line.split('#').next().unwrap_or("")
}

/// Byte offset just after the `[security]` header line, if there is one.
fn after_security_header(text: &str) -> Option<usize> {
    let mut offset = 0usize;
    for line in text.split_inclusive('\n') {
        let code = without_comment(line).trim();
        if let Some(inner) = code.strip_prefix('[').and_then(|c| c.strip_suffix(']'))
            && !inner.starts_with('[')
        {
            let name = inner.trim();
            if name == "security" || name == "\"security\"" || name == "'security'" {
                return Some(offset + line.len());
            }
        }
        offset += line.len();
    }
    None
}

/// `text` with `allow_unprivileged_loopback = true` in its `[security]`
/// table (for `escapes trust --allow-unprivileged-loopback`): inserted
/// right after the header when the key is absent; an existing `false` is
/// not overridden (the admin wrote it on purpose).
pub fn with_unprivileged_loopback(text: &str) -> Result<String, String> {
    #[derive(Deserialize)]
    struct P {
        security: Option<S>,
    }
    #[derive(Deserialize)]
    struct S {
        allow_unprivileged_loopback: Option<bool>,
    }
    let p: P = toml::from_str(text).map_err(|e| format!("cannot be parsed ({})", e.message()))?;
    match p.security.and_then(|s| s.allow_unprivileged_loopback) {
        Some(true) => Ok(text.to_string()),
        Some(false) => {
            Err("sets allow_unprivileged_loopback = false; change it by hand if you mean it".into())
        }
        None => {
            let at = after_security_header(text).ok_or(
                "has no plain [security] table to add allow_unprivileged_loopback to; add it by hand",
            )?;
            let mut out = text.to_string();
            out.insert_str(
                at,
                "allow_unprivileged_loopback = true   # http issuer on a port >= 1024: tests and demos only\n",
            );
            Ok(out)
        }
    }
}

/// The trust lists `text` holds now (empty where a list is missing).
pub fn read_lists(text: &str) -> Result<TrustLists, String> {
    let p = probe(text).map_err(|e| format!("cannot be parsed ({e})"))?;
    Ok(match p.security {
        Some(s) => TrustLists {
            issuers: s
                .allowed_issuers
                .map(|v| v.into_inner())
                .unwrap_or_default(),
            approvers: s
                .allowed_approvers
                .map(|v| v.into_inner())
                .unwrap_or_default(),
        },
        None => TrustLists::default(),
    })
}

/// Set the trust lists of `existing` (a whole config file) to `want`,
/// changing nothing else. `Err` explains why the file cannot be edited
/// this way (not TOML, lists of the wrong type, an unusual layout).
pub fn set_lists(existing: &str, want: &TrustLists) -> Result<Edited, String> {
    let p = probe(existing).map_err(|e| format!("cannot be parsed ({e})"))?;
    let sec = p.security;
    let (iss, appr) = match &sec {
        Some(s) => (s.allowed_issuers.as_ref(), s.allowed_approvers.as_ref()),
        None => (None, None),
    };
    let before = TrustLists {
        issuers: iss.map(|s| s.get_ref().clone()).unwrap_or_default(),
        approvers: appr.map(|s| s.get_ref().clone()).unwrap_or_default(),
    };

    // (range to replace, replacement); insertions are empty ranges.
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    let mut missing = String::new();
    match iss {
        Some(s) => edits.push((s.span(), toml_array(&want.issuers))),
        None => missing.push_str(&format!(
            "allowed_issuers = {}\n",
            toml_array(&want.issuers)
        )),
    }
    match appr {
        Some(s) => edits.push((s.span(), toml_array(&want.approvers))),
        None => missing.push_str(&format!(
            "allowed_approvers = {}\n",
            toml_array(&want.approvers)
        )),
    }
    let mut text = existing.to_string();
    if !missing.is_empty() {
        match (sec.is_some(), after_security_header(existing)) {
            (_, Some(at)) => edits.push((at..at, missing)),
            (false, None) => {
                let mut tail = String::new();
                if !text.is_empty() && !text.ends_with('\n') {
                    tail.push('\n');
                }
                if !text.is_empty() {
                    tail.push('\n');
                }
                tail.push_str("[security]\n");
                tail.push_str(&missing);
                let end = text.len();
                edits.push((end..end, tail));
            }
            (true, None) => {
                return Err(
                    "defines [security] in a form escapes trust cannot extend (dotted keys or an inline table); add allowed_issuers and allowed_approvers by hand"
                        .into(),
                );
            }
        }
    }
    // Apply from the end so earlier offsets stay valid.
    edits.sort_by_key(|e| std::cmp::Reverse(e.0.start));
    for (range, with) in edits {
        if text.get(range.clone()).is_none() {
            return Err("could not be edited (internal offset error)".into());
        }
        text.replace_range(range, &with);
    }

    // The edit must say exactly what was meant.
    let check = probe(&text).map_err(|e| format!("could not be edited safely ({e})"))?;
    let got = check.security.map(|s| TrustLists {
        issuers: s
            .allowed_issuers
            .map(|v| v.into_inner())
            .unwrap_or_default(),
        approvers: s
            .allowed_approvers
            .map(|v| v.into_inner())
            .unwrap_or_default(),
    });
    if got.as_ref() != Some(want) {
        return Err(
            "could not be edited safely (the result does not hold the intended lists)".into(),
        );
    }
    Ok(Edited {
        text,
        before,
        after: want.clone(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn lists(i: &[&str], a: &[&str]) -> TrustLists {
        TrustLists {
            issuers: i.iter().map(|s| s.to_string()).collect(),
            approvers: a.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn loads(text: &str) -> Config {
        Config::parse(Path::new("/etc/openape/config.toml"), text, 0).unwrap()
    }

    #[test]
    fn a_new_file_loads_with_the_lists() {
        let l = lists(&["https://id.openape.at"], &["alice@example.com", "bob@x"]);
        let c = loads(&new_config(&l));
        assert_eq!(c.allowed_issuers, l.issuers);
        assert_eq!(c.allowed_approvers, l.approvers);
    }

    #[test]
    fn only_the_list_values_change() {
        let old = "# top comment\nhost = \"h1\"   # trailing\n\n[security]\n# who may approve\nallowed_issuers = [ \"https://a.example\" ]  # iss\nallowed_approvers = [\n  \"bob@x\", # bob\n]\nclock_skew = 10\n\n[env]\nkeep = [\"SSH_AUTH_SOCK\"]\n";
        let want = lists(
            &["https://a.example", "https://b.example"],
            &["bob@x", "alice@x"],
        );
        let e = set_lists(old, &want).unwrap();
        assert_eq!(e.before, lists(&["https://a.example"], &["bob@x"]));
        assert_eq!(
            e.text,
            "# top comment\nhost = \"h1\"   # trailing\n\n[security]\n# who may approve\nallowed_issuers = [\"https://a.example\", \"https://b.example\"]  # iss\nallowed_approvers = [\"bob@x\", \"alice@x\"]\nclock_skew = 10\n\n[env]\nkeep = [\"SSH_AUTH_SOCK\"]\n"
        );
        let c = loads(&e.text);
        assert_eq!(c.host, "h1");
        assert_eq!(c.clock_skew, 10);
        assert_eq!(c.env_keep, vec!["SSH_AUTH_SOCK"]);
    }

    #[test]
    fn missing_lists_and_tables_are_added() {
        let want = lists(&["https://a.example"], &["alice@x"]);
        // No [security] at all, no final newline.
        let e = set_lists("host = \"h\"\n# keep me", &want).unwrap();
        assert_eq!(
            e.text,
            "host = \"h\"\n# keep me\n\n[security]\nallowed_issuers = [\"https://a.example\"]\nallowed_approvers = [\"alice@x\"]\n"
        );
        assert_eq!(loads(&e.text).host, "h");
        // A [security] header with one list: the other goes right below it.
        let e = set_lists(
            "[security] # t\nallowed_approvers = [\"bob@x\"]\n[http]\ntimeout = 3\n",
            &lists(&["https://a.example"], &["bob@x", "alice@x"]),
        )
        .unwrap();
        assert_eq!(
            e.text,
            "[security] # t\nallowed_issuers = [\"https://a.example\"]\nallowed_approvers = [\"bob@x\", \"alice@x\"]\n[http]\ntimeout = 3\n"
        );
        // Empty file.
        let e = set_lists("", &want).unwrap();
        assert!(loads(&e.text).allowed_approvers == want.approvers);
    }

    #[test]
    fn dotted_and_inline_forms() {
        let want = lists(&["https://b.example"], &["alice@x"]);
        let e = set_lists(
            "security.allowed_issuers = [\"https://a.example\"]\nsecurity.allowed_approvers = [\"bob@x\"]\n",
            &want,
        )
        .unwrap();
        assert_eq!(
            e.text,
            "security.allowed_issuers = [\"https://b.example\"]\nsecurity.allowed_approvers = [\"alice@x\"]\n"
        );
        // Inline table missing a list: refused rather than guessed.
        let r = set_lists("security = { allowed_issuers = [\"https://a\"] }\n", &want);
        assert!(r.is_err_and(|e| e.contains("by hand")));
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let want = lists(&["https://a"], &["x"]);
        assert!(set_lists("[security\n", &want).is_err_and(|e| e.contains("line 1")));
        assert!(set_lists("[security]\nallowed_issuers = \"https://a\"\n", &want).is_err());
    }

    #[test]
    fn long_lists_wrap_and_strings_are_escaped() {
        let many: Vec<String> = (0..6).map(|i| format!("approver{i}@example.com")).collect();
        let arr = toml_array(&many);
        assert!(arr.starts_with("[\n    \"approver0@example.com\",\n"));
        assert_eq!(toml_string("a\"b\\c\u{7f}"), "\"a\\\"b\\\\c\\u007F\"");
        let l = TrustLists {
            issuers: vec!["https://a.example".into()],
            approvers: many,
        };
        assert_eq!(loads(&new_config(&l)).allowed_approvers, l.approvers);
    }

    #[test]
    fn merging_keeps_order_and_drops_duplicates() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            merged(&v(&["b", "a"]), &v(&["a", "c", "c"])),
            v(&["b", "a", "c"])
        );
    }
}
