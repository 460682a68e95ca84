def query(spark, tables):
    return spark.sql("""SELECT window(l.ts, '10 seconds') AS window, count(*) AS n, sum(r.v) AS s FROM left_events l JOIN right_events r ON l.k = r.k AND l.ts BETWEEN r.ts - INTERVAL '5' SECOND AND r.ts + INTERVAL '5' SECOND GROUP BY window(l.ts, '10 seconds')""")
