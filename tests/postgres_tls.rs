//! The PostgreSQL sink's TLS against real servers started by `scripts/postgres.sh`:
//! one with `ssl = on` and a certificate for `localhost` signed by a throwaway CA,
//! one without TLS. The server itself says whether the sink's connection used TLS
//! (`pg_stat_ssl`); certificates from another CA or for another name, and `require`
//! against a server without TLS, are refused with messages naming the options.

mod common;

use std::path::Path;

use common::postgres::PgServer;
use common::*;

fn ids_file(dir: &Path, name: &str, ids: &[i64]) {
    let text: String = ids.iter().map(|id| format!("{{\"id\": {id}}}\n")).collect();
    write_atomic(dir, name, text.as_bytes());
}

/// A job copying the ids of `input` to table `out` with the connection options `tls`.
fn copy_job(root: &Path, pg: &PgServer, db: &str, tls: &str) -> std::path::PathBuf {
    write_job(
        root,
        "copy.sql",
        &format!(
            "CREATE UNBOUNDED EXTERNAL TABLE ids (id BIGINT) STORED AS JSON LOCATION '{}/';
             CREATE SINK out STORED AS POSTGRES LOCATION 'out'
               OPTIONS ('checkpoint' '{}', 'trigger' 'available_now', {}, {tls})
               AS SELECT id FROM ids;\n",
            root.join("in").display(),
            root.join("ckpt").display(),
            pg.sink_options(db)
        ),
    )
}

fn ca(pg: &PgServer, name: &str) -> String {
    pg.dir.join(name).display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_writes_over_tls_and_each_row_arrives_once() {
    use millrace::prelude::*;
    let pg = PgServer::shared_tls();
    let db = pg.create_database("tls_rows");
    let tmp = temp_dir();
    let root = tmp.path();
    let input = make_dir(root, "in");
    ids_file(&input, "a.json", &[1, 2]);
    ids_file(&input, "b.json", &[3]);
    let ctx = StreamingContext::new();
    ctx.sql(&format!(
        "CREATE UNBOUNDED EXTERNAL TABLE ids (id BIGINT) STORED AS JSON LOCATION '{}/'",
        input.display()
    ))
    .await
    .unwrap();
    let query = ctx
        .table("ids")
        .await
        .unwrap()
        .write_stream()
        .format("postgres")
        .option("table", "out")
        .option("host", "localhost")
        .option("port", &pg.port.to_string())
        .option("database", &db)
        .option(
            "password_file",
            &pg.dir.join("password").display().to_string(),
        )
        .option("sslmode", "verify-full")
        .option("sslrootcert", &ca(pg, "ca.crt"))
        .option("checkpoint", &root.join("ckpt").display().to_string())
        .query_name("tls_rows")
        .start()
        .await
        .unwrap();
    query.process_all_available().await.unwrap();
    // The query is still running, so its connection is open: the server says it is TLS.
    let ssl = pg.psql(
        &db,
        "SELECT s.ssl, s.version FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid \
         WHERE a.application_name = 'millrace' AND a.datname = current_database()",
    );
    assert_eq!(ssl.len(), 1, "one sink connection: {ssl:?}");
    assert!(ssl[0].starts_with("t|TLSv1."), "{ssl:?}");
    query.stop();
    query.await_termination().await.unwrap();
    assert_eq!(
        pg.psql(&db, "SELECT id FROM out ORDER BY id"),
        ["1", "2", "3"]
    );

    // Restarted from the checkpoint (the same TLS options in SQL this time), the query
    // adds only the new file's rows.
    ids_file(&input, "c.json", &[4]);
    let job = copy_job(
        root,
        pg,
        &db,
        &format!(
            "'host' 'localhost', 'sslmode' 'verify-full', 'sslrootcert' '{}'",
            ca(pg, "ca.crt")
        ),
    );
    run_success(&job, &root.join("run2.err"));
    assert_eq!(
        pg.psql(&db, "SELECT id FROM out ORDER BY id"),
        ["1", "2", "3", "4"]
    );
    // The database's record of the last batch is the checkpoint's last commit.
    let last = log_ids(&root.join("ckpt").join("commits"))
        .into_iter()
        .max()
        .unwrap();
    assert_eq!(
        pg.psql(&db, "SELECT batch_id FROM millrace_sink_batches"),
        [last.to_string()]
    );
}

#[test]
fn verify_full_refuses_another_name_or_another_ca_and_verify_ca_ignores_the_name() {
    let pg = PgServer::shared_tls();
    let db = pg.create_database("tls_refused");
    let tmp = temp_dir();
    let root = tmp.path();
    let input = make_dir(root, "in");
    ids_file(&input, "a.json", &[1, 2]);

    // The certificate names localhost, not 127.0.0.1.
    let job = copy_job(
        root,
        pg,
        &db,
        &format!(
            "'host' '127.0.0.1', 'sslmode' 'verify-full', 'sslrootcert' '{}'",
            ca(pg, "ca.crt")
        ),
    );
    let (status, stderr) = run_to_end(&job, &[], &root.join("name.err"));
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("sslmode 'verify-full'")
            && stderr.contains("sslrootcert")
            && stderr.contains("name the host '127.0.0.1'")
            && stderr.contains("not valid for name"),
        "{stderr}"
    );
    assert!(!stderr.contains(&pg.password), "the password was printed");

    // Signed by a CA the sink was not told to trust.
    let job = copy_job(
        root,
        pg,
        &db,
        &format!(
            "'host' 'localhost', 'sslmode' 'verify-full', 'sslrootcert' '{}'",
            ca(pg, "other-ca.crt")
        ),
    );
    let (status, stderr) = run_to_end(&job, &[], &root.join("ca.err"));
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("sslmode 'verify-full'")
            && stderr.contains("other-ca.crt")
            && stderr.contains("UnknownIssuer"),
        "{stderr}"
    );
    // Nothing reached the database.
    assert_eq!(
        pg.psql(
            &db,
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'out'"
        ),
        ["0"]
    );

    // verify-ca checks the CA only: 127.0.0.1 is accepted.
    let job = copy_job(
        root,
        pg,
        &db,
        &format!(
            "'host' '127.0.0.1', 'sslmode' 'verify-ca', 'sslrootcert' '{}'",
            ca(pg, "ca.crt")
        ),
    );
    run_success(&job, &root.join("verify-ca.err"));
    assert_eq!(pg.psql(&db, "SELECT id FROM out ORDER BY id"), ["1", "2"]);
}

