//! What a script imports, read from its text: which modules a replacement script needs (so a
//! tool version's snapshot carries their sources), and imports written at the top level, where
//! they would never run (`decide` is called without re-running the top level).

/// One `import "path"` statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    pub path: String,
    pub line: usize,
    pub column: usize,
    /// True when written outside every function body.
    pub top_level: bool,
    /// False when the path is an expression rather than a string literal: what such an import
    /// loads is known only when it runs, so no version could record it.
    pub literal: bool,
}

/// Every `import "..."` in `source`, skipping strings and comments.
pub fn imports(source: &str) -> Vec<Import> {
    let bytes = source.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut depth, mut line, mut line_start) = (0usize, 0usize, 1usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => {
                line += 1;
                line_start = i + 1;
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    if bytes[i] == b'\n' {
                        line += 1;
                        line_start = i + 1;
                    }
                    i += 1;
                }
                i += 2;
                continue;
            }
            quote @ (b'"' | b'`' | b'\'') => {
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    if bytes[i] == b'\\' {
                        i += 1;
                    } else if bytes[i] == b'\n' {
                        line += 1;
                        line_start = i + 1;
                    }
                    i += 1;
                }
            }
            b'{' => depth += 1,
            b'}' => depth = depth.saturating_sub(1),
            b'i' if source[i..].starts_with("import")
                && (i == 0 || !is_ident(bytes[i - 1]))
                && bytes.get(i + 6).is_some_and(|b| !is_ident(*b)) =>
            {
                let rest = source[i + 6..].trim_start();
                let literal = rest
                    .strip_prefix('"')
                    .and_then(|literal| literal.find('"').map(|end| &literal[..end]));
                out.push(Import {
                    path: literal.unwrap_or_default().to_owned(),
                    line,
                    column: i - line_start + 1,
                    top_level: depth == 0,
                    literal: literal.is_some(),
                });
                i += 6;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_are_found_with_their_place_and_depth() {
        let source = "// import \"no\"\nimport \"a\" as a;\nfn decide(form, params) {\n  let s = \"import \\\"x\\\"\";\n  import \"harm-analysis\" as core;\n}";
        let found = imports(source);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(
            (found[0].path.as_str(), found[0].line, found[0].top_level),
            ("a", 2, true)
        );
        assert_eq!(
            (found[1].path.as_str(), found[1].line, found[1].top_level),
            ("harm-analysis", 5, false)
        );
        assert_eq!(found[1].column, 3);
        assert!(found.iter().all(|i| i.literal));
    }

    #[test]
    fn an_import_of_an_expression_is_found_as_not_literal() {
        let found = imports("fn decide(form, params) {\n  let m = \"harm-\" + \"analysis\";\n  import m as other;\n}");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(!found[0].literal);
        assert_eq!((found[0].line, found[0].column), (3, 3));
    }
}
