def query(spark, tables):
    return spark.sql("""SELECT l.k AS k, l.w AS w, l.v AS lv, r.v AS rv FROM (SELECT k, window(ts, '10 seconds') AS w, v FROM left_events) l LEFT OUTER JOIN (SELECT k, window(ts, '10 seconds') AS w, v FROM right_events) r ON l.k = r.k AND l.w = r.w""")