#[test]
fn require_against_a_server_without_tls_fails_and_disable_is_the_loopback_default() {
    let pg = PgServer::shared();
    let db = pg.create_database("tls_absent");
    let tmp = temp_dir();
    let root = tmp.path();
    let input = make_dir(root, "in");
    ids_file(&input, "a.json", &[7]);
    let job = copy_job(root, pg, &db, "'sslmode' 'require'");
    let (status, stderr) = run_to_end(&job, &[], &root.join("require.err"));
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("sslmode 'require'")
            && stderr.contains("server does not support TLS")
            && stderr.contains("ssl = on"),
        "{stderr}"
    );
    // The same server, 127.0.0.1 and no sslmode: TLS off, the rows arrive.
    let job = copy_job(root, pg, &db, "'host' '127.0.0.1'");
    run_success(&job, &root.join("default.err"));
    assert_eq!(pg.psql(&db, "SELECT id FROM out"), ["7"]);

    // require against the TLS server: encrypted, the certificate not checked.
    let tls = PgServer::shared_tls();
    let db = tls.create_database("tls_require");
    let tmp = temp_dir();
    let root = tmp.path();
    let input = make_dir(root, "in");
    ids_file(&input, "a.json", &[8]);
    let job = copy_job(root, tls, &db, "'sslmode' 'require'");
    run_success(&job, &root.join("require-tls.err"));
    assert_eq!(tls.psql(&db, "SELECT id FROM out"), ["8"]);
}
