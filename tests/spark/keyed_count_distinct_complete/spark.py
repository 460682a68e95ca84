def query(spark, events):
    from pyspark.sql import functions as F
    return (events.dropDuplicates(["k", "v"]).groupBy("k")
            .agg(F.count("v").alias("dv")))
