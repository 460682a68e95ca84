def query(spark, tables):
    return spark.sql("""SELECT l.k, l.ts, l.v FROM left_events l LEFT SEMI JOIN right_events r ON l.k = r.k AND l.ts BETWEEN r.ts - INTERVAL '5' SECOND AND r.ts + INTERVAL '5' SECOND""")
