def query(spark, events):
    return spark.sql("""SELECT upper(k) AS uk, v % 2 AS parity, count(*) AS n, max(ts) AS last_ts FROM events GROUP BY upper(k), v % 2""")
