//! millrace's own statements, parsed with sqlparser's parser API:
//!
//! ```sql
//! CREATE UNBOUNDED EXTERNAL TABLE [IF NOT EXISTS] name (
//!   col TYPE [NOT NULL], ...,
//!   WATERMARK FOR col AS col - INTERVAL '5' SECOND
//! ) STORED AS CSV|JSON|PARQUET|TEXT|RATE|SOCKET [LOCATION '...'] [OPTIONS ('k' 'v', ...)];
//!
//! CREATE SINK name STORED AS CONSOLE|MEMORY|PARQUET|CSV|JSON|KAFKA [LOCATION '...']
//!   [OPTIONS ('checkpoint' '...', 'output_mode' 'append', 'trigger' '...')]
//! AS SELECT ...;
//! ```
//!
//! The column list goes to DataFusion's own SQL planner for type conversion and name
//! normalisation, so types mean exactly what they mean in a DataFusion `CREATE TABLE`.

use sqlparser::ast::{BinaryOperator, ColumnDef, Expr, ObjectName, Query};
use sqlparser::dialect::GenericDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

use crate::error::{Error, Result};

/// A parsed `CREATE UNBOUNDED EXTERNAL TABLE`.
#[derive(Debug, Clone)]
pub struct CreateStream {
    /// Table name as written.
    pub name: ObjectName,
    /// `IF NOT EXISTS` was given.
    pub if_not_exists: bool,
    /// `OR REPLACE` was given.
    pub or_replace: bool,
    /// Declared columns.
    pub columns: Vec<ColumnDef>,
    /// `WATERMARK FOR column AS expr`.
    pub watermark: Option<(String, Expr)>,
    /// `STORED AS` value, upper-cased.
    pub format: String,
    /// `LOCATION` value.
    pub location: Option<String>,
    /// `OPTIONS` pairs, in order.
    pub options: Vec<(String, String)>,
}

/// A parsed `CREATE SINK`.
#[derive(Debug, Clone)]
pub struct CreateSink {
    /// Sink (and query) name.
    pub name: String,
    /// `STORED AS` value, upper-cased.
    pub format: String,
    /// `LOCATION` value.
    pub location: Option<String>,
    /// `OPTIONS` pairs, in order.
    pub options: Vec<(String, String)>,
    /// The query after `AS`.
    pub query: Box<Query>,
}

/// What kind of statement a piece of SQL is, judged by its first words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    /// `CREATE UNBOUNDED EXTERNAL TABLE`
    CreateStream,
    /// `CREATE SINK`
    CreateSink,
    /// `SHOW QUERIES`: the session's streaming queries.
    ShowQueries,
    /// `STOP QUERY name`
    StopQuery,
    /// `DESCRIBE QUERY name`: a query's status and latest progress.
    DescribeQuery,
    /// Anything else: DataFusion's to run (a SELECT may still read a stream).
    Other,
}

/// Classifies a statement by its leading words.
pub fn classify(sql: &str) -> StatementKind {
    let words: Vec<String> = sql
        .split_whitespace()
        .take(4)
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["CREATE", "UNBOUNDED", ..] | ["CREATE", "OR", "REPLACE", "UNBOUNDED"] => {
            StatementKind::CreateStream
        }
        ["CREATE", "SINK", ..] => StatementKind::CreateSink,
        ["SHOW", "QUERIES"] => StatementKind::ShowQueries,
        ["STOP", "QUERY", ..] => StatementKind::StopQuery,
        // `DESCRIBE query` alone describes a table named `query`.
        ["DESCRIBE", "QUERY", _, ..] => StatementKind::DescribeQuery,
        _ => StatementKind::Other,
    }
}

/// Reads `SET millrace.<name> = <value>` (or `TO`), millrace's own session settings,
/// which DataFusion's `SET` would refuse as unknown: `Some((name, value))`.
pub fn millrace_setting(sql: &str) -> Option<(String, String)> {
    let rest = sql.trim();
    let rest = rest
        .get(..3)
        .filter(|w| w.eq_ignore_ascii_case("set"))
        .map(|_| rest[3..].trim_start())?;
    let rest = rest
        .get(..9)
        .filter(|p| p.eq_ignore_ascii_case("millrace."))
        .map(|_| &rest[9..])?;
    let split = rest.find(|c: char| c == '=' || c.is_whitespace())?;
    let name = rest[..split].trim().to_ascii_lowercase();
    let value = rest[split..].trim_start();
    let value = value
        .strip_prefix('=')
        .or_else(|| {
            value
                .get(..2)
                .filter(|w| w.eq_ignore_ascii_case("to"))
                .map(|_| &value[2..])
        })?
        .trim()
        .trim_matches(|c| c == '\'' || c == '"');
    Some((name, value.to_string()))
}

fn is_word(parser: &Parser, word: &str) -> bool {
    matches!(&parser.peek_token().token, Token::Word(w) if w.value.eq_ignore_ascii_case(word) && w.quote_style.is_none())
}

