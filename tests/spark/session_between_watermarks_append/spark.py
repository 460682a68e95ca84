def query(spark, events):
    return spark.sql("""SELECT k, session_window(ts, '5 seconds') AS session_window, count(*) AS n, sum(v) AS s, avg(x) AS a FROM events GROUP BY k, session_window(ts, '5 seconds')""")
