//! Splitting a script into statements at the semicolons that end them (not those
//! inside strings, quoted identifiers or comments).

/// The statements of `script`, trimmed, without their semicolons. Empty statements and
/// statements made only of comments are left out.
pub fn split_statements(script: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut chars = script.chars().peekable();
    let mut has_code = false;
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' | '`' => {
                current.push(c);
                has_code = true;
                // Copy up to the closing quote; a doubled quote is an escaped quote.
                while let Some(inner) = chars.next() {
                    current.push(inner);
                    if inner == c {
                        if chars.peek() == Some(&c) {
                            current.push(chars.next().expect("peeked"));
                        } else {
                            break;
                        }
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                for inner in chars.by_ref() {
                    if inner == '\n' {
                        current.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut previous = ' ';
                for inner in chars.by_ref() {
                    if previous == '*' && inner == '/' {
                        break;
                    }
                    previous = inner;
                }
                current.push(' ');
            }
            ';' => {
                if has_code {
                    statements.push(current.trim().to_string());
                }
                current.clear();
                has_code = false;
            }
            _ => {
                has_code |= !c.is_whitespace();
                current.push(c);
            }
        }
    }
    if has_code {
        statements.push(current.trim().to_string());
    }
    statements
}

/// Whether `text` ends with a complete statement: its last character of code (outside
/// strings, quoted identifiers and comments) is a `;`, and no string, quoted identifier
/// or block comment is left open. The shell reads lines until this holds, so a
/// statement may span lines and a `;` inside a string does not end it.
pub fn ends_statement(text: &str) -> bool {
    let mut chars = text.chars().peekable();
    let mut last_code = None;
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' | '`' => {
                let mut closed = false;
                while let Some(inner) = chars.next() {
                    if inner == c {
                        if chars.peek() == Some(&c) {
                            chars.next();
                        } else {
                            closed = true;
                            break;
                        }
                    }
                }
                if !closed {
                    return false;
                }
                last_code = Some(c);
            }
            '-' if chars.peek() == Some(&'-') => {
                for inner in chars.by_ref() {
                    if inner == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut previous = ' ';
                let mut closed = false;
                for inner in chars.by_ref() {
                    if previous == '*' && inner == '/' {
                        closed = true;
                        break;
                    }
                    previous = inner;
                }
                if !closed {
                    return false;
                }
            }
            c if c.is_whitespace() => {}
            c => last_code = Some(c),
        }
    }
    last_code == Some(';')
}

#[cfg(test)]
mod tests {
    use super::{ends_statement, split_statements};

    #[test]
    fn splits_at_semicolons_outside_strings_and_comments() {
        let script =
            "SELECT 'a;b'; -- one; two\nSELECT \"x;y\" /* ; */ FROM t;\n\n-- only a comment;\n";
        assert_eq!(
            split_statements(script),
            vec!["SELECT 'a;b'", "SELECT \"x;y\"   FROM t"]
        );
    }

    #[test]
    fn keeps_doubled_quotes_inside_strings() {
        assert_eq!(
            split_statements("SELECT 'it''s; fine'"),
            vec!["SELECT 'it''s; fine'"]
        );
    }

    #[test]
    fn a_statement_ends_at_a_semicolon_outside_strings_and_comments() {
        assert!(ends_statement("SELECT 1;"));
        assert!(ends_statement("SELECT 1\n  + 1; -- done\n"));
        assert!(ends_statement("SELECT 'a;b' /* ; */;"));
        assert!(!ends_statement("SELECT 1"));
        assert!(!ends_statement("SELECT 'a;"));
        assert!(!ends_statement("SELECT 1 /* ; */"));
        assert!(!ends_statement("SELECT 1; /* open"));
        assert!(!ends_statement("SELECT 1 -- ;"));
        assert!(!ends_statement(""));
    }
}