fn parse_word(parser: &mut Parser, word: &str) -> bool {
    if is_word(parser, word) {
        parser.next_token();
        true
    } else {
        false
    }
}

fn expect_word(parser: &mut Parser, word: &str, context: &str) -> Result<()> {
    if parse_word(parser, word) {
        Ok(())
    } else {
        Err(Error::Sql(format!(
            "expected {word} {context}, found '{}'",
            parser.peek_token().token
        )))
    }
}

/// The `STORED AS x [LOCATION '..'] [OPTIONS (..)]` part shared by both statements.
struct Storage {
    format: String,
    location: Option<String>,
    options: Vec<(String, String)>,
}

/// Parses `STORED AS x [LOCATION '..'] [OPTIONS (..)]` (in either order after STORED AS).
fn parse_storage(parser: &mut Parser) -> Result<Storage> {
    expect_word(parser, "STORED", "(STORED AS <format>)")?;
    expect_word(parser, "AS", "after STORED")?;
    let format = parser.parse_identifier()?.value.to_ascii_uppercase();
    let mut location = None;
    let mut options = Vec::new();
    loop {
        if parse_word(parser, "LOCATION") {
            location = Some(parser.parse_literal_string()?);
        } else if parse_word(parser, "OPTIONS") {
            options = parse_options(parser)?;
        } else {
            break;
        }
    }
    Ok(Storage {
        format,
        location,
        options,
    })
}

/// Parses `( 'key' 'value', key 'value', ... )`.
fn parse_options(parser: &mut Parser) -> Result<Vec<(String, String)>> {
    parser.expect_token(&Token::LParen)?;
    let mut pairs = Vec::new();
    if parser.consume_token(&Token::RParen) {
        return Ok(pairs);
    }
    loop {
        let mut key = option_text(parser, "option name")?;
        while parser.consume_token(&Token::Period) {
            key = format!("{key}.{}", option_text(parser, "option name")?);
        }
        let value = option_text(parser, "option value")?;
        pairs.push((key, value));
        if parser.consume_token(&Token::Comma) {
            continue;
        }
        parser.expect_token(&Token::RParen)?;
        return Ok(pairs);
    }
}

fn option_text(parser: &mut Parser, what: &str) -> Result<String> {
    let token = parser.next_token();
    match token.token {
        Token::SingleQuotedString(s) | Token::DoubleQuotedString(s) => Ok(s),
        Token::Number(n, _) => Ok(n),
        Token::Word(w) => Ok(w.value),
        other => Err(Error::Sql(format!(
            "expected an {what} in OPTIONS, found '{other}'"
        ))),
    }
}

fn expect_end(parser: &mut Parser, statement: &str) -> Result<()> {
    let _ = parser.consume_token(&Token::SemiColon);
    match parser.peek_token().token {
        Token::EOF => Ok(()),
        other => Err(Error::Sql(format!(
            "unexpected '{other}' after the end of {statement}"
        ))),
    }
}

/// Parses a `CREATE UNBOUNDED EXTERNAL TABLE` statement.
pub fn parse_create_stream(sql: &str) -> Result<CreateStream> {
    let dialect = GenericDialect {};
    let mut parser = Parser::new(&dialect).try_with_sql(sql)?;
    parser.expect_keyword_is(Keyword::CREATE)?;
    let or_replace = parser.parse_keywords(&[Keyword::OR, Keyword::REPLACE]);
    expect_word(&mut parser, "UNBOUNDED", "after CREATE")?;
    expect_word(&mut parser, "EXTERNAL", "after CREATE UNBOUNDED")?;
    expect_word(&mut parser, "TABLE", "after CREATE UNBOUNDED EXTERNAL")?;
    let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = parser.parse_object_name(false)?;
    let mut columns = Vec::new();
    let mut watermark = None;
    if parser.consume_token(&Token::LParen) && !parser.consume_token(&Token::RParen) {
        loop {
            if parse_word(&mut parser, "WATERMARK") {
                expect_word(&mut parser, "FOR", "after WATERMARK")?;
                let column = parser.parse_identifier()?.value;
                expect_word(
                    &mut parser,
                    "AS",
                    "in WATERMARK FOR <column> AS <expression>",
                )?;
                if watermark.is_some() {
                    return Err(Error::Sql(
                        "a table may declare only one WATERMARK".to_string(),
                    ));
                }
                watermark = Some((column, parser.parse_expr()?));
            } else {
                columns.push(parser.parse_column_def()?);
            }
            if parser.consume_token(&Token::Comma) {
                continue;
            }
            parser.expect_token(&Token::RParen)?;
            break;
        }
    }
    let Storage {
        format,
        location,
        options,
    } = parse_storage(&mut parser)?;
    expect_end(&mut parser, "CREATE UNBOUNDED EXTERNAL TABLE")?;
    Ok(CreateStream {
        name,
        if_not_exists,
        or_replace,
        columns,
        watermark,
        format,
        location,
        options,
    })
}

