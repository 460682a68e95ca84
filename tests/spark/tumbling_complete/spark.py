def query(spark, events):
    return spark.sql("""SELECT k, window(ts, '10 seconds') AS window, count(*) AS n, sum(v) AS s, avg(x) AS a FROM events GROUP BY k, window(ts, '10 seconds')""")
