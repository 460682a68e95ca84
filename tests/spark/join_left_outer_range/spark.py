def query(spark, tables):
    return spark.sql("""SELECT l.k AS lk, l.ts AS lts, l.v AS lv, r.k AS rk, r.ts AS rts, r.v AS rv FROM left_events l LEFT OUTER JOIN right_events r ON l.k = r.k AND l.ts BETWEEN r.ts - INTERVAL '5' SECOND AND r.ts + INTERVAL '5' SECOND""")
