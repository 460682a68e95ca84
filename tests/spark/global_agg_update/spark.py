def query(spark, events):
    return spark.sql("""SELECT count(*) AS n, count(v) AS nv, sum(v) AS s, avg(x) AS a, min(v) AS lo, max(x) AS hi FROM events""")