/// Parses a `CREATE SINK` statement.
pub fn parse_create_sink(sql: &str) -> Result<CreateSink> {
    let dialect = GenericDialect {};
    let mut parser = Parser::new(&dialect).try_with_sql(sql)?;
    parser.expect_keyword_is(Keyword::CREATE)?;
    expect_word(&mut parser, "SINK", "after CREATE")?;
    let name = parser.parse_identifier()?.value;
    let Storage {
        format,
        location,
        options,
    } = parse_storage(&mut parser)?;
    expect_word(
        &mut parser,
        "AS",
        "before the sink's query (CREATE SINK ... AS SELECT ...)",
    )?;
    let query = parser.parse_query()?;
    expect_end(&mut parser, "CREATE SINK")?;
    Ok(CreateSink {
        name,
        format,
        location,
        options,
        query,
    })
}

/// Reads the query name of `STOP QUERY name` or `DESCRIBE QUERY name` (`verb` is
/// `STOP` or `DESCRIBE`). The name is taken as written, as `CREATE SINK` takes it.
pub fn parse_query_name(sql: &str, verb: &str) -> Result<String> {
    let dialect = GenericDialect {};
    let mut parser = Parser::new(&dialect).try_with_sql(sql)?;
    let statement = format!("{verb} QUERY");
    expect_word(&mut parser, verb, "at the start")?;
    expect_word(&mut parser, "QUERY", &format!("after {verb}"))?;
    if parser.peek_token().token == Token::EOF {
        return Err(Error::Sql(format!(
            "{statement} needs the name of a query (SHOW QUERIES lists them)"
        )));
    }
    let name = parser.parse_identifier()?.value;
    expect_end(&mut parser, &statement)?;
    Ok(name)
}

/// Reads the delay of a watermark expression: `col` (no delay) or `col - INTERVAL ...`.
pub fn watermark_delay(column: &str, expr: &Expr) -> Result<std::time::Duration> {
    let names_column = |e: &Expr| match e {
        Expr::Identifier(id) => id.value.eq_ignore_ascii_case(column),
        Expr::CompoundIdentifier(ids) => ids
            .last()
            .is_some_and(|id| id.value.eq_ignore_ascii_case(column)),
        _ => false,
    };
    match expr {
        e if names_column(e) => Ok(std::time::Duration::ZERO),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Minus,
            right,
        } if names_column(left) => crate::duration::interval_expr_duration(right),
        Expr::Nested(inner) => watermark_delay(column, inner),
        other => Err(Error::Sql(format!(
            "WATERMARK FOR {column} AS {other}: the expression must be `{column} - INTERVAL '<n>' <unit>` \
             (or just `{column}`)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_statements_are_classified_and_name_their_query() {
        assert_eq!(classify("show queries"), StatementKind::ShowQueries);
        assert_eq!(classify("STOP QUERY q1"), StatementKind::StopQuery);
        assert_eq!(classify("DESCRIBE QUERY q1"), StatementKind::DescribeQuery);
        assert_eq!(classify("DESCRIBE query"), StatementKind::Other);
        assert_eq!(
            parse_query_name("stop query \"Q 1\"", "STOP").unwrap(),
            "Q 1"
        );
        assert_eq!(
            parse_query_name("DESCRIBE QUERY q1;", "DESCRIBE").unwrap(),
            "q1"
        );
        let missing = parse_query_name("STOP QUERY", "STOP").unwrap_err();
        assert!(missing.to_string().contains("needs the name"), "{missing}");
        assert!(parse_query_name("STOP QUERY a b", "STOP").is_err());
    }

    #[test]
    fn parses_a_stream_with_a_watermark_and_options() {
        let stream = parse_create_stream(
            "CREATE UNBOUNDED EXTERNAL TABLE readings (sensor VARCHAR NOT NULL, ts TIMESTAMP, \
             WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) STORED AS json LOCATION 'in/' \
             OPTIONS ('max_files_per_trigger' '10', format.has_header true)",
        )
        .unwrap();
        assert_eq!(stream.columns.len(), 2);
        assert_eq!(stream.format, "JSON");
        assert_eq!(stream.location.as_deref(), Some("in/"));
        let (column, expr) = stream.watermark.unwrap();
        assert_eq!(
            watermark_delay(&column, &expr).unwrap(),
            std::time::Duration::from_secs(5)
        );
        assert_eq!(
            stream.options,
            vec![
                ("max_files_per_trigger".to_string(), "10".to_string()),
                ("format.has_header".to_string(), "true".to_string())
            ]
        );
    }

    #[test]
    fn parses_a_sink() {
        let sink = parse_create_sink(
            "CREATE SINK hot STORED AS PARQUET LOCATION 'out/' OPTIONS ('checkpoint' 'c') \
             AS SELECT a FROM t WHERE a > 1",
        )
        .unwrap();
        assert_eq!(sink.name, "hot");
        assert_eq!(sink.format, "PARQUET");
        assert_eq!(sink.query.to_string(), "SELECT a FROM t WHERE a > 1");
    }
}
