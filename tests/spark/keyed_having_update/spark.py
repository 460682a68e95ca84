def query(spark, events):
    return spark.sql("""SELECT k, count(*) AS n, sum(v) AS s FROM events GROUP BY k HAVING count(*) >= 2""")
