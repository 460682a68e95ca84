def query(spark, events):
    return spark.sql("""SELECT k, session_window(ts, '5 seconds') AS session_window, count(*) AS n FROM events GROUP BY k, session_window(ts, '5 seconds')""")
