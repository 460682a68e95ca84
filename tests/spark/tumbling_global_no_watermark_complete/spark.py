def query(spark, events):
    return spark.sql("""SELECT window(ts, '10 seconds') AS window, count(*) AS n FROM events GROUP BY window(ts, '10 seconds')""")
